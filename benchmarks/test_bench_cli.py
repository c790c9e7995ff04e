"""``xenevtchn bench``: the table printer, on a measured row and on a JSON file."""

from __future__ import annotations

import json

from xenevtchn import bench


def test_main_measures_and_prints_the_table(capsys):
    assert bench.main(["-k", "pure-Python", "--rounds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "| row | ours | floor | ratio | target | result |" in out
    assert "| (info) pure-Python call |" in out and "| info |" in out


def test_table_from_pytest_benchmark_json(tmp_path, capsys):
    def entry(group, side, seconds, ops):
        return {"group": group, "stats": {"min": seconds}, "extra_info": {"side": side, "ops": ops}}

    data = {"benchmarks": [
        entry("d.send first raise", "ours", 4095 * 100e-9, 4095),
        entry("d.send first raise", "floor", 4095 * 50e-9, 4095),
        entry("do_upcall k=1", "ours", 32 * 300e-9, 32),
        entry("do_upcall k=1", "floor", 32 * 50e-9, 32),
        entry("d.send vs reference", "ours", 100e-9, 1),
        entry("d.send vs reference", "floor", 1000e-9, 1),
    ]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    assert bench.main(["--from-json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| d.send first raise | 100.0 ns | 50.0 ns (bare cffi call) | 2.00x | <= 2.5x | PASS |" in out
    assert "| do_upcall k=1 | 300.0 ns | 50.0 ns (bare cffi call per port) | 6.00x | <= 2x | MISS |" in out
    assert "| d.send vs reference | 100.0 ns | 1000.0 ns (reference model's send) | 10.00x | >= 4x faster | PASS |" in out
    assert bench.main(["--from-json", str(path), "--strict"]) == 1


def test_the_readme_benchmark_commands_run_whole(tmp_path):
    """The README's two commands, timed for real: every case runs its full rounds in one
    process and the table has every row. Nothing about speed is asserted. (The first
    command once crashed: a floor wrote through pointers into arrays nothing held. Where
    freed memory lands varies, so this run is a smoke test, not a detector of that.)"""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "bench.json"
    here = Path(__file__).resolve().parent
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(here), "-q", "-k", "not readme_benchmark",
         "-p", "no:cacheprovider", "--benchmark-enable", "--benchmark-disable-gc",
         f"--benchmark-json={out}"],
        capture_output=True, text=True, timeout=600,
        cwd=tmp_path)   # from the source root, python -m would import the unbuilt tree
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = subprocess.run([sys.executable, "-m", "xenevtchn", "bench", "--from-json", str(out)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("\n| ") == len(bench.ROWS) + 1   # the header and every row
