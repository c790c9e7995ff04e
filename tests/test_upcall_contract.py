"""``d.guest.do_upcall(vcpu=0, handler=None)``: the contract of the call itself, pinned so a
rewrite of its fast path (Linux 2-level guests: the no-handler call in C, the nesting count
in C, a per-vCPU "bound here" bitmap kept by the port table, the VIRQ_TIMER port cached per
vCPU) can be checked against today's behaviour.

Written from API.md "The guest side", spec guest-side §1.3-1.5 and docs/semantics.md
"Guest side", then checked against both implementations. tests/test_guest_upcall.py owns
the scan order itself (cursor, word visits, snapshots) and tests/test_fast_paths.py the
C-versus-handler twin check; this file covers what sits around the scan: argument forms
and refusals, the returned list, which vCPU a port is handled on as bindings change, the
timer port as it is closed and rebound, more ports than one C call takes, re-entry and
exceptions, handles, Mini-OS and FIFO domains, threads, destroyed domains and snapshots.

Tests take the ``xe`` fixture (native and reference) where the reference model has the
same behaviour. Native only: the nesting count (the reference model has none: a handler
that calls ``do_upcall`` on its own vCPU gets a full nested upcall there), threads, and
snapshots (the reference has no ``snapshot``).
"""

from __future__ import annotations

import collections
import errno
import threading
from typing import Any, Callable

import pytest

import xenevtchn as native
from test_bad_input import digest as native_digest
from xenabi import si

TIMER = 0  # VIRQ_TIMER


class IntSub(int):
    """A plain int subclass (accepted wherever an int is)."""


class Stop(BaseException):
    """Not an Exception: the nesting count must be released for any BaseException too."""


# ------------------------------------------------------------------------------ helpers


def cursor(d, v: int) -> tuple[int, int]:
    """The Linux guest's fairness cursor of vCPU ``v`` (native: public; reference: private)."""
    g = d.guest
    return tuple(g.cursor(v)) if hasattr(g, "cursor") else tuple(g._cursor[v])


def world_digest(hv) -> list:
    """Everything a refused call must leave alone, readable on both implementations:
    shared_info bytes (pending, mask, selectors, upcall flags), every valid port's
    status, and each Linux 2-level guest's cursors."""
    out: list[Any] = []
    for d in hv.domains:
        out.append(bytes(d.shared_info.buffer))
        port = 0
        while True:
            try:
                s = d.status(port)
            except OSError:
                break
            out.append((port, int(s.status), s.vcpu, s.dom, s.port, s.pirq, s.virq))
            port += 1
        if d.guest.mode == "linux" and d.fifo is None:
            out.append(tuple(cursor(d, v) for v in range(len(d.vcpus))))
    if isinstance(hv, native.Hypervisor):
        out.append(native_digest(hv))
    return out


def recording(log: list | None = None) -> tuple[Callable[[int], None], list]:
    log = [] if log is None else log
    return log.append, log


def raise_(d, *ports: int) -> None:
    for p in ports:
        d.send(p)


def pending(d, ports) -> list[int]:
    return [p for p in ports if d.shared_info.is_pending(p)]


def busy_guest(xe):
    """A 3-vCPU Linux guest with work on every vCPU and vCPU 0's cursor mid-word.

    IPIs 1..69, port p on vCPU p % 3; VIRQ_TIMER on vCPU 1 = 70 and on vCPU 2 = 71; a
    masked pending port (9, vCPU 0). vCPU 0's cursor is parked at (0, 7) by handling 6.
    Pending afterwards: 1..8 minus 6, 9 (masked), 64..67, both timers.
    """
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=3)
    for p in range(1, 70):
        assert d.bind_ipi(p % 3) == p
    assert d.bind_virq(TIMER, 1) == 70 and d.bind_virq(TIMER, 2) == 71
    d.send(6)
    assert d.guest.do_upcall(0) == [6] and cursor(d, 0) == (0, 7)
    d.guest.mask(9)
    raise_(d, 1, 2, 3, 4, 5, 7, 8, 9, 64, 65, 66, 67)
    hv.send_virq(d.domid, TIMER, 1)
    hv.send_virq(d.domid, TIMER, 2)
    return hv, d


# Expected upcalls of busy_guest, vCPU by vCPU (hand-worked from spec §1.4):
# vCPU 0 (ports 3, 66; 9 masked) from (0,7): word 0 from bit 7: none (9 masked); word 1:
#   66; wrap; word 0 again: 3.
# vCPU 1 (1, 4, 7, 64, 67; timer 70) from (0,0): 70, then 1, 4, 7, 64, 67.
# vCPU 2 (2, 5, 8, 65; timer 71): 71, 2, 5, 8, 65.
BUSY_EXPECT = {0: [66, 3], 1: [70, 1, 4, 7, 64, 67], 2: [71, 2, 5, 8, 65]}


def check_busy_handled(d) -> None:
    """The busy_guest work is still all there: each vCPU's upcall gives BUSY_EXPECT."""
    for v in (2, 0, 1):
        assert d.guest.do_upcall(v) == BUSY_EXPECT[v], v
    assert pending(d, range(1, 72)) == [9]
    assert [vc.upcall_pending for vc in d.vcpus] == [0, 0, 0]


# --------------------------------------------------------- 1. argument forms, refusals


FORMS: dict[str, Callable[[Any, int, Callable], list]] = {
    # form name -> call(guest, vcpu, recording handler); vCPU 0 uses the defaults where
    # the form leaves the vCPU out.
    "positional": lambda g, v, h: g.do_upcall(v),
    "keyword": lambda g, v, h: g.do_upcall(vcpu=v),
    "none-positional": lambda g, v, h: g.do_upcall(v, None),
    "none-keyword": lambda g, v, h: g.do_upcall(v, handler=None),
    "handler-positional": lambda g, v, h: g.do_upcall(v, h),
    "handler-keyword": lambda g, v, h: g.do_upcall(v, handler=h),
    "both-keywords": lambda g, v, h: g.do_upcall(handler=h, vcpu=v),
    "default": lambda g, v, h: g.do_upcall() if v == 0 else g.do_upcall(v),
    "default-handler": lambda g, v, h: g.do_upcall(handler=h) if v == 0 else g.do_upcall(v, h),
    "int-subclass": lambda g, v, h: g.do_upcall(IntSub(v)),
    "int-subclass-handler": lambda g, v, h: g.do_upcall(IntSub(v), h),
}


HANDLER_FORMS = {"handler-positional", "handler-keyword", "both-keywords", "default-handler",
                 "int-subclass-handler"}


def run_script(xe, form: Callable, passes_handler: bool = False) -> list:
    """busy_guest, then rounds of raises and upcalls on every vCPU through ``form``;
    returns every result, with the handler's own log where the form passed one."""
    hv, d = busy_guest(xe)
    g = d.guest
    out: list[Any] = []
    for rnd in range(6):
        if rnd == 1:
            d.guest.unmask(9)                      # local re-fire on vCPU 0
        if rnd == 2:
            d.bind_vcpu(d.alloc_unbound(0), 2)     # port 72 on vCPU 2
            hv.inject(d.domid, 72)
        if rnd == 3:
            d.close(70)                            # vCPU 1's timer gone ...
            assert d.bind_ipi(1) == 70             # ... its number now a plain IPI
        if rnd == 4:
            assert d.bind_virq(TIMER, 1) == 73     # a new timer port for vCPU 1
        raise_(d, *[p for p in (2 + rnd, 5 + rnd, 64 + rnd, 63 - rnd) if p != 9])
        if rnd >= 3:
            d.send(70)
        for v in range(3):
            hv.send_virq(d.domid, TIMER, v)
        for v in (1, 0, 2):
            h, log = recording()
            got = form(g, v, h)
            assert type(got) is list
            assert log == (got if passes_handler else [])
            out.append((v, got, cursor(d, v)))
    out.append(bytes(d.shared_info.buffer))
    return out


def test_every_accepted_form_gives_the_same_upcalls(xe):
    """One world per call form, the same events: every form returns the same lists,
    leaves the same cursors and the same shared_info, and a handler sees exactly the
    returned list."""
    results = {name: run_script(xe, form, name in HANDLER_FORMS) for name, form in FORMS.items()}
    first = results["positional"]
    # Spot checks of the script itself (hand-worked): round 0 on vCPU 1 has its timer
    # first; round 3 (timer 70 closed, 70 an IPI of vCPU 1) has no timer first on vCPU 1.
    assert first[0] == (1, [70, 1, 4, 7, 64, 67], (1, 4))
    assert first[9] == (1, [67, 70], (1, 7))
    assert first[12] == (1, [73, 70], (1, 7))
    for name, res in results.items():
        assert res == first, name


def test_bool_vcpu_is_taken_as_an_int(xe):
    """bool is an int (docs/semantics.md): True is vCPU 1, False vCPU 0."""
    worlds = [busy_guest(xe)[1] for _ in range(2)]
    assert worlds[0].guest.do_upcall(True) == worlds[1].guest.do_upcall(1) == BUSY_EXPECT[1]
    assert worlds[0].guest.do_upcall(False) == worlds[1].guest.do_upcall(0) == BUSY_EXPECT[0]
    assert worlds[0].guest.do_upcall(True, handler=None) == []
    assert bytes(worlds[0].shared_info.buffer) == bytes(worlds[1].shared_info.buffer)


def test_bool_true_on_a_one_vcpu_domain_is_refused(xe):
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=1)
    p = d.bind_ipi(0)
    d.send(p)
    before = world_digest(hv)
    with pytest.raises(ValueError):
        d.guest.do_upcall(True)
    assert world_digest(hv) == before
    assert d.guest.do_upcall(False) == [p]


def _noop(port: int) -> None:
    pass


def _bad_calls():
    # (id, call(guest), exception); 3 vCPUs.
    n = 3
    calls = [
        ("float", lambda g: g.do_upcall(1.0), TypeError),
        ("str", lambda g: g.do_upcall("0"), TypeError),
        ("None", lambda g: g.do_upcall(None), TypeError),
        ("None-kw", lambda g: g.do_upcall(vcpu=None), TypeError),
        ("-1", lambda g: g.do_upcall(-1), ValueError),
        ("nr_vcpus", lambda g: g.do_upcall(n), ValueError),
        ("2**40", lambda g: g.do_upcall(2**40), ValueError),
        ("-2**40", lambda g: g.do_upcall(-2**40), ValueError),
        ("2**64", lambda g: g.do_upcall(2**64), ValueError),
        ("intsub-nr_vcpus", lambda g: g.do_upcall(IntSub(n)), ValueError),
        ("intsub--1", lambda g: g.do_upcall(IntSub(-1)), ValueError),
        ("unknown-keyword", lambda g: g.do_upcall(0, bogus=1), TypeError),
        ("unknown-keyword-only", lambda g: g.do_upcall(vcpu=0, handler=None, cpu=1), TypeError),
        ("three-positional", lambda g: g.do_upcall(0, None, None), TypeError),
        ("vcpu-twice", lambda g: g.do_upcall(0, vcpu=0), TypeError),
        ("handler-int", lambda g: g.do_upcall(0, 5), TypeError),
        ("handler-str-kw", lambda g: g.do_upcall(handler="f"), TypeError),
        ("handler-list", lambda g: g.do_upcall(1, handler=[_noop]), TypeError),
        ("handler-bad-vcpu-bad", lambda g: g.do_upcall(n, 5), ValueError),       # vCPU first
        ("handler-ok-vcpu-bad", lambda g: g.do_upcall(n, _noop), ValueError),
        ("handler-ok-vcpu-type", lambda g: g.do_upcall("x", _noop), TypeError),
        ("handler-bad-vcpu-type", lambda g: g.do_upcall(1.5, 5), TypeError),
    ]
    for name, call, exc in calls:
        yield pytest.param(call, exc, id=name)


@pytest.mark.parametrize(("call", "exc"), list(_bad_calls()))
def test_refused_calls_change_nothing(xe, call, exc):
    """Each refused call raises its exception before anything runs: pending bits,
    selectors, upcall flags and cursors are as before, and the vCPUs are not left
    "in an upcall" (the next upcalls handle everything that was there)."""
    hv, d = busy_guest(xe)
    before = world_digest(hv)
    with pytest.raises(exc):
        call(d.guest)
    assert world_digest(hv) == before
    check_busy_handled(d)


def test_numpy_integer_vcpu_is_refused(xe):
    """Only int (and its subclasses) names a vCPU: a NumPy integer is a TypeError."""
    import numpy as np

    hv, d = busy_guest(xe)
    before = world_digest(hv)
    with pytest.raises(TypeError):
        d.guest.do_upcall(np.int64(0))
    assert world_digest(hv) == before
    check_busy_handled(d)


def test_refused_nested_call_is_not_a_reentry():
    """A refused call from inside a handler raises the same error and does not count as
    a re-entry: the outer upcall runs no extra pass. (The extra pass is observable: a
    timer port made active without a selector bit or upcall flag is taken only by a new
    pass's timer-first step.)"""
    for bad, exc in ((lambda g: g.do_upcall("0"), TypeError), (lambda g: g.do_upcall(5), ValueError),
                     (lambda g: g.do_upcall(0, 5), TypeError)):
        hv = native.Hypervisor()
        d = hv.create_domain(vcpus=2)
        a = d.bind_ipi(0)
        for _ in range(63):
            d.bind_ipi(1)
        t = d.bind_virq(TIMER, 0)
        assert (a, t) == (1, 65)                       # the timer's word is not selected
        caught = []

        def handler(port, d=d, bad=bad, exc=exc):
            d.guest.mask(t)
            hv.send_virq(d.domid, TIMER, 0)            # pending, masked: no sel, no flag
            si(d).set_mask(t, 0)                       # active now, but nothing says so
            try:
                bad(d.guest)
            except exc as e:
                caught.append(e)

        d.send(a)
        assert d.guest.do_upcall(0, handler) == [a]
        assert len(caught) == 1
        assert d.shared_info.is_pending(t)             # no second pass took it
        assert d.guest.do_upcall(0) == [t]


# ------------------------------------------------------------------ 2. the returned list


def test_result_is_a_fresh_list_of_plain_ints(xe):
    """Each call returns a new list object of plain ints; changing one does not change a
    later result, and a later call does not change an earlier result (whatever its size:
    0, 1, a few, more than one C call's worth)."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    ports = [d.bind_ipi(0) for _ in range(3000)]
    kept = []
    for k in (0, 1, 2, 5, 1023, 1024, 1025, 2500, 0, 1):
        raise_(d, *ports[:k])
        got = d.guest.do_upcall(0)
        assert type(got) is list and len(got) == k
        assert all(type(p) is int for p in got)
        assert all(got is not old for old, _ in kept)
        kept.append((got, list(got)))
        got.append(-1)                       # the caller owns it
        got.reverse()
        assert kept[-1][0] is got
        kept[-1] = (got, list(got))
    for got, copy in kept:
        assert got == copy
    # The empty result as well: mutating it does not leak into the next one.
    e1 = d.guest.do_upcall(0)
    e1.append(7)
    assert d.guest.do_upcall(0) == [] and d.guest.do_upcall(1) == []
    with_handler = d.guest.do_upcall(0, _noop)
    with_handler.append(1)
    assert d.guest.do_upcall(0, _noop) == []


def test_results_do_not_share_storage_across_vcpus(xe):
    """Results of upcalls on different vCPUs (and with or without a handler) are
    independent lists."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=3)
    mine = {v: [d.bind_ipi(v) for _ in range(40)] for v in range(3)}
    for ps in mine.values():
        raise_(d, *ps)
    r0 = d.guest.do_upcall(0)
    r1 = d.guest.do_upcall(1, _noop)
    r2 = d.guest.do_upcall(2)
    assert (r0, r1, r2) == (mine[0], mine[1], mine[2])
    raise_(d, *mine[0][:3])
    assert d.guest.do_upcall(0) == mine[0][:3]
    assert (r0, r1, r2) == (mine[0], mine[1], mine[2])


# ------------------------------------------------------------- 3. ports on several vCPUs


def test_each_vcpu_handles_only_its_own_ports(xe):
    """Unbound ports (notify vCPU 0) and IPIs on vCPUs 1..3, interleaved in words 0 and
    1: do_upcall(v) takes only v's ports; the others stay pending (and stay in the other
    vCPUs' selectors, so their own upcalls find them)."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=4)
    on = {}
    for p in range(1, 100):
        v = p % 4
        got = d.alloc_unbound(0) if v == 0 else d.bind_ipi(v)
        assert got == p
        on[p] = v
    for p in range(1, 100):
        if v := on[p]:
            d.send(p)
        else:
            hv.inject(d.domid, p)
    done: set[int] = set()
    for v in (2, 0, 3, 1):
        assert d.guest.do_upcall(v) == [p for p in range(1, 100) if on[p] == v]
        done.add(v)
        assert pending(d, range(1, 100)) == [p for p in range(1, 100) if on[p] not in done]
        assert all(d.vcpus[w].pending_sel == 0b11 for w in range(4) if w not in done)
    assert [vc.upcall_pending for vc in d.vcpus] == [0, 0, 0, 0]


def test_bind_vcpu_moves_a_port_and_the_old_vcpu_leaves_it(xe):
    """bind_vcpu: the port is handled on the new vCPU, not on the old one, even when the
    old vCPU's selector has the port's word set."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=3)
    u = [d.alloc_unbound(0) for _ in range(4)]        # ports 1..4, notify vCPU 0
    far = [d.alloc_unbound(0) for _ in range(70)][-1]  # port 74, word 1
    assert u == [1, 2, 3, 4] and far == 74
    d.bind_vcpu(2, 1)
    d.bind_vcpu(far, 2)
    hv.inject(d.domid, 1)             # vCPU 0: selector word 0 set
    hv.inject(d.domid, 2)             # vCPU 1: selector word 0 set
    hv.inject(d.domid, far)           # vCPU 2: selector word 1 set
    v0 = d.vcpus[0]
    assert v0.pending_sel & 1 and d.shared_info.is_pending(2)
    assert d.guest.do_upcall(0) == [1]                 # 2 sits in word 0, but not here
    assert d.shared_info.is_pending(2)
    assert d.guest.do_upcall(2) == [far]
    assert d.guest.do_upcall(1) == [2]
    # Move 3 to vCPU 2 while vCPU 0's selector still has word 0 set (port 4 raised).
    d.bind_vcpu(3, 2)
    hv.inject(d.domid, 4)
    hv.inject(d.domid, 3)
    assert d.vcpus[0].pending_sel & 1 and d.vcpus[2].pending_sel & 1
    assert d.guest.do_upcall(0) == [4]
    assert d.guest.do_upcall(1) == []
    assert d.guest.do_upcall(2) == [3]
    # And back: 3 to vCPU 0; vCPU 2's selector gets word 0 from another of its ports.
    d.bind_vcpu(3, 0)
    d.bind_vcpu(4, 2)
    hv.inject(d.domid, 4)
    hv.inject(d.domid, 3)
    assert d.guest.do_upcall(2) == [4]
    assert d.guest.do_upcall(0) == [3]
    assert pending(d, range(1, 75)) == []


def test_bind_vcpu_from_a_handler_mid_upcall(xe):
    """bind_vcpu run by a handler: a port already in the current word's snapshot is
    still handled here; a port in a word not yet visited is left pending for its new
    vCPU (which gets it once Linux's unmask re-fires it there)."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    assert [d.alloc_unbound(0) for _ in range(80)][-1] == 80

    def handler(port):
        if port == 1:
            d.bind_vcpu(2, 1)
            d.bind_vcpu(70, 1)

    for p in (1, 2, 3, 70, 71):
        hv.inject(d.domid, p)
    assert d.guest.do_upcall(0, handler) == [1, 2, 3, 71]
    assert pending(d, (2, 70)) == [70]
    assert d.guest.do_upcall(1) == []                  # no selector bit on vCPU 1
    d.guest.unmask(70)                                 # on its own vCPU, now 1
    assert d.guest.do_upcall(0) == [] and d.guest.do_upcall(1) == [70]


def test_close_and_rebind_on_another_vcpu(xe, hv, pair):
    """A port number closed and bound again on another vCPU is handled there only; an
    interdomain port whose peer closes keeps its notify vCPU (now unbound)."""
    dom0, domu = pair
    ipis = [domu.bind_ipi(0) for _ in range(5)]       # 1..5 on vCPU 0
    assert ipis == [1, 2, 3, 4, 5]
    domu.send(3)                                      # vCPU 0's selector: word 0
    domu.close(3)                                     # close clears the pending bit
    assert not domu.shared_info.is_pending(3)
    assert domu.bind_ipi(1) == 3                      # the same number, vCPU 1
    raise_(domu, 2, 3, 4)
    assert domu.guest.do_upcall(0) == [2, 4]          # 3 is in word 0, not vCPU 0's
    assert domu.guest.do_upcall(1) == [3]
    raise_(domu, 3, 1)
    assert domu.guest.do_upcall(0) == [1]
    assert domu.guest.do_upcall(1) == [3]
    # Interdomain, moved to vCPU 1, then the peer closes: unbound, still vCPU 1.
    r = dom0.alloc_unbound(domu.domid)
    p = domu.bind_interdomain(dom0.domid, r)
    assert p == 6
    assert domu.guest.do_upcall(0) == [p]             # bind_interdomain's own event
    domu.bind_vcpu(p, 1)
    dom0.send(r)
    assert domu.guest.do_upcall(0) == [] and domu.guest.do_upcall(1) == [p]
    dom0.close(r)
    st = domu.status(p)
    assert (st.status, st.vcpu) == (xe.EVTCHNSTAT_unbound, 1)
    hv.inject(domu.domid, p)
    assert domu.guest.do_upcall(0) == [] and domu.guest.do_upcall(1) == [p]
    # Closed, then the number reused as an IPI on vCPU 0.
    domu.close(p)
    assert domu.bind_ipi(0) == p
    domu.send(p)
    assert domu.guest.do_upcall(1) == [] and domu.guest.do_upcall(0) == [p]


def test_after_evtchnop_reset_nothing_is_bound_anywhere(hv, pair):
    """EVTCHNOP_reset (by the domain, then by dom0 for it) closes every port: ports
    pending when it ran are handled nowhere; ports bound afterwards are handled on their
    new vCPUs only. The fairness cursor is the guest's own and survives the reset."""
    dom0, domu = pair
    ports = [domu.bind_ipi(p % 2) for p in range(1, 9)]          # 1..8, odd on vCPU 1
    t = domu.bind_virq(TIMER, 1)
    assert ports == list(range(1, 9)) and t == 9
    raise_(domu, 2)
    assert domu.guest.do_upcall(0) == [2] and cursor(domu, 0) == (0, 3)
    raise_(domu, *ports)
    domu.reset()
    assert [int(domu.status(p).status) for p in range(1, 10)] == [0] * 9
    assert domu.guest.do_upcall(0) == [] and domu.guest.do_upcall(1) == []
    # Fresh bindings, vCPUs swapped: port p now on vCPU (p + 1) % 2; VIRQ_TIMER nowhere.
    assert [domu.bind_ipi((p + 1) % 2) for p in range(1, 10)] == list(range(1, 10))
    raise_(domu, *range(1, 10))
    # vCPU 0 from its cursor (0, 3): 3, 5, 7, 9, then wrap: 1.
    assert domu.guest.do_upcall(0) == [3, 5, 7, 9, 1]
    assert domu.guest.do_upcall(1) == [2, 4, 6, 8]                # 9 is no timer now
    hv.pause_domain(domu.domid)                       # Xen resets another domain paused
    dom0.reset(domu.domid)
    hv.unpause_domain(domu.domid)
    raise_(dom0, *[dom0.bind_ipi(0) for _ in range(2)])
    assert domu.guest.do_upcall(0) == [] and domu.guest.do_upcall(1) == []
    assert domu.bind_virq(TIMER, 1) == 1
    assert domu.bind_ipi(1) == 2
    raise_(domu, 2)
    hv.send_virq(domu.domid, TIMER, 1)
    assert domu.guest.do_upcall(1) == [1, 2]
    assert domu.guest.do_upcall(0) == []


def test_highest_vcpu_of_a_32_vcpu_domain(xe):
    """Ports on vCPU 31 (the last legacy vCPU) and vCPU 0 in the same words."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=xe.XEN_LEGACY_MAX_VCPUS)
    last = xe.XEN_LEGACY_MAX_VCPUS - 1
    ports = [d.bind_ipi(last if p % 2 else 0) for p in range(1, 131)]
    t = d.bind_virq(TIMER, last)
    raise_(d, *ports)
    hv.send_virq(d.domid, TIMER, last)
    assert d.guest.do_upcall(last) == [t] + [p for p in ports if p % 2]
    assert d.guest.do_upcall(0) == [p for p in ports if not p % 2]
    for v in range(1, last):
        assert d.guest.do_upcall(v) == []
    d.bind_vcpu(u := d.alloc_unbound(0), last)
    hv.inject(d.domid, u)
    assert d.guest.do_upcall(0) == [] and d.guest.do_upcall(last) == [u]


# --------------------------------------------------------------------- 4. VIRQ_TIMER first


def test_timer_first_on_its_own_vcpu_through_close_and_rebind(xe):
    """VIRQ_TIMER bound on vCPUs 1 and 2 above the other pending ports: each comes first
    on its own vCPU only. Closed and bound again as a new port: the new port is first.
    Closed with nothing bound (its number reused by an IPI of the same vCPU): no port is
    taken first."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=3)
    for p in range(1, 70):
        assert d.bind_ipi(p % 3) == p
    t1, t2 = d.bind_virq(TIMER, 1), d.bind_virq(TIMER, 2)
    assert (t1, t2) == (70, 71)
    raise_(d, *range(1, 7), 64, 65, 66)
    hv.send_virq(d.domid, TIMER, 1)
    hv.send_virq(d.domid, TIMER, 2)
    assert d.guest.do_upcall(0) == [3, 6, 66]
    assert d.guest.do_upcall(1, _noop) == [70, 1, 4, 64]
    assert d.guest.do_upcall(2) == [71, 2, 5, 65]
    assert (cursor(d, 1), cursor(d, 2)) == ((1, 1), (1, 2))
    # vCPU 2's timer raised alone: not taken on vCPU 1 (nor 0).
    hv.send_virq(d.domid, TIMER, 2)
    assert d.guest.do_upcall(1) == [] and d.guest.do_upcall(0) == []
    assert d.guest.do_upcall(2) == [71]
    # A new timer port for vCPU 1 (70 is taken by an IPI of vCPU 0 first).
    d.close(t1)
    assert d.bind_ipi(0) == 70
    assert d.bind_virq(TIMER, 1) == 72
    raise_(d, 1, 4, 64, 67, 70)
    hv.send_virq(d.domid, TIMER, 1)
    # Timer 72 first; then from (1,1): word 1: 67; wrap: word 0: 1, 4; word 1 again: 64.
    assert d.guest.do_upcall(1) == [72, 67, 1, 4, 64]
    assert d.guest.do_upcall(0) == [70]
    # Rebound as the same number: still first.
    d.close(72)
    assert d.bind_virq(TIMER, 1) == 72
    raise_(d, 67)
    hv.send_virq(d.domid, TIMER, 1)
    assert d.guest.do_upcall(1, _noop) == [72, 67]
    # Closed, nothing bound: VIRQ_TIMER is dropped, and 72 as an IPI is scan order.
    d.close(72)
    hv.send_virq(d.domid, TIMER, 1)
    assert d.guest.do_upcall(1) == []
    assert d.bind_ipi(1) == 72
    raise_(d, 4)
    assert d.guest.do_upcall(1) == [4]                # cursor (0, 5)
    raise_(d, 72, 7, 1)
    # From (0,5): word 0: 7; word 1: 72; word 0 again: 1 (cursor (0, 2)).
    assert d.guest.do_upcall(1) == [7, 72, 1]
    raise_(d, 72, 4)
    assert d.guest.do_upcall(1, _noop) == [4, 72]
    # vCPU 2's timer was never disturbed.
    raise_(d, 2)
    hv.send_virq(d.domid, TIMER, 2)
    assert d.guest.do_upcall(2) == [71, 2]


def test_timer_bound_and_closed_by_a_handler_mid_upcall(xe):
    """The timer port is looked up on every pass: bound by a handler, the next pass
    takes it first; closed by a handler and its number bound again as an IPI, the next
    pass (and the next upcall, either form) takes that port in scan order."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    assert [d.bind_ipi(0) for _ in range(100)][-1] == 100
    box = {}

    def bind_timer(port):
        if port == 1:
            box["t"] = d.bind_virq(TIMER, 0)
            hv.send_virq(d.domid, TIMER, 0)
            d.send(66)

    d.send(1)
    # Pass 1: 1 (its handler raises words 1); pass 2: the timer first, then from (0,2): 66.
    assert d.guest.do_upcall(0, bind_timer) == [1, 101, 66] and box["t"] == 101

    def close_timer(port):
        if port == 3:
            d.close(101)
            assert d.bind_ipi(0) == 101
            d.send(101)
            d.send(66)
            hv.send_virq(d.domid, TIMER, 0)           # dropped: not bound any more

    d.send(3)
    # Pass 2 from (0,4): word 1: 66, 101 (in scan order, not first).
    assert d.guest.do_upcall(0, close_timer) == [3, 66, 101]
    raise_(d, 101, 5)
    # From (1,38): word 1: nothing above; word 0: 5; word 1 again: 101.
    assert d.guest.do_upcall(0) == [5, 101]
    raise_(d, 101, 7)
    assert d.guest.do_upcall(0, _noop) == [7, 101]


def test_timer_first_alternating_fast_and_handler_calls(xe):
    """The timer port a vCPU takes first follows every bind and close, whichever form of
    the call runs in between (no stale timer kept by either). A twin domain with no
    timer, where port 101 is always a plain IPI, gives the expected scan order."""
    hv = xe.Hypervisor()
    d, twin = hv.create_domain(vcpus=2), hv.create_domain(vcpus=2)
    ipis = [d.bind_ipi(1) for _ in range(100)]        # 1..100 on vCPU 1
    assert [twin.bind_ipi(1) for _ in range(101)] == ipis + [101]
    for rnd in range(8):
        def call(dom, rnd=rnd):
            # Odd rounds put 101 last in scan order; each form gets two of them.
            return dom.guest.do_upcall(1) if rnd % 4 in (1, 2) else dom.guest.do_upcall(1, _noop)

        assert d.bind_virq(TIMER, 1) == 101
        for dom in (d, twin):
            raise_(dom, ipis[rnd], ipis[99 - rnd])
        hv.send_virq(d.domid, TIMER, 1)
        assert call(d) == [101] + call(twin), rnd
        d.close(101)
        hv.send_virq(d.domid, TIMER, 1)               # dropped: not bound
        assert call(d) == []
        assert d.bind_ipi(1) == 101                    # the number as a plain IPI
        for dom in (d, twin):
            raise_(dom, 101, ipis[rnd + 1], ipis[50])
        got = call(d)
        assert got == call(twin) and sorted(got) == sorted([101, ipis[rnd + 1], ipis[50]]), rnd
        assert cursor(d, 1) == cursor(twin, 1)
        d.close(101)


# --------------------------------------------------------- 5. more than one C call's worth


@pytest.mark.parametrize("k", [1023, 1024, 1025, 2048, 2049, 4095])
def test_many_ports_in_one_call_each_once(xe, k):
    """k IPIs pending on vCPU 0 (the C path takes 1024 per call): one upcall returns each
    exactly once, in port order from a fresh cursor, and leaves nothing pending. With the
    timer bound on vCPU 0 the timer counts among them and comes first."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    ports = [d.bind_ipi(0) for _ in range(4094)]
    t = d.bind_virq(TIMER, 0)
    assert t == 4095
    raise_(d, *ports[: k - 1])
    hv.send_virq(d.domid, TIMER, 0)
    assert d.guest.do_upcall(0) == [t] + ports[: k - 1]
    assert pending(d, range(4096)) == [] and d.vcpus[0].pending_sel == 0
    last = ports[k - 2]                               # the timer does not move the cursor
    assert cursor(d, 0) == ((last + 1) // 64 % 64, (last + 1) % 64)
    # The same with a handler, from where the cursor now is: every port once again.
    raise_(d, *ports[: k - 1])
    hv.send_virq(d.domid, TIMER, 0)
    h, log = recording()
    got = d.guest.do_upcall(0, h)
    assert got == log and got[0] == t and sorted(got) == sorted([t] + ports[: k - 1])
    assert d.guest.do_upcall(0) == []


def test_all_4095_ports_and_a_handler_that_raises_more(xe):
    """All 4095 ports of vCPU 0 pending; the handler of each odd port raises the next
    (even) port, most of them into words already done, so passes repeat. Every port is
    handled exactly once, nothing is left pending; the no-handler call handles the
    4095 in one call as well."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    ports = [d.bind_ipi(0) for _ in range(4095)]
    assert ports == list(range(1, 4096))
    raise_(d, *ports)
    assert d.guest.do_upcall(0) == ports
    assert d.guest.do_upcall(0) == []
    raise_(d, *[p for p in ports if p % 2])
    flag_after_raise = []

    def handler(port):
        if port % 2 and port < 4095:
            d.send(port + 1)
            flag_after_raise.append(d.vcpus[0].upcall_pending)

    got = d.guest.do_upcall(0, handler)
    assert len(got) == len(set(got)) == 4095 and sorted(got) == ports
    assert pending(d, range(4096)) == [] and d.vcpus[0].upcall_pending == 0
    assert len(flag_after_raise) == 2047 and all(flag_after_raise)   # another pass owed
    # Hand-worked order: pass 1 takes every odd port, and 64k (raised by 64k-1 into the
    # next word before that word's snapshot), then word 0's second visit: 2..62; the
    # cursor is then (0, 63), so pass 2 takes the other even ports in ascending order.
    first = [p for p in ports if p % 2 or p % 64 == 0]
    word0 = list(range(2, 64, 2))
    rest = [p for p in ports if p % 2 == 0 and p % 64 and p > 63]
    assert got == first + word0 + rest
    assert d.guest.do_upcall(0) == []


# ------------------------------------------------------------ 6. re-entry and exceptions


def test_reentry_on_the_same_vcpu_returns_empty_and_the_outer_call_goes_on():
    """A handler that calls do_upcall on its own vCPU (either form) gets [] at once; the
    outer upcall runs another pass, so what the inner code raised, and a port made active
    with no selector bit (taken only by a new pass's timer-first step), are handled by
    the outer call, after the handler returns."""
    hv = native.Hypervisor()
    d = hv.create_domain(vcpus=2)
    a = d.bind_ipi(0)
    for _ in range(63):
        d.bind_ipi(1)
    t = d.bind_virq(TIMER, 0)
    b = d.bind_ipi(0)
    assert (a, t, b) == (1, 65, 66)
    calls = (lambda: d.guest.do_upcall(0), lambda: d.guest.do_upcall(0, _noop),
             lambda: d.guest.do_upcall(), lambda: d.guest.do_upcall(vcpu=0))
    for inner_call in calls:
        for raise_b in (False, True):
            inner: list = []
            order: list = []

            def handler(port, inner_call=inner_call, inner=inner, order=order, raise_b=raise_b):
                order.append(port)
                if port == a:
                    d.guest.mask(t)
                    hv.send_virq(d.domid, TIMER, 0)
                    si(d).set_mask(t, 0)               # active, no selector bit, no flag
                    inner.append(inner_call())
                    if raise_b:
                        d.send(b)                      # raised after the inner call
                    order.append("inner done")

            d.send(a)
            got = d.guest.do_upcall(0, handler)
            assert inner == [[]]
            want = [a, t, b] if raise_b else [a, t]    # t only by the extra pass
            assert got == want and order == [a, "inner done", *want[1:]]
            assert pending(d, (a, t, b)) == [] and d.vcpus[0].upcall_pending == 0
            assert d.guest.do_upcall(0) == []


def test_reentry_twice_and_nested_deeper_still_one_outer_upcall():
    """Several re-entries, including from a handler run by a nested upcall on another
    vCPU, all return []; each vCPU's own outer call handles everything."""
    hv = native.Hypervisor()
    d = hv.create_domain(vcpus=2)
    p0 = [d.bind_ipi(0) for _ in range(3)]
    p1 = [d.bind_ipi(1) for _ in range(3)]
    seen: list = []

    def h1(port):
        seen.append(("v1", port))
        if port == p1[0]:
            seen.append(("v1 nested v1", d.guest.do_upcall(1, h1)))
            seen.append(("v1 nested v0", d.guest.do_upcall(0)))
            d.send(p0[2])
            d.send(p1[2])

    def h0(port):
        seen.append(("v0", port))
        if port == p0[0]:
            seen.append(("v0 nested v0", d.guest.do_upcall(0)))
            d.send(p1[0])
            seen.append(("v0 runs v1", d.guest.do_upcall(1, h1)))
            seen.append(("v0 nested v0 again", d.guest.do_upcall(0, h0)))

    raise_(d, p0[0], p0[1])
    got = d.guest.do_upcall(0, h0)
    assert got == [p0[0], p0[1], p0[2]]
    assert seen == [("v0", p0[0]), ("v0 nested v0", []),
                    ("v1", p1[0]), ("v1 nested v1", []), ("v1 nested v0", []),
                    ("v1", p1[2]), ("v0 runs v1", [p1[0], p1[2]]),
                    ("v0 nested v0 again", []), ("v0", p0[1]), ("v0", p0[2])]
    assert pending(d, p0 + p1) == []


def test_reentry_on_another_vcpu_is_a_normal_upcall(xe):
    """A handler on vCPU 0 running do_upcall(1) (either form) gets vCPU 1's ports, and
    vCPU 1's later upcalls carry on from the cursor that inner call left."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    p0 = [d.bind_ipi(0) for _ in range(3)]            # 1, 2, 3
    p1 = [d.bind_ipi(1) for _ in range(4)]            # 4, 5, 6, 7
    t1 = d.bind_virq(TIMER, 1)
    inner = []

    def handler(port):
        if port == p0[1]:
            inner.append(d.guest.do_upcall(1))
            d.send(p1[0])
            inner.append(d.guest.do_upcall(1, _noop))

    raise_(d, *p0, p1[1], p1[2])
    hv.send_virq(d.domid, TIMER, 1)
    assert d.guest.do_upcall(0, handler) == p0
    assert inner == [[t1, p1[1], p1[2]], [p1[0]]]
    assert cursor(d, 1) == (0, p1[0] + 1)
    raise_(d, p1[0], p1[3])
    assert d.guest.do_upcall(1) == [p1[3], p1[0]]     # from (0, 5): 7, then 4


@pytest.mark.parametrize("boom", [RuntimeError, Stop])
def test_a_raising_handler_does_not_leave_the_vcpu_in_an_upcall(xe, boom):
    """The handler's exception propagates (a BaseException too); the vCPU is not left
    "in an upcall": later calls of both forms on it work, a handler's re-entry later is
    still refused only while an upcall runs, and the other vCPU was never affected."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    ps = [d.bind_ipi(0) for _ in range(5)]            # 1..5
    q = d.bind_ipi(1)

    def bad(port):
        if port == ps[1]:
            raise boom("handler failed")

    raise_(d, ps[0], ps[1], ps[2], q)
    with pytest.raises(boom):
        d.guest.do_upcall(0, bad)
    # 1 and 2 done (2 cleared before its handler ran); 3 pending, its selector consumed.
    assert pending(d, ps) == [ps[2]]
    assert d.guest.do_upcall(1) == [q]
    raise_(d, ps[3])                                   # selector word 0 again
    # Cursor (0, 2) (not moved past 2, whose handler raised): 3, 4.
    assert d.guest.do_upcall(0) == [ps[2], ps[3]]
    raise_(d, ps[4])
    assert d.guest.do_upcall(0, _noop) == [ps[4]]
    # Raised from inside a handler on another vCPU: propagates through both upcalls.
    raise_(d, ps[0], q)

    def outer(port):
        d.guest.do_upcall(1, lambda p: (_ for _ in ()).throw(boom("inner")))

    with pytest.raises(boom):
        d.guest.do_upcall(0, outer)
    raise_(d, ps[1], q)
    assert d.guest.do_upcall(1) == [q]
    assert d.guest.do_upcall(0) == [ps[1]]


def test_after_an_exception_reentry_is_counted_afresh():
    """Native only (the nesting count): after a handler raised, a new upcall's handler
    that re-enters gets [] again and its outer call does the extra pass."""
    hv = native.Hypervisor()
    d = hv.create_domain()
    a, b = d.bind_ipi(0), d.bind_ipi(0)

    def bad(port):
        d.guest.do_upcall(0)                           # a re-entry, then the failure
        raise RuntimeError(port)

    d.send(a)
    with pytest.raises(RuntimeError):
        d.guest.do_upcall(0, bad)
    inner = []

    def good(port):
        if port == a:
            inner.append(d.guest.do_upcall(0))
            d.send(b)

    d.send(a)
    assert d.guest.do_upcall(0, good) == [a, b] and inner == [[]]
    d.send(a)
    assert d.guest.do_upcall(0) == [a]


# ---------------------------------------------------------------------------- 7. handles


def test_handle_ports_never_in_the_result_even_when_the_scan_meets_them(xe, hv, pair):
    """Handle ports interleaved with the guest's own ports in the same words, on both
    vCPUs: raised, they go to the handle and never into do_upcall's list (either form);
    raised again while the handle has them masked they stay pending, and with the mask
    bit then cleared by hand the scan meets them pending and unmasked in a selected word:
    they are taken for the handle, still not listed. Once the handle is closed, the same
    numbers bound as guest ports are handled by do_upcall."""
    dom0, domu = pair
    h = xe.XenEvtchn(domu)
    mine, theirs = [], []
    for i in range(1, 132):
        if i % 3 == 0:
            p = h.bind_unbound_port(dom0.domid)
            if i % 2:
                domu.bind_vcpu(p, 1)
            theirs.append(p)
        else:
            p = domu.bind_ipi(i % 2)
            mine.append(p)
        assert p == i
    on1 = {p for p in range(1, 132) if p % 2}
    for p in theirs:
        hv.inject(domu.domid, p)
    raise_(domu, *mine)
    assert domu.guest.do_upcall(0) == [p for p in mine if p not in on1]
    assert domu.guest.do_upcall(1, _noop) == [p for p in mine if p in on1]
    queued = []
    while (q := h.pending()) is not None:
        queued.append(q)
    assert queued == theirs
    # Raised while the handle has them masked: pending, no selector bit from them.
    for p in theirs:
        hv.inject(domu.domid, p)
    view = si(domu)
    for p in theirs:
        assert view.pending(p) and view.masked(p)
        view.set_mask(p, 0)                            # pending and unmasked now
    raise_(domu, *mine)                                # every word selected on both vCPUs
    assert domu.guest.do_upcall(1) == [p for p in mine if p in on1]
    assert domu.guest.do_upcall(0, _noop) == [p for p in mine if p not in on1]
    assert pending(domu, range(1, 132)) == []
    queued = []
    while (q := h.pending()) is not None:
        queued.append(q)
    assert sorted(queued) == theirs
    assert domu.guest.do_upcall(0) == [] and domu.guest.do_upcall(1) == []
    h.close()
    assert [domu.bind_ipi(p % 2) for p in theirs] == theirs
    assert all(view.masked(p) for p in theirs)         # the handle's masks outlive it
    for p in theirs:
        domu.guest.unmask(p)                           # as Linux's request_irq does
    raise_(domu, *theirs)
    assert domu.guest.do_upcall(1) == [p for p in theirs if p in on1]
    assert domu.guest.do_upcall(0) == [p for p in theirs if p not in on1]


# ------------------------------------------------------------------ 8. Mini-OS and FIFO


def test_minios_guest_through_the_same_calls(xe):
    """Mini-OS: every form of the call, ascending order, no timer first, no per-vCPU
    filter; the same refusals."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2, guest="minios")
    assert d.guest.mode == "minios"
    ps = [d.bind_ipi(p % 2) for p in range(1, 70)]
    t = d.bind_virq(TIMER, 0)
    assert t == 70
    raise_(d, 66, 3, 2)
    hv.send_virq(d.domid, TIMER, 0)
    assert d.guest.do_upcall() == [2, 3, 66, 70]       # vCPU 0's selector: all of them
    for call in (lambda: d.guest.do_upcall(1), lambda: d.guest.do_upcall(vcpu=1),
                 lambda: d.guest.do_upcall(1, None), lambda: d.guest.do_upcall(handler=_noop)):
        raise_(d, 5, 1)                                # sel on vCPU 1 (1 and 5 are vCPU 1's)
        got = call()
        if got == []:                                   # vCPU 0 form: nothing selected there
            assert d.guest.do_upcall(1) == [1, 5]
        else:
            assert got == [1, 5]
    h, log = recording()
    raise_(d, 4, ps[0])
    # No per-vCPU filter: vCPU 0's upcall takes vCPU 1's port 1 from the selected word.
    assert d.guest.do_upcall(0, handler=h) == log == [1, 4]
    assert d.vcpus[1].pending_sel == 1
    assert d.guest.do_upcall(1, h) == [] and log == [1, 4]
    for bad, exc in ((lambda: d.guest.do_upcall(2), ValueError), (lambda: d.guest.do_upcall("0"), TypeError),
                     (lambda: d.guest.do_upcall(0, 1), TypeError)):
        before = world_digest(hv)
        with pytest.raises(exc):
            bad()
        assert world_digest(hv) == before


def test_minios_reentry_returns_empty():
    hv = native.Hypervisor()
    d = hv.create_domain(guest="minios")
    a, b = d.bind_ipi(0), d.bind_ipi(0)
    inner = []

    def handler(port):
        if port == a and not inner:
            inner.append(d.guest.do_upcall(0))
            d.send(a)                                  # handled again by the outer call

    d.send(a)
    assert d.guest.do_upcall(0, handler) == [a, a] and inner == [[]]
    d.send(b)
    assert d.guest.do_upcall(0) == [b]


@pytest.mark.parametrize("guest", ["linux", "minios"])
def test_fifo_domain_through_the_same_calls(xe, guest):
    """A FIFO domain: every form of the call, priority order, no timer first (the queue
    decides); after EVTCHNOP_reset the domain is 2-level again and (Linux) the timer is
    first again."""
    from fifohelpers import fifo_domain

    hv = xe.Hypervisor()
    d, f = fifo_domain(hv, vcpus=2, guest=guest)
    ps = [d.bind_ipi(0) for _ in range(5)]             # 1..5
    q = d.bind_ipi(1)                                  # 6
    t = d.bind_virq(TIMER, 0)                          # 7
    d.set_priority(ps[3], 3)
    raise_(d, ps[1], ps[3], q, ps[0])
    hv.send_virq(d.domid, TIMER, 0)
    assert d.guest.do_upcall() == [ps[3], ps[1], ps[0], t]
    assert d.guest.do_upcall(vcpu=1) == [q]
    for call in (lambda: d.guest.do_upcall(0), lambda: d.guest.do_upcall(0, None),
                 lambda: d.guest.do_upcall(0, _noop), lambda: d.guest.do_upcall(handler=_noop)):
        raise_(d, ps[2], ps[4], ps[3])
        assert call() == [ps[3], ps[2], ps[4]]
    h, log = recording()
    raise_(d, q)
    assert d.guest.do_upcall(1, handler=h) == log == [q]
    assert d.guest.do_upcall(0) == [] and d.guest.do_upcall(1) == []
    with pytest.raises(ValueError):
        d.guest.do_upcall(2)
    with pytest.raises(TypeError):
        d.guest.do_upcall(0, 3)
    d.reset()
    assert d.fifo is None
    ps = [d.bind_ipi(0) for _ in range(5)]
    t = d.bind_virq(TIMER, 0)
    assert (ps, t) == ([1, 2, 3, 4, 5], 6)
    raise_(d, 4, 2)
    hv.send_virq(d.domid, TIMER, 0)
    assert d.guest.do_upcall(0) == ([6, 2, 4] if guest == "linux" else [2, 4, 6])


# --------------------------------------------------------------------------- 9. threads


def _join_all(threads, errors, timeout=60.0):
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not [t.name for t in threads if t.is_alive()], "upcall threads hung"
    assert not errors, errors


# "no-handler" is the builtin: it lost and duplicated ports here while its nesting
# count lived in Python and cffi released the GIL around the scan; the count is C's now.
@pytest.mark.parametrize("form", ["handler", "no-handler"])
@pytest.mark.parametrize("raiser", ["set_pending", "send"])
def test_two_threads_upcall_the_same_vcpu_while_a_third_raises(fast_switching, raiser, form):
    """Two threads run do_upcall(0, handler) on the same vCPU while a third raises 200
    ports in a loop. Every raise that made a port newly pending is handled exactly once
    in total (counted per port): "set_pending" raises with SharedInfo.set_pending and
    counts the SET_NEWLY edges it reports; "send" raises with d.send only ports whose
    previous event was handled (so every send is a new edge). A final upcall afterwards
    leaves nothing pending. (With handlers, a call that finds the vCPU busy in another
    thread counts as a re-entry today: it returns [] and the busy call does the work.)"""
    from xenevtchn.shared_info import SET_NEWLY

    hv = native.Hypervisor()
    d = hv.create_domain(vcpus=2)
    ports = [d.bind_ipi(0) for _ in range(200)]       # 1..200: words 0..3
    lock = threading.Lock()
    edges: collections.Counter = collections.Counter()
    handled: collections.Counter = collections.Counter()
    outstanding: set[int] = set()
    twice: list[int] = []
    stop = threading.Event()
    errors: list = []

    def handler(port):
        with lock:
            handled[port] += 1
            if raiser == "send":
                if port not in outstanding:
                    twice.append(port)
                outstanding.discard(port)

    def upcalls():
        try:
            while not stop.is_set():
                if form == "handler":
                    assert type(d.guest.do_upcall(0, handler)) is list
                else:
                    for port in d.guest.do_upcall(0):
                        handler(port)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def raise_loop():
        try:
            si_ = d.shared_info
            for r in range(30000):
                p = ports[(r * 7) % 200]
                if raiser == "set_pending":
                    if si_.set_pending(p, 0) & SET_NEWLY:
                        edges[p] += 1
                else:
                    with lock:
                        if p in outstanding:
                            continue
                        outstanding.add(p)
                        edges[p] += 1
                    d.send(p)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            stop.set()

    threads = [threading.Thread(target=upcalls, daemon=True, name=f"upcall{i}") for i in range(2)]
    threads.append(threading.Thread(target=raise_loop, daemon=True, name="raiser"))
    _join_all(threads, errors)
    d.guest.do_upcall(0, handler)
    assert not twice
    assert pending(d, ports) == [] and not outstanding
    assert sum(edges.values()) > 0
    assert {p: handled[p] for p in ports} == {p: edges[p] for p in ports}


# -------------------------------------------------------------- 10. destroyed domains


def test_destroyed_domain_old_references_answer_esrch(xe):
    """After destroy_domain, a do_upcall taken before (and the guest object kept) answers
    EvtchnError(ESRCH) for every argument form, even ones it would refuse otherwise (the
    domain is checked first), crashes nothing, and never reaches a new domain created
    with the same domid."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    ports = [d.bind_ipi(p % 2) for p in range(1, 80)]
    assert d.bind_virq(TIMER, 1) == 80
    raise_(d, *ports)
    hv.send_virq(d.domid, TIMER, 1)                   # work pending on both vCPUs
    up, g = d.guest.do_upcall, d.guest
    domid = d.domid
    hv.destroy_domain(domid)
    calls = (lambda f: f(), lambda f: f(0), lambda f: f(1), lambda f: f(vcpu=1),
             lambda f: f(0, None), lambda f: f(1, _noop), lambda f: f(handler=_noop),
             lambda f: f(99), lambda f: f("x"), lambda f: f(0, 5), lambda f: f(True))
    for f in (up, g.do_upcall, d.guest.do_upcall):
        for call in calls:
            with pytest.raises(xe.EvtchnError) as ei:
                call(f)
            assert ei.value.errno == errno.ESRCH
        with pytest.raises(TypeError):                 # Python's own argument binding
            f(0, None, None)
        with pytest.raises(TypeError):
            f(bogus=1)
    d2 = hv.create_domain(vcpus=2)
    assert d2.domid == domid
    mine = [d2.bind_ipi(0) for _ in range(5)]
    raise_(d2, *mine)
    for call in calls[:7]:
        with pytest.raises(xe.EvtchnError):
            call(up)
    assert pending(d2, mine) == mine
    assert d2.guest.do_upcall(0) == mine


def test_destroyed_from_inside_a_handler(xe):
    """A handler that destroys its own domain: the upcall in progress goes on through the
    word visit it had snapshotted, but handles none of its later ports (destruction took
    their pending bits; a port is handled only by the scan whose clear takes its bit), and
    stops without error; afterwards the call answers ESRCH."""
    hv = xe.Hypervisor()
    d = hv.create_domain()
    ports = [d.bind_ipi(0) for _ in range(100)]
    raise_(d, *ports)

    def killer(port):
        if port == 3:
            hv.destroy_domain(d.domid)

    assert d.guest.do_upcall(0, killer) == [1, 2, 3]
    with pytest.raises(xe.EvtchnError) as ei:
        d.guest.do_upcall(0)
    assert ei.value.errno == errno.ESRCH


# ---------------------------------------------------------------------- 11. snapshots


def _snapshot_world():
    hv = native.Hypervisor()
    d = hv.create_domain(vcpus=3)
    for p in range(1, 200):
        assert d.bind_ipi(p % 3) == p
    t1, t2 = d.bind_virq(TIMER, 1), d.bind_virq(TIMER, 2)
    u = d.alloc_unbound(0)
    d.bind_vcpu(u, 2)
    d.guest.mask(30)
    # Cursors mid-word on every vCPU, then work pending everywhere (selectors, flags).
    raise_(d, 9, 70, 131)
    assert d.guest.do_upcall(0) == [9]
    assert d.guest.do_upcall(1, _noop) == [70]
    assert d.guest.do_upcall(2) == [131]
    raise_(d, 3, 4, 5, 30, 33, 64, 65, 66, 130, 132, 133, 196, 197)
    hv.send_virq(d.domid, TIMER, 1)
    hv.inject(d.domid, u)
    return hv, d, (t1, t2, u)


def test_restored_domain_upcalls_as_the_original():
    """hv.snapshot() / Hypervisor.restore: the copy's upcalls return the original's lists,
    round after round (cursors mid-word, the timer first, a masked port unmasked, a
    bind_vcpu, a timer closed and bound again, EVTCHNOP_reset), in both call forms."""
    hv, d, (t1, t2, u) = _snapshot_world()
    assert [cursor(d, v) for v in range(3)] == [(0, 10), (1, 7), (2, 4)]
    copy = native.Hypervisor.restore(hv.snapshot())
    c = copy.domain(d.domid)
    assert [cursor(c, v) for v in range(3)] == [(0, 10), (1, 7), (2, 4)]
    worlds = ((hv, d), (copy, c))

    def both(fn):
        return [fn(h, dom) for h, dom in worlds]

    def upcalls(rnd):
        out = []
        for v in (2, 0, 1):
            if (rnd + v) % 2:
                res = both(lambda h, dom: dom.guest.do_upcall(v))
            else:
                res = both(lambda h, dom: dom.guest.do_upcall(v, _noop))
            assert res[0] == res[1], (rnd, v, res)
            out.append(res[0])
        assert both(lambda h, dom: [cursor(dom, v) for v in range(3)]) == \
            [[cursor(d, v) for v in range(3)]] * 2
        assert bytes(d.shared_info.buffer) == bytes(c.shared_info.buffer)
        return out

    assert (t1, t2, u) == (200, 201, 202)
    # Hand-worked first round. vCPU 2 from (2,4): word 3: 197, u=202; word 0: 5; word 1:
    # 65. vCPU 0 from (0,10): 33 (30 masked); 66; 132; word 0 again: 3. vCPU 1: its
    # timer, then from (1,7): word 2: 130, 133; word 3: 196; word 0: 4; word 1 again: 64.
    assert upcalls(0) == [[197, 202, 5, 65], [33, 66, 132, 3], [200, 130, 133, 196, 4, 64]]
    for rnd in range(1, 7):
        if rnd == 2:
            both(lambda h, dom: dom.guest.unmask(30))
        if rnd == 3:
            both(lambda h, dom: dom.bind_vcpu(u, 0))
        if rnd == 4:
            both(lambda h, dom: (dom.close(t1), dom.bind_ipi(0), dom.bind_virq(TIMER, 1)))
        if rnd == 5:
            both(lambda h, dom: dom.reset())
            both(lambda h, dom: [dom.bind_ipi(p % 3) for p in range(1, 150)])
            both(lambda h, dom: dom.bind_virq(TIMER, 2))
        both(lambda h, dom: raise_(dom, *[p for p in (3 + rnd, 63 - rnd, 64 + 2 * rnd, 140 - rnd)]))
        both(lambda h, dom: [h.send_virq(dom.domid, TIMER, v) for v in range(3)])
        if rnd < 5:
            both(lambda h, dom: h.inject(dom.domid, u))
        upcalls(rnd)
    assert hv.snapshot() == copy.snapshot()


def test_a_handles_timer_port_goes_to_the_handle_when_the_guest_unmasks_it_itself(xe):
    """The timer-first step meets a handle's VIRQ_TIMER port pending and unmasked (the
    guest cleared the mask bit itself): the handle takes it, as the scan would."""
    hv = xe.Hypervisor()
    d = hv.create_domain(privileged=True)
    h = xe.XenEvtchn(d)
    t = h.bind_virq(TIMER)
    hv.send_virq(0, TIMER)
    assert h.pending() == t                      # taken for the handle, now masked
    hv.send_virq(0, TIMER)                  # pending while masked
    d.shared_info.buffer[0xA00 + t // 8] &= ~(1 << (t % 8)) & 0xFF
    d.shared_info.buffer[0] = 1                  # an upcall is due (vCPU 0's flag)
    assert d.guest.do_upcall(0) == []
    assert h.pending() == t
    h.close()
