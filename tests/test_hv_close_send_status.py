"""close, send, status, bind_vcpu, unmask, send_many (spec §4.5-4.9, §8; semantics.md)."""

from __future__ import annotations

import array
import errno

import pytest

from hvhelpers import raises_errno
from xenabi import DOMID_INVALID, DOMID_SELF, si

CLOSED, UNBOUND, INTERDOMAIN, PIRQ, VIRQ, IPI = 0, 1, 2, 3, 4, 5
VIRQ_TIMER, VIRQ_CONSOLE, VIRQ_ARGO = 0, 2, 11
CLOSED_ST = (CLOSED, 0, None, None, None, None)


def connect(via, a, b):
    """An interdomain channel: a allocates, b binds. Returns (port in a, port in b)."""
    pa = via.alloc_unbound(a, b.domid)
    pb = via.bind_interdomain(b, a.domid, pa)
    return pa, pb


# ------------------------------------------------------------------------ close (§4.5)


@pytest.mark.parametrize("port", [0, 5, 63, 64, 100, 4096, 0xFFFFFFFF])
def test_close_bad_port_einval(via, domu, port):
    # port 0 RESERVED, 5/63 valid but FREE, the rest not valid: all EINVAL
    with raises_errno(via.xe, errno.EINVAL):
        via.close(domu, port)


def test_close_twice_einval(via, domu):
    p = via.alloc_unbound(domu, 0)
    via.close(domu, p)
    with raises_errno(via.xe, errno.EINVAL):
        via.close(domu, p)
    assert via.status(domu, p) == CLOSED_ST


def test_close_unbound_frees_port_and_resets_notify_vcpu(via, domu):
    p = via.alloc_unbound(domu, 0)
    via.bind_vcpu(domu, p, 1)
    assert via.status(domu, p)[1] == 1
    via.close(domu, p)
    assert via.status(domu, p) == CLOSED_ST  # notify_vcpu_id := 0 when freed
    assert via.alloc_unbound(domu, 0) == p
    assert via.status(domu, p) == (UNBOUND, 0, 0, None, None, None)


def test_close_ipi(via, domu):
    p = via.bind_ipi(domu, 1)
    via.close(domu, p)
    assert via.status(domu, p) == CLOSED_ST


def test_close_per_vcpu_virq_clears_binding_on_its_vcpu(xe, via, hv, domu):
    p0 = via.bind_virq(domu, VIRQ_TIMER, 0)
    p1 = via.bind_virq(domu, VIRQ_TIMER, 1)
    via.close(domu, p1)
    assert via.status(domu, p1) == CLOSED_ST
    hv.send_virq(domu.domid, VIRQ_TIMER, 1)  # dropped: no binding on vCPU 1 now
    assert not si(domu).pending(p1) and si(domu).sel(1) == 0
    with raises_errno(xe, errno.EEXIST):
        domu.bind_virq(VIRQ_TIMER, 0)  # vCPU 0's binding untouched
    assert via.bind_virq(domu, VIRQ_TIMER, 1) == p1
    assert p0 == 1


def test_close_per_domain_virq_after_bind_vcpu_clears_vcpu0_entry(via, domu):
    p = via.bind_virq(domu, VIRQ_ARGO, 0)
    via.bind_vcpu(domu, p, 1)
    via.close(domu, p)
    assert via.bind_virq(domu, VIRQ_ARGO, 0) == p


def test_close_global_virq(via, hv, dom0):
    p = via.bind_virq(dom0, VIRQ_CONSOLE, 0)
    via.close(dom0, p)
    hv.send_virq(dom0.domid, VIRQ_CONSOLE)
    assert not si(dom0).pending(p)
    assert via.bind_virq(dom0, VIRQ_CONSOLE, 0) == p


def test_close_pirq_releases_pirq(via, hv, pair):
    dom0, domu = pair
    hv.permit_pirq(domu.domid, 9)
    p = via.bind_pirq(dom0, 9, 0)
    via.close(dom0, p)
    assert via.status(dom0, p) == CLOSED_ST
    hv.send_pirq(dom0.domid, 9)
    assert not si(dom0).pending(p)
    # host IRQ unclaimed: another domain binds it unshared; dom0 rebinds after that closes
    q = via.bind_pirq(domu, 9, 0)
    via.close(domu, q)
    assert via.bind_pirq(dom0, 9, 0) == p


def test_close_interdomain_peer_becomes_unbound_silently(via, hv, pair, hooks):
    dom0, domu = pair
    pu, p0 = connect(via, domu, dom0)
    su = si(domu)
    via.bind_vcpu(domu, pu, 1)
    via.send(dom0, p0)  # pu pending on domU vCPU 1
    su.set_mask(pu)
    su.ack(1)
    del hooks[:]
    before = su.snapshot()
    via.close(dom0, p0)
    assert via.status(dom0, p0) == CLOSED_ST
    # §4.5: peer -> UNBOUND naming the closer; pending/mask/notify vcpu untouched, no event
    assert via.status(domu, pu) == (UNBOUND, 1, dom0.domid, None, None, None)
    assert su.snapshot() == before and su.pending(pu) and su.masked(pu)
    assert hooks == []
    # the closer may re-bind it; a third domain may not
    third = hv.create_domain()
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_interdomain(third, domu.domid, pu)
    q = via.bind_interdomain(dom0, domu.domid, pu)
    assert q == p0
    assert via.status(domu, pu) == (INTERDOMAIN, 1, dom0.domid, q, None, None)


def test_close_loopback(via, domu):
    p = via.alloc_unbound(domu, DOMID_SELF)
    lp = via.bind_interdomain(domu, DOMID_SELF, p)
    via.close(domu, lp)
    assert via.status(domu, p) == (UNBOUND, 0, domu.domid, None, None, None)
    assert via.bind_interdomain(domu, domu.domid, p) == lp


def test_close_clears_pending_not_mask_nor_selector(via, domu):
    p = via.bind_ipi(domu, 0)
    s = si(domu)
    via.send(domu, p)
    assert s.pending(p) and s.sel(0) == 1 and s.upcall_pending(0) == 1
    s.set_mask(p)
    via.close(domu, p)
    assert not s.pending(p)
    assert s.masked(p)  # §4.5 step 4: the 2L mask bit is not touched
    assert s.sel(0) == 1 and s.upcall_pending(0) == 1


def test_close_after_peer_closed(via, pair):
    dom0, domu = pair
    pu, p0 = connect(via, domu, dom0)
    via.close(domu, pu)
    assert via.status(dom0, p0) == (UNBOUND, 0, domu.domid, None, None, None)
    via.close(dom0, p0)  # now an UNBOUND port: closes fine
    assert via.status(dom0, p0) == CLOSED_ST


# ------------------------------------------------------------------------- send (§4.6)


@pytest.mark.parametrize("port", [0, 5, 64, 100, 4096, 0xFFFFFFFF])
def test_send_bad_port_einval(via, domu, port):
    with raises_errno(via.xe, errno.EINVAL):
        via.send(domu, port)


def test_send_on_virq_and_pirq_einval(via, dom0):
    v = via.bind_virq(dom0, VIRQ_TIMER, 0)
    g = via.bind_virq(dom0, VIRQ_CONSOLE, 0)
    p = via.bind_pirq(dom0, 3, 0)
    for port in (v, g, p):
        with raises_errno(via.xe, errno.EINVAL):
            via.send(dom0, port)
        assert not si(dom0).pending(port)


def test_send_on_unbound_is_silent_success(via, pair, hooks):
    dom0, domu = pair
    p = via.alloc_unbound(domu, dom0.domid)
    b0, bu = si(dom0).snapshot(), si(domu).snapshot()
    via.send(domu, p)
    assert si(dom0).snapshot() == b0 and si(domu).snapshot() == bu
    assert hooks == []


def test_send_interdomain_raises_remote(via, pair, hooks):
    dom0, domu = pair
    pu, p0 = connect(via, domu, dom0)
    s0, su = si(dom0), si(domu)
    s0.set_pending(p0, 0)
    s0.ack(0)
    del hooks[:]
    via.send(dom0, p0)
    assert su.pending(pu) and su.sel(0) == 1 and su.upcall_pending(0) == 1
    assert not s0.pending(p0) and s0.upcall_pending(0) == 0
    assert hooks == [("kick", 0)]
    via.send(domu, pu)
    assert s0.pending(p0) and s0.upcall_pending(0) == 1


def test_send_ipi_raises_local_on_its_vcpu(via, domu, hooks):
    p = via.bind_ipi(domu, 1)
    via.send(domu, p)
    s = si(domu)
    assert s.pending(p)
    assert s.sel(1) == 1 and s.upcall_pending(1) == 1
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0
    assert hooks == [("kick", 1)]


def test_send_masked_or_pending_still_succeeds(via, domu):
    p = via.bind_ipi(domu, 0)
    s = si(domu)
    s.set_mask(p)
    via.send(domu, p)
    via.send(domu, p)
    assert s.pending(p) and s.sel(0) == 0


def test_send_after_peer_closed_is_silent(via, pair):
    dom0, domu = pair
    pu, p0 = connect(via, domu, dom0)
    via.close(domu, pu)
    si(domu).set_pending(pu, 0)
    via.send(dom0, p0)  # now UNBOUND
    assert not si(domu).pending(pu)


def test_send_port_in_higher_word(via, domu):
    ports = [via.bind_ipi(domu, 0) for _ in range(130)]
    assert ports[-1] == 130
    via.send(domu, 130)  # word 2
    s = si(domu)
    assert s.pending(130) and s.sel(0) == 1 << 2
    via.send(domu, 64)  # word 1
    assert s.sel(0) == (1 << 2) | (1 << 1)


# ----------------------------------------------------------------------- status (§4.7)


@pytest.mark.parametrize("dom", [2, 999, DOMID_INVALID, 0xFFFF])
def test_status_unknown_dom_esrch_before_port_check(via, pair, dom):
    dom0, domu = pair
    for caller in (dom0, domu):
        for port in (0, 100):
            with raises_errno(via.xe, errno.ESRCH):
                via.status(caller, port, dom=dom)


def test_status_port_check_before_privilege(via, pair):
    dom0, domu = pair
    for port in (64, 100, 0xFFFFFFFF):
        with raises_errno(via.xe, errno.EINVAL):
            via.status(domu, port, dom=dom0.domid)
    for port in (0, 5, 63):
        with raises_errno(via.xe, errno.EPERM):
            via.status(domu, port, dom=dom0.domid)
    p = via.alloc_unbound(dom0, domu.domid)
    with raises_errno(via.xe, errno.EPERM):
        via.status(domu, p, dom=dom0.domid)


def test_status_own_numeric_id_and_self(via, domu):
    p = via.bind_ipi(domu, 1)
    assert via.status(domu, p, dom=domu.domid) == (IPI, 1, None, None, None, None)
    assert via.status(domu, p, dom=DOMID_SELF) == (IPI, 1, None, None, None, None)


def test_status_every_state(via, hv, pair):
    dom0, domu = pair
    assert via.status(dom0, 0) == CLOSED_ST  # RESERVED reports closed
    ub = via.alloc_unbound(dom0, 0x1234)
    pu, p0 = connect(via, domu, dom0)
    pi = via.bind_pirq(dom0, 77)
    vi = via.bind_virq(dom0, VIRQ_TIMER, 1)
    ip = via.bind_ipi(dom0, 1)
    for caller, dom in ((dom0, DOMID_SELF), (dom0, dom0.domid)):
        assert via.status(caller, ub, dom=dom) == (UNBOUND, 0, 0x1234, None, None, None)
        assert via.status(caller, p0, dom=dom) == (INTERDOMAIN, 0, domu.domid, pu, None, None)
        assert via.status(caller, pi, dom=dom) == (PIRQ, 0, None, None, 77, None)
        assert via.status(caller, vi, dom=dom) == (VIRQ, 1, None, None, None, VIRQ_TIMER)
        assert via.status(caller, ip, dom=dom) == (IPI, 1, None, None, None, None)
        assert via.status(caller, 30, dom=dom) == CLOSED_ST
    # dom0 (privileged) may look into domU
    assert via.status(dom0, pu, dom=domu.domid) == (INTERDOMAIN, 0, dom0.domid, p0, None, None)


def test_status_wrapper_object(xe, domu):
    p = domu.bind_ipi(1)
    st = domu.status(p)
    assert isinstance(st, xe.EvtchnStatus)
    assert st.status == xe.EVTCHNSTAT_ipi and st.vcpu == 1
    assert st.dom is None and st.port is None and st.pirq is None and st.virq is None
    st = domu.status(7)
    assert st.status == xe.EVTCHNSTAT_closed and st.vcpu == 0


# -------------------------------------------------------------------- bind_vcpu (§4.8)


def test_bind_vcpu_enoent_before_port_checks(via, domu):
    # §4.8 / §16: the vCPU is checked before the port.
    for port in (0, 5, 100, 0xFFFFFFFF):
        for vcpu in (2, 32, 0xFFFFFFFF):
            with raises_errno(via.xe, errno.ENOENT):
                via.bind_vcpu(domu, port, vcpu)


@pytest.mark.parametrize("port", [0, 5, 64, 100, 0xFFFFFFFF])
def test_bind_vcpu_bad_port_einval(via, domu, port):
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_vcpu(domu, port, 1)


def test_bind_vcpu_refused_states(via, domu):
    ipi = via.bind_ipi(domu, 0)
    timer = via.bind_virq(domu, VIRQ_TIMER, 0)
    for port in (ipi, timer):
        for vcpu in (0, 1):
            with raises_errno(via.xe, errno.EINVAL):
                via.bind_vcpu(domu, port, vcpu)
    assert via.status(domu, timer)[1] == 0


def test_bind_vcpu_allowed_states(via, hv, pair):
    dom0, domu = pair
    ub = via.alloc_unbound(dom0, domu.domid)
    pu, p0 = connect(via, domu, dom0)
    pi = via.bind_pirq(dom0, 50)
    gv = via.bind_virq(dom0, VIRQ_CONSOLE, 0)
    dv = via.bind_virq(dom0, VIRQ_ARGO, 0)
    for port in (ub, p0, pi, gv, dv):
        via.bind_vcpu(dom0, port, 1)
        assert via.status(dom0, port)[1] == 1
        via.bind_vcpu(dom0, port, 1)  # unchanged: success no-op
        assert via.status(dom0, port)[1] == 1
    # deliveries now go to vCPU 1
    s = si(dom0)
    s.ack(0)
    for port in (p0, pi, gv, dv):
        s.set_pending(port, 0)
    hv.send_pirq(dom0.domid, 50)
    hv.send_virq(dom0.domid, VIRQ_CONSOLE)
    hv.send_virq(dom0.domid, VIRQ_ARGO)
    via.send(domu, pu)
    assert all(s.pending(p) for p in (p0, pi, gv, dv))
    assert s.sel(1) == 1 and s.upcall_pending(1) == 1
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0


def test_bind_vcpu_moves_only_future_notifications(via, pair):
    dom0, domu = pair
    pu, p0 = connect(via, domu, dom0)
    via.send(dom0, p0)
    s = si(domu)
    assert s.pending(pu) and s.sel(0) == 1
    via.bind_vcpu(domu, pu, 1)
    # §4.8 step 5: nothing already pending moves
    assert s.pending(pu) and s.sel(0) == 1 and s.upcall_pending(0) == 1
    assert s.sel(1) == 0 and s.upcall_pending(1) == 0
    s.set_pending(pu, 0)
    via.send(dom0, p0)
    assert s.pending(pu) and s.sel(1) == 1 and s.upcall_pending(1) == 1


# ----------------------------------------------------------------------- unmask (§4.9)


@pytest.mark.parametrize("port", [64, 100, 4096, 0xFFFFFFFF])
def test_unmask_invalid_port_einval(via, domu, port):
    with raises_errno(via.xe, errno.EINVAL):
        via.unmask(domu, port)


def test_unmask_valid_unusable_port_is_noop(via, domu, hooks):
    s = si(domu)
    for port in (0, 5, 63):
        s.set_mask(port)
        s.set_pending(port)
        via.unmask(domu, port)  # FREE / RESERVED: returns 0, does nothing
        assert s.masked(port) and s.pending(port)
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0 and hooks == []


def test_unmask_usable_states(via, pair):
    dom0, domu = pair
    s = si(dom0)
    ports = [
        via.alloc_unbound(dom0, domu.domid),
        via.bind_ipi(dom0, 0),
        via.bind_virq(dom0, VIRQ_TIMER, 0),
        via.bind_pirq(dom0, 4),
        connect(via, domu, dom0)[1],
    ]
    for p in ports:
        s.set_mask(p)
        via.unmask(dom0, p)
        assert not s.masked(p)


# -------------------------------------------------------------------------- send_many


def test_send_many_sequence_and_buffers(xe, domu):
    ports = [domu.bind_ipi(0) for _ in range(6)]
    s = si(domu)
    domu.send_many([ports[0], ports[1]])
    assert s.pending(1) and s.pending(2) and not s.pending(3)
    domu.send_many(array.array("I", [3]))
    assert s.pending(3)
    domu.send_many(memoryview(array.array("I", [4, 5]).tobytes()).cast("I"))
    assert s.pending(4) and s.pending(5)
    before = s.snapshot()
    domu.send_many([])
    domu.send_many(())
    assert s.snapshot() == before  # an empty list raises nothing


def test_send_many_stops_at_first_failure(xe, domu):
    a = domu.bind_ipi(0)
    b = domu.bind_ipi(0)
    c = domu.bind_ipi(0)
    with raises_errno(xe, errno.EINVAL):
        domu.send_many([a, b, 100, c])
    s = si(domu)
    assert s.pending(a) and s.pending(b) and not s.pending(c)


def test_send_many_bad_buffer_format(xe, domu):
    domu.bind_ipi(0)
    for bad in (array.array("H", [1]), array.array("Q", [1]), array.array("d", [1.0]), b"\x01\x00\x00\x00"):
        with pytest.raises(TypeError):
            domu.send_many(bad)
    assert not si(domu).pending(1)


def test_send_many_delivery_and_hooks(xe, pair, hooks):
    dom0, domu = pair
    a, b = domu.bind_ipi(0), domu.bind_ipi(0)
    c = domu.bind_ipi(1)
    assert domu.sched_poll([], vcpu=1) is False
    si(domu).set_mask(c)
    domu.send_many([a, b, a, c])
    s = si(domu)
    assert s.pending(a) and s.pending(b) and s.pending(c)
    assert s.sel(0) == 1 and s.upcall_pending(0) == 1
    assert s.sel(1) == 0 and s.upcall_pending(1) == 0  # c is masked
    assert domu.vcpus[1].polling is False
    # hooks may be batched, but each vCPU is kicked once and the poller woken once
    assert sorted(hooks) == [("kick", 0), ("wake", 1)]


def test_send_many_interdomain(xe, pair):
    dom0, domu = pair
    pu = domu.alloc_unbound(dom0.domid)
    p0 = dom0.bind_interdomain(domu.domid, pu)
    ub = dom0.alloc_unbound(domu.domid)
    dom0.send_many([p0, ub])  # UNBOUND: silently nothing
    assert si(domu).pending(pu)
    with raises_errno(xe, errno.EINVAL):
        dom0.send_many([p0, 0])
