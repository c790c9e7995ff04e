"""The 2-level ABI port operations, in Xen's exact order (spec §8); see :mod:`.events`.

One guest-side rule is folded in here (docs/semantics.md "Guest side"): a port bound
through a :class:`~.xenevtchn_handle.XenEvtchn` handle (``d.handle_ports``) is *taken*
the moment it becomes deliverable, as the Linux evtchn driver's lateeoi ack would take
it: masked, pending cleared, queued on the handle. No selector bit or upcall is raised
for it, so it never reaches the guest's upcall.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import check_pollers, mark_events_pending

if TYPE_CHECKING:
    from .domain import Domain
    from .xenevtchn_handle import XenEvtchn


def set_pending(d: Domain, vcpu_id: int, port: int) -> None:
    """``evtchn_2l_set_pending`` (§8.1) on ``d``'s vCPU ``vcpu_id``."""
    si = d.shared_info
    # 1. Already pending: nothing at all (no selector, no upcall, no poller wake-up).
    if si.test_and_set_pending(port):
        return
    # 2. Unmasked: selector bit for the word, and an upcall if that bit was clear.
    #    A handle's port is taken instead (no selector, no upcall).
    if not si.test_mask(port):
        owner = d.handle_ports.get(port) if d.handle_ports else None
        if owner is not None:
            take_for_handle(d, port, owner)
        elif not si.test_and_set_sel(vcpu_id, port // si.layout.word_bits):
            mark_events_pending(d.vcpus[vcpu_id])
    # 3. Pollers of the domain, masked or not.
    check_pollers(d, port)


def unmask(d: Domain, port: int) -> None:
    """``evtchn_2l_unmask`` (§8.3) for a usable channel; only acts if the mask was set."""
    si = d.shared_info
    v = d.vcpus[d.channels[port].notify_vcpu]
    if not si.test_and_clear_mask(port):
        return
    if not si.test_pending(port):
        return
    owner = d.handle_ports.get(port) if d.handle_ports else None
    if owner is not None:
        take_for_handle(d, port, owner)  # the re-fired edge goes straight to the handle
    elif not si.test_and_set_sel(v.id, port // si.layout.word_bits):
        mark_events_pending(v)


def clear_pending(d: Domain, port: int) -> None:
    """``evtchn_2l_clear_pending`` (§8.2), for a usable channel being freed."""
    d.shared_info.clear_pending(port)


def is_pending(d: Domain, port: int) -> bool:
    """``evtchn_2l_is_pending`` (§8.4): the pending bit (ports beyond W*W: not pending)."""
    si = d.shared_info
    return port < si.layout.nr_ports and si.test_pending(port)


def is_masked(d: Domain, port: int) -> bool:
    """``evtchn_2l_is_masked`` (§8.4): the mask bit (ports beyond W*W: masked)."""
    si = d.shared_info
    return port >= si.layout.nr_ports or si.test_mask(port)


def is_busy(d: Domain, port: int) -> bool:
    """The 2-level ABI has no busy ports."""
    return False


def guest_mask(d: Domain, port: int) -> None:
    """The guest's ``mask_evtchn``: set the mask bit."""
    d.shared_info.set_mask(port)


def take_for_handle(d: Domain, port: int, owner: XenEvtchn) -> None:
    """The evtchn driver takes ``port``: mask it, clear pending, queue it on ``owner``.

    Called when a handle's port becomes deliverable (pending while unmasked). The mask
    bit stays set until the handle's ``unmask()``, so every port is queued at most once
    per unmask and further raises coalesce in the pending bit.
    """
    si = d.shared_info
    si.set_mask(port)
    si.clear_pending(port)
    owner.deliver(port)
