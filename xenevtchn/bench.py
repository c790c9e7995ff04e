"""The hot paths against their floors, as ratios measured in one run (``xenevtchn bench``).

Each row of the table times *ours* (a xenevtchn path) and its *floor* (what the machine
does with no simulator at all) on the same number of events, in alternating rounds of the
same process, and reports ours/floor against the row's target. ``benchmarks/`` runs the
very same cases through pytest-benchmark (one group per row); this module needs no pytest
so that it works from an installed package::

    xenevtchn bench                           # every row, then the table
    xenevtchn bench --quick                   # fewer rounds (a rough look)
    xenevtchn bench --from-json F             # the table of a pytest-benchmark --benchmark-json file
    xenevtchn bench --ci --strict             # the rows CI holds to their targets (exit 1 on a miss)
    xenevtchn bench --markdown                # the README's block: when/where, then the table
    xenevtchn bench --markdown --readme README.md   # ... written into README.md between its markers

What a row measures
-------------------
* The floors are built at run time by :mod:`xenevtchn._bench_floors` (cffi, a cache
  directory): a bare one-argument cffi call (``int64_t f(int64_t)``, returning its
  argument) and a C loop of ``atomic_fetch_or`` on the pending words of the very ports a
  batch send raises, called from Python on the whole batch (call overhead amortised
  exactly as for ``send_many``).
* Per-call rows loop over a list in Python, ``for x in xs: f(x)``, for ours and for the
  floor alike, so both carry the same loop overhead (about what ``timeit`` adds).
* "first raise": before every round the receiver's pending bits, selector words and
  upcall flags are cleared (untimed), so every send really raises its port (only the
  first send of a round kicks the vCPU). "already pending": the bits stay set, so every
  send is a coalesced event. Both are reported; they differ.
* ``do_upcall k``: before every round k ports of a domain with 4095 bound ports are made
  pending (untimed); the round is one ``do_upcall()`` with no handler, and the time is
  per handled port. For k=1 a round is 32 upcalls, on 32 vCPUs with one pending port
  each (so the timer's own cost does not sit on a single call).
* ``event_channel_op``: one preallocated ``bytearray`` per port, as a guest keeps its
  hypercall argument; EVTCHNOP_status has no fast path and is shown for information.
* Threads: two domains, each fed by its own thread with long ``send_many`` batches, against
  one thread doing both; the "(info) 2 C threads vs 1" row runs the C floor loop the same
  way with pthreads, to show what the machine itself gives two threads at that moment.
* ``simulate: C engine vs Python engine``: the default scenario (``ENGINE_EVENTS`` events)
  run from a fresh ``Simulation`` by each engine; the target is the C engine at 40x the
  Python engine's events per second or more.
* ``simulate --trace``: the default scenario (``TRACE_EVENTS`` events) by the C engine,
  streamed to a ``.json`` (or, for information, ``.json.gz``) file in a temporary folder,
  committed (fsync, rename) as the CLI does, against the same run untraced; the target is
  the traced run within 3x. The memory row runs both in a child process each and compares
  their peak resident set (``ru_maxrss``; the value is in bytes, not ns): within 1.5x.
* ``simulate scale``: the default scenario at 1,000 guests against 10 guests on one engine
  (``SCALE_EVENTS`` events, a fresh ``Simulation`` per round, built untimed): per-event
  cost must stay within 1.5x as the world grows.
* ``simulate memory``: the peak RSS of a child process that runs 4,000,000 events on the C
  engine against one that runs 200,000 (a quantity, not a time: ``Case.metric``); within 1.2x.
* ``progress bar``: a C engine run drawing its tqdm bar (to /dev/null) against one with none.
* Times are the minimum over rounds of (round time / events in the round); the garbage
  collector is off while timing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import struct
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

N_CHANNELS = 4095          # a full x86_64 2-level table: ports 1..4095 (port 0 is reserved)
PENDING_OFF = 2048         # evtchn_pending[] in shared_info
MASK_OFF = 2560            # evtchn_mask[] (x86_64)
VCPU_INFO = 64
_ZERO512 = bytes(512)
_ONES512 = b"\xff" * 512


@dataclass
class Case:
    """One side of a row: ``run()`` is timed; ``setup()`` runs untimed before each round;
    ``check(result)`` (untimed) asserts from the state ``run()`` changed that the round did
    all of its work (every case has one)."""

    run: Callable[[], Any]
    ops: int
    setup: Callable[[], None] | None = None
    check: Callable[[Any], None] | None = None
    metric: Callable[[Any], float] | None = None  # a quantity read from run()'s result (then
    #                                               not its time), e.g. peak bytes; per op


@dataclass(frozen=True)
class Spec:
    """What a row compares and its target, known without building anything."""

    name: str
    floor_name: str
    target: float | None      # None: for information only
    kind: str = "max"         # "max": ours/floor <= target; "speedup": floor/ours >= target
    rounds: int = 600
    ci: bool = False          # its target holds with margin on a loaded 2-core machine (--ci)
    unit: str = "ns"          # what ours and floor are in: "ns" per op, or "B" (Case.metric)

    def ratio(self, ours_ns: float, floor_ns: float) -> float:
        return floor_ns / ours_ns if self.kind == "speedup" else ours_ns / floor_ns

    def meets(self, ratio: float) -> bool | None:
        if self.target is None:
            return None
        return ratio >= self.target if self.kind == "speedup" else ratio <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f">= {self.target:g}x faster" if self.kind == "speedup" else f"<= {self.target:g}x"


@dataclass
class Row:
    """A row built for measuring: its spec, and ours and the floor over one world."""

    spec: Spec
    what: str
    ours: Case
    floor: Case

    @property
    def name(self) -> str:
        return self.spec.name


# ---- loops: the same code object for ours and the floor ------------------------------

def _loop1(fn: Callable[[Any], Any], args: Sequence[Any]) -> Callable[[], None]:
    def run() -> None:
        for a in args:
            fn(a)
    return run


def _loop2(fn: Callable[[Any, Any], Any], first: Any, args: Sequence[Any]) -> Callable[[], None]:
    def run() -> None:
        for a in args:
            fn(first, a)
    return run


def _py_identity(x: int) -> int:
    return x


def _loop_last(fn: Callable[[Any], Any], args: Sequence[Any]) -> Callable[[], Any]:
    """``_loop1`` that returns the last call's result (for functions that change nothing)."""
    def run() -> Any:
        r = None
        for a in args:
            r = fn(a)
        return r
    return run


def _then(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    if first is None:
        return second

    def both() -> None:
        first()
        second()
    return both


def _bits_set(words: Any, ports: Sequence[int]) -> int:
    """How many of ``ports`` have their bit set in the 64-bit ``words`` (2-level layout)."""
    return sum(1 for p in ports if (words[p // 64] >> (p % 64)) & 1)


# ---- worlds ------------------------------------------------------------------------------

class _Channels:
    """dom0 -> guest over N interdomain channels (native or reference implementation)."""

    def __init__(self, xe: Any, n: int = N_CHANNELS) -> None:
        self.hv = xe.Hypervisor()
        self.dom0 = self.hv.create_domain(privileged=True)
        self.guest = self.hv.create_domain()
        self.remote: list[int] = []
        self.local: list[int] = []
        for _ in range(n):
            r = self.guest.alloc_unbound(self.dom0.domid)
            self.local.append(self.dom0.bind_interdomain(self.guest.domid, r))
            self.remote.append(r)
        self.buf = self.guest.shared_info.buffer

    def clear(self) -> None:
        """The guest's pending words, selector and upcall flag of vCPU 0 back to 0."""
        b = self.buf
        b[PENDING_OFF:PENDING_OFF + 512] = _ZERO512
        b[0] = 0
        b[8:16] = bytes(8)

    def all_pending(self, _result: Any = None) -> None:
        si = self.guest.shared_info
        missing = [p for p in self.remote if not si.is_pending(p)]
        assert not missing, f"{len(missing)} ports not pending, e.g. {missing[:5]}"

    def sentinels(self) -> list[int]:
        """The guest ports an "already pending" round starts with clear: first, middle, last."""
        r = self.remote
        return [r[0], r[len(r) // 2], r[-1]]

    def clear_sentinels(self) -> None:
        """Every pending bit stays set but the sentinels' (their selector bits and the upcall
        flag stay set too, so re-raising them is as cheap as a coalesced send)."""
        b = self.buf
        for p in self.sentinels():
            off = PENDING_OFF + p // 8
            b[off] &= ~(1 << (p % 8)) & 0xFF

    def all_pending_again(self, _result: Any = None) -> None:
        """The round re-raised the sentinels (so every send ran) and kept the rest set."""
        self.all_pending()


class _FifoChannels(_Channels):
    """The same channels, with the guest on the FIFO ABI (4 array pages, one queue)."""

    def __init__(self, xe: Any, n: int = N_CHANNELS) -> None:
        super().__init__(xe, n)
        g = self.guest
        g.init_control(0x10, 0, 0)       # after binding: every port gets priority 7
        for i in range(4):
            g.expand_array(0x20 + i)
        g.guest.do_upcall(0)             # the binds left every port pending: take them

    def clear(self) -> None:
        """The guest consumes everything (Linux's queue walk): words, READY, HEAD all clear."""
        self.guest.guest.do_upcall(0)

    def all_pending(self, _result: Any = None) -> None:
        pages = [self.guest.memory.page(0x20 + i) for i in range(4)]
        missing = [p for p in self.remote
                   if not struct.unpack_from("<I", pages[p // 1024], 4 * (p % 1024))[0] >> 31]
        assert not missing, f"{len(missing)} ports not PENDING, e.g. {missing[:5]}"


class _Ipis:
    """One domain with N IPI ports spread over ``vcpus`` vCPUs (port p on vCPU p % vcpus)."""

    def __init__(self, xe: Any, vcpus: int = 1, n: int = N_CHANNELS) -> None:
        self.hv = xe.Hypervisor()
        self.d = self.hv.create_domain(vcpus=vcpus)
        self.vcpus = vcpus
        self.ports = []
        for i in range(n):
            self.ports.append(self.d.bind_ipi(vcpu=(i + 1) % vcpus))
        assert self.ports == list(range(1, n + 1))
        self.buf = self.d.shared_info.buffer

    def clear(self) -> None:
        b = self.buf
        b[PENDING_OFF:PENDING_OFF + 512] = _ZERO512
        b[MASK_OFF:MASK_OFF + 512] = _ZERO512
        for v in range(self.vcpus):
            b[v * VCPU_INFO] = 0
            b[v * VCPU_INFO + 8:v * VCPU_INFO + 16] = bytes(8)


# ---- the rows ------------------------------------------------------------------------------

def _floor_call(floors: Any, n: int, setup: Callable[[], None] | None = None,
                loop: Callable[..., Callable[[], Any]] = _loop1) -> Case:
    """n bare cffi calls, in the same Python loop as ours; the floor's own counter says
    every one of them ran."""
    calls = floors[1].xe_floor_calls

    def check(_r: Any) -> None:
        got = calls(0)
        assert got == n, f"the floor made {got} calls, not {n}"

    def reset() -> None:
        calls(1)

    return Case(loop(floors[1].xe_floor_identity, list(range(1, n + 1))), n,
                _then(setup, reset), check)


Built = tuple[str, Case, Case]   # (what is measured, ours, floor)


def _send_many_row(xe: Any, floors: Any, kind: str, pending: bool) -> Built:
    w = _Channels(xe)
    if kind == "numpy":
        import numpy as np

        arg: Any = np.array(w.local, dtype=np.uint32)
    elif kind == "array":
        arg = array("I", w.local)
    else:
        arg = memoryview(array("I", w.local))
    send_many = w.dom0.send_many
    fffi, flib = floors
    remote = array("I", w.remote)
    words = fffi.from_buffer("uint64_t[]", w.buf[PENDING_OFF:PENDING_OFF + 512])
    rports = fffi.from_buffer("uint32_t[]", remote)
    fetch_or, n = flib.xe_floor_fetch_or, len(remote)
    setup = w.clear_sentinels if pending else w.clear
    check = w.all_pending_again if pending else w.all_pending
    if pending:
        send_many(arg)
    ours = Case(lambda: send_many(arg), n, setup, check)
    # the floor sets the same pending words: the same check holds for it
    floor = Case(lambda: fetch_or(words, rports, n), n, setup, check)
    return f"d.send_many({kind} uint32[{n}]), per event", ours, floor


def _send_row(xe: Any, floors: Any, pending: bool) -> Built:
    w = _Channels(xe)
    setup = w.clear_sentinels if pending else w.clear
    floor = _floor_call(floors, len(w.local), setup)
    if pending:
        for p in w.local:
            w.dom0.send(p)
    ours = Case(_loop1(w.dom0.send, w.local), len(w.local), setup,
                w.all_pending_again if pending else w.all_pending)
    return "d.send(port) per call", ours, floor


def _fifo_send_many_row(xe: Any, floors: Any) -> Built:
    w = _FifoChannels(xe)
    arg = array("I", w.local)
    fffi, flib = floors
    remote = array("I", w.remote)
    scratch = fffi.new("uint64_t[]", 512)     # the floor's pending words (2-level shape)
    rports = fffi.from_buffer("uint32_t[]", remote)
    fetch_or, n = flib.xe_floor_fetch_or, len(remote)
    send_many = w.dom0.send_many

    def zero_scratch() -> None:
        fffi.memmove(scratch, _ZERO512 * 8, 4096)

    def floor_check(_r: Any) -> None:
        got = _bits_set(scratch, remote)
        assert got == n, f"the floor set {got} bits, not {n}"

    ours = Case(lambda: send_many(arg), n, w.clear, w.all_pending)
    floor = Case(lambda: fetch_or(scratch, rports, n), n, zero_scratch, floor_check)
    return f"FIFO guest: d.send_many(array uint32[{n}]), linking each event, per event", ours, floor


def _fifo_send_row(xe: Any, floors: Any) -> Built:
    w = _FifoChannels(xe)
    ours = Case(_loop1(w.dom0.send, w.local), len(w.local), w.clear, w.all_pending)
    floor = _floor_call(floors, len(w.local))
    return "FIFO guest: d.send(port) per call, first raise", ours, floor


def _fifo_upcall_row(xe: Any, floors: Any) -> Built:
    w = _FifoChannels(xe)
    arg = array("I", w.local)
    up = w.guest.guest.do_upcall

    def check(res: Any) -> None:
        assert sorted(res) == w.remote, len(res)

    ours = Case(lambda: up(0), len(w.local), lambda: w.dom0.send_many(arg), check)
    floor = _floor_call(floors, len(w.local))
    return f"FIFO guest: do_upcall() with k={len(w.local)} queued ports, per port", ours, floor


def _send_kick_row(xe: Any, floors: Any) -> Built:
    """Every send kicks: 32 IPIs, one per vCPU, each vCPU's upcall flag clear."""
    w = _Ipis(xe, vcpus=32)
    hot = [w.ports[64 * 32 + v] for v in range(32)]
    kicked: list[Any] = []
    w.hv.on_kick = kicked.append

    def setup() -> None:
        w.clear()
        kicked.clear()

    def check(_r: Any) -> None:
        assert len(kicked) == len(hot), len(kicked)

    ours = Case(_loop1(w.d.send, hot), len(hot), setup, check)
    floor = _floor_call(floors, len(hot))
    return "d.send(port) that kicks its vCPU: the on_kick hook runs (list.append)", ours, floor


def _send_vs_builtin_row(xe: Any, floors: Any) -> Built:
    """d.send on an already-pending port against a bare CPython builtin call (``abs``)."""
    w = _Channels(xe)
    for p in w.local:
        w.dom0.send(p)
    n = len(w.local)

    def check(r: Any) -> None:
        assert r == n, r   # abs(n): the last call returned its argument

    ours = Case(_loop1(w.dom0.send, w.local), n, w.clear_sentinels, w.all_pending_again)
    floor = Case(_loop_last(abs, list(range(1, n + 1))), n, None, check)
    return "d.send(port) per call, already pending", ours, floor


def _kick_cycle_row(xe: Any, floors: Any) -> Built:
    """A kicking cycle per event: ``d.send`` of an edge (the vCPU's upcall flag is clear),
    the Python ``on_kick`` hook it runs, then ``do_upcall(0)`` taking the port. The floor:
    two bare cffi calls and one call of the very same Python hook function."""
    hv = xe.Hypervisor()
    d = hv.create_domain()
    port = d.bind_ipi(0)
    si = d.shared_info
    n = 1024
    seen: list[Any] = []

    def on_kick(vcpu: Any) -> None:
        seen.append(vcpu)

    hv.on_kick = on_kick
    send, up = d.send, d.guest.do_upcall
    ports = [port] * n
    taken: list[Any] = []

    def cycle() -> Any:
        got = None
        for p in ports:
            send(p)
            got = up(0)
            taken.append(got)
        return got

    def setup() -> None:
        seen.clear()
        taken.clear()
        up(0)                 # nothing pending, the upcall flag clear

    def check(_r: Any) -> None:
        assert len(seen) == n and all(v is d.vcpus[0] for v in seen), len(seen)
        assert len(taken) == n and all(t == [port] for t in taken), len(taken)
        assert not si.is_pending(port) and not si.upcall_pending(0)

    ident = floors[1].xe_floor_identity
    calls = floors[1].xe_floor_calls
    args = list(range(1, n + 1))

    def floor_run() -> None:
        for a in args:
            ident(a)
            ident(a)
            on_kick(a)

    def floor_setup() -> None:
        seen.clear()
        calls(1)

    def floor_check(_r: Any) -> None:
        assert calls(0) == 2 * n and len(seen) == n, (len(seen), n)

    return ("kicking cycle: d.send(port) of an edge + Python on_kick + do_upcall(0) taking it, "
            "per cycle", Case(cycle, n, setup, check), Case(floor_run, n, floor_setup, floor_check))


def _send_vs_reference_row(xe: Any, floors: Any) -> Built:
    from . import reference

    w, r = _Channels(xe), _Channels(reference)
    ours = Case(_loop1(w.dom0.send, w.local), len(w.local), w.clear, w.all_pending)
    ref = Case(_loop1(r.dom0.send, r.local), len(r.local), r.clear, r.all_pending)
    return "d.send(port), first raise, per call", ours, ref


def _unmask_row(xe: Any, floors: Any, pending: bool) -> Built:
    w = _Ipis(xe)
    b, si = w.buf, w.d.shared_info
    mask_bytes = bytes(_ONES512)
    pend_bytes = _ONES512 if pending else _ZERO512

    def setup() -> None:
        w.clear()
        b[MASK_OFF:MASK_OFF + 512] = mask_bytes
        b[PENDING_OFF:PENDING_OFF + 512] = pend_bytes

    def check(_r: Any) -> None:
        assert not any(si.is_masked(p) for p in w.ports)
        assert si.upcall_pending(0) == (1 if pending else 0)

    ours = Case(_loop1(w.d.guest.unmask, w.ports), len(w.ports), setup, check)
    return "d.guest.unmask(port) per call (Linux, local)", ours, _floor_call(floors, len(w.ports))


def _upcall_row(xe: Any, floors: Any, k: int) -> Built:
    run: Callable[[], Any]
    check: Callable[[Any], None]
    if k == 1:
        # 32 vCPUs, one pending port each: 32 upcalls of k=1 per round.
        w = _Ipis(xe, vcpus=32)
        hot = [w.ports[64 * 32 + v] for v in range(32)]   # ports in word 64
        up = w.d.guest.do_upcall
        vcpus = [(p % 32) for p in hot]
        ops = 32

        run = _loop1(up, vcpus)
        si = w.d.shared_info

        def check(_res: Any) -> None:
            assert not any(si.is_pending(p) for p in hot)
            assert not any(si.upcall_pending(v) for v in range(32))
    else:
        w = _Ipis(xe, vcpus=1)
        step = max(1, len(w.ports) // k)
        hot = w.ports[::step][:k]
        up = w.d.guest.do_upcall
        ops = len(hot)

        def run_one() -> list[int]:
            got: list[int] = up(0)
            return got

        run = run_one

        def check_drained(res: Any) -> None:
            assert sorted(res) == hot, (len(res), len(hot))

        check = check_drained
    send_many = w.d.send_many
    hot_arr = array("I", hot)

    def setup() -> None:
        w.clear()
        send_many(hot_arr)

    label = f"{len(hot)} of 4096" if k > 1 else "1 of 4096, on each of 32 vCPUs"
    return (f"d.guest.do_upcall() without handler, {label}; per port",
            Case(run, ops, setup, check), _floor_call(floors, ops))


def _hypercall_row(xe: Any, floors: Any, op: str) -> Built:
    w = _Channels(xe)
    setup: Callable[[], None]
    check: Callable[[Any], None]
    if op == "send":
        cmd, caller, bufs = 4, w.dom0, [bytearray(struct.pack("=I", p)) for p in w.local]
        setup, check = w.clear, w.all_pending
    elif op == "unmask":
        cmd, caller, bufs = 9, w.guest, [bytearray(struct.pack("=I", p)) for p in w.remote]
        b = w.buf

        def setup_masked() -> None:
            w.clear()
            b[MASK_OFF:MASK_OFF + 512] = _ONES512

        def check_unmasked(_r: Any) -> None:
            assert not any(w.guest.shared_info.is_masked(p) for p in w.remote)

        setup, check = setup_masked, check_unmasked
    else:
        cmd, caller = 5, w.guest
        bufs = [bytearray(struct.pack("=HHI16x", 0x7FF0, 0, p)) for p in w.remote]

        def setup_status() -> None:
            for buf in bufs:
                buf[8:12] = bytes(4)

        def check_status(_r: Any) -> None:
            assert all(struct.unpack_from("=I", buf, 8)[0] == 2 for buf in bufs)  # interdomain

        setup, check = setup_status, check_status
    ours = Case(_loop2(caller.event_channel_op, cmd, bufs), len(bufs), setup, check)
    what = f"d.event_channel_op(EVTCHNOP_{op}, bytearray) per call"
    if op == "status":
        what += " (no fast path: the general dispatcher)"
    return what, ours, _floor_call(floors, len(bufs))


def _threads_row(xe: Any, floors: Any) -> Built:
    pairs = [_Channels(xe), _Channels(xe)]
    # Long batches (every port 16 times, 65520 events a call): the work is C's, so two
    # threads overlap as far as the GIL lets them (each call re-takes it to return).
    arrs = [array("I", p.local * 16) for p in pairs]
    reps = 8

    def work(i: int) -> None:
        sm, a = pairs[i].dom0.send_many, arrs[i]
        for _ in range(reps):
            sm(a)

    def setup() -> None:
        for p in pairs:
            p.clear()

    def two_threads() -> None:
        t = threading.Thread(target=work, args=(1,))
        t.start()
        work(0)
        t.join()

    def one_thread() -> None:
        work(0)
        work(1)

    def check(_r: Any) -> None:
        for p in pairs:
            p.all_pending()

    n = 2 * reps * len(arrs[0])
    return (f"two domains, 2 x {reps} x send_many({len(arrs[0])} ports): 2 threads (one each) "
            "vs 1 thread (both)", Case(two_threads, n, setup, check), Case(one_thread, n, setup, check))


def _machine_threads_row(xe: Any, floors: Any) -> Built:
    fffi, flib = floors
    ports = array("I", range(1, N_CHANNELS + 1))
    pages = fffi.new("uint64_t[]", 512), fffi.new("uint64_t[]", 512)   # a page each: no
    w1, w2 = (page + 256 for page in pages)                             # line is shared
    p = fffi.from_buffer("uint32_t[]", ports)
    jobs, iters = flib.xe_floor_fetch_or_jobs, 128
    n = 2 * iters * len(ports)

    def run(threads: int) -> Callable[[], Any]:
        # w1 and w2 point into pages but do not own them: the closure keeps pages alive
        # (without it the C loop wrote into freed memory once the row was built).
        return lambda: (pages, jobs(w1, w2, p, len(ports), iters, threads))[1]

    def setup() -> None:
        for page in pages:
            fffi.memmove(page, _ZERO512 * 8, 4096)

    def check(_r: Any) -> None:
        got = [_bits_set(w, ports) for w in (w1, w2)]
        assert got == [len(ports)] * 2, f"the jobs set {got} bits, not {len(ports)} each"

    return ("the C atomic_fetch_or loop, 2 x 128 passes: 2 pthreads vs 1 (what this machine "
            "gives two threads right now)", Case(run(2), n, setup, check), Case(run(1), n, setup, check))


def _python_call_row(xe: Any, floors: Any) -> Built:
    n = 4096

    def check(r: Any) -> None:
        assert r == n - 1, r   # the last call returned its argument: the loop ran to the end

    return ("def f(x): return x, per call",
            Case(_loop_last(_py_identity, list(range(n))), n, None, check),
            _floor_call(floors, n, loop=_loop_last))


ENGINE_EVENTS = 20_000


def _engine_row(xe: Any, floors: Any) -> Built:
    """``xenevtchn simulate``'s default scenario run by the C engine, against the same run
    by the Python engine (a fresh Simulation per round, built untimed; per sent event)."""
    from .scenario import default_scenario
    from .simulate import Simulation

    sc = default_scenario(events=ENGINE_EVENTS)

    def side(engine: str) -> Case:
        box: dict[str, Any] = {}

        def setup() -> None:
            box["sim"] = Simulation(sc, engine=engine)

        def run() -> Any:
            box["sim"].run()
            return box["sim"]

        def check(_sim: Any) -> None:  # read from the simulation the round ran
            sent = box["sim"].sent
            assert sent == ENGINE_EVENTS, sent

        return Case(run, ENGINE_EVENTS, setup, check)

    return ("simulate, default scenario, engine='c', per event", side("c"), side("python"))


SCALE_GUESTS = (10, 1000)
SCALE_EVENTS = {"c": 300_000, "python": 30_000}


def _scale_row(engine: str) -> Callable[[Any, Any], Built]:
    """The default scenario at 1,000 guests against the same at 10, on one engine (a fresh
    Simulation per round, built untimed; per sent event): the per-event cost must not
    grow with the world."""
    def build(xe: Any, floors: Any) -> Built:
        from .scenario import default_scenario
        from .simulate import Simulation

        events = SCALE_EVENTS[engine]

        def side(guests: int) -> Case:
            sc = default_scenario(guests=guests, events=events)
            box: dict[str, Any] = {}

            def setup() -> None:
                box["sim"] = None
                gc.collect()  # the last round's world goes before this one is built
                box["sim"] = Simulation(sc, engine=engine)

            def run() -> Any:
                box["sim"].run()
                return box["sim"]

            def check(_sim: Any) -> None:
                sent = box["sim"].sent
                assert sent == events, sent

            return Case(run, events, setup, check)

        lo, hi = SCALE_GUESTS
        return (f"simulate engine={engine!r}, default scenario, {hi:,} guests vs {lo:,}, per event",
                side(hi), side(lo))
    return build


MEMORY_EVENTS = (200_000, 4_000_000)
# The start of a child that measures its own peak resident memory with peak().
_PEAK_PRELUDE = """
import resource, sys
def peak():  # bytes: Linux's VmHWM (reset below), else ru_maxrss
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024
try:  # ru_maxrss survives exec: it would be the parent's peak; "5" resets VmHWM (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
"""
_PEAK_CHILD = _PEAK_PRELUDE + """
from xenevtchn.scenario import default_scenario
from xenevtchn.simulate import Simulation
sim = Simulation(default_scenario(events=int(sys.argv[1])), engine="c")
sim.run()
print(sim.sent, peak())
"""


def _peak_rss(events: int) -> tuple[int, int]:
    """(events sent, peak RSS in bytes) of a fresh process that runs the default scenario
    on the C engine: the whole process, as a user's ``simulate`` run has it (the peak is
    reset at the child's start: Linux keeps the parent's across fork and exec)."""
    import subprocess
    import tempfile

    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(events)], capture_output=True,
                         text=True, check=True, cwd=tempfile.gettempdir(), timeout=600)
    sent, peak = out.stdout.split()
    return int(sent), int(peak)


def _memory_row(xe: Any, floors: Any) -> Built:
    """Peak memory of a 4,000,000-event run against a 200,000-event one (latencies go into a
    fixed histogram, the queue holds what is pending, not what happened)."""
    lo, hi = MEMORY_EVENTS

    def side(events: int) -> Case:
        def check(res: Any) -> None:
            sent, peak = res
            assert sent == events and peak > 0, res

        return Case(lambda: _peak_rss(events), 1, None, check, metric=lambda res: float(res[1]))

    return (f"simulate --events {hi:,} peak RSS (child process), C engine", side(hi), side(lo))


PROGRESS_EVENTS = 1_000_000


def _progress_row(xe: Any, floors: Any) -> Built:
    """A C engine run that draws its progress bar (to a file, so tqdm formats and writes
    every redraw) against the same run with none: the engine reports between slices."""
    import os

    from .progress import ProgressBar
    from .scenario import default_scenario
    from .simulate import Simulation

    sc = default_scenario(events=PROGRESS_EVENTS)
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the row

    def side(progress: bool) -> Case:
        box: dict[str, Any] = {}

        def setup() -> None:
            box["sim"] = Simulation(sc, engine="c")
            box["bar"] = ProgressBar(sink, "events", "simulate") if progress else None

        def run() -> Any:
            box["sim"].run(progress=box["bar"])
            if box["bar"] is not None:
                box["bar"].close()
            return box["sim"]

        def check(_sim: Any) -> None:
            sent = box["sim"].sent
            assert sent == PROGRESS_EVENTS, sent

        return Case(run, PROGRESS_EVENTS, setup, check)

    return "simulate engine='c' with its progress bar, per event", side(True), side(False)


TRACE_EVENTS = 100_000


def _trace_row(xe: Any, floors: Any, suffix: str | None) -> Built:
    """The C engine's default scenario streamed to a trace file (``suffix``: ``.json`` or
    ``.json.gz``) as ``simulate --trace`` does, against the same run untraced; ``suffix``
    None: the events formatted and handed to a sink that drops them (the engine's own cost,
    no file system)."""
    import atexit
    import os
    import shutil
    import tempfile

    from .scenario import default_scenario
    from .simulate import Simulation
    from .trace import TraceFile, TraceRecorder

    sc = default_scenario(events=TRACE_EVENTS)
    folder = tempfile.mkdtemp(prefix="xenevtchn-bench-trace-")
    atexit.register(shutil.rmtree, folder, True)   # the last round's trace file too
    path = os.path.join(folder, "run" + (suffix or ""))
    box: dict[str, Any] = {}

    class _Drop:
        written = 0

        def write(self, data: Any) -> int:
            _Drop.written += len(data)
            return len(data)

    def setup_traced() -> None:
        old = box.pop("file", None)
        if old is not None:
            old.discard()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _Drop.written = 0
        box["file"] = TraceFile(path) if suffix else None
        box["rec"] = TraceRecorder(box["file"].stream if suffix else _Drop())
        box["sim"] = Simulation(sc, engine="c", trace=box["rec"])

    def traced() -> Any:
        box["sim"].run()
        box["rec"].close()
        if suffix:
            box["file"].commit()
        return box["sim"]

    def check_traced(_r: Any) -> None:
        assert box["sim"].sent == TRACE_EVENTS and box["rec"].closed, box["sim"].sent
        written = os.path.getsize(path) if suffix else _Drop.written
        assert written > TRACE_EVENTS, "no trace was written"

    plain: dict[str, Any] = {}

    def setup_plain() -> None:
        plain["sim"] = Simulation(sc, engine="c")

    def untraced() -> Any:
        plain["sim"].run()
        return plain["sim"]

    def check_plain(_r: Any) -> None:
        assert plain["sim"].sent == TRACE_EVENTS, plain["sim"].sent

    return (f"simulate --trace {'F' + suffix if suffix else '(a sink that drops it)'}, default scenario, "
            "engine='c', per event",
            Case(traced, TRACE_EVENTS, setup_traced, check_traced),
            Case(untraced, TRACE_EVENTS, setup_plain, check_plain))


TRACE_MEMORY_EVENTS = 200_000
_PEAK_RSS = _PEAK_PRELUDE + """
import os
from xenevtchn.scenario import default_scenario
from xenevtchn.simulate import Simulation
from xenevtchn.trace import TraceFile, TraceRecorder
events, path = int(sys.argv[1]), sys.argv[2]
f = TraceFile(path) if path else None
rec = TraceRecorder(f.stream) if f else None
sim = Simulation(default_scenario(events=events), engine="c", trace=rec)
sim.run()
if f:
    rec.close()
    f.commit()
assert sim.sent == events
print(peak(), os.path.getsize(path) if path else 0)
"""


def _trace_memory_row(xe: Any, floors: Any) -> Built:
    """Peak resident memory (bytes) of a child process running the default scenario with a
    streamed trace, against a child running it untraced."""
    import atexit
    import os
    import shutil
    import subprocess
    import tempfile

    folder = tempfile.mkdtemp(prefix="xenevtchn-bench-trace-")
    atexit.register(shutil.rmtree, folder, True)   # the last round's trace file too
    path = os.path.join(folder, "run.json")

    def child(traced: bool) -> Callable[[], Any]:
        def run() -> Any:
            out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(TRACE_MEMORY_EVENTS),
                                  path if traced else ""], capture_output=True, text=True,
                                 cwd=folder, timeout=600)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise RuntimeError(f"the measuring child process failed: {last}")
            rss, size = (int(x) for x in out.stdout.split())
            return rss, size
        return run

    def check(traced: bool) -> Callable[[Any], None]:
        def check_it(r: Any) -> None:
            rss, size = r
            assert rss > 0 and (size > TRACE_MEMORY_EVENTS if traced else size == 0), r
        return check_it

    def value(r: Any) -> float:
        return float(r[0])

    return ("simulate --trace F.json, peak RSS of a child process, engine='c'",
            Case(child(True), 1, None, check(True), metric=value),
            Case(child(False), 1, None, check(False), metric=value))


_CFFI = "bare cffi call"
_FETCH_OR = "C atomic_fetch_or loop"
# ci=True: the worst of three full runs on the 2-core development machine at load average 6
# (other builds running) stayed within 0.72 of the target (speedup: 1/0.72 of it), so a
# CI machine busy with other jobs still passes `xenevtchn bench --ci --strict`. The rows
# left out were at 0.72-0.78 of their targets there (and "2 threads vs 1" needs a free
# second core), so they are reported, not enforced. The send_many rows are reported only:
# their floor is one uncontended atomic per port, whose cost moves with the CPU more than
# ours does (5.0 ns on the host of 2026-12-02 15:00 UTC, 2.2 ns on the host of 17:00 UTC,
# where already-pending batches measured 2.15x against the 2x target).
_SPECS: list[tuple[Spec, Callable[[Any, Any], Built]]] = [
    (Spec("send_many[numpy] first raise", _FETCH_OR, 2.0, rounds=900),
     lambda xe, f: _send_many_row(xe, f, "numpy", False)),
    (Spec("send_many[array] first raise", _FETCH_OR, 2.0, rounds=900),
     lambda xe, f: _send_many_row(xe, f, "array", False)),
    (Spec("send_many[memoryview] first raise", _FETCH_OR, 2.0, rounds=900),
     lambda xe, f: _send_many_row(xe, f, "memoryview", False)),
    (Spec("send_many[numpy] already pending", _FETCH_OR, 2.0, rounds=900),
     lambda xe, f: _send_many_row(xe, f, "numpy", True)),
    (Spec("d.send first raise", _CFFI, 2.5, rounds=300), lambda xe, f: _send_row(xe, f, False)),
    (Spec("d.send already pending", _CFFI, 0.7, rounds=300, ci=True),
     lambda xe, f: _send_row(xe, f, True)),
    (Spec("(info) d.send already pending vs builtin", "bare CPython builtin call (abs)", None,
          rounds=300), _send_vs_builtin_row),
    (Spec("(info) d.send that kicks", _CFFI, None, rounds=600), _send_kick_row),
    (Spec("kicking cycle", "2 bare cffi calls + the Python hook", 1.5, rounds=300), _kick_cycle_row),
    (Spec("d.send vs reference", "reference model's send", 4.0, "speedup", rounds=90, ci=True),
     _send_vs_reference_row),
    (Spec("guest.unmask masked, not pending", _CFFI, 0.7, rounds=300, ci=True),
     lambda xe, f: _unmask_row(xe, f, False)),
    (Spec("guest.unmask masked, pending: re-fired", _CFFI, 0.7, rounds=300),
     lambda xe, f: _unmask_row(xe, f, True)),
    (Spec("do_upcall k=1", _CFFI + " per port", 2.0, ci=True), lambda xe, f: _upcall_row(xe, f, 1)),
    (Spec("do_upcall k=64", _CFFI + " per port", 2.0, ci=True), lambda xe, f: _upcall_row(xe, f, 64)),
    (Spec("do_upcall k=4095", _CFFI + " per port", 2.0, rounds=300, ci=True),
     lambda xe, f: _upcall_row(xe, f, 4095)),
    (Spec("(info) FIFO send_many first raise", _FETCH_OR, None, rounds=300), _fifo_send_many_row),
    (Spec("(info) FIFO d.send first raise", _CFFI, None, rounds=100), _fifo_send_row),
    (Spec("(info) FIFO do_upcall k=4095", _CFFI + " per port", None, rounds=100), _fifo_upcall_row),
    (Spec("event_channel_op send", _CFFI, 1.2, rounds=300, ci=True),
     lambda xe, f: _hypercall_row(xe, f, "send")),
    (Spec("event_channel_op unmask", _CFFI, 1.2, rounds=300),
     lambda xe, f: _hypercall_row(xe, f, "unmask")),
    (Spec("(info) event_channel_op status", _CFFI, None, rounds=90),
     lambda xe, f: _hypercall_row(xe, f, "status")),
    (Spec("2 threads vs 1: send_many batches", "the same work on 1 thread", 0.9, rounds=90),
     _threads_row),
    (Spec("(info) 2 C threads vs 1", "the same on 1 thread", None, rounds=90),
     _machine_threads_row),
    (Spec("(info) pure-Python call", _CFFI, None, rounds=300), _python_call_row),
    (Spec("simulate: C engine vs Python engine", "engine='python'", 40.0, "speedup", rounds=5),
     _engine_row),
    (Spec("simulate --trace F.json vs untraced", "untraced run", 3.0, rounds=5),
     lambda xe, f: _trace_row(xe, f, ".json")),
    (Spec("(info) simulate --trace F.json.gz vs untraced", "untraced run", None, rounds=3),
     lambda xe, f: _trace_row(xe, f, ".json.gz")),
    (Spec("(info) simulate, trace formatted, not written", "untraced run", None, rounds=5),
     lambda xe, f: _trace_row(xe, f, None)),
    (Spec("simulate --trace: peak memory vs untraced", "untraced run", 1.5, rounds=3, unit="B"),
     _trace_memory_row),
    (Spec("simulate scale: C engine, 1,000 guests vs 10", "10 guests", 1.5, rounds=5), _scale_row("c")),
    (Spec("simulate scale: Python engine, 1,000 guests vs 10", "10 guests", 1.5, rounds=3),
     _scale_row("python")),
    (Spec("simulate memory: 4M events vs 200k, C engine", "200,000 events", 1.2, rounds=3, unit="B"),
     _memory_row),
    (Spec("simulate: C engine with progress bar vs without", "no progress bar", 1.1, rounds=5),
     _progress_row),
]
ROWS: dict[str, Spec] = {spec.name: spec for spec, _ in _SPECS}
_FACTORIES = {spec.name: factory for spec, factory in _SPECS}


def build_row(name: str, floors: Any = None) -> Row:
    """The row ``name`` with a fresh world (native implementation)."""
    import xenevtchn

    from . import _bench_floors

    what, ours, floor = _FACTORIES[name](xenevtchn, floors or _bench_floors.load())
    return Row(ROWS[name], what, ours, floor)


# ---- timing ------------------------------------------------------------------------------

def _time_round(case: Case) -> float:
    if case.setup is not None:
        case.setup()
    t0 = time.perf_counter_ns()
    out = case.run()
    t1 = time.perf_counter_ns()
    if case.metric is not None:
        return case.metric(out) / case.ops
    return (t1 - t0) / case.ops


@dataclass
class Result:
    row: Row
    ours: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)

    @property
    def ours_ns(self) -> float:
        return min(self.ours)

    @property
    def floor_ns(self) -> float:
        return min(self.floor)

    @property
    def ratio(self) -> float:
        return self.row.spec.ratio(self.ours_ns, self.floor_ns)


def measure(row: Row, rounds: int | None = None, warmup: int = 3) -> Result:
    """Alternate floor and ours, ``rounds`` times each, after ``warmup`` untimed rounds."""
    rounds = rounds or row.spec.rounds
    res = Result(row)
    for case in (row.floor, row.ours):   # one correctness round each
        if case.setup is not None:
            case.setup()
        out = case.run()
        if case.check is not None:
            case.check(out)
    if row.ours.metric is not None:  # a quantity, not a time: nothing to warm up
        warmup = 0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup):
            _time_round(row.floor)
            _time_round(row.ours)
        for _ in range(rounds):
            res.floor.append(_time_round(row.floor))
            res.ours.append(_time_round(row.ours))
    finally:
        if gc_was:
            gc.enable()
    return res


# ---- the table -----------------------------------------------------------------------------

def _fmt_ns(ns: float, unit: str = "ns") -> str:
    if unit == "B":
        return f"{ns / 2**20:.1f} MiB"
    return f"{ns:.1f} ns" if ns < 10_000 else f"{ns / 1000:.1f} us"


def format_table(results: Sequence[tuple[Spec, float, float]]) -> str:
    """Rows of (spec, ours ns/event, floor ns/event) as a Markdown table."""
    lines = ["| row | ours | floor | ratio | target | result |",
             "|---|---:|---:|---:|---|---|"]
    for row, ours, floor in results:
        ratio = row.ratio(ours, floor)
        ok = row.meets(ratio)
        verdict = "info" if ok is None else ("PASS" if ok else "MISS")
        lines.append(f"| {row.name} | {_fmt_ns(ours, row.unit)} | {_fmt_ns(floor, row.unit)} ({row.floor_name}) | "
                     f"{ratio:.2f}x | {row.target_text()} | {verdict} |")
    return "\n".join(lines)


def _platform_line() -> str:
    import os
    import platform

    import cffi

    return (f"Python {platform.python_version()}, cffi {cffi.__version__}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs; min over rounds, ns per event")


MARK_BEGIN = "<!-- generated by `xenevtchn bench --markdown`: do not edit by hand -->"
MARK_END = "<!-- end of `xenevtchn bench --markdown` -->"


def _first_line(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _compiler() -> str:
    """The C compiler Python builds extensions with (the core and the floors alike)."""
    import shlex
    import subprocess
    import sysconfig

    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    try:
        out = subprocess.run([cc[0], "--version"], capture_output=True, text=True, timeout=30)
        first = out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        first = ""
    return first or cc[0]


def measured_line(when: str | None = None) -> str:
    """When and where a table was measured: date, CPU, load, Python, cffi, compiler."""
    import datetime
    import os
    import platform

    import cffi

    when = when or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = _first_line("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return (f"Measured {when} on {cpu} ({os.cpu_count()} CPUs{load}), {platform.system()} "
            f"{platform.machine()}, Python {platform.python_version()}, cffi {cffi.__version__}, "
            f"compiler {_compiler()}; min over rounds, ns per event.")


def markdown(results: Sequence[tuple[Spec, float, float]], when: str | None = None) -> str:
    """The README's block: the markers, the measured-line, the table (``--markdown``)."""
    return "\n".join([MARK_BEGIN, measured_line(when), "", format_table(results), MARK_END])


def readme_block(text: str) -> str:
    """The generated block of a README's text, markers included (ValueError if none)."""
    start = text.index(MARK_BEGIN)
    end = text.index(MARK_END, start) + len(MARK_END)
    return text[start:end]


def write_readme(path: str, block: str) -> None:
    """Replace the generated block of ``path`` (written to a temp name, renamed into place)."""
    import atexit
    import os
    import shutil
    import tempfile

    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = text.replace(readme_block(text), block)
    fd, tmp = tempfile.mkstemp(prefix=".bench-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
        os.chmod(tmp, os.stat(path).st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _rows_from_json(path: str) -> list[tuple[Spec, float, float]]:
    """The table of a ``pytest benchmarks --benchmark-json=path`` run."""
    with open(path) as f:
        data = json.load(f)
    sides: dict[str, dict[str, float]] = {}
    for b in data["benchmarks"]:
        ops = b.get("extra_info", {}).get("ops", 1)
        side = b.get("extra_info", {}).get("side")
        if side is None:
            continue
        value = b.get("extra_info", {}).get("value")  # a metric row's quantity (per op)
        sides.setdefault(b["group"], {})[side] = value if value is not None else b["stats"]["min"] * 1e9 / ops
    out = []
    for name, spec in ROWS.items():
        got = sides.get(name, {})
        if "ours" in got and "floor" in got:
            out.append((spec, got["ours"], got["floor"]))
    return out


def _error(message: str) -> int:
    """A user's mistake or a missing tool: one line on stderr, exit status 2."""
    print(f"xenevtchn bench: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the ratio table; 0 if every row meets its target."""
    parser = argparse.ArgumentParser(
        prog="xenevtchn bench",
        description="Time the hot paths against their floors and print the ratio table.")
    parser.add_argument("--quick", action="store_true", help="a tenth of the rounds")
    parser.add_argument("--rounds", type=float, default=1.0, help="scale every row's rounds")
    parser.add_argument("-k", dest="match", default="", help="only rows whose name contains this")
    parser.add_argument("--from-json", metavar="FILE",
                        help="print the table of a pytest-benchmark JSON file instead of measuring")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any row misses its target")
    parser.add_argument("--ci", action="store_true",
                        help="only the rows whose targets hold with margin on a loaded 2-core machine")
    parser.add_argument("--markdown", action="store_true",
                        help="print the README block: when and where it was measured, then the table")
    parser.add_argument("--readme", metavar="FILE",
                        help="with --markdown: replace the block between FILE's markers instead of printing it")
    args = parser.parse_args(argv)
    if args.readme and not args.markdown:
        return _error("--readme needs --markdown")
    if args.readme:
        try:
            with open(args.readme, encoding="utf-8") as f:
                readme_block(f.read())
        except OSError as exc:
            return _error(f"--readme {args.readme}: {exc.strerror or exc}")
        except ValueError:
            return _error(f"--readme {args.readme}: no block between the markers {MARK_BEGIN!r} "
                          f"and {MARK_END!r}")

    if args.from_json:
        try:
            table = _rows_from_json(args.from_json)
        except OSError as exc:
            return _error(f"--from-json {args.from_json}: {exc.strerror or exc}")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(f"--from-json {args.from_json}: not a pytest-benchmark JSON file ({exc})")
    else:
        names = [name for name, spec in ROWS.items()
                 if args.match in name and (spec.ci or not args.ci)]
        if not names:
            return _error(f"-k {args.match!r} matches no row; the rows are: " + "; ".join(ROWS))
        from . import _bench_floors

        try:
            floors = _bench_floors.load()
        except ImportError as exc:
            return _error(str(exc))
        scale = args.rounds * (0.1 if args.quick else 1.0)
        table = []
        for name in names:
            if "numpy" in name and importlib.util.find_spec("numpy") is None:
                print(f"  {name}: skipped (numpy is not installed)", file=sys.stderr)
                continue
            row = build_row(name, floors)
            res = measure(row, max(3, int(row.spec.rounds * scale)))
            table.append((row.spec, res.ours_ns, res.floor_ns))
            print(f"  {name}: {_fmt_ns(res.ours_ns, row.spec.unit)} vs "
                  f"{_fmt_ns(res.floor_ns, row.spec.unit)} -> {res.ratio:.2f}x",
                  file=sys.stderr, flush=True)
            del row, res
            gc.collect()
    if args.from_json and args.ci:
        table = [t for t in table if t[0].ci]
    if args.readme:
        write_readme(args.readme, markdown(table))
    elif args.markdown:
        print(markdown(table))
    else:
        print(_platform_line())
        print(format_table(table))
    missed = [r.name for r, o, f in table if r.meets(r.ratio(o, f)) is False]
    if missed:
        print(f"\n{len(missed)} row(s) miss their target: " + "; ".join(missed),
              file=sys.stderr if args.markdown else sys.stdout)   # the block stays clean
    return 1 if (missed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
