"""The ``EVTCHNOP_*`` commands: every check in Xen's order, with Xen's error codes.

Each function runs with the hypervisor's lock held, takes the calling domain and the
command's input fields as ints, and either returns the command's output or raises
``EvtchnError``. Nothing here touches hypercall buffers (see ``hypercalls.py``) or
checks Python argument types (see ``domain.py``).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable, Iterable

from . import fifo
from ._native import lib
from .constants import (
    BIND_PIRQ__WILL_SHARE,
    DOMID_SELF,
    NR_VIRQS,
    VIRQ_TIMER,
    ChannelState as S,
    EvtchnStat,
    VirqClass,
    virq_class,
)
from .errors import EvtchnError
from .status import EvtchnStatus

if TYPE_CHECKING:
    from .domain import Domain
    from .hypervisor import Hypervisor


def _fail(err: int) -> EvtchnError:
    return EvtchnError(err)


def lookup(caller: Domain, domid: int) -> Domain:
    """Xen's "by any id" lookup: DOMID_SELF is the caller; unknown ids give -ESRCH."""
    if domid == DOMID_SELF:
        return caller
    d = caller.hv._domains.get(domid)
    if d is None:
        raise _fail(errno.ESRCH)
    return d


def _may_target(caller: Domain, d: Domain) -> bool:
    """XSM dummy policy TARGET: the domain itself, or a privileged (control) domain."""
    return caller is d or caller.privileged


def _free_port(d: Domain) -> int:
    """get_free_port(): the lowest free port of ``d`` (-EINVAL dying, -ENOSPC full)."""
    if d.dying:
        raise _fail(errno.EINVAL)
    port = d.ports.alloc()
    if port is None:
        raise _fail(errno.ENOSPC)
    return port


# ---- binding commands ------------------------------------------------------------

def alloc_unbound(caller: Domain, dom: int, remote_dom: int) -> int:
    d = lookup(caller, dom)
    port = _free_port(d)                    # allocation comes before the privilege check
    if not _may_target(caller, d):
        raise _fail(errno.EPERM)
    remote = caller.domid if remote_dom == DOMID_SELF else remote_dom
    d.ports.bind(port, S.UNBOUND, notify=0, remote_dom=remote)
    return port


def bind_interdomain(caller: Domain, remote_dom: int, remote_port: int,
                     owner: Callable[[int], None] | None = None) -> int:
    """``owner(port)``, if given, runs before Xen raises the new port (libxenevtchn's
    driver has the port masked and registered by then)."""
    rd = lookup(caller, remote_dom)
    lport = _free_port(caller)              # before the remote port is examined
    rports = rd.ports
    if not rports.is_valid(remote_port):
        raise _fail(errno.EINVAL)
    if rports.state[remote_port] != S.UNBOUND or rports.remote(remote_port)[0] != caller.domid:
        raise _fail(errno.EINVAL)
    caller.ports.bind(lport, S.INTERDOMAIN, notify=0, remote_dom=rd.domid, remote_port=remote_port)
    rports.rebind(remote_port, S.INTERDOMAIN, remote_dom=caller.domid, remote_port=lport)
    if owner is not None:
        owner(lport)
    # The new port is always left pending: it covers events the peer sent while unbound.
    caller.hv._after(lib.xe_evtchn_set_pending(caller._c, 0, lport))
    return lport


def bind_virq(caller: Domain, virq: int, vcpu: int) -> int:
    if virq >= 1 << 31:
        virq -= 1 << 32                     # Xen reads the field as a signed int
    if not 0 <= virq < NR_VIRQS:
        raise _fail(errno.EINVAL)
    cls = virq_class(virq)
    if cls != VirqClass.VCPU and vcpu != 0:
        raise _fail(errno.EINVAL)
    if vcpu >= len(caller.vcpus):
        raise _fail(errno.ENOENT)
    if cls == VirqClass.GLOBAL and caller.hv._virq_handler(virq) is not caller:
        raise _fail(errno.EBUSY)
    table = caller._virq_to_evtchn[vcpu if cls == VirqClass.VCPU else 0]
    if table[virq]:
        raise _fail(errno.EEXIST)
    port = _free_port(caller)
    caller.ports.bind(port, S.VIRQ, notify=vcpu, info=virq)
    table[virq] = port
    if virq == VIRQ_TIMER:
        caller.guest._sync_timer(vcpu)
    return port


def bind_pirq(caller: Domain, pirq: int, flags: int) -> int:
    hv = caller.hv
    if pirq >= caller.nr_pirqs:
        raise _fail(errno.EINVAL)
    # Xen's pirq_access_permitted wants a host IRQ above 0: PIRQ 0 is nobody's. HVM/PVH
    # skip the grant check and the host IRQ (spec xen-hvm-and-beyond 2.8): no sharing.
    hvm = caller._hvm is not None
    if pirq == 0 or (not hvm and not caller.privileged and pirq not in caller._permitted_pirqs):
        raise _fail(errno.EPERM)
    if pirq in caller._pirq_to_port:
        raise _fail(errno.EEXIST)
    port = _free_port(caller)
    if hvm:
        caller.ports.bind(port, S.PIRQ, notify=0, info=pirq)
        caller._pirq_to_port[pirq] = port
        return port
    guests = hv._irq_guests.setdefault(pirq, [])
    share = bool(flags & BIND_PIRQ__WILL_SHARE)
    if guests:
        if not (hv._irq_shareable[pirq] and share) or len(guests) >= hv.irq_max_guests:
            raise _fail(errno.EBUSY)
    else:
        hv._irq_shareable[pirq] = share
    guests.append(caller)
    caller.ports.bind(port, S.PIRQ, notify=0, info=pirq)
    caller._pirq_to_port[pirq] = port
    return port


def bind_ipi(caller: Domain, vcpu: int) -> int:
    if vcpu >= len(caller.vcpus):
        raise _fail(errno.ENOENT)
    port = _free_port(caller)
    caller.ports.bind(port, S.IPI, notify=vcpu)
    return port


# ---- close / status / bind_vcpu / unmask ---------------------------------------

def close_port(d: Domain, port: int, *, by_xen: bool = False) -> None:
    """EVTCHNOP_close (``by_xen``: as Xen closes ports of a dying domain)."""
    pt = d.ports
    if not pt.is_valid(port):
        raise _fail(errno.EINVAL)
    if pt.chans[port].xen_consumer and not by_xen:
        raise _fail(errno.EINVAL)
    state = pt.state[port]
    if state in (S.FREE, S.RESERVED):
        raise _fail(errno.EINVAL)
    if state == S.PIRQ:
        pirq = pt.info(port)
        if d._hvm is None:   # HVM/PVH bound no host IRQ (spec xen-hvm-and-beyond 2.8)
            guests = d.hv._irq_guests.get(pirq, [])
            if d in guests:
                guests.remove(d)
            if not guests:
                d.hv._irq_guests.pop(pirq, None)
                d.hv._irq_shareable.pop(pirq, None)
        d._pirq_to_port.pop(pirq, None)
    elif state == S.VIRQ:
        virq = pt.info(port)
        v = pt.notify(port) if virq_class(virq) == VirqClass.VCPU else 0
        if d._virq_to_evtchn[v][virq] == port:
            d._virq_to_evtchn[v][virq] = 0
            if virq == VIRQ_TIMER:
                d.guest._sync_timer(v)
    elif state == S.INTERDOMAIN:
        rdom, rport = pt.remote(port)
        rd = d.hv._domains.get(rdom)
        if rd is not None and rd.ports.state[rport] == S.INTERDOMAIN:
            # The peer silently falls back to unbound, waiting for the closer.
            rd.ports.rebind(rport, S.UNBOUND, remote_dom=d.domid)
    lib.xe_evtchn_clear_pending(d._c, port)   # the mask bit is left as it is
    d._xen_channels.pop(port, None)
    pt.free(port)


def status(caller: Domain, dom: int, port: int) -> EvtchnStatus:
    d = lookup(caller, dom)
    pt = d.ports
    if not pt.is_valid(port):
        raise _fail(errno.EINVAL)           # checked before privilege
    if not _may_target(caller, d):
        raise _fail(errno.EPERM)
    state = pt.state[port]
    vcpu = pt.notify(port)
    if state in (S.FREE, S.RESERVED):
        return EvtchnStatus(EvtchnStat.closed, vcpu)
    if state == S.UNBOUND:
        return EvtchnStatus(EvtchnStat.unbound, vcpu, dom=pt.remote(port)[0])
    if state == S.INTERDOMAIN:
        rdom, rport = pt.remote(port)
        return EvtchnStatus(EvtchnStat.interdomain, vcpu, dom=rdom, port=rport)
    if state == S.PIRQ:
        return EvtchnStatus(EvtchnStat.pirq, vcpu, pirq=pt.info(port))
    if state == S.VIRQ:
        return EvtchnStatus(EvtchnStat.virq, vcpu, virq=pt.info(port))
    return EvtchnStatus(EvtchnStat.ipi, vcpu)


def bind_vcpu(caller: Domain, port: int, vcpu: int) -> None:
    if vcpu >= len(caller.vcpus):
        raise _fail(errno.ENOENT)           # the vCPU is checked before the port
    pt = caller.ports
    if not pt.is_valid(port):
        raise _fail(errno.EINVAL)
    if pt.chans[port].xen_consumer:
        raise _fail(errno.EINVAL)
    state = pt.state[port]
    if state == S.VIRQ and virq_class(pt.info(port)) == VirqClass.VCPU:
        raise _fail(errno.EINVAL)
    if state not in (S.VIRQ, S.UNBOUND, S.INTERDOMAIN, S.PIRQ):
        raise _fail(errno.EINVAL)
    pt.set_notify(port, vcpu)               # only future events go to the new vCPU


def unmask(caller: Domain, port: int) -> None:
    rc = lib.xe_evtchn_unmask(caller._c, port)
    if rc < 0:
        raise _fail(-rc)
    caller.hv._after(rc)


def send(caller: Domain, port: int) -> None:
    rc = lib.xe_evtchn_send(caller._c, port)
    if rc < 0:
        raise _fail(-rc)
    if rc & XEN_SENT:
        xen_sent(caller, (port,), rc)
    else:
        caller.hv._after(rc)


XEN_SENT: int = lib.XE_EV_XEN


def xen_sent(d: Domain, ports: Iterable[int], flags: int) -> None:
    """Sends by ``d`` reached Xen-attached peers (``XE_EV_XEN``): call each consumer's
    ``notify(vcpu, port)`` in send order (ports whose peer is not Xen's are skipped), then
    the owed hooks; a raising callback stops none of them, the first error comes last."""
    first: BaseException | None = None
    hv = d.hv
    for port in ports:
        try:
            xen_peer_notify(hv, d, port)
        except Exception as exc:  # noqa: BLE001 - raised once every owed call ran
            if first is None:
                first = exc
    try:
        hv._after(flags & ~XEN_SENT)
    except Exception as exc:
        if first is None:
            first = exc
    if first is not None:
        raise first


def xen_peer_notify(hv: Hypervisor, d: Domain, port: int) -> None:
    """``d`` sent on ``port``: if its peer is a Xen-attached channel, run its consumer."""
    pt = d.ports
    if not pt.is_valid(port) or pt.state[port] != S.INTERDOMAIN:
        return
    rdom, rport = pt.remote(port)
    rd = hv._domains.get(rdom)
    if rd is None or rport not in rd._xen_channels:
        return
    fn = rd._xen_channels[rport]
    if fn is not None:  # None: Xen's default consumer, which the simulator does not model
        fn(rd.ports.notify(rport), rport)


# ---- Xen-attached channels (spec xen-hvm-and-beyond §4) -----------------------------------

def alloc_xen_channel(d: Domain, vcpu: int, remote_domid: int,
                      notify: Callable[[int, int], object] | None) -> int:
    """alloc_unbound_xen_event_channel: UNBOUND, remote domid as given, Xen-attached."""
    if vcpu >= len(d.vcpus):
        raise _fail(errno.ENOENT)           # [sim]: Xen's callers never name a missing vCPU
    port = _free_port(d)
    d.ports.bind(port, S.UNBOUND, notify=vcpu, remote_dom=remote_domid, xen=True)
    d._xen_channels[port] = notify
    return port


def _xen_port(d: Domain, port: int) -> None:
    if not d.ports.is_valid(port) or port not in d._xen_channels:
        raise EvtchnError(errno.EINVAL, f"port {port} of domain {d.domid} is not Xen-attached")


def notify_xen_channel(d: Domain, port: int) -> None:
    """notify_via_xen_event_channel: raise the bound peer's port; nothing while unbound."""
    _xen_port(d, port)
    pt = d.ports
    if pt.state[port] != S.INTERDOMAIN:
        return
    rdom, rport = pt.remote(port)
    rd = d.hv._domains.get(rdom)
    if rd is not None:
        d.hv._after(lib.xe_evtchn_raise(rd._c, rport))


def free_xen_channel(d: Domain, port: int) -> None:
    """free_xen_event_channel: closed with Xen's rights (the peer falls back to unbound)."""
    _xen_port(d, port)
    close_port(d, port, by_xen=True)


# ---- reset ------------------------------------------------------------------------

def reset(caller: Domain, dom: int, cont: bool = False) -> None:
    d = lookup(caller, dom)
    if not _may_target(caller, d):
        raise _fail(errno.EPERM)
    if d is not caller and d._pause_count == 0:
        raise _fail(errno.EINVAL)
    if cont:
        if d._reset_next == 0:
            raise _fail(errno.EBUSY)
    else:
        if d._reset_next != 0:
            raise _fail(errno.EBUSY)
        d._reset_next = 1
    # Runs to completion here: the continuation Xen uses every 64 ports is invisible.
    # Xen-attached channels cannot be closed by the guest: they survive, and only the
    # other channels count (active_evtchns > xen_evtchns).
    pt = d.ports
    port = d._reset_next
    while pt.is_valid(port) and pt.active > len(d._xen_channels):
        try:
            close_port(d, port)
        except EvtchnError:
            pass
        port += 1
    d._reset_next = 0
    if pt.active > len(d._xen_channels):
        raise _fail(errno.EAGAIN)
    fifo.teardown(d)  # back to the 2-level ABI, whoever asked for the reset


def destroy_ports(d: Domain) -> None:
    """Close every port of a dying domain, highest first, with Xen's privileges."""
    for port in range(d.ports.valid - 1, 0, -1):
        if d.ports.state[port] not in (S.FREE, S.RESERVED):
            close_port(d, port, by_xen=True)


def deliver_virq(hv: Hypervisor, d: Domain, virq: int, vcpu: int) -> None:
    """send_guest_vcpu_virq / send_guest_domain_virq: unbound VIRQs are dropped."""
    if virq_class(virq) == VirqClass.VCPU:
        port = d._virq_to_evtchn[vcpu][virq]
        if port:
            hv._after(lib.xe_evtchn_set_pending(d._c, vcpu, port))
    else:
        port = d._virq_to_evtchn[0][virq]
        if port:
            hv._after(lib.xe_evtchn_raise(d._c, port))
