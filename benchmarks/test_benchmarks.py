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
    result = benchmark.pedantic(case.run, setup=case.setup, rounds=row.spec.rounds,
                                warmup_rounds=2, iterations=1)
    if case.check is not None:
        case.check(result)   # the last round did the work it claims (in test runs: the only one)
