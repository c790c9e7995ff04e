"""What both ABIs share: raising an event, marking a vCPU, waking pollers (spec §5, §7.1,
§10.2).

Each ABI is a table of port operations, as in Xen: :mod:`.event_2l` and
:mod:`.event_fifo` define the same functions (``set_pending``, ``clear_pending``,
``unmask``, ``is_pending``, ``is_masked``, ``is_busy``, ``guest_mask``) and a domain's
``port_ops`` names the module in use. Generic code goes through ``d.port_ops`` and never
asks which ABI a domain runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import hvm

if TYPE_CHECKING:
    from .domain import Domain, Vcpu


def raise_event(d: Domain, vcpu_id: int, port: int) -> None:
    """Xen's ``evtchn_port_set_pending``: skipped for non-usable channels."""
    if d.channels[port].usable:
        d.port_ops.set_pending(d, vcpu_id, port)


def mark_events_pending(v: Vcpu) -> None:
    """``vcpu_mark_events_pending`` (§7.1): set upcall_pending; on 0->1 kick the vCPU."""
    d = v.domain
    if d.shared_info.test_and_set_upcall_pending(v.id):
        return
    if d.hvm is not None:  # HVM/PVH: the callback, not a kick (xen-hvm-and-beyond §2.3)
        hvm.assert_evtchn_irq(v)
        return
    hv = d.hypervisor
    hv.queue_hook(hv.on_kick, v)
    v.unblock()  # a kick ends a SCHEDOP_poll


def check_pollers(d: Domain, port: int) -> None:
    """``evtchn_check_pollers`` (§10.2): wake vCPUs polling ``port`` or any port."""
    if not d.poll_mask:
        return
    for v in d.vcpus:
        if v.polling and (v.poll_evtchn <= 0 or v.poll_evtchn == port):
            v.unblock()
