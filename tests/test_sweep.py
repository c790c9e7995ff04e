"""``xenevtchn sweep`` and ``xe.sweep``: the grid parser, rows equal to single runs, failed runs,
output files, Ctrl-C, and a real Dask cluster (a scheduler and two workers as processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import xenevtchn as xe
from xenevtchn import sweeps
from xenevtchn.cli import main
from xenevtchn.grid import GridError, builtin_data, expand, parse_params, parse_values

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scenario.toml"
BIN = Path(sys.executable).parent


def _no_wall(summary):
    return {k: v for k, v in summary.items() if k not in sweeps.WALL_FIELDS}


def _no_wall_records(records):
    return [{**r, "summary": _no_wall(r["summary"]) if r["summary"] else None} for r in records]


def _cli(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


# ---- the grid parser ----------------------------------------------------------------------

def test_values_lists_ranges_and_typed_literals():
    assert parse_values("guests", "4,16,64") == [4, 16, 64]
    assert parse_values("seed", "1..5") == [1, 2, 3, 4, 5]
    assert parse_values("seed", " 7 .. 7 ") == [7]
    assert parse_values("events", "1_000,2000") == [1000, 2000]
    assert parse_values("abi", "2l,fifo") == ["2l", "fifo"]
    assert parse_values("simulation.ipi_probability", "0.1,0.3") == [0.1, 0.3]
    assert parse_values("devices.net.service_us", "[5, 20],[10,40],7") == [[5, 20], [10, 40], 7]
    assert parse_values("devices.net.napi", "true,false") == [True, False]
    assert parse_values("dom0.layout", "x86_64,x86_32") == ["x86_64", "x86_32"]
    assert parse_values("guest[0].name", '"a,b",c') == ["a,b", "c"]
    assert parse_values("simulation.timer_hz", "10..12") == [10, 11, 12]


def test_params_and_expansion_in_grid_order():
    grid = parse_params(["guests=1,2", "seed=3..4", "simulation.ipi_probability=0.5"])
    assert grid == {"guests": [1, 2], "seed": [3, 4], "simulation.ipi_probability": [0.5]}
    points = expand(grid, events=100)
    assert [p.params for p in points] == [
        {"guests": g, "seed": s, "simulation.ipi_probability": 0.5} for g in (1, 2) for s in (3, 4)]
    assert [p.index for p in points] == [0, 1, 2, 3]
    sc = points[3].scenario
    assert (sc.nr_guests, sc.seed, sc.events, sc.ipi_probability) == (2, 4, 100, 0.5)


def test_dotted_keys_reach_the_scenario():
    (p,) = expand({"devices.net.service_us": [[3, 9]], "guest.vcpus": [3], "dom0.vcpus": [4],
                   "simulation.timer_hz": [250]})
    sc = p.scenario
    assert sc.devices["net"].service_us == (3.0, 9.0) and sc.devices["blk"] == xe.default_scenario().devices["blk"]
    assert sc.guests[0].vcpus == 3 and sc.dom0_vcpus == 4 and sc.timer_hz == 250
    # A file's [[guest]] tables by index, or all of them at once.
    a, b = expand({"guest[1].vcpus": [1, 8]}, EXAMPLE)
    assert [g.vcpus for g in a.scenario.guests] == [2, 1, 1] and b.scenario.guests[1].vcpus == 8
    (c,) = expand({"guest.kernel": ["minios"]}, EXAMPLE)
    assert {g.kernel for g in c.scenario.guests} == {"minios"}
    (d,) = expand({"devices.nvme.depth": [1]}, str(EXAMPLE), events=10)
    assert d.scenario.devices["nvme"].depth == 1 and d.scenario.events == 10
    assert d.scenario.source == str(EXAMPLE)


def test_builtin_scenario_as_tables_is_the_builtin_scenario():
    """Dotted keys edit the built-in scenario's tables: they must build exactly default_scenario."""
    for guests, vcpus in ((1, 1), (4, 2), (7, 5)):
        assert xe.parse_scenario(builtin_data(guests, vcpus), "default") == xe.default_scenario(guests, vcpus)
    (p,) = expand({"guests": [3], "simulation.seed": [1]})
    assert p.scenario == xe.default_scenario(3)


@pytest.mark.parametrize("params, message", [
    (["nope=1"], "unknown parameter 'nope'"),
    (["guests"], "--param wants NAME=VALUES"),
    (["=4"], "--param wants NAME=VALUES"),
    (["guests=4", "guests=8"], "given twice"),
    (["guests=0"], "guests: must be in 1..32751, not 0"),
    (["guests=32752"], "must be in 1..32751, not 32752 (Xen has 32,751 domain ids for guests"),
    (["vcpus=33"], "vcpus: must be in 1..32"),
    (["seed=-1"], "seed: must be in 0.."),
    (["events=0"], "events: must be in 1.."),
    (["guests=four"], "must be a whole number, not 'four'"),
    (["guests=4,,8"], "empty value"),
    (["guests="], "empty value"),
    (["seed=5..1"], "the range 5..1 is empty"),
    (["seed=0..99999999"], "more than"),
    (["abi=3l"], "abi: must be one of 2l, fifo"),
    (["abi=1..2"], "abi takes names"),
    (["simulation.ipi_probabilty=0.1"], "did you mean 'ipi_probability'"),
    (["simulation.ipi_probability=1.5"], "simulation.ipi_probability: must be in 0..1, not 1.5"),
    (["simulation.ipi_probability=high"], "must be a number"),
    (["devices.net.service_us=[5,20"], "unclosed bracket"),
    (["devices.net.service_us=5,20]"], "unbalanced"),
    (["devices.net.service_us=[20,5]"], "0 < low <= high"),
    (["devices.nvme.depth=2"], "no guest of the scenario uses a device 'nvme'"),
    (["guest[2].vcpus=1"], "no guest[2] (it has 1 of them)"),
    (["guest.vcpus[0]=1"], "must end with a key"),
    (["guest[0]=1"], "unknown parameter"),
    (["a..b=1"], "bad parameter name"),
    (["foo.bar=1"], "unknown key 'foo'"),
    (["guests=1000", "simulation.ipi_probability=0.1", "vcpus=32", "dom0.layout=x86_32"],
     "the x86_32 2-level ABI has 1,023"),
    (["guest[0].vcpus=" + "[" * 5000], "unclosed bracket"),
    (["simulation.seed=" + "[" * 3000 + "]" * 3000], "must be an integer"),
])
def test_bad_grids_are_one_line_errors_before_anything_runs(capsys, tmp_path, monkeypatch, params, message):
    def must_not_run(*a, **k):
        raise AssertionError("a run started")

    monkeypatch.setattr(sweeps, "run_one", must_not_run)
    out = tmp_path / "r.csv"
    argv = ["sweep", "--out", str(out), "--workers", "1"]
    for p in params:
        argv += ["--param", p]
    rc, stdout, err = _cli(capsys, *argv)
    assert rc == 2 and stdout == "" and err.count("\n") == 1, err
    assert err.startswith("xenevtchn sweep: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_other_command_line_mistakes(capsys, tmp_path):
    out = str(tmp_path / "r.csv")
    for argv, message in [
        (["--param", "guests=1", "--out", str(tmp_path / "r.txt")], "name it .csv, .jsonl or .parquet"),
        (["--param", "guests=1", "--out", str(tmp_path / "no" / "r.csv")], "no such directory"),
        (["--param", "guests=1", "--out", str(tmp_path)], "cannot tell the format"),
        (["--param", "guests=1", "--out", out, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
         "--workers is for local runs"),
        (["--param", "guests=1", "--out", out, "--scenario", str(EXAMPLE)], "guests applies to the built-in"),
        (["--param", "events=5", "--out", out, "--events", "9"], "events is both"),
        (["--param", "seed=1", "--out", out, "--scenario", str(tmp_path / "missing.toml")], "cannot read"),
        (["--param", "seed=1", "--out", out, "--engine", "fortran"], "invalid choice"),
        (["--param", "seed=1", "--out", out, "--scheduler", "foo://bar"], "unknown address scheme 'foo'"),
        (["--param", "seed=1", "--out", out, "--scheduler", "tcp://127.0.0.1"], "missing port"),
        (["--param", "seed=1"], "--out"),
        (["--out", out], "--param"),
    ]:
        rc, stdout, err = _cli(capsys, "sweep", *argv)
        assert rc == 2 and err.count("\n") == 1 and message in err, (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_the_c_engine_is_never_silently_python(capsys, tmp_path, monkeypatch):
    from xenevtchn import simulate

    out = tmp_path / "r.csv"
    if "engine" not in __import__("inspect").signature(simulate.Simulation).parameters:
        rc, _, err = _cli(capsys, "sweep", "--param", "seed=1", "--engine", "c", "--out", str(out))
        assert rc == 2 and "the C engine is not available" in err and not out.exists()
        with pytest.raises(sweeps.EngineUnavailable):
            xe.sweep({"seed": [1]}, events=10, engine="c", workers=1)
    else:  # the engine exists: whatever stops it from starting is one line, not Python instead
        def broken(*a, engine="c", **k):
            raise RuntimeError("no C engine in this build")

        monkeypatch.setattr(simulate, "Simulation", broken)
        rc, _, err = _cli(capsys, "sweep", "--param", "seed=1", "--engine", "c", "--out", str(out))
        assert rc == 2 and "cannot run here: no C engine in this build" in err and not out.exists()


@pytest.mark.parametrize("grid, message", [
    ({}, "the grid is empty"),
    ([("guests", [1])], "the grid is empty"),
    ({"guests": 5}, "must be a list, not int"),
    ({"guests": b"12"}, "must be a list, not bytes"),
    ({"guests": []}, "no values"),
    ({"guests": [True]}, "must be a whole number, not True"),
    ({"guests": [2.0]}, "must be a whole number"),
    ({"guests": "x..y"}, "must be a whole number"),
    ({1: [1]}, "parameter names are strings"),
    ({"seed": [2**63]}, "must be in 0.."),
    ({"simulation.ipi_probability": [float("nan")]}, "must be in 0..1"),
    ({"devices.net.service_us": [object()]}, "must be [low, high]"),
    ({"guest.count": [10**9]}, "must be in 1..32751"),
    ({"seed": range(0)}, "no values"),
])
def test_python_grids_are_checked_too(grid, message):
    with pytest.raises(GridError) as err:
        xe.sweep(grid, events=10, workers=1)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert issubclass(xe.GridError, ValueError)


def test_python_scenarios_path_dict_or_object():
    import tomllib

    data = tomllib.loads(EXAMPLE.read_text())
    by_dict = expand({"seed": [4]}, data, events=50)[0].scenario
    by_path = expand({"seed": [4]}, EXAMPLE, events=50)[0].scenario
    assert by_dict == xe.parse_scenario(data).with_overrides(events=50, seed=4)
    assert by_path == xe.load_scenario(EXAMPLE).with_overrides(events=50, seed=4)
    sc = xe.default_scenario(2, 2)
    (p,) = expand({"seed": range(9, 10)}, sc)
    assert p.scenario == sc.with_overrides(seed=9)
    with pytest.raises(GridError, match="a Scenario object takes only seed and events"):
        expand({"simulation.timer_hz": [10]}, sc)
    with pytest.raises(GridError, match="scenario must be a path, a dict or a Scenario"):
        expand({"seed": [1]}, 42)
    with pytest.raises(GridError, match="unknown key 'bogus'"):
        expand({"seed": [1]}, {**data, "bogus": 1})


def test_abi_is_every_domain_or_refused(capsys, tmp_path):
    from xenevtchn.grid import fifo_supported

    (p,) = expand({"abi": ["2l"], "guests": [3]})
    if not fifo_supported():  # this tree's scenarios are 2-level only: 2l is what they are
        assert p.scenario == xe.default_scenario(3)
        rc, _, err = _cli(capsys, "sweep", "--param", "abi=2l,fifo", "--out", str(tmp_path / "r.csv"))
        assert rc == 2 and "abi=fifo: this installation's scenarios are 2-level only" in err
        return
    two, fifo = expand({"abi": ["2l", "fifo"], "guests": [3]})
    assert two.scenario == xe.default_scenario(3, abi="2l") and fifo.scenario == xe.default_scenario(3, abi="fifo")
    (f,) = expand({"abi": ["fifo"], "simulation.timer_hz": [100]}, EXAMPLE)
    assert f.scenario != expand({"abi": ["2l"], "simulation.timer_hz": [100]}, EXAMPLE)[0].scenario
    rows = xe.sweep({"abi": ["2l", "fifo"]}, events=500, workers=1)
    assert [r["error"] for r in rows] == [None, None]


# ---- rows equal single runs -----------------------------------------------------------------

def test_a_row_is_the_summary_of_the_same_simulate_run(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    rc, _, err = _cli(capsys, "sweep", "--param", "guests=1,2", "--param", "vcpus=3", "--param", "seed=5,6",
                      "--events", "1500", "--out", str(out), "--workers", "2")
    assert rc == 0 and "sweep: 4 runs in" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["params"] for r in records] == [{"guests": g, "vcpus": 3, "seed": s} for g in (1, 2) for s in (5, 6)]
    for r in records:
        p = r["params"]
        rc, stdout, _ = _cli(capsys, "simulate", "--guests", str(p["guests"]), "--vcpus", "3", "--seed",
                             str(p["seed"]), "--events", "1500", "--json")
        assert rc == 0 and r["error"] is None
        assert _no_wall(r["summary"]) == _no_wall(json.loads(stdout))


def test_a_dotted_key_row_is_the_run_of_that_scenario_file(capsys, tmp_path):
    text = EXAMPLE.read_text().replace("ipi_probability = 0.3", "ipi_probability = 0.75")
    assert "0.75" in text
    edited = tmp_path / "edited.toml"
    edited.write_text(text)
    rc, stdout, _ = _cli(capsys, "simulate", "--scenario", str(edited), "--events", "1200", "--json")
    expected = _no_wall(json.loads(stdout))
    expected["scenario"]["source"] = str(EXAMPLE)
    (r,) = xe.sweep({"simulation.ipi_probability": [0.75]}, scenario=str(EXAMPLE), events=1200, workers=1)
    assert _no_wall(r["summary"]) == expected


def test_csv_rows_flatten_the_summary(capsys, tmp_path):
    out = tmp_path / "r.csv"
    rc, _, _ = _cli(capsys, "sweep", "--param", "seed=2..3", "--param", "devices.net.service_us=[5,9]",
                    "--events", "800", "--out", str(out), "--workers", "1")
    rows = sweeps.read_csv(str(out))
    records = xe.sweep({"seed": [2, 3], "devices.net.service_us": [[5, 9]]}, events=800, workers=1)
    assert rc == 0 and len(rows) == 2
    header = list(rows[0])
    assert header[:2] == ["seed", "devices.net.service_us"] and header[-1] == "error"
    for col in ("totals.sent", "totals.delivered", "by_kind.ipi.sent", "by_kind.pirq.masked",
                "latency_us.p50", "latency_us.p99", "requests.completed", "scenario.channels"):
        assert col in header, col
    for row, rec in zip(rows, records):
        flat = sweeps.flatten(rec)
        assert row["devices.net.service_us"] == "[5, 9]" and row["error"] == ""
        for k, v in flat.items():
            if k not in sweeps.WALL_FIELDS and k != "error":
                assert row[k] == str(v), k


# ---- failed runs, Ctrl-C and output files ---------------------------------------------------

def test_a_failed_run_is_a_row_with_its_error(capsys, tmp_path, monkeypatch):
    real = sweeps.run_one

    def flaky(scenario, options):
        if scenario.seed == 2:
            raise MemoryError("out of simulated memory\nsecond line")
        return real(scenario, options)

    monkeypatch.setattr(sweeps, "run_one", flaky)
    out = tmp_path / "r.csv"
    rc, _, err = _cli(capsys, "sweep", "--param", "seed=1..3", "--events", "300", "--out", str(out),
                      "--workers", "1")
    assert rc == 1 and "3 runs, 1 failed" in err
    rows = sweeps.read_csv(str(out))
    assert [r["seed"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["error"] == "MemoryError: out of simulated memory second line"
    assert rows[1]["totals.sent"] == "" and rows[0]["totals.sent"] == rows[2]["totals.sent"] == "300"
    assert rows[0]["error"] == rows[2]["error"] == ""


def test_output_is_renamed_into_place(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    out.write_text("previous\n")
    good = [{"params": {"seed": 1}, "summary": {"totals": {"sent": 3}}, "error": None}]
    bad = good + [{"params": {"seed": 2}, "summary": {"x": object()}, "error": None}]
    with pytest.raises(TypeError):
        sweeps.write_records(str(out), bad)
    assert out.read_text() == "previous\n" and os.listdir(tmp_path) == ["r.jsonl"]
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((Path(src).parent, Path(src).read_text(), Path(dst).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0o027)
    try:
        sweeps.write_records(str(out), good)
    finally:
        os.umask(old)
    (folder, written, before), = seen
    assert folder == tmp_path and written == json.dumps(good[0]) + "\n" and before == "previous\n"
    assert out.read_text() == written and os.listdir(tmp_path) == ["r.jsonl"]
    assert out.stat().st_mode & 0o777 == 0o640


def test_parquet_and_frames(tmp_path, capsys, monkeypatch):
    pd = pytest.importorskip("pandas")  # in the test extra: never skipped in CI
    out = tmp_path / "r.parquet"
    rc, _, _ = _cli(capsys, "sweep", "--param", "guests=1,2", "--events", "400", "--out", str(out),
                    "--workers", "1", "-q")
    frame = pd.read_parquet(out)
    again = xe.sweep_frame({"guests": [1, 2]}, events=400, workers=1)
    assert rc == 0 and list(frame["guests"]) == [1, 2] == list(again["guests"])
    assert list(frame.columns) == list(again.columns) and list(frame["totals.sent"]) == [400, 400]
    assert (frame.drop(columns=list(sweeps.WALL_FIELDS)).astype(str).values.tolist()
            == again.drop(columns=list(sweeps.WALL_FIELDS)).astype(str).values.tolist())
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "fastparquet", None)
    rc, _, err = _cli(capsys, "sweep", "--param", "guests=1", "--out", str(tmp_path / "s.parquet"))
    assert rc == 2 and err.count("\n") == 1 and "needs pyarrow" in err
    assert sorted(os.listdir(tmp_path)) == ["r.parquet"]


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys, tmp_path):
    out = str(tmp_path / "r.csv")
    rc, _, err = _cli(capsys, "sweep", "--param", "seed=1..3", "--events", "200", "--out", out,
                      "--workers", "1", "--progress")
    assert rc == 0 and "\r" in err and "3/3 runs" in err and "ETA" in err
    rc, _, err = _cli(capsys, "sweep", "--param", "seed=1..3", "--events", "200", "--out", out, "--workers", "1")
    assert rc == 0 and "\r" not in err
    rc, _, err = _cli(capsys, "sweep", "--param", "seed=1..3", "--events", "200", "--out", out,
                      "--workers", "1", "--progress", "-q")
    assert rc == 0 and err == ""


@pytest.mark.timeout(120)
def test_ctrl_c_writes_the_runs_finished_so_far(tmp_path):
    out = tmp_path / "r.csv"
    total = 300
    proc = subprocess.Popen([str(BIN / "xenevtchn"), "sweep", "--param", f"seed=1..{total}", "--events", "20000",
                             "--workers", "2", "--progress", "--out", str(out)],
                            stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        seen = b""
        while not re.search(rb"\b[1-9][\d,]*/300 runs", seen):  # some runs have finished
            chunk = proc.stderr.read1(4096)
            assert chunk, seen
            seen += chunk
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert b"interrupted:" in rest and b"Traceback" not in rest
    seeds = [int(r["seed"]) for r in sweeps.read_csv(str(out))]
    assert 1 <= len(seeds) < total and seeds == sorted(seeds)
    assert os.listdir(tmp_path) == ["r.csv"]


# ---- a real Dask cluster --------------------------------------------------------------------

@pytest.fixture
def dask_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, on free ports."""
    pytest.importorskip("distributed")  # in the test extra: never skipped in CI
    sched_file = tmp_path / "scheduler.json"
    common = dict(cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)], **common)]
    try:
        deadline = time.monotonic() + 60
        while not (sched_file.exists() and sched_file.stat().st_size):
            assert procs[0].poll() is None, "the scheduler exited"
            assert time.monotonic() < deadline, "no scheduler after 60 s"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", address), address
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--name", f"w{i}", "--local-directory", str(tmp_path / f"w{i}")], **common))
        from distributed import Client

        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:  # the workers first (a worker whose scheduler is gone keeps trying to reconnect)
        for group in (procs[1:], procs[:1]):
            for p in group:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in group:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


@pytest.mark.timeout(180)
def test_a_dask_cluster_gives_the_same_rows_as_a_local_run(dask_cluster, tmp_path, capsys):
    grid = ["--param", "guests=1,2", "--param", "seed=1..3", "--param", "simulation.ipi_probability=0.1,0.6",
            "--events", "1000"]
    on_cluster, local = tmp_path / "cluster.jsonl", tmp_path / "local.jsonl"
    rc, _, err = _cli(capsys, "sweep", *grid, "--scheduler", dask_cluster, "--out", str(on_cluster))
    assert rc == 0, err
    rc, _, err = _cli(capsys, "sweep", *grid, "--workers", "2", "--out", str(local))
    assert rc == 0, err
    remote_rows = [json.loads(x) for x in on_cluster.read_text().splitlines()]
    local_rows = [json.loads(x) for x in local.read_text().splitlines()]
    assert len(remote_rows) == 12 and all(r["error"] is None for r in remote_rows)
    assert _no_wall_records(remote_rows) == _no_wall_records(local_rows)

    from distributed import Client

    with Client(dask_cluster, timeout=60, set_as_default=False) as client:
        api = xe.sweep({"guests": [2], "seed": [3], "simulation.ipi_probability": [0.6]}, events=1000,
                       client=client)
        ran_on = set(client.run(os.getpid).values())
    assert _no_wall_records(api) == _no_wall_records([remote_rows[11]])
    assert len(ran_on) == 2 and os.getpid() not in ran_on
