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
