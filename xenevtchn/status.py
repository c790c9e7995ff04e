"""``EvtchnStatus``: what ``EVTCHNOP_status`` reports about one port."""

from __future__ import annotations

from dataclasses import dataclass

from .constants import EvtchnStat


@dataclass(frozen=True)
class EvtchnStatus:
    """The answer of ``Domain.status``; fields a status has no use for are ``None``.

    ``dom`` is the remote domid of an unbound port or the peer of an interdomain one,
    ``port`` the interdomain peer's port, ``pirq`` / ``virq`` the bound number; ``vcpu``
    is the notify vCPU in every case.
    """

    status: EvtchnStat
    vcpu: int
    dom: int | None = None
    port: int | None = None
    pirq: int | None = None
    virq: int | None = None
