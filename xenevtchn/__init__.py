"""xenevtchn: Xen's event channels as a fast, faithful simulator.

A C core does the bit-level work with C11 atomics over a ``shared_info`` page laid out
exactly like x86_64 Xen's; the control plane (port tables, the ``EVTCHNOP_*``
dispatcher) is Python. Start with ``Hypervisor().create_domain()``.

Every public name is importable from here and listed in ``__all__``: the hypervisor and
its domains, the guest-side views, libxenevtchn's handle, the errors, and Xen's constants.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.util import find_spec as _find_spec
from typing import TYPE_CHECKING, Any
from importlib.metadata import version as _dist_version

from . import constants as _constants
from .c_library import get_include, get_library, get_pkgconfig_dir
from .constants import *  # noqa: F403 - the constants are part of the public API
from .domain import Domain, Vcpu
from .errors import EvtchnError
from .guest import LinuxGuest, MiniOSGuest
from .handle import XenEvtchn
from .hypervisor import Hypervisor
from .memory import GuestMemory
from .scenario import (
    DeviceSpec,
    GuestSpec,
    Scenario,
    ScenarioError,
    default_scenario,
    load_scenario,
    parse_scenario,
)
from .shared_info import SharedInfo
from .shared_page import SharedPage
from .simulate import Simulation
from .status import EvtchnStatus
from .sweeps import GridError, SweepInterrupted, sweep, sweep_frame

if TYPE_CHECKING:
    from .simpy_adapter import SimPyAdapter


def __getattr__(name: str) -> Any:
    # SimPy is an optional extra: the adapter is imported when first asked for, so that
    # ``import xenevtchn`` works without it (and xe.SimPyAdapter names the extra if absent).
    if name == "SimPyAdapter":
        from .simpy_adapter import SimPyAdapter

        return SimPyAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__: str = _dist_version("xenevtchn")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "DeviceSpec",
    "Domain",
    "EvtchnError",
    "EvtchnStatus",
    "GuestMemory",
    "GridError",
    "GuestSpec",
    "Hypervisor",
    "LinuxGuest",
    "MiniOSGuest",
    "Scenario",
    "ScenarioError",
    "SharedInfo",
    "SharedPage",
    "Simulation",
    "SweepInterrupted",
    "Vcpu",
    "XenEvtchn",
    "default_scenario",
    "get_include",
    "get_library",
    "get_pkgconfig_dir",
    "load_scenario",
    "parse_scenario",
    "sweep",
    "sweep_frame",
]
__all__ += _constants.__all__
if _find_spec("simpy") is not None:   # ``from xenevtchn import *`` works with or without it
    __all__.append("SimPyAdapter")
