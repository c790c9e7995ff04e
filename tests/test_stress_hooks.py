"""Build and run tests/c/stress_hooks.c: the lock-free list of domains owing hooks
(``xe_hv_take_hooks``) under real concurrency, plain and under ThreadSanitizer."""

from __future__ import annotations

import re

from cstress import build_plain, build_tsan, run, tsan_env


def _run(exe, seconds: float, seed: int, env=None):
    return run([str(exe), str(seconds), str(seed)], env)


def _check(res) -> None:
    report = f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-6000:]}"
    assert res.returncode == 0, report
    assert res.stdout.rstrip().endswith("OK"), report
    made = int(re.search(r"made=(\d+)", res.stdout).group(1))
    assert made > 1000, report


def test_stress_hooks(tmp_path):
    exe = build_plain("stress_hooks.c", tmp_path / "stress_hooks")
    _check(_run(exe, 1.0, seed=1))


def test_stress_hooks_tsan(tmp_path):
    exe = build_tsan("stress_hooks.c", tmp_path / "stress_hooks_tsan")
    res = _run(exe, 0.7, seed=2, env=tsan_env())
    out = res.stdout + res.stderr
    assert "ThreadSanitizer" not in out, f"ThreadSanitizer reported:\n{out[-8000:]}"
    _check(res)
