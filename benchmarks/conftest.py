"""The benchmark suite: pytest-benchmark over the cases of ``xenevtchn.bench``.

Each row of the ratio table is one benchmark group with two members, ``ours`` and
``floor`` (same number of events per round, so the group's table compares them directly).
The floors are compiled once per session by ``xenevtchn._bench_floors`` into a cache
directory outside the package.

The normal test run (``addopts = --benchmark-disable``) runs every case once, with its
setup, and checks what it did; ``--benchmark-enable`` times them:

    pytest benchmarks --benchmark-enable --benchmark-disable-gc --benchmark-json=bench.json
    xenevtchn bench --from-json bench.json                # the ratio table of that run
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import pytest

from xenevtchn import _bench_floors, bench

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
# the faulthandler watchdog behind pytest-timeout (tests/hangguard.py)
from hangguard import pytest_configure, pytest_runtest_protocol, pytest_unconfigure  # noqa: E402,F401


@pytest.fixture(scope="session")
def floors():
    """(ffi, lib) of the floor module, built on first use."""
    return _bench_floors.load()


@pytest.fixture(scope="session")
def bench_row(floors) -> Callable[[str], bench.Row]:
    """A row by name, its world built once per session and shared by ours and floor."""
    built: dict[str, bench.Row] = {}

    def get(name: str) -> bench.Row:
        if name not in built:
            built[name] = bench.build_row(name, floors)
        return built[name]

    return get
