"""The README's examples and quick-start demo run as written."""

from __future__ import annotations

import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md block {i}", "exec"), {})
    assert "upcall for" in capsys.readouterr().out


def test_quick_start_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/pytest" in text and ".venv/bin/pytest" in ci
    assert ".venv/bin/xenevtchn simulate" in text and ".venv/bin/xenevtchn simulate" in ci


def test_demo_raises_and_handles_events():
    from xenevtchn.demo import run

    out = io.StringIO()
    stats = run(out)
    # 4 front/back links, 3 rounds: each round's second request finds the backend port
    # still pending, so it coalesces; dom0 handles each backend port once per round, and
    # each guest handles its 2 responses and its timer tick.
    assert stats["coalesced"] == 4 * 3
    assert stats["handled"] == 4 * 3 + 2 * 3 * (2 + 1)
    assert stats["sent"] == 4 * 3 * 2 + 4 * 3
    assert stats["kicks"] > 0


def test_readme_cplusplus_section_builds_and_runs(tmp_path):
    """The C/C++ section as written: its prog.cpp, then its first shell block (both routes)."""
    import os
    import subprocess
    import sys

    text = README.read_text()
    section = text[text.index("## Embedding the C core"):]
    section = section[:section.index("\n## ", 1)]
    (cpp,) = re.findall(r"```cpp\n(.*?)```", section, re.S)
    sh = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    (tmp_path / "prog.cpp").write_text(cpp)
    # `python` is the interpreter running the tests, with this xenevtchn installed.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    import shutil

    import xenevtchn as xe

    if b"__asan_init" in Path(xe.get_library()).read_bytes():
        # tools/sanitize.sh installed a library built with -fsanitize=address,undefined:
        # a program linking it needs the same runtime (the README's command, plus that).
        gxx = bindir / "g++"
        gxx.write_text(f'#!/bin/sh\nexec "{shutil.which("g++")}" "$@" -fsanitize=address,undefined\n')
        gxx.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-e", "-c", sh], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["port 5 pending 1, kick 1"] * 2


def _shape(line: str) -> str:
    """A table line with its measured numbers and verdict blanked out."""
    line = re.sub(r"\| \d+(\.\d+)? (ns|us|MiB) ", "| T ", line)   # ours, and floor before its name
    line = re.sub(r"\| \d+\.\d\dx \|", "| R |", line)          # the ratio
    return re.sub(r"\| (PASS|MISS) \|$", "| V |", line)        # met or not: varies by run


def test_readme_ratio_table_is_the_generators_output():
    """The README's benchmark block is what `xenevtchn bench --markdown` emits: the same
    markers, a measured-line saying when and where, then the same rows, columns, floors and
    targets in the same order. The numbers are not compared: they vary by run."""
    from xenevtchn import bench

    block = bench.readme_block(README.read_text()).split("\n")
    made = bench.markdown([(spec, 100.0, 50.0) for spec in bench.ROWS.values()]).split("\n")
    assert len(block) == len(made)
    assert block[0] == made[0] == bench.MARK_BEGIN and block[-1] == made[-1] == bench.MARK_END
    measured = (r"Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC on .+ \(\d+ CPUs(, load average [\d.]+)?\), "
                r"\S+ \S+, Python \d+\.\d+\.\d+\S*, cffi \S+, compiler .+; min over rounds, ns per event\.")
    assert re.fullmatch(measured, made[1]), made[1]
    assert re.fullmatch(measured, block[1]), f"README measured-line not in the generator's form: {block[1]!r}"
    assert block[2] == made[2] == ""
    assert [_shape(line) for line in block[3:-1]] == [_shape(line) for line in made[3:-1]]
