"""The restore fuzzer's corpus (``tests/fuzz/restore-corpus/``), replayed without atheris:
every input's snapshot is refused with ValueError or restores to a world that passes the
shared invariant checker, keeps working, and round-trips (see ``fuzz_restore.py``)."""

from __future__ import annotations

import collections
import sys
import traceback
from pathlib import Path

import pytest

import xenevtchn as xe

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_restore as fr  # noqa: E402

CORPUS = sorted(p for p in (FUZZ / "restore-corpus").iterdir() if p.is_file())


@pytest.fixture(scope="module")
def replay():
    failures: dict[str, str] = {}
    tally: collections.Counter[str] = collections.Counter()
    for path in CORPUS:
        data = path.read_bytes()
        try:
            hv = fr.run(data)
        except Exception:  # noqa: BLE001 - collected, reported per file
            failures[path.name] = traceback.format_exc(limit=6)
            continue
        if hv is not None:
            tally["restored"] += 1
            continue
        try:
            xe.Hypervisor.restore(fr.build(data))
        except ValueError as exc:
            msg = str(exc)
            tally["unreachable" if "unreachable state" in msg else
                  "shape" if "document" in msg else "other refusal"] += 1
    return failures, tally


def test_restore_corpus_is_small_and_present():
    assert 20 <= len(CORPUS) <= 300, len(CORPUS)
    assert all(p.stat().st_size <= 4096 for p in CORPUS)


def test_restore_corpus_replays_clean(replay):
    failures, _ = replay
    assert not failures, "restore corpus inputs failed:\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in sorted(failures.items())[:5])


def test_restore_corpus_reaches_every_outcome(replay):
    """Not a pile of one kind of refusal: some inputs restore, some are refused by the
    shape check, some by the field checks, some by the invariant checker."""
    _, tally = replay
    for what in ("restored", "shape", "other refusal", "unreachable"):
        assert tally[what] > 0, tally


# The fuzzer's first finding (tests/fuzz/restore-findings/oom-69cee827, outside the
# corpus so that only the capped child below ever builds it): the harness
# itself, not restore, ran out of memory. A mutation placed one of OTHER_TYPES' shared list
# objects into the document and a later one put that list inside itself; walking the cyclic
# document never ended. Each input must build from fresh objects, in bounded memory.
FINDING = FUZZ / "restore-findings" / "oom-69cee827"


def test_finding_builds_in_bounded_memory_and_is_refused():
    """In a child capped at 1 GiB of address space, so a regression fails, not the host."""
    import resource
    import subprocess

    child = (
        "import sys, tracemalloc\n"
        f"sys.path.insert(0, {str(FUZZ)!r})\n"
        "import fuzz_restore as fr, xenevtchn as xe\n"
        "tracemalloc.start()\n"
        f"blob = fr.build(open({str(FINDING)!r}, 'rb').read())\n"
        "peak = tracemalloc.get_traced_memory()[1]\n"
        "try:\n"
        "    xe.Hypervisor.restore(blob)\n"
        "    print(peak, 'restored')\n"
        "except ValueError as e:\n"
        "    print(peak, e)\n")

    import os

    env = dict(os.environ)
    sanitized = "asan" in env.get("LD_PRELOAD", "")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    if sanitized:
        # AddressSanitizer reserves terabytes of shadow address space at start, so an
        # address-space cap kills it; its own resident-memory ceiling does the same job.
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":hard_rss_limit_mb=1024"
    out = subprocess.run([sys.executable, "-P", "-c", child], capture_output=True, text=True,
                         timeout=120, preexec_fn=None if sanitized else cap, cwd=FUZZ, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    peak, _, verdict = out.stdout.strip().partition(" ")
    assert int(peak) < 16 << 20, peak
    assert "not an object" in verdict, verdict


def test_mutations_leave_the_harness_constants_alone():
    import copy
    import random

    before = copy.deepcopy(fr.OTHER_TYPES), copy.deepcopy(fr.LIMITS), list(fr.BASES)
    rng = random.Random(69)
    for _ in range(300):
        fr.build(bytes(rng.randrange(256) for _ in range(rng.randrange(4, 64))))
    assert (fr.OTHER_TYPES, fr.LIMITS, fr.BASES) == before
