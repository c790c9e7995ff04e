"""Drive a ``Hypervisor`` from a SimPy model: kicks and wake-ups become SimPy events.

SimPy is an optional extra (``pip install 'xenevtchn[simpy]'``)::

    import simpy
    import xenevtchn as xe
    from xenevtchn.simpy_adapter import SimPyAdapter

    env = simpy.Environment()
    hv = xe.Hypervisor()
    sim = SimPyAdapter(env, hv)           # one SimPy time unit = 1 µs by default

    def vcpu(d, v):                       # a SimPy process per vCPU
        while True:
            yield sim.upcall(d.vcpus[v])  # until the hypervisor kicks this vCPU
            d.guest.do_upcall(v, handler)

* ``upcall(vcpu)``: an event that fires (value: the ``Vcpu``) when the hypervisor raises
  the vCPU's ``evtchn_upcall_pending`` (a ``"kick"`` listener), or at once if it is
  already set and not masked, so a kick that came while the process was busy is not lost.
* Boot state: Xen starts every vCPU with ``evtchn_upcall_mask = 1`` (delivery off). The
  first ``upcall(vcpu)`` for a vCPU boots it as a running guest would: it clears that
  vCPU's ``evtchn_upcall_mask``, so events sent before are delivered at once and every
  later one is waiting when the process next yields ``upcall``. A model that wants a
  vCPU masked sets the mask again after its first ``upcall``.
* ``wake(vcpu)``: fires when the vCPU leaves ``SCHEDOP_poll`` (``hv.on_wake``).
* ``poll(domain, ports, timeout=None, vcpu=0)``: ``sched_poll`` with a *relative* timeout
  in SimPy time units; the event's value is True if the poll returned at once or was
  ended by an event, False on timeout.
* Simulated time: SimPy's clock drives ``hv.now``. ``sync()`` advances the hypervisor to
  ``env.now`` (firing due poll timers); every method here calls it first, and a timer
  process wakes at each poll deadline, so timeouts fire at their SimPy time.

The adapter connects through ``hv.add_listener``: ``hv.on_kick``/``hv.on_wake`` stay
free for the user, and setting them never disconnects the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator, Iterable

try:
    import simpy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("xenevtchn.simpy_adapter needs SimPy: pip install 'xenevtchn[simpy]'") from exc

if TYPE_CHECKING:
    from .domain import Domain, Vcpu
    from .hypervisor import Hypervisor


class SimPyAdapter:
    """Connect ``hv``'s hooks and clock to the SimPy environment ``env``."""

    def __init__(self, env: simpy.Environment, hv: Hypervisor, ns_per_unit: int = 1000) -> None:
        if not isinstance(ns_per_unit, int) or ns_per_unit <= 0:
            raise ValueError(f"ns_per_unit must be a positive int, not {ns_per_unit!r}")
        self.env = env
        self.hv = hv
        self.ns_per_unit = ns_per_unit
        self._upcall: dict[tuple[int, int], simpy.Event] = {}
        self._wake: dict[tuple[int, int], simpy.Event] = {}
        self._polls: dict[tuple[int, int], tuple[simpy.Event, int, Domain, list[int]]] = {}
        self._booted: set[tuple[int, int]] = set()
        hv.add_listener("kick", self._on_kick)
        hv.add_listener("wake", self._on_wake)
        hv.add_listener("interrupt", self._on_interrupt)   # an HVM/PVH vCPU's upcall
        self.kicks = 0
        self.wakes = 0

    # ---- time ------------------------------------------------------------------------

    def ns(self, units: float) -> int:
        """SimPy time units to nanoseconds."""
        return int(round(units * self.ns_per_unit))

    def sync(self) -> None:
        """Bring ``hv.now`` up to ``env.now`` (due poll timers fire, their hooks run)."""
        target = self.ns(self.env.now)
        if target > self.hv.now:
            self.hv.advance(target - self.hv.now)

    # ---- hooks -----------------------------------------------------------------------

    @staticmethod
    def _key(vcpu: Vcpu) -> tuple[int, int]:
        return vcpu.domain.domid, vcpu.id

    def _on_kick(self, vcpu: Vcpu) -> None:
        self.kicks += 1
        ev = self._upcall.pop(self._key(vcpu), None)
        if ev is not None:
            ev.succeed(vcpu)

    def _on_interrupt(self, vcpu: Vcpu, vector: int) -> None:
        self._on_kick(vcpu)

    def _on_wake(self, vcpu: Vcpu) -> None:
        self.wakes += 1
        key = self._key(vcpu)
        ev = self._wake.pop(key, None)
        if ev is not None:
            ev.succeed(vcpu)
        poll = self._polls.pop(key, None)
        if poll is not None:
            done, deadline, domain, ports = poll
            si = domain.shared_info
            by_event = any(si.is_pending(p) for p in ports) or not deadline or self.hv.now < deadline
            done.succeed(by_event)

    # ---- events ----------------------------------------------------------------------

    def upcall(self, vcpu: Vcpu) -> simpy.Event:
        """Fires when ``vcpu`` has an upcall due (at once if one already is).

        The first call for a vCPU boots it: its ``evtchn_upcall_mask`` is cleared.
        """
        self.sync()
        key = self._key(vcpu)
        if key not in self._booted:
            self._booted.add(key)
            vcpu.domain.shared_info.set_upcall_mask(vcpu.id, 0)
        if vcpu.upcall_pending and not vcpu.upcall_mask:
            return self.env.event().succeed(vcpu)
        ev = self._upcall.get(key)
        if ev is None:
            ev = self._upcall[key] = self.env.event()
        return ev

    def wake(self, vcpu: Vcpu) -> simpy.Event:
        """Fires when ``vcpu`` is woken from poll."""
        self.sync()
        key = self._key(vcpu)
        ev = self._wake.get(key)
        if ev is None:
            ev = self._wake[key] = self.env.event()
        return ev

    def poll(self, domain: Domain, ports: Iterable[int], timeout: float | None = None,
             vcpu: int = 0) -> simpy.Event:
        """``SCHEDOP_poll`` in SimPy time: value True (an event) or False (timed out)."""
        self.sync()
        ports = list(ports)
        deadline = 0 if timeout is None else self.hv.now + max(1, self.ns(timeout))
        if domain.sched_poll(ports, timeout=deadline, vcpu=vcpu):
            return self.env.event().succeed(True)
        done = self.env.event()
        if not domain.vcpus[vcpu].polling:  # woken at once (a deadline already reached)
            return done.succeed(False)
        self._polls[(domain.domid, vcpu)] = (done, deadline, domain, ports)
        if deadline:
            self.env.process(self._poll_timer(deadline))
        return done

    def _poll_timer(self, deadline: int) -> Generator[Any, Any, None]:
        yield self.env.timeout(max(0.0, (deadline - self.hv.now) / self.ns_per_unit))
        self.sync()
        if self.hv.now < deadline:  # rounding: step the last nanoseconds
            self.hv.advance(deadline - self.hv.now)

    def close(self) -> None:
        """Disconnect from ``hv`` (its own hooks and other listeners stay)."""
        self.hv.remove_listener("kick", self._on_kick)
        self.hv.remove_listener("wake", self._on_wake)
        self.hv.remove_listener("interrupt", self._on_interrupt)
