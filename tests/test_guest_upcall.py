"""The guest's upcall: ``d.guest.do_upcall`` (API.md "The guest side"; semantics.md
"Guest side"; spec guest-side §1.3-1.5 for Linux, §2 for Mini-OS).

Every expected order below is worked out by hand from the Linux 2-level scan of spec
guest-side §1.4, restated here once so the derivations can refer to it:

    repeat:                                   # §1.3 outer loop
        upcall_pending = 0
        TIMER FIRST: the vCPU's VIRQ_TIMER port, if bound there and active
        pending_words = xchg(sel, 0)
        (sw, sb) = cursor; w = sw; i = 0
        while pending_words:
            cand = pending_words without the bits below w
            if cand == 0: w = 0; i += 1; continue          # wrap
            w = lowest bit of cand
            bits = pending[w] & ~mask[w] & on-this-vCPU    # ONE snapshot per visit
            b = sb if (w == sw and i == 0) else 0
            for each set bit of bits at or above b, ascending:
                clear pending, handler(port)
                cursor = (w, bit+1) or ((w+1) % 64, 0) when bit+1 wraps to 0
                (leave the word when bit+1 wraps to 0)
            drop w from pending_words unless (w == sw and i == 0)   # start word twice
            w = (w + 1) % 64; i += 1
    while upcall_pending

"cursor after port p" below means: after handling p = 64*w + b the cursor is (w, b+1),
or (w+1, 0) when b == 63.  The cursor of a vCPU is moved to a known place by a "park"
upcall that handles a single port.

Besides the hand-worked cases there is an independent slow model of the same scan
(``LinuxScanModel``), written from §1.4 and working only on raw shared_info bytes, that
is compared with ``do_upcall`` on hundreds of seeded random states; and a model of the
Mini-OS loop (§2) compared the same way.
"""

from __future__ import annotations

import random

import pytest

import xenabi
from xenabi import VCPU_INFO_STRIDE, si

VIRQ_TIMER = 0


# ------------------------------------------------------------------------------ helpers


def ipi_domain(hv, n, vcpus=2, on=None, **kw):
    """A domain whose ports 1..n are IPIs; port p is bound on vCPU ``on(p)`` (default 0).

    Ports are allocated lowest-free from 1 (port 0 is reserved), which the assert pins.
    """
    d = hv.create_domain(vcpus=vcpus, **kw)
    for p in range(1, n + 1):
        got = d.bind_ipi(0 if on is None else on(p))
        assert got == p
    return d


def raise_(d, *ports):
    for p in ports:
        d.send(p)


def park(d, port, vcpu=0):
    """Move ``vcpu``'s fairness cursor to just after ``port`` by handling it alone."""
    d.send(port)
    assert d.guest.do_upcall(vcpu) == [port]


def recorder(d=None, plan=None, vcpu=0):
    """A handler that logs (port, evtchn_upcall_pending of ``vcpu`` at call time) and, on
    the FIRST delivery of a port p in ``plan``, calls every action in plan[p] (a port
    number means d.send(port); a callable is called)."""
    log = []
    done = set()
    plan = plan or {}

    def handler(port):
        log.append((port, d.vcpus[vcpu].upcall_pending if d is not None else None))
        if port in plan and port not in done:
            done.add(port)
            for act in plan[port]:
                if callable(act):
                    act()
                else:
                    d.send(act)

    return handler, log


def upcall(d, vcpu=0, plan=None):
    """do_upcall with a recording handler; checks the handler saw exactly the returned
    ports in order; returns the list."""
    h, log = recorder(d, plan, vcpu)
    got = d.guest.do_upcall(vcpu, h)
    assert isinstance(got, list)
    assert got == [p for p, _ in log], "handler calls differ from the returned list"
    return got


# ------------------------------------------------------------------ basic behaviour


def test_default_guest_is_linux(hv):
    d = hv.create_domain(vcpus=1)
    assert d.guest.mode == "linux"


def test_nothing_pending_returns_empty_list(hv):
    d = ipi_domain(hv, 3)
    calls = []
    assert d.guest.do_upcall(0, calls.append) == []
    assert d.guest.do_upcall() == []
    assert d.guest.do_upcall(1) == []
    assert calls == []


def test_fresh_cursor_gives_ascending_order_and_clears_state(hv):
    # Cursor starts at (0, 0). Pending {1,2,3} in word 0 and {65,70} in word 1; sel = {0,1}.
    # i=0: w=0 (start word, from bit 0): 1, 2, 3 -> cursor (0,4); kept for a 2nd visit.
    # i=1: w=1: 65, 70 -> cursor (1,7); dropped.  i=2: cand={0} above 2 empty -> wrap.
    # i=3: w=0 2nd visit: nothing pending any more; dropped.  => [1, 2, 3, 65, 70]
    d = ipi_domain(hv, 70)
    raise_(d, 70, 3, 65, 1, 2)  # raise order does not matter for the 2-level scan
    v0 = d.vcpus[0]
    assert v0.upcall_pending == 1 and v0.pending_sel == 0b11
    assert d.guest.do_upcall(0) == [1, 2, 3, 65, 70]
    assert v0.upcall_pending == 0 and v0.pending_sel == 0
    assert not any(d.shared_info.is_pending(p) for p in (1, 2, 3, 65, 70))


def test_handler_none_and_handler_agree(hv):
    d = ipi_domain(hv, 5)
    raise_(d, 4, 2)
    assert d.guest.do_upcall(0, None) == [2, 4]
    raise_(d, 5, 1)
    seen = []
    assert d.guest.do_upcall(0, seen.append) == [5, 1]  # cursor (0,5) after 4 -> 5 first
    assert seen == [5, 1]


# --------------------------------------------------------------- the fairness cursor


def test_cursor_wraps_inside_the_start_word(hv):
    d = ipi_domain(hv, 8)
    park(d, 4)  # cursor (0, 5)
    # pending {2, 7}, sel {0}. i=0: w=0 from bit 5: 7 -> cursor (0,8); word kept.
    # i=1: cand above 1 empty -> wrap. i=2: w=0 2nd visit in full: 2 -> cursor (0,3).
    raise_(d, 2, 7)
    assert upcall(d) == [7, 2]
    # The cursor persisted: now (0,3).  pending {2, 3}: 1st visit from bit 3: 3 -> (0,4);
    # 2nd visit: 2 -> (0,3).
    raise_(d, 2, 3)
    assert upcall(d) == [3, 2]
    # And again from (0,3): pending {1, 3, 8}: 1st visit: 3, 8 -> (0,9); 2nd visit: 1.
    raise_(d, 1, 3, 8)
    assert upcall(d) == [3, 8, 1]


def test_cursor_across_words(hv):
    d = ipi_domain(hv, 130)
    park(d, 66)  # 66 = 64*1 + 2 -> cursor (1, 3)
    # pending {1, 65, 70, 130}: sel {0,1,2}; start (1,3).
    # i=0: w=1 from bit 3: 70 (bit 6) -> (1,7); 65 (bit 1) is below the cursor. Kept.
    # i=1: w=2: 130 -> (2,3); dropped.  i=2: nothing at/above 3 -> wrap.
    # i=3: w=0: 1 -> (0,2); dropped.  i=4: w=1 2nd visit, full: 65 -> (1,2); dropped.
    raise_(d, 1, 65, 70, 130)
    assert upcall(d) == [70, 130, 1, 65]
    # cursor (1,2): pending {65, 66, 129}: w=1 from bit 2: 66 -> (1,3); w=2: 129;
    # wrap; w=1 2nd visit: 65.
    raise_(d, 65, 66, 129)
    assert upcall(d) == [66, 129, 65]


def test_cursor_after_bit_63_moves_to_next_word(hv):
    d = ipi_domain(hv, 64)
    park(d, 63)  # bit 63: b wraps to 0 -> cursor (1, 0)
    # pending {1, 63, 64}: sel {0,1}; start (1,0).
    # i=0: w=1 from bit 0: 64 -> (1,1). Kept.  i=1: nothing above word 1 -> wrap.
    # i=2: w=0: 1, 63 -> after 63 the cursor is (1,0).  i=3: w=1 2nd visit: nothing.
    raise_(d, 1, 63, 64)
    assert upcall(d) == [64, 1, 63]
    # cursor (1,0) again: 64 first, then word 0.
    raise_(d, 2, 64)
    assert upcall(d) == [64, 2]


def test_words_above_the_start_word_first_then_wrap(hv):
    d = ipi_domain(hv, 257)
    park(d, 127)  # word 1 bit 63 -> cursor (2, 0)
    # pending {1, 65, 129, 193, 257}: sel {0,1,2,3,4}; start (2,0).
    # i=0: w=2: 129 (kept).  i=1: w=3: 193.  i=2: w=4: 257.  i=3: wrap.
    # i=4: w=0: 1.  i=5: w=1: 65.  i=6: w=2 2nd visit: nothing left.
    raise_(d, 257, 193, 129, 65, 1)
    assert upcall(d) == [129, 193, 257, 1, 65]


def test_start_word_ports_below_cursor_come_last(hv):
    d = ipi_domain(hv, 130)
    park(d, 73)  # 73 = 64 + 9 -> cursor (1, 10)
    # pending {2, 66, 80, 130}: start (1,10).
    # i=0: w=1 from bit 10: 80 (bit 16) -> (1,17); 66 (bit 2) below cursor. Kept.
    # i=1: w=2: 130 -> (2,3).  i=2: wrap.  i=3: w=0: 2 -> (0,3).
    # i=4: w=1 2nd visit in full: 66 -> (1,3).
    raise_(d, 2, 66, 80, 130)
    assert upcall(d) == [80, 130, 2, 66]


def test_start_word_not_selected_wraps_at_once(hv):
    d = ipi_domain(hv, 130)
    park(d, 130)  # cursor (2, 3)
    # pending {1, 65}: sel {0,1}, start (2,3). i=0: nothing at/above word 2 -> wrap
    # (w=0, i=1). Word 2 is not in pending_words, so it is never visited: 1, then 65.
    raise_(d, 65, 1)
    assert upcall(d) == [1, 65]


def test_last_word_wraps_to_word_zero(hv):
    d = ipi_domain(hv, 4095)  # every port of the 64-bit 2-level ABI
    park(d, 4094)  # 4094 = 64*63 + 62 -> cursor (63, 63)
    # pending {1, 4032, 4095}: sel {0, 63}; start (63,63).
    # i=0: w=63 from bit 63: 4095 -> bit 63 wraps: cursor ((63+1) % 64, 0) = (0,0). Kept.
    # i=1: w=(63+1)%64=0: cand={0,63} -> w=0: 1 -> (0,2). Dropped.
    # i=2: w=1: cand={63} -> w=63 2nd visit in full: 4032 -> (63,1). Dropped.
    raise_(d, 1, 4032, 4095)
    assert upcall(d) == [4095, 1, 4032]
    # cursor (63,1): pending {1, 4032, 4033}: w=63 from bit 1: 4033 -> (63,2); wrap to
    # w=0: 1; w=63 2nd visit: 4032.
    raise_(d, 1, 4032, 4033)
    assert upcall(d) == [4033, 1, 4032]
    park(d, 4095)  # bit 63 of word 63 -> cursor (0, 0)
    raise_(d, 4095, 1)
    assert upcall(d) == [1, 4095]


def test_spec_worked_example_A2(hv):
    """guest-side §1.4 ends with "A2 gives 1, 5, 65, 129, 131".  The setup text of that
    example is not in the spec; this is the reconstruction from the surrounding text
    (the round-robin consequences): a first upcall A1 handles the same five ports from a
    fresh cursor and leaves the cursor at (2, 4); the same ports raised again give A2.
    """
    d = ipi_domain(hv, 131)
    ports = (1, 5, 65, 129, 131)
    # A1: cursor (0,0): w=0: 1, 5; w=1: 65; w=2: 129, 131 -> cursor (2, 4).
    raise_(d, *ports)
    assert upcall(d) == [1, 5, 65, 129, 131]
    # A2: start (2,4). i=0: w=2 from bit 4: nothing (129 = bit 1, 131 = bit 3 are below
    # the cursor). Kept.  i=1: nothing above word 2 -> wrap.  w=0: 1, 5.  w=1: 65.
    # w=2 2nd visit in full: 129, 131.
    raise_(d, *ports)
    assert upcall(d) == [1, 5, 65, 129, 131]
    # Contrast: with the cursor at (1,2) (after 65) the same set gives
    # w=1 from bit 2: nothing; w=2: 129, 131; wrap; w=0: 1, 5; w=1 2nd visit: 65.
    park(d, 65)
    raise_(d, *ports)
    assert upcall(d) == [129, 131, 1, 5, 65]


def test_cursor_is_per_vcpu(hv):
    # Odd ports on vCPU 1, even ports on vCPU 0.
    d = ipi_domain(hv, 70, on=lambda p: p % 2)
    park(d, 66, vcpu=0)  # vCPU 0 cursor (1, 3); vCPU 1 cursor still (0, 0)
    raise_(d, 1, 69)  # vCPU 1: fresh cursor: 1 then 69
    assert upcall(d, 1) == [1, 69]
    raise_(d, 2, 68)  # vCPU 0: start (1,3): 68 (bit 4); wrap; 2
    assert upcall(d, 0) == [68, 2]


# ----------------------------------------------------------- handlers raising events


def test_handler_reraises_own_port_in_start_word_first_visit(hv):
    d = ipi_domain(hv, 3)
    # Cursor (0,0), pending {1}, sel {0}. Pass 1: upcall_pending := 0.
    # i=0: w=0 snapshot {1}: clear 1, handler(1) sees upcall_pending 0 and re-raises 1:
    #   pending 1 again, sel bit 0 (cleared by the xchg) set again, upcall_pending := 1.
    #   cursor (0,2). Start word kept.
    # i=1: nothing above 1 -> wrap. i=2: w=0 2nd visit, fresh snapshot {1}: handler(1)
    #   runs again IN THE SAME PASS (upcall_pending still 1). cursor (0,2).
    # Pass 2 (upcall_pending was set): sel {0}, word 0 has nothing: no more deliveries.
    h, log = recorder(d, {1: [1]})
    raise_(d, 1)
    assert d.guest.do_upcall(0, h) == [1, 1]
    assert log == [(1, 0), (1, 1)]
    assert d.vcpus[0].upcall_pending == 0 and d.vcpus[0].pending_sel == 0
    assert not d.shared_info.is_pending(1)


def test_handler_reraises_own_port_outside_start_word(hv):
    d = ipi_domain(hv, 65)
    # Cursor (0,0), pending {65}, sel {1}. Pass 1: i=0: cand={1} -> w=1 (not the start
    # word): handler(65) (upcall_pending 0) re-raises 65: sel bit 1, upcall_pending := 1.
    # cursor (1,2); word 1 dropped; pending_words empty: pass ends.
    # Pass 2: upcall_pending := 0; sel {1}; start (1,2): i=0 w=1 from bit 2: nothing;
    # wrap; w=1 2nd visit: 65 again, handler sees upcall_pending 0 (a NEW pass).
    h, log = recorder(d, {65: [65]})
    raise_(d, 65)
    assert d.guest.do_upcall(0, h) == [65, 65]
    assert log == [(65, 0), (65, 0)]


def test_handler_reraise_with_other_ports(hv):
    d = ipi_domain(hv, 65)
    # Cursor (0,0), pending {1,2,65}; handler(2) re-raises 2 once.
    # w=0 (1st): 1, 2 (re-raise: sel bit 0, upcall_pending 1) -> cursor (0,3).
    # w=1: 65 -> (1,2).  wrap.  w=0 2nd visit: 2 again.  Pass 2: nothing.
    raise_(d, 1, 2, 65)
    assert upcall(d, plan={2: [2]}) == [1, 2, 65, 2]
    # Now cursor (0,3). Pending {1,2,65}; handler(65) re-raises 65 once.
    # w=0 from bit 3: nothing. w=1: 65 (re-raise) -> (1,2). wrap. w=0 2nd visit: 1, 2
    # -> (0,3). Pass 2: sel {1}, start (0,3): w=0 not selected... cand={1} -> w=1: b=0
    # (not the start word): 65.
    raise_(d, 1, 2, 65)
    assert upcall(d, plan={65: [65]}) == [65, 1, 2, 65]


def test_handler_raises_port_in_later_word_not_selected(hv):
    d = ipi_domain(hv, 130)
    # Cursor (0,0), pending {1}, sel {0}. handler(1) raises 130 (word 2): sel bit 2 and
    # upcall_pending set, but pending_words (the xchg'd snapshot) = {0}: not seen in
    # this pass. Pass 2: sel {2}: 130.
    raise_(d, 1)
    h, log = recorder(d, {1: [130]})
    assert d.guest.do_upcall(0, h) == [1, 130]
    assert log == [(1, 0), (130, 0)]


def test_handler_raises_port_in_later_word_already_selected(hv):
    d = ipi_domain(hv, 131)
    # Cursor (0,0), pending {1, 129}, sel {0,2}. handler(1) raises 131 (word 2, in
    # pending_words, not yet visited): w=2's snapshot is taken at its visit, after the
    # raise, so it holds {129, 131}: both in this pass. Pass 2: word 2 empty.
    raise_(d, 1, 129)
    h, log = recorder(d, {1: [131]})
    assert d.guest.do_upcall(0, h) == [1, 129, 131]
    assert log == [(1, 0), (129, 1), (131, 1)]


def test_handler_raises_port_in_the_start_word(hv):
    d = ipi_domain(hv, 65)
    # Cursor (0,0), pending {1, 65}. w=0 (1st): 1 -> (0,2). w=1: handler(65) raises 2
    # (word 0 = the start word, still in pending_words). wrap: w=0 2nd visit, fresh
    # snapshot {2}: 2.
    raise_(d, 1, 65)
    assert upcall(d, plan={65: [2]}) == [1, 65, 2]


def test_handler_raises_lower_word_still_ahead_in_wrap_order(hv):
    d = ipi_domain(hv, 130)
    park(d, 63)  # cursor (1, 0)
    # pending {1, 70, 130}, sel {0,1,2}, start (1,0); handler(130) raises 3 (word 0).
    # w=1: 70. w=2: 130 (raises 3). wrap. w=0 (numerically earlier, but still ahead in
    # the wrap order): snapshot {1, 3}: 1, 3. w=1 2nd visit: nothing.
    raise_(d, 1, 70, 130)
    assert upcall(d, plan={130: [3]}) == [70, 130, 1, 3]


def test_handler_raises_port_in_word_already_done(hv):
    d = ipi_domain(hv, 130)
    # Cursor (0,0), pending {1, 65, 130}. w=0: 1. w=1: 65 (word 1 dropped). w=2:
    # handler(130) raises 66 (word 1, already done): sel bit 1, upcall_pending.
    # wrap, w=0 2nd visit: nothing.  Pass 2: sel {1}, start (2,3): wrap; w=1: 66.
    raise_(d, 1, 65, 130)
    h, log = recorder(d, {130: [66]})
    assert d.guest.do_upcall(0, h) == [1, 65, 130, 66]
    assert log[-1] == (66, 0)  # in a new pass


def test_snapshot_is_taken_once_per_word_visit(hv):
    d = ipi_domain(hv, 130)
    # Cursor (0,0), pending {1, 65}. handler(1) raises 3: same word, but word 0's
    # snapshot {1} was taken before; 3 waits for the start word's 2nd visit.
    # (A live re-read would give [1, 3, 65].)
    raise_(d, 1, 65)
    assert upcall(d, plan={1: [3]}) == [1, 65, 3]
    # cursor (0,4). Pending {1, 65, 130}: handler(65) raises 66 in word 1 (not the start
    # word): w=0 from bit 4: nothing; w=1 snapshot {65}: 65 (raises 66); w=2: 130; wrap;
    # w=0 2nd visit: 1; pass 2: sel {1}: start (0,2) -> w=1 full: 66.
    # (A live re-read would give [65, 66, 130, 1].)
    raise_(d, 1, 65, 130)
    assert upcall(d, plan={65: [66]}) == [65, 130, 1, 66]


def test_port_masked_by_an_earlier_handler_in_the_same_visit_is_still_handled(hv):
    d = ipi_domain(hv, 3)
    # Cursor (0,0), pending {1,2,3}; handler(1) masks 3. Word 0's snapshot {1,2,3} was
    # taken before: 3 is still handled (pending cleared, handler run) in that visit.
    raise_(d, 1, 2, 3)
    assert upcall(d, plan={1: [lambda: d.guest.mask(3)]}) == [1, 2, 3]
    assert d.shared_info.is_masked(3) and not d.shared_info.is_pending(3)


def test_handler_exception_propagates_and_keeps_what_was_done(hv):
    d = ipi_domain(hv, 5)
    seen = []

    def handler(port):
        seen.append(port)
        if port == 2:
            raise RuntimeError("boom")

    raise_(d, 1, 2, 3)
    with pytest.raises(RuntimeError):
        d.guest.do_upcall(0, handler)
    # 1 handled; 2 cleared before its handler ran; 3 not reached, still pending.
    assert seen == [1, 2]
    s = d.shared_info
    assert not s.is_pending(1) and not s.is_pending(2) and s.is_pending(3)
    # The cursor moved after 1 (-> (0,2)) but not after 2, whose handler raised.
    # Raise 2 and 5: start (0,2): snapshot {2,3,5} from bit 2 -> 2, 3, 5.
    # (Had the cursor moved past 2 it would be (0,3): 3, 5, then 2.)
    raise_(d, 2, 5)
    assert upcall(d) == [2, 3, 5]


# ------------------------------------------------------------------------ timer first


def timer_domain(hv):
    """IPIs 1..70 on vCPU 0, VIRQ_TIMER on vCPU 0 = port 71, on vCPU 1 = port 72."""
    d = ipi_domain(hv, 70)
    assert d.bind_virq(VIRQ_TIMER, 0) == 71
    assert d.bind_virq(VIRQ_TIMER, 1) == 72
    return d


def test_timer_port_first_and_cursor_unaffected(hv):
    d = timer_domain(hv)
    # Pending {2, 65} and the timer 71 (word 1). Timer first: 71. Then the scan from
    # (0,0): w=0: 2 -> (0,3); w=1: 65 -> (1,2) (71 was cleared by the timer step).
    raise_(d, 65, 2)
    hv.send_virq(d.domid, VIRQ_TIMER, 0)
    assert upcall(d) == [71, 2, 65]
    # The timer did not move the cursor: it is (1,2) from 65, not (1,8) from 71.
    # Pending {1, 66}: start (1,2): 66; wrap; 1.  (With (1,8): 1, 66.)
    raise_(d, 1, 66)
    assert upcall(d) == [66, 1]


def test_timer_first_even_if_its_word_is_after_the_cursor(hv):
    d = timer_domain(hv)
    park(d, 3)  # cursor (0,4)
    # Pending {5, 71(timer)}: timer first, then 5.
    raise_(d, 5)
    hv.send_virq(d.domid, VIRQ_TIMER, 0)
    assert upcall(d) == [71, 5]


def test_timer_first_on_every_pass(hv):
    d = timer_domain(hv)
    # Pending {2, 65, 71}. Pass 1: timer 71; w=0: 2; w=1 (snapshot {65}): handler(65)
    # re-raises the timer (sel bit 1, upcall_pending) -> cursor (1,2); word 1 dropped;
    # w=0 2nd visit: nothing.  Pass 2: timer first again: 71; sel {1}: nothing left.
    raise_(d, 2, 65)
    hv.send_virq(d.domid, VIRQ_TIMER, 0)
    plan = {65: [lambda: hv.send_virq(d.domid, VIRQ_TIMER, 0)]}
    h, log = recorder(d, plan)
    assert d.guest.do_upcall(0, h) == [71, 2, 65, 71]
    assert log[-1] == (71, 0)
    # Cursor still (1,2).
    raise_(d, 1, 66)
    assert upcall(d) == [66, 1]


def test_timer_found_active_without_its_selector_bit(hv):
    d = timer_domain(hv)
    sv = si(d)
    # The timer is raised while masked (pending, no sel bit), then the guest clears the
    # mask bit by hand (no re-fire).  An upcall for port 2: the timer step looks at
    # "pending & unmasked & on this vCPU", not at the selector: 71 first.
    d.guest.mask(71)
    hv.send_virq(d.domid, VIRQ_TIMER, 0)
    assert d.vcpus[0].pending_sel == 0
    sv.set_mask(71, 0)
    raise_(d, 2)
    assert upcall(d) == [71, 2]


def test_masked_timer_is_not_first_and_stays_pending(hv):
    d = timer_domain(hv)
    d.guest.mask(71)
    hv.send_virq(d.domid, VIRQ_TIMER, 0)
    raise_(d, 2)
    assert upcall(d) == [2]
    assert d.shared_info.is_pending(71)
    d.guest.unmask(71)  # local path on vCPU 0: sel bit 1 + upcall_pending
    assert upcall(d) == [71]


def test_timer_of_other_vcpu_is_not_handled(hv):
    d = timer_domain(hv)
    hv.send_virq(d.domid, VIRQ_TIMER, 1)  # port 72 on vCPU 1
    raise_(d, 2)
    assert upcall(d, 0) == [2]
    assert d.shared_info.is_pending(72)
    assert upcall(d, 1) == [72]


# ------------------------------------------------------------------- several vCPUs


def test_ports_of_another_vcpu_are_left_pending(hv):
    # Port 2 is an IPI on vCPU 1, 1 and 3 on vCPU 0: all in word 0.
    d = ipi_domain(hv, 3, on=lambda p: 1 if p == 2 else 0)
    raise_(d, 1, 2, 3)
    v0, v1 = d.vcpus[0], d.vcpus[1]
    assert v0.pending_sel == 1 and v1.pending_sel == 1
    # vCPU 0's snapshot of word 0 = pending & ~mask & on-vCPU-0 = {1, 3}.
    assert upcall(d, 0) == [1, 3]
    assert d.shared_info.is_pending(2)
    assert v1.pending_sel == 1 and v1.upcall_pending == 1  # vCPU 1 untouched
    assert upcall(d, 1) == [2]
    assert upcall(d, 0) == [] and upcall(d, 1) == []


def test_ports_moved_with_bind_vcpu(hv, pair):
    dom0, domu = pair
    r = dom0.alloc_unbound(domu.domid)
    p = domu.bind_interdomain(dom0.domid, r)  # Xen leaves p pending, notify vCPU 0
    assert upcall(domu, 0) == [p]
    domu.bind_vcpu(p, 1)
    dom0.send(r)  # raised at the notify vCPU, now 1
    assert upcall(domu, 0) == []
    assert domu.shared_info.is_pending(p)
    assert upcall(domu, 1) == [p]
    # An unbound port moved to vCPU 1 and raised by the hypervisor.
    u = domu.alloc_unbound(dom0.domid)
    domu.bind_vcpu(u, 1)
    hv.inject(domu.domid, u)
    assert upcall(domu, 0) == []
    assert domu.shared_info.is_pending(u)
    assert upcall(domu, 1) == [u]


def test_rebind_while_pending_then_unmask_refires_on_new_vcpu(hv, pair):
    dom0, domu = pair
    ports = [domu.bind_ipi(0) for _ in range(2)]  # keep word 0 busy on vCPU 0
    u = domu.alloc_unbound(dom0.domid)
    hv.inject(domu.domid, u)  # pending, sel bit on vCPU 0
    domu.bind_vcpu(u, 1)  # now handled on vCPU 1
    raise_(domu, ports[0])
    # vCPU 0: word 0 snapshot = pending & on-vCPU-0 = {ports[0]}; u left pending.
    assert upcall(domu, 0) == [ports[0]]
    assert domu.shared_info.is_pending(u)
    # vCPU 1 never had the selector bit: nothing to scan.
    assert upcall(domu, 1) == []
    # Linux's rebind ends with an unmask on the new vCPU: local path on vCPU 1 sets
    # vCPU 1's selector bit and upcall_pending (spec §1.7, semantics.md).
    domu.guest.unmask(u)
    assert domu.vcpus[1].upcall_pending == 1
    assert upcall(domu, 1) == [u]


# ------------------------------------------------------- masked and unusable ports


def test_masked_ports_are_skipped_and_left_pending(hv):
    d = ipi_domain(hv, 66)
    d.guest.mask(2)
    d.guest.mask(66)
    raise_(d, 2, 3, 66, 65)
    # word 0 snapshot {3} (2 masked); word 1 snapshot {65} (66 masked).
    assert upcall(d) == [3, 65]
    s = d.shared_info
    assert s.is_pending(2) and s.is_pending(66)
    assert d.vcpus[0].pending_sel == 0  # the selector was consumed anyway
    d.guest.unmask(66)
    d.guest.unmask(2)
    # cursor (1,2): w=1 from bit 2: 66; wrap; w=0: 2.
    assert upcall(d) == [66, 2]
    assert upcall(d) == []


def test_pending_free_reserved_and_invalid_ports_are_left_pending(hv):
    d = ipi_domain(hv, 3)
    sv = si(d)
    # Port 0 (reserved), port 10 (free, within the allocated bucket), port 4000 (no
    # channel at all): pending bits written by hand, with their selector bits.
    for p in (0, 10, 4000):
        sv.set_pending(p)
    sv.set_sel(0, (1 << 0) | (1 << 62))
    sv.set_upcall_pending(0, 1)
    raise_(d, 3)
    assert upcall(d) == [3]
    for p in (0, 10, 4000):
        assert sv.pending(p) == 1, p
    assert d.vcpus[0].pending_sel == 0 and d.vcpus[0].upcall_pending == 0
    # A closed port with its pending bit set by hand is skipped as well.
    d.close(2)
    sv.set_pending(2)
    sv.set_sel(0, 1)
    raise_(d, 1)
    assert upcall(d) == [1]
    assert sv.pending(2) == 1


def test_scan_runs_once_even_without_upcall_pending(hv):
    # do_upcall is the upcall itself: the loop body runs once, so selected words are
    # scanned even if evtchn_upcall_pending was already 0.
    d = ipi_domain(hv, 5)
    raise_(d, 4)
    si(d).set_upcall_pending(0, 0)
    assert upcall(d) == [4]


# ======================================================== independent model (Linux §1.4)


class Shinfo:
    """Raw shared_info bytes (a private bytearray copy) with Xen's 2-level rules."""

    def __init__(self, raw: bytes, layout: str):
        L = xenabi.SHINFO[layout]
        self.buf = bytearray(raw)
        self.bits = L["bits"]
        self.nbytes = L["bits"] // 8
        self.nwords = L["nr"] // L["bits"]
        self.pend_off, self.mask_off = L["pending"], L["mask"]
        self.sel_off, self.sel_fmt = L["sel"], L["sel_fmt"]

    def _word(self, base, w):
        o = base + w * self.nbytes
        return int.from_bytes(self.buf[o : o + self.nbytes], "little")

    def pending_word(self, w):
        return self._word(self.pend_off, w)

    def mask_word(self, w):
        return self._word(self.mask_off, w)

    def _bit(self, base, port):
        return (self.buf[base + port // 8] >> (port % 8)) & 1

    def _set(self, base, port, v):
        i = base + port // 8
        if v:
            self.buf[i] |= 1 << (port % 8)
        else:
            self.buf[i] &= ~(1 << (port % 8)) & 0xFF

    def pending(self, port):
        return self._bit(self.pend_off, port)

    def masked(self, port):
        return self._bit(self.mask_off, port)

    def clear_pending(self, port):
        self._set(self.pend_off, port, 0)

    def set_mask(self, port):
        self._set(self.mask_off, port, 1)

    def sel(self, v):
        o = v * VCPU_INFO_STRIDE + self.sel_off
        return int.from_bytes(self.buf[o : o + self.nbytes], "little")

    def set_sel(self, v, value):
        o = v * VCPU_INFO_STRIDE + self.sel_off
        self.buf[o : o + self.nbytes] = value.to_bytes(self.nbytes, "little")

    def upcall_pending(self, v):
        return self.buf[v * VCPU_INFO_STRIDE]

    def set_upcall_pending(self, v, value):
        self.buf[v * VCPU_INFO_STRIDE] = value

    def xen_set_pending(self, port, vcpu):
        """Xen's evtchn_2l_set_pending (spec §0)."""
        if self.pending(port):
            return
        self._set(self.pend_off, port, 1)
        w = port // self.bits
        if not self.masked(port) and not (self.sel(vcpu) >> w) & 1:
            self.set_sel(vcpu, self.sel(vcpu) | (1 << w))
            self.set_upcall_pending(vcpu, 1)

    def state(self, nvcpus):
        """What the comparison looks at: both bitmaps, each vCPU's flag and selector."""
        n = self.nwords * self.nbytes
        return (
            bytes(self.buf[self.pend_off : self.pend_off + n]),
            bytes(self.buf[self.mask_off : self.mask_off + n]),
            tuple((self.upcall_pending(v), self.sel(v)) for v in range(nvcpus)),
        )


def lowest(x):
    return (x & -x).bit_length() - 1


class LinuxScanModel:
    """Linux's 2-level upcall, written from spec guest-side §1.3-1.5 (see module doc)."""

    def __init__(self, layout, nvcpus):
        L = xenabi.SHINFO[layout]
        self.bits = L["bits"]
        self.nwords = L["nr"] // L["bits"]
        self.cursor = [(0, 0)] * nvcpus

    def upcall(self, sh: Shinfo, vcpu, owner, timers, handler):
        """owner: port -> notify vCPU of every usable channel; timers: vCPU -> timer port;
        handler(port) is called after the pending bit is cleared."""
        out = []
        full = (1 << self.bits) - 1

        def active(w):
            bits = sh.pending_word(w) & ~sh.mask_word(w) & full
            mine = 0
            while bits:
                b = lowest(bits)
                bits &= bits - 1
                if owner.get(w * self.bits + b) == vcpu:
                    mine |= 1 << b
            return mine

        def handle(port):
            sh.clear_pending(port)
            out.append(port)
            handler(port)

        while True:
            sh.set_upcall_pending(vcpu, 0)
            t = timers.get(vcpu)
            if t is not None and sh.pending(t) and not sh.masked(t) and owner.get(t) == vcpu:
                handle(t)
            pending_words = sh.sel(vcpu)
            sh.set_sel(vcpu, 0)
            sw, sb = self.cursor[vcpu]
            w, i = sw, 0
            while pending_words:
                cand = pending_words & ~((1 << w) - 1)
                if cand == 0:
                    w, i = 0, i + 1
                    continue
                w = lowest(cand)
                bits = active(w)
                b = sb if (w == sw and i == 0) else 0
                while True:
                    rest = bits & ~((1 << b) - 1)
                    if rest == 0:
                        break
                    bit = lowest(rest)
                    handle(w * self.bits + bit)
                    b = (bit + 1) % self.bits
                    self.cursor[vcpu] = (w, b) if b else ((w + 1) % self.bits, 0)
                    if b == 0:
                        break
                if not (w == sw and i == 0):
                    pending_words &= ~(1 << w)
                w = (w + 1) % self.bits
                i += 1
            if not sh.upcall_pending(vcpu):
                return out


class MiniosModel:
    """Mini-OS's do_hypervisor_callback (spec guest-side §2, semantics.md)."""

    def __init__(self, layout):
        L = xenabi.SHINFO[layout]
        self.bits = L["bits"]

    def upcall(self, sh: Shinfo, vcpu, owner, timers, handler):
        out = []
        while True:
            sh.set_upcall_pending(vcpu, 0)
            l1 = sh.sel(vcpu)
            sh.set_sel(vcpu, 0)
            while l1:
                w = lowest(l1)
                l1 &= l1 - 1
                while True:
                    word = sh.pending_word(w) & ~sh.mask_word(w)
                    if not word:
                        break
                    port = w * self.bits + lowest(word)
                    sh.clear_pending(port)
                    out.append(port)
                    handler(port)
            if not sh.upcall_pending(vcpu):
                return out


class RandomGuest:
    """A domain with random IPI (and timer) ports; random rounds of guest/hypervisor
    actions, each ending in one do_upcall that is compared with the model."""

    def __init__(self, xe, hv, seed, layout, mode, nports, nvcpus):
        self.xe, self.hv = xe, hv
        self.rng = random.Random(seed)
        self.seed, self.layout, self.mode = seed, layout, mode
        self.nvcpus = nvcpus
        kw = {"layout": layout}
        if mode == "minios":
            kw["guest"] = "minios"
        self.d = hv.create_domain(vcpus=nvcpus, **kw)
        rng = self.rng
        self.owner = {}  # port -> notify vCPU (usable channels)
        self.timers = {}  # vCPU -> timer port
        timer_at = {v: rng.randrange(nports - nvcpus) for v in range(nvcpus) if rng.random() < 0.6}
        for k in range(nports - len(timer_at)):  # nports channels in all
            for v, at in timer_at.items():
                if at == k:
                    p = self.d.bind_virq(VIRQ_TIMER, v)
                    self.owner[p] = v
                    self.timers[v] = p
            v = rng.randrange(nvcpus)
            self.owner[self.d.bind_ipi(v)] = v
        # Close some ports: holes of FREE channels (Linux mode only: Mini-OS would run a
        # default handler for them).
        if mode == "linux":
            for p in rng.sample(sorted(self.owner), len(self.owner) // 5):
                if p not in self.timers.values():
                    self.d.close(p)
                    del self.owner[p]
        self.ports = sorted(self.owner)
        self.model = (
            LinuxScanModel(layout, nvcpus) if mode == "linux" else MiniosModel(layout)
        )
        self.vcpu_of_timer = {p: v for v, p in self.timers.items()}

    # Xen-side raise through the API
    def api_raise(self, port):
        if port in self.vcpu_of_timer:
            self.hv.send_virq(self.d.domid, VIRQ_TIMER, self.vcpu_of_timer[port])
        else:
            self.d.send(port)

    def prepare(self):
        rng, d = self.rng, self.d
        hot = rng.sample(self.ports, min(len(self.ports), rng.choice((1, 3, 8, 20))))
        for _ in range(rng.randrange(6)):
            d.guest.mask(rng.choice(hot if rng.random() < 0.7 else self.ports))
        for _ in range(rng.randrange(4)):
            p = rng.choice(self.ports)
            if rng.random() < 0.5:
                d.guest.unmask(p)
            else:
                d.guest.unmask(p, vcpu=rng.randrange(self.nvcpus))
        for p in hot:
            if rng.random() < 0.85:
                self.api_raise(p)
        if self.mode == "linux" and rng.random() < 0.1:
            # guest/hardware noise: a stray selector bit, a pending bit on a free port
            sv = si(d, self.layout)
            nw = xenabi.SHINFO[self.layout]["nr"] // xenabi.SHINFO[self.layout]["bits"]
            v = rng.randrange(self.nvcpus)
            sv.set_sel(v, sv.sel(v) | (1 << rng.randrange(nw)))
            p = rng.randrange(xenabi.SHINFO[self.layout]["nr"])
            if p not in self.owner:
                sv.set_pending(p)

    def plan(self):
        """Handler decisions by call index: identical for the real run and the model."""
        rng = self.rng
        acts = []
        budget = rng.choice((0, 2, 6))
        for _ in range(40):
            a = []
            if budget and rng.random() < 0.3:
                budget -= 1
                a.append(("raise_self",) if rng.random() < 0.4 else ("raise", rng.choice(self.ports)))
            if rng.random() < 0.05:
                a.append(("mask", rng.choice(self.ports)))
            acts.append(a)
        return acts

    def round(self, r):
        rng, d = self.rng, self.d
        self.prepare()
        # Mini-OS runs its callback on vCPU 0 only (spec §2).
        vcpu = rng.randrange(self.nvcpus) if self.mode == "linux" else 0
        plan = self.plan()
        size = xenabi.SHINFO[self.layout]["size"]
        pre = bytes(d.shared_info.buffer[:size])
        sh = Shinfo(pre, self.layout)
        cursor = self.model.cursor[vcpu] if self.mode == "linux" else None
        real_calls = []
        model_calls = []

        def real_handler(port):
            i = len(real_calls)
            real_calls.append(port)
            assert i < 10000, "runaway upcall"
            for act in plan[i] if i < len(plan) else ():
                if act[0] == "raise_self":
                    self.api_raise(port)
                elif act[0] == "raise":
                    self.api_raise(act[1])
                else:
                    d.guest.mask(act[1])

        def model_handler(port):
            i = len(model_calls)
            model_calls.append(port)
            for act in plan[i] if i < len(plan) else ():
                if act[0] == "raise_self":
                    sh.xen_set_pending(port, self.owner[port])
                elif act[0] == "raise":
                    sh.xen_set_pending(act[1], self.owner[act[1]])
                else:
                    sh.set_mask(act[1])

        got = d.guest.do_upcall(vcpu, real_handler)
        timers = self.timers if self.mode == "linux" else {}
        want = self.model.upcall(sh, vcpu, self.owner, timers, model_handler)

        def ctx():
            return (
                f"seed={self.seed} layout={self.layout} mode={self.mode} round={r} "
                f"vcpu={vcpu} cursor={cursor} plan={[a for a in plan if a][:8]} "
                f"before={describe(Shinfo(pre, self.layout), self.nvcpus, self.owner)}"
            )

        assert got == real_calls, "returned list differs from handler calls"
        if got != want:
            pytest.fail(f"do_upcall gave {got}, model {want}; {ctx()}")
        real = Shinfo(bytes(d.shared_info.buffer[:size]), self.layout)
        if real.state(self.nvcpus) != sh.state(self.nvcpus):
            pytest.fail(
                "shared_info after upcall differs from the model: real "
                f"{describe(real, self.nvcpus, self.owner)} model "
                f"{describe(sh, self.nvcpus, self.owner)}; {ctx()}"
            )
        return len(got)


def describe(sh, nvcpus, owner):
    pend = [p for p in range(sh.nwords * sh.bits) if sh.pending(p)]
    return {
        "pending": pend,
        "masked": [p for p in range(sh.nwords * sh.bits) if sh.masked(p)],
        "owner_of_pending": {p: owner.get(p) for p in pend},
        "vcpus": [(sh.upcall_pending(v), hex(sh.sel(v))) for v in range(nvcpus)],
    }


LINUX_CASES = (
    [(s, "x86_64", 40, 2) for s in range(40)]
    + [(100 + s, "x86_64", 260, 3) for s in range(20)]
    + [(200 + s, "x86_32", 200, 2) for s in range(10)]
    + [(300, "x86_64", 4095, 2), (301, "x86_32", 1023, 2)]
)


@pytest.mark.parametrize("seed,layout,nports,nvcpus", LINUX_CASES)
def test_linux_scan_matches_model(xe, hv, seed, layout, nports, nvcpus):
    g = RandomGuest(xe, hv, seed, layout, "linux", nports, nvcpus)
    handled = sum(g.round(r) for r in range(12))
    assert handled > 0


MINIOS_CASES = [(500 + s, "x86_64", 40 if s % 2 else 300, 1 + s % 2) for s in range(12)]


@pytest.mark.parametrize("seed,layout,nports,nvcpus", MINIOS_CASES)
def test_minios_loop_matches_model(xe, hv, seed, layout, nports, nvcpus):
    g = RandomGuest(xe, hv, seed, layout, "minios", nports, nvcpus)
    handled = sum(g.round(r) for r in range(10))
    assert handled > 0


def test_model_sanity_on_a_hand_worked_case():
    """The model itself reproduces a hand-worked order (test_cursor_across_words)."""
    sh = Shinfo(bytes(3136), "x86_64")
    m = LinuxScanModel("x86_64", 1)
    owner = {p: 0 for p in range(1, 131)}
    for p in (1, 65, 70, 130):
        sh.xen_set_pending(p, 0)
    m.cursor[0] = (1, 3)
    assert m.upcall(sh, 0, owner, {}, lambda p: None) == [70, 130, 1, 65]
    assert m.cursor[0] == (1, 2)


# ====================================================================== Mini-OS (§2)


def minios_domain(hv, n, vcpus=1, on=None):
    d = ipi_domain(hv, n, vcpus=vcpus, on=on, guest="minios")
    assert d.guest.mode == "minios"
    return d


def test_minios_ascending_from_port_zero_without_cursor(hv):
    d = minios_domain(hv, 70)
    park(d, 66)  # in Linux mode this would leave the cursor at (1,3)
    # Mini-OS: every pass starts at word 0, bit 0: 1, 65, 70.
    raise_(d, 70, 65, 1)
    assert upcall(d) == [1, 65, 70]
    raise_(d, 3, 2)
    assert upcall(d) == [2, 3]


def test_minios_word_reread_gives_lower_port_next(hv):
    d = minios_domain(hv, 70)
    # Pending {2, 5, 70}. Word 0 re-read: {2,5} -> 2; {5} -> 5, whose handler raises 1;
    # re-read {1} -> 1; {} -> word 1: 70.  Pass 2: sel {0} (set by the raise): empty.
    # (Linux from (0,0) would give 2, 5, 70, 1.)
    raise_(d, 2, 5, 70)
    assert upcall(d, plan={5: [1]}) == [2, 5, 1, 70]


def test_minios_handler_reraising_own_port_gets_it_at_once(hv):
    d = minios_domain(hv, 5)
    # Pending {2, 5}: 2 (re-raises 2); re-read {2, 5} -> 2 again; then 5.
    raise_(d, 2, 5)
    assert upcall(d, plan={2: [2]}) == [2, 2, 5]


def test_minios_earlier_word_raised_is_handled_in_next_pass(hv):
    d = minios_domain(hv, 70)
    # Pending {2, 70}: word 0: 2; word 1: 70 raises 3 (word 0, already done: sel bit 0 +
    # upcall_pending).  Pass 2: word 0: 3.
    raise_(d, 2, 70)
    h, log = recorder(d, {70: [3]})
    assert d.guest.do_upcall(0, h) == [2, 70, 3]
    assert log == [(2, 0), (70, 0), (3, 0)]


def test_minios_later_word_is_reread_live(hv):
    d = minios_domain(hv, 71)
    # Pending {2, 70}; handler(2) raises 71: word 1 is read when reached: 70, 71.
    raise_(d, 2, 70)
    assert upcall(d, plan={2: [71]}) == [2, 70, 71]


def test_minios_has_no_timer_first(hv):
    d = minios_domain(hv, 70)
    assert d.bind_virq(VIRQ_TIMER, 0) == 71
    raise_(d, 65, 2)
    hv.send_virq(d.domid, VIRQ_TIMER, 0)
    assert upcall(d) == [2, 65, 71]


def test_minios_masked_ports_skipped_and_left_pending(hv):
    d = minios_domain(hv, 5)
    d.guest.mask(3)
    raise_(d, 3, 4, 2)
    assert upcall(d) == [2, 4]
    assert d.shared_info.is_pending(3)
    d.guest.unmask(3)
    assert upcall(d) == [3]


def test_minios_has_no_per_vcpu_binding(hv):
    # Port 2 is bound on vCPU 1, ports 1 and 3 on vCPU 0. vCPU 0's selector has word 0
    # (from 3); the re-read takes pending & ~mask with no per-vCPU filter: 2 and 3.
    d = minios_domain(hv, 3, vcpus=2, on=lambda p: 1 if p == 2 else 0)
    raise_(d, 3, 2)
    assert upcall(d, 0) == [2, 3]
    assert not d.shared_info.is_pending(2)
