"""Output files are whole or untouched, ``--trace -`` is standard output, and a scenario
nested too deeply is one line on stderr with exit status 2 (issue 14, item 8)."""

from __future__ import annotations

import json
import os
import stat

import pytest

import xenevtchn.simulate as simulate_mod
import xenevtchn.trace as trace_mod
from xenevtchn.cli import main

ARGS = ["simulate", "--events", "500", "--guests", "1", "-q"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("shape", ["array", "table"])
def test_deeply_nested_scenario_is_one_line_exit_2(capsys, tmp_path, shape):
    depth = 20_000
    text = ("x = " + "[" * depth + "]" * depth) if shape == "array" else \
        ("x = " + "{a = " * depth + "1" + "}" * depth)
    f = tmp_path / "deep.toml"
    f.write_text(text + "\n")
    rc, out, err = _run(capsys, "simulate", "--scenario", str(f))
    assert rc == 2, err[-300:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-300:]
    assert err.startswith("xenevtchn simulate: error: ") and "nested too deeply" in err
    assert out == ""


def test_interrupted_simulation_keeps_the_previous_trace(capsys, tmp_path, monkeypatch):
    trace = tmp_path / "t.json"
    trace.write_text("previous trace\n")

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate_mod.Simulation, "run", interrupted)
    rc, _, err = _run(capsys, *ARGS, "--trace", str(trace))
    assert rc == 130 and "interrupted" in err
    assert trace.read_text() == "previous trace\n"
    assert _leftovers(tmp_path) == []               # the temporary file is gone too


@pytest.mark.parametrize("engine", ["c", "python"])
@pytest.mark.parametrize("name", ["t.json", "t.json.gz"])
def test_failure_while_writing_keeps_the_previous_files(capsys, tmp_path, monkeypatch, engine, name):
    """The trace is streamed during the run: a disk that fills up part-way through is one
    line and exit status 2, and the older file at the path is still there."""
    trace = tmp_path / name
    trace.write_text("previous trace\n")

    class FillsUp:
        def __init__(self, real):
            self.real, self.room = real, 20_000

        def write(self, data):
            if len(data) > self.room:
                raise OSError(28, "No space left on device")
            self.room -= len(data)
            return self.real.write(data)

    real_init = trace_mod.TraceFile.__init__

    def init(self, path):
        real_init(self, path)
        self.stream = FillsUp(self.stream)

    monkeypatch.setattr(trace_mod.TraceFile, "__init__", init)
    rc, _, err = _run(capsys, "simulate", "--events", "5000", "-q", "--engine", engine, "--trace", str(trace))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot write trace file" in err and "No space left" in err
    assert trace.read_text() == "previous trace\n"
    assert _leftovers(tmp_path) == []


def test_successful_run_replaces_the_file_whole(capsys, tmp_path):
    trace = tmp_path / "t.json"
    trace.write_text("previous trace\n")
    os.chmod(trace, 0o640)
    rc, out, _ = _run(capsys, *ARGS, "--trace", str(trace))
    assert rc == 0 and "all events" in out
    doc = json.loads(trace.read_text())
    assert doc["traceEvents"]
    assert stat.S_IMODE(trace.stat().st_mode) == 0o640      # the replaced file's mode is kept
    assert _leftovers(tmp_path) == []
    fresh = tmp_path / "new.json"
    rc, _, _ = _run(capsys, *ARGS, "--trace", str(fresh))
    umask = os.umask(0)
    os.umask(umask)
    assert rc == 0 and stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_trace_dash_is_standard_output(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, *ARGS, "--trace", "-")
    assert rc == 0
    doc = json.loads(out)                              # stdout is the trace alone ...
    assert doc["traceEvents"]
    assert "all events" in err                         # ... and the summary went to stderr
    assert not (tmp_path / "-").exists()


def test_atomic_output_helper(tmp_path):
    from xenevtchn import atomic_file

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file.atomic_output(target, "wb") as f:
            f.write(b"new, but never finished")
            raise RuntimeError("stop")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with atomic_file.atomic_output(target, "wb") as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == []
    out = atomic_file.AtomicOutput(target, "w")
    out.file.write("discarded")
    out.discard()
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == []
    with pytest.raises(OSError):
        atomic_file.AtomicOutput(tmp_path / "no" / "such" / "dir", "w")
    with pytest.raises(IsADirectoryError):
        atomic_file.AtomicOutput(tmp_path, "w")


def test_interrupted_plot_keeps_the_previous_plot(capsys, tmp_path, monkeypatch):
    import xenevtchn.plot as plot_mod

    png = tmp_path / "p.png"
    png.write_bytes(b"previous plot")

    def interrupted(sim, out, **kw):
        out.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(plot_mod, "plot", interrupted)
    rc, _, err = _run(capsys, *ARGS, "--plot", str(png))
    assert rc == 130 and png.read_bytes() == b"previous plot"
    assert _leftovers(tmp_path) == []
