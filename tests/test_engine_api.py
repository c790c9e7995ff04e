"""The scenario engine as a Python API: exports, scenarios built in Python, run limits, counters."""

from __future__ import annotations

import pandas as pd
import pytest

import xenevtchn as xe


def _no_wall(summary):
    return {k: v for k, v in summary.items() if k not in ("wall_s", "events_per_s")}


def test_the_engine_names_are_exported_from_the_package_root():
    from xenevtchn import scenario, simulate
    assert xe.Simulation is simulate.Simulation
    assert xe.Scenario is scenario.Scenario
    assert xe.load_scenario is scenario.load_scenario
    assert xe.parse_scenario is scenario.parse_scenario
    assert xe.default_scenario is scenario.default_scenario
    assert issubclass(xe.ScenarioError, ValueError)


def test_a_scenario_built_in_python_runs_like_the_same_one_parsed():
    built = xe.Scenario(
        guests=(xe.GuestSpec("web", count=2, vcpus=2, devices=("net",)),),
        devices={"net": xe.DeviceSpec("net", service_us=(5.0, 20.0), think_us=(2.0, 30.0),
                                      depth=4, pirq=16, napi=True)},
        events=3000, seed=7)
    parsed = xe.parse_scenario({
        "simulation": {"events": 3000, "seed": 7},
        "guest": [{"name": "web", "count": 2, "vcpus": 2, "devices": ["net"]}],
    })
    a, b = xe.Simulation(built), xe.Simulation(parsed)
    a.run()
    b.run()
    sa, sb = _no_wall(a.summary()), _no_wall(b.summary())
    sa["scenario"].pop("source"), sb["scenario"].pop("source")
    assert sa == sb
    assert sa["totals"]["sent"] == 3000
    assert [r["name"] for r in a.summary()["by_domain"]] == ["dom0", "d1 web-0", "d2 web-1"]


def test_run_for_n_events_then_on():
    sim = xe.Simulation(xe.default_scenario(guests=2, events=5000))
    sim.run(events=1000)
    assert sim.summary()["totals"]["sent"] == 1000
    sim.run()
    whole = xe.Simulation(xe.default_scenario(guests=2, events=5000))
    whole.run()
    assert _no_wall(sim.summary()) == _no_wall(whole.summary())


def test_run_until_a_simulated_time():
    sim = xe.Simulation(xe.default_scenario(guests=2, events=100_000))
    sim.run(until_ns=300_000)
    assert sim.hv.now == 300_000
    sent = sim.summary()["totals"]["sent"]
    assert 0 < sent < 100_000
    sim.run(until_ns=600_000)
    assert sim.hv.now == 600_000
    assert sim.summary()["totals"]["sent"] > sent
    with pytest.raises(ValueError):
        sim.run(until_ns=-1)


def test_per_vcpu_and_per_port_counters_add_up_to_the_summary():
    sim = xe.Simulation(xe.default_scenario(guests=3, vcpus=2, events=4000))
    sim.run()
    s = sim.summary()
    vc = sim.vcpu_counters()
    assert len(vc) == s["scenario"]["vcpus"] == 2 + 3 * 2
    for key in ("upcalls", "kicks", "polls_woken"):
        assert sum(r[key] for r in vc) == s["totals"][key]
    pc = sim.port_counters()
    assert len(pc) == s["scenario"]["channels"]
    for m in ("sent", "delivered", "coalesced", "masked"):
        assert sum(r[m] for r in pc) == s["totals"][m]
        for kind, t in s["by_kind"].items():
            assert sum(r[m] for r in pc if r["kind"] == kind) == t[m]


def test_summary_frame_is_a_dataframe_of_the_domains():
    sim = xe.Simulation(xe.default_scenario(guests=2, events=2000))
    sim.run()
    df = sim.summary_frame()
    assert isinstance(df, pd.DataFrame)
    rows = sim.summary()["by_domain"]
    assert list(df.index) == [r["domid"] for r in rows]
    assert list(df["upcalls"]) == [r["upcalls"] for r in rows]
