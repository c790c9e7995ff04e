"""Build and run tests/c/stress_fifo.c: the FIFO data path under real concurrency.

One domain in the FIFO ABI with 8 event-array pages and a control block on each of its
2 vCPUs. Sender threads send random IPI ports (xe_evtchn_send), a priority changer
rewrites channel priorities while events fly, a masker masks event words and unmasks them
with the EVTCHNOP_unmask rule or Linux's, and one Linux-style consumer per vCPU clears
upcall_pending and walks its queues with xe_fifo_scan_begin / xe_fifo_scan_next (spec
xen-hypervisor.md §9, §7.1; guest-side.md §1.10). At the end of every short round the
program checks that no event is lost, that every handling is explained by a send (or an
unmask hypercall that may re-raise it), that kicks and upcalls match exactly per vCPU,
that the queues, control blocks and words are quiescent, and that nothing outside the
guest pages was written; it exits non-zero on failure.

It is built with the system ``cc`` against every csrc/*.c file, once plainly and once
with ThreadSanitizer (skipped only when the TSan runtime is missing), with the helpers
in cstress.py that every C stress test shares.
"""

from __future__ import annotations

import subprocess

import pytest
from cstress import build_tsan, compile_program, parse_stats, run, tsan_env

NR_PORTS = 8192  # 8 event-array pages
SECONDS = 1.0  # per plain run: two runs
TSAN_SECONDS = 1.0


@pytest.fixture(scope="module")
def fifo_bin(tmp_path_factory):
    out = tmp_path_factory.mktemp("stress_fifo") / "stress_fifo"
    res = compile_program("stress_fifo.c", out, ["-O2"])
    assert res.returncode == 0, f"compiling the FIFO stress test failed:\n{res.stderr}"
    assert "stress_fifo.c" not in res.stderr, f"the FIFO stress program has warnings:\n{res.stderr}"
    return out


@pytest.fixture(scope="module")
def fifo_tsan_bin(tmp_path_factory, fifo_bin):
    return build_tsan("stress_fifo.c", tmp_path_factory.mktemp("stress_fifo_tsan") / "stress_fifo_tsan")


def _check_run(res, layout: str) -> dict[str, int]:
    """The program's own verdict, then its statistics cross-checked."""
    report = f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-6000:]}"
    assert res.returncode == 0, f"stress_fifo {layout} failed (events lost or bad accounting):\n{report}"
    assert res.stdout.rstrip().endswith("OK"), report
    stats = parse_stats(res.stdout)
    assert stats["lost"] == 0, report
    assert stats["rounds"] > 0, report
    # every thread did its job
    assert stats["sends"] > 0 and stats["handled"] > 0, report
    assert stats["upcalls_v0"] > 0 and stats["upcalls_v1"] > 0, report
    assert stats["masks"] > 0 and stats["masks"] == stats["unmasks"], report
    assert stats["prio_changes"] > 0, report
    # each masker unmask is the guest's local clear or ends in exactly one hypercall
    assert stats["unmasks"] == stats["guest_local"] + stats["unmask_hypercalls"], report
    # exact: every kick reported by a send or an unmask is one upcall taken
    assert stats["kicks_send"] + stats["kicks_unmask"] == stats["upcalls"], report
    assert stats["upcalls_v0"] + stats["upcalls_v1"] == stats["upcalls"], report
    # every handling is a PENDING 0 -> 1 made by a send or an unmask hypercall
    assert stats["handled"] <= stats["sends"] + stats["unmask_hypercalls"], report
    assert stats["excess"] <= stats["unmask_hypercalls"], report
    assert 0 < stats["ports_sent"] < NR_PORTS, report
    return stats


@pytest.mark.parametrize(("layout", "seed", "senders"), [("x86_64", 1, 2), ("x86_32", 2, 3)])
def test_stress_fifo(fifo_bin, layout, seed, senders):
    cmd = [str(fifo_bin), str(SECONDS), layout, str(seed), str(senders)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    stats = _check_run(res, layout)
    assert stats["senders"] == senders


def test_stress_fifo_tsan(fifo_tsan_bin):
    res = run([str(fifo_tsan_bin), str(TSAN_SECONDS), "x86_64", "3"], tsan_env())
    out = res.stdout + res.stderr
    assert "WARNING: ThreadSanitizer" not in out, f"ThreadSanitizer reported a race:\n{out[-8000:]}"
    assert "ThreadSanitizer" not in res.stderr, f"ThreadSanitizer problem:\n{res.stderr[-8000:]}"
    _check_run(res, "x86_64")


def test_stress_fifo_usage_errors(fifo_bin):
    """The harness refuses bad arguments (exit 2) rather than running something else."""
    for args in (["1", "arm64"], ["0"], ["-1"], ["nan"], ["1", "x86_64", "1", "0"],
                 ["1", "x86_64", "1", "99"]):
        res = subprocess.run([str(fifo_bin), *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (args, res.returncode, res.stdout, res.stderr)
        assert "OK" not in res.stdout, (args, res.stdout)
