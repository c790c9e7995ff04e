"""Fixtures shared by the spec-driven tests.

Every hypervisor test runs against both implementations of the same API:
``native`` (``import xenevtchn``: C core + Python control plane) and ``reference``
(``xenevtchn.reference``: the pure-Python model). Each is imported lazily inside the
fixture, so a missing or broken implementation fails only its own parameter.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # helper modules (xenabi, hvhelpers) live beside the tests
    sys.path.insert(0, _HERE)

from hangguard import pytest_configure, pytest_runtest_protocol, pytest_unconfigure  # noqa: E402,F401
from hvhelpers import make_pair, make_via  # noqa: E402

IMPLEMENTATIONS = {"native": "xenevtchn", "reference": "xenevtchn.reference"}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def xe(request):
    """The implementation under test, as a module exposing the public API names."""
    return importlib.import_module(IMPLEMENTATIONS[request.param])


@pytest.fixture
def hv(xe):
    return xe.Hypervisor()


@pytest.fixture
def pair(hv):
    """(dom0, domU): dom0 privileged (hardware domain, domid 0), domU domid 1; 2 vCPUs each."""
    return make_pair(hv)


@pytest.fixture
def dom0(pair):
    return pair[0]


@pytest.fixture
def domu(pair):
    return pair[1]


@pytest.fixture(params=["wrapper", "raw", "compat"])
def via(request, xe):
    """One entry point: the Pythonic wrappers, event_channel_op, or event_channel_op_compat."""
    return make_via(request.param, xe)


@pytest.fixture(params=["wrapper", "raw"])
def via_nc(request, xe):
    """Entry points for commands the compat hypercall does not carry (reset, >= 10)."""
    return make_via(request.param, xe)


@pytest.fixture
def hooks(hv):
    """Record hv.on_kick / hv.on_wake calls as ("kick"|"wake", vcpu id) in order."""
    log = []
    hv.on_kick = lambda v: log.append(("kick", v.id))
    hv.on_wake = lambda v: log.append(("wake", v.id))
    return log


@pytest.fixture
def fast_switching():
    """Python threads switch every 10 µs instead of 5 ms, so races get their chances."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)
