"""A SimPy model of vCPUs driven by xenevtchn: upcalls, a split driver, a timer and a poll.

Run it with ``python examples/simpy_vcpus.py`` (needs ``pip install 'xenevtchn[simpy]'``).
One SimPy time unit is one microsecond of simulated time, and SimPy's clock is the
hypervisor's clock (``hv.now``).

* dom0 runs a backend: each request from the guest's frontend is answered 10 µs later.
* The guest's two vCPUs are SimPy processes that sleep until the hypervisor kicks them
  (``adapter.upcall``), then run Linux's upcall (``d.guest.do_upcall``), 0.5 µs a port.
* Each guest vCPU gets a VIRQ_TIMER every 100 µs.
* A "spinlock waiter" on vCPU 1 blocks in SCHEDOP_poll on a masked IPI port with a 40 µs
  timeout; a lock holder on vCPU 0 kicks it after a random hold time.
"""

from __future__ import annotations

import random
from collections import Counter

import simpy

import xenevtchn as xe
from xenevtchn.simpy_adapter import SimPyAdapter

RUN_US = 5_000
rng = random.Random(1)
env = simpy.Environment()
hv = xe.Hypervisor()
adapter = SimPyAdapter(env, hv)

dom0 = hv.create_domain(vcpus=1, privileged=True)
guest = hv.create_domain(vcpus=2)
front = guest.alloc_unbound(remote_dom=dom0.domid)
back = dom0.bind_interdomain(guest.domid, front)
timers = [guest.bind_virq(xe.VIRQ_TIMER, vcpu=v) for v in range(2)]
kicker = guest.bind_ipi(vcpu=1)
guest.guest.mask(kicker)                    # only ever polled, as Linux's spinlock kicker

stats: Counter[str] = Counter()


def respond():
    yield env.timeout(10)                   # the backend's work
    adapter.sync()
    dom0.send(back)
    stats["responses"] += 1


def handler_for(d: xe.Domain):
    def handle(port: int) -> None:
        if d is dom0 and port == back:
            env.process(respond())
        elif d is guest and port == front:
            stats["responses handled"] += 1
        elif d is guest and port in timers:
            stats["timer ticks"] += 1
    return handle


def vcpu(d: xe.Domain, v: int):
    handle = handler_for(d)
    while True:
        yield adapter.upcall(d.vcpus[v])    # asleep until the hypervisor kicks this vCPU
        ports = d.guest.do_upcall(v, handle)
        stats[f"upcalls d{d.domid}v{v}"] += 1
        yield env.timeout(0.5 * max(1, len(ports)))


def frontend():
    while True:
        yield env.timeout(rng.expovariate(1 / 20))
        adapter.sync()
        guest.send(front)
        stats["requests"] += 1


def timer(v: int):
    while True:
        yield env.timeout(100)
        adapter.sync()
        hv.send_virq(guest.domid, xe.VIRQ_TIMER, v)


def spinlock_waiter():
    while True:
        yield env.timeout(rng.uniform(50, 150))
        hold = rng.expovariate(1 / 25)
        env.process(lock_holder(hold))
        guest.shared_info.clear_pending(kicker)
        woken_by_event = yield adapter.poll(guest, [kicker], timeout=40, vcpu=1)
        stats["polls woken by the kick" if woken_by_event else "polls timed out"] += 1


def lock_holder(hold: float):
    yield env.timeout(hold)
    adapter.sync()
    guest.send(kicker)                      # masked: no upcall, but it wakes the poller


for d in (dom0, guest):
    for v in d.vcpus:
        env.process(vcpu(d, v.id))
env.process(frontend())
for v in range(2):
    env.process(timer(v))
env.process(spinlock_waiter())
env.run(until=RUN_US)
adapter.sync()

print(f"simulated {hv.now / 1000:.0f} us (SimPy now {env.now:.0f} us); "
      f"{adapter.kicks} kicks, {adapter.wakes} wake-ups")
for key in sorted(stats):
    print(f"  {key}: {stats[key]}")
