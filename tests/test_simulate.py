"""The scenario engine: its counts are the library's and add up, runs are deterministic,
and scenario files are checked key by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenevtchn.scenario import ScenarioError, default_scenario, load_scenario, parse_scenario
from xenevtchn.simulate import KINDS, METRICS, Simulation

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scenario.toml"


def run(sc, **kw):
    sim = Simulation(sc, **kw)
    sim.run()
    return sim, sim.summary()


def counts(summary):
    """Everything but the wall-clock fields."""
    return {k: v for k, v in summary.items() if k not in ("wall_s", "events_per_s", "engine")}


@pytest.fixture(scope="module")
def default_run():
    return run(default_scenario(events=20_000))


def test_every_event_is_accounted_for(default_run):
    sim, s = default_run
    t = s["totals"]
    assert t["sent"] == 20_000
    assert t["sent"] == t["coalesced"] + t["delivered"] + t["consumed_by_poll"] + t["pending_at_end"]
    for m in METRICS:
        assert t[m] == sum(s["by_kind"][k][m] for k in KINDS)
    assert sum(d["received"] for d in s["by_domain"]) == t["sent"]
    assert sum(d["delivered"] for d in s["by_domain"]) == t["delivered"]
    assert sum(d["upcalls"] for d in s["by_domain"]) == t["upcalls"]
    # Interdomain and IPI sends come from a domain; VIRQs and PIRQs from Xen.
    assert sum(d["sent_from"] for d in s["by_domain"]) == \
        s["by_kind"]["interdomain"]["sent"] + s["by_kind"]["ipi"]["sent"]
    assert s["latency_us"]["count"] == t["delivered"]


def test_the_default_scenario_does_all_it_claims(default_run):
    sim, s = default_run
    assert s["scenario"]["domains"] == 5 and s["scenario"]["vcpus"] == 10
    for k in KINDS:
        assert s["by_kind"][k]["sent"] > 0 and s["by_kind"][k]["delivered"] > 0, k
    t = s["totals"]
    assert t["coalesced"] > 0 and t["masked"] > 0
    assert t["polls"] > 0 and t["polls_woken"] > 0 and t["consumed_by_poll"] > 0
    assert t["upcalls"] >= t["kicks"] > 0
    assert s["requests"]["completed"] > 1000
    assert 0 <= s["latency_us"]["p50"] <= s["latency_us"]["p99"] <= s["latency_us"]["max"]
    # The timer: one VIRQ_TIMER per vCPU per millisecond of simulated time.
    ticks = s["by_kind"]["virq"]["sent"]
    assert abs(ticks - 10 * s["sim_time_us"] / 1000) <= 10


def test_counts_match_what_the_library_reports():
    """Independent counters around the library's own hooks and upcalls agree with the summary.

    (Python engine: it calls these hooks; the C engine's counts are checked against it in
    test_engine_differential.py.)"""
    sim = Simulation(default_scenario(events=8000, seed=2), engine="python")
    seen = {"kicks": 0, "wakes": 0, "handled": 0, "upcalls": 0}
    kick, wake = sim.hv.on_kick, sim.hv.on_wake

    def on_kick(v):
        seen["kicks"] += 1
        kick(v)

    def on_wake(v):
        seen["wakes"] += 1
        wake(v)

    sim.hv.on_kick, sim.hv.on_wake = on_kick, on_wake
    for d in sim.hv.domains:
        def counted(vcpu=0, handler=None, _orig=d.guest.do_upcall):
            ports = _orig(vcpu, handler)
            seen["upcalls"] += 1
            seen["handled"] += len(ports)
            return ports

        d.guest.do_upcall = counted
    sim.run()
    t = sim.summary()["totals"]
    assert (t["kicks"], t["polls_woken"], t["delivered"], t["upcalls"]) == \
        (seen["kicks"], seen["wakes"], seen["handled"], seen["upcalls"])
    pending = sum(d.shared_info.is_pending(p) for d in sim.hv.domains for p in range(1, 64))
    assert pending == t["pending_at_end"]


def test_same_seed_same_run_other_seed_other_run():
    a = counts(run(default_scenario(events=5000, seed=3))[1])
    b = counts(run(default_scenario(events=5000, seed=3))[1])
    c = counts(run(default_scenario(events=5000, seed=4))[1])
    assert a == b and a != c


def test_a_run_can_go_on():
    sim = Simulation(default_scenario(events=4000, seed=9))
    sim.run(events=1500)
    assert sim.sent == 1500
    sim.run(events=4000)
    once = run(default_scenario(events=4000, seed=9))[1]
    assert counts(sim.summary())["totals"] == counts(once)["totals"]


def test_tracing_changes_nothing():
    from xenevtchn.trace import TraceRecorder

    plain = counts(run(default_scenario(events=3000))[1])
    traced = counts(run(default_scenario(events=3000), trace=TraceRecorder(), record_timeline=True,
                        engine="python")[1])
    assert plain == traced


def test_the_example_scenario_file_runs_with_minios_and_x86_32_guests():
    sc = load_scenario(EXAMPLE).with_overrides(events=5000)
    assert sc.nr_guests == 5 and sc.dom0_vcpus == 4 and sc.seed == 7
    sim, s = run(sc)
    stub = sim.hv.domain(5)
    assert (stub.layout, stub.guest.mode) == ("x86_32", "minios")
    assert [d["name"] for d in s["by_domain"]] == ["dom0", "d1 web-0", "d2 web-1", "d3 web-2", "d4 db", "d5 stub"]
    assert all(d["delivered"] > 0 for d in s["by_domain"])
    t = s["totals"]
    assert t["sent"] == t["coalesced"] + t["delivered"] + t["consumed_by_poll"] + t["pending_at_end"]


def test_one_vcpu_guests_never_contend_or_ipi():
    sim, s = run(default_scenario(guests=2, vcpus=1, events=3000))
    assert all(d["polls_woken"] == 0 for d in s["by_domain"][1:])
    assert s["totals"]["sent"] == 3000


GOOD = {"guest": [{"vcpus": 2}]}


@pytest.mark.parametrize("doc, message", [
    ({"guest": [{"vpcus": 2}]}, "unknown key 'guest[0].vpcus' (did you mean 'vcpus'?)"),
    ({"simulation": {"event": 5}, **GOOD}, "unknown key 'simulation.event' (did you mean 'events'?)"),
    ({"simulations": {}, **GOOD}, "unknown key 'simulations' (did you mean 'simulation'?)"),
    ({"simulation": {"events": "many"}, **GOOD}, "simulation.events: must be an integer, not a string"),
    ({"simulation": {"events": 0}, **GOOD}, "simulation.events: must be in 1..1000000000, not 0"),
    ({"simulation": {"seed": True}, **GOOD}, "simulation.seed: must be an integer, not a boolean"),
    ({"simulation": {"ipi_probability": 2}, **GOOD}, "simulation.ipi_probability: must be in 0..1"),
    ({"dom0": {"vcpus": 33}, **GOOD}, "dom0.vcpus: must be in 1..32, not 33"),
    ({"dom0": {"layout": "arm"}, **GOOD}, "dom0.layout: must be one of 'x86_64', 'x86_32'"),
    ({"devices": {"net": {"service_us": [5]}}, **GOOD}, "devices.net.service_us: must be [low, high]"),
    ({"devices": {"net": {"service_us": [9, 1]}}, **GOOD}, "devices.net.service_us: must satisfy 0 < low <= high"),
    ({"devices": {"net": {"pirq": 300}}, **GOOD}, "devices.net.pirq: must be in 1..255"),
    # PIRQ 0 is never bindable (Xen's pirq_access_permitted; issue 19)
    ({"devices": {"net": {"pirq": 0}}, **GOOD}, "devices.net.pirq: must be in 1..255"),
    ({"devices": {"net": {"napi": "yes"}}, **GOOD}, "devices.net.napi: must be true or false"),
    ({"devices": {"net": {"colour": 1}}, **GOOD}, "unknown key 'devices.net.colour'"),
    ({"devices": {"net": {"pirq": 17}}, **GOOD}, "devices.net.pirq: PIRQ 17 is also used by device 'blk'"),
    ({"guest": [{"devices": ["nett"]}]}, "guest[0].devices: unknown device 'nett' (did you mean 'net'?)"),
    ({"guest": [{"devices": "net"}]}, "guest[0].devices: must be an array of device names"),
    ({"guest": [{"kernel": "bsd"}]}, "guest[0].kernel: must be one of 'linux', 'minios'"),
    ({"guest": [{"count": 32752}]},
     "guest[0].count: must be in 1..32751, not 32752 (Xen has 32,751 domain ids for guests: domids end "
     "below DOMID_FIRST_RESERVED (0x7FF0) and dom0 is domid 0)"),
    ({"guest": [{"name": "a b"}]}, "guest[0].name: must be a non-empty name"),
    ({"guest": {"vcpus": 1}}, "guest: must be an array of tables"),
    ({}, "no guests: add at least one [[guest]] table"),
    ({"guest": [{"count": 30000}, {"count": 3000}]},
     "33,000 guests in all; at most 32,751: Xen has 32,751 domain ids for guests"),
    ({"guest": [{"devices": ["net"] * 1100, "layout": "x86_32"}]},
     "guest[0] needs 1103 ports; the x86_32 2-level ABI has 1023"),
    ({"guest": [{"count": 1000, "devices": ["net"] * 5}]}, "dom0 would need 5,007 event-channel ports"),
])
def test_scenario_mistakes_name_the_key(doc, message):
    with pytest.raises(ScenarioError) as e:
        parse_scenario(doc, "s.toml")
    assert str(e.value).startswith("s.toml: ") and message in str(e.value), str(e.value)


def test_scenario_file_errors(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read scenario file .*No such file"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[simulation\nevents = 1\n")
    with pytest.raises(ScenarioError, match=r"bad.toml: invalid TOML: .*line 1"):
        load_scenario(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(bad)
    assert isinstance(ScenarioError("x"), ValueError)


def test_scenario_defaults():
    sc = parse_scenario({"guest": [{}], "devices": {"nvme": {}}})
    g = sc.guests[0]
    assert (g.count, g.vcpus, g.devices, g.kernel, g.layout) == (1, 1, ("net", "blk"), "linux", "x86_64")
    assert set(sc.devices) == {"net", "blk"}            # nvme is defined but unused
    sc = parse_scenario({"guest": [{"devices": ["nvme"]}], "devices": {"nvme": {}}})
    assert sc.devices["nvme"].pirq == 18      # the first free PIRQ from 16 (net: 16, blk: 17)


def test_python_engine_stops_between_actions_on_sigint():
    """SIGINT while the Python engine runs is raised at the next action boundary, so the
    counters of the interrupted run add up, as the C engine's do; the caller's SIGINT
    handler is back in place afterwards. The signal arrives inside an action: from a kick
    listener, between the hypervisor's send and the engine's accounting of it."""
    import os
    import signal

    sim = Simulation(default_scenario(events=10**6), engine="python")
    kicks = []

    def kick(vcpu: object) -> None:
        kicks.append(vcpu)
        if len(kicks) == 500:
            os.kill(os.getpid(), signal.SIGINT)

    sim.hv.add_listener("kick", kick)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        sim.run()
    assert signal.getsignal(signal.SIGINT) is before
    t = sim.summary()["totals"]
    assert 0 < t["sent"] < 10**6
    assert t["sent"] == t["coalesced"] + t["delivered"] + t["consumed_by_poll"] + t["pending_at_end"]
    sim.run(events=t["sent"] + 1000)     # and it goes on from there
    assert sim.sent == t["sent"] + 1000
