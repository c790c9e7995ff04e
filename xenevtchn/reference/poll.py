"""SCHEDOP_poll (spec §10, docs/semantics.md "Poll") and the poll timers."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Iterable

from xenevtchn.constants import SCHEDOP_POLL_MAX_PORTS
from xenevtchn.errors import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain, Vcpu


def sched_poll(d: Domain, ports: list[int], timeout: int, vcpu_id: int) -> bool:
    """Poll ``ports`` on vCPU ``vcpu_id`` of ``d``.

    Returns True when the poll returns at once (events need delivery, or a polled port
    is pending), False when the vCPU is now blocked (or was blocked and its timeout,
    already reached, woke it at once).
    """
    v = d.get_vcpu(vcpu_id)
    if len(ports) > SCHEDOP_POLL_MAX_PORTS:
        raise EvtchnError(errno.EINVAL)
    if v.polling:  # a blocked vCPU cannot make hypercalls
        raise EvtchnError(errno.EBUSY)
    si = d.shared_info
    if si.upcall_pending(v.id) and not si.upcall_mask(v.id):  # local events need delivery
        return True
    for port in ports:
        if not d.port_is_valid(port) or not d.channels[port].usable:
            raise EvtchnError(errno.EINVAL)
        if d.port_ops.is_pending(d, port):  # mask ignored
            return True
    v.poll_evtchn = ports[0] if len(ports) == 1 else -1
    d.poll_mask |= 1 << v.id
    if timeout:
        v.poll_deadline = timeout  # re-arms (replaces) any older deadline
        if timeout <= d.hypervisor.now:
            fire_timer(v)
    return False


def fire_timer(v: Vcpu) -> None:
    """The poll timer of ``v`` expires: disarm it; wake ``v`` if it is still polling."""
    v.poll_deadline = None
    v.unblock()


def fire_due_timers(domains: Iterable[Domain], now: int) -> None:
    """Fire every armed poll timer with deadline <= ``now``: deadline, domid, vCPU order."""
    due = [
        (v.poll_deadline, d.domid, v.id, v)
        for d in domains
        for v in d.vcpus
        if v.poll_deadline is not None and v.poll_deadline <= now
    ]
    due.sort(key=lambda entry: entry[:3])
    for *_, v in due:
        fire_timer(v)
