"""Allocation and binding commands (spec §2, §4.1-4.4, §4.10, §6; semantics.md).

Each error path runs through every entry point that carries it (``via``: wrapper,
event_channel_op, event_channel_op_compat); the raw entry points also check the
copy-back rules of spec §3 on every call (see hvhelpers.RawVia.call).
"""

from __future__ import annotations

import errno

import pytest

from hvhelpers import raises_errno
from xenabi import DOMID_INVALID, DOMID_IO, DOMID_SELF, si

UNBOUND, INTERDOMAIN, PIRQ, VIRQ, IPI = 1, 2, 3, 4, 5
PER_VCPU_VIRQS = [0, 1, 7, 13]
GLOBAL_VIRQS = [2, 3, 4, 5, 6, 8, 9, 10, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
VIRQ_CONSOLE, VIRQ_ARGO, VIRQ_TIMER, VIRQ_DEBUG = 2, 11, 0, 1


def nothing_pending(d, port):
    s = si(d)
    return not s.pending(port) and all(s.sel(v) == 0 and s.upcall_pending(v) == 0 for v in range(2))


# ------------------------------------------------------------------ alloc_unbound (§4.1)


def test_alloc_unbound_takes_lowest_free_port(via, pair):
    dom0, domu = pair
    assert [via.alloc_unbound(domu, 0) for _ in range(3)] == [1, 2, 3]
    domu.close(2)
    assert via.alloc_unbound(domu, 0) == 2  # lowest free (§2.2), port 0 is RESERVED
    assert via.alloc_unbound(domu, 0) == 4


def test_alloc_unbound_state_and_nothing_pending(xe, via, pair):
    dom0, domu = pair
    p = via.alloc_unbound(domu, dom0.domid)
    assert via.status(domu, p) == (UNBOUND, 0, dom0.domid, None, None, None)
    assert nothing_pending(domu, p)  # §4.1: nothing becomes pending


def test_alloc_unbound_remote_domid_self_resolves_to_caller_not_dom(via, hv):
    # §4.1 step 4 / §16: DOMID_SELF as remote is the *caller's* id, not dom's.
    priv = hv.create_domain(privileged=True, domid=5)
    u = hv.create_domain(domid=3)
    p = via.alloc_unbound(priv, DOMID_SELF, dom=3)  # port lives in dom 3
    assert via.status(u, p) == (UNBOUND, 0, 5, None, None, None)
    assert via.status(priv, p, dom=3) == (UNBOUND, 0, 5, None, None, None)
    # so dom 3 itself cannot loop back onto it, but dom 5 can bind it
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_interdomain(u, DOMID_SELF, p)
    lp = via.bind_interdomain(priv, 3, p)
    assert via.status(u, p) == (INTERDOMAIN, 0, 5, lp, None, None)


def test_alloc_unbound_remote_self_for_own_domain(via, domu):
    p = via.alloc_unbound(domu, DOMID_SELF)
    assert via.status(domu, p) == (UNBOUND, 0, domu.domid, None, None, None)


def test_alloc_unbound_dom_by_own_numeric_id(via, domu):
    p = via.alloc_unbound(domu, 0, dom=domu.domid)
    assert p == 1
    assert via.status(domu, 1)[0] == UNBOUND


@pytest.mark.parametrize("remote", [0x1234, DOMID_IO, DOMID_INVALID, 0x7FFF, 0xFFFF, 0x7FF0 - 1])
def test_alloc_unbound_remote_dom_is_not_validated(via, domu, remote):
    p = via.alloc_unbound(domu, remote)
    assert via.status(domu, p) == (UNBOUND, 0, remote, None, None, None)


@pytest.mark.parametrize("dom", [999, 2, DOMID_INVALID, 0x7FEF, 0xFFFF])
def test_alloc_unbound_unknown_dom_esrch(via, pair, dom):
    dom0, domu = pair
    for caller in (dom0, domu):
        with raises_errno(via.xe, errno.ESRCH):
            via.alloc_unbound(caller, 0, dom=dom)
    assert via.alloc_unbound(domu, 0) == 1  # nothing was allocated anywhere
    assert via.alloc_unbound(dom0, 0) == 1


def test_alloc_unbound_foreign_dom_eperm_releases_port(via, hv, pair):
    dom0, domu = pair
    other = hv.create_domain()
    for target in (dom0, other):
        with raises_errno(via.xe, errno.EPERM):
            via.alloc_unbound(domu, domu.domid, dom=target.domid)
        assert via.status(target, 1) == (0, 0, None, None, None, None)  # port put back
        assert via.alloc_unbound(target, 0) == 1
    assert via.alloc_unbound(domu, 0) == 1  # caller untouched too


def test_alloc_unbound_enospc_before_eperm(via, hv, domu):
    # §4.1 step 3 / §16: allocation happens before the privilege check.
    full = hv.create_domain(max_evtchn_port=0)
    with raises_errno(via.xe, errno.ENOSPC):
        via.alloc_unbound(domu, 0, dom=full.domid)
    small = hv.create_domain(max_evtchn_port=2)
    via.alloc_unbound(small, 0)
    via.alloc_unbound(small, 0)
    with raises_errno(via.xe, errno.ENOSPC):
        via.alloc_unbound(domu, 0, dom=small.domid)
    roomy = hv.create_domain(max_evtchn_port=3)
    with raises_errno(via.xe, errno.EPERM):
        via.alloc_unbound(domu, 0, dom=roomy.domid)


def test_alloc_unbound_privileged_caller_allocates_in_other_domain(via, pair):
    dom0, domu = pair
    p = via.alloc_unbound(dom0, dom0.domid, dom=domu.domid)
    assert p == 1
    assert via.status(domu, 1) == (UNBOUND, 0, dom0.domid, None, None, None)
    assert via.status(dom0, 1) == (0, 0, None, None, None, None)  # not in dom0
    # and the domU can use it: dom0 binds to it from its side
    lp = via.bind_interdomain(dom0, domu.domid, 1)
    assert via.status(domu, 1) == (INTERDOMAIN, 0, dom0.domid, lp, None, None)


def test_second_privileged_domain_passes_target_check(via, hv, pair):
    dom0, domu = pair
    priv2 = hv.create_domain(privileged=True)
    p = via.alloc_unbound(priv2, 0, dom=domu.domid)
    assert via.status(priv2, p, dom=domu.domid)[0] == UNBOUND
    assert via.status(priv2, 0, dom=dom0.domid)[0] == 0


def test_max_evtchn_port_limit(via, hv):
    d = hv.create_domain(max_evtchn_port=3)
    assert [via.alloc_unbound(d, 0) for _ in range(3)] == [1, 2, 3]
    with raises_errno(via.xe, errno.ENOSPC):
        via.alloc_unbound(d, 0)
    d.close(2)
    assert via.alloc_unbound(d, 0) == 2


@pytest.mark.parametrize("layout,nr", [("x86_64", 4096), ("x86_32", 1024)])
@pytest.mark.parametrize("maxp", [None, 1 << 20])
def test_abi_port_limit(xe, hv, layout, nr, maxp):
    # §2.1: p allocatable iff p <= max_evtchn_port and p < 4096 (1024 for 32-bit).
    d = hv.create_domain(layout=layout, max_evtchn_port=maxp)
    ports = [d.alloc_unbound(0) for _ in range(nr - 1)]
    assert ports == list(range(1, nr))
    with raises_errno(xe, errno.ENOSPC):
        d.alloc_unbound(0)
    with raises_errno(xe, errno.ENOSPC):
        d.bind_ipi(0)
    # the last port works like any other
    assert d.status(nr - 1).status == UNBOUND
    with raises_errno(xe, errno.EINVAL):  # beyond the ABI: not valid
        d.status(nr)


def test_port_validity_is_bucket_granular(via, domu):
    # §2.3 / §16: 64 ports valid from creation; grows in steps of 64.
    assert via.status(domu, 5) == (0, 0, None, None, None, None)
    assert via.status(domu, 63) == (0, 0, None, None, None, None)
    for port in (64, 100, 4095, 4096, 0xFFFFFFFF):
        with raises_errno(via.xe, errno.EINVAL):
            via.status(domu, port)
    via.unmask(domu, 5)
    with raises_errno(via.xe, errno.EINVAL):
        via.unmask(domu, 100)
    for _ in range(64):
        via.alloc_unbound(domu, 0)  # ports 1..64: the second bucket now exists
    assert via.status(domu, 100) == (0, 0, None, None, None, None)
    assert via.status(domu, 127) == (0, 0, None, None, None, None)
    via.unmask(domu, 100)
    with raises_errno(via.xe, errno.EINVAL):
        via.status(domu, 128)
    with raises_errno(via.xe, errno.EINVAL):
        via.unmask(domu, 128)


def test_validity_never_shrinks(xe, domu):
    for _ in range(70):
        domu.alloc_unbound(0)
    for p in range(1, 71):
        domu.close(p)
    assert domu.status(127).status == 0
    with raises_errno(xe, errno.EINVAL):
        domu.close(127)  # valid but FREE


# --------------------------------------------------------------- bind_interdomain (§4.2)


def test_bind_interdomain_basic(xe, via, pair, hooks):
    dom0, domu = pair
    p = via.alloc_unbound(domu, dom0.domid)
    lp = via.bind_interdomain(dom0, domu.domid, p)
    assert lp == 1
    assert via.status(dom0, lp) == (INTERDOMAIN, 0, domu.domid, p, None, None)
    assert via.status(domu, p) == (INTERDOMAIN, 0, dom0.domid, lp, None, None)
    # §4.2 step 7: the local port is left pending (vCPU 0, unmasked -> selector + upcall)
    s0 = si(dom0)
    assert s0.pending(lp) and s0.sel(0) == 1 and s0.upcall_pending(0) == 1
    assert s0.sel(1) == 0 and s0.upcall_pending(1) == 0
    assert hooks == [("kick", 0)]
    # the remote end is not made pending
    assert nothing_pending(domu, p)


def test_bind_interdomain_unprivileged_may_bind_port_naming_it(via, pair):
    dom0, domu = pair
    p = via.alloc_unbound(dom0, domu.domid)
    lp = via.bind_interdomain(domu, dom0.domid, p)
    assert via.status(domu, lp) == (INTERDOMAIN, 0, dom0.domid, p, None, None)
    assert si(domu).pending(lp)


@pytest.mark.parametrize("by_self", [True, False])
def test_bind_interdomain_loopback(via, domu, by_self):
    p = via.alloc_unbound(domu, DOMID_SELF if by_self else domu.domid)
    lp = via.bind_interdomain(domu, DOMID_SELF if by_self else domu.domid, p)
    assert lp == p + 1
    assert via.status(domu, p) == (INTERDOMAIN, 0, domu.domid, lp, None, None)
    assert via.status(domu, lp) == (INTERDOMAIN, 0, domu.domid, p, None, None)
    s = si(domu)
    assert s.pending(lp) and not s.pending(p)
    via.send(domu, lp)  # loopback: sending on lp raises p in the same domain
    assert s.pending(p)


@pytest.mark.parametrize("rdom", [999, 2, DOMID_INVALID, 0xFFFF])
def test_bind_interdomain_unknown_remote_esrch(via, domu, rdom):
    with raises_errno(via.xe, errno.ESRCH):
        via.bind_interdomain(domu, rdom, 1)
    assert via.alloc_unbound(domu, 0) == 1


def test_bind_interdomain_allocates_before_checking_remote_port(via, hv, dom0):
    # §4.2 step 2 before step 3: a full caller gets ENOSPC even for a bad remote port.
    full = hv.create_domain(max_evtchn_port=0)
    with raises_errno(via.xe, errno.ENOSPC):
        via.bind_interdomain(full, dom0.domid, 100)
    with raises_errno(via.xe, errno.ENOSPC):
        via.bind_interdomain(full, dom0.domid, 0)
    # remote domain lookup comes first of all
    with raises_errno(via.xe, errno.ESRCH):
        via.bind_interdomain(full, 999, 100)


def test_bind_interdomain_bad_remote_port_einval(via, hv, pair):
    dom0, domu = pair
    third = hv.create_domain()
    ipi = via.bind_ipi(dom0, 0)  # port 1
    vp = via.bind_virq(dom0, VIRQ_TIMER)  # port 2
    other = via.alloc_unbound(dom0, third.domid)  # port 3: names someone else
    mine = via.alloc_unbound(dom0, domu.domid)  # port 4
    for rport in (100, 64, 0xFFFFFFFF, 0, 5, ipi, vp, other):
        with raises_errno(via.xe, errno.EINVAL):
            via.bind_interdomain(domu, dom0.domid, rport)
    # the failed attempts allocated nothing in the caller (§2.2 "put back")
    assert via.status(domu, 1) == (0, 0, None, None, None, None)
    lp = via.bind_interdomain(domu, dom0.domid, mine)
    assert lp == 1
    # already INTERDOMAIN: not UNBOUND any more
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_interdomain(domu, dom0.domid, mine)
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_interdomain(third, dom0.domid, mine)
    # privilege does not help: dom0 cannot bind a domU port that names domU itself
    q = via.alloc_unbound(domu, DOMID_SELF)
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_interdomain(dom0, domu.domid, q)


def test_bind_interdomain_remote_keeps_its_notify_vcpu(via, pair):
    dom0, domu = pair
    p = via.alloc_unbound(domu, dom0.domid)
    via.bind_vcpu(domu, p, 1)
    lp = via.bind_interdomain(dom0, domu.domid, p)
    assert via.status(domu, p) == (INTERDOMAIN, 1, dom0.domid, lp, None, None)
    via.send(dom0, lp)
    s = si(domu)
    assert s.pending(p)
    assert s.sel(1) == 1 and s.upcall_pending(1) == 1
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0


def test_bind_interdomain_local_notify_vcpu_is_zero(via, pair):
    dom0, domu = pair
    p = via.alloc_unbound(dom0, domu.domid)
    via.bind_vcpu(dom0, p, 1)
    lp = via.bind_interdomain(domu, dom0.domid, p)
    assert via.status(domu, lp)[1] == 0
    assert si(domu).sel(0) == 1 and si(domu).sel(1) == 0


def test_bind_interdomain_masked_local_port_pending_without_upcall(via, pair, hooks):
    dom0, domu = pair
    p = via.alloc_unbound(dom0, domu.domid)
    s = si(domu)
    s.set_mask(1)  # the port bind_interdomain will allocate
    lp = via.bind_interdomain(domu, dom0.domid, p)
    assert lp == 1
    assert s.pending(1) and s.masked(1)
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0
    assert hooks == []


# -------------------------------------------------------------------- bind_virq (§4.3)


@pytest.mark.parametrize("virq", [24, 25, 1000, 0x80000000, 0xFFFFFFFF])
def test_bind_virq_bad_number_einval(via, pair, virq):
    dom0, domu = pair
    for d in (dom0, domu):
        with raises_errno(via.xe, errno.EINVAL):
            via.bind_virq(d, virq)
        with raises_errno(via.xe, errno.EINVAL):  # before the vCPU check
            via.bind_virq(d, virq, 7)


def test_bind_virq_nonpervcpu_with_vcpu_nonzero_einval_before_enoent(via, pair):
    dom0, domu = pair
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_virq(domu, VIRQ_ARGO, 1)  # existing vCPU 1
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_virq(domu, VIRQ_ARGO, 9)  # non-existent: still EINVAL (step 2 < 3)
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_virq(dom0, VIRQ_CONSOLE, 1)
    with raises_errno(via.xe, errno.EINVAL):
        via.bind_virq(domu, VIRQ_CONSOLE, 9)  # EINVAL before EBUSY too


@pytest.mark.parametrize("virq", PER_VCPU_VIRQS)
def test_bind_virq_per_vcpu(via, domu, virq):
    p0 = via.bind_virq(domu, virq, 0)
    p1 = via.bind_virq(domu, virq, 1)
    assert (p0, p1) == (1, 2)
    assert via.status(domu, p0) == (VIRQ, 0, None, None, None, virq)
    assert via.status(domu, p1) == (VIRQ, 1, None, None, None, virq)
    for v in (0, 1):
        with raises_errno(via.xe, errno.EEXIST):
            via.bind_virq(domu, virq, v)
    for v in (2, 31, 32, 0xFFFFFFFF):
        with raises_errno(via.xe, errno.ENOENT):
            via.bind_virq(domu, virq, v)
    assert nothing_pending(domu, p0) and nothing_pending(domu, p1)


def test_bind_virq_per_domain_argo_any_domain(via, pair):
    dom0, domu = pair
    for d in (domu, dom0):
        p = via.bind_virq(d, VIRQ_ARGO, 0)
        assert via.status(d, p) == (VIRQ, 0, None, None, None, VIRQ_ARGO)
        with raises_errno(via.xe, errno.EEXIST):
            via.bind_virq(d, VIRQ_ARGO, 0)
        # still EEXIST after moving it to vCPU 1: the entry is on vCPU 0's table
        via.bind_vcpu(d, p, 1)
        with raises_errno(via.xe, errno.EEXIST):
            via.bind_virq(d, VIRQ_ARGO, 0)


def test_bind_virq_global_only_hardware_domain(via, pair):
    dom0, domu = pair
    for virq in GLOBAL_VIRQS:
        with raises_errno(via.xe, errno.EBUSY):
            via.bind_virq(domu, virq, 0)
    ports = [via.bind_virq(dom0, virq, 0) for virq in GLOBAL_VIRQS]
    assert ports == list(range(1, len(GLOBAL_VIRQS) + 1))
    for virq, p in zip(GLOBAL_VIRQS, ports):
        assert via.status(dom0, p) == (VIRQ, 0, None, None, None, virq)
    for virq in GLOBAL_VIRQS:
        with raises_errno(via.xe, errno.EEXIST):
            via.bind_virq(dom0, virq, 0)
    assert via.status(domu, 1)[0] == 0  # the EBUSY attempts allocated nothing


def test_bind_virq_global_not_for_second_privileged_domain(via, hv, pair):
    dom0, domu = pair
    priv2 = hv.create_domain(privileged=True)
    with raises_errno(via.xe, errno.EBUSY):
        via.bind_virq(priv2, VIRQ_CONSOLE, 0)


def test_bind_virq_global_without_hardware_domain(via, hv):
    a = hv.create_domain()
    b = hv.create_domain()
    for d in (a, b):
        with raises_errno(via.xe, errno.EBUSY):
            via.bind_virq(d, VIRQ_CONSOLE, 0)
        assert via.bind_virq(d, VIRQ_TIMER, 0) == 1


def test_bind_virq_global_by_configured_handler(via, hv, pair):
    dom0, domu = pair
    hv.set_virq_handler(VIRQ_CONSOLE, domu.domid)
    p = via.bind_virq(domu, VIRQ_CONSOLE, 0)
    assert via.status(domu, p) == (VIRQ, 0, None, None, None, VIRQ_CONSOLE)
    with raises_errno(via.xe, errno.EBUSY):
        via.bind_virq(dom0, VIRQ_CONSOLE, 0)
    # other global VIRQs still belong to the hardware domain
    with raises_errno(via.xe, errno.EBUSY):
        via.bind_virq(domu, 3, 0)
    q = via.bind_virq(dom0, 3, 0)
    assert via.status(dom0, q) == (VIRQ, 0, None, None, None, 3)


def test_bind_virq_eexist_before_enospc(via, hv):
    d = hv.create_domain(max_evtchn_port=1)
    assert via.bind_virq(d, VIRQ_TIMER, 0) == 1
    with raises_errno(via.xe, errno.EEXIST):
        via.bind_virq(d, VIRQ_TIMER, 0)
    with raises_errno(via.xe, errno.ENOSPC):
        via.bind_virq(d, VIRQ_DEBUG, 0)
    with raises_errno(via.xe, errno.ENOSPC):  # failure recorded no binding
        via.bind_virq(d, VIRQ_DEBUG, 0)


def test_bind_virq_rebind_after_close(via, domu):
    p = via.bind_virq(domu, VIRQ_TIMER, 1)
    via.close(domu, p)
    assert via.bind_virq(domu, VIRQ_TIMER, 1) == p


def test_bind_virq_enospc_leaves_no_binding(via, hv):
    d = hv.create_domain(vcpus=2, max_evtchn_port=1)
    via.alloc_unbound(d, 0)
    with raises_errno(via.xe, errno.ENOSPC):
        via.bind_virq(d, VIRQ_TIMER, 1)
    d.close(1)
    assert via.bind_virq(d, VIRQ_TIMER, 1) == 1


# -------------------------------------------------------------------- bind_pirq (§4.4)


@pytest.mark.parametrize("pirq", [256, 257, 0x7FFFFFFF, 0xFFFFFFFF])
def test_bind_pirq_out_of_range_einval_before_eperm(via, pair, pirq):
    dom0, domu = pair
    for d in (dom0, domu):
        with raises_errno(via.xe, errno.EINVAL):
            via.bind_pirq(d, pirq)


def test_bind_pirq_needs_permission(via, hv, pair):
    dom0, domu = pair
    with raises_errno(via.xe, errno.EPERM):
        via.bind_pirq(domu, 10)
    assert via.status(domu, 1)[0] == 0
    hv.permit_pirq(domu.domid, 10)
    p = via.bind_pirq(domu, 10)
    assert p == 1
    assert via.status(domu, p) == (PIRQ, 0, None, None, 10, None)
    with raises_errno(via.xe, errno.EPERM):  # permission is per pirq
        via.bind_pirq(domu, 11)


def test_bind_pirq_privileged_any(via, dom0):
    # Any PIRQ but 0: Xen's pirq_access_permitted needs a host IRQ above 0 (issue 19).
    with raises_errno(via.xe, errno.EPERM):
        via.bind_pirq(dom0, 0)
    for pirq in (1, 128, 255):
        p = via.bind_pirq(dom0, pirq)
        assert via.status(dom0, p) == (PIRQ, 0, None, None, pirq, None)
        assert nothing_pending(dom0, p)


def test_bind_pirq_eexist(via, dom0):
    via.bind_pirq(dom0, 10, 1)
    with raises_errno(via.xe, errno.EEXIST):
        via.bind_pirq(dom0, 10, 1)
    with raises_errno(via.xe, errno.EEXIST):
        via.bind_pirq(dom0, 10, 0)


def test_bind_pirq_eexist_before_enospc(via, hv, dom0):
    d = hv.create_domain(privileged=True, max_evtchn_port=1)
    assert via.bind_pirq(d, 40) == 1
    with raises_errno(via.xe, errno.EEXIST):
        via.bind_pirq(d, 40)
    with raises_errno(via.xe, errno.ENOSPC):
        via.bind_pirq(d, 41)


def test_permit_pirq_range(via, hv, domu):
    for bad in (-1, 256, 1 << 40):
        with pytest.raises(ValueError):
            hv.permit_pirq(domu.domid, bad)
    for pirq in (0, 255):  # the refusals granted nothing
        with raises_errno(via.xe, errno.EPERM):
            via.bind_pirq(domu, pirq, 0)
    hv.permit_pirq(domu.domid, 0)
    hv.permit_pirq(domu.domid, 255)
    # PIRQ 0 stays refused even when granted (Xen: IRQ 0 is never a guest's); the top
    # of the range is a usable grant; a neighbour is not granted
    with raises_errno(via.xe, errno.EPERM):
        via.bind_pirq(domu, 0, 0)
    assert via.bind_pirq(domu, 255, 0) == 1
    assert via.status(domu, 1) == (PIRQ, 0, None, None, 255, None)
    with raises_errno(via.xe, errno.EPERM):
        via.bind_pirq(domu, 254, 0)


def _permitted(hv, n, pirq):
    doms = [hv.create_domain() for _ in range(n)]
    for d in doms:
        hv.permit_pirq(d.domid, pirq)
    return doms


def test_pirq_sharing_rules(via, hv, dom0):
    a, b, c = _permitted(hv, 3, 20)
    # first binder not shareable: nobody else may bind, WILL_SHARE or not
    via.bind_pirq(a, 20, 0)
    for flags in (0, 1):
        with raises_errno(via.xe, errno.EBUSY):
            via.bind_pirq(b, 20, flags)
    with raises_errno(via.xe, errno.EBUSY):
        via.bind_pirq(dom0, 20, 1)
    assert via.status(b, 1)[0] == 0  # EBUSY left the port FREE
    assert via.alloc_unbound(b, 0) == 1
    via.close(b, 1)
    # last binder closes: the host IRQ is unclaimed again
    via.close(a, 1)
    via.bind_pirq(b, 20, 1)  # b makes it shareable
    via.bind_pirq(c, 20, 1)
    with raises_errno(via.xe, errno.EBUSY):  # later binder must also WILL_SHARE
        via.bind_pirq(a, 20, 0)
    via.bind_pirq(a, 20, 1)
    assert via.status(a, 1) == (PIRQ, 0, None, None, 20, None)


def test_pirq_sharing_first_binder_decides_even_if_later_want_share(via, hv):
    a, b = _permitted(hv, 2, 21)
    c = hv.create_domain()
    hv.permit_pirq(c.domid, 21)
    via.bind_pirq(a, 21, 0)
    assert hv._irq_guests[21] == [a] and hv._irq_shareable[21] is False
    with raises_errno(via.xe, errno.EBUSY):
        via.bind_pirq(b, 21, 1)  # a decided: not shared, whatever b wants
    via.close(a, 1)
    assert 21 not in hv._irq_guests and 21 not in hv._irq_shareable  # unclaimed again
    assert via.bind_pirq(a, 21, 1) == 1
    assert via.bind_pirq(b, 21, 1) == 1
    assert hv._irq_guests[21] == [a, b] and hv._irq_shareable[21] is True
    via.close(a, 1)  # b still holds it as shareable
    assert hv._irq_guests[21] == [b] and hv._irq_shareable[21] is True
    assert via.bind_pirq(a, 21, 1) == 1
    assert hv._irq_guests[21] == [b, a]
    with raises_errno(via.xe, errno.EBUSY):
        via.bind_pirq(c, 21, 0)  # shared, but c does not say it will share
    assert hv._irq_guests[21] == [b, a] and hv._irq_shareable[21] is True
    for d in (a, b):
        assert via.status(d, 1) == (PIRQ, 0, None, None, 21, None)
    assert via.status(c, 1)[0] == 0  # the EBUSY left c's port FREE


def test_pirq_sharing_at_most_32_guests(via, hv, dom0):
    doms = _permitted(hv, 32, 30)
    via.bind_pirq(dom0, 30, 1)
    for d in doms[:31]:
        via.bind_pirq(d, 30, 1)  # 32 guests now
    with raises_errno(via.xe, errno.EBUSY):
        via.bind_pirq(doms[31], 30, 1)
    assert hv._irq_guests[30] == [dom0, *doms[:31]]
    assert via.status(doms[31], 1)[0] == 0  # the EBUSY left the port FREE
    via.close(doms[0], 1)
    assert len(hv._irq_guests[30]) == 31
    assert via.bind_pirq(doms[31], 30, 1) == 1
    assert hv._irq_guests[30] == [dom0, *doms[1:]] and hv._irq_shareable[30] is True
    assert via.status(doms[31], 1) == (PIRQ, 0, None, None, 30, None)


# --------------------------------------------------------------------- bind_ipi (§4.10)


def test_bind_ipi(via, domu):
    assert via.bind_ipi(domu, 0) == 1
    assert via.bind_ipi(domu, 1) == 2
    assert via.bind_ipi(domu, 1) == 3  # any number of IPI ports per vCPU
    assert via.status(domu, 1) == (IPI, 0, None, None, None, None)
    assert via.status(domu, 2) == (IPI, 1, None, None, None, None)
    assert nothing_pending(domu, 2)


@pytest.mark.parametrize("vcpu", [2, 31, 32, 1000, 0xFFFFFFFF])
def test_bind_ipi_bad_vcpu_enoent(via, domu, vcpu):
    with raises_errno(via.xe, errno.ENOENT):
        via.bind_ipi(domu, vcpu)
    assert via.bind_ipi(domu, 0) == 1


def test_bind_ipi_enoent_before_enospc(via, hv):
    d = hv.create_domain(max_evtchn_port=0)
    with raises_errno(via.xe, errno.ENOENT):
        via.bind_ipi(d, 1)
    with raises_errno(via.xe, errno.ENOSPC):
        via.bind_ipi(d, 0)


def test_32_vcpus(via, hv):
    d = hv.create_domain(vcpus=32)
    assert len(d.vcpus) == 32
    p = via.bind_ipi(d, 31)
    assert via.status(d, p)[1] == 31
    with raises_errno(via.xe, errno.ENOENT):
        via.bind_ipi(d, 32)


def test_every_allocating_command_reports_enospc(via, hv):
    d = hv.create_domain(privileged=True, max_evtchn_port=0)
    peer = hv.create_domain()
    rp = via.alloc_unbound(peer, d.domid)
    for call in (
        lambda: via.alloc_unbound(d, 0),
        lambda: via.bind_interdomain(d, peer.domid, rp),
        lambda: via.bind_virq(d, VIRQ_TIMER, 0),
        lambda: via.bind_virq(d, VIRQ_CONSOLE, 0),
        lambda: via.bind_pirq(d, 7),
        lambda: via.bind_ipi(d, 0),
    ):
        with raises_errno(via.xe, errno.ENOSPC):
            call()
    assert via.status(peer, rp) == (UNBOUND, 0, d.domid, None, None, None)


@pytest.mark.parametrize("layout", ["x86_64", "x86_32"])
def test_validity_is_buckets_not_the_port_limit(via, hv, layout):
    # §2.3: the first bucket (64 ports) is valid from creation whatever max_evtchn_port says
    d = hv.create_domain(layout=layout, max_evtchn_port=0)
    assert via.status(d, 5) == (0, 0, None, None, None, None)
    assert via.status(d, 63) == (0, 0, None, None, None, None)
    via.unmask(d, 63)
    with raises_errno(via.xe, errno.EINVAL):
        via.status(d, 64)
    with raises_errno(via.xe, errno.EINVAL):
        via.close(d, 5)  # valid, FREE
