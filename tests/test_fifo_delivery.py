"""FIFO delivery on the hypervisor side: set_pending (spec §9.3) step by step, clear
pending and busy ports (§9.4, §9.6, §4.5), the unmask hypercall (§9.5), deferred and
lost events, priorities and queue moves, >4096 ports, and SCHEDOP_poll (§10.2).

Reading aid, §9.3 for port p raised on vCPU v (q = v's queue for p's priority):
  no word -> latch, stop | v has no control block -> dropped, stop |
  newly = !test_and_set(PENDING) |
  if !MASKED and !test_and_set(LINKED):
      if oldq.tail == p: oldq.tail = 0;  if oldq != q: lastq = q
      linked = q.tail && tail word still LINKED (then tail.LINK = p)
      if !linked: cb.head[q] = p
      q.tail = p
  if !linked and !test_and_set(cb.ready bit q): upcall (kick)
  if newly: wake pollers
Words are written below as flag names | LINK.
"""

from __future__ import annotations

import errno

import pytest

from fifohelpers import BUSY, LINKED, MASKED, PENDING, Fifo, errno_of, fifo_domain, ipis
from xenabi import si


# ------------------------------------------------------------------ linking (§9.3)


def test_first_event_starts_queue_and_kicks(hv, hooks):
    d, f = fifo_domain(hv)
    p = d.bind_ipi(0)
    d.send(p)
    assert f.word(p) == PENDING | LINKED  # LINK 0: the only event
    assert f.head(0, 7) == p and f.ready(0) == 1 << 7  # default priority 7
    assert d.vcpus[0].upcall_pending == 1 and hooks == [("kick", 0)]
    assert f.ready(1) == 0 and d.vcpus[1].upcall_pending == 0
    assert si(d).sel(0) == 0 and not d.shared_info.is_pending(p)  # no 2L bits


def test_later_events_append_at_tail_without_upcall(hv, hooks):
    d, f = fifo_domain(hv)
    a, b, c = ipis(d, 3)
    d.send(b)
    si(d).set_upcall_pending(0, 0)  # even with the flag cleared by the guest...
    d.send(a)
    d.send(c)
    # ...linking onto a LINKED tail raises no ready bit and no upcall.
    assert f.queue(0, 7) == [b, a, c]
    assert f.word(b) == PENDING | LINKED | a and f.word(a) == PENDING | LINKED | c
    assert f.word(c) == PENDING | LINKED
    assert f.head(0, 7) == b
    assert d.vcpus[0].upcall_pending == 0 and hooks == [("kick", 0)]


def test_already_pending_changes_nothing(hv, hooks):
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.send(a)
    d.send(b)
    before = (f.word(a), f.word(b), f.cb_bytes(0))
    d.send(a)
    d.send(b)
    assert (f.word(a), f.word(b), f.cb_bytes(0)) == before
    assert hooks == [("kick", 0)]


def test_ready_bit_already_set_no_upcall(hv, hooks):
    """The guest unlinked the only event (LINKED cleared) but left ready bit 7 set.
    Next event: tail not LINKED -> not linked -> head[7] = new port; ready already set
    -> no upcall (§9.3 step 6)."""
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.send(a)
    f.set_word(a, 0)  # guest consumed it by hand
    si(d).set_upcall_pending(0, 0)
    hooks.clear()
    d.send(b)
    assert f.head(0, 7) == b and f.word(a) == 0 and f.word(b) == PENDING | LINKED
    assert f.ready(0) == 1 << 7 and d.vcpus[0].upcall_pending == 0 and hooks == []


def test_consumed_tail_starts_a_new_queue(hv, hooks):
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.send(a)
    assert d.guest.do_upcall(0) == [a]
    assert f.ready(0) == 0 and f.word(a) == 0
    hooks.clear()
    d.send(b)  # Xen's tail is still a, but a is no longer LINKED: b is the new head
    assert f.head(0, 7) == b and f.word(a) == 0
    assert f.ready(0) == 1 << 7 and hooks == [("kick", 0)]


def test_guest_consumed_head_only_tail_still_linked(hv, hooks):
    """Queue a -> b; the guest takes a by hand (clears LINKED|LINK, takes ready).
    Sending c links it after b (b still LINKED): no head write, no ready, no upcall."""
    d, f = fifo_domain(hv)
    a, b, c = ipis(d, 3)
    d.send(a)
    d.send(b)
    f.set_word(a, PENDING)
    f.set_ready(0, 0)
    si(d).set_upcall_pending(0, 0)
    hooks.clear()
    d.send(c)
    assert f.word(b) == PENDING | LINKED | c and f.head(0, 7) == a
    assert f.ready(0) == 0 and hooks == []


def test_link_replaces_tail_link_and_clears_busy(hv):
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.send(a)
    f.set_bits(a, BUSY)  # the guest left BUSY set on the tail word
    d.send(b)
    assert f.word(a) == PENDING | LINKED | b  # Xen's link clears BUSY


def test_masked_event_pending_but_not_linked(hv, hooks):
    d, f = fifo_domain(hv)
    p = d.bind_ipi(0)
    d.guest.mask(p)
    assert f.word(p) == MASKED
    d.send(p)
    assert f.word(p) == MASKED | PENDING
    assert f.ready(0) == 0 and f.head(0, 7) == 0 and hooks == []


def test_unmask_hypercall_links_pending_event(hv, hooks):
    d, f = fifo_domain(hv)
    p = d.bind_ipi(0)
    d.guest.mask(p)
    d.send(p)
    d.unmask(p)  # EVTCHNOP_unmask: clear MASKED; PENDING -> set_pending
    assert f.word(p) == PENDING | LINKED
    assert f.head(0, 7) == p and f.ready(0) == 1 << 7 and hooks == [("kick", 0)]


def test_unmask_hypercall_after_guest_cleared_mask_still_links(hv, hooks):
    # §9.5: unlike 2L, the hypercall re-raises even if MASKED is already clear.
    d, f = fifo_domain(hv)
    p = d.bind_ipi(0)
    d.guest.mask(p)
    d.send(p)
    f.clear_bits(p, MASKED)
    assert f.word(p) == PENDING
    d.unmask(p)
    assert f.word(p) == PENDING | LINKED and f.head(0, 7) == p and hooks == [("kick", 0)]


def test_unmask_hypercall_not_pending_only_clears_mask(hv, hooks):
    d, f = fifo_domain(hv)
    p = d.bind_ipi(0)
    d.guest.mask(p)
    d.unmask(p)
    assert f.word(p) == 0 and f.ready(0) == 0 and hooks == []


def test_unmask_hypercall_on_unusable_or_wordless_port(xe, hv, hooks):
    d, f = fifo_domain(hv, pages=1)
    f.set_word(5, MASKED | PENDING)  # FREE port 5: not usable -> nothing (§4.9)
    d.unmask(5)
    assert f.word(5) == MASKED | PENDING
    d.unmask(0)  # RESERVED
    assert errno_of(d.unmask, 64) == errno.EINVAL  # not valid
    ports = ipis(d, 1100)
    d.unmask(1100)  # no word for it: nothing
    assert f.ready(0) == 0 and hooks == [] and ports[-1] == 1100


def test_masked_and_linked_event_relinks_only_after_unlink(hv, hooks):
    """Linked, then masked by the guest: a send sets nothing new (already PENDING);
    the consumer unlinks and drops it (still PENDING); unmask then re-links it."""
    d, f = fifo_domain(hv)
    p = d.bind_ipi(0)
    d.send(p)
    d.guest.mask(p)
    assert d.guest.do_upcall(0) == []
    assert f.word(p) == MASKED | PENDING and f.ready(0) == 0
    d.guest.unmask(p)  # MASKED and PENDING: the hypercall (guest-side §1.10)
    assert f.word(p) == PENDING | LINKED and f.head(0, 7) == p
    assert d.guest.do_upcall(0) == [p]


# ------------------------------------------------------------------ lost and deferred


def test_event_to_vcpu_without_control_block_is_lost(hv, hooks):
    d, f = fifo_domain(hv, vcpus=2, cbs=[0])
    p = d.bind_ipi(1)
    assert d.sched_poll([], vcpu=0) is False  # polling "any port"
    d.send(p)
    assert f.word(p) == 0  # PENDING not even set (§9.3 step 3)
    assert hooks == [] and d.vcpus[0].polling  # no poller wake either
    f.init(1)
    assert f.ready(1) == 0 and d.guest.do_upcall(1) == []
    d.send(p)  # now delivered
    assert f.word(p) == PENDING | LINKED and f.head(1, 7) == p
    assert hooks == [("kick", 1), ("wake", 0)]


def test_events_without_event_word_are_deferred_until_expand(hv, hooks):
    d, f = fifo_domain(hv, pages=0)
    p = d.bind_ipi(0)
    assert d.sched_poll([p], vcpu=1) is False
    d.send(p)
    d.send(p)
    assert hooks == [] and d.vcpus[1].polling  # no upcall, no poller wake (step 1)
    assert d.vcpus[0].upcall_pending == 0 and f.ready(0) == 0
    f.expand()  # raised now: PENDING newly set -> the poller wakes too
    assert f.word(p) == PENDING | LINKED and f.head(0, 7) == p
    assert hooks == [("kick", 0), ("wake", 1)]
    assert d.guest.do_upcall(0) == [p]


def test_deferred_events_are_raised_in_port_order_on_notify_vcpu(hv, hooks):
    """Sent 3, 1, 2 while no page exists; port 2 (interdomain) was then moved to vCPU 1.
    expand_array walks the new page's ports upward: vCPU 0 queue 7 = 1, 3; vCPU 1 = 2."""
    d, f = fifo_domain(hv, pages=0)
    peer = hv.create_domain(vcpus=1)
    assert d.bind_ipi(0) == 1
    r = peer.alloc_unbound(d.domid)
    assert d.bind_interdomain(peer.domid, r) == 2  # pending already (deferred)
    assert d.bind_ipi(0) == 3
    d.send(3)
    d.send(1)
    peer.send(r)
    d.bind_vcpu(2, 1)
    f.expand()
    assert f.queue(0, 7) == [1, 3] and f.queue(1, 7) == [2]
    assert hooks == [("kick", 0), ("kick", 1)]


def test_deferred_event_raised_without_rechecking_state(hv):
    # §4.13 step 5: a latched port closed meanwhile is still raised (FREE port linked).
    d, f = fifo_domain(hv, pages=0)
    p = d.bind_ipi(0)
    d.send(p)
    d.close(p)
    f.expand()
    assert f.word(p) == PENDING | LINKED and f.head(0, 7) == p
    assert d.guest.do_upcall(0) == []  # not usable: unlinked, not handled, left pending
    assert f.word(p) == PENDING


def test_deferred_event_for_masked_word_stays_pending(hv, hooks):
    d, f = fifo_domain(hv, pages=0)
    p = d.bind_ipi(0)
    d.send(p)
    d.memory.page(0x200)[4 * p + 3] = MASKED >> 24  # guest pre-masks p in the new page
    f.expand()
    assert f.word(p) == MASKED | PENDING and f.ready(0) == 0 and hooks == []


# ------------------------------------------------------------------ clear pending, busy


def test_close_clears_pending_only_and_port_stays_busy(xe, hv):
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.send(a)
    d.close(a)
    assert f.word(a) == LINKED  # PENDING cleared, LINKED kept (§4.5, §9.4)
    assert d.status(a).status == xe.EVTCHNSTAT_closed
    assert d.bind_ipi(0) == 3  # a is busy: skipped (§2.2)
    assert d.alloc_unbound(0) == 4
    assert d.guest.do_upcall(0) == []  # the guest unlinks a (not pending: not handled)
    assert f.word(a) == 0
    assert d.bind_ipi(0) == a  # no longer busy


def test_busy_port_reused_after_unlink_gets_fresh_queue_entry(hv):
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.send(a)
    d.send(b)
    d.close(b)  # b: LINKED tail, not pending
    assert d.bind_ipi(0) == 3
    assert d.guest.do_upcall(0) == [a]  # b unlinked and dropped
    assert d.bind_ipi(0) == b
    d.send(b)
    assert f.queue(0, 7) == [b] and f.word(b) == PENDING | LINKED


# ------------------------------------------------------------------ priorities


def test_sixteen_priorities_each_with_own_head(hv, hooks):
    """Port 16 - q gets priority q; raised lowest priority first. Each starts its own
    queue (head[q], ready bit q); only the first sets upcall_pending (one kick)."""
    d, f = fifo_domain(hv, vcpus=1)
    ports = ipis(d, 16)
    for q in range(16):
        d.set_priority(16 - q, q)
    for q in range(15, -1, -1):
        d.send(16 - q)
    assert f.ready(0) == 0xFFFF
    assert [f.head(0, q) for q in range(16)] == [16 - q for q in range(16)]
    assert hooks == [("kick", 0)]
    assert d.guest.do_upcall(0) == [16 - q for q in range(16)] == ports[::-1]


def test_spec_example_200_100_50(hv):
    # guest-side §1.10: raise 100 (prio 7), 50 (prio 7), 200 (prio 3) -> 200, 100, 50.
    d, f = fifo_domain(hv, vcpus=1)
    ipis(d, 200)
    d.set_priority(200, 3)
    d.send(100)
    d.send(50)
    d.send(200)
    assert f.queue(0, 7) == [100, 50] and f.queue(0, 3) == [200]
    assert f.ready(0) == (1 << 7) | (1 << 3)
    assert d.guest.do_upcall(0) == [200, 100, 50]


def test_priority_change_applies_to_next_link_only(hv, hooks):
    d, f = fifo_domain(hv, vcpus=1)
    a, b = ipis(d, 2)
    d.send(a)
    d.set_priority(a, 2)
    d.send(b)
    assert f.queue(0, 7) == [a, b] and f.ready(0) == 1 << 7  # a stays on queue 7
    assert d.guest.do_upcall(0) == [a, b]
    d.send(b)
    d.send(a)  # now on queue 2, ahead of b
    assert f.queue(0, 2) == [a] and f.queue(0, 7) == [b]
    assert d.guest.do_upcall(0) == [a, b]


def test_moving_queue_invalidates_old_tail(hv, hooks):
    """a alone on queue 7 and consumed: Xen's tail(7) is still a. Priority 3, send a:
    fifo_lastq says queue 7, whose tail is a -> tail(7) = 0; a goes to queue 3. Then b
    (priority 7): tail(7) is 0, so b becomes head[7] instead of being linked after a
    (which is LINKED on queue 3 and must keep LINK 0)."""
    d, f = fifo_domain(hv, vcpus=1)
    a, b = ipis(d, 2)
    d.send(a)
    assert d.guest.do_upcall(0) == [a]
    d.set_priority(a, 3)
    d.send(a)
    d.send(b)
    assert f.word(a) == PENDING | LINKED  # LINK 0
    assert f.head(0, 3) == a and f.head(0, 7) == b
    assert f.ready(0) == (1 << 3) | (1 << 7)
    assert d.guest.do_upcall(0) == [a, b]


def test_bind_vcpu_moves_future_events_only(hv, hooks):
    """Interdomain port p of d notifies vCPU 0 and is queued there. bind_vcpu(p, 1): the
    queued event stays on vCPU 0; a re-send while still pending changes nothing. After
    vCPU 0 consumed it, the next send goes to vCPU 1, and vCPU 0's tail(7) (= p) is
    invalidated: port q then starts vCPU 0's queue afresh, p keeps LINK 0."""
    d, f = fifo_domain(hv, vcpus=2)
    peer = hv.create_domain(vcpus=1)
    r = peer.alloc_unbound(d.domid)
    p = d.bind_interdomain(peer.domid, r)  # pending on vCPU 0 at once (§4.2 step 7)
    q = d.bind_ipi(0)
    assert f.queue(0, 7) == [p]
    d.bind_vcpu(p, 1)
    peer.send(r)
    assert f.queue(0, 7) == [p] and f.ready(1) == 0
    assert d.guest.do_upcall(1) == []
    assert d.guest.do_upcall(0) == [p]
    hooks.clear()
    peer.send(r)
    assert f.queue(1, 7) == [p] and f.ready(1) == 1 << 7 and hooks == [("kick", 1)]
    d.send(q)
    assert f.head(0, 7) == q and f.word(p) == PENDING | LINKED
    assert d.guest.do_upcall(0) == [q] and d.guest.do_upcall(1) == [p]


def test_per_vcpu_virq_goes_to_its_vcpu(xe, hv):
    d, f = fifo_domain(hv, vcpus=2)
    t0 = d.bind_virq(xe.VIRQ_TIMER, 0)
    t1 = d.bind_virq(xe.VIRQ_TIMER, 1)
    hv.send_virq(d.domid, xe.VIRQ_TIMER, 1)
    assert f.queue(1, 7) == [t1] and f.ready(0) == 0
    hv.send_virq(d.domid, xe.VIRQ_TIMER, 0)
    hv.inject(d.domid, t1)  # already pending: nothing
    assert f.queue(0, 7) == [t0]
    assert d.guest.do_upcall(0) == [t0] and d.guest.do_upcall(1) == [t1]


def test_pirq_and_inject_in_fifo(xe, hv, hooks):
    d, f = fifo_domain(hv, vcpus=1)
    hv.permit_pirq(d.domid, 9)
    p = d.bind_pirq(9)
    hv.send_pirq(d.domid, 9)
    assert f.queue(0, 7) == [p] and hooks == [("kick", 0)]
    u = d.alloc_unbound(0)
    hv.inject(d.domid, u)
    hv.inject(d.domid, 40)  # FREE: skipped
    assert f.queue(0, 7) == [p, u] and f.word(40) == 0
    assert d.guest.do_upcall(0) == [p, u]


# ------------------------------------------------------------------ beyond 4096 ports


def test_five_thousand_ipis(hv):
    """Ports past the 2-level limit: 5 pages cover ports 0..5119 (port p: page p // 1024,
    byte 4 * (p % 1024); 5000 -> page 4, byte 3616)."""
    d, f = fifo_domain(hv, vcpus=1, pages=5)
    assert ipis(d, 5000) == list(range(1, 5001))
    for p in (5000, 4097, 1, 4096):
        d.send(p)
    # 5000 is linked to 4097 (0x1001): bytes 01 10 00 a0.
    assert d.memory.page(f.pages[4])[3616:3620] == b"\x01\x10\x00\xa0"
    assert f.queue(0, 7) == [5000, 4097, 1, 4096]
    assert d.guest.do_upcall(0) == [5000, 4097, 1, 4096]
    assert d.status(5055).status == 0  # bucket 4992..5055 exists
    assert errno_of(d.status, 5056) == errno.EINVAL


# ------------------------------------------------------------------ poll (§10.1, §10.2)


def test_poll_sees_fifo_pending_not_2l_bits(hv):
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    si(d).set_pending(a)  # a 2L bit means nothing in FIFO mode
    assert d.sched_poll([a], vcpu=1) is False
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.guest.mask(b)
    d.send(b)  # masked but PENDING
    assert d.sched_poll([a, b], vcpu=1) is True  # pending, mask ignored


def test_poll_woken_by_newly_pending_masked_port(hv, hooks):
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.guest.mask(a)
    assert d.sched_poll([a], vcpu=1) is False
    assert d.sched_poll([b], vcpu=0) is False
    d.send(a)  # PENDING newly set -> pollers of a and "any" woken; no upcall (masked)
    assert hooks == [("wake", 1)] and not d.vcpus[1].polling and d.vcpus[0].polling
    assert d.vcpus[1].upcall_pending == 0


def test_poll_not_woken_by_already_pending_or_unmask(hv, hooks):
    d, f = fifo_domain(hv)
    a, b = ipis(d, 2)
    d.guest.mask(a)
    d.send(a)
    assert d.sched_poll([], vcpu=1) is False  # any port
    d.send(a)  # already pending: no wake
    assert hooks == [] and d.vcpus[1].polling
    d.unmask(a)  # links it (kick of vCPU 0); newly = false -> vCPU 1 not woken
    assert hooks == [("kick", 0)] and d.vcpus[1].polling
    d.send(b)  # newly pending: multi-port pollers wake on any port
    assert hooks == [("kick", 0), ("wake", 1)]


def test_poll_kick_and_wake_order(hv, hooks):
    d, f = fifo_domain(hv)
    p = d.bind_ipi(1)
    assert d.sched_poll([p], vcpu=1) is False
    assert d.sched_poll([], vcpu=0) is False
    d.send(p)
    # upcall for vCPU 1 (kick ends its poll), then the pollers of p / any port.
    assert hooks == [("kick", 1), ("wake", 1), ("wake", 0)]


def test_poll_returns_at_once_when_upcall_pending(hv):
    d, f = fifo_domain(hv)
    p, q = ipis(d, 2)
    d.send(p)
    si(d).set_upcall_mask(0, 0)
    assert d.sched_poll([q], vcpu=0) is True  # local events need delivery


# ------------------------------------------------------------------ x86_32 layout


def test_x86_32_domain_fifo_path(xe, hv, hooks):
    d, f = fifo_domain(hv, vcpus=2, layout="x86_32")
    ports = ipis(d, 3, vcpu=1)
    d.set_priority(ports[2], 0)
    for p in ports:
        d.send(p)
    assert f.queue(1, 7) == ports[:2] and f.queue(1, 0) == [ports[2]]
    assert hooks == [("kick", 1)]
    assert si(d, "x86_32").upcall_pending(1) == 1 and si(d, "x86_32").sel(1) == 0
    assert d.guest.do_upcall(1) == [ports[2], ports[0], ports[1]]
