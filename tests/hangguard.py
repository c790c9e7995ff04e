"""A backstop for hangs that pytest-timeout cannot see: hooks that tests/conftest.py and
benchmarks/conftest.py both import (not a conftest.py at the project root, which would put
the source tree first on sys.path and make tools/sanitize.sh and tools/coverage.sh import
the unbuilt package instead of the one they installed).

pytest-timeout's ``thread`` method dumps the stacks from a Python thread, which needs the
GIL. A C loop that never returns while holding it (the fast upcall keeps the GIL: a
planted bug that leaves the upcall flag set spins there) would stall the run silently.
``faulthandler``'s watchdog is a C thread: a little after the test's own limit it writes
every thread's Python stack to the real stderr and ends the run with exit status 1.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Generator

import pytest

GRACE = 60  # seconds past the test's pytest-timeout limit, so that one reports first
DEFAULT_LIMIT = 300.0

_stderr_fd: int | None = None


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    if marker is not None and "timeout" in marker.kwargs:
        return float(marker.kwargs["timeout"])
    value = item.config.getoption("timeout", None)  # --timeout on the command line
    if value is None:
        try:
            value = item.config.getini("timeout")  # pyproject; ValueError without the plugin
        except ValueError:
            value = None
    return DEFAULT_LIMIT if value in (None, "") else float(value)


def pytest_configure(config: pytest.Config) -> None:
    global _stderr_fd
    if _stderr_fd is not None:  # both conftests import these hooks: once is enough
        return
    # Output capture is suspended here, so fd 2 is the terminal (or the CI log).
    _stderr_fd = os.dup(sys.__stderr__.fileno() if sys.__stderr__ else 2)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stderr_fd
    if _stderr_fd is not None:
        os.close(_stderr_fd)
        _stderr_fd = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    limit = _limit(item)
    if limit <= 0 or _stderr_fd is None:
        yield
        return
    faulthandler.dump_traceback_later(limit + GRACE, exit=True, file=_stderr_fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
