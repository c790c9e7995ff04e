"""Python threads on the guest side and the hypervisor side at once (tests/test_threads.py
covers concurrent binds, sends, closes and polls; this adds what it leaves out):

- the guest handling upcalls on each of its vCPUs (``d.guest.do_upcall``, one thread per
  vCPU) while other threads send (single and batched), raise VIRQs and IPIs, mask and
  unmask ports (the guest's local unmask, the unmask hypercall from another vCPU, the raw
  hypercall) and bind/send/close unrelated channels on the same domains;
- a libxenevtchn handle whose reader pops and re-arms ports while others send to them;
- a domain destroyed while other threads are sending to it and from it.

The no-lost-event rule: each raiser writes a sequence number before every raise, the
handler reads it after the pending bit was cleared (``do_upcall`` clears before calling
the handler; a handle's port is cleared when it is queued), so once everything has
stopped and one final upcall has run, the handler must have read every port's last
sequence number. Afterwards the port tables are checked with test_fuzz_entry's checker.
Every assertion is deterministic (no timing threshold); thread switches are forced often.
"""

from __future__ import annotations

import errno
import os
import random
import struct
import threading
from array import array

import pytest

import xenevtchn as xe
from test_fuzz_entry import check_consistency, make_world
from test_threads import run_threads

SCALE = int(os.environ.get("XENEVTCHN_THREADS_SCALE", "1"))  # > 1 for long stress runs
ROUNDS = 3000 * SCALE


pytestmark = pytest.mark.usefixtures("fast_switching")   # tests/conftest.py


def test_upcalls_masks_sends_and_churn_lose_nothing():
    hv, doms = make_world()
    d0, g, d2, d3 = doms                     # g: 3 vCPUs, Linux guest
    nv = len(g.vcpus)
    seq: dict[int, int] = {}                 # g port -> last sequence number raised
    seen: dict[int, int] = {}                # g port -> number read after clearing
    sources = []                             # (raise function, g port)

    # interdomain channels from dom0, three senders own 6 each, notify vCPU spread
    owned: list[list[tuple[int, int]]] = [[] for _ in range(3)]
    for i in range(18):
        gp = g.alloc_unbound(d0.domid)
        dp = d0.bind_interdomain(g.domid, gp)
        g.bind_vcpu(gp, i % nv)
        owned[i % 3].append((dp, gp))
        seq[gp] = 0
    timers = {v: g.bind_virq(xe.VIRQ_TIMER, v) for v in range(nv)}   # per-vCPU VIRQ
    ipis = {v: g.bind_ipi(v) for v in range(nv)}
    for p in [*timers.values(), *ipis.values()]:
        seq[p] = 0
    tracked = sorted(seq)
    stop_masker, stop_upcalls = threading.Event(), threading.Event()
    masked_now: set[int] = set()
    counts = {"handled": 0, "masks": 0}

    def handler(port: int) -> None:
        if port in seq:
            seen[port] = seq[port]           # read after do_upcall cleared the bit
            counts["handled"] += 1

    def upcall_thread(v: int) -> None:
        while not stop_upcalls.is_set():
            g.guest.do_upcall(v, handler)

    def sender(i: int) -> None:
        rng = random.Random(i)
        mine = owned[i]
        batch = array("I", [dp for dp, _ in mine])
        for r in range(ROUNDS):
            if r % 5 == 4:
                for _, gp in mine:
                    seq[gp] += 1
                d0.send_many(batch)
            else:
                dp, gp = mine[rng.randrange(len(mine))]
                seq[gp] += 1
                d0.send(dp)

    def virq_ipi_sender() -> None:
        rng = random.Random(7)
        for _ in range(ROUNDS):
            v = rng.randrange(nv)
            seq[timers[v]] += 1
            hv.send_virq(g.domid, xe.VIRQ_TIMER, v)
            w = rng.randrange(nv)
            seq[ipis[w]] += 1
            g.send(ipis[w])

    def masker() -> None:
        rng = random.Random(11)
        arg = bytearray(4)
        while not stop_masker.is_set():
            p = tracked[rng.randrange(len(tracked))]
            g.guest.mask(p)
            masked_now.add(p)
            counts["masks"] += 1
            for _ in range(rng.randrange(3)):
                threading.Event().wait(0)    # let events arrive while it is masked
            how = rng.randrange(4)
            notify = g.status(p).vcpu
            if how == 0:
                g.guest.unmask(p)                          # local, on its own vCPU
            elif how == 1:
                g.guest.unmask(p, vcpu=(notify + 1) % nv)  # from elsewhere: the hypercall
            elif how == 2:
                g.unmask(p)
            else:
                struct.pack_into("<I", arg, 0, p)
                assert g.event_channel_op(xe.EVTCHNOP_unmask, arg) == 0
            masked_now.discard(p)

    def churn() -> None:
        rng = random.Random(13)
        while not stop_masker.is_set():
            a, b = rng.choice([(d0, g), (g, d0), (g, g), (d2, g), (g, d2)])
            pa = a.alloc_unbound(b.domid)
            pb = b.bind_interdomain(a.domid, pa)
            a.send(pa)
            b.send(pb)
            if rng.randrange(2):             # either end may close first
                a.close(pa)
                b.close(pb)
            else:
                b.close(pb)
                a.close(pa)
            ipi = g.bind_ipi(rng.randrange(nv))
            g.send(ipi)
            g.close(ipi)

    senders_done = threading.Semaphore(0)

    def counted(fn, *args):
        def run():
            try:
                fn(*args)
            finally:
                senders_done.release()
        return run

    def stopper() -> None:
        try:
            for _ in range(4):
                assert senders_done.acquire(timeout=100), "senders did not finish"
        finally:
            stop_masker.set()

    targets = [(f"upcall{v}", upcall_thread, (v,)) for v in range(nv)]
    targets += [(f"sender{i}", counted(sender, i), ()) for i in range(3)]
    targets += [("virq_ipi", counted(virq_ipi_sender), ()),
                ("masker", masker, ()), ("churn", churn, ()), ("stopper", stopper, ())]

    def stop_upcalls_after_others():
        stop_masker.wait(110)
        stop_upcalls.set()

    targets.append(("upcall_stopper", stop_upcalls_after_others, ()))
    run_threads(targets, timeout=120)

    assert not masked_now
    for v in range(nv):                      # the final upcall on every vCPU
        g.guest.do_upcall(v, handler)
    lost = {p: (seen.get(p), seq[p]) for p in tracked if seen.get(p) != seq[p]}
    assert not lost, f"events lost (port: (last seen, last raised)): {lost}"
    assert not any(g.shared_info.is_pending(p) for p in tracked)
    assert counts["handled"] > 0 and counts["masks"] > 0
    check_consistency(hv, doms)


def test_handle_reader_against_senders():
    """A XenEvtchn handle of dom0: two guest threads send on its ports while a reader
    thread pops each delivered port and re-arms it; nothing is lost."""
    hv, doms = make_world()
    d0, g = doms[0], doms[1]
    h = xe.XenEvtchn(d0)
    pairs = []
    for _ in range(8):
        hp = h.bind_unbound_port(g.domid)
        pairs.append((hp, g.bind_interdomain(d0.domid, hp)))
    while (p := h.pending()) is not None:
        h.unmask(p)
    seq = {hp: 0 for hp, _ in pairs}
    seen: dict[int, int] = {}
    stop = threading.Event()

    def sender(i: int) -> None:
        mine = pairs[i::2]
        batch = array("I", [gp for _, gp in mine])
        for r in range(ROUNDS * 2):
            if r % 4 == 3:
                for hp, _ in mine:
                    seq[hp] += 1
                g.send_many(batch)
            else:
                hp, gp = mine[r % len(mine)]
                seq[hp] += 1
                g.send(gp)

    def reader() -> None:
        while not stop.is_set():
            p = h.pending()
            if p is None:
                continue
            seen[p] = seq[p]                 # the port was cleared when it was queued
            h.unmask(p)

    done = threading.Semaphore(0)

    def counted(i):
        try:
            sender(i)
        finally:
            done.release()

    def stopper():
        try:
            for _ in range(2):
                assert done.acquire(timeout=100)
        finally:
            stop.set()

    run_threads([("s0", counted, (0,)), ("s1", counted, (1,)), ("reader", reader, ()),
                 ("stopper", stopper, ())], timeout=120)
    while (p := h.pending()) is not None:
        seen[p] = seq[p]
        h.unmask(p)
    lost = {p: (seen.get(p), seq[p]) for p in seq if seen.get(p) != seq[p]}
    assert not lost, f"events lost (port: (last seen, last raised)): {lost}"
    h.close()
    check_consistency(hv, doms)


def test_destroy_while_sending():
    """Threads send to and from a domain while it is destroyed (and its domid reused):
    every call returns or raises EvtchnError, the survivors' tables stay consistent."""
    hv, doms = make_world()
    d0 = doms[0]
    bad = []
    for k in range(6 * SCALE):
        victim = hv.create_domain(vcpus=2, domid=10)
        out = [d0.bind_interdomain(10, victim.alloc_unbound(0)) for _ in range(4)]
        back = [victim.bind_interdomain(0, d0.alloc_unbound(10)) for _ in range(4)]
        ipi = victim.bind_ipi(1)
        go = threading.Barrier(3, timeout=30)
        stop = threading.Event()

        def hammer(fn, ports):
            go.wait()
            batch = array("I", ports)
            while not stop.is_set():
                try:
                    fn(batch)
                except xe.EvtchnError as e:
                    if e.errno not in (errno.ESRCH, errno.EINVAL):
                        bad.append(e)
                    return

        def destroyer(victim=victim):
            go.wait()
            for _ in range(50):
                threading.Event().wait(0)
            hv.destroy_domain(10)
            stop.set()

        run_threads([("d0", hammer, (d0.send_many, out)),
                     ("victim", hammer, (victim.send_many, [*back, ipi])),
                     ("destroyer", destroyer, ())], timeout=60, barriers=(go,))
        assert victim.dead
        with pytest.raises(xe.EvtchnError) as ei:
            victim.send(ipi)
        assert ei.value.errno == errno.ESRCH
        for p in out:                        # the survivors' ends fell back to unbound
            st = d0.status(p)
            assert (int(st.status), st.dom) == (xe.EVTCHNSTAT_unbound, 10)
            d0.send(p)                       # dropped, no error
            d0.close(p)
        for p in range(1, 64):
            if int(d0.status(p).status) == xe.EVTCHNSTAT_unbound and d0.status(p).dom == 10:
                d0.close(p)
    assert not bad, bad
    check_consistency(hv, doms)
