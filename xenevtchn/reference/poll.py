"""SCHEDOP_poll (spec §10, docs/semantics.md "Poll") and the poll timers."""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Callable, Iterable

from xenevtchn.constants import SCHEDOP_POLL_MAX_PORTS, SCHEDOP_poll, SCHEDOP_yield
from xenevtchn.errors import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain, Vcpu


def needs_delivery(d: Domain, v: Vcpu) -> bool:
    """PV: the upcall flag is set and not masked. HVM/PVH (xen-hvm-and-beyond §2.6): the
    flag is set and the vCPU's upcall is an interrupt vector (its own, or a vector
    callback), mask ignored; a GSI/INTx/no callback never needs delivery here."""
    si = d.shared_info
    irq = d.hvm
    if irq is None:
        return bool(si.upcall_pending(v.id)) and not si.upcall_mask(v.id)
    vector = irq.vcpu_vectors[v.id] != 0 or irq.via == "vector"
    return vector and bool(si.upcall_pending(v.id))


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
    if needs_delivery(d, v):  # local events need delivery
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


SCHED_POLL_LAYOUT = {"x86_64": ("<Q", 0, 8, 16, 24), "x86_32": ("<I", 0, 4, 8, 16)}


def sched_op(d: Domain, cmd: int, arg: bytes, vcpu_id: int) -> int:
    """HYPERVISOR_sched_op made by vCPU ``vcpu_id`` (xen-hvm-and-beyond §5): 0 or -errno.

    ``arg`` is the bytes copied in from the caller's buffer.
    """
    if not 0 <= vcpu_id < len(d.vcpus):
        return -errno.ENOENT
    if cmd == SCHEDOP_yield:
        return 0
    if cmd != SCHEDOP_poll:
        return -errno.ENOSYS
    handle_fmt, handle_at, nr_at, timeout_at, size = SCHED_POLL_LAYOUT[d.layout]
    if len(arg) < size:
        return -errno.EFAULT
    (address,) = struct.unpack_from(handle_fmt, arg, handle_at)
    (nr_ports,) = struct.unpack_from("<I", arg, nr_at)
    (timeout,) = struct.unpack_from("<Q", arg, timeout_at)
    v = d.vcpus[vcpu_id]
    try:
        if nr_ports > SCHEDOP_POLL_MAX_PORTS:
            raise EvtchnError(errno.EINVAL)
        if v.polling:
            raise EvtchnError(errno.EBUSY)
        # guest_handle_okay: PV checks the whole array up front; translated guests
        # (HVM/PVH) skip this and fault only per entry read.
        translated = d.type != "pv"
        if nr_ports and not translated and d.memory.read_guest(address, 4 * nr_ports) is None:
            raise EvtchnError(errno.EFAULT)

        def entry(i: int) -> int:
            raw = d.memory.read_guest(address + 4 * i, 4)
            if raw is None:
                raise EvtchnError(errno.EFAULT)
            return int.from_bytes(raw, "little")

        _poll(d, v, nr_ports, entry, timeout)
    except EvtchnError as exc:
        return -exc.errno
    return 0


def _poll(d: Domain, v: Vcpu, nr_ports: int, entry: Callable[[int], int], timeout: int) -> bool:
    """The blocking part of do_poll, reading port ``i`` with ``entry(i)`` when needed."""
    if needs_delivery(d, v):  # local events need delivery
        return True
    first = -1
    for i in range(nr_ports):
        port = entry(i)
        if i == 0:
            first = port
        if not d.port_is_valid(port) or not d.channels[port].usable:
            raise EvtchnError(errno.EINVAL)
        if d.port_ops.is_pending(d, port):  # mask ignored
            return True
    v.poll_evtchn = first if nr_ports == 1 else -1
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
