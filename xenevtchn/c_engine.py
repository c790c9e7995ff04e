"""The C scenario engine (``csrc/engine/sim_engine.c``) behind ``Simulation(..., engine="c")``.

``Simulation`` builds the world through the control plane as it does for the Python
engine; ``CEngine`` then hands C the model's tables (domains, vCPUs, ports, host devices,
rings) and runs the event loop there, with no Python per event, in slices of at most
``SLICE`` actions so that Ctrl-C (``KeyboardInterrupt``) and the progress callback get
their turn between slices. After each slice the counters are copied back into the
``Simulation``'s own objects, so ``summary()``, ``port_counters()`` and the rest read the
same fields whichever engine ran.

With a trace (``sim.trace``, a ``TraceRecorder``), C formats the trace's events itself,
byte for byte as ``trace.py`` does, into one buffer; a slice also ends once
``TRACE_FLUSH`` bytes wait there, and ``_drain`` hands them to the recorder, which writes
them out (formatting in C measured ~140x faster than formatting the same events in
Python). Memory stays flat in events.

``unsupported(sim)`` names what the C engine cannot run; ``Simulation`` refuses such a run
before it starts rather than fall back to the Python engine behind the user's back.
"""

from __future__ import annotations

import errno
import heapq
import time
from typing import TYPE_CHECKING, Callable

from ._native import ffi, lib
from .errors import EvtchnError

if TYPE_CHECKING:
    from .simulate import Simulation

SLICE = 1 << 16  # actions per C call: a bounded time between two looks at signals
TRACE_FLUSH = 1 << 18  # bytes of trace text C gathers before the run returns to write them
_KINDS = {"interdomain": lib.XE_SIM_INTERDOMAIN, "virq": lib.XE_SIM_VIRQ, "ipi": lib.XE_SIM_IPI,
          "pirq": lib.XE_SIM_PIRQ}
_KERNELS = {"linux": lib.XE_SIM_LINUX, "minios": lib.XE_SIM_MINIOS}


def unsupported(sim: Simulation) -> str | None:
    """What of this simulation the C engine cannot run, in a few words, or None."""
    hv = getattr(sim, "hv", None)
    if hv is None:  # not built yet: the rest is checked once it is
        return None
    if hv.on_kick != sim._on_kick or hv.on_wake != sim._on_wake:
        return "hooks other than the model's own (hv.on_kick / hv.on_wake were replaced)"
    if any(hv._listeners.values()):
        return "hypervisor listeners (hv.add_listener)"
    for d in sim.doms:
        if d.guest.mode not in _KERNELS:
            return f"guest kernel {d.guest.mode!r} (domain {d.domid})"
        if d.type != "pv":
            return f"{d.type.upper()} guests (domain {d.domid})"
    return None


class CEngine:
    """The C engine's state for one ``Simulation`` (freed with it)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        ports = [p for domports in sim.ports.values() for p in domports.values()]
        self.ports = ports
        index = {id(p): i for i, p in enumerate(ports)}
        vcpus = list(sim.vcpus.values())
        self.vcpus = vcpus
        devices = list(sim.devices.values())
        dev_index = {id(dev): i for i, dev in enumerate(devices)}
        ring_index = {id(r): i for i, r in enumerate(sim.rings)}
        dom_index = {d.domid: i for i, d in enumerate(sim.doms)}
        if sim.hv._timers or sim.hv._seq:
            raise AssertionError("poll timers were armed before the C engine took over")
        raw = lib.xe_sim_new(sim.sc.seed & (2**64 - 1), len(sim.doms), len(vcpus), len(ports),
                             len(devices), len(sim.rings))
        if raw == ffi.NULL:
            raise MemoryError("the C engine could not allocate its tables")
        self._s = ffi.gc(raw, lib.xe_sim_free)
        s = self._s
        _check(lib.xe_sim_set_rates(s, 10**9 // sim.sc.timer_hz, sim.sc.ipi_probability,
                                    sim.sc.lock_probability), "rates")
        first = 0
        vidx: dict[tuple[int, int], int] = {}
        for i, d in enumerate(sim.doms):
            _check(lib.xe_sim_set_domain(s, i, d._c, _KERNELS[d.guest.mode], first), f"domain {d.domid}")
            for v in d.vcpus:
                vidx[(d.domid, v.id)] = first + v.id
            first += len(d.vcpus)
        for i, vs in enumerate(vcpus):
            assert vidx[(vs.domid, vs.id)] == i
            assert vs.timer is not None and vs.resched is not None and vs.kicker is not None
            _check(lib.xe_sim_set_vcpu(s, i, dom_index[vs.domid], vs.id, vs.dom.guest._scans[vs.id],
                                       index[id(vs.timer)], index[id(vs.resched)], index[id(vs.kicker)]),
                   f"vCPU {vs.id} of domain {vs.domid}")
            _check(lib.xe_sim_set_vcpu_fifo(s, i, vs.dom.guest._fifo_scans[vs.id]),
                   f"FIFO consumer of vCPU {vs.id} of domain {vs.domid}")
        for i, p in enumerate(ports):
            handler, arg = lib.XE_SIM_ON_NOTHING, 0
            owner = sim._port_owner.get(id(p))
            if owner is not None:
                what, obj = owner
                if what == "device":
                    handler, arg = lib.XE_SIM_ON_DEVICE, dev_index[id(obj)]
                elif what == "front":
                    handler, arg = lib.XE_SIM_ON_FRONT, ring_index[id(obj)]
                else:
                    handler, arg = lib.XE_SIM_ON_BACK, ring_index[id(obj)]
            _check(lib.xe_sim_set_port(s, i, dom_index[p.domid], p.port, _KINDS[p.kind], handler, arg),
                   f"port {p.port} of domain {p.domid}")
        for i, dev in enumerate(devices):
            spec = dev.spec
            _check(lib.xe_sim_set_device(s, i, index[id(dev.port)], spec.service_us[0], spec.service_us[1],
                                         spec.think_us[0], spec.think_us[1], spec.depth, int(spec.napi)),
                   f"device {spec.name}")
        for i, ring in enumerate(sim.rings):
            _check(lib.xe_sim_set_ring(s, i, dev_index[id(ring.device)], dom_index[ring.guest.domid],
                                       vidx[(ring.gv.domid, ring.gv.id)], index[id(ring.front)],
                                       index[id(ring.back)]), f"ring {ring.name}")
        _check(lib.xe_sim_record_timeline(s, int(sim.record_timeline)), "timeline")
        self._vidx = vidx
        self.trace = sim.trace
        if self.trace is not None:
            # C writes the trace's events itself (see trace.py), with these port labels;
            # the tracks of host devices and timers are numbered as simulate.py does.
            assert all(dev.tid == i + 1 for i, dev in enumerate(devices))
            assert all(vs.timer_tid == 100 + i for i, vs in enumerate(vcpus))
            _check(lib.xe_sim_trace_start(s, TRACE_FLUSH), "trace")
            for i, p in enumerate(ports):
                label = self.trace.json_name(p.label).encode("ascii")
                if len(label) > lib.XE_SIM_LABEL_MAX:
                    from .scenario import ScenarioError

                    raise ScenarioError(f"a name too long for a trace ({len(label):,} bytes): "
                                        f"{p.label[:40]!r}...")
                _check(lib.xe_sim_trace_label(s, i, label, len(label)), f"trace label of port {p.port}")
            self._len = ffi.new("size_t *")
            self._nev = ffi.new("uint64_t *")
        _check(lib.xe_sim_start(s), "start")
        self._totals = ffi.new("uint64_t[]", lib.XE_SIM_T_WORDS)
        self._four = ffi.new("uint64_t[4]")
        self._hist = ffi.new("uint64_t[]", lib.XE_SIM_HIST_BUCKETS)
        self._hist_index = ffi.new("uint32_t[]", lib.XE_SIM_HIST_BUCKETS)

    def run(self, limit: int, until_ns: int | None,
            progress: Callable[[int, int], None] | None) -> None:
        """Run in slices until ``limit`` events are sent, the queue empties or ``until_ns``."""
        s, sim = self._s, self.sim
        until = -1 if until_ns is None else until_ns
        start = time.perf_counter()
        try:
            while True:
                rc = lib.xe_sim_run(s, limit, until, SLICE)
                if self.trace is not None:
                    self._drain()
                if rc < 0:
                    what = ffi.string(lib.xe_sim_error(s)).decode()
                    raise EvtchnError(-rc, f"the C engine stopped: {what}")
                if rc != lib.XE_SIM_MORE:
                    break
                if progress is not None:
                    lib.xe_sim_totals(s, self._totals)
                    sim.sent = int(self._totals[lib.XE_SIM_T_SENT])
                    progress(sim.sent, limit)
        finally:  # also on Ctrl-C: the counters say what was done
            sim.wall += time.perf_counter() - start
            self.sync()

    def hook(self, domid: int, vcpu: int, wake: bool) -> None:
        """A kick or wake-up from the control plane between runs: C's model takes it."""
        vi = self._vidx[(domid, vcpu)]
        _check(lib.xe_sim_hook(self._s, vi, int(wake)), "hook")
        self.sync()

    def _drain(self) -> None:
        """Hand the trace text C formatted to the recorder (which writes it out)."""
        assert self.trace is not None
        data = lib.xe_sim_trace_data(self._s, self._len, self._nev)
        n, events = int(self._len[0]), int(self._nev[0])
        if events:
            try:
                self.trace.raw(ffi.buffer(data, n), events)
            finally:
                lib.xe_sim_trace_clear(self._s)

    def sync(self) -> None:
        """Copy C's counters into the Simulation's objects."""
        s, sim, out, four = self._s, self.sim, self._totals, self._four
        lib.xe_sim_totals(s, out)
        sim.sent = int(out[lib.XE_SIM_T_SENT])
        sim.hv.now = int(out[lib.XE_SIM_T_NOW])
        sim.vt = int(out[lib.XE_SIM_T_VT])
        sim.consumed_by_poll = int(out[lib.XE_SIM_T_CONSUMED])
        sim.requests_done = int(out[lib.XE_SIM_T_REQUESTS])
        sim.request_ns = int(out[lib.XE_SIM_T_REQUEST_NS])
        self.actions = int(out[lib.XE_SIM_T_ACTIONS])
        for t in (*sim.kind.values(), *sim.dom_tally.values()):
            t.sent = t.delivered = t.coalesced = t.masked = 0
        for i, p in enumerate(self.ports):
            lib.xe_sim_port_counts(s, i, four)
            pt = p.tally
            pt.sent, pt.delivered, pt.coalesced, pt.masked = (int(x) for x in four)
            for t in (sim.kind[p.kind], sim.dom_tally[p.domid]):
                t.sent += pt.sent
                t.delivered += pt.delivered
                t.coalesced += pt.coalesced
                t.masked += pt.masked
        for i, d in enumerate(sim.doms):
            sim.dom_sent[d.domid] = int(lib.xe_sim_dom_sent(s, i))
        for i, vs in enumerate(self.vcpus):
            lib.xe_sim_vcpu_counts(s, i, four)
            vs.upcalls, vs.kicks, vs.polls, vs.woken = (int(x) for x in four)
        self._sync_poll_timers(int(out[lib.XE_SIM_T_HV_SEQ]))
        if sim.record_timeline:
            self._sync_timeline()
        for i, ring in enumerate(sim.rings):
            ring.completed = int(lib.xe_sim_ring_completed(s, i))
        n = lib.xe_sim_hist(s, self._hist_index, self._hist, lib.XE_SIM_HIST_BUCKETS)
        sim.latency.load(zip(ffi.unpack(self._hist_index, n), ffi.unpack(self._hist, n)),
                         int(out[lib.XE_SIM_T_LAT_COUNT]),
                         int(out[lib.XE_SIM_T_LAT_SUM]), int(out[lib.XE_SIM_T_LAT_MAX]))


    def _sync_poll_timers(self, hv_seq: int) -> None:
        """The hypervisor's poll timers as C left them, so the Hypervisor object (its
        snapshot, a later hv.advance) sees the vCPUs still blocked with a timeout."""
        hv = self.sim.hv
        cap = len(self.vcpus)
        buf = ffi.new("uint64_t[]", 4 * cap)
        n = lib.xe_sim_poll_timers(self._s, buf, cap)
        raw = ffi.unpack(buf, 4 * n)
        timers = [(raw[i], raw[i + 1], raw[i + 2], raw[i + 3]) for i in range(0, 4 * n, 4)]
        heapq.heapify(timers)
        hv._timers = timers
        hv._timer_seq = {(domid, vcpu): seq for _, domid, vcpu, seq in timers}
        hv._seq = hv_seq

    def _sync_timeline(self) -> None:
        """Append the handler times C recorded since the last sync to each vCPU's list."""
        buf = ffi.new("int64_t[]", 1 << 14)
        for i, vs in enumerate(self.vcpus):
            if vs.delivered_at is None:
                vs.delivered_at = []
            while n := lib.xe_sim_timeline(self._s, i, len(vs.delivered_at), buf, 1 << 14):
                vs.delivered_at += ffi.unpack(buf, n)


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise EvtchnError(-rc or errno.EINVAL, f"the C engine refused the scenario's {what}")
