"""The 2-level ABI data path, in Xen's exact order (spec §7.1, §8, §10.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .domain import Domain, Vcpu


def raise_event(d: Domain, vcpu_id: int, port: int) -> None:
    """Xen's ``evtchn_port_set_pending``: skipped for non-usable channels."""
    if d.channels[port].usable:
        set_pending(d, vcpu_id, port)


def set_pending(d: Domain, vcpu_id: int, port: int) -> None:
    """``evtchn_2l_set_pending`` (§8.1) on ``d``'s vCPU ``vcpu_id``."""
    si = d.shared_info
    # 1. Already pending: nothing at all (no selector, no upcall, no poller wake-up).
    if si.test_and_set_pending(port):
        return
    # 2. Unmasked: selector bit for the word, and an upcall if that bit was clear.
    if not si.test_mask(port) and not si.test_and_set_sel(vcpu_id, port // si.layout.word_bits):
        mark_events_pending(d.vcpus[vcpu_id])
    # 3. Pollers of the domain, masked or not.
    check_pollers(d, port)


def mark_events_pending(v: Vcpu) -> None:
    """``vcpu_mark_events_pending`` (§7.1): set upcall_pending; on 0->1 kick the vCPU."""
    d = v.domain
    if d.shared_info.test_and_set_upcall_pending(v.id):
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


def unmask(d: Domain, port: int) -> None:
    """``evtchn_2l_unmask`` (§8.3) for a usable channel; only acts if the mask was set."""
    si = d.shared_info
    v = d.vcpus[d.channels[port].notify_vcpu]
    if not si.test_and_clear_mask(port):
        return
    if si.test_pending(port) and not si.test_and_set_sel(v.id, port // si.layout.word_bits):
        mark_events_pending(v)


def clear_pending(d: Domain, port: int) -> None:
    """``evtchn_2l_clear_pending`` (§8.2), for a usable channel being freed."""
    d.shared_info.clear_pending(port)
