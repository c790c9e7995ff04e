"""Event delivery and SCHEDOP_poll (spec §5, §7.1-7.3, §8, §10; API.md hooks;
semantics.md "Hypervisor" / "Poll").

Everything is observed through shared_info bytes (xenabi.SharedInfoView), the Vcpu
properties and the on_kick / on_wake hooks.
"""

from __future__ import annotations

import errno

import pytest

from hvhelpers import raises_errno
from xenabi import SharedInfoView, si

VIRQ_TIMER, VIRQ_DEBUG, VIRQ_CONSOLE, VIRQ_ARGO = 0, 1, 2, 11


def ipis(d, n, vcpu=0):
    return [d.bind_ipi(vcpu) for _ in range(n)]


# ---------------------------------------------------------------------- send_virq (§5.2)


def test_send_virq_per_vcpu_targets_that_vcpu(xe, hv, domu, hooks):
    p0 = domu.bind_virq(VIRQ_TIMER, 0)
    p1 = domu.bind_virq(VIRQ_TIMER, 1)
    assert hv.send_virq(domu.domid, VIRQ_TIMER, 1) is None
    s = si(domu)
    assert s.pending(p1) and not s.pending(p0)
    assert s.sel(1) == 1 and s.upcall_pending(1) == 1
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0
    assert hooks == [("kick", 1)]
    hv.send_virq(domu.domid, VIRQ_TIMER)  # vcpu defaults to 0
    assert s.pending(p0) and s.upcall_pending(0) == 1
    assert hooks == [("kick", 1), ("kick", 0)]


def test_send_virq_unbound_is_dropped(xe, hv, pair, hooks):
    dom0, domu = pair
    domu.bind_virq(VIRQ_TIMER, 0)
    before = si(domu).snapshot()
    hv.send_virq(domu.domid, VIRQ_TIMER, 1)  # bound on vCPU 0 only
    hv.send_virq(domu.domid, VIRQ_DEBUG, 0)
    hv.send_virq(domu.domid, VIRQ_ARGO, 0)
    hv.send_virq(domu.domid, VIRQ_CONSOLE)
    hv.send_virq(dom0.domid, VIRQ_CONSOLE)
    assert si(domu).snapshot() == before
    assert hooks == []


def test_send_virq_per_domain_uses_vcpu0_entry_and_notify_vcpu(xe, hv, domu):
    p = domu.bind_virq(VIRQ_ARGO, 0)
    domu.bind_vcpu(p, 1)
    hv.send_virq(domu.domid, VIRQ_ARGO, 0)
    s = si(domu)
    assert s.pending(p) and s.sel(1) == 1 and s.sel(0) == 0
    s.set_pending(p, 0)
    s.ack(1)
    hv.send_virq(domu.domid, VIRQ_ARGO, 1)  # vcpu ignored for per-domain VIRQs
    assert s.pending(p) and s.sel(1) == 1 and s.sel(0) == 0


def test_send_virq_global_to_named_domain(xe, hv, dom0):
    p = dom0.bind_virq(VIRQ_CONSOLE)
    hv.send_virq(dom0.domid, VIRQ_CONSOLE)
    assert si(dom0).pending(p)


def test_send_virq_errors(xe, hv, domu):
    with raises_errno(xe, errno.EINVAL):
        hv.send_virq(domu.domid, 24)
    with raises_errno(xe, errno.ENOENT):
        hv.send_virq(domu.domid, VIRQ_TIMER, 2)
    with raises_errno(xe, errno.ESRCH):
        hv.send_virq(999, VIRQ_TIMER)


# ---------------------------------------------------------------- send_pirq, inject


def test_send_pirq(xe, hv, pair, hooks):
    dom0, domu = pair
    p = dom0.bind_pirq(60)
    assert hv.send_pirq(dom0.domid, 60) is None
    s = si(dom0)
    assert s.pending(p) and s.sel(0) == 1 and hooks == [("kick", 0)]
    s.set_pending(p, 0)
    s.ack(0)
    dom0.bind_vcpu(p, 1)
    hv.send_pirq(dom0.domid, 60)
    assert s.pending(p) and s.sel(1) == 1 and s.sel(0) == 0
    before = si(domu).snapshot()
    hv.send_pirq(domu.domid, 60)  # not bound there: dropped
    hv.send_pirq(dom0.domid, 61)
    assert si(domu).snapshot() == before
    for bad in (256, 1000):
        with raises_errno(xe, errno.EINVAL):
            hv.send_pirq(dom0.domid, bad)


def test_send_pirq_shared_irq_reaches_each_binder_separately(xe, hv, pair):
    dom0, domu = pair
    hv.permit_pirq(domu.domid, 70)
    a = dom0.bind_pirq(70, 1)
    b = domu.bind_pirq(70, 1)
    hv.send_pirq(domu.domid, 70)
    assert si(domu).pending(b) and not si(dom0).pending(a)


def test_inject(xe, hv, pair, hooks):
    dom0, domu = pair
    ub = domu.alloc_unbound(0)  # UNBOUND is usable: inject makes it pending
    ipi = domu.bind_ipi(1)
    timer = domu.bind_virq(VIRQ_TIMER, 1)
    s = si(domu)
    hv.inject(domu.domid, ub)
    assert s.pending(ub) and s.sel(0) == 1 and hooks == [("kick", 0)]
    hv.inject(domu.domid, ipi)
    hv.inject(domu.domid, timer)
    assert s.pending(ipi) and s.pending(timer) and s.sel(1) == 1
    assert hooks == [("kick", 0), ("kick", 1)]


def test_inject_unusable_skipped_invalid_einval(xe, hv, domu, hooks):
    before = si(domu).snapshot()
    for port in (0, 5, 63):
        hv.inject(domu.domid, port)  # RESERVED / FREE: skipped silently
    assert si(domu).snapshot() == before and hooks == []
    for port in (64, 100, 0xFFFFFFFF):
        with raises_errno(xe, errno.EINVAL):
            hv.inject(domu.domid, port)


# ------------------------------------------------------------------ 2-level rules (§8.1)


def test_first_event_sets_pending_selector_upcall_and_kicks(xe, hv, domu):
    seen = []

    def on_kick(v):
        seen.append((v.id, v.upcall_pending, v.pending_sel))

    hv.on_kick = on_kick
    p = domu.bind_ipi(0)
    domu.send(p)
    s = si(domu)
    assert s.pending(p) and not s.masked(p)
    assert s.sel(0) == 1 and s.upcall_pending(0) == 1
    assert s.upcall_mask(0) == 1  # Xen does not touch the mask; kicks ignore it (§7.2)
    assert seen == [(0, 1, 1)]  # state is visible when the hook runs
    v = domu.vcpus[0]
    assert v.upcall_pending == 1 and v.pending_sel == 1 and v.upcall_mask == 1


def test_second_port_same_word_no_new_kick(xe, domu, hooks):
    a, b = ipis(domu, 2)
    domu.send(a)
    domu.send(b)
    s = si(domu)
    assert s.pending(a) and s.pending(b) and s.sel(0) == 1
    assert hooks == [("kick", 0)]


def test_new_word_sets_selector_but_upcall_already_pending(xe, domu, hooks):
    ports = ipis(domu, 70)
    domu.send(ports[0])  # word 0
    domu.send(ports[65])  # port 66: word 1
    s = si(domu)
    assert s.sel(0) == 0b11 and s.upcall_pending(0) == 1
    assert hooks == [("kick", 0)]  # upcall_pending was already 1: no second kick


def test_selector_already_set_means_no_upcall(xe, domu, hooks):
    a, b = ipis(domu, 2)
    domu.send(a)
    s = si(domu)
    s.set_upcall_pending(0, 0)  # guest cleared upcall_pending but not the selector
    del hooks[:]
    domu.send(b)
    assert s.pending(b) and s.sel(0) == 1
    assert s.upcall_pending(0) == 0
    assert hooks == []


def test_guest_set_upcall_flag_is_not_a_kick(xe, domu, hooks):
    p = domu.bind_ipi(0)
    s = si(domu)
    s.set_upcall_pending(0, 1)  # the guest sets its own flag
    domu.send(p)
    assert s.sel(0) == 1 and s.upcall_pending(0) == 1
    assert hooks == []


def test_coalescing_already_pending_does_nothing(xe, domu, hooks):
    a, b = ipis(domu, 2)
    domu.send(a)
    s = si(domu)
    s.ack(0)  # the guest clears selector and upcall_pending but leaves the port pending
    del hooks[:]
    domu.send(a)
    assert s.pending(a) and s.sel(0) == 0 and s.upcall_pending(0) == 0
    assert hooks == []
    domu.send(b)  # a fresh port does deliver
    assert s.sel(0) == 1 and s.upcall_pending(0) == 1 and hooks == [("kick", 0)]


def test_masked_port_stays_pending_without_upcall(xe, hv, domu, hooks):
    p = domu.bind_ipi(1)
    s = si(domu)
    s.set_mask(p)
    domu.send(p)
    hv.inject(domu.domid, p)
    assert s.pending(p) and s.masked(p)
    assert s.sel(1) == 0 and s.upcall_pending(1) == 0
    assert hooks == []
    assert domu.shared_info.is_pending(p) and domu.shared_info.is_masked(p)


def test_events_for_other_vcpu_do_not_touch_vcpu0(xe, domu, hooks):
    p = domu.bind_ipi(1)
    domu.send(p)
    s = si(domu)
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0
    assert hooks == [("kick", 1)]


def test_kick_runs_for_each_vcpu_and_domain(xe, pair, hooks):
    dom0, domu = pair
    a = dom0.bind_ipi(1)
    b = domu.bind_ipi(1)
    dom0.send(a)
    domu.send(b)
    assert hooks == [("kick", 1), ("kick", 1)]
    assert si(dom0).upcall_pending(1) == 1 and si(domu).upcall_pending(1) == 1


def test_hook_exception_propagates_after_state_change(xe, hv, domu):
    def boom(v):
        raise RuntimeError("hook")

    hv.on_kick = boom
    p = domu.bind_ipi(0)
    with pytest.raises(RuntimeError):
        domu.send(p)
    s = si(domu)
    assert s.pending(p) and s.sel(0) == 1 and s.upcall_pending(0) == 1


# --------------------------------------------------------------- unmask hypercall (§8.3)


def test_unmask_refires_when_mask_was_set(xe, domu, hooks):
    p = domu.bind_ipi(1)
    s = si(domu)
    s.set_mask(p)
    domu.send(p)
    assert hooks == []
    domu.unmask(p)
    assert not s.masked(p) and s.pending(p)
    assert s.sel(1) == 1 and s.upcall_pending(1) == 1  # delivered to the notify vCPU
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0
    assert hooks == [("kick", 1)]


def test_unmask_noop_when_guest_already_cleared_mask(xe, domu, hooks):
    p = domu.bind_ipi(0)
    s = si(domu)
    s.set_mask(p)
    domu.send(p)
    s.set_mask(p, 0)  # the guest clears the bit itself, then hypercalls
    domu.unmask(p)
    assert s.pending(p) and s.sel(0) == 0 and s.upcall_pending(0) == 0
    assert hooks == []


def test_unmask_not_pending_only_clears_mask(xe, domu, hooks):
    p = domu.bind_ipi(0)
    s = si(domu)
    s.set_mask(p)
    domu.unmask(p)
    assert not s.masked(p) and not s.pending(p)
    assert s.sel(0) == 0 and s.upcall_pending(0) == 0 and hooks == []


def test_unmask_selector_already_set_no_kick(xe, domu, hooks):
    a, b = ipis(domu, 2)
    s = si(domu)
    s.set_mask(b)
    domu.send(b)
    domu.send(a)  # selector bit 0 set, upcall 1, kick
    s.set_upcall_pending(0, 0)
    del hooks[:]
    domu.unmask(b)
    assert not s.masked(b) and s.upcall_pending(0) == 0 and hooks == []


def test_unmask_upcall_already_pending_no_kick(xe, domu, hooks):
    ports = ipis(domu, 70)
    s = si(domu)
    s.set_mask(ports[65])  # port 66, word 1
    domu.send(ports[65])
    domu.send(ports[0])
    del hooks[:]
    domu.unmask(ports[65])
    assert s.sel(0) == 0b11 and s.upcall_pending(0) == 1 and hooks == []


def test_unmask_through_raw_entry_points(xe, domu, hooks):
    from hvhelpers import CompatVia, RawVia

    s = si(domu)
    for via in (RawVia(xe), CompatVia(xe)):
        p = domu.bind_ipi(1)
        s.set_mask(p)
        domu.send(p)
        s.ack(1)
        del hooks[:]
        via.unmask(domu, p)
        assert s.sel(1) == 1 and s.upcall_pending(1) == 1 and hooks == [("kick", 1)]


# --------------------------------------------------------------------- x86_32 layout (§12.2)


def test_x86_32_bit_positions(xe, hv, hooks):
    d = hv.create_domain(vcpus=2, layout="x86_32")
    s = si(d, "x86_32")
    ports = [d.bind_ipi(1) for _ in range(40)]
    d.send(33)  # word 1 of 32-bit words
    m = s.m
    assert m[2048 + 4] == 0b10  # pending bit 33: byte 2048 + 33 // 8, bit 1
    assert s.sel(1) == 0b10  # u32 selector at vcpu_info + 4
    assert bytes(m[64 + 8 : 64 + 16]) == bytes(8)  # nothing at the 64-bit selector slot
    assert m[64] == 1 and hooks == [("kick", 1)]
    assert d.vcpus[1].pending_sel == 0b10
    # mask bitmap at 2176
    m[2176 + 4] |= 0b100  # mask port 34
    assert d.shared_info.is_masked(34)
    d.send(34)
    assert s.pending(34) and m[2048 + 4] == 0b110
    assert ports[-1] == 40


def test_x86_32_last_port_word_31(xe, hv):
    d = hv.create_domain(layout="x86_32")
    for _ in range(1023):
        d.bind_ipi(0)
    d.send(1023)
    s = si(d, "x86_32")
    assert s.m[2048 + 127] == 0x80 and s.sel(0) == 1 << 31
    assert s.m[2176 + 127] == 0


def test_x86_64_last_port_word_63(xe, hv):
    d = hv.create_domain()
    for _ in range(4095):
        d.bind_ipi(0)
    d.send(4095)
    s = si(d)
    assert s.m[2048 + 511] == 0x80 and s.sel(0) == 1 << 63
    assert d.vcpus[0].pending_sel == 1 << 63


# ------------------------------------------------------------------------- poll (§10)


def test_poll_already_pending_returns_true(xe, domu, hooks):
    a, b = ipis(domu, 2)
    s = si(domu)
    s.set_mask(a)
    domu.send(a)  # pending, masked: mask is ignored by poll
    del hooks[:]
    assert domu.sched_poll([a]) is True
    assert domu.sched_poll([b, a]) is True
    assert domu.vcpus[0].polling is False
    assert hooks == []  # never blocked: no wake


def test_poll_blocks_then_event_wakes(xe, domu, hooks):
    a, b = ipis(domu, 2)
    assert domu.sched_poll([a]) is False
    assert domu.vcpus[0].polling is True
    si(domu).set_mask(a)
    domu.send(a)  # masked ports wake pollers (§10.2), no kick
    assert domu.vcpus[0].polling is False
    assert hooks == [("wake", 0)]


def test_poll_wake_hook_sees_vcpu_not_polling(xe, hv, domu):
    seen = []
    hv.on_wake = lambda v: seen.append((v.id, v.polling))
    a = domu.bind_ipi(1)
    assert domu.sched_poll([a], vcpu=1) is False
    si(domu).set_mask(a)
    domu.send(a)
    assert seen == [(1, False)]


def test_poll_kick_then_wake_order(xe, domu, hooks):
    a = domu.bind_ipi(0)
    assert domu.sched_poll([a]) is False
    domu.send(a)  # unmasked: kick (upcall 0->1) and poller wake; on_kick first
    assert hooks == [("kick", 0), ("wake", 0)]
    assert domu.vcpus[0].polling is False


def test_poll_single_port_not_woken_by_other_masked_port(xe, domu, hooks):
    a, b = ipis(domu, 2)
    s = si(domu)
    s.set_mask(a)
    s.set_mask(b)
    assert domu.sched_poll([a]) is False
    domu.send(b)
    assert domu.vcpus[0].polling is True and hooks == []
    domu.send(a)
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0)]


def test_poll_single_port_woken_by_kick_from_other_port(xe, domu, hooks):
    # §10.2: a kick (upcall_pending 0->1) for any unmasked event on that vCPU ends the poll
    a, b = ipis(domu, 2)
    assert domu.sched_poll([a]) is False
    domu.send(b)
    assert domu.vcpus[0].polling is False
    assert hooks == [("kick", 0), ("wake", 0)]


def test_poll_no_kick_when_upcall_already_pending(xe, domu, hooks):
    a, b, c = ipis(domu, 3)
    domu.send(c)  # upcall_pending = 1 (mask = 1 so poll does not return at once)
    s = si(domu)
    s.set_sel(0, 0)
    s.set_pending(c, 0)
    del hooks[:]
    assert domu.sched_poll([a]) is False
    domu.send(b)  # selector newly set, but upcall_pending already 1: no kick, no wake
    assert domu.vcpus[0].polling is True and hooks == []


def test_poll_multi_port_woken_by_any_port_of_domain(xe, domu, hooks):
    a, b, c = ipis(domu, 3)
    s = si(domu)
    s.set_mask(c)
    assert domu.sched_poll([a, b]) is False
    domu.send(c)  # not in the list: spurious wake-up is part of the contract
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0)]


def test_poll_zero_ports_waits_for_any_event(xe, domu, hooks):
    a = domu.bind_ipi(0)
    si(domu).set_mask(a)
    assert domu.sched_poll([]) is False
    assert domu.vcpus[0].polling is True
    domu.send(a)
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0)]


def test_poll_other_vcpu_of_same_domain_woken(xe, domu, hooks):
    a = domu.bind_ipi(0)
    si(domu).set_mask(a)
    assert domu.sched_poll([], vcpu=1) is False
    domu.send(a)  # set_pending on vCPU 0; check_pollers wakes every poller of the domain
    assert domu.vcpus[1].polling is False and hooks == [("wake", 1)]


def test_poll_other_domain_not_woken(xe, pair, hooks):
    dom0, domu = pair
    a = dom0.bind_ipi(0)
    si(dom0).set_mask(a)
    assert domu.sched_poll([]) is False
    dom0.send(a)
    assert domu.vcpus[0].polling is True and hooks == []


def test_poll_already_pending_set_pending_no_wake(xe, domu, hooks):
    a, b, c = ipis(domu, 3)
    s = si(domu)
    for p in (a, b, c):
        s.set_mask(p)
    domu.send(a)
    assert domu.sched_poll([b, c]) is False
    domu.send(a)  # already pending: set_pending returns at once (§8.1 step 1)
    assert domu.vcpus[0].polling is True and hooks == []
    assert domu.sched_poll([], vcpu=1) is False
    domu.send(a)
    assert domu.vcpus[1].polling is True and hooks == []
    domu.send(b)
    assert sorted(hooks) == [("wake", 0), ("wake", 1)]


def test_poll_local_events_need_delivery_returns_at_once(xe, domu, hooks):
    a = domu.bind_ipi(0)
    s = si(domu)
    s.set_upcall_pending(0, 1)
    # upcall_mask = 1 (initial value): upcall pending but masked is not "need delivery"
    assert domu.sched_poll([a]) is False
    s.set_mask(a)
    domu.send(a)
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0)]
    s.set_pending(a, 0)
    s.set_upcall_mask(0, 0)  # now upcall_pending && !upcall_mask
    assert domu.sched_poll([]) is True
    assert domu.sched_poll([a]) is True
    assert domu.sched_poll([100]) is True  # checked before the ports (§10.1 step 5)
    assert domu.sched_poll([5, 0]) is True
    with raises_errno(xe, errno.EINVAL):  # the port count is checked before it
        domu.sched_poll([a] * 129)
    assert domu.vcpus[0].polling is False
    assert domu.sched_poll([], vcpu=1) is False  # per vCPU: vCPU 1 has nothing
    assert hooks == [("wake", 0)]


def test_poll_port_errors(xe, domu):
    a = domu.bind_ipi(0)
    for bad in ([0], [5], [63], [64], [100], [0xFFFFFFFF], [a, 100], [a, 0]):
        with raises_errno(xe, errno.EINVAL):
            domu.sched_poll(bad)
        assert domu.vcpus[0].polling is False
    domu.send(a)
    # a pending port ends the scan: the invalid port after it is never examined
    assert domu.sched_poll([a, 100]) is True
    assert domu.sched_poll([a, 0]) is True
    with raises_errno(xe, errno.EINVAL):
        domu.sched_poll([100, a])


def test_poll_closed_port_einval(xe, domu):
    a = domu.bind_ipi(0)
    domu.close(a)
    with raises_errno(xe, errno.EINVAL):
        domu.sched_poll([a])


def test_poll_port_count_limit(xe, domu):
    a = domu.bind_ipi(0)
    assert domu.sched_poll([a] * 128) is False
    domu.send(a)
    with raises_errno(xe, errno.EINVAL):
        domu.sched_poll([a] * 129)
    with raises_errno(xe, errno.EINVAL):
        domu.sched_poll([100] * 129)


def test_poll_vcpu_checks_first(xe, domu):
    for v in (2, 32, 1000):
        with raises_errno(xe, errno.ENOENT):
            domu.sched_poll([100] * 129, vcpu=v)
        with raises_errno(xe, errno.ENOENT):
            domu.sched_poll([], vcpu=v)


def test_poll_while_polling_ebusy(xe, domu):
    a, b = ipis(domu, 2)
    assert domu.sched_poll([a]) is False
    with raises_errno(xe, errno.EBUSY):
        domu.sched_poll([b])
    with raises_errno(xe, errno.EBUSY):
        domu.sched_poll([100])  # EBUSY before the port checks
    with raises_errno(xe, errno.EINVAL):
        domu.sched_poll([a] * 129)  # the port-count check comes before EBUSY
    assert domu.sched_poll([b], vcpu=1) is False  # another vCPU may poll
    assert domu.vcpus[0].polling and domu.vcpus[1].polling


def test_poll_bad_port_values(xe, domu):
    for bad in ([-1], [1 << 32], [1 << 64]):
        with pytest.raises(ValueError):
            domu.sched_poll(bad)
    for bad in (["1"], [1.0], [None]):
        with pytest.raises(TypeError):
            domu.sched_poll(bad)
    assert domu.vcpus[0].polling is False


# ---------------------------------------------------------------------- poll timeouts


def test_poll_timeout_absolute(xe, hv, domu, hooks):
    a = domu.bind_ipi(0)
    hv.advance(1000)
    assert hv.now == 1000
    assert domu.sched_poll([a], timeout=1500) is False
    hv.advance(499)
    assert domu.vcpus[0].polling is True and hooks == []
    hv.advance(1)  # hv.now reaches the deadline
    assert hv.now == 1500
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0)]
    assert not si(domu).pending(a)  # a timeout raises nothing


def test_poll_timeout_already_reached_fires_at_once(xe, hv, domu, hooks):
    a = domu.bind_ipi(0)
    hv.advance(100)
    assert domu.sched_poll([a], timeout=100) is False
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0)]
    assert domu.sched_poll([a], timeout=1) is False
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0), ("wake", 0)]


def test_poll_without_timeout_waits_forever(xe, hv, domu, hooks):
    a = domu.bind_ipi(0)
    assert domu.sched_poll([a], timeout=0) is False
    hv.advance(10**15)
    assert domu.vcpus[0].polling is True and hooks == []


def test_poll_stale_timer_wakes_later_poll(xe, hv, domu, hooks):
    a, b = ipis(domu, 2)
    si(domu).set_mask(a)
    assert domu.sched_poll([a], timeout=100) is False
    hv.advance(10)
    domu.send(a)  # woken by the event; the timer stays armed (§10.2 stale timer)
    assert hooks == [("wake", 0)]
    si(domu).set_pending(a, 0)
    assert domu.sched_poll([a]) is False  # no timeout: old deadline still armed
    hv.advance(89)
    assert domu.vcpus[0].polling is True
    hv.advance(1)
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0), ("wake", 0)]
    # the timer has fired: it is gone
    assert domu.sched_poll([a]) is False
    hv.advance(10**9)
    assert domu.vcpus[0].polling is True


def test_poll_timer_fires_only_if_still_polling(xe, hv, domu, hooks):
    a = domu.bind_ipi(0)
    si(domu).set_mask(a)
    assert domu.sched_poll([a], timeout=100) is False
    domu.send(a)
    hv.advance(200)  # fires while not polling: nothing
    assert hooks == [("wake", 0)]
    si(domu).set_pending(a, 0)
    assert domu.sched_poll([a]) is False
    hv.advance(1000)
    assert domu.vcpus[0].polling is True and hooks == [("wake", 0)]


def test_poll_new_timeout_replaces_deadline(xe, hv, domu, hooks):
    a = domu.bind_ipi(0)
    si(domu).set_mask(a)
    assert domu.sched_poll([a], timeout=100) is False
    domu.send(a)
    si(domu).set_pending(a, 0)
    assert domu.sched_poll([a], timeout=200) is False
    hv.advance(150)
    assert domu.vcpus[0].polling is True
    hv.advance(50)
    assert domu.vcpus[0].polling is False and hooks == [("wake", 0), ("wake", 0)]


def test_poll_returning_at_once_does_not_arm_timer(xe, hv, domu, hooks):
    a, b = ipis(domu, 2)
    domu.send(a)
    del hooks[:]
    assert domu.sched_poll([a], timeout=50) is True  # §10.1: returns before step 8
    with raises_errno(xe, errno.EINVAL):
        domu.sched_poll([100], timeout=60)
    assert domu.sched_poll([b]) is False
    hv.advance(1000)
    assert domu.vcpus[0].polling is True and hooks == []


def test_advance_fires_in_deadline_order(xe, hv):
    d0 = hv.create_domain(vcpus=2)
    d1 = hv.create_domain(vcpus=2)
    order = []
    hv.on_wake = lambda v: order.append(v.id)
    # deadlines: d1 v1 @50, d0 v1 @50, d1 v0 @30, d0 v0 @80 (armed in this order)
    assert d1.sched_poll([], timeout=50, vcpu=1) is False
    assert d0.sched_poll([], timeout=50, vcpu=1) is False
    assert d1.sched_poll([], timeout=30, vcpu=0) is False
    assert d0.sched_poll([], timeout=80, vcpu=0) is False
    hv.advance(100)
    assert [v.polling for d in (d0, d1) for v in d.vcpus] == [False] * 4
    assert order == [0, 1, 1, 0]  # d1v0@30, d0v1@50, d1v1@50, d0v0@80
    assert hv.now == 100


def test_advance_tie_by_domid_before_vcpu(xe, hv):
    d0 = hv.create_domain(vcpus=2)
    d1 = hv.create_domain(vcpus=2)
    order = []
    hv.on_wake = lambda v: order.append(v.id)
    assert d1.sched_poll([], timeout=10, vcpu=0) is False
    assert d0.sched_poll([], timeout=10, vcpu=1) is False
    hv.advance(10)
    assert order == [1, 0]  # dom 0 (its vCPU 1) before dom 1 (its vCPU 0)


def test_advance_tie_by_vcpu_within_domain(xe, hv):
    d = hv.create_domain(vcpus=3)
    order = []
    hv.on_wake = lambda v: order.append(v.id)
    for v in (2, 0, 1):
        assert d.sched_poll([], timeout=10, vcpu=v) is False
    hv.advance(20)
    assert order == [0, 1, 2]


def test_advance_arguments(xe, hv):
    hv.advance(0)
    assert hv.now == 0
    hv.advance(5)
    hv.advance(7)
    assert hv.now == 12
    with pytest.raises(ValueError):
        hv.advance(-1)
    assert hv.now == 12


def test_poll_wake_hook_exception_propagates(xe, hv, domu):
    def boom(v):
        raise RuntimeError("wake")

    a = domu.bind_ipi(0)
    si(domu).set_mask(a)
    assert domu.sched_poll([a]) is False
    hv.on_wake = boom
    with pytest.raises(RuntimeError):
        domu.send(a)
    assert domu.vcpus[0].polling is False and si(domu).pending(a)


def test_bind_interdomain_pending_wakes_poller(xe, pair, hooks):
    dom0, domu = pair
    p = domu.alloc_unbound(dom0.domid)
    assert dom0.sched_poll([], vcpu=1) is False
    lp = dom0.bind_interdomain(domu.domid, p)
    assert si(dom0).pending(lp)
    assert dom0.vcpus[1].polling is False
    assert hooks == [("kick", 0), ("wake", 1)]


def test_unmask_hypercall_does_not_check_pollers(xe, domu, hooks):
    a, b, c = ipis(domu, 3)
    s = si(domu)
    domu.send(c)  # upcall_pending(0) = 1 so the unmask cannot kick
    s.set_mask(a)
    domu.send(a)
    del hooks[:]
    assert domu.sched_poll([], vcpu=1) is False
    domu.unmask(a)  # selector already set -> nothing; and no poller check (§8.3)
    assert domu.vcpus[1].polling is True and hooks == []


def test_unmask_kick_ends_poll_on_that_vcpu(xe, domu, hooks):
    a, b = ipis(domu, 2)
    s = si(domu)
    s.set_mask(b)
    domu.send(b)
    assert domu.sched_poll([a]) is False
    domu.unmask(b)  # upcall_pending 0 -> 1: the kick unblocks the poller (§10.2)
    assert domu.vcpus[0].polling is False
    assert hooks == [("kick", 0), ("wake", 0)]


def test_sharedinfo_view_matches_package_view(xe, hv, domu):
    ports = ipis(domu, 10)
    s = si(domu)
    for p in ports[::3]:
        domu.send(p)
    for p in ports[1::4]:
        s.set_mask(p)
    for p in range(0, 64):
        assert domu.shared_info.is_pending(p) == bool(s.pending(p))
        assert domu.shared_info.is_masked(p) == bool(s.masked(p))
    assert isinstance(SharedInfoView(domu.shared_info.buffer).snapshot(), bytes)
