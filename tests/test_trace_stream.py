"""``simulate --trace F.json`` / ``F.json.gz``: streamed as the run goes (memory flat in
events) from either engine, written to a temporary file renamed into place only when the
run finished, so Ctrl-C, a failure or a bad path leaves an older file as it was and no
temporary file behind (issue 15, item 6 and its "Bad input" paragraph)."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest

from xenevtchn.cli import main
from xenevtchn.scenario import default_scenario
from xenevtchn.simulate import Simulation
from xenevtchn.trace import TraceFile, TraceRecorder, TraceWriteError, us_text


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- the files -----------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["c", "python"])
def test_json_and_json_gz_parse_back_and_hold_the_same_events(capsys, tmp_path, engine):
    plain, packed = tmp_path / "run.json", tmp_path / "run.json.gz"
    for path in (plain, packed):
        rc, out, err = _run(capsys, "simulate", "--events", "3000", "--seed", "4", "--json",
                            "--engine", engine, "--trace", str(path))
        assert rc == 0, err
        summary = json.loads(out)
    raw = plain.read_bytes()
    assert packed.read_bytes()[:2] == b"\x1f\x8b"            # gzip, chosen by the extension
    assert gzip.decompress(packed.read_bytes()) == raw        # the same document inside
    doc = json.loads(raw)
    assert doc["displayTimeUnit"] == "ns" and doc["traceEvents"]
    sends = [e for e in doc["traceEvents"] if e.get("cat") == "send"]
    assert len(sends) == summary["totals"]["sent"] == 3000
    assert f"trace: {len(doc['traceEvents']):,} trace events in {plain}" in err
    assert _leftovers(tmp_path) == []


def test_the_same_run_gives_the_same_gz_bytes(capsys, tmp_path):
    """No file name or time in the gzip header: a seed gives one file, byte for byte."""
    a, b = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    for path in (a, b):
        assert _run(capsys, "simulate", "--events", "2000", "-q", "--trace", str(path))[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_trace_dash_writes_the_same_document_to_stdout(capsys, tmp_path):
    path = tmp_path / "t.json"
    assert _run(capsys, "simulate", "--events", "2000", "-q", "--trace", str(path))[0] == 0
    rc, out, err = _run(capsys, "simulate", "--events", "2000", "-q", "--trace", "-")
    assert rc == 0 and out.encode() == path.read_bytes()
    assert "all events" in err                                # the summary went to stderr


@pytest.mark.parametrize("name", [
    "{d}",                      # a directory
    "{d}/sub.json.gz",          # a directory with a trace's name
    "{d}/file.txt/t.json",      # a folder that is a file
    "{d}/missing/t.json",       # a folder that does not exist
    "{d}/" + "x" * 300 + ".json",  # a name longer than the file system allows
    "/proc/self/t.json",        # a folder nobody can create files in (root neither)
])
def test_hostile_paths_are_one_line_and_exit_2(capsys, tmp_path, name):
    (tmp_path / "sub.json.gz").mkdir()
    (tmp_path / "file.txt").write_text("a file\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = _run(capsys, "simulate", "--events", "500", "--trace", name.format(d=tmp_path))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("xenevtchn simulate: error: cannot write trace file")
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing was left behind


def test_a_failed_write_is_raised_at_once_and_the_file_discarded(tmp_path):
    """The writer thread's failure reaches the engine's next write; discard() stops the
    thread and leaves the older file."""
    target = tmp_path / "t.json"
    target.write_text("old\n")
    tf = TraceFile(target)

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

    tf._writer._out = Full()
    rec = TraceRecorder(tf.stream)
    sim = Simulation(default_scenario(events=50_000), engine="c", trace=rec)
    with pytest.raises(TraceWriteError, match="No space left"):
        sim.run()
    assert 0 < sim.sent < 50_000            # it stopped early, at a write
    tf.discard()
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_us_text_is_json_of_the_microseconds():
    for ns in (0, 1, 10, 100, 999, 1000, 1500, 1234, 20_050, 10**15 + 7, -1500):
        assert json.loads(us_text(ns)) == round(ns / 1000.0, 3)
    assert (us_text(1000), us_text(1500), us_text(1005)) == ("1.0", "1.5", "1.005")


def test_in_memory_recorder_and_a_closed_one():
    rec = TraceRecorder()
    rec.process(0, 'dom0 "quoted" \u00e9', 1)
    rec.slice("send ipi", "send", 0, 0, 1000, 1100, {"to": "d0:1", "n": 3})
    assert [e["ph"] for e in rec.events] == ["M", "M", "X"] and rec.count == 3
    assert rec.events[0]["args"]["name"] == 'dom0 "quoted" \u00e9'
    assert rec.events[2]["args"] == {"to": "d0:1", "n": 3} and rec.events[2]["ts"] == 1.0
    out = io.BytesIO()
    streamed = TraceRecorder(out)
    streamed.close()
    assert json.loads(out.getvalue())["traceEvents"] == []
    with pytest.raises(ValueError, match="closed"):
        streamed.instant("kick", "kick", 0, 0, 5)
        streamed.flush()


# ---- memory: flat in events ----------------------------------------------------------------

def _traced_peak(engine: str, events: int, path) -> tuple[int, int]:
    tf = TraceFile(path)
    tracemalloc.start()
    try:
        rec = TraceRecorder(tf.stream)
        sim = Simulation(default_scenario(events=events, seed=3), engine=engine, trace=rec)
        tracemalloc.reset_peak()
        sim.run()
        rec.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tf.commit()
    assert sim.sent == events and os.path.getsize(path) > 100 * events
    return peak, os.path.getsize(path)


@pytest.mark.parametrize("engine,small", [("c", 20_000), ("python", 3_000)])
def test_a_trace_is_streamed_memory_flat_in_events(tmp_path, engine, small):
    """Ten times the events, the same peak of Python memory during the run (the events
    are written out as they come, not kept, as text or as objects)."""
    (p1, _), (p10, size10) = (_traced_peak(engine, n, tmp_path / f"{n}.json") for n in (small, 10 * small))
    assert p10 <= 1.5 * p1 + 512 * 1024, (p1, p10)
    assert p10 < size10 / 4, (p10, size10)   # far less than the text written


# ---- Ctrl-C ------------------------------------------------------------------------------------

def _wait_for_temp(folder, proc, min_bytes: int) -> None:
    """Until the run's temporary trace file holds min_bytes (it is streamed)."""
    deadline = time.monotonic() + 120    # a guard against a hang, not a performance bound
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for p in folder.iterdir():
            if p.name.endswith(".tmp") and p.stat().st_size >= min_bytes:
                return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the trace file never grew")


@pytest.mark.parametrize("engine,name", [("c", "t.json"), ("c", "t.json.gz"), ("python", "t.json")])
def test_ctrl_c_mid_trace_reports_and_keeps_the_older_file(tmp_path, engine, name):
    """SIGINT to a long traced run once its trace is streaming: exit 130 with the summary
    of what was sent (marked interrupted), the older file untouched, no temporary file."""
    trace = tmp_path / name
    trace.write_bytes(b"previous trace\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xenevtchn", "simulate", "--events", "1000000000", "--json",
         "--no-progress", "--engine", engine, "--trace", str(trace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        _wait_for_temp(tmp_path, proc, 64 * 1024)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out[-500:], err[-500:])
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["engine"] == engine
    t = summary["totals"]
    assert 0 < t["sent"] < 10**9
    assert t["sent"] == t["coalesced"] + t["delivered"] + t["consumed_by_poll"] + t["pending_at_end"]
    assert b"interrupted after" in err and b"Traceback" not in err
    assert trace.read_bytes() == b"previous trace\n"
    assert _leftovers(tmp_path) == []


# ---- the C engine's trace buffer ----------------------------------------------------------

def test_the_c_trace_buffer_is_drained_in_bounded_chunks():
    """C hands its text over whenever TRACE_FLUSH bytes wait (between two actions): no
    chunk is much larger, however long the run, and the chunks add up to the file."""
    from xenevtchn import c_engine

    chunks: list[int] = []

    class Counting:
        def write(self, data):
            chunks.append(len(data))
            return len(data)

    rec = TraceRecorder(Counting())
    sim = Simulation(default_scenario(guests=8, vcpus=3, events=60_000, seed=6), engine="c", trace=rec)
    sim.run()
    rec.close()
    big = [n for n in chunks if n > 1000]
    assert len(big) > 20                                  # many drains, not one at the end
    assert max(chunks) <= c_engine.TRACE_FLUSH + 64 * 1024, max(chunks)


def test_the_c_trace_api_refuses_bad_calls_without_crashing():
    from xenevtchn._native import ffi, lib

    sim = Simulation(default_scenario(guests=1, vcpus=1, events=10), engine="python")
    s = ffi.gc(lib.xe_sim_new(1, 2, 3, 8, 1, 1), lib.xe_sim_free)
    n, ev = ffi.new("size_t *"), ffi.new("uint64_t *")
    lib.xe_sim_trace_data(s, n, ev)
    assert n[0] == 0 and ev[0] == 0                                 # not tracing: nothing
    assert lib.xe_sim_trace_label(s, 0, b'"x"', 3) == -22           # not tracing yet
    assert lib.xe_sim_trace_start(s, 0) == -22                      # no flush size
    assert lib.xe_sim_trace_start(s, 1 << 16) == 0
    assert lib.xe_sim_trace_start(s, 1 << 16) == -22                # twice
    assert lib.xe_sim_trace_label(s, 8, b'"x"', 3) == -22           # no such port entry
    assert lib.xe_sim_trace_label(s, 0, b'x', 1) == -22             # not a JSON string
    assert lib.xe_sim_trace_label(s, 0, b'"a\nb"', 5) == -22        # a raw control byte
    assert lib.xe_sim_trace_label(s, 0, '"\u00e9"'.encode(), 4) == -22   # raw non-ASCII
    assert lib.xe_sim_trace_label(s, 0, b'"ok"', lib.XE_SIM_LABEL_MAX + 1) == -22
    assert lib.xe_sim_trace_label(s, 0, ffi.NULL, 3) == -22
    assert lib.xe_sim_trace_label(s, 0, b'"ok \\u00e9"', 11) == 0
    assert lib.xe_sim_trace_label(s, 0, b'"again"', 7) == 0          # replaced, not leaked
    lib.xe_sim_trace_clear(s)
    del sim


def test_a_name_too_long_for_a_trace_is_a_scenario_error():
    from xenevtchn._native import lib
    from xenevtchn.scenario import ScenarioError, parse_scenario

    name = "n" * (lib.XE_SIM_LABEL_MAX + 10)
    sc = parse_scenario({"simulation": {"events": 100},
                         "devices": {name: {"service_us": 5, "think_us": 5}},
                         "guest": [{"name": "g", "count": 1, "devices": [name]}]}, "long")
    with pytest.raises(ScenarioError, match="too long for a trace"):
        Simulation(sc, engine="c", trace=TraceRecorder())
    Simulation(sc, engine="c").run()                     # untraced, the name is fine
