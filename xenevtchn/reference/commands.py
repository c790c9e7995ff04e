"""The EVTCHNOP_* commands, each with Xen's checks in Xen's order (spec §4).

Every function takes the calling domain first, returns the command's output (if any)
and raises ``EvtchnError(errno)`` on failure. Argument values are the raw ABI field
values (already unsigned and in range for their field).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

from xenevtchn.constants import (
    BIND_PIRQ__WILL_SHARE,
    DOMID_SELF,
    NR_VIRQS,
    EvtchnStat,
    VirqClass,
    virq_class,
)
from xenevtchn.errors import EvtchnError

from . import event_fifo
from .events import raise_event
from .channel import (
    Channel,
    ECS_FREE,
    ECS_INTERDOMAIN,
    ECS_IPI,
    ECS_PIRQ,
    ECS_RESERVED,
    ECS_UNBOUND,
    ECS_VIRQ,
)
from .status import EvtchnStatus

if TYPE_CHECKING:
    from .domain import Domain
    from .xenevtchn_handle import XenEvtchn


def _fail(code: int) -> EvtchnError:
    return EvtchnError(code)


def target_allowed(caller: Domain, subject: Domain) -> bool:
    """The XSM dummy TARGET rule: the subject itself, or a privileged caller."""
    return caller is subject or caller.privileged


def lookup_domain(caller: Domain, domid: int) -> Domain:
    """Domain lookup "by any id": DOMID_SELF is the caller; unknown ids are ``ESRCH``."""
    if domid == DOMID_SELF:
        return caller
    return caller.hypervisor.get_domain(domid)


# -- EVTCHNOP_alloc_unbound (§4.1) ------------------------------------------------------
def alloc_unbound(caller: Domain, dom: int, remote_dom: int) -> int:
    d = lookup_domain(caller, dom)
    port = d.get_free_port()  # before the privilege check
    if not target_allowed(caller, d):
        raise _fail(errno.EPERM)
    channel = d.claim_port(port, ECS_UNBOUND)
    channel.remote_domid = caller.domid if remote_dom == DOMID_SELF else remote_dom
    return port


# -- EVTCHNOP_bind_interdomain (§4.2) ---------------------------------------------------
def bind_interdomain(
    caller: Domain, remote_dom: int, remote_port: int, owner: XenEvtchn | None = None
) -> int:
    """``owner``: the ``XenEvtchn`` handle binding the port (libxenevtchn), or None.

    A handle's new port is masked and registered before Xen raises it, as the Linux
    guest has it masked until the evtchn driver unmasks it; the handle's unmask right
    after the bind then takes the pending event (no selector bit, no upcall).
    """
    rd = lookup_domain(caller, remote_dom)
    lport = caller.get_free_port()  # before the remote port is examined
    if not rd.port_is_valid(remote_port):
        raise _fail(errno.EINVAL)
    rchn = rd.channels[remote_port]
    if rchn.state != ECS_UNBOUND or rchn.remote_domid != caller.domid:
        raise _fail(errno.EINVAL)
    lchn = caller.claim_port(lport, ECS_INTERDOMAIN)
    lchn.remote_dom, lchn.remote_port = rd, remote_port
    rchn.state = ECS_INTERDOMAIN
    rchn.remote_dom, rchn.remote_port, rchn.remote_domid = caller, lport, 0
    if owner is not None:
        caller.port_ops.guest_mask(caller, lport)
        caller.handle_ports[lport] = owner
    # The new local port is always left pending (covers events sent while unbound).
    raise_event(caller, lchn.notify_vcpu, lport)
    return lport


# -- EVTCHNOP_bind_virq (§4.3) ----------------------------------------------------------
def bind_virq(caller: Domain, virq: int, vcpu: int) -> int:
    if virq >= NR_VIRQS:  # also covers negative values of the signed int
        raise _fail(errno.EINVAL)
    kind = virq_class(virq)
    if kind != VirqClass.VCPU and vcpu != 0:
        raise _fail(errno.EINVAL)
    v = caller.get_vcpu(vcpu)
    if kind == VirqClass.GLOBAL and caller.hypervisor.global_virq_handler(virq) is not caller:
        raise _fail(errno.EBUSY)
    if v.virq_to_evtchn[virq]:
        raise _fail(errno.EEXIST)
    port = caller.get_free_port()
    channel = caller.claim_port(port, ECS_VIRQ, notify_vcpu=vcpu)
    channel.virq = virq
    v.virq_to_evtchn[virq] = port
    return port


# -- EVTCHNOP_bind_pirq (§4.4) ----------------------------------------------------------
def bind_pirq(caller: Domain, pirq: int, flags: int) -> int:
    if pirq >= caller.nr_pirqs:  # first, even for the privileged domain
        raise _fail(errno.EINVAL)
    if pirq == 0:  # pirq_access_permitted: IRQ 0 is never a guest's
        raise _fail(errno.EPERM)
    hvm = caller.type != "pv"  # HVM/PVH: no grant check, no host IRQ (xen-hvm-and-beyond §2.8)
    if not hvm and not caller.privileged and pirq not in caller.permitted_pirqs:
        raise _fail(errno.EPERM)
    if pirq in caller.pirq_to_port:
        raise _fail(errno.EEXIST)
    port = caller.get_free_port()
    # PIRQ p is host IRQ p; sharing rules may refuse with EBUSY (the port stays FREE).
    if not hvm:
        caller.hypervisor.bind_host_irq(caller, pirq, bool(flags & BIND_PIRQ__WILL_SHARE))
    channel = caller.claim_port(port, ECS_PIRQ)
    channel.pirq = pirq
    caller.pirq_to_port[pirq] = port
    return port


# -- EVTCHNOP_close (§4.5) --------------------------------------------------------------
def close(caller: Domain, port: int) -> None:
    close_port(caller, port)


def close_port(d: Domain, port: int, by_xen: bool = False) -> None:
    """``evtchn_close`` of ``d``'s ``port`` (also used by reset and destruction).

    ``by_xen``: Xen's own close (destruction, ``free_xen_event_channel``), which may close
    Xen-attached channels; the guest's close of one is ``EINVAL``.
    """
    if not d.port_is_valid(port):
        raise _fail(errno.EINVAL)
    channel = d.channels[port]
    if channel.xen_consumer and not by_xen:
        raise _fail(errno.EINVAL)
    state = channel.state
    if state in (ECS_FREE, ECS_RESERVED):
        raise _fail(errno.EINVAL)
    if state == ECS_PIRQ:
        if d.type == "pv":
            d.hypervisor.unbind_host_irq(d, channel.pirq)
        del d.pirq_to_port[channel.pirq]
    elif state == ECS_VIRQ:
        for v in d.vcpus:
            if v.virq_to_evtchn[channel.virq] == port:
                v.virq_to_evtchn[channel.virq] = 0
    elif state == ECS_INTERDOMAIN:
        # The peer (maybe in d itself) silently becomes UNBOUND naming the closer.
        rd, rport = channel.remote_dom, channel.remote_port
        assert rd is not None
        peer = rd.channels[rport]
        peer.state = ECS_UNBOUND
        peer.remote_domid, peer.remote_dom, peer.remote_port = d.domid, None, 0
    # UNBOUND and IPI need nothing beyond the free.
    if channel.xen_consumer:
        d.xen_evtchns -= 1
    d.free_port(port)


# -- EVTCHNOP_send (§4.6) ---------------------------------------------------------------
def send(caller: Domain, port: int) -> None:
    if not caller.port_is_valid(port):
        raise _fail(errno.EINVAL)
    channel = caller.channels[port]
    if channel.xen_consumer:  # the owner may not send on a Xen-attached channel
        raise _fail(errno.EINVAL)
    state = channel.state
    if state == ECS_INTERDOMAIN:
        rd, rport = channel.remote_dom, channel.remote_port
        assert rd is not None
        peer = rd.channels[rport]
        if peer.xen_consumer:  # Xen's consumer is called instead of raising anything
            rd.hypervisor.queue_xen_notify(peer.xen_notify, peer.notify_vcpu, rport)
        else:
            raise_event(rd, peer.notify_vcpu, rport)
    elif state == ECS_IPI:
        raise_event(caller, channel.notify_vcpu, port)
    elif state != ECS_UNBOUND:  # UNBOUND: silently dropped
        raise _fail(errno.EINVAL)


def send_many(caller: Domain, ports: list[int]) -> None:
    """EVTCHNOP_send on each port in order, stopping at the first failure."""
    for port in ports:
        send(caller, port)


# -- EVTCHNOP_status (§4.7) -------------------------------------------------------------
def status(caller: Domain, dom: int, port: int) -> EvtchnStatus:
    d = lookup_domain(caller, dom)
    if not d.port_is_valid(port):  # before the privilege check
        raise _fail(errno.EINVAL)
    if not target_allowed(caller, d):
        raise _fail(errno.EPERM)
    channel = d.channels[port]
    state, vcpu = channel.state, channel.notify_vcpu
    if state == ECS_UNBOUND:
        return EvtchnStatus(EvtchnStat.unbound, vcpu, dom=channel.remote_domid)
    if state == ECS_INTERDOMAIN:
        assert channel.remote_dom is not None
        return EvtchnStatus(
            EvtchnStat.interdomain, vcpu, dom=channel.remote_dom.domid, port=channel.remote_port
        )
    if state == ECS_PIRQ:
        return EvtchnStatus(EvtchnStat.pirq, vcpu, pirq=channel.pirq)
    if state == ECS_VIRQ:
        return EvtchnStatus(EvtchnStat.virq, vcpu, virq=channel.virq)
    if state == ECS_IPI:
        return EvtchnStatus(EvtchnStat.ipi, vcpu)
    return EvtchnStatus(EvtchnStat.closed, vcpu)  # FREE or RESERVED


# -- EVTCHNOP_bind_vcpu (§4.8) ----------------------------------------------------------
def bind_vcpu(caller: Domain, port: int, vcpu: int) -> None:
    caller.get_vcpu(vcpu)  # before the port
    if not caller.port_is_valid(port):
        raise _fail(errno.EINVAL)
    channel = caller.channels[port]
    if channel.xen_consumer:
        raise _fail(errno.EINVAL)
    state = channel.state
    if state == ECS_VIRQ:
        if virq_class(channel.virq) == VirqClass.VCPU:
            raise _fail(errno.EINVAL)
    elif state not in (ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ):  # IPI, FREE, RESERVED
        raise _fail(errno.EINVAL)
    # Only future notifications move; nothing already pending is touched.
    channel.notify_vcpu = vcpu


# -- EVTCHNOP_unmask (§4.9) -------------------------------------------------------------
def unmask(caller: Domain, port: int) -> None:
    if not caller.port_is_valid(port):
        raise _fail(errno.EINVAL)
    if caller.channels[port].usable:
        caller.port_ops.unmask(caller, port)


# -- EVTCHNOP_bind_ipi (§4.10) ----------------------------------------------------------
def bind_ipi(caller: Domain, vcpu: int) -> int:
    caller.get_vcpu(vcpu)
    port = caller.get_free_port()
    caller.claim_port(port, ECS_IPI, notify_vcpu=vcpu)
    return port


# -- EVTCHNOP_reset / EVTCHNOP_reset_cont (§4.11) ---------------------------------------
def _reset_target(caller: Domain, dom: int) -> Domain:
    d = lookup_domain(caller, dom)
    if not target_allowed(caller, d):
        raise _fail(errno.EPERM)
    if d is not caller and d.pause_count == 0:
        raise _fail(errno.EINVAL)
    return d


def reset(caller: Domain, dom: int) -> None:
    d = _reset_target(caller, dom)
    if d.reset_next:
        raise _fail(errno.EBUSY)
    d.reset_next = 1
    _continue_reset(d)


def reset_cont(caller: Domain, dom: int) -> None:
    d = _reset_target(caller, dom)
    if not d.reset_next:  # no reset in progress: a guest calling cmd 14 gets EBUSY
        raise _fail(errno.EBUSY)
    _continue_reset(d)


def _continue_reset(d: Domain) -> None:
    """Close every port as the guest would, from the recorded cursor (no preemption)."""
    port = d.reset_next
    # Only channels the guest owns count: Xen-attached ones are skipped and survive.
    while d.port_is_valid(port) and d.active_evtchns > d.xen_evtchns:
        try:
            close_port(d, port)
        except EvtchnError:
            pass  # FREE (and Xen-attached) ports cannot be closed
        port += 1
    d.reset_next = 0
    if d.active_evtchns > d.xen_evtchns:
        raise _fail(errno.EAGAIN)
    event_fifo.teardown(d)  # back to the 2-level ABI, whoever asked for the reset


# -- EVTCHNOP_init_control (§4.12) ------------------------------------------------------
def init_control(caller: Domain, control_gfn: int, offset: int, vcpu: int) -> int:
    """Register ``vcpu``'s control block (the first call switches to FIFO): link_bits."""
    caller.get_vcpu(vcpu)
    if offset > event_fifo.CONTROL_BLOCK_MAX_OFFSET:
        raise _fail(errno.EINVAL)
    if offset % 8:
        raise _fail(errno.EINVAL)
    link_bits = event_fifo.init_control(caller, control_gfn, offset, vcpu)
    caller.guest.control_block_registered(vcpu)  # Linux resets its private heads
    return link_bits


# -- EVTCHNOP_expand_array (§4.13) ------------------------------------------------------
def expand_array(caller: Domain, array_gfn: int) -> None:
    event_fifo.expand_array(caller, array_gfn)


# -- EVTCHNOP_set_priority (§4.14) ------------------------------------------------------
def set_priority(caller: Domain, port: int, priority: int) -> None:
    if not caller.port_is_valid(port):
        raise _fail(errno.EINVAL)
    event_fifo.set_priority(caller, port, priority)


# -- Xen-attached channels (xen-hvm-and-beyond §4) ----------------------------------------
def alloc_xen_channel(
    d: Domain, vcpu: int, remote_domid: int, notify: Callable[[int, int], object] | None
) -> int:
    """``alloc_unbound_xen_event_channel``: an UNBOUND channel Xen holds."""
    d.get_vcpu(vcpu)  # [sim] ENOENT; nothing allocated yet
    port = d.get_free_port()
    channel = d.channels[port]
    priority = channel.priority  # not reset for Xen's channels
    d.claim_port(port, ECS_UNBOUND, notify_vcpu=vcpu)
    channel.priority = priority
    channel.remote_domid = remote_domid  # as given: no DOMID_SELF translation
    channel.xen_consumer, channel.xen_notify = True, notify
    d.xen_evtchns += 1
    return port


def _xen_channel(d: Domain, port: int) -> Channel:
    if not d.port_is_valid(port) or not d.channels[port].xen_consumer:
        raise _fail(errno.EINVAL)
    return d.channels[port]


def notify_xen_channel(d: Domain, port: int) -> None:
    """``notify_via_xen_event_channel``: raise the bound peer; nothing while unbound."""
    channel = _xen_channel(d, port)
    if channel.state == ECS_INTERDOMAIN:
        rd, rport = channel.remote_dom, channel.remote_port
        assert rd is not None
        raise_event(rd, rd.channels[rport].notify_vcpu, rport)


def free_xen_channel(d: Domain, port: int) -> None:
    """``free_xen_event_channel``: Xen closes it (the peer goes back to UNBOUND)."""
    _xen_channel(d, port)
    close_port(d, port, by_xen=True)
