"""Every row of the ratio table: ``ours`` and ``floor`` in one pytest-benchmark group."""

from __future__ import annotations

import pytest

from xenevtchn import bench


@pytest.mark.parametrize("side", ["floor", "ours"])
@pytest.mark.parametrize("name", list(bench.ROWS))
def test_row(benchmark, bench_row, name, side):
    row = bench_row(name)
    case = row.ours if side == "ours" else row.floor
    benchmark.group = name
    benchmark.extra_info.update(side=side, ops=case.ops, floor=row.spec.floor_name,
                                target=row.spec.target_text())
    assert case.check is not None, f"{name} {side}: nothing checks that the timed work happened"
    result = benchmark.pedantic(case.run, setup=case.setup, rounds=row.spec.rounds,
                                warmup_rounds=2, iterations=1)
    case.check(result)   # the last round did all its work (in test runs: the only round)
    if case.metric is not None:  # a quantity (e.g. peak bytes), read by bench --from-json
        benchmark.extra_info["value"] = case.metric(result) / case.ops


@pytest.mark.parametrize("name", list(bench.ROWS))
def test_a_round_that_does_nothing_fails_its_check(bench_row, name):
    """Every case's check reads back the state its round changes (or a count the floor
    keeps), so a timed call that did nothing cannot pass: after the untimed setup, the
    check of a round that was skipped fails, for ours and for the floor."""
    row = bench_row(name)
    for side, case in (("ours", row.ours), ("floor", row.floor)):
        assert case.check is not None, f"{name} {side}: no check"
        if case.setup is not None:
            case.setup()
        with pytest.raises((AssertionError, TypeError)):
            case.check(None)
        if case.setup is not None:   # and the real round passes it
            case.setup()
        case.check(case.run())
