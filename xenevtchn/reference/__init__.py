"""Pure-Python reference model of Xen's event-channel hypervisor (2-level and FIFO ABIs).

Written from ``shared/spec/xen-hypervisor.md``, ``shared/spec/guest-side.md`` and
``docs/semantics.md`` only; it is the test oracle and benchmark baseline for the native
implementation. The guest side is ``d.guest`` (:mod:`.guest`) and :class:`XenEvtchn`
(libxenevtchn, :mod:`.xenevtchn_handle`).

    >>> from xenevtchn import reference as ref
    >>> hv = ref.Hypervisor()
    >>> d0 = hv.create_domain(privileged=True)

Every constant of :mod:`xenevtchn.constants` is re-exported here.
"""

from xenevtchn import constants as _constants
from xenevtchn.constants import *  # noqa: F401,F403 - re-export every constant
from xenevtchn.errors import EvtchnError

from .domain import Domain, Vcpu
from .guest import Guest, LinuxGuest, MiniOSGuest
from .hypervisor import Hypervisor
from .memory import GuestMemory
from .shared_info import SharedInfo
from .status import EvtchnStatus
from .xenevtchn_handle import XenEvtchn

_CONSTANT_NAMES = [
    name
    for name, value in vars(_constants).items()
    if not name.startswith("_") and name not in ("annotations", "IntEnum")
]

__all__ = [
    "Hypervisor",
    "Domain",
    "Vcpu",
    "SharedInfo",
    "EvtchnStatus",
    "EvtchnError",
    "XenEvtchn",
    "GuestMemory",
    "Guest",
    "LinuxGuest",
    "MiniOSGuest",
    *_CONSTANT_NAMES,
]
