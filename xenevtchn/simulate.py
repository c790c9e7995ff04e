"""The scenario engine behind ``xenevtchn simulate`` and ``xenevtchn list``.

A discrete-event simulation on the hypervisor's simulated clock (``hv.now`` /
``hv.advance``) drives a real ``Hypervisor``: every event below is a real hypercall or
hypervisor call, and every number in the summary is counted from what the library
reports, never computed from the model's intentions.

What runs (see ``scenario.py`` for the knobs):

* Split drivers. Each guest device is a frontend port in the guest (``alloc_unbound``)
  bound by a backend port in dom0 (``bind_interdomain``, spread over dom0's vCPUs with
  ``bind_vcpu``). The frontend sends one notification per request; dom0's handler hands
  the requests to a host device, whose completions arrive as a PIRQ of dom0
  (``hv.send_pirq``); dom0's PIRQ handler notifies each frontend with responses; the
  frontend handles them and issues its next request after a think time. ``napi``
  frontends (net) mask their port in the handler and unmask it after polling their ring,
  as netfront does, so responses meanwhile are *masked* events, re-fired by the unmask.
* A ``VIRQ_TIMER`` per vCPU on simulated time (``hv.send_virq``), reschedule IPIs to
  other vCPUs after I/O, and contended PV spinlocks: the waiter polls its (masked)
  kicker IPI port with ``sched_poll`` and a timeout; the holder kicks it on release.
* Guests handle upcalls the Linux (or Mini-OS) way: ``hv.on_kick`` schedules
  ``d.guest.do_upcall`` on that vCPU after an interrupt-delivery latency; a vCPU runs one
  upcall at a time, and handlers cost simulated time.

Two engines run this model: the Python one below (``engine="python"``, the readable
reference) and ``csrc/engine/sim_engine.c`` (``engine="c"``, the default; see
``c_engine.py``), which makes the same data-path calls, random draws (``simrng``) and
queue insertions in the same order, so both give the same summary for a scenario and
seed. Latencies go into a log-linear histogram (``latency``), flat in events.

Counting (all from the library): *sent* is every send, VIRQ and PIRQ raised; before each,
the target port's pending and mask bits are read: *coalesced* if it was already pending,
else *masked* if it was masked. *delivered* is a handler call from ``do_upcall``,
*upcalls* the ``do_upcall`` runs, *kicks* the ``on_kick`` calls, *polls woken* the
``on_wake`` calls. Every sent event is accounted for:
``sent = coalesced + delivered + consumed_by_poll + pending_at_end``.
"""

from __future__ import annotations

import heapq
import signal
import threading
import time
from collections import deque
from typing import Any, Callable

from ._native import lib
from .hypervisor import Hypervisor
from .constants import EVTCHN_FIFO_PRIORITY_MAX, VIRQ_TIMER
from .domain import Domain, Vcpu
from .latency import LatencyHistogram
from .scenario import DeviceSpec, GuestSpec, Scenario, ScenarioError
from .simrng import SimRandom
from .trace import XEN_PID, TraceRecorder

ENGINES = ("c", "python")
DEFAULT_ENGINE = "c"

KINDS = ("interdomain", "virq", "ipi", "pirq")
METRICS = ("sent", "delivered", "coalesced", "masked")

# The model's costs, in simulated nanoseconds.
SEND_NS = 100                  # one EVTCHNOP_send / raise
HANDLER_NS = 400               # one handler run inside an upcall
UPCALL_LATENCY_NS = (500, 3000)  # kick -> the vCPU enters its upcall
HYPERVISOR_CALLBACK_VECTOR = 0xF3  # the vector Linux gives every vCPU of an HVM/PVH guest
WAKE_LATENCY_NS = 1000         # woken from poll -> running again
NAPI_DELAY_NS = (2000, 6000)   # netfront: handler -> NAPI poll of the ring
LOCK_HOLD_MEAN_NS = 10_000     # a contended lock is held this long on average
POLL_TIMEOUT_NS = 50_000       # a spinlock waiter polls with this timeout
SPIN_RETRY_NS = 1000           # poll returned at once: spin, then try again

# Where a FIFO guest keeps its control blocks and event-array pages (any free frames do).
FIFO_CONTROL_GFN = 0x100       # vCPU v's control block: frame FIFO_CONTROL_GFN + v, offset 0
FIFO_ARRAY_GFN = 0x200         # event-array page i: frame FIFO_ARRAY_GFN + i
FIFO_WORDS_PER_PAGE = 1024


class _Tally:
    __slots__ = METRICS

    def __init__(self) -> None:
        self.sent = self.delivered = self.coalesced = self.masked = 0

    def as_dict(self) -> dict[str, int]:
        return {m: getattr(self, m) for m in METRICS}


class _Port:
    """A port the model handles: where events land, and what its handler does."""

    __slots__ = ("dom", "domid", "port", "kind", "label", "on_event", "raised_at", "flows", "si",
                 "words", "tally")

    def __init__(self, dom: Domain, port: int, kind: str, label: str,
                 on_event: Callable[[_Vcpu, _Port], None]) -> None:
        self.dom = dom
        self.domid = dom.domid
        self.port = port
        self.kind = kind
        self.label = label
        self.on_event = on_event
        self.raised_at = 0
        self.flows: list[tuple[int, int, int]] = []
        self.si = dom.shared_info
        self.words = _FifoWords(dom)  # read instead of ``si`` while the domain is on FIFO
        self.tally = _Tally()  # this port's own counts (``port_counters()``)

    def bits(self) -> Any:
        """Where the port's pending and mask bits are now: shared_info's 2-level bitmaps,
        or the event word of a domain on the FIFO ABI (it may switch at any time)."""
        return self.si if self.dom.fifo is None else self.words


class _FifoWords:
    """A FIFO domain's pending and mask bits (its event words), read as ``shared_info``'s
    2-level bits are: what the model reads before a send and what a poll waiter clears."""

    __slots__ = ("c",)

    def __init__(self, dom: Domain) -> None:
        self.c = dom._c

    def is_pending(self, port: int) -> bool:
        return bool(lib.xe_evtchn_is_pending(self.c, port))

    def is_masked(self, port: int) -> bool:
        return bool(lib.xe_evtchn_is_masked(self.c, port))

    def clear_pending(self, port: int) -> None:
        lib.xe_evtchn_clear_pending(self.c, port)


class _Vcpu:
    """The model's view of one vCPU: its upcall schedule, lock waits, counters."""

    __slots__ = ("sim", "dom", "domid", "id", "vcpu", "handler", "upcall_at", "in_upcall",
                 "busy_until", "lock", "blocked_since", "deferred", "timer", "resched", "kicker",
                 "upcalls", "kicks", "polls", "woken", "delivered_at", "timer_tid")

    def __init__(self, sim: Simulation, dom: Domain, vcpu: Vcpu) -> None:
        self.sim = sim
        self.dom = dom
        self.domid = dom.domid
        self.id = vcpu.id
        self.vcpu = vcpu
        self.handler = lambda port: sim._deliver(self, port)
        self.upcall_at: int | None = None
        self.in_upcall = False
        self.busy_until = 0
        self.lock: _Lock | None = None
        self.blocked_since: int | None = None
        self.deferred: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self.timer: _Port | None = None
        self.resched: _Port | None = None
        self.kicker: _Port | None = None
        self.upcalls = self.kicks = self.polls = self.woken = 0
        self.delivered_at: list[int] | None = None
        self.timer_tid = 0  # its timer's track in the trace's Xen process


class _Lock:
    __slots__ = ("holder", "released", "then")

    def __init__(self, holder: _Vcpu, then: Callable[[], None]) -> None:
        self.holder = holder
        self.released = False
        self.then = then


class _Ring:
    """One front/back pair of a device: requests in flight and responses not yet seen."""

    __slots__ = ("name", "guest", "gv", "front", "back", "device", "requests", "responses",
                 "napi_busy", "completed")

    def __init__(self, name: str, guest: Domain, gv: _Vcpu, device: _Device) -> None:
        self.name = name
        self.guest = guest
        self.gv = gv
        self.device = device
        self.front: _Port
        self.back: _Port
        self.requests: deque[int] = deque()   # issue times, not yet taken by the backend
        self.responses: deque[int] = deque()  # issue times of completed requests
        self.napi_busy = False
        self.completed = 0


class _Device:
    __slots__ = ("spec", "port", "inflight", "tid", "busy_until")

    def __init__(self, spec: DeviceSpec, tid: int) -> None:
        self.spec = spec
        self.tid = tid  # its track in the trace's Xen process
        self.busy_until = 0
        self.port: _Port
        self.inflight: list[tuple[int, int, _Ring, int]] = []  # (done, seq, ring, issued)


class Simulation:
    """Build the scenario's domains and channels; ``run()`` sends its events.

    ``trace``: a ``TraceRecorder`` to fill (``None``: no tracing, no cost).
    ``record_timeline``: keep each vCPU's handler times (for ``--plot``).
    ``engine``: ``"c"`` runs the event loop in C (``csrc/engine/sim_engine.c``), ``"python"``
    runs it here; both give the same counts for the same scenario and seed (their random
    numbers come from one generator, ``simrng.SimRandom``), and the same trace events.
    What the C engine cannot run (hooks of your own) is refused with ``ScenarioError``.
    """

    def __init__(self, scenario: Scenario, trace: TraceRecorder | None = None,
                 record_timeline: bool = False, engine: str = DEFAULT_ENGINE) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self.sc = scenario
        self.engine = engine
        self.rng = SimRandom(scenario.seed)
        self.trace = trace
        self.record_timeline = record_timeline
        self._port_owner: dict[int, tuple[str, Any]] = {}  # id(_Port) -> what its handler serves
        self._engine: Any = None
        if engine == "c":
            self._refuse_for_c()
        self.hv = Hypervisor()
        self.queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.vt = 0  # the running action's own clock (>= hv.now): handlers and sends cost time
        self.limit = 0
        self.sent = 0
        self.kind = {k: _Tally() for k in KINDS}
        self.dom_tally: dict[int, _Tally] = {}
        self.dom_sent: dict[int, int] = {}
        self.consumed_by_poll = 0
        self.latency = LatencyHistogram()  # raise -> handled, ns (flat in events)
        self.requests_done = 0
        self.request_ns = 0
        self.ports: dict[int, dict[int, _Port]] = {}
        self.vcpus: dict[tuple[int, int], _Vcpu] = {}
        self.dom_vcpus: dict[int, list[_Vcpu]] = {}  # each domain's, in vCPU order
        self._guest_spec: dict[int, GuestSpec] = {}  # domid -> the [[guest]] table it came from
        self.doms: list[Domain] = []
        self.names: dict[int, str] = {}
        self.rings: list[_Ring] = []
        self.devices: dict[str, _Device] = {}
        self.wall = 0.0
        self._build(record_timeline)
        if engine == "c":
            from .c_engine import CEngine

            self._refuse_for_c()  # the world as built (e.g. its guests' ABI)
            self._engine = CEngine(self)

    def _refuse_for_c(self) -> None:
        from .c_engine import unsupported

        what = unsupported(self)
        if what is not None:
            raise ScenarioError(f"the C engine cannot run {what}; use engine='python' (--engine python)")

    # ---- set-up ------------------------------------------------------------------------

    def _build(self, timeline: bool) -> None:
        sc, hv = self.sc, self.hv
        dom0 = hv.create_domain(vcpus=sc.dom0_vcpus, privileged=True, layout=sc.dom0_layout)
        self._add_domain(dom0, "dom0", timeline)
        if sc.dom0_abi == "fifo":
            _fifo_boot(dom0)
        for spec in sc.guests:
            for i in range(spec.count):
                d = hv.create_domain(vcpus=spec.vcpus, layout=spec.layout, guest=spec.kernel,
                                     type=spec.type)
                suffix = f"-{i}" if spec.count > 1 else ""
                self._guest_spec[d.domid] = spec
                self._add_domain(d, f"d{d.domid} {spec.name}{suffix}", timeline)
                if spec.abi == "fifo":
                    _fifo_boot(d)
        # Host devices behind dom0's PIRQs.
        for name, dspec in sc.devices.items():
            dev = _Device(dspec, 1 + len(self.devices))
            port = _fifo_setup(dom0, dom0.bind_pirq(dspec.pirq), dspec.priority)
            dev.port = self._register(dom0, port, "pirq", f"pirq {dspec.pirq} ({name} host device)",
                                      lambda v, p, dev=dev: self._on_device_irq(v, dev))  # type: ignore[misc]
            self._port_owner[id(dev.port)] = ("device", dev)
            self.devices[name] = dev
        # Split drivers: the frontend offers a port, dom0's backend binds it.
        nback = 0
        for d in self.doms[1:]:
            spec = self._spec_of(d)
            for j, dname in enumerate(spec.devices):
                gv = self.vcpus[(d.domid, j % len(d.vcpus))]
                ring = _Ring(f"{dname}{j}", d, gv, self.devices[dname])
                prio = self.devices[dname].spec.priority
                front = _fifo_setup(d, d.alloc_unbound(remote_dom=dom0.domid), prio)
                back = _fifo_setup(dom0, dom0.bind_interdomain(d.domid, front), prio)
                dom0.bind_vcpu(back, nback % len(dom0.vcpus))
                d.bind_vcpu(front, gv.id)
                # The fresh backend port is pending on vCPU 0; as Linux starts the IRQ,
                # mask and unmask it on its own vCPU so that vCPU takes the event at boot.
                dom0.guest.mask(back)
                dom0.guest.unmask(back)
                nback += 1
                ring.front = self._register(d, front, "interdomain", f"{dname}front {ring.name} -> d0:{back}",
                                            lambda v, p, r=ring: self._on_front(v, r))  # type: ignore[misc]
                ring.back = self._register(dom0, back, "interdomain", f"{dname}back d{d.domid}:{front}",
                                           lambda v, p, r=ring: self._on_back(v, r))  # type: ignore[misc]
                self._port_owner[id(ring.front)] = ("front", ring)
                self._port_owner[id(ring.back)] = ("back", ring)
                self.rings.append(ring)
        # Per vCPU: VIRQ_TIMER, a reschedule IPI and a spinlock-kicker IPI (masked, polled).
        for d in self.doms:
            for v in d.vcpus:
                vs = self.vcpus[(d.domid, v.id)]
                # Linux gives its timer the highest FIFO priority (xen_setup_timer), which
                # keeps the 2-level upcall's "VIRQ_TIMER first".
                timer = _fifo_setup(d, d.bind_virq(VIRQ_TIMER, v.id), EVTCHN_FIFO_PRIORITY_MAX)
                vs.timer = self._register(d, timer, "virq", f"VIRQ_TIMER vCPU{v.id}", _nothing)
                vs.resched = self._register(d, _fifo_setup(d, d.bind_ipi(v.id)), "ipi",
                                            f"reschedule IPI vCPU{v.id}", _nothing)
                vs.kicker = self._register(d, _fifo_setup(d, d.bind_ipi(v.id)), "ipi",
                                           f"spinlock kicker vCPU{v.id}", _nothing)
                d.guest.mask(vs.kicker.port)  # Linux keeps the kicker IRQ disabled: it is only polled
        # Boot: each guest enables event delivery and takes the events set-up left pending
        # (a fresh interdomain port starts pending); none of them counts.
        for d in self.doms:
            if d.type != "pv":
                # Linux >= 6.0 on HVM/PVH: the upcall vector on every vCPU, then a GSI-1
                # callback on CPU 0 only to tell the toolstack (never driven: vectors win).
                for v in d.vcpus:
                    d.set_upcall_vector(v.id, HYPERVISOR_CALLBACK_VECTOR)
                d.set_callback_via(1)
            for v in d.vcpus:
                d.shared_info.set_upcall_mask(v.id, 0)
                d.guest.do_upcall(v.id)
        hv.on_kick = self._on_kick
        hv.on_wake = self._on_wake
        hv.on_interrupt = self._on_interrupt
        for i, vs in enumerate(self.vcpus.values()):
            vs.timer_tid = 100 + i
        if self.engine == "python":
            # First actions: timer ticks staggered over a period, and each frontend's
            # requests (the C engine queues its own, with the same draws in this order).
            period = 10**9 // self.sc.timer_hz
            for vs in self.vcpus.values():
                self._at(self.rng.randrange(period), self._tick, vs, period)
            for ring in self.rings:
                for _ in range(ring.device.spec.depth):
                    self._at(self._us(ring.device.spec.think_us), self._run_on, ring.gv, self._issue, ring)
        if self.trace is not None:
            self._trace_metadata()

    def _add_domain(self, d: Domain, name: str, timeline: bool) -> None:
        self.doms.append(d)
        self.names[d.domid] = name
        self.ports[d.domid] = {}
        self.dom_tally[d.domid] = _Tally()
        self.dom_sent[d.domid] = 0
        mine = self.dom_vcpus[d.domid] = []
        for v in d.vcpus:
            vs = _Vcpu(self, d, v)
            if timeline:
                vs.delivered_at = []
            self.vcpus[(d.domid, v.id)] = vs
            mine.append(vs)

    def _spec_of(self, d: Domain) -> GuestSpec:
        return self._guest_spec[d.domid]

    def _register(self, d: Domain, port: int, kind: str, label: str,
                  on_event: Callable[[_Vcpu, _Port], None]) -> _Port:
        p = _Port(d, port, kind, label, on_event)
        self.ports[d.domid][port] = p
        return p

    def _trace_metadata(self) -> None:
        tr = self.trace
        assert tr is not None
        tr.process(XEN_PID, "Xen", 0)
        for name, dev in self.devices.items():
            tr.thread(XEN_PID, dev.tid, f"{name} host device (pirq {dev.spec.pirq})")
        for vs in self.vcpus.values():
            tr.thread(XEN_PID, vs.timer_tid, f"timer d{vs.domid} vCPU{vs.id}")
        for d in self.doms:
            tr.process(d.domid, self.names[d.domid] + (" (privileged)" if d.privileged else ""), d.domid + 1)
            for v in d.vcpus:
                tr.thread(d.domid, v.id, f"vCPU{v.id}")

    # ---- the event queue ---------------------------------------------------------------

    def _at(self, t: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (t, self._seq, fn, args))

    def _us(self, rng_us: tuple[float, float]) -> int:
        return int(self.rng.uniform(*rng_us) * 1000)

    def run(self, events: int | None = None, progress: Callable[[int, int], None] | None = None,
            until_ns: int | None = None) -> None:
        """Run until ``events`` (default: the scenario's) have been sent in all.

        ``until_ns``: stop before the first action later than that simulated time
        (``hv.now`` is then ``until_ns``). May be called again with a larger total or a
        later time to go on. ``progress(sent, total)`` is called now and then.
        """
        if events is not None and (isinstance(events, bool) or not isinstance(events, int) or events < 0):
            raise ValueError(f"events must be a non-negative int, not {events!r}")
        self.limit = self.sc.events if events is None else events
        if until_ns is not None and (not isinstance(until_ns, int) or until_ns < 0):
            raise ValueError(f"until_ns must be a non-negative int, not {until_ns!r}")
        if self._engine is not None:
            self._refuse_for_c()  # e.g. a listener added since the build
            self._engine.run(self.limit, until_ns, progress)
            if progress is not None:
                progress(self.sent, self.limit)
            return
        hv, q, pop = self.hv, self.queue, heapq.heappop
        start = time.perf_counter()
        n = 0
        # Ctrl-C stops the run between two actions, never inside one, so the counters of
        # an interrupted run add up (as the C engine's do): SIGINT is noted while the loop
        # runs and raised as KeyboardInterrupt at the next action boundary. Only where
        # Python's own handler is in place (main thread; a handler of the caller's stays).
        stop: list[int] = []
        old = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            old = signal.signal(signal.SIGINT, lambda signum, _frame: stop.append(signum))
        try:
            while q and self.sent < self.limit:
                if stop:
                    raise KeyboardInterrupt
                if until_ns is not None and q[0][0] > until_ns:
                    if until_ns <= hv.now:
                        break
                    self.vt = until_ns
                    hv.advance(until_ns - hv.now)
                    continue  # the clock's timers may have queued earlier actions
                t, _, fn, args = pop(q)
                if t > hv.now:
                    self.vt = t
                    hv.advance(t - hv.now)
                self.vt = t
                fn(*args)
                n += 1
                if progress is not None and not n & 1023:
                    progress(self.sent, self.limit)
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            self.wall += time.perf_counter() - start
        if stop:
            raise KeyboardInterrupt   # it came as the last action ran
        if progress is not None:
            progress(self.sent, self.limit)

    # ---- raising events ----------------------------------------------------------------

    def _send(self, src: tuple[int, int], kind: str, target: _Port, do: Callable[[], Any],
              from_dom: int | None) -> None:
        """Raise one event at ``target`` by ``do()`` at the running action's time.

        A handler runs ahead of the hypervisor's clock (handlers cost time): its sends
        wait in the queue until the clock reaches them, so nothing is raised early.
        """
        t = self.vt
        if t > self.hv.now:
            self.vt = t + SEND_NS
            self._at(t, self._send_now, src, kind, target, do, from_dom)
        else:
            self._send_now(src, kind, target, do, from_dom)

    def _send_now(self, src: tuple[int, int], kind: str, target: _Port, do: Callable[[], Any],
                  from_dom: int | None) -> None:
        """Raise one event, counting what the library reports before and after."""
        if self.sent >= self.limit:
            return  # the run is over: the model stops generating events
        si = target.si if target.dom.fifo is None else target.words
        port = target.port
        was_pending = si.is_pending(port)
        was_masked = si.is_masked(port)
        t = self.vt
        self.vt = t + SEND_NS
        do()
        self.sent += 1
        kt, dt, pt = self.kind[kind], self.dom_tally[target.domid], target.tally
        kt.sent += 1
        dt.sent += 1
        pt.sent += 1
        if from_dom is not None:
            self.dom_sent[from_dom] += 1
        if was_pending:
            kt.coalesced += 1
            dt.coalesced += 1
            pt.coalesced += 1
        else:
            target.raised_at = t
            if was_masked:
                kt.masked += 1
                dt.masked += 1
                pt.masked += 1
        tr = self.trace
        if tr is not None:
            result = "coalesced" if was_pending else "masked" if was_masked else "raised"
            tr.slice(f"send {kind}", "send", src[0], src[1], t, t + SEND_NS,
                     {"to": f"d{target.domid}:{port}", "port": target.label, "result": result})
            target.flows.append((src[0], src[1], t))

    def _send_port(self, vs: _Vcpu, port: int, kind: str, target: _Port) -> None:
        d = vs.dom
        self._send((vs.domid, vs.id), kind, target, lambda: d.send(port), vs.domid)

    # ---- hooks -------------------------------------------------------------------------

    def _on_kick(self, vcpu: Vcpu) -> None:
        if self._engine is not None:  # between two C runs (a control-plane call): C's model
            self._engine.hook(vcpu.domain.domid, vcpu.id, False)
            return
        vs = self.vcpus[(vcpu.domain.domid, vcpu.id)]
        vs.kicks += 1
        if self.trace is not None:
            self.trace.instant("kick", "kick", vs.domid, vs.id, self.vt)
        if not vs.in_upcall:  # a running upcall sees the flag again and goes round once more
            self._schedule_upcall(vs, self.vt + self.rng.randint(*UPCALL_LATENCY_NS))

    def _on_interrupt(self, vcpu: Vcpu, vector: int) -> None:
        """An HVM/PVH vCPU's upcall vector: the guest's callback runs as for a PV kick."""
        self._on_kick(vcpu)

    def _on_wake(self, vcpu: Vcpu) -> None:
        if self._engine is not None:
            self._engine.hook(vcpu.domain.domid, vcpu.id, True)
            return
        vs = self.vcpus[(vcpu.domain.domid, vcpu.id)]
        vs.woken += 1
        if vs.blocked_since is not None:
            if self.trace is not None and vs.kicker is not None:
                self.trace.slice(f"poll kicker port {vs.kicker.port}", "poll", vs.domid, vs.id,
                                 vs.blocked_since, self.vt)
            vs.blocked_since = None
        self._at(self.vt + WAKE_LATENCY_NS, self._resume, vs)

    # ---- upcalls and handlers ----------------------------------------------------------

    def _schedule_upcall(self, vs: _Vcpu, t: int) -> None:
        if vs.upcall_at is None:
            vs.upcall_at = max(t, vs.busy_until)
            self._at(vs.upcall_at, self._upcall, vs)

    def _upcall(self, vs: _Vcpu) -> None:
        t = self.vt
        if t < vs.busy_until:  # the vCPU is finishing a hypercall: the upcall comes after
            vs.upcall_at = vs.busy_until
            self._at(vs.busy_until, self._upcall, vs)
            return
        vs.upcall_at = None
        vs.in_upcall = True
        try:
            handled = vs.dom.guest.do_upcall(vs.id, vs.handler)
        finally:
            vs.in_upcall = False
        vs.upcalls += 1
        vs.busy_until = self.vt
        if self.trace is not None:
            self.trace.slice("upcall", "upcall", vs.domid, vs.id, t, max(self.vt, t + SEND_NS),
                             {"ports": len(handled)})

    def _deliver(self, vs: _Vcpu, port: int) -> None:
        """``handler(port)`` of ``do_upcall``: one event reached the guest."""
        p = self.ports[vs.domid][port]
        start = self.vt
        self.vt = start + HANDLER_NS
        self.kind[p.kind].delivered += 1
        self.dom_tally[p.domid].delivered += 1
        p.tally.delivered += 1
        assert start >= p.raised_at, (start, p.raised_at, p.label)
        self.latency.record(start - p.raised_at)
        if vs.delivered_at is not None:
            vs.delivered_at.append(start)
        p.on_event(vs, p)
        tr = self.trace
        if tr is not None:
            tr.slice(p.label, "handler", vs.domid, vs.id, start, self.vt, {"port": port})
            for src in p.flows:
                tr.flow(src, (vs.domid, vs.id, start))
            p.flows.clear()

    # ---- task context: actions that run on a vCPU outside interrupts -------------------

    def _run_on(self, vs: _Vcpu, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on ``vs`` now, after its running upcall, or once it has its lock."""
        if vs.lock is not None:
            vs.deferred.append((fn, args))
            return
        if self.vt < vs.busy_until:
            self._at(vs.busy_until, self._run_on, vs, fn, *args)
            return
        fn(*args)
        vs.busy_until = max(vs.busy_until, self.vt)

    def _issue(self, ring: _Ring) -> None:
        """The frontend queues a request and notifies its backend (maybe after a lock)."""
        vs = ring.gv
        if len(vs.dom.vcpus) > 1 and self.rng.random() < self.sc.lock_probability:
            if self._contend(vs, lambda: self._issue_now(ring)):
                return
        self._issue_now(ring)

    def _issue_now(self, ring: _Ring) -> None:
        ring.requests.append(self.vt)
        self._send_port(ring.gv, ring.front.port, "interdomain", ring.back)

    def _on_back(self, vs: _Vcpu, ring: _Ring) -> None:
        """dom0's backend: hand every queued request to the host device."""
        dev = ring.device
        while ring.requests:
            issued = ring.requests.popleft()
            done = self.vt + self._us(dev.spec.service_us)
            self._seq += 1
            heapq.heappush(dev.inflight, (done, self._seq, ring, issued))
            self._at(done, self._device_fires, dev)
        self._maybe_ipi(vs)

    def _device_fires(self, dev: _Device) -> None:
        if self.vt < dev.busy_until:  # the line is being raised already: just after
            self._at(dev.busy_until, self._device_fires, dev)
            return
        p = dev.port
        pirq = dev.spec.pirq
        self._send((XEN_PID, dev.tid), "pirq", p, lambda: self.hv.send_pirq(p.domid, pirq), None)
        dev.busy_until = self.vt

    def _on_device_irq(self, vs: _Vcpu, dev: _Device) -> None:
        """dom0's PIRQ handler: complete finished requests, notify each frontend once."""
        notify: dict[int, _Ring] = {}
        while dev.inflight and dev.inflight[0][0] <= self.vt:
            _, _, ring, issued = heapq.heappop(dev.inflight)
            ring.responses.append(issued)
            notify[id(ring)] = ring
        for ring in notify.values():
            self._send_port(vs, ring.back.port, "interdomain", ring.front)
        if notify:
            self._maybe_ipi(vs)

    def _on_front(self, vs: _Vcpu, ring: _Ring) -> None:
        if ring.device.spec.napi:
            if not ring.napi_busy:  # mask the port and poll the ring a little later
                ring.napi_busy = True
                ring.guest.guest.mask(ring.front.port)
                if self.trace is not None:
                    self.trace.instant(f"mask port {ring.front.port}", "mask", vs.domid, vs.id, self.vt)
                self._at(self.vt + self.rng.randint(*NAPI_DELAY_NS), self._run_on, vs, self._napi, ring)
        else:
            self._complete(vs, ring)

    def _napi(self, ring: _Ring) -> None:
        vs = ring.gv
        self._complete(vs, ring)
        ring.napi_busy = False
        port = ring.front.port
        ring.guest.guest.unmask(port)  # Linux's local unmask re-fires an event raised meanwhile
        if self.trace is not None:
            self.trace.instant(f"unmask port {port}", "mask", vs.domid, vs.id, self.vt)
        for v in ring.guest.vcpus:  # (Mini-OS unmasks on vCPU 0, whatever the port's vCPU)
            self._guest_set_flag(self.vcpus[(vs.domid, v.id)])

    def _guest_set_flag(self, vs: _Vcpu) -> None:
        """The guest raised its own upcall flag (no kick): it forces the callback."""
        v = vs.vcpu
        if v.upcall_pending and not v.upcall_mask and not vs.in_upcall:
            self._schedule_upcall(vs, self.vt)

    def _complete(self, vs: _Vcpu, ring: _Ring) -> None:
        n = len(ring.responses)
        while ring.responses:
            issued = ring.responses.popleft()
            self.requests_done += 1
            self.request_ns += self.vt - issued
            self._at(self.vt + self._us(ring.device.spec.think_us), self._run_on, ring.gv, self._issue, ring)
        ring.completed += n
        if n:
            self._maybe_ipi(vs)

    def _maybe_ipi(self, vs: _Vcpu) -> None:
        nv = len(vs.dom.vcpus)
        if nv > 1 and self.rng.random() < self.sc.ipi_probability:
            other = (vs.id + 1 + self.rng.randrange(nv - 1)) % nv
            target = self.vcpus[(vs.domid, other)].resched
            assert target is not None
            self._send_port(vs, target.port, "ipi", target)

    def _tick(self, vs: _Vcpu, period: int) -> None:
        port = vs.timer
        assert port is not None
        t = self.vt
        self._send((XEN_PID, vs.timer_tid), "virq", port,
                   lambda: self.hv.send_virq(vs.domid, VIRQ_TIMER, vs.id), None)
        self._at(t + period, self._tick, vs, period)

    # ---- PV spinlocks: SCHEDOP_poll on a masked kicker port ----------------------------

    def _contend(self, vs: _Vcpu, then: Callable[[], None]) -> bool:
        """The lock ``vs`` wants is held by another vCPU that waits for no lock itself.

        False when there is no such vCPU (then the lock is free)."""
        others = [o for o in self.dom_vcpus[vs.domid] if o.id != vs.id and o.lock is None]
        if not others:
            return False
        holder = others[self.rng.randrange(len(others))]
        lock = _Lock(holder, then)
        vs.lock = lock
        hold = int(self.rng.expovariate(1.0 / LOCK_HOLD_MEAN_NS)) + 1
        self._at(self.vt + hold, self._run_on, holder, self._release, vs, lock)
        self._wait(vs)
        return True

    def _wait(self, vs: _Vcpu) -> None:
        kicker = vs.kicker
        assert kicker is not None
        self._consume_kick(vs)  # Linux clears the kicker before it checks the lock again
        vs.polls += 1
        blocked = not vs.dom.sched_poll([kicker.port], timeout=self.vt + POLL_TIMEOUT_NS, vcpu=vs.id)
        if blocked and vs.vcpu.polling:
            vs.blocked_since = self.vt
            self._at(self.vt + POLL_TIMEOUT_NS, _nothing_at)  # the clock must stop at the deadline
        elif not blocked:  # an event is already due on this vCPU: take it, then spin again
            self._guest_set_flag(vs)
            self._at(self.vt + SPIN_RETRY_NS, self._resume, vs)

    def _release(self, waiter: _Vcpu, lock: _Lock) -> None:
        lock.released = True
        if waiter.lock is lock and waiter.kicker is not None:
            self._send_port(lock.holder, waiter.kicker.port, "ipi", waiter.kicker)

    def _consume_kick(self, vs: _Vcpu) -> None:
        kicker = vs.kicker
        assert kicker is not None
        bits = kicker.bits()
        if bits.is_pending(kicker.port):
            bits.clear_pending(kicker.port)
            self.consumed_by_poll += 1
            tr = self.trace
            if tr is not None:
                tr.slice(f"kicked (port {kicker.port})", "poll", vs.domid, vs.id, self.vt, self.vt + SEND_NS)
                for src in kicker.flows:
                    tr.flow(src, (vs.domid, vs.id, self.vt))
                kicker.flows.clear()

    def _resume(self, vs: _Vcpu) -> None:
        """After a wake-up or a spin: the lock is ours, or wait again."""
        lock = vs.lock
        if lock is None or vs.vcpu.polling:
            return
        if self.vt < vs.busy_until:  # an upcall is running on this vCPU: after it
            self._at(vs.busy_until, self._resume, vs)
            return
        if not lock.released:
            self._wait(vs)
            return
        self._consume_kick(vs)
        vs.lock = None
        lock.then()
        while vs.deferred and vs.lock is None:
            fn, args = vs.deferred.popleft()
            fn(*args)
        vs.busy_until = max(vs.busy_until, self.vt)

    # ---- results -----------------------------------------------------------------------

    def pending_at_end(self) -> int:
        """Ports of the model still pending now (events raised, not yet taken)."""
        return sum(p.bits().is_pending(p.port) for ports in self.ports.values() for p in ports.values())

    def summary(self) -> dict[str, Any]:
        """Every count of the run, as plain data (what ``--json`` prints)."""
        totals = {m: sum(getattr(t, m) for t in self.kind.values()) for m in METRICS}
        vs_all = list(self.vcpus.values())
        totals.update(
            upcalls=sum(v.upcalls for v in vs_all),
            kicks=sum(v.kicks for v in vs_all),
            polls=sum(v.polls for v in vs_all),
            polls_woken=sum(v.woken for v in vs_all),
            consumed_by_poll=self.consumed_by_poll,
            pending_at_end=self.pending_at_end(),
        )
        by_domain = []
        for d in self.doms:
            mine = self.dom_vcpus[d.domid]
            row = {"domid": d.domid, "name": self.names[d.domid], "abi": d.abi, "vcpus": len(d.vcpus),
                   "sent_from": self.dom_sent[d.domid]}
            row.update({("received" if m == "sent" else m): v
                        for m, v in self.dom_tally[d.domid].as_dict().items()})
            row.update(upcalls=sum(v.upcalls for v in mine), kicks=sum(v.kicks for v in mine),
                       polls_woken=sum(v.woken for v in mine))
            by_domain.append(row)
        sc = self.sc
        return {
            "scenario": {
                "source": sc.source, "seed": sc.seed, "events": self.limit,
                "domains": len(self.doms), "guests": sc.nr_guests, "dom0_vcpus": sc.dom0_vcpus,
                "vcpus": len(vs_all), "channels": sum(len(p) for p in self.ports.values()),
            },
            "totals": totals,
            "by_kind": {k: t.as_dict() for k, t in self.kind.items()},
            "by_domain": by_domain,
            "latency_us": self.latency.summary_us(),
            "requests": {"completed": self.requests_done,
                         "mean_us": round(self.request_ns / self.requests_done / 1000, 3)
                         if self.requests_done else 0.0},
            "sim_time_us": round(self.hv.now / 1000, 3),
            "engine": self.engine,
            "wall_s": round(self.wall, 4),
            "events_per_s": round(self.sent / self.wall) if self.wall > 0 else 0,
        }

    def vcpu_counters(self) -> list[dict[str, Any]]:
        """One row per vCPU: upcalls, kicks, polls, wake-ups (see ``xenevtchn.results``)."""
        from .results import vcpu_counters
        return vcpu_counters(self)

    def port_counters(self) -> list[dict[str, Any]]:
        """One row per port the model handles: sent, delivered, coalesced, masked."""
        from .results import port_counters
        return port_counters(self)

    def summary_frame(self) -> Any:
        """``summary()["by_domain"]`` as a pandas DataFrame (needs ``xenevtchn[frames]``)."""
        from .results import summary_frame
        return summary_frame(self)

    # ---- the port tables (``xenevtchn list``) -----------------------------------------

    def port_tables(self) -> list[dict[str, Any]]:
        """Every domain's open ports, as Xen's 'e' debug key shows them."""
        return port_tables(self.hv, {d: {p: x.label for p, x in ports.items()}
                                     for d, ports in self.ports.items()}, self.names)


def _fifo_boot(d: Domain) -> None:
    """Linux's FIFO start-up (``evtchn_fifo_init``): a control block for every vCPU; the
    event array grows as ports are bound (``_fifo_setup``)."""
    for v in d.vcpus:
        d.init_control(FIFO_CONTROL_GFN + v.id, 0, v.id)


def _fifo_setup(d: Domain, port: int, priority: int | None = None) -> int:
    """What Linux does right after a bind on a FIFO domain (``evtchn_fifo_setup``, then
    ``xen_set_irq_priority``): event-array pages up to the port's, and its priority.
    Returns ``port``; a 2-level domain's port is left as it is."""
    fifo = d.fifo
    if fifo is None:
        return port
    while port >= FIFO_WORDS_PER_PAGE * len(fifo.array_gfns):
        d.expand_array(FIFO_ARRAY_GFN + len(fifo.array_gfns))
    if priority is not None:
        d.set_priority(port, priority)
    return port


def _nothing(vs: _Vcpu, p: _Port) -> None:
    """Handlers of timer ticks and IPIs: taking the event is all they do."""


def _nothing_at() -> None:
    """A queue entry that only makes the clock stop at a poll deadline."""


_TYPE = {1: "unbound", 2: "interdomain", 3: "pirq", 4: "virq", 5: "ipi"}


def port_tables(hv: Hypervisor, labels: dict[int, dict[int, str]] | None = None,
                names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Each domain's open ports: port, vCPU, type, remote end, pending, masked."""
    from .constants import Virq
    from .errors import EvtchnError

    out = []
    for d in hv.domains:
        rows = []
        port = 1
        while True:
            try:
                st = d.status(port)
            except EvtchnError:
                break  # past the valid ports
            if st.status != 0:
                kind = _TYPE[int(st.status)]
                if kind == "interdomain":
                    remote = f"d{st.dom}:{st.port}"
                elif kind == "unbound":
                    remote = f"d{st.dom} may bind"
                elif kind == "virq":
                    remote = f"VIRQ_{Virq(st.virq).name}" if st.virq in Virq._value2member_map_ else f"virq {st.virq}"  # type: ignore[arg-type]
                elif kind == "pirq":
                    remote = f"pirq {st.pirq}"
                else:
                    remote = ""
                bits: Any = d.shared_info if d.fifo is None else _FifoWords(d)
                rows.append({
                    "port": port, "vcpu": int(st.vcpu), "type": kind, "remote": remote,
                    "pending": bits.is_pending(port), "masked": bits.is_masked(port),
                    "label": (labels or {}).get(d.domid, {}).get(port, ""),
                })
            port += 1
        out.append({"domid": d.domid, "name": (names or {}).get(d.domid, f"d{d.domid}"),
                    "privileged": d.privileged, "type": d.type, "vcpus": len(d.vcpus), "layout": d.layout, "abi": d.abi,
                    "kernel": d.guest.mode, "ports": rows})
    return out
