"""The guest side of the FIFO ABI: ``d.guest.do_upcall`` / ``mask`` / ``unmask`` on a
FIFO domain (spec guest-side §1.10, API.md "The guest side", docs/semantics.md "FIFO
event channels"), and ``XenEvtchn`` handles on a FIFO domain.

Linux's consumer, restated for the hand-worked orders below (per vCPU a private head[16],
kept across upcalls):

    repeat:
        upcall_pending = 0
        ready = xchg(cb.ready, 0)
        while ready:
            q = lowest set bit of ready                 # highest priority
            port = head[q] or cb.head[q]
            next = LINK of port; clear LINKED|LINK      # atomically
            if next == 0: clear bit q of ready
            head[q] = next
            if PENDING and not MASKED: clear PENDING; handler(port)
            ready |= xchg(cb.ready, 0)
    while upcall_pending
"""

from __future__ import annotations

import errno

import pytest

from fifohelpers import LINKED, MASKED, PENDING, Fifo, fifo_domain, guest_state, ipis
from xenabi import si


def test_do_upcall_returns_ports_in_queue_order_and_clears_words(hv):
    d, f = fifo_domain(hv, vcpus=1)
    a, b, c = ipis(d, 3)
    for p in (c, a, b):
        d.send(p)
    seen = []
    assert d.guest.do_upcall(0, lambda p: seen.append((p, f.word(p)))) == [c, a, b]
    # Each handler ran with the word already unlinked and PENDING cleared.
    assert seen == [(c, 0), (a, 0), (b, 0)]
    assert [f.word(p) for p in (a, b, c)] == [0, 0, 0]
    assert f.ready(0) == 0 and d.vcpus[0].upcall_pending == 0


def test_do_upcall_per_vcpu(hv):
    d, f = fifo_domain(hv, vcpus=2)
    a = d.bind_ipi(0)
    b = d.bind_ipi(1)
    d.send(a)
    d.send(b)
    assert d.guest.do_upcall(1) == [b]
    assert d.guest.do_upcall(0) == [a]
    assert d.guest.do_upcall(0) == []


def test_vcpu_without_control_block(hv):
    d, f = fifo_domain(hv, vcpus=2, cbs=[0])
    a = d.bind_ipi(0)
    d.send(a)
    si(d).set_upcall_pending(1, 1)
    assert d.guest.do_upcall(1) == []
    assert d.vcpus[1].upcall_pending == 0  # cleared, nothing handled
    assert f.word(a) == PENDING | LINKED  # vCPU 0's queue untouched


def test_handler_raising_higher_priority_preempts(hv, hooks):
    """Queue 7 = a, b. a's handler raises c (priority 3): c starts queue 3 (cb.ready was
    taken, so bit 3 goes 0 -> 1: upcall_pending set again, one kick); the consumer
    re-reads ready after a and takes c before b. The outer loop runs once more (finds
    nothing). Order: a, c, b."""
    d, f = fifo_domain(hv, vcpus=1)
    a, b, c = ipis(d, 3)
    d.set_priority(c, 3)
    d.send(a)
    d.send(b)
    hooks.clear()

    def handler(p):
        if p == a:
            d.send(c)

    assert d.guest.do_upcall(0, handler) == [a, c, b]
    assert hooks == [("kick", 0)] and d.vcpus[0].upcall_pending == 0


def test_handler_raising_lower_priority_waits(hv):
    d, f = fifo_domain(hv, vcpus=1)
    a, b, c = ipis(d, 3)
    d.set_priority(c, 9)
    d.set_priority(a, 5)
    d.set_priority(b, 5)
    d.send(a)
    d.send(b)
    assert d.guest.do_upcall(0, lambda p: p == a and d.send(c)) == [a, b, c]


def test_handler_raising_same_queue_appends(hv, hooks):
    """a's handler sends d2 (same priority): b is still LINKED as the tail, so d2 is
    linked after b: a, b, d2 with no new upcall."""
    d, f = fifo_domain(hv, vcpus=1)
    a, b, x = ipis(d, 3)
    d.send(a)
    d.send(b)
    hooks.clear()
    assert d.guest.do_upcall(0, lambda p: p == a and d.send(x)) == [a, b, x]
    assert hooks == []


def test_handler_re_raising_its_own_port(hv, hooks):
    """a is the only event. Its handler sends a again: PENDING and LINKED were cleared
    before the handler, Xen's tail(7) is a -> invalidated as the old queue's tail, so a
    becomes head[7] again, ready bit 7 set -> upcall. The consumer re-reads cb.head[7]
    (its private head is 0) and handles a a second time."""
    d, f = fifo_domain(hv, vcpus=1)
    a = d.bind_ipi(0)
    d.send(a)
    hooks.clear()
    count = []

    def handler(p):
        count.append(p)
        if len(count) == 1:
            d.send(a)

    assert d.guest.do_upcall(0, handler) == [a, a]
    assert hooks == [("kick", 0)] and f.word(a) == 0


def test_masked_events_are_unlinked_and_left_pending(hv):
    d, f = fifo_domain(hv, vcpus=1)
    a, b, c = ipis(d, 3)
    for p in (a, b, c):
        d.send(p)
    d.guest.mask(b)
    assert d.guest.do_upcall(0) == [a, c]
    assert f.word(b) == MASKED | PENDING  # unlinked, still pending for a later unmask
    d.guest.unmask(b)
    assert f.word(b) == PENDING | LINKED and f.head(0, 7) == b
    assert d.guest.do_upcall(0) == [b]


def test_mask_in_handler_of_later_event(hv):
    d, f = fifo_domain(hv, vcpus=1)
    a, b = ipis(d, 2)
    d.send(a)
    d.send(b)
    assert d.guest.do_upcall(0, lambda p: d.guest.mask(b)) == [a]
    assert f.word(b) == MASKED | PENDING


def test_unlinked_port_of_free_channel_skipped_and_left_pending(hv):
    d, f = fifo_domain(hv, vcpus=1)
    a, b = ipis(d, 2)
    d.send(a)
    d.send(b)
    d.close(a)  # PENDING cleared: the consumer skips it
    f.set_bits(a, PENDING)  # ...even if the guest set PENDING on the FREE port by hand
    assert d.guest.do_upcall(0) == [b]
    assert f.word(a) == PENDING  # unlinked; FREE channels have no handler: left pending


def test_handler_exception_keeps_private_head_and_ready(hv):
    """Queue 7 = a, b, c. The handler raises on a. Before the handler, the private
    head[7] became b and a was unlinked; the ready bit still owed is put back into
    cb.ready. The next upcall continues from the private head: b, c (cb.head[7] still
    says a, which is no longer linked or pending)."""
    d, f = fifo_domain(hv, vcpus=1)
    a, b, c = ipis(d, 3)
    for p in (a, b, c):
        d.send(p)

    def boom(p):
        raise RuntimeError(p)

    with pytest.raises(RuntimeError):
        d.guest.do_upcall(0, boom)
    assert f.word(a) == 0 and f.head(0, 7) == a
    assert f.ready(0) == 1 << 7
    assert d.guest.do_upcall(0) == [b, c]
    assert f.ready(0) == 0


def test_handler_exception_on_last_event_of_queue(hv):
    d, f = fifo_domain(hv, vcpus=1)
    a = d.bind_ipi(0)
    d.send(a)

    def boom(p):
        raise KeyError(p)

    with pytest.raises(KeyError):
        d.guest.do_upcall(0, boom)
    assert f.ready(0) == 0 and f.word(a) == 0  # queue done: no ready bit put back
    assert d.guest.do_upcall(0) == []


def test_private_heads_reset_when_control_block_registered(hv):
    """After the exception above leaves private head[7] = b, EVTCHNOP_reset tears FIFO
    down and the guest registers new control block and event-array frames: Linux zeroes
    its private heads then, so the new head[7] (x) is read from the control block."""
    d, f = fifo_domain(hv, vcpus=1)
    a, b = ipis(d, 2)
    d.send(a)
    d.send(b)
    with pytest.raises(ZeroDivisionError):
        d.guest.do_upcall(0, lambda p: 1 / 0)
    d.reset()
    g = Fifo(d)
    g.init(0, gfn=0x300)
    assert d.expand_array(0x301) is None
    g.pages.append(0x301)
    x = d.bind_ipi(0)
    d.send(x)
    assert g.queue(0, 7) == [x]
    assert d.guest.do_upcall(0) == [x]


def test_ready_bits_above_15_ignored(hv):
    d, f = fifo_domain(hv, vcpus=1)
    a = d.bind_ipi(0)
    d.send(a)
    f.set_ready(0, f.ready(0) | (1 << 20) | (1 << 31))
    assert d.guest.do_upcall(0) == [a]
    assert f.ready(0) == 0  # the whole word was exchanged for 0


def test_ready_bit_with_empty_head(hv):
    # A ready bit whose head[q] is 0: port 0's word is unlinked (it is 0), next = 0.
    d, f = fifo_domain(hv, vcpus=1)
    f.set_ready(0, 1 << 5)
    si(d).set_upcall_pending(0, 1)
    assert d.guest.do_upcall(0) == []
    assert f.ready(0) == 0 and f.word(0) == 0


def test_upcall_repeats_while_upcall_pending_set_again(hv):
    """a is alone on queue 7; its handler raises b. a is no longer LINKED, so b becomes
    head[7], ready bit 7 goes 0 -> 1 and Xen sets upcall_pending. The same pass picks b
    up (ready is re-read after every event; private head[7] is 0, so cb.head[7] = b is
    read); the outer loop then clears upcall_pending and finds nothing more."""
    d, f = fifo_domain(hv, vcpus=1)
    a, b = ipis(d, 2)
    d.send(a)
    log = []

    def handler(p):
        log.append((p, d.vcpus[0].upcall_pending))
        if p == a:
            d.send(b)

    assert d.guest.do_upcall(0, handler) == [a, b]
    assert log == [(a, 0), (b, 1)]  # b handled in the same pass, flag set by Xen
    assert d.vcpus[0].upcall_pending == 0  # cleared by the second pass


# ------------------------------------------------------------------ mask / unmask


def test_mask_sets_masked_bit_only(hv):
    d, f = fifo_domain(hv, vcpus=1)
    a = d.bind_ipi(0)
    d.send(a)
    d.guest.mask(a)
    assert f.word(a) == PENDING | LINKED | MASKED
    d.guest.mask(a)
    assert f.word(a) == PENDING | LINKED | MASKED
    assert not d.shared_info.is_masked(a)  # the 2L bitmap is not used


def test_mask_and_unmask_ports_without_word_do_nothing(hv, hooks):
    d, f = fifo_domain(hv, vcpus=1, pages=1)
    a = d.bind_ipi(0)
    d.send(a)  # something pending, so a stray write or kick would show
    d.guest.mask(1023)  # the last port with a word is masked: the edge is where we think
    assert f.word(1023) == MASKED
    hooks.clear()
    before = guest_state(d)
    for port in (1024, 5000, 2**17 - 1):  # the first, a middle and the last FIFO port
        d.guest.mask(port)
        assert guest_state(d) == before, port
        d.guest.unmask(port)
        d.guest.unmask(port, vcpu=0)
        assert guest_state(d) == before, port
    assert hooks == [] and f.word(a) == PENDING | LINKED and f.word(1023) == MASKED


@pytest.mark.parametrize("port,exc", [(2**17, ValueError), (-1, ValueError), (2**32, ValueError),
                                      ("1", TypeError), (1.0, TypeError)])
def test_mask_unmask_port_range_in_fifo(hv, port, exc):
    d, f = fifo_domain(hv, vcpus=1)
    with pytest.raises(exc):
        d.guest.mask(port)
    with pytest.raises(exc):
        d.guest.unmask(port)


def test_port_range_grows_with_the_switch(hv):
    d = hv.create_domain(vcpus=1)
    with pytest.raises(ValueError):
        d.guest.mask(4096)
    f = Fifo(d)
    f.init(0)
    before = guest_state(d)
    d.guest.mask(4096)  # FIFO range now; no word: nothing happens, byte for byte
    assert guest_state(d) == before
    with pytest.raises(ValueError):
        d.guest.mask(2**17)  # the FIFO range ends here
    f.expand(5)  # words for ports 0..5119: now 4096 has one, and mask sets it
    assert f.word(4096) == 0
    d.guest.mask(4096)
    assert f.word(4096) == MASKED and f.word(4095) == 0 and f.word(4097) == 0


@pytest.mark.parametrize("vcpu,exc", [(2, ValueError), (-1, ValueError), ("0", TypeError)])
def test_unmask_vcpu_checked(hv, vcpu, exc):
    d, f = fifo_domain(hv, vcpus=2)
    a = d.bind_ipi(0)
    d.guest.mask(a)
    with pytest.raises(exc):
        d.guest.unmask(a, vcpu=vcpu)
    assert f.word(a) == MASKED


def test_unmask_not_pending_clears_locally(hv, hooks):
    d, f = fifo_domain(hv, vcpus=2)
    a = d.bind_ipi(0)
    d.guest.mask(a)
    f.set_bits(a, LINKED | 7)  # whatever else is in the word stays
    d.guest.unmask(a, vcpu=1)
    assert f.word(a) == LINKED | 7 and hooks == [] and f.ready(0) == 0


def test_unmask_not_masked_does_nothing(hv, hooks):
    d, f = fifo_domain(hv, vcpus=1)
    a = d.bind_ipi(0)
    f.set_word(a, PENDING)  # pending, unmasked, not linked: the guest does not care
    d.guest.unmask(a)
    assert f.word(a) == PENDING and hooks == []


def test_unmask_pending_uses_hypercall_from_any_vcpu(hv, hooks):
    d, f = fifo_domain(hv, vcpus=2)
    a = d.bind_ipi(1)
    d.guest.mask(a)
    d.send(a)
    d.guest.unmask(a, vcpu=0)  # the queue is the notify vCPU's (1), wherever it runs
    assert f.queue(1, 7) == [a] and hooks == [("kick", 1)]
    assert d.guest.do_upcall(1) == [a]


def test_unmask_pending_of_free_channel_hypercall_is_noop(hv, hooks):
    d, f = fifo_domain(hv, vcpus=1)
    f.set_word(9, MASKED | PENDING)
    d.guest.unmask(9)  # EVTCHNOP_unmask skips non-usable channels; result ignored
    assert f.word(9) == MASKED | PENDING and hooks == []
    f.set_word(60, MASKED | PENDING)
    d.guest.unmask(60)
    assert f.word(60) == MASKED | PENDING


def test_minios_guest_uses_the_same_fifo_consumer(hv):
    d = hv.create_domain(vcpus=1, guest="minios")
    f = Fifo(d)
    f.init(0)
    f.expand()
    a, b, c = ipis(d, 3)
    d.set_priority(c, 0)
    for p in (a, b, c):
        d.send(p)
    d.guest.mask(b)
    assert d.guest.do_upcall(0) == [c, a]
    d.guest.unmask(b)
    assert d.guest.do_upcall(0) == [b]


# ------------------------------------------------------------------ XenEvtchn handles


def test_handle_port_is_taken_not_linked(xe, hv, hooks):
    d, f = fifo_domain(hv, vcpus=1)
    peer = hv.create_domain(vcpus=1)
    with xe.XenEvtchn(d) as h:
        p = h.bind_unbound_port(peer.domid)
        r = peer.bind_interdomain(d.domid, p)
        assert h.pending() is None and f.word(p) == 0
        hooks.clear()
        peer.send(r)
        # taken: MASKED set, PENDING cleared, not LINKED, no ready bit, no upcall
        assert f.word(p) == MASKED and f.ready(0) == 0 and hooks == []
        assert h.pending() == p and h.pending() is None
        peer.send(r)  # raised while masked: stays pending
        assert f.word(p) == MASKED | PENDING and h.pending() is None
        h.unmask(p)  # taken again at once
        assert f.word(p) == MASKED and h.pending() == p
        h.unmask(p)
        assert f.word(p) == 0
        assert d.guest.do_upcall(0) == []


def test_handle_bind_interdomain_taken_at_once(xe, hv):
    d, f = fifo_domain(hv, vcpus=1)
    peer = hv.create_domain(vcpus=1)
    r = peer.alloc_unbound(d.domid)
    with xe.XenEvtchn(d) as h:
        p = h.bind_interdomain(peer.domid, r)
        assert h.pending() == p and f.word(p) == MASKED and f.ready(0) == 0


def test_handle_port_without_word_taken_when_page_arrives(xe, hv, hooks):
    d, f = fifo_domain(hv, vcpus=1, pages=0)
    peer = hv.create_domain(vcpus=1)
    r = peer.alloc_unbound(d.domid)
    with xe.XenEvtchn(d) as h:
        p = h.bind_interdomain(peer.domid, r)  # pending at bind: deferred (no word)
        assert h.pending() is None
        f.expand()
        assert h.pending() == p and f.word(p) == MASKED and hooks == []


def test_handle_ports_and_guest_ports_together(xe, hv):
    d, f = fifo_domain(hv, vcpus=1)
    peer = hv.create_domain(vcpus=1)
    a = d.bind_ipi(0)
    with xe.XenEvtchn(d) as h:
        p = h.bind_unbound_port(peer.domid)
        r = peer.bind_interdomain(d.domid, p)
        d.send(a)
        peer.send(r)
        assert d.guest.do_upcall(0) == [a]
        assert h.pending() == p
        h.notify(p)  # EVTCHNOP_send from d to the peer (2-level there)
        assert peer.shared_info.is_pending(r)
    assert d.status(p).status == xe.EVTCHNSTAT_closed  # close() unbound it


def test_xenevtchn_unbind_in_fifo_clears_pending(xe, hv):
    d, f = fifo_domain(hv, vcpus=1)
    peer = hv.create_domain(vcpus=1)
    with xe.XenEvtchn(d) as h:
        p = h.bind_unbound_port(peer.domid)
        r = peer.bind_interdomain(d.domid, p)
        peer.send(r)
        peer.send(r)
        assert f.word(p) == MASKED | PENDING
        h.unbind(p)
        assert f.word(p) == MASKED
        with pytest.raises(OSError) as ei:
            h.notify(p)
        assert ei.value.errno == errno.ENOTCONN
