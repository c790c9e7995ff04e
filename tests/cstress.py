"""Building and running the C stress programs in tests/c/ (shared by test_stress_*.py).

Each program is compiled with the system ``cc`` against every csrc/*.c file (the data
path links as one unit), plainly and with ThreadSanitizer; a TSan build is skipped only
when the toolchain lacks the TSan runtime.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
PROGRAMS = Path(__file__).resolve().parent / "c"
BASE_FLAGS = ["-std=c11", "-pthread", "-Wall", "-Wextra", f"-I{CSRC}"]
TSAN_FLAGS = ["-O1", "-g", "-fsanitize=thread"]


def cc() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc")
    assert compiler, "no C compiler: the stress test needs the system cc (as does building the package)"
    return compiler


def compile_program(program: str, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    """Compile tests/c/<program> with every csrc/*.c file into ``out``."""
    sources = [*sorted(CSRC.glob("*.c")), PROGRAMS / program]
    for src in sources:
        assert src.is_file(), f"missing {src}"
    cmd = [cc(), *BASE_FLAGS, *extra, *map(str, sources), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def build_plain(program: str, out: Path) -> Path:
    res = compile_program(program, out, ["-O2"])
    assert res.returncode == 0, f"compiling {program} failed:\n{res.stderr}"
    return out


def build_tsan(program: str, out: Path) -> Path:
    res = compile_program(program, out, TSAN_FLAGS)
    if res.returncode != 0:
        # The same sources compile without TSan (the plain build), so a failure here that
        # names the sanitizer is the toolchain lacking it; anything else is a real failure.
        if re.search(r"tsan|sanitiz", res.stderr, re.IGNORECASE):
            pytest.skip(f"ThreadSanitizer runtime not available to {cc()}: {res.stderr.strip()[-400:]}")
        pytest.fail(f"compiling {program} with ThreadSanitizer failed:\n{res.stderr}")
    return out


def tsan_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TSAN_OPTIONS", "halt_on_error=0 second_deadlock_stack=1")
    return env


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if "unexpected memory mapping" in res.stderr and shutil.which("setarch"):
        # TSan cannot cope with some kernels' ASLR layouts; run it without randomisation.
        res = subprocess.run(["setarch", platform.machine(), "-R", *cmd], capture_output=True,
                             text=True, timeout=300, env=env)
    return res


def parse_stats(stdout: str) -> dict[str, int]:
    """The ``layout=... key=value ...`` statistics line a stress program prints."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("layout=")), None)
    assert line, f"no statistics line in output:\n{stdout}"
    stats = {}
    for item in line.split():
        k, _, v = item.partition("=")
        if re.fullmatch(r"\d+", v):
            stats[k] = int(v)
    return stats
