"""Python threads on the native implementation.

Several worker threads bind, send, unmask, rebind and close event channels at the same
time on the same domains (each thread its own channels, plus some shared by all), a
consumer thread takes pending bits off the owned channels as a guest would (atomically,
through ``SharedInfo.clear_pending``), and a few threads fight over the same VIRQ and PIRQ.
Thread switches are forced very often (``sys.setswitchinterval``) so that the Python
control plane is interleaved at fine grain.

Everything asserted is deterministic: each thread's own results (ports it was given are
its own, peers report what it bound, no errno other than the expected ones), and after
all threads have joined: consistent tables (interdomain peers agree, no VIRQ/PIRQ bound
twice, every status sane), every shared channel's receiver pending, and no lost event on
the owned channels: the receiver port is pending, or the consumer cleared it after the
thread's last send (it reads the sender's sequence number *after* clearing, as a guest
reads a ring after clearing the pending bit).
"""

from __future__ import annotations

import errno
import os
import random
import sys
import threading
import time

import pytest

import xenevtchn as xe
from test_fuzz_entry import check_consistency, make_world, scan

SCALE = int(os.environ.get("XENEVTCHN_THREADS_SCALE", "1"))  # > 1 for long stress runs
WORKERS = 6
ROUNDS = 150 * SCALE  # per worker
SENDS = 8  # per channel per round
KEEP_EVERY = 3  # every 3rd channel a worker creates stays open to the end ...
KEEP_MAX = 50  # ... up to this many per worker (the x86_32 domain has 1023 ports)


@pytest.fixture
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(targets, timeout=60, barriers=()):
    """Run (name, fn, args) targets as daemon threads; re-raise the first failure. A failing
    thread aborts ``barriers`` so that its partners do not wait forever."""
    errors = []

    def wrap(fn, *args):
        def run():
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - reported in the main thread
                errors.append((threading.current_thread().name, e))
                for b in barriers:
                    b.abort()

        return run

    threads = [
        threading.Thread(target=wrap(fn, *args), name=name, daemon=True)
        for name, fn, args in targets
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if errors:
        errors.sort(key=lambda ne: isinstance(ne[1], threading.BrokenBarrierError))
        name, e = errors[0]
        raise AssertionError(f"{len(errors)} thread(s) failed; first: {name}: {e!r}") from e
    assert not alive, f"threads still running after {timeout}s (deadlock?): {alive}"


def status_t(d, port, dom=xe.DOMID_SELF):
    s = d.status(port, dom=dom)
    return (int(s.status), s.vcpu, s.dom, s.port, s.pirq, s.virq)


def test_concurrent_bind_send_close(fast_switching):
    hv, doms = make_world()
    d0, d1, d2, d3 = doms
    big = [d0, d1, d2]  # domains with room for many ports (d3 has max_evtchn_port = 70)

    # Shared channels, set up before the threads start; every worker sends on them.
    shared = []  # (sender domain, sender port, receiver domain, receiver port)
    for a, b in [(d0, d1), (d1, d0), (d2, d1), (d3, d0), (d1, d1)]:
        pb = b.alloc_unbound(a.domid)
        pa = a.bind_interdomain(b.domid, pb)
        shared.append((a, pa, b, pb))
    shared_ipi = [(d, d.bind_ipi(len(d.vcpus) - 1)) for d in doms]
    for a, pa, b, pb in shared:  # bind_interdomain left pa pending: take it off
        a.shared_info.clear_pending(pa)

    lock = threading.Lock()
    consumable = []  # (channel id, receiver domain, receiver port) for the consumer
    gen = {}  # channel id -> last sequence number the sender published before sending
    seen = {}  # channel id -> sequence number the consumer read after clearing pending
    final = {}  # channel id -> the sender's last sequence number
    kept_ipis = []
    stop = threading.Event()

    def consumer():
        while not stop.is_set():
            with lock:
                items = list(consumable)
            for cid, dom, port in items:
                si = dom.shared_info
                if si.is_pending(port):
                    si.clear_pending(port)
                    seen[cid] = gen[cid]  # read after clearing (guest ring protocol)
            time.sleep(0)

    workers_done = threading.Semaphore(0)

    def worker(i):
        try:
            work(i)
        finally:
            workers_done.release()

    def work(i):
        rng = random.Random(1000 + i)
        for rnd in range(ROUNDS):
            A = rng.choice(big)
            B = rng.choice(big)  # may be A itself: a loopback channel
            pa = A.alloc_unbound(B.domid)
            assert status_t(A, pa) == (1, 0, B.domid, None, None, None), (i, rnd)
            pb = B.bind_interdomain(A.domid, pa)
            assert pb != pa or A is not B
            assert status_t(B, pb) == (2, 0, A.domid, pa, None, None), (i, rnd)
            assert status_t(A, pa) == (2, 0, B.domid, pb, None, None), (i, rnd)
            cid = (i, rnd)
            keep = rnd % KEEP_EVERY == 0 and rnd < KEEP_MAX * KEEP_EVERY
            gen[cid] = 0
            if keep:
                with lock:
                    consumable.append((cid, B, pb))
            v = rng.randrange(len(B.vcpus))
            B.bind_vcpu(pb, v)
            ipi = A.bind_ipi(rng.randrange(len(A.vcpus)))
            for k in range(1, SENDS + 1):
                gen[cid] = k
                A.send(pa)
                A.send(ipi)
                sa, spa, _, _ = shared[rng.randrange(len(shared))]
                sa.send(spa)
                sd, sp = shared_ipi[rng.randrange(len(shared_ipi))]
                sd.send(sp)
                if k % 3 == 0:
                    A.send_many([pa, ipi, pa])
                    B.unmask(pb)
                    A.unmask(ipi)
            final[cid] = gen[cid]
            if not keep:
                # close one end first; the other becomes unbound naming the closer
                if rng.randrange(2):
                    A.close(pa)
                    assert status_t(B, pb) == (1, v, A.domid, None, None, None), (i, rnd)
                    B.close(pb)
                else:
                    B.close(pb)
                    assert status_t(A, pa) == (1, 0, B.domid, None, None, None), (i, rnd)
                    A.close(pa)
                A.close(ipi)
            else:
                with lock:
                    kept_ipis.append((A, ipi))

    targets = [(f"worker{i}", worker, (i,)) for i in range(WORKERS)]
    targets.append(("consumer", consumer, ()))
    stopper_done = threading.Event()

    def stopper():  # stop the consumer once every worker is done
        try:
            for _ in range(WORKERS):
                assert workers_done.acquire(timeout=50), "workers did not finish"
        finally:
            stop.set()
        stopper_done.set()

    targets.append(("stopper", stopper, ()))
    run_threads(targets)
    assert stopper_done.is_set()

    # no lost event on owned channels that stayed open
    kept = [(cid, dom, port) for cid, dom, port in consumable]
    assert len(kept) == WORKERS * min(KEEP_MAX, len(range(0, ROUNDS, KEEP_EVERY)))
    for cid, dom, port in kept:
        pending = dom.shared_info.is_pending(port)
        assert pending or seen.get(cid) == final[cid], (
            f"channel {cid}: dom{dom.domid}:{port} not pending and the consumer saw "
            f"sequence {seen.get(cid)} of {final[cid]}: an event was lost"
        )
    # every shared channel's receiver got its events (nobody consumes those)
    for a, pa, b, pb in shared:
        assert b.shared_info.is_pending(pb), f"shared dom{a.domid}:{pa} -> dom{b.domid}:{pb} lost"
    for d, p in shared_ipi:
        assert d.shared_info.is_pending(p), f"shared IPI dom{d.domid}:{p} lost"

    # consistent tables; exactly the channels we expect are open
    table = check_consistency(hv, doms)
    open_ports = {dom: {p for p, s in ports.items() if s[0] != 0} for dom, ports in table.items()}
    expected = {d.domid: set() for d in doms}
    for a, pa, b, pb in shared:
        expected[a.domid].add(pa)
        expected[b.domid].add(pb)
    for d, p in shared_ipi:
        expected[d.domid].add(p)
    for cid, dom, port in kept:
        expected[dom.domid].add(port)
        peer = table[dom.domid][port]
        assert peer[0] == 2
        expected[peer[2]].add(peer[3])
    for d, p in kept_ipis:
        assert table[d.domid][p][0] == 5
        expected[d.domid].add(p)
    assert len(kept_ipis) == len(kept)
    assert open_ports == expected, "open ports differ from the channels the threads kept"


def test_concurrent_virq_pirq_contention(fast_switching):
    """Threads race to bind the same VIRQ / PIRQ of one domain: at any time at most one
    binding exists (the losers get EEXIST), and every winner can close its port."""
    hv, doms = make_world()
    d0, d1 = doms[0], doms[1]
    hv.permit_pirq(1, 1)
    wins = {}
    attempts = 1000 * SCALE

    def fighter(i):
        rng = random.Random(i)
        w = 0
        for _ in range(attempts):
            what = rng.randrange(4)
            try:
                if what == 0:
                    p = d1.bind_virq(xe.VIRQ_DEBUG, 0)
                elif what == 1:
                    p = d1.bind_virq(xe.VIRQ_TIMER, 1)
                elif what == 2:
                    p = d1.bind_pirq(1, 0)
                else:
                    p = d0.bind_virq(xe.VIRQ_CONSOLE, 0)  # global: dom0 is the handler
            except xe.EvtchnError as e:
                assert e.errno == errno.EEXIST, f"bind: {e!r}"
                continue
            w += 1
            dom = d0 if what == 3 else d1
            s = status_t(dom, p)
            assert s[0] in (3, 4), s  # still ours: nobody else may close it
            if what < 3:
                hv.send_virq(1, xe.VIRQ_DEBUG, 0) if what == 0 else hv.send_pirq(1, 1)
            dom.close(p)
        wins[i] = w

    run_threads([(f"fighter{i}", fighter, (i,)) for i in range(WORKERS)])
    assert sum(wins.values()) > 0
    table = check_consistency(hv, doms)
    assert all(s[0] == 0 for ports in table.values() for s in ports.values())


def test_concurrent_alloc_exhaustion(fast_switching):
    """Threads allocate in the small domain (max_evtchn_port = 70) until -ENOSPC: every
    port is handed out exactly once and all 70 are handed out."""
    hv, doms = make_world()
    d0, d3 = doms[0], doms[3]
    got = {}

    def allocator(i):
        mine = []
        while True:
            try:
                # dom0 allocating in dom3 (privileged) and dom3 itself, interleaved
                p = d0.alloc_unbound(0, dom=3) if len(mine) % 2 else d3.alloc_unbound(0)
            except xe.EvtchnError as e:
                assert e.errno == errno.ENOSPC, repr(e)
                break
            mine.append(p)
        got[i] = mine

    run_threads([(f"alloc{i}", allocator, (i,)) for i in range(WORKERS)])
    allp = [p for ps in got.values() for p in ps]
    assert sorted(allp) == list(range(1, 71)), "ports handed out twice or not at all"
    table = scan(hv, doms)
    assert all(table[3][p][:3] == (1, 0, 0) for p in range(1, 71))


@pytest.mark.parametrize("ports_kind", ["single", "multi"])
def test_poll_vs_send_no_lost_wakeup(fast_switching, ports_kind):
    """One thread polls a vCPU on a port while another sends on it (spec §10.1: the vCPU
    is marked polling before the ports are checked, so a racing send cannot slip between
    the check and the block). After both calls of a round have returned, the port is
    pending, so the vCPU must not be left polling."""
    hv, doms = make_world()
    d1 = doms[1]
    port = d1.bind_ipi(1)
    other = d1.bind_ipi(2)
    d1.shared_info.mask(port)  # masked: no upcall/kick, only the poller check can wake it
    d1.shared_info.mask(other)
    v = d1.vcpus[1]
    # (a zero-port poll is left out: it does not look at already-pending ports, so a send
    # that lands before it legitimately leaves the vCPU polling)
    polls = {"single": [port], "multi": [other, port]}[ports_kind]
    rounds = 1500 * SCALE
    start = threading.Barrier(2, timeout=20)
    done = threading.Barrier(2, timeout=20)
    results = []

    def poller():
        for _ in range(rounds):
            start.wait()
            results.append(d1.sched_poll(polls, vcpu=1))
            done.wait()
            done.wait()  # the sender checks and resets between these

    def sender():
        rng = random.Random(7)
        for r in range(rounds):
            start.wait()
            for _ in range(rng.randrange(0, 40)):  # vary where the send lands
                pass
            d1.send(port)
            done.wait()
            assert d1.shared_info.is_pending(port)
            assert not v.polling, f"round {r}: vCPU still polling on a pending port (lost wakeup)"
            d1.shared_info.clear_pending(port)
            done.wait()

    run_threads([("poller", poller, ()), ("sender", sender, ())], barriers=(start, done))
    assert len(results) == rounds
    assert all(isinstance(x, bool) for x in results)
