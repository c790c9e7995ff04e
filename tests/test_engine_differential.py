"""The C scenario engine against the Python one: same scenario and seed, same run.

``Simulation(sc, engine="c")`` runs the event loop of ``simulate.py`` in C
(``csrc/engine/sim_engine.c``). Both engines draw from one generator (``simrng``) at the same
points, so every count, every latency bucket and the final state of every port must be
the same; the only fields allowed to differ are wall-clock ones. Every run here is traced
(``--trace``), and the two engines' traces must be the same too, event by event: the C
engine formats its events itself (``sim_engine.c``), the Python one through
``trace.TraceRecorder``. Any difference is a bug in one of the engines.

FIFO domains are here too (``abi = "fifo"``: dom0, guests, mixed with 2-level ones, device
priorities): both engines drive the same FIFO data path and Linux's FIFO consumer state.
"""

from __future__ import annotations

import io
import json

import pytest

from xenevtchn.scenario import ScenarioError, default_scenario, parse_scenario
from xenevtchn.simulate import Simulation
from xenevtchn.trace import TraceRecorder

WALL_CLOCK = ("wall_s", "events_per_s", "engine")


def comparable(sim: Simulation, trace: io.BytesIO | None = None) -> dict:
    """Everything a run produced except wall-clock fields: the summary, the per-port and
    per-vCPU counters, the latency histogram and every domain's final port table."""
    s = {k: v for k, v in sim.summary().items() if k not in WALL_CLOCK}
    return {
        "summary": s,
        "ports": sim.port_counters(),
        "vcpus": sim.vcpu_counters(),
        "histogram": sorted(sim.latency.counts.items()),
        "tables": sim.port_tables(),
        "now": sim.hv.now,
        "requests": [r.completed for r in sim.rings],
        # the hypervisor's armed poll timers (vCPUs still blocked with a timeout)
        "poll_timers": sorted(t for t in sim.hv._timers if sim.hv._timer_seq.get((t[1], t[2])) == t[3]),
        "timer_seq": sorted(sim.hv._timer_seq.items()),
        "hv_seq": sim.hv._seq,
        "trace": trace.getvalue().split(b"\n") if trace is not None else None,
    }


def both(sc, runs=((None, None),)):
    """Run ``sc`` on both engines, as a sequence of run(events, until_ns) calls."""
    out = []
    for engine in ("python", "c"):
        buf = io.BytesIO()
        rec = TraceRecorder(buf)
        sim = Simulation(sc, engine=engine, trace=rec)
        for events, until in runs:
            sim.run(events=events, until_ns=until)
        rec.close()
        json.loads(buf.getvalue())  # a whole JSON document
        out.append(comparable(sim, buf))
    return out


def assert_same(py: dict, c: dict) -> None:
    a, b = py.get("trace"), c.get("trace")
    if a != b:
        assert a is not None and b is not None
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        pytest.fail(f"engines' traces differ at line {i} of {len(a)} / {len(b)}:\n"
                    f" python: {a[i] if i < len(a) else '(end)'}\n      c: {b[i] if i < len(b) else '(end)'}")
    for key in py:
        if py[key] != c[key]:
            a = json.dumps(py[key], sort_keys=True, default=str)[:2000]
            b = json.dumps(c[key], sort_keys=True, default=str)[:2000]
            pytest.fail(f"engines differ in {key}:\n python: {a}\n      c: {b}")


@pytest.mark.parametrize("seed", [1, 2, 3, 7, 42, 1234, 99991, 2**63 - 1])
def test_default_scenario_many_seeds(seed):
    py, c = both(default_scenario(events=8_000, seed=seed))
    assert py["summary"]["totals"]["sent"] == 8_000
    assert_same(py, c)


@pytest.mark.parametrize("guests,vcpus", [(1, 1), (1, 4), (3, 3), (8, 2), (2, 8)])
def test_default_scenario_shapes(guests, vcpus):
    py, c = both(default_scenario(guests=guests, vcpus=vcpus, events=6_000, seed=guests * 100 + vcpus))
    assert_same(py, c)


def _scenario(seed: int, **sim) -> dict:
    base = {"events": 6_000, "seed": seed}
    base.update(sim)
    return {"simulation": base}


MIXED = {
    "dom0": {"vcpus": 3},
    "devices": {
        "nvme": {"service_us": [20, 80], "think_us": [5, 40], "depth": 3},
        "nic": {"service_us": 4, "think_us": [1, 3], "depth": 8, "napi": True},
    },
    "guest": [
        {"name": "web", "count": 2, "vcpus": 2, "devices": ["net", "blk"]},
        {"name": "store", "count": 1, "vcpus": 3, "devices": ["nvme", "blk", "nvme"]},
        {"name": "mini", "count": 2, "vcpus": 1, "devices": ["nic"], "kernel": "minios"},
        {"name": "mini2", "count": 1, "vcpus": 4, "devices": ["net", "nvme"], "kernel": "minios"},
        {"name": "old", "count": 2, "vcpus": 2, "devices": ["blk", "nic"], "layout": "x86_32"},
    ],
}


@pytest.mark.parametrize("seed", [1, 5, 17, 123])
def test_mixed_kernels_layouts_and_custom_devices(seed):
    sc = parse_scenario({**_scenario(seed), **MIXED}, "mixed")
    py, c = both(sc)
    kernels = {t["kernel"] for t in py["tables"]}
    layouts = {t["layout"] for t in py["tables"]}
    assert kernels == {"linux", "minios"} and layouts == {"x86_64", "x86_32"}
    assert_same(py, c)


@pytest.mark.parametrize("seed", [2, 9])
def test_minios_only_and_x86_32_dom0(seed):
    sc = parse_scenario({
        **_scenario(seed, ipi_probability=1.0, lock_probability=0.3),
        "dom0": {"vcpus": 1, "layout": "x86_32"},
        "guest": [{"name": "m", "count": 3, "vcpus": 3, "kernel": "minios", "layout": "x86_32"}],
    }, "minios32")
    py, c = both(sc)
    assert_same(py, c)


@pytest.mark.parametrize("lock,ipi,hz", [(0.0, 0.0, 1000), (1.0, 0.5, 1000), (0.5, 1.0, 100_000),
                                         (0.2, 0.25, 1)])
def test_rates_at_their_extremes(lock, ipi, hz):
    """Heavy lock contention (SCHEDOP_poll, timeouts, kicks), IPI storms, fast and slow timers."""
    sc = parse_scenario({
        **_scenario(11, lock_probability=lock, ipi_probability=ipi, timer_hz=hz),
        "guest": [{"name": "g", "count": 3, "vcpus": 4}],
    }, "rates")
    py, c = both(sc)
    if lock == 1.0:
        assert py["summary"]["totals"]["polls"] > 0 and py["summary"]["totals"]["polls_woken"] > 0
    assert_same(py, c)


def test_runs_in_pieces_and_until_ns():
    """run() again with a larger total, and runs stopped at a simulated time."""
    sc = default_scenario(events=10_000, seed=5)
    py, c = both(sc, runs=((1_000, None), (None, 2_000_000), (None, 2_000_000), (4_000, None),
                           (None, 5_000_000), (None, None)))
    assert py["now"] >= 5_000_000
    assert_same(py, c)


@pytest.mark.parametrize("engine", ["python", "c"])
@pytest.mark.parametrize("events", [-1, 2.5, "10", True])
def test_run_refuses_a_bad_event_count_on_both_engines(engine, events):
    sim = Simulation(default_scenario(events=100), engine=engine)
    with pytest.raises(ValueError, match="events must be a non-negative int"):
        sim.run(events=events)
    assert sim.sent == 0


def test_one_event_and_zero_more():
    sc = default_scenario(events=1, seed=3)
    py, c = both(sc, runs=((None, None), (1, None), (0, None)))
    assert py["summary"]["totals"]["sent"] == 1
    assert_same(py, c)


def test_timelines_for_plots_are_the_same():
    runs = []
    for engine in ("python", "c"):
        sim = Simulation(default_scenario(guests=3, events=5_000, seed=8), record_timeline=True, engine=engine)
        sim.run(events=2_000)
        sim.run()
        runs.append([vs.delivered_at for vs in sim.vcpus.values()])
    assert sum(len(t) for t in runs[0]) > 1000
    assert runs[0] == runs[1]


# ---- what the C engine refuses, and how it stops ---------------------------------------

def test_tracing_changes_nothing_in_the_c_engine():
    """A traced C run makes the same draws and counts as an untraced one, and its trace
    has an event for every send (the differential tests above compare whole traces)."""
    sc = default_scenario(guests=3, vcpus=3, events=6_000, seed=21)
    plain = Simulation(sc, engine="c")
    plain.run()
    rec = TraceRecorder()
    traced = Simulation(sc, engine="c", trace=rec)
    traced.run()
    assert comparable(plain) == comparable(traced)
    events = rec.events
    assert sum(e.get("cat") == "send" for e in events) == 6_000
    assert len(events) == rec.count


def test_an_unknown_engine_is_refused():
    sc = default_scenario(events=100)
    with pytest.raises(ValueError, match="engine must be one of"):
        Simulation(sc, engine="rust")


def test_c_engine_refuses_hooks_it_would_not_call():
    sim = Simulation(default_scenario(events=100), engine="c")
    sim.hv.add_listener("kick", lambda v: None)
    with pytest.raises(ScenarioError, match="listeners"):
        sim.run()
    assert sim.sent == 0  # refused before it started


def test_a_guest_switched_to_fifo_after_boot_runs_the_same():
    """A guest that calls EVTCHNOP_init_control with its ports already bound (Xen raises
    them as it links them once event-array pages exist) and then grows its array in the
    middle of the run: both engines follow it."""
    runs = []
    for engine in ("python", "c"):
        sim = Simulation(default_scenario(guests=2, events=6_000, seed=13), engine=engine)
        sim.run(events=1_000)
        d = sim.doms[2]
        for v in d.vcpus:
            d.init_control(0x100 + v.id, 0, v.id)  # any free frames of the guest's memory
        assert d.abi == "fifo"
        sim.run(events=2_000)                      # no event words yet: raises are deferred
        d.expand_array(0x200)
        sim.run()
        runs.append(comparable(sim))
    py, c = runs
    assert [r["abi"] for r in py["summary"]["by_domain"]] == ["2l", "2l", "fifo"]
    assert py["summary"]["totals"]["sent"] == 6_000
    assert_same(py, c)


def test_interrupted_c_run_reports_what_it_did():
    """Ctrl-C lands between two slices of C work: the counters are those of the events
    actually sent, and they add up."""
    sim = Simulation(default_scenario(events=10**7, seed=4), engine="c")
    calls = []

    def progress(sent, total):
        calls.append(sent)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sim.run(progress=progress)
    s = sim.summary()
    t = s["totals"]
    assert 0 < t["sent"] == sim.sent < 10**7
    assert t["sent"] == t["coalesced"] + t["delivered"] + t["consumed_by_poll"] + t["pending_at_end"]
    # and it can go on, to the same result as an uninterrupted run of the same length
    sim.run(events=t["sent"] + 5_000)
    ref = Simulation(default_scenario(events=t["sent"] + 5_000, seed=4), engine="c")
    ref.run()
    assert comparable(sim) == comparable(ref)


# ---- the C API refuses what does not describe a world ------------------------------------

def test_the_c_api_refuses_bad_tables_without_crashing():
    from xenevtchn._native import ffi, lib

    assert lib.xe_sim_new(1, 0, 1, 1, 0, 0) == ffi.NULL            # no domain
    assert lib.xe_sim_new(1, 1, 33, 1, 0, 0) == ffi.NULL           # more vCPUs than 32 per domain
    sim = Simulation(default_scenario(guests=1, vcpus=1, events=10), engine="python")
    d0, d1 = sim.doms
    s = ffi.gc(lib.xe_sim_new(1, 2, 3, 8, 1, 1), lib.xe_sim_free)
    assert lib.xe_sim_run(s, 10, -1, 100) == -22                   # not started
    assert lib.xe_sim_start(s) == -22                              # no rates, no domains
    assert lib.xe_sim_set_rates(s, 0, 0.5, 0.5) == -22
    assert lib.xe_sim_set_rates(s, 1000, 1.5, 0.5) == -22
    assert lib.xe_sim_set_rates(s, 1000, float("nan"), 0.5) == -22
    assert lib.xe_sim_set_rates(s, 1000, 0.5, 0.5) == 0
    assert lib.xe_sim_set_domain(s, 2, d0._c, 0, 0) == -22          # index out of range
    assert lib.xe_sim_set_domain(s, 0, ffi.NULL, 0, 0) == -22
    assert lib.xe_sim_set_domain(s, 0, d0._c, 7, 0) == -22          # no such kernel
    assert lib.xe_sim_set_domain(s, 0, d0._c, 0, 2) == -22          # its 2 vCPUs past the table
    assert lib.xe_sim_set_domain(s, 0, d0._c, 0, 0) == 0
    assert lib.xe_sim_set_domain(s, 1, d0._c, 0, 2) == -22          # the same domain twice
    assert lib.xe_sim_set_domain(s, 1, d1._c, 0, 2) == 0
    scan = d0.guest._scans[0]
    assert lib.xe_sim_set_vcpu(s, 1, 0, 0, scan, 0, 1, 2) == -22    # vCPU 0 of dom 0 is entry 0
    assert lib.xe_sim_set_vcpu(s, 0, 0, 0, ffi.NULL, 0, 1, 2) == -22
    assert lib.xe_sim_set_vcpu(s, 0, 0, 0, scan, 0, 1, 99) == -22   # no such port entry
    assert lib.xe_sim_set_port(s, 0, 0, 0, 0, 0, 0) == -22          # port 0 is never bound
    assert lib.xe_sim_set_port(s, 0, 0, 5000, 0, 0, 0) == -22       # past the ABI's ports
    assert lib.xe_sim_set_port(s, 0, 0, 5, 9, 0, 0) == -22          # no such kind
    assert lib.xe_sim_set_port(s, 0, 0, 5, 0, 2, 7) == -22          # no such ring
    assert lib.xe_sim_set_device(s, 0, 0, 0.0, 1.0, 1.0, 2.0, 1, 0) == -22   # zero service time
    assert lib.xe_sim_set_device(s, 0, 0, 2.0, 1.0, 1.0, 2.0, 1, 0) == -22   # low > high
    assert lib.xe_sim_set_device(s, 0, 0, 1.0, 2.0, 1.0, 2.0, 0, 0) == -22   # depth 0
    assert lib.xe_sim_set_ring(s, 0, 3, 1, 2, 0, 1) == -22          # no such device
    assert lib.xe_sim_start(s) == -22                               # vCPUs and ports not described
    out = ffi.new("uint64_t[4]")
    assert lib.xe_sim_port_counts(s, 8, out) == -22 and lib.xe_sim_vcpu_counts(s, 3, out) == -22


def test_the_c_engine_keeps_its_memory_flat_in_events():
    """The action queue and the histogram do not grow with the events sent."""
    from xenevtchn._native import ffi, lib

    sim = Simulation(default_scenario(events=400_000, seed=2), engine="c")
    totals = ffi.new("uint64_t[]", lib.XE_SIM_T_WORDS)
    sizes = []
    for n in (20_000, 100_000, 400_000):
        sim.run(events=n)
        lib.xe_sim_totals(sim._engine._s, totals)
        sizes.append((int(totals[lib.XE_SIM_T_QUEUED]), len(sim.latency.counts)))
    assert sim.sent == 400_000
    assert sizes[2][0] <= 2 * sizes[0][0] + 64      # queued actions: the model's, not the run's
    assert sizes[2][1] <= 2 * sizes[0][1] + 256     # histogram buckets hit: the value range's


# ---- FIFO domains (spec xen-hypervisor section 9, guest-side 1.10) --------------------------

@pytest.mark.parametrize("seed", [1, 4, 77, 2**63 - 1])
def test_fifo_default_scenario_dom0_included(seed):
    py, c = both(default_scenario(guests=3, events=8_000, seed=seed, abi="fifo"))
    assert {r["abi"] for r in py["summary"]["by_domain"]} == {"fifo"}
    assert {t["abi"] for t in py["tables"]} == {"fifo"}
    assert py["summary"]["totals"]["sent"] == 8_000
    assert_same(py, c)


MIXED_ABIS = {
    "dom0": {"vcpus": 3, "abi": "fifo"},
    "devices": {
        "nvme": {"service_us": [20, 80], "think_us": [5, 40], "depth": 3, "priority": 2},
        "nic": {"service_us": 4, "think_us": [1, 3], "depth": 8, "napi": True, "priority": 12},
    },
    "guest": [
        {"name": "web", "count": 2, "vcpus": 2, "devices": ["net", "blk"]},
        {"name": "fast", "count": 2, "vcpus": 3, "devices": ["nvme", "blk", "nic"], "abi": "fifo"},
        {"name": "mini", "count": 1, "vcpus": 2, "devices": ["net"], "kernel": "minios"},
        {"name": "old", "count": 2, "vcpus": 2, "devices": ["blk", "nic"], "layout": "x86_32",
         "abi": "fifo"},
    ],
}


@pytest.mark.parametrize("seed", [3, 8, 21])
def test_mixed_2l_and_fifo_guests_with_priorities(seed):
    sc = parse_scenario({**_scenario(seed, lock_probability=0.2), **MIXED_ABIS}, "mixed-abis")
    py, c = both(sc)
    abis = [r["abi"] for r in py["summary"]["by_domain"]]
    assert abis == ["fifo", "2l", "2l", "fifo", "fifo", "2l", "fifo", "fifo"]
    assert_same(py, c)


def test_fifo_priorities_reach_the_channels():
    """priority = N on a device is each of its channels' EVTCHNOP_set_priority: the next
    raise links the event on that queue of the control block (READY bit N)."""
    sc = parse_scenario({
        "simulation": {"events": 10},
        "dom0": {"abi": "fifo"},
        "devices": {"nvme": {"priority": 3}},
        "guest": [{"name": "g", "vcpus": 1, "devices": ["nvme"], "abi": "fifo"}],
    }, "prio")
    sim = Simulation(sc, engine="python")
    ring = sim.rings[0]
    guest, dom0 = ring.guest, sim.doms[0]
    for d in (guest, dom0):
        for v in d.vcpus:  # drain what boot left and start from empty queues
            d.guest.do_upcall(v.id)
    cb = guest.memory.page(0x100)  # the guest's vCPU 0 control block (simulate.FIFO_CONTROL_GFN)
    ready = int.from_bytes(cb[0:4], "little")
    assert ready == 0
    dom0.send(ring.back.port)                      # backend -> frontend, on priority 3
    ready = int.from_bytes(cb[0:4], "little")
    assert ready == 1 << 3
    head3 = int.from_bytes(cb[8 + 4 * 3:12 + 4 * 3], "little")
    assert head3 == ring.front.port


@pytest.mark.parametrize("lock,ipi", [(1.0, 1.0), (0.5, 0.0)])
def test_fifo_under_lock_contention_and_ipi_storms(lock, ipi):
    sc = parse_scenario({
        **_scenario(19, lock_probability=lock, ipi_probability=ipi, timer_hz=20_000),
        "dom0": {"abi": "fifo", "vcpus": 4},
        "devices": {"net": {"priority": 0}, "blk": {"priority": 15}},
        "guest": [{"name": "g", "count": 3, "vcpus": 4, "abi": "fifo"}],
    }, "fifo-rates")
    py, c = both(sc)
    if lock == 1.0:
        assert py["summary"]["totals"]["polls_woken"] > 0
    assert_same(py, c)


def test_fifo_runs_in_pieces_and_until_ns():
    sc = default_scenario(events=10_000, seed=6, abi="fifo")
    py, c = both(sc, runs=((1_500, None), (None, 3_000_000), (5_000, None), (None, None)))
    assert_same(py, c)
