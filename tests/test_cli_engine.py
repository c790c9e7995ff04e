"""``xenevtchn simulate --engine c|python``: both print the same summary; what only the
Python engine does is named, and Ctrl-C stops a long C run with what it did."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from xenevtchn.cli import main

WALL_CLOCK = ("wall_s", "events_per_s", "engine")


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_both_engines_print_the_same_summary(capsys):
    docs = {}
    for engine in ("c", "python"):
        rc, out, err = run(capsys, "simulate", "--events", "4000", "--seed", "3", "--json", "--engine", engine)
        assert rc == 0 and err == ""
        docs[engine] = json.loads(out)
        assert docs[engine]["engine"] == engine
    assert {k: v for k, v in docs["c"].items() if k not in WALL_CLOCK} == \
        {k: v for k, v in docs["python"].items() if k not in WALL_CLOCK}


def test_the_default_engine_is_c_and_the_table_says_so(capsys):
    rc, out, _ = run(capsys, "simulate", "--events", "2000")
    assert rc == 0 and "(c engine)" in out.splitlines()[1]
    assert "p90" in out and "p99.9" in out


def test_trace_runs_the_c_engine_and_both_engines_write_the_same_file(capsys, tmp_path):
    files = {}
    for engine in (None, "c", "python"):
        trace = tmp_path / f"{engine}.json"
        argv = ["simulate", "--events", "1500", "--trace", str(trace)]
        rc, out, err = run(capsys, *argv, *(["--engine", engine] if engine else []))
        assert rc == 0 and f"({engine or 'c'} engine)" in out and "Python engine" not in err
        assert "trace events in" in err
        files[engine] = trace.read_bytes()
        assert json.loads(files[engine])["traceEvents"]
    assert files[None] == files["c"] == files["python"]


def test_an_unknown_engine_is_a_usage_error(capsys):
    try:
        main(["simulate", "--engine", "rust"])
    except SystemExit as e:
        assert e.code == 2
    assert "invalid choice: 'rust'" in capsys.readouterr().err


def test_ctrl_c_stops_a_long_c_run_and_reports_what_it_did(tmp_path):
    """SIGINT during a billion-event C run, once its progress bar shows it is running: the
    engine returns to Python between slices, so the run stops, prints the summary of the
    events it sent, says it was interrupted and exits 130."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "xenevtchn", "simulate", "--events", "1000000000", "--progress", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stderr is not None
    first = proc.stderr.read(1)      # the progress bar's first redraw: the C run is going
    assert first == b"\r"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-500:], err[-500:])
    summary = json.loads(out)
    t = summary["totals"]
    assert 0 < t["sent"] < 10**9 and summary["engine"] == "c"
    assert t["sent"] == t["coalesced"] + t["delivered"] + t["consumed_by_poll"] + t["pending_at_end"]
    assert b"interrupted after" in err
