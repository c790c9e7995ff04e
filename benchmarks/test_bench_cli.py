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


def _fake_json(tmp_path, ratio_of):
    """A pytest-benchmark JSON with every row, ours = ratio_of(spec) x the floor's 100 ns."""
    data = {"benchmarks": []}
    for name, spec in bench.ROWS.items():
        r = ratio_of(spec)
        ours = 100.0 / r if spec.kind == "speedup" else 100.0 * r
        for side, ns in (("ours", ours), ("floor", 100.0)):
            data["benchmarks"].append({"group": name, "stats": {"min": ns * 1e-9},
                                       "extra_info": {"side": side, "ops": 1}})
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def test_ci_rows_and_strict(tmp_path, capsys):
    """--ci keeps only the rows marked ci=True; --strict fails on a missed one of those and
    on nothing else."""
    ci = [name for name, spec in bench.ROWS.items() if spec.ci]
    assert ci and all(bench.ROWS[n].target is not None for n in ci)   # ratios with targets only
    assert "2 threads vs 1: send_many batches" not in ci              # needs an idle core
    miss_one = ci[0]

    def ratio_of(spec):   # every target met, but one CI row missed and every non-CI row too
        if spec.target is None:
            return 1.0
        good = spec.target * (2.0 if spec.kind == "speedup" else 0.5)
        bad = spec.target * (0.5 if spec.kind == "speedup" else 2.0)
        return bad if (spec.name == miss_one or not spec.ci) else good

    path = _fake_json(tmp_path, ratio_of)
    assert bench.main(["--from-json", str(path), "--ci", "--strict"]) == 1
    out = capsys.readouterr().out
    rows = [line.split(" | ")[0][2:] for line in out.splitlines() if line.startswith("| ")][1:]
    assert rows == ci
    assert f"| {miss_one} |" in out and "1 row(s) miss their target: " + miss_one in out

    def only_non_ci_miss(spec):
        r = ratio_of(spec)
        return spec.target * (2.0 if spec.kind == "speedup" else 0.5) if spec.name == miss_one else r

    path = _fake_json(tmp_path, only_non_ci_miss)
    assert bench.main(["--from-json", str(path), "--ci", "--strict"]) == 0
    assert bench.main(["--from-json", str(path), "--strict"]) == 1   # without --ci they count


def test_markdown_block_and_readme_rewrite(tmp_path, capsys):
    path = _fake_json(tmp_path, lambda spec: 1.0)
    assert bench.main(["--from-json", str(path), "--markdown"]) == 0
    out = capsys.readouterr().out.rstrip("\n").split("\n")
    assert out[0] == bench.MARK_BEGIN and out[-1] == bench.MARK_END
    assert out[1].startswith("Measured ") and " CPUs" in out[1] and "Python " in out[1]
    assert "compiler " in out[1] and out[2] == ""
    assert len(out) == 3 + 2 + len(bench.ROWS) + 1
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{bench.MARK_BEGIN}\nold\n{bench.MARK_END}\n\nafter\n")
    readme.chmod(0o640)
    assert bench.main(["--from-json", str(path), "--markdown", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n" + bench.MARK_BEGIN) and text.endswith(bench.MARK_END + "\n\nafter\n")
    assert bench.readme_block(text).split("\n")[3:] == out[3:]   # all but the measured-line
    assert readme.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "bench.json"]   # no temp left
    # refusals: --readme alone, a file without the markers, a missing file
    assert bench.main(["--from-json", str(path), "--readme", str(readme)]) == 2
    (tmp_path / "plain.md").write_text("no markers\n")
    assert bench.main(["--from-json", str(path), "--markdown", "--readme", str(tmp_path / "plain.md")]) == 2
    assert bench.main(["--from-json", str(path), "--markdown", "--readme", str(tmp_path / "none.md")]) == 2
    assert (tmp_path / "plain.md").read_text() == "no markers\n"
    err = capsys.readouterr().err
    assert err.count("xenevtchn bench: error:") == 3


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
