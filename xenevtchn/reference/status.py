"""``EvtchnStatus``: what ``EVTCHNOP_status`` reports, as a Python value."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from xenevtchn.constants import EvtchnStat

_FIELDS = ("status", "vcpu", "dom", "port", "pirq", "virq")


@dataclass(frozen=True, eq=False)
class EvtchnStatus:
    """Result of ``EVTCHNOP_status``; fields a status does not have are ``None``.

    ``dom`` is set for unbound (remote domid) and interdomain (peer domid), ``port`` for
    interdomain (peer port), ``pirq`` for pirq and ``virq`` for virq channels.

    Equality compares the six fields, and also works against any other object that has
    the same six attributes (e.g. the native package's ``EvtchnStatus``), so tests can
    compare native and reference results directly.
    """

    status: EvtchnStat
    vcpu: int
    dom: int | None = None
    port: int | None = None
    pirq: int | None = None
    virq: int | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        """``(status, vcpu, dom, port, pirq, virq)``."""
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        try:
            theirs = tuple(getattr(other, name) for name in _FIELDS)
        except AttributeError:
            return NotImplemented
        return self.as_tuple() == theirs

    def __hash__(self) -> int:
        return hash(self.as_tuple())


assert tuple(f.name for f in fields(EvtchnStatus)) == _FIELDS
