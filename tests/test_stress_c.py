"""Build and run tests/c/stress_2l.c: the 2-level data path under real concurrency.

Several sender threads raise random ports towards vCPU 0, a masker thread masks ports and
unmasks them with the EVTCHNOP_unmask rule, and a Linux-style consumer clears
upcall_pending, takes the selector and handles pending & ~mask ports clear-before-handle
(spec xen-hypervisor.md §7.1, §8; guest-side.md §1.3-§1.5, §1.7). The program checks that
no event is lost, that the NEWLY/KICK results account exactly for every handling and
upcall, and that nothing outside shared_info is written; it exits non-zero on failure.

It is built and run by the helpers in cstress.py, once plainly and once with
ThreadSanitizer (skipped only when the TSan runtime is missing).
"""

from __future__ import annotations

import subprocess

import pytest
from cstress import build_plain, build_tsan, parse_stats, run, tsan_env

LAYOUTS = ("x86_64", "x86_32")
SECONDS = 1.5  # per layout: ~3 s in all for the plain build
TSAN_SECONDS = 1.0


@pytest.fixture(scope="module")
def stress_bin(tmp_path_factory):
    return build_plain("stress_2l.c", tmp_path_factory.mktemp("stress") / "stress_2l")


@pytest.fixture(scope="module")
def stress_tsan_bin(tmp_path_factory, stress_bin):
    return build_tsan("stress_2l.c", tmp_path_factory.mktemp("stress_tsan") / "stress_2l_tsan")


def _run(exe, seconds: float, layout: str, seed: int, env=None):
    return run([str(exe), str(seconds), layout, str(seed)], env)


def _check_run(res, layout: str) -> dict[str, int]:
    report = f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-6000:]}"
    assert res.returncode == 0, f"stress_2l {layout} failed (events lost or bad accounting):\n{report}"
    assert res.stdout.rstrip().endswith("OK"), report
    stats = parse_stats(res.stdout)
    assert stats["lost"] == 0, report
    assert stats["sends"] > 0 and stats["seen"] > 0 and stats["upcalls"] > 0, report
    assert stats["masks"] > 0 and stats["masks"] == stats["unmasks"], report
    assert stats["newly"] == stats["seen"], report
    assert stats["kicks_send"] + stats["kicks_unmask"] == stats["upcalls"], report
    assert stats["newly"] <= stats["sends"], report
    return stats


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stress_2l(stress_bin, layout):
    res = _run(stress_bin, SECONDS, layout, seed=1 if layout == "x86_64" else 2)
    stats = _check_run(res, layout)
    assert 0 < stats["ports_sent"] <= (4096 if layout == "x86_64" else 1024)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stress_2l_tsan(stress_tsan_bin, layout):
    res = _run(stress_tsan_bin, TSAN_SECONDS, layout, seed=3, env=tsan_env())
    out = res.stdout + res.stderr
    assert "WARNING: ThreadSanitizer" not in out, f"ThreadSanitizer reported a race:\n{out[-8000:]}"
    assert "ThreadSanitizer" not in res.stderr, f"ThreadSanitizer problem:\n{res.stderr[-8000:]}"
    _check_run(res, layout)


def test_stress_usage_errors(stress_bin):
    """The harness refuses bad arguments (exit 2) rather than running something else."""
    for args in (["1", "arm64"], ["0"], ["-1"], ["1", "x86_64", "1", "0"], ["1", "x86_64", "1", "99"]):
        res = subprocess.run([str(stress_bin), *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (args, res.returncode, res.stdout, res.stderr)
