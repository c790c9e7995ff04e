"""Many processes, one page: senders in other processes raise ports on a domain's shared_info
(``xenevtchn.shared_page``) while this process sends through the hypervisor and handles
the upcalls. Nothing is lost and nothing is counted twice:

- every 0 -> 1 edge of a pending bit is reported (``SET_NEWLY``) to exactly one raiser and
  handled exactly once: per port, handlings == NEWLY results;
- every 0 -> 1 edge of ``evtchn_upcall_pending`` is reported (``SET_KICK``, or ``on_kick``
  for the hypervisor's own sends) to exactly one raiser and taken exactly once by the
  handler: upcalls taken == KICK results + on_kick calls;
- every port raised after its last handling is handled again: the raiser publishes a
  sequence number before each raise, the handler reads it after clearing the pending
  bit, and at the end it read the last one of every port.

The senders are spawned processes that run at the same time as the handler and a
hypervisor-side sender thread; every assertion is a count, none a time.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import threading
import time

import pytest

import xenevtchn as xe
from xenevtchn.shared_info import SET_KICK, SET_NEWLY
from xenevtchn.shared_page import SharedPage

SENDERS = 3
OWN_PORTS = 6           # ports only one sender raises (sequence-checked)
SHARED_PORTS = 4        # ports every sender raises (edge-checked)
HV_PORTS = 4            # ports the hypervisor raises for dom0's sends (sequence-checked)
ROUNDS = 2000
TIMEOUT = 120           # a hang fails the test instead of blocking the suite
GEOM = {"x86_64": (2048, 2560, 64), "x86_32": (2048, 2176, 32)}  # pending, mask, bits/word


def sender_main(name: str, own: list[tuple[int, int]], shared: list[tuple[int, int]],
                seq, ready, go, results) -> None:
    """One sender process: raise every port ROUNDS times, stamping own ports' sequence."""
    newly: collections.Counter[int] = collections.Counter()
    kicks = raises = 0
    try:
        with SharedPage.attach(name) as page:
            ready.release()
            if not go.wait(TIMEOUT):
                raise TimeoutError("never told to start")
            for r in range(1, ROUNDS + 1):
                for port, vcpu in own:
                    seq[port] = r                       # published before the raise
                    f = page.raise_port(port, vcpu)
                    newly[port] += f & SET_NEWLY
                    kicks += bool(f & SET_KICK)
                    raises += 1
                for port, vcpu in shared:
                    f = page.raise_port(port, vcpu)
                    newly[port] += f & SET_NEWLY
                    kicks += bool(f & SET_KICK)
                    raises += 1
        results.put(("ok", dict(newly), kicks, raises))
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        results.put(("error", repr(e), 0, 0))


def _world(layout: str):
    """dom0 plus a guest on a SharedPage, with interdomain channels spread over 2 vCPUs."""
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(vcpus=2, privileged=True)
    page = SharedPage.create(layout)
    guest = page.create_domain(hv, vcpus=2)
    chans = []  # (guest port, dom0 port, notify vCPU)
    for i in range(SENDERS * OWN_PORTS + SHARED_PORTS + HV_PORTS):
        gp = guest.alloc_unbound(dom0.domid)
        dp = dom0.bind_interdomain(guest.domid, gp)
        v = i % 2
        guest.bind_vcpu(gp, v)
        chans.append((gp, dp, v))
    # spread the ports over several words: later ones far apart
    return hv, dom0, page, guest, chans


class Handler:
    """The guest's upcall handler, written with SharedInfo's public calls so that it can
    count exactly: it is the only one clearing evtchn_upcall_pending and pending bits."""

    def __init__(self, guest, seq) -> None:
        self.si = guest.shared_info
        self.nv = len(guest.vcpus)
        self.seq = seq
        self.upcalls = 0
        self.handled: collections.Counter[int] = collections.Counter()
        self.seen: dict[int, int] = {}
        pend, mask, self.W = GEOM[self.si.layout]
        self.pend, self.mask = pend, mask

    def _word(self, off: int, w: int) -> int:
        nb = self.W // 8
        return int.from_bytes(self.si.buffer[off + w * nb:off + (w + 1) * nb], "little")

    def sweep(self) -> int:
        """One look at every vCPU; returns the ports handled."""
        si, n = self.si, 0
        for v in range(self.nv):
            if not si.upcall_pending(v):
                continue
            self.upcalls += 1                    # only we clear it: this is a 1 -> 0 edge
            si.set_upcall_pending(v, 0)
            sel = si.take_pending_sel(v)
            while sel:
                w = (sel & -sel).bit_length() - 1
                sel &= sel - 1
                bits = self._word(self.pend, w) & ~self._word(self.mask, w)
                while bits:
                    b = (bits & -bits).bit_length() - 1
                    bits &= bits - 1
                    port = w * self.W + b
                    si.clear_pending(port)       # clear, then read the sequence number
                    self.seen[port] = self.seq[port]
                    self.handled[port] += 1
                    n += 1
        return n


# The handler and the hypervisor-side sender share this process: switch often.
pytestmark = pytest.mark.usefixtures("fast_switching")   # tests/conftest.py


def _run(layout: str, use_guest: bool) -> None:
    ctx = mp.get_context("spawn")
    hv, dom0, page, guest, chans = _world(layout)
    nports = guest.shared_info.nr_ports
    seq = ctx.RawArray("I", nports)
    own = [chans[i * OWN_PORTS:(i + 1) * OWN_PORTS] for i in range(SENDERS)]
    shared = chans[SENDERS * OWN_PORTS:SENDERS * OWN_PORTS + SHARED_PORTS]
    hv_chans = chans[SENDERS * OWN_PORTS + SHARED_PORTS:]
    ready, go = ctx.Semaphore(0), ctx.Event()
    results = ctx.Queue()
    hv_kicks = collections.Counter()
    hv.on_kick = lambda vcpu: hv_kicks.update([(vcpu.domain.domid, vcpu.id)])

    procs = [
        ctx.Process(target=sender_main, daemon=True,
                    args=(page.name, [(g, v) for g, _, v in own[i]], [(g, v) for g, _, v in shared],
                          seq, ready, go, results))
        for i in range(SENDERS)
    ]
    try:
        _handle(hv, dom0, page, guest, procs, seq, ready, go, results, own, shared, hv_chans,
                hv_kicks, use_guest)
    finally:
        go.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(TIMEOUT)
        page.close()


def _handle(hv, dom0, page, guest, procs, seq, ready, go, results, own, shared, hv_chans,
            hv_kicks, use_guest) -> None:
    nports = guest.shared_info.nr_ports
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT
    for _ in procs:   # every sender attached (a sender that dies first fails us at once)
        while not ready.acquire(timeout=0.1):
            dead = [p.exitcode for p in procs if p.exitcode is not None]
            assert not dead, f"a sender exited early: {dead} {results.get(timeout=1)}"
            assert time.monotonic() < deadline, "senders did not attach"

    hv_error: list[BaseException] = []

    def hv_sender() -> None:   # dom0 sends through the hypervisor at the same time
        try:
            go.wait(TIMEOUT)
            for r in range(1, ROUNDS + 1):
                for gp, dp, _ in hv_chans:
                    seq[gp] = r
                    dom0.send(dp)
        except BaseException as e:  # noqa: BLE001
            hv_error.append(e)

    t = threading.Thread(target=hv_sender, daemon=True)
    t.start()

    if use_guest:
        handled: collections.Counter[int] = collections.Counter()
        seen: dict[int, int] = {}

        def on_port(port: int) -> None:
            handled[port] += 1
            seen[port] = seq[port]            # do_upcall cleared the bit before calling us

        def sweep() -> int:
            return sum(len(guest.guest.do_upcall(v, on_port)) for v in range(len(guest.vcpus)))
    else:
        h = Handler(guest, seq)
        handled, seen, sweep = h.handled, h.seen, h.sweep

    go.set()
    while any(p.is_alive() for p in procs) or t.is_alive():
        sweep()
        assert time.monotonic() < deadline, "senders did not finish"
    t.join()
    got = [results.get(timeout=TIMEOUT) for _ in procs]
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0, f"sender exited with {p.exitcode}"
    assert not hv_error, hv_error
    bad = [g for g in got if g[0] != "ok"]
    assert not bad, bad
    while sweep():      # drain what the last raises left
        pass

    # the page is quiet: nothing pending, no selector bit, no upcall flag
    si = guest.shared_info
    assert not any(si.is_pending(p) for p in range(nports))
    assert all(si.pending_sel(v) == 0 and si.upcall_pending(v) == 0 for v in range(2))

    newly: collections.Counter[int] = collections.Counter()
    kicks = raises = 0
    for _, n, k, r in got:
        newly.update({int(p): c for p, c in n.items()})
        kicks += k
        raises += r
    assert raises == SENDERS * ROUNDS * (OWN_PORTS + SHARED_PORTS)
    # every pending edge a sender made was handled exactly once ...
    for gp, _, _ in [*[c for o in own for c in o], *shared]:
        assert handled[gp] == newly[gp] >= 1, (gp, handled[gp], newly[gp])
    # ... nothing else was handled but the hypervisor's ports ...
    hv_ports = {gp for gp, _, _ in hv_chans}
    assert set(handled) - set(newly) <= hv_ports
    # ... and the last raise of every port was seen after its last handling
    for gp, _, _ in [*[c for o in own for c in o], *hv_chans]:
        assert seen.get(gp) == ROUNDS, (gp, seen.get(gp))
    if not use_guest:
        # every upcall-flag edge was reported to exactly one raiser and taken once
        ours = sum(c for (dom, _), c in hv_kicks.items() if dom == guest.domid)
        assert h.upcalls == kicks + ours, (h.upcalls, kicks, ours)


@pytest.mark.parametrize("layout", ["x86_64", "x86_32"])
def test_processes_exact_edges(layout):
    """Senders in 3 processes plus the hypervisor, an exact-counting handler here."""
    _run(layout, use_guest=False)


def test_processes_with_guest_upcalls():
    """The same with the guest's own Linux upcall (d.guest.do_upcall) as the handler."""
    _run("x86_64", use_guest=True)


def test_shared_page_attach_sees_the_domain():
    """The attaching side learns layout, domid and vCPUs from the page alone, and its raises
    are the domain's events (seen by status, do_upcall and the hypervisor's poll check)."""
    hv = xe.Hypervisor()
    page = SharedPage.create("x86_32")
    try:
        d = page.create_domain(hv, vcpus=3)
        port = d.bind_ipi(2)
        with SharedPage.attach(page.name) as other:
            assert (other.layout, other.domid, other.nr_vcpus) == ("x86_32", d.domid, 3)
            assert other.raise_port(port, 2) == SET_NEWLY | SET_KICK
            assert other.raise_port(port, 2) == 0          # coalesced
        assert d.shared_info.is_pending(port) and d.vcpus[2].upcall_pending == 1
        assert d.sched_poll([port], vcpu=1) is True
        assert d.guest.do_upcall(2) == [port]
    finally:
        page.close()
