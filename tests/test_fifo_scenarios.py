"""FIFO domains in scenarios: ``abi`` in [dom0] and [[guest]], ``priority`` on a device,
``--abi`` on the command line, the ABI in the summary, and the 2-level port limit.

Written from the spec: a 2-level x86_64 domain has 4,096 ports (1,024 on x86_32), port 0
never bound; FIFO has 2**17 (xen-hypervisor section 9); priorities are 0 (highest) .. 15,
EVTCHNOP_set_priority answers -ENOSYS on a 2-level domain (4.14); Linux boots FIFO with a
control block per vCPU and grows the event array as it binds (guest-side 1.10), and gives
VIRQ_TIMER the highest priority so that it keeps coming first as in its 2-level upcall.
"""

from __future__ import annotations

import json

import pytest

import xenevtchn as xe
from xenevtchn import cli, hypervisor
from xenevtchn.scenario import ScenarioError, parse_scenario
from xenevtchn.simulate import FIFO_CONTROL_GFN, Simulation


def _cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _sc(**over):
    data = {"simulation": {"events": 2_000}, "guest": [{"name": "g", "count": 2}]}
    for key, value in over.items():
        data[key] = value
    return data


# ---- the scenario file's keys ------------------------------------------------------------------

@pytest.mark.parametrize("where,value,msg", [
    ("dom0", "FIFO", "dom0.abi: must be one of '2l', 'fifo', not 'FIFO'"),
    ("dom0", 2, "dom0.abi: must be one of '2l', 'fifo', not 2"),
    ("dom0", "", "dom0.abi: must be one of"),
    ("guest", "3l", "guest[0].abi: must be one of '2l', 'fifo', not '3l'"),
    ("guest", ["fifo"], "guest[0].abi: must be one of"),
    ("guest", True, "guest[0].abi: must be one of"),
])
def test_bad_abi_values_are_refused_naming_the_key(where, value, msg):
    data = _sc()
    if where == "dom0":
        data["dom0"] = {"abi": value}
    else:
        data["guest"][0]["abi"] = value
    with pytest.raises(ScenarioError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(data, "f.toml")


def test_minios_has_no_fifo_abi():
    data = _sc(guest=[{"name": "m", "kernel": "minios", "abi": "fifo"}])
    with pytest.raises(ScenarioError, match=r"guest\[0\]: a minios guest has no FIFO ABI"):
        parse_scenario(data, "f.toml")


@pytest.mark.parametrize("value,msg", [
    (16, "must be in 0..15, not 16"),
    (-1, "must be in 0..15, not -1"),
    (2**40, "must be in 0..15"),
    ("3", "must be an integer, not a string"),
    (2.5, "must be an integer, not a number"),
    (True, "must be an integer, not a boolean"),
    ([1], "must be an integer, not an array"),
])
def test_bad_priorities_are_refused(value, msg):
    data = _sc(dom0={"abi": "fifo"}, devices={"net": {"priority": value}})
    data["guest"][0]["abi"] = "fifo"
    with pytest.raises(ScenarioError, match=f"devices.net.priority: {msg}"):
        parse_scenario(data, "f.toml")


def test_a_priority_on_a_2_level_domains_channels_is_refused():
    """Xen answers set_priority on a 2-level domain with -ENOSYS: the scenario names which
    domains would get it, in one line, before anything is built."""
    data = _sc(dom0={"abi": "fifo"}, devices={"blk": {"priority": 1}},
               guest=[{"name": "a", "abi": "fifo"}, {"name": "b", "devices": ["blk"]},
                      {"name": "c", "devices": ["net"]}])
    with pytest.raises(ScenarioError) as e:
        parse_scenario(data, "f.toml")
    msg = str(e.value)
    assert "\n" not in msg
    assert "devices.blk.priority" in msg and "guest[1] is 2-level" in msg and "guest[2]" not in msg
    data["dom0"] = {}
    with pytest.raises(ScenarioError, match=r"dom0, guest\[1\] are 2-level"):
        parse_scenario(data, "f.toml")
    fifo = parse_scenario(_sc(dom0={"abi": "fifo"}, devices={"blk": {"priority": 1}},
                              guest=[{"name": "a", "abi": "fifo"}]), "f.toml")
    with pytest.raises(ScenarioError, match=r"dom0, guest\[0\] are 2-level \(use --abi fifo"):
        fifo.with_abi("2l")  # what --abi 2l does to a file


def test_a_priority_is_allowed_where_every_end_is_fifo():
    data = _sc(dom0={"abi": "fifo"}, devices={"net": {"priority": 0}, "blk": {"priority": 15}})
    data["guest"][0]["abi"] = "fifo"
    sc = parse_scenario(data, "f.toml")
    assert (sc.devices["net"].priority, sc.devices["blk"].priority) == (0, 15)
    assert sc.dom0_abi == "fifo" and {g.abi for g in sc.guests} == {"fifo"}


def test_default_scenario_abi_argument():
    assert xe.default_scenario(abi="fifo").dom0_abi == "fifo"
    assert xe.default_scenario().dom0_abi == "2l"
    with pytest.raises(ScenarioError, match="abi must be one of 2l, fifo, not 'FIFO'"):
        xe.default_scenario(abi="FIFO")


# ---- the world it builds ---------------------------------------------------------------------

def test_a_fifo_domain_boots_as_linux_does():
    """A control block per vCPU (init_control), event-array pages covering every bound
    port (expand_array), VIRQ_TIMER on priority 0, the rest on Xen's default 7."""
    sim = Simulation(xe.default_scenario(guests=2, vcpus=3, events=10, abi="fifo"), engine="python")
    for d in sim.doms:
        assert d.abi == "fifo"
        assert sorted(d.fifo.control_blocks) == list(range(len(d.vcpus)))
        top = max(sim.ports[d.domid])
        assert len(d.fifo.array_gfns) == top // 1024 + 1
        for port, p in sim.ports[d.domid].items():
            want = 0 if p.kind == "virq" else 7
            assert d.ports.chans[port].priority == want, (d.domid, port, p.label)
    # a timer tick on a guest vCPU is linked on queue 0 of that vCPU's control block
    g = sim.doms[1]
    for v in g.vcpus:
        g.guest.do_upcall(v.id)
    vs = sim.vcpus[(1, 2)]
    sim.hv.send_virq(1, xe.VIRQ_TIMER, 2)
    cb = g.memory.page(FIFO_CONTROL_GFN + 2)
    assert int.from_bytes(cb[0:4], "little") == 1 << 0
    assert int.from_bytes(cb[8:12], "little") == vs.timer.port


def test_a_big_fifo_dom0_grows_its_event_array():
    """x86_32 dom0 would have 1,023 ports; on FIFO it binds 1,200 backends and more,
    past its first event-array page."""
    data = {"simulation": {"events": 3_000}, "dom0": {"layout": "x86_32", "abi": "fifo"},
            "guest": [{"name": "g", "count": 600, "vcpus": 1}]}
    sim = Simulation(parse_scenario(data, "big"), engine="c")
    dom0 = sim.doms[0]
    assert max(sim.ports[0]) > 1024 and len(dom0.fifo.array_gfns) == max(sim.ports[0]) // 1024 + 1
    sim.run()
    t = sim.summary()["totals"]
    assert t["sent"] == 3_000 == t["coalesced"] + t["delivered"] + t["consumed_by_poll"] + t["pending_at_end"]


# ---- the 2-level port limit --------------------------------------------------------------------

def _no_build(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a domain was built for a scenario that cannot run")
    monkeypatch.setattr(hypervisor.Hypervisor, "create_domain", refuse)


def test_2_level_dom0_out_of_ports_stops_before_it_starts(capsys, monkeypatch):
    _no_build(monkeypatch)
    rc, out, err = _cli(capsys, "simulate", "--guests", "2100", "--events", "100")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("xenevtchn simulate: error: default scenario: dom0 would need 4,208 event-channel ports")
    assert "x86_64 2-level ABI has 4,095" in err and "--abi fifo" in err
    rc, _, err = _cli(capsys, "simulate", "--guests", "2100", "--abi", "2l")
    assert rc == 2 and "2-level ABI has 4,095" in err


def test_x86_32_dom0_limit_is_1024_ports(capsys, monkeypatch, tmp_path):
    _no_build(monkeypatch)
    f = tmp_path / "s.toml"
    f.write_text('[dom0]\nlayout = "x86_32"\n[[guest]]\ncount = 600\n')
    rc, _, err = _cli(capsys, "simulate", "--scenario", str(f))
    assert rc == 2 and err.count("\n") == 1
    assert "x86_32 2-level ABI has 1,023 (ports 1..1,023)" in err
    assert 'abi = "fifo" in [dom0]' in err and "--abi fifo" in err


def test_the_same_run_with_abi_fifo_works(capsys):
    rc, out, err = _cli(capsys, "simulate", "--guests", "2100", "--abi", "fifo", "--events", "3000", "--json", "-q")
    assert rc == 0, err
    s = json.loads(out)
    assert s["scenario"]["domains"] == 2101 and s["totals"]["sent"] == 3000
    assert {d["abi"] for d in s["by_domain"]} == {"fifo"}
    assert s["scenario"]["channels"] > 4096


# ---- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["c", "python"])
def test_simulate_abi_fifo_switches_every_domain(capsys, engine):
    rc, out, _ = _cli(capsys, "simulate", "--abi", "fifo", "--engine", engine, "--events", "3000", "--json")
    assert rc == 0
    s = json.loads(out)
    assert [d["abi"] for d in s["by_domain"]] == ["fifo"] * 5
    rc, out, _ = _cli(capsys, "simulate", "--abi", "fifo", "--engine", engine, "--events", "3000")
    header = next(line for line in out.splitlines() if line.startswith("domain"))
    assert header.split()[:2] == ["domain", "abi"]
    rows = [line for line in out.splitlines() if line.startswith(("dom0", "d1 "))]
    assert len(rows) == 2 and all(r.split()[1 if r.startswith("dom0") else 2] == "fifo" for r in rows)


def test_simulate_default_abi_is_2l_in_the_summary(capsys):
    rc, out, _ = _cli(capsys, "simulate", "--events", "500", "--json")
    assert rc == 0 and {d["abi"] for d in json.loads(out)["by_domain"]} == {"2l"}


@pytest.mark.parametrize("value", ["FIFO", "3l", "", "fifo,2l"])
def test_bad_abi_on_the_command_line(capsys, value):
    with pytest.raises(SystemExit) as e:
        cli.main(["simulate", "--abi", value])
    _, err = capsys.readouterr()
    assert e.value.code == 2 and "argument --abi: invalid choice" in err and err.count("\n") == 1


def test_abi_overrides_a_scenario_files_domains(capsys, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[dom0]\nabi = "2l"\n[[guest]]\nname = "a"\ncount = 2\n[[guest]]\nname = "b"\nabi = "fifo"\n')
    rc, out, _ = _cli(capsys, "simulate", "--scenario", str(f), "--events", "800", "--json")
    assert rc == 0 and [d["abi"] for d in json.loads(out)["by_domain"]] == ["2l", "2l", "2l", "fifo"]
    rc, out, _ = _cli(capsys, "simulate", "--scenario", str(f), "--abi", "fifo", "--events", "800", "--json")
    assert rc == 0 and {d["abi"] for d in json.loads(out)["by_domain"]} == {"fifo"}
    f.write_text('[[guest]]\nkernel = "minios"\n[[guest]]\n')  # Mini-OS has no FIFO: it stays 2-level
    rc, out, _ = _cli(capsys, "simulate", "--scenario", str(f), "--abi", "fifo", "--events", "800", "--json")
    assert rc == 0 and [d["abi"] for d in json.loads(out)["by_domain"]] == ["fifo", "2l", "fifo"]


def test_list_names_each_domains_abi(capsys):
    rc, out, _ = _cli(capsys, "list", "--abi", "fifo", "--guests", "1", "--at", "50")
    assert rc == 0
    heads = [line for line in out.splitlines() if "domid" in line]
    assert len(heads) == 2 and all("FIFO)" in h for h in heads)
    rc, out, _ = _cli(capsys, "list", "--guests", "1", "--json")
    assert rc == 0 and {t["abi"] for t in json.loads(out)["domains"]} == {"2l"}


def test_the_readmes_scenario_files_run_the_same_on_both_engines():
    """The README's TOML blocks (a FIFO dom0, FIFO and Mini-OS guests, a priority) are
    scenarios as written."""
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks
    for i, block in enumerate(blocks):
        sc = parse_scenario(tomllib.loads(block), f"README.md toml block {i}").with_overrides(events=4_000)
        out = []
        for engine in ("python", "c"):
            sim = Simulation(sc, engine=engine)
            sim.run()
            out.append({k: v for k, v in sim.summary().items() if k not in ("wall_s", "events_per_s", "engine")})
        assert out[0] == out[1]
    assert any(r["abi"] == "fifo" for r in out[0]["by_domain"])


def test_the_c_api_refuses_a_bad_fifo_consumer_or_hook():
    from xenevtchn._native import ffi, lib

    sim = Simulation(xe.default_scenario(guests=1, vcpus=2, events=10, abi="fifo"), engine="python")
    d0, d1 = sim.doms
    s = ffi.gc(lib.xe_sim_new(1, 2, 4, 8, 1, 1), lib.xe_sim_free)
    assert lib.xe_sim_set_vcpu_fifo(s, 0, d0.guest._fifo_scans[0]) == -22   # vCPU not described yet
    assert lib.xe_sim_set_domain(s, 0, d0._c, 0, 0) == 0                    # a FIFO domain is taken
    assert lib.xe_sim_set_vcpu(s, 0, 0, 0, d0.guest._scans[0], 0, 1, 2) == 0
    assert lib.xe_sim_set_vcpu_fifo(s, 0, ffi.NULL) == -22
    assert lib.xe_sim_set_vcpu_fifo(s, 0, d0.guest._fifo_scans[1]) == -22   # another vCPU's
    assert lib.xe_sim_set_vcpu_fifo(s, 9, d0.guest._fifo_scans[0]) == -22
    assert lib.xe_sim_set_vcpu_fifo(s, 0, d0.guest._fifo_scans[0]) == 0
    assert lib.xe_sim_set_port(s, 0, 0, 5000, 0, 0, 0) == 0                 # FIFO: past 4,096 is fine
    assert lib.xe_sim_set_port(s, 1, 0, 1 << 17, 0, 0, 0) == -22            # past FIFO's 2**17
    assert lib.xe_sim_hook(s, 0, 0) == -22                                  # not started
    c = Simulation(xe.default_scenario(guests=1, events=10, abi="fifo"), engine="c")
    assert lib.xe_sim_hook(c._engine._s, 99, 1) == -22                      # no such vCPU


def test_a_sweep_point_out_of_2_level_ports_is_refused_before_any_run(capsys, tmp_path, monkeypatch):
    _no_build(monkeypatch)
    out = tmp_path / "r.csv"
    rc, _, err = _cli(capsys, "sweep", "--param", "abi=fifo,2l", "--param", "guests=2100", "--out", str(out))
    assert rc == 2 and err.count("\n") == 1 and not out.exists()
    assert "abi=2l, guests=2100" in err and "2-level ABI has 4,095" in err and "fifo" in err
