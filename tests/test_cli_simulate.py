"""``xenevtchn simulate``, ``list``, ``bench`` and ``--help`` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xenevtchn.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_default_simulate_prints_the_summary_table(capsys):
    rc, out, err = run(capsys)  # no command: the demo, as before
    assert rc == 0 and "summary:" in out
    rc, out, err = run(capsys, "simulate")
    assert rc == 0 and err == ""  # stderr is no terminal here: no progress bar
    lines = out.splitlines()
    assert lines[0].startswith("xenevtchn simulate: 5 domains (dom0 + 4 guests), 10 vCPUs")
    assert lines[1].startswith("100,000 events in ") and "events/s" in lines[1]
    assert lines[3].split() == ["sent", "delivered", "coalesced", "masked"]
    assert lines[4].split()[:3] == ["all", "events", "100,000"]
    assert [ln.split()[0] for ln in lines[5:9]] == ["interdomain", "virq", "ipi", "pirq"]
    for word in ("sent from", "received", "upcalls", "kicks", "polls woken", "dom0", "d4 guest-3",
                 "latency", "still pending at the end"):
        assert word in out, word


def test_json_has_the_same_numbers(capsys):
    rc, out, _ = run(capsys, "simulate", "--events", "3000", "--json", "--guests", "2", "--vcpus", "3")
    s = json.loads(out)
    assert rc == 0 and s["totals"]["sent"] == 3000
    assert s["scenario"]["guests"] == 2 and s["scenario"]["vcpus"] == 2 + 2 * 3
    assert set(s["by_kind"]) == {"interdomain", "virq", "ipi", "pirq"}
    assert s["events_per_s"] > 0 and s["wall_s"] > 0
    rc, table, _ = run(capsys, "simulate", "--events", "3000", "--guests", "2", "--vcpus", "3")
    assert f"{s['totals']['coalesced']:,}" in table and f"{s['totals']['upcalls']:,}" in table


def test_seed_makes_runs_repeat(capsys):
    def counts(*extra):
        s = json.loads(run(capsys, "simulate", "--events", "2000", "--json", *extra)[1])
        return {k: v for k, v in s.items() if k not in ("wall_s", "events_per_s")}

    assert counts("--seed", "11") == counts("--seed", "11") != counts("--seed", "12")


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    rc, out, err = run(capsys, "simulate", "--events", "3000", "--progress")
    assert rc == 0 and "\r" in err and "100%" in err and "3,000/3,000 events" in err
    assert "\r" not in out
    rc, out, err = run(capsys, "simulate", "--events", "3000", "--progress", "--quiet")
    assert err == ""


def test_list_prints_port_tables(capsys):
    rc, out, _ = run(capsys, "list")
    assert rc == 0 and out.startswith("port tables after 0 events")
    assert "dom0 (domid 0, privileged, 2 vCPUs, x86_64, 2-level): 16 ports" in out
    assert "d1 guest-0 (domid 1, linux, 2 vCPUs, x86_64, 2-level): 8 ports" in out
    row = next(ln for ln in out.splitlines() if ln.split()[:3] == ["3", "0", "interdomain"])
    assert row.split()[3:6] == ["d1:1", "0", "0"] and "netback" in row
    rc, out, _ = run(capsys, "list", "--at", "2000", "--json", "--domain", "2")
    doc = json.loads(out)
    assert doc["at_events"] == 2000 and [d["domid"] for d in doc["domains"]] == [2]
    ports = doc["domains"][0]["ports"]
    kinds = {p["type"] for p in ports}
    assert kinds == {"interdomain", "virq", "ipi"}
    kicker = [p for p in ports if "kicker" in p["label"]]
    assert kicker and all(p["masked"] for p in kicker)  # polled, never delivered
    assert all(set(p) == {"port", "vcpu", "type", "remote", "pending", "masked", "label"} for p in ports)


def test_list_at_a_point_matches_the_library(capsys):
    from xenevtchn.scenario import default_scenario
    from xenevtchn.simulate import Simulation

    sim = Simulation(default_scenario(seed=4))
    sim.run(events=1234)
    doc = json.loads(run(capsys, "list", "--at", "1234", "--seed", "4", "--json")[1])
    for d, table in zip(sim.hv.domains, doc["domains"]):
        for p in table["ports"]:
            st = d.status(p["port"])
            assert (int(st.vcpu), d.shared_info.is_pending(p["port"]), d.shared_info.is_masked(p["port"])) == \
                   (p["vcpu"], p["pending"], p["masked"])


@pytest.mark.parametrize("cmd", [["--help"], ["demo", "--help"], ["simulate", "--help"], ["list", "--help"]])
def test_every_command_has_help(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main(cmd)
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: xenevtchn")


def test_python_dash_m_and_bench_help():
    for argv in (["simulate", "--help"], ["bench", "--help"]):
        # -P: the source tree (maybe unbuilt) must not shadow the installed package
        r = subprocess.run([sys.executable, "-P", "-m", "xenevtchn", *argv], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "usage: xenevtchn" in r.stdout, r.stderr


def test_bench_hands_its_arguments_to_the_bench_module(capsys, monkeypatch):
    import types

    got = []
    fake = types.ModuleType("xenevtchn.bench")
    fake.main = lambda argv: got.append(argv) or 0
    monkeypatch.setitem(sys.modules, "xenevtchn.bench", fake)
    import xenevtchn

    monkeypatch.setattr(xenevtchn, "bench", fake, raising=False)
    assert main(["bench", "--quick", "-k", "send"]) == 0
    assert got == [["--quick", "-k", "send"]]


def test_bench_without_its_module_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "xenevtchn.bench", None)  # import fails as if absent
    import xenevtchn

    monkeypatch.delattr(xenevtchn, "bench", raising=False)
    rc, out, err = run(capsys, "bench")
    assert rc == 2 and err.startswith("xenevtchn bench: error: the benchmark module is not available")
    assert len(err.splitlines()) == 1
