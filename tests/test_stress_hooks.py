"""Build and run tests/c/stress_hooks.c: the lock-free list of domains owing hooks
(``xe_hv_take_hooks``) under real concurrency, plain and under ThreadSanitizer."""

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
SRC = Path(__file__).resolve().parent / "c" / "stress_hooks.c"
FLAGS = ["-std=c11", "-pthread", "-Wall", "-Wextra", f"-I{CSRC}"]


def _cc() -> str:
    cc = os.environ.get("CC") or shutil.which("cc")
    assert cc, "no C compiler: the stress test needs the system cc (as does building the package)"
    return cc


def _build(out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [_cc(), *FLAGS, *extra, *map(str, sorted(CSRC.glob("*.c"))), str(SRC), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _run(exe: Path, seconds: float, seed: int, env=None) -> subprocess.CompletedProcess:
    cmd = [str(exe), str(seconds), str(seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if "unexpected memory mapping" in res.stderr and shutil.which("setarch"):
        res = subprocess.run(["setarch", platform.machine(), "-R", *cmd], capture_output=True,
                             text=True, timeout=300, env=env)
    return res


def _check(res: subprocess.CompletedProcess) -> None:
    report = f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-6000:]}"
    assert res.returncode == 0, report
    assert res.stdout.rstrip().endswith("OK"), report
    made = int(re.search(r"made=(\d+)", res.stdout).group(1))
    assert made > 1000, report


def test_stress_hooks(tmp_path):
    exe = tmp_path / "stress_hooks"
    res = _build(exe, ["-O2"])
    assert res.returncode == 0, res.stderr
    _check(_run(exe, 1.0, seed=1))


def test_stress_hooks_tsan(tmp_path):
    exe = tmp_path / "stress_hooks_tsan"
    res = _build(exe, ["-O1", "-g", "-fsanitize=thread"])
    if res.returncode != 0:
        if re.search(r"tsan|sanitiz", res.stderr, re.IGNORECASE):
            pytest.skip(f"ThreadSanitizer runtime not available to {_cc()}: {res.stderr.strip()[-400:]}")
        pytest.fail(f"compiling the TSan stress test failed:\n{res.stderr}")
    env = dict(os.environ)
    env.setdefault("TSAN_OPTIONS", "halt_on_error=0 second_deadlock_stack=1")
    res = _run(exe, 0.7, seed=2, env=env)
    out = res.stdout + res.stderr
    assert "ThreadSanitizer" not in out, f"ThreadSanitizer reported:\n{out[-8000:]}"
    _check(res)
