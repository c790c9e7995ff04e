"""xenevtchn: Xen's event channels as a fast, faithful simulator.

A C core does the bit-level work with C11 atomics over a ``shared_info`` page laid out
exactly like x86_64 Xen's; the control plane (port tables, the ``EVTCHNOP_*``
dispatcher) is Python. Start with ``Hypervisor().create_domain()``.
"""

from __future__ import annotations

from .constants import *  # noqa: F403 - the constants are part of the public API
from .domain import Domain, Vcpu
from .errors import EvtchnError
from .guest import LinuxGuest, MiniOSGuest
from .handle import XenEvtchn
from .hypervisor import Hypervisor
from .shared_info import SharedInfo
from .status import EvtchnStatus

__version__ = "0.1.0"
