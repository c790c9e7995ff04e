"""Exceptions at any instant: a signal handler's, a hook's, one between two C calls.

Issue 14 item 3. CPython runs a signal handler between bytecodes, so an exception it
raises (KeyboardInterrupt, an alarm) can land between any two steps of an upcall or a
send. Whatever it interrupts, afterwards every vCPU must still deliver (its upcall
nesting count is not left "running") and every kick the hypervisor owed must have been
made (a vCPU whose kick was dropped keeps its upcall flag set and is never kicked again).

* A storm: an interval timer (0.3 ms) whose handler raises ``Alarm`` (a BaseException,
  like KeyboardInterrupt) whenever it lands in the package's own Python code or in a
  Python hook, while a kick-driven guest runs many iterations of sends, upcalls and hooks,
  in all three guest modes (Linux 2-level, Mini-OS, FIFO). The guest runs ``do_upcall``
  only for vCPUs it was kicked for (a builtin listener queues them) and retries an
  interrupted upcall. Afterwards no vCPU's upcall flag is left set, nothing is pending,
  and a fresh send to each vCPU kicks it once and its upcall returns that port.
* Deterministic cases: an exception right after the C call that enters the nesting count
  (or begins a FIFO scan), and hooks that raise BaseException, with every other hook owed
  by the same call still run.
"""

from __future__ import annotations

import os
import random
import signal
from collections import deque

import pytest

import xenevtchn as xe
from xenevtchn import guest as guest_mod
from fifohelpers import PENDING, fifo_domain

PKG = os.path.dirname(xe.__file__) + os.sep
NV = 3
PORTS_PER_VCPU = 24
ITERATIONS = 6000
INTERVAL = 0.0003

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")


class Alarm(BaseException):
    """What the timer's handler raises: not an Exception, as KeyboardInterrupt is not."""


MODES = ["linux", "linux-handler", "linux-noslot", "minios", "minios-handler", "fifo",
         "fifo-handler"]


def _world(mode: str, monkeypatch):
    if "noslot" in mode:
        from xenevtchn import domain as domain_mod
        monkeypatch.setattr(domain_mod._Slot, "take", classmethod(lambda cls, cdom: None))  # no slot
    hv = xe.Hypervisor()
    if mode.startswith("fifo"):
        d, f = fifo_domain(hv, vcpus=NV, pages=1)
    else:
        d, f = hv.create_domain(vcpus=NV, guest=mode.split("-")[0]), None
    ports = {v: [d.bind_ipi(v) for _ in range(PORTS_PER_VCPU)] for v in range(NV)}
    spare = d.alloc_unbound(0, 0)   # a send to it delivers nothing (flushes owed hooks)
    return hv, d, f, ports, spare


def _pending(d, f, port: int) -> bool:
    if f is not None:
        return bool(f.word(port) & PENDING)
    return d.shared_info.is_pending(port)


@pytest.mark.parametrize("mode", MODES)
def test_storm_of_signal_exceptions(mode, monkeypatch):
    hv, d, f, ports, spare = _world(mode, monkeypatch)
    todo: deque = deque()                 # vCPUs kicked and not yet served (the guest's)
    kicks = [0] * NV
    handled: list[int] = []
    handler = handled.append if mode.endswith("handler") else None

    def on_kick(vcpu) -> None:            # a Python hook: exceptions can land in it
        kicks[vcpu.id] += 1

    hv.on_kick = on_kick
    hv.add_listener("kick", todo.append)  # a builtin: runs to its end whenever it is called
    hits = {"n": 0}
    targets = {on_kick.__code__}

    def on_alarm(signum, frame):
        if frame is not None and (frame.f_code in targets or frame.f_code.co_filename.startswith(PKG)):
            hits["n"] += 1
            raise Alarm

    def serve() -> None:
        # The guest: an upcall on each vCPU it was kicked for, retried until it returns.
        while todo:
            v = todo[0].id
            try:
                if handler is None:
                    d.guest.do_upcall(v)
                else:
                    d.guest.do_upcall(v, handler)
            except Alarm:
                continue
            todo.popleft()

    rng = random.Random(1414)
    flat = [p for v in range(NV) for p in ports[v]]
    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, INTERVAL, INTERVAL)
        for _ in range(ITERATIONS):
            batch = rng.sample(flat, rng.randrange(1, 8))
            try:
                if len(batch) > 3:
                    d.send_many(batch)
                else:
                    for p in batch:
                        d.send(p)
            except Alarm:
                pass
            serve()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits["n"] > 0, "the timer never interrupted the package: the test proved nothing"

    # Kicks a send recorded but never ran (interrupted before its hook runner) run at the
    # next send on the hypervisor.
    d.send(spare)
    serve()
    for v in range(NV):
        assert not d.vcpus[v].upcall_pending, (
            f"{mode}: vCPU {v} has its upcall flag set but was never kicked for it "
            f"({hits['n']} exceptions injected)")
    left = [p for p in flat if _pending(d, f, p)]
    assert not left, f"{mode}: ports still pending after every kick was served: {left[:10]}"

    # Every vCPU still delivers, and is kicked exactly once for a fresh event.
    for v in range(NV):
        before = kicks[v]
        d.send(ports[v][0])
        assert kicks[v] == before + 1, f"{mode}: vCPU {v} was not kicked"
        assert [x.id for x in todo] == [v]
        todo.clear()
        got = d.guest.do_upcall(v) if handler is None else d.guest.do_upcall(v, handler)
        assert got == [ports[v][0]], f"{mode}: vCPU {v} no longer delivers (got {got})"


# ---------------------------------------------------------------- deterministic cases


class _RaiseAfter:
    """Stands in for the C library: the named call runs, then KeyboardInterrupt is raised
    once, as a signal handler's exception landing right after that C call returns."""

    def __init__(self, lib, names):
        self._lib, self._names, self.fired = lib, names, 0

    def __getattr__(self, name):
        fn = getattr(self._lib, name)
        if not name.startswith(self._names):
            return fn

        def wrapped(*args):
            r = fn(*args)
            if not self.fired:
                self.fired += 1
                raise KeyboardInterrupt
            return r

        return wrapped


@pytest.mark.parametrize("mode", ["linux", "minios", "fifo"])
@pytest.mark.parametrize("handler", [False, True])
def test_exception_right_after_upcall_enter(mode, handler, monkeypatch):
    hv = xe.Hypervisor()
    if mode == "fifo":
        d, _ = fifo_domain(hv, vcpus=2)
    else:
        d = hv.create_domain(vcpus=2, guest=mode)
    p = d.bind_ipi(1)
    h = [].append if handler else None
    proxy = _RaiseAfter(guest_mod.lib, "xe_upcall_enter")
    monkeypatch.setattr(guest_mod, "lib", proxy)
    d.send(p)
    with pytest.raises(KeyboardInterrupt):
        # the checked method: the builtin fast path has no Python between its C calls
        type(d.guest).do_upcall(d.guest, 1, h)
    assert proxy.fired == 1
    assert d.guest.do_upcall(1, h) == [p], "the vCPU's upcall stayed 'running' for good"
    d.send(p)
    assert d.guest.do_upcall(1, h) == [p]


@pytest.mark.parametrize("handler", [False, True])
def test_exception_right_after_fifo_scan_begin(handler, monkeypatch):
    hv = xe.Hypervisor()
    d, _ = fifo_domain(hv, vcpus=2)
    ports = [d.bind_ipi(0) for _ in range(5)]
    h = [].append if handler else None
    proxy = _RaiseAfter(guest_mod.lib, "xe_fifo_scan_begin")
    monkeypatch.setattr(guest_mod, "lib", proxy)
    d.send_many(ports)
    with pytest.raises(KeyboardInterrupt):
        d.guest.do_upcall(0, h)
    assert proxy.fired == 1
    # the queue the interrupted pass had taken is served by the next upcall
    assert d.guest.do_upcall(0, h) == ports


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, ValueError])
def test_a_raising_hook_does_not_drop_the_other_owed_hooks(exc):
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=3)
    ports = [d.bind_ipi(v) for v in range(3)]
    kicked, listened = [], []

    def on_kick(vcpu):
        kicked.append(vcpu.id)
        if vcpu.id != 2:
            raise exc(f"hook on {vcpu.id}")

    def listener(vcpu):
        listened.append(vcpu.id)
        raise KeyboardInterrupt("listener")

    hv.on_kick = on_kick
    hv.add_listener("kick", listener)
    with pytest.raises(exc) as ei:
        d.send_many(ports)          # one call owes a kick to each of the three vCPUs
    assert str(ei.value) == "hook on 0"       # the first exception, after all ran
    assert kicked == [0, 1, 2] and listened == [0, 1, 2]
    # and those vCPUs are kicked again once their upcalls ran
    for v in range(3):
        assert d.guest.do_upcall(v) == [ports[v]]
    kicked.clear()
    listened.clear()
    hv.on_kick = kicked.append
    hv.remove_listener("kick", listener)
    d.send_many(ports)
    assert [v.id for v in kicked] == [0, 1, 2]


def test_a_raising_wake_hook_does_not_drop_the_kicks():
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    p0, p1 = d.bind_ipi(0), d.bind_ipi(1)
    calls = []

    def on_wake(vcpu):
        calls.append(("wake", vcpu.id))
        raise KeyboardInterrupt

    hv.on_kick = lambda vcpu: calls.append(("kick", vcpu.id))
    hv.on_wake = on_wake
    assert d.sched_poll([p0], vcpu=0) is False     # vCPU 0 blocks polling p0
    with pytest.raises(KeyboardInterrupt):
        d.send_many([p0, p1])
    assert calls == [("kick", 0), ("wake", 0), ("kick", 1)]


def test_exception_right_after_poll_begin(monkeypatch):
    from xenevtchn import sched as sched_mod
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    p = d.bind_ipi(1)
    proxy = _RaiseAfter(sched_mod.lib, "xe_poll_begin")
    monkeypatch.setattr(sched_mod, "lib", proxy)
    with pytest.raises(KeyboardInterrupt):
        d.sched_poll([p], vcpu=1)
    assert proxy.fired == 1
    # the interrupted call did not leave vCPU 1 blocked: it can poll again, and is woken
    assert d.sched_poll([p], vcpu=1) is False
    woken = []
    hv.on_wake = woken.append
    d.send(p)
    assert [v.id for v in woken] == [1]
