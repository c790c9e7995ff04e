"""HVM/PVH guests in scenarios (issue 19 item 7 for items 1-2): ``type`` in ``[[guest]]``,
the built-in example with per-vCPU vector upcalls, ``xenevtchn list`` showing the type,
and the C engine refusing HVM guests in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import xenevtchn as xe
from xenevtchn.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hvm_scenario.toml"


def _sc(type_, events=3000):
    return xe.parse_scenario({"simulation": {"events": events, "seed": 3},
                              "guest": [{"name": "g", "count": 2, "vcpus": 2, "type": type_}]})


@pytest.mark.parametrize("t", ["pv", "hvm", "pvh"])
def test_guest_type_is_parsed(t):
    sc = _sc(t)
    assert sc.guests[0].type == t


def test_bad_type_is_refused():
    with pytest.raises(xe.ScenarioError, match="type"):
        _sc("arm")
    with pytest.raises(xe.ScenarioError):
        _sc(1)


def test_hvm_guests_take_their_events_through_vectors():
    sim = xe.Simulation(_sc("hvm"), engine="python")
    seen = []
    sim.hv.add_listener("interrupt", lambda v, vec: seen.append((v.domain.type, vec)))
    sim.hv.add_listener("kick", lambda v: seen.append((v.domain.type, "kick")))
    sim.run()
    s = sim.summary()
    assert s["totals"]["sent"] == 3000
    assert {d.type for d in sim.doms} == {"pv", "hvm"}
    assert ("hvm", 0xF3) in seen and ("pv", "kick") in seen
    assert ("hvm", "kick") not in seen           # vectors win: never a PV kick
    assert not any(d.callback_asserted for d in sim.doms)   # the GSI-1 callback is never driven
    assert all(v.upcall_vector == 0xF3 for d in sim.doms[1:] for v in d.vcpus)


def test_python_engine_is_deterministic_for_hvm():
    a = xe.Simulation(_sc("pvh"), engine="python")
    b = xe.Simulation(_sc("pvh"), engine="python")
    a.run()
    b.run()
    sa, sb = a.summary(), b.summary()
    for s in (sa, sb):
        s.pop("wall_s", None)
        s.pop("events_per_s", None)
    assert sa == sb


def test_c_engine_refuses_hvm_in_one_line():
    with pytest.raises(xe.ScenarioError) as ei:
        xe.Simulation(_sc("hvm"), engine="c")
    msg = str(ei.value)
    assert "\n" not in msg and "HVM" in msg and "python" in msg


def test_example_scenario_runs_and_lists(capsys):
    sc = xe.load_scenario(EXAMPLE)
    assert [g.type for g in sc.guests] == ["hvm", "pv"]
    rc = main(["simulate", "--engine", "python", "--scenario", str(EXAMPLE), "--events", "2000"])
    out, _ = capsys.readouterr()
    assert rc == 0 and "hvm-web-0" in out
    rc = main(["list", "--scenario", str(EXAMPLE), "--at", "200"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "d1 hvm-web-0 (domid 1, linux, HVM, 4 vCPUs, x86_64, 2-level)" in out
    assert "d3 pv-db (domid 3, linux, 2 vCPUs, x86_64, 2-level)" in out
    rc = main(["list", "--scenario", str(EXAMPLE), "--json"])
    out, _ = capsys.readouterr()
    types = [d["type"] for d in json.loads(out)["domains"]]
    assert rc == 0 and types == ["pv", "hvm", "hvm", "pv"]
