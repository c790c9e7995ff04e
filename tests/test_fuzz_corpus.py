"""The fuzzer's corpus, replayed in the normal test run (no atheris needed), and proof that
the harness's invariants are not vacuous.

``tests/fuzz/corpus/`` holds the inputs that atheris found covering new code (minimised
with libFuzzer's ``-merge=1 -use_counters=0``) and the scenario seeds written by
``tests/fuzz/make_seeds.py`` (``seed-*``). Each is decoded and run by the same ``run()`` as in
fuzzing, with every invariant checked after every step. To reproduce one input alone:
``python -c "import sys; sys.path[:0] = ['tests', 'tests/fuzz']; import fuzz_hypercalls as f;
f.run(open(sys.argv[1], 'rb').read())" tests/fuzz/corpus/<file>``.
"""

from __future__ import annotations

import collections
import sys
import traceback
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_hypercalls as fz  # noqa: E402

CORPUS = sorted(p for p in (FUZZ / "corpus").iterdir() if p.is_file())


@pytest.fixture(scope="module")
def replay():
    """Every corpus file through run(): ({file: traceback}, per-operation tallies)."""
    tally: collections.Counter[str] = collections.Counter()
    failures: dict[str, str] = {}
    table = fz.TABLE

    def counted(op):
        def run(w, s):
            kind, info = op(w, s)
            tally[op.__name__] += 1
            tally[f"{op.__name__}:{info.get('op')}"] += 1
            if info.get("op") == "upcall":
                tally["ports handled by upcalls"] += len(info["handled"])
            return kind, info
        return run

    wrapped = {op: counted(op) for op in set(table)}
    fz.TABLE = [wrapped[op] for op in table]
    try:
        for path in CORPUS:
            try:
                w = fz.run(path.read_bytes())
            except Exception:  # noqa: BLE001 - collected, reported per file
                failures[path.name] = traceback.format_exc(limit=6)
                continue
            tally["binds noted"] += len(w.recent) - 1
            tally["domains destroyed"] += len(w.dead)
    finally:
        fz.TABLE = table
    return failures, tally


def test_corpus_is_small_and_present():
    assert 20 <= len(CORPUS) <= 500, len(CORPUS)
    assert all(p.stat().st_size <= 4096 for p in CORPUS)


def test_corpus_replays_clean(replay):
    failures, _ = replay
    assert not failures, "corpus inputs failed:\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in sorted(failures.items())[:5])


def test_corpus_reaches_every_operation(replay):
    """The corpus is not a pile of rejected calls: every kind of step ran, binds
    succeeded, upcalls handled ports, domains were destroyed and re-created."""
    _, tally = replay
    for op in {op.__name__ for op in fz.TABLE}:
        assert tally[op] > 0, f"no corpus input runs {op}"
    for what in ("op_raw:unmask", "op_guest_mask:mask", "op_guest_unmask:unmask", "op_upcall:upcall",
                 "op_lifecycle:lifecycle", "op_raw:dead"):
        assert tally[what] > 0, f"no corpus input reaches {what}"
    assert tally["binds noted"] >= 200 and tally["domains destroyed"] > 0, tally
    assert tally["ports handled by upcalls"] >= 200, tally     # make_seeds.py's scenarios


# ---------------------------------------------------------------- the checks bite


def _world():
    w = fz.World()
    d0, d1 = w.slots[0], w.slots[1]
    p = d1.alloc_unbound(0)
    q = d0.bind_interdomain(1, p)
    w.kicks.clear()                        # as run() does before each step
    w.wakes.clear()
    return w, d0, d1, p, q


def _fails(w, what: str) -> None:
    with pytest.raises(AssertionError, match=what):
        fz.check_world(w, fz.Snap(w))


def test_world_checks_catch_corruption():
    w, d0, d1, p, q = _world()
    fz.check_world(w, fz.Snap(w))          # a sound world passes
    d1.shared_info.set_pending(50)
    _fails(w, "pending but not open")
    d1.shared_info.clear_pending(50)

    w, d0, d1, p, q = _world()
    d1.ports.chans[p].remote_port = q + 1
    _fails(w, "peer")

    w, d0, d1, p, q = _world()
    virq_port = d1.bind_virq(1)
    d1._virq_to_evtchn[0][1] = 0
    _fails(w, "virq table")
    d1._virq_to_evtchn[0][1] = virq_port

    w, d0, d1, p, q = _world()
    d1.shared_info.buffer[3100] = 1
    _fails(w, "outside the event fields")

    w, d0, d1, p, q = _world()
    d0.shared_info.buffer[64 + 8] = 1      # vCPU 1's selector, upcall flag clear
    _fails(w, "without the upcall flag")

    w, d0, d1, p, q = _world()
    d1.ports.active += 1
    _fails(w, "active")

    w, d0, d1, p, q = _world()
    d1.ports.state[p] = fz.IPI
    _fails(w, "mirror")

    w, d0, d1, p, q = _world()
    w.hv._irq_shareable[9] = True
    _fails(w, "shareable")

    w, d0, d1, p, q = _world()
    d1.ports.chans[p].notify_vcpu = 1      # moved behind the per-vCPU maps' back
    _fails(w, "per-vCPU map")


def test_step_checks_catch_lost_edges_and_kicks():
    w, d0, d1, p, q = _world()
    d1.guest.do_upcall(0)
    before = fz.Snap(w)
    d1.shared_info.buffer[2048 + p // 8] |= 1 << (p % 8)     # pending, never announced
    with pytest.raises(AssertionError, match="without announcement"):
        fz.check_step(w, before, fz.Snap(w), "hv", {"op": "raw"})

    w, d0, d1, p, q = _world()
    d1.guest.do_upcall(0)
    before = fz.Snap(w)
    w.kicks.clear()
    d0.send(q)                             # kicks d1's vCPU 0 ...
    w.kicks.clear()                        # ... but the hook's record is lost
    with pytest.raises(AssertionError, match="kicks"):
        fz.check_step(w, before, fz.Snap(w), "hv", {"op": "send"})

    w, d0, d1, p, q = _world()
    before = fz.Snap(w)
    d1.guest.mask(p)
    d1.guest.mask(p + 1)                   # the step says it masked one port
    with pytest.raises(AssertionError):
        fz.check_step(w, before, fz.Snap(w), "guest", {"op": "mask", "domain": d1, "port": p})

    w, d0, d1, p, q = _world()
    d0.send(q)
    w.kicks.clear()
    before = fz.Snap(w)
    got = d1.guest.do_upcall(0)
    assert got == [p]
    with pytest.raises(AssertionError, match="handled"):
        fz.check_step(w, before, fz.Snap(w), "guest",
                      {"op": "upcall", "domain": d1, "vcpu": 0, "handled": [], "calls": []})
