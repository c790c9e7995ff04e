"""Build and run tests/c/stress_minios.c: two vCPUs' Mini-OS scans on one shared_info.

Mini-OS handles every pending port of a word its selector names, whichever vCPU the port
notifies, so the scans of two vCPUs read the same pending bits; the program checks that
each 0 -> 1 edge is handled exactly once (issue 14 item 2: both scans returned the port).
Built and run plainly and under ThreadSanitizer (cstress.py), with fixed call counts.
"""

from __future__ import annotations

import pytest
from cstress import build_plain, build_tsan, parse_stats, run, tsan_env

LAYOUTS = ("x86_64", "x86_32")
CALLS = 400_000        # per sender thread
TSAN_CALLS = 60_000


@pytest.fixture(scope="module")
def stress_bin(tmp_path_factory):
    return build_plain("stress_minios.c", tmp_path_factory.mktemp("stress") / "stress_minios")


@pytest.fixture(scope="module")
def stress_tsan_bin(tmp_path_factory, stress_bin):
    return build_tsan("stress_minios.c", tmp_path_factory.mktemp("stress_tsan") / "stress_minios_tsan")


def _check(res, layout: str) -> dict[str, int]:
    report = f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-6000:]}"
    assert res.returncode == 0, f"stress_minios {layout}: events handled twice or lost:\n{report}"
    assert res.stdout.rstrip().endswith("OK"), report
    stats = parse_stats(res.stdout)
    assert stats["doubled"] == 0 and stats["lost"] == 0, report
    assert stats["handled"] == stats["newly"] > 0, report
    assert stats["upcalls"] > 0, report
    return stats


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stress_minios(stress_bin, layout):
    res = run([str(stress_bin), str(CALLS), layout, "1" if layout == "x86_64" else "2"])
    stats = _check(res, layout)
    assert stats["sends"] == 2 * CALLS


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stress_minios_tsan(stress_tsan_bin, layout):
    res = run([str(stress_tsan_bin), str(TSAN_CALLS), layout, "3"], tsan_env())
    out = res.stdout + res.stderr
    assert "WARNING: ThreadSanitizer" not in out, f"ThreadSanitizer reported a race:\n{out[-8000:]}"
    assert "ThreadSanitizer" not in res.stderr, f"ThreadSanitizer problem:\n{res.stderr[-8000:]}"
    _check(res, layout)


def test_stress_minios_usage_errors(stress_bin):
    """Bad arguments exit 2 rather than running something else."""
    for args in (["0"], ["1000", "arm64"], ["1000", "x86_64", "1", "0"], ["1000", "x86_64", "1", "99"]):
        res = run([str(stress_bin), *args])
        assert res.returncode == 2, (args, res.returncode, res.stdout, res.stderr)
