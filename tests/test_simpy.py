"""The SimPy adapter: kicks and wake-ups as SimPy events on SimPy's clock, and the example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import simpy

import xenevtchn as xe
from xenevtchn.simpy_adapter import SimPyAdapter

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "simpy_vcpus.py"


def setup(ns_per_unit: int = 1000):
    env = simpy.Environment()
    hv = xe.Hypervisor()
    adapter = SimPyAdapter(env, hv, ns_per_unit)
    d = hv.create_domain(vcpus=2)
    return env, hv, adapter, d


def test_a_vcpu_process_sleeps_until_the_kick():
    env, hv, adapter, d = setup()
    ipi = d.bind_ipi(vcpu=1)
    seen = []

    def vcpu1():
        v = yield adapter.upcall(d.vcpus[1])
        seen.append((env.now, hv.now, v, d.guest.do_upcall(1)))

    def sender():
        yield env.timeout(7)
        adapter.sync()
        d.send(ipi)

    env.process(vcpu1())
    env.process(sender())
    env.run(until=20)
    assert seen == [(7, 7000, d.vcpus[1], [ipi])]
    assert adapter.kicks == 1


def test_an_upcall_already_due_is_not_lost():
    env, hv, adapter, d = setup()
    ipi = d.bind_ipi(vcpu=0)
    d.shared_info.set_upcall_mask(0, 0)
    d.send(ipi)                              # kicked before anyone waits
    ev = adapter.upcall(d.vcpus[0])
    assert ev.triggered and ev.value is d.vcpus[0]
    d.shared_info.set_upcall_mask(0, 1)      # masked: not due; wait for the next kick
    assert not adapter.upcall(d.vcpus[0]).triggered


def test_poll_times_out_at_its_simpy_time():
    env, hv, adapter, d = setup(ns_per_unit=1)   # one SimPy unit = 1 ns
    p = d.bind_ipi(vcpu=0)
    d.guest.mask(p)
    out = []

    def waiter():
        yield env.timeout(5)
        r = yield adapter.poll(d, [p], timeout=30)
        out.append((env.now, hv.now, r, d.vcpus[0].polling))

    env.process(waiter())
    env.run()
    assert out == [(35, 35, False, False)]
    assert adapter.wakes == 1


def test_poll_woken_by_an_event_on_a_masked_port():
    env, hv, adapter, d = setup()
    p = d.bind_ipi(vcpu=1)
    d.guest.mask(p)
    out = []

    def waiter():
        r = yield adapter.poll(d, [p], timeout=100, vcpu=1)
        out.append((env.now, r))

    def kicker():
        yield env.timeout(12)
        adapter.sync()
        d.send(p)

    env.process(waiter())
    env.process(kicker())
    env.run(until=500)
    assert out == [(12, True)]
    adapter.sync()
    assert hv.now == 500_000 and not d.vcpus[1].polling   # the stale timer changed nothing
    d.send(p)                                             # already pending: returns at once
    assert adapter.poll(d, [p], vcpu=1).value is True


def test_hooks_set_before_keep_running_and_close_restores_them():
    env = simpy.Environment()
    hv = xe.Hypervisor()
    calls = []
    hook = calls.append
    hv.on_kick = hook
    adapter = SimPyAdapter(env, hv)
    d = hv.create_domain()
    d.send(d.bind_ipi(0))
    assert calls == [d.vcpus[0]] and adapter.kicks == 1
    adapter.close()
    assert hv.on_kick is hook and hv.on_wake is None


def test_the_example_runs():
    r = subprocess.run([sys.executable, "-P", str(EXAMPLE)], capture_output=True, text=True, timeout=120,
                       cwd=EXAMPLE.parent)
    assert r.returncode == 0, r.stderr
    got = dict(re.findall(r"^  ([a-z0-9 ]+): (\d+)$", r.stdout, re.M))
    assert r.stdout.startswith("simulated 5000 us (SimPy now 5000 us)")
    assert int(got["requests"]) > 100
    assert got["responses handled"] == got["responses"]          # every response reached the guest
    assert int(got["timer ticks"]) == 2 * 49                     # 100 µs ticks on two vCPUs
    assert int(got["polls woken by the kick"]) > 0 and int(got["polls timed out"]) > 0


def test_a_busy_vcpu_gets_every_upcall_without_a_boot_step():
    # The report: 15 µs of handler work, 10 IPIs 10 µs apart, a fresh vCPU
    # (evtchn_upcall_mask = 1 as Xen creates it): every IPI is handled.
    env, hv, adapter, d = setup()
    ipi = d.bind_ipi(vcpu=1)
    handled = []

    def vcpu1():
        while True:
            yield adapter.upcall(d.vcpus[1])
            handled.extend(d.guest.do_upcall(1))
            yield env.timeout(15)

    def vcpu0():
        for _ in range(10):
            yield env.timeout(10)
            adapter.sync()
            d.send(ipi)

    env.process(vcpu1())
    env.process(vcpu0())
    env.run(until=1000)
    assert d.vcpus[1].upcall_pending == 0
    # IPIs coalesce while the port is still pending; none is left behind.
    assert handled and set(handled) == {ipi}
    assert not d.shared_info.is_pending(ipi)


def test_an_event_sent_before_the_first_upcall_is_delivered():
    env, hv, adapter, d = setup()
    ipi = d.bind_ipi(vcpu=0)
    d.send(ipi)                              # mask still 1: no one could take it yet
    ev = adapter.upcall(d.vcpus[0])
    assert ev.triggered and d.vcpus[0].upcall_mask == 0


def test_setting_on_kick_after_the_adapter_keeps_it_connected():
    env, hv, adapter, d = setup()
    ipi = d.bind_ipi(vcpu=1)
    mine = []
    out = []

    def vcpu1():
        yield adapter.upcall(d.vcpus[1])
        out.append(env.now)

    def sender():
        yield env.timeout(3)
        adapter.sync()
        d.send(ipi)

    env.process(vcpu1())
    env.process(sender())
    hv.on_kick = lambda v: mine.append(v.id)
    env.run(until=10)
    assert out == [3] and mine == [1]
    adapter.close()
    assert hv.on_kick is not None


def test_an_hvm_vcpu_wakes_on_its_upcall_vector():
    """An HVM vCPU's upcall is an interrupt, not a kick: the adapter takes it the same way."""
    env = simpy.Environment()
    hv = xe.Hypervisor()
    adapter = SimPyAdapter(env, hv)
    d = hv.create_domain(vcpus=2, type="hvm")
    ipi = d.bind_ipi(vcpu=1)
    d.set_upcall_vector(1, 0xF3)   # injects at once: no process waits yet
    seen = []

    def vcpu1():
        v = yield adapter.upcall(d.vcpus[1])
        seen.append((env.now, v, d.guest.do_upcall(1)))

    def sender():
        yield env.timeout(3)
        adapter.sync()
        d.send(ipi)

    env.process(vcpu1())
    env.process(sender())
    env.run(until=10)
    assert seen == [(3, d.vcpus[1], [ipi])]
    adapter.close()
    assert not any(hv._listeners.values())
