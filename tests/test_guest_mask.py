"""The guest's mask and unmask: ``d.guest.mask`` / ``d.guest.unmask`` (API.md "The guest
side"; semantics.md "Guest side"; spec guest-side §1.7, §2, §5 item 5; Xen's rules §0).

Linux mode, unmask of port p running on vCPU v:
* v is p's notify vCPU -> local fast path (§1.7 step 3, PV): clear the mask bit, then if
  p is pending test-and-set v's selector bit for word p/64 and, only if it was clear, set
  v's evtchn_upcall_pending = 1. A guest write: no on_kick.
* any other v -> EVTCHNOP_unmask (§1.7 step 2): Xen test-and-clears the mask bit and,
  only if it was set and p is pending and the notify vCPU's selector bit was clear, sets
  that bit and marks the notify vCPU upcall-pending (on_kick on a 0 -> 1 change).
Mini-OS mode: always the local path on v (§2).

Everything is observed through raw shared_info bytes (xenabi), the Vcpu properties and
the on_kick / on_wake hook log (``hooks`` fixture).
"""

from __future__ import annotations

import pytest

import xenabi
from xenabi import si


def ipi_domain(hv, n, vcpus=2, on=None, **kw):
    """Ports 1..n are IPIs, port p on vCPU on(p) (default 0)."""
    d = hv.create_domain(vcpus=vcpus, **kw)
    for p in range(1, n + 1):
        assert d.bind_ipi(0 if on is None else on(p)) == p
    return d


def vstate(d, v):
    return (d.vcpus[v].upcall_pending, d.vcpus[v].pending_sel)


def changed_bytes(a: bytes, b: bytes):
    return [i for i in range(len(a)) if a[i] != b[i]]


# --------------------------------------------------------------------------- mask


def test_guest_masks_nothing_at_start(hv):
    for layout in ("x86_64", "x86_32"):
        d = hv.create_domain(vcpus=2, layout=layout)
        assert d.guest.mode == "linux"
        L = xenabi.SHINFO[layout]
        raw = bytes(d.shared_info.buffer)
        assert raw[L["mask"] : L["mask"] + L["nr"] // 8] == bytes(L["nr"] // 8)
        p = d.bind_ipi(0)
        assert not d.shared_info.is_masked(p)


def test_mask_sets_only_the_mask_bit(hv, hooks):
    d = ipi_domain(hv, 70)
    sv = si(d)
    before = sv.snapshot()
    d.guest.mask(65)
    after = sv.snapshot()
    assert changed_bytes(before, after) == [0xA00 + 65 // 8]
    assert sv.masked(65) and d.shared_info.is_masked(65)
    d.guest.mask(65)  # idempotent
    assert sv.snapshot() == after
    assert hooks == []


def test_mask_any_port_of_the_layout(hv):
    # A mask bit is guest memory: any port of the 2-level range may be masked, whether or
    # not a channel exists (Linux masks 0..nr_channels-1 at init, spec §1.8).
    d = hv.create_domain(vcpus=1)
    for p in (0, 5, 4095):
        d.guest.mask(p)
        assert si(d).masked(p)
    d32 = hv.create_domain(vcpus=1, layout="x86_32")
    d32.guest.mask(1023)
    assert si(d32, "x86_32").masked(1023)


def test_masked_port_raised_sets_pending_only(hv, hooks):
    d = ipi_domain(hv, 3)
    d.guest.mask(2)
    d.send(2)
    assert d.shared_info.is_pending(2)
    assert vstate(d, 0) == (0, 0)
    assert hooks == []


# ------------------------------------------------------------------- local fast path


def test_unmask_local_fast_path_refires_without_kick(hv, hooks):
    d = ipi_domain(hv, 70)
    d.guest.mask(65)
    d.send(65)
    d.guest.unmask(65)  # default vCPU: 65's notify vCPU, 0 -> local path
    sv = si(d)
    assert not sv.masked(65) and sv.pending(65)
    assert vstate(d, 0) == (1, 1 << 1)  # selector bit of word 1, upcall_pending set
    assert vstate(d, 1) == (0, 0)
    assert hooks == []  # the guest set its own flag: no on_kick
    assert d.guest.do_upcall(0) == [65]


def test_unmask_local_explicit_own_vcpu_is_the_fast_path(hv, hooks):
    d = ipi_domain(hv, 3)
    d.guest.mask(2)
    d.send(2)
    d.guest.unmask(2, vcpu=0)
    assert vstate(d, 0) == (1, 1) and hooks == []


def test_unmask_local_selector_already_set_leaves_upcall_pending(hv, hooks):
    d = ipi_domain(hv, 3)
    sv = si(d)
    d.guest.mask(2)
    d.send(2)
    d.send(3)  # word 0's selector bit set, upcall_pending 1 (hypervisor: kick)
    assert hooks == [("kick", 0)]
    sv.set_upcall_pending(0, 0)  # the guest has cleared its flag, sel bit still set
    d.guest.unmask(2)
    # test-and-set of sel bit 0 found it set: upcall_pending is not touched.
    assert vstate(d, 0) == (0, 1)
    assert not sv.masked(2)
    assert hooks == [("kick", 0)]


def test_unmask_local_selector_of_other_word_does_not_matter(hv):
    d = ipi_domain(hv, 70)
    sv = si(d)
    d.guest.mask(2)
    d.send(2)
    d.send(65)  # sel bit 1
    sv.set_upcall_pending(0, 0)
    d.guest.unmask(2)  # sel bit 0 was clear: set it and upcall_pending
    assert vstate(d, 0) == (1, 0b11)


def test_unmask_local_refires_a_pending_port_that_was_not_masked(hv, hooks):
    # The local path does not look at the old mask bit (spec §1.7 step 3): a pending
    # port whose selector bit is clear gets its edge back.
    d = ipi_domain(hv, 3)
    sv = si(d)
    d.send(2)
    sv.set_sel(0, 0)
    sv.set_upcall_pending(0, 0)
    hooks.clear()
    d.guest.unmask(2)
    assert vstate(d, 0) == (1, 1) and hooks == []


def test_unmask_local_on_vcpu1_for_a_port_bound_there(hv, hooks):
    d = ipi_domain(hv, 3, on=lambda p: 1 if p == 2 else 0)
    d.guest.mask(2)
    d.send(2)
    d.guest.unmask(2)  # default vCPU = notify vCPU 1: local path there
    assert vstate(d, 1) == (1, 1)
    assert vstate(d, 0) == (0, 0)
    assert hooks == []
    assert d.guest.do_upcall(0) == []
    assert d.guest.do_upcall(1) == [2]


# -------------------------------------------------------------------- the hypercall


def test_unmask_from_other_vcpu_uses_the_hypercall(hv, hooks):
    d = ipi_domain(hv, 70)
    d.guest.mask(65)
    d.send(65)
    d.guest.unmask(65, vcpu=1)
    # Xen found the mask set, the port pending and vCPU 0's sel bit 1 clear:
    # re-raised at the notify vCPU (0), which is kicked (upcall_pending 0 -> 1).
    assert not si(d).masked(65)
    assert vstate(d, 0) == (1, 1 << 1)
    assert vstate(d, 1) == (0, 0)
    assert hooks == [("kick", 0)]
    assert d.guest.do_upcall(0) == [65]


def test_unmask_hypercall_targets_notify_vcpu_1(hv, hooks):
    d = ipi_domain(hv, 3, on=lambda p: 1 if p == 2 else 0)
    d.guest.mask(2)
    d.send(2)
    d.guest.unmask(2, vcpu=0)
    assert vstate(d, 1) == (1, 1) and vstate(d, 0) == (0, 0)
    assert hooks == [("kick", 1)]
    assert d.guest.do_upcall(1) == [2]


def test_unmask_hypercall_no_kick_when_upcall_already_pending(hv, hooks):
    d = ipi_domain(hv, 70)
    d.send(65)  # sel bit 1, upcall_pending 1, kick
    d.guest.mask(2)
    d.send(2)
    hooks.clear()
    d.guest.unmask(2, vcpu=1)
    assert vstate(d, 0) == (1, 0b11)  # sel bit 0 set; upcall_pending was already 1
    assert hooks == []


def test_unmask_hypercall_with_selector_already_set_does_nothing_more(hv, hooks):
    d = ipi_domain(hv, 3)
    sv = si(d)
    d.guest.mask(2)
    d.send(2)
    d.send(3)  # sel bit 0 set
    sv.set_upcall_pending(0, 0)
    hooks.clear()
    d.guest.unmask(2, vcpu=1)
    assert not sv.masked(2)
    assert vstate(d, 0) == (0, 1)  # Xen's test-and-set of the sel bit found it set
    assert hooks == []


def test_unmask_hypercall_needs_the_mask_bit_set(hv, hooks):
    # EVTCHNOP_unmask acts only if the mask bit was set (spec §0): an unmasked pending
    # port whose selector bit is clear gets nothing from the hypercall path ...
    d = ipi_domain(hv, 3)
    sv = si(d)
    d.send(2)
    sv.set_sel(0, 0)
    sv.set_upcall_pending(0, 0)
    hooks.clear()
    before = sv.snapshot()
    d.guest.unmask(2, vcpu=1)
    assert sv.snapshot() == before and hooks == []
    # ... while the local path re-fires it.
    d.guest.unmask(2)
    assert vstate(d, 0) == (1, 1)


# ------------------------------------------------ exactly one delivery after unmask


@pytest.mark.parametrize("from_vcpu", [None, 0, 1], ids=["default", "local", "hypercall"])
def test_event_raised_while_masked_is_delivered_once_after_unmask(hv, from_vcpu):
    d = ipi_domain(hv, 70)
    d.guest.mask(65)
    for _ in range(3):
        d.send(65)
    assert d.guest.do_upcall(0) == []
    assert d.shared_info.is_pending(65)
    if from_vcpu is None:
        d.guest.unmask(65)
    else:
        d.guest.unmask(65, vcpu=from_vcpu)
    assert d.guest.do_upcall(0) == [65]
    assert d.guest.do_upcall(0) == []
    assert not d.shared_info.is_pending(65)
    # A second unmask finds nothing pending: still nothing.
    d.guest.unmask(65)
    d.guest.unmask(65, vcpu=1)
    assert d.guest.do_upcall(0) == []


@pytest.mark.parametrize("from_vcpu", [0, 1], ids=["local", "hypercall"])
def test_masked_port_skipped_by_upcall_then_delivered_once_after_unmask(hv, from_vcpu):
    d = ipi_domain(hv, 3)
    d.guest.mask(2)
    d.send(2)
    d.send(3)  # selects word 0
    assert d.guest.do_upcall(0) == [3]  # 2 skipped, left pending; sel consumed
    assert d.shared_info.is_pending(2) and vstate(d, 0) == (0, 0)
    d.guest.unmask(2, vcpu=from_vcpu)
    assert vstate(d, 0) == (1, 1)
    assert d.guest.do_upcall(0) == [2]
    assert d.guest.do_upcall(0) == []


@pytest.mark.parametrize("from_vcpu", [None, 1], ids=["local", "hypercall"])
def test_unmask_of_non_pending_port_only_clears_the_mask(hv, hooks, from_vcpu):
    d = ipi_domain(hv, 70)
    sv = si(d)
    d.guest.mask(65)
    before = sv.snapshot()
    if from_vcpu is None:
        d.guest.unmask(65)
    else:
        d.guest.unmask(65, vcpu=from_vcpu)
    after = sv.snapshot()
    assert changed_bytes(before, after) == [0xA00 + 65 // 8]
    assert not sv.masked(65)
    assert hooks == []
    # An unmask of a port that is neither masked nor pending changes nothing at all.
    d.guest.unmask(65)
    d.guest.unmask(65, vcpu=1)
    assert sv.snapshot() == after and hooks == []
    assert d.guest.do_upcall(0) == []


def test_mask_unmask_leave_other_ports_alone(hv):
    d = ipi_domain(hv, 70)
    sv = si(d)
    for p in (64, 66):
        d.guest.mask(p)
    d.guest.mask(65)
    d.guest.unmask(65)
    assert sv.masked(64) and sv.masked(66) and not sv.masked(65)


# -------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("op", ["mask", "unmask"])
def test_bad_ports(hv, op):
    d = ipi_domain(hv, 3)
    d32 = hv.create_domain(vcpus=1, layout="x86_32")
    before = bytes(d.shared_info.buffer)
    for bad in (4096, 5000, -1, 2**32, 2**64):
        with pytest.raises(ValueError):
            getattr(d.guest, op)(bad)
    for bad in (1024, 4095):
        with pytest.raises(ValueError):
            getattr(d32.guest, op)(bad)
    for bad in ("1", 1.0, None, b"\x01", [1]):
        with pytest.raises(TypeError):
            getattr(d.guest, op)(bad)
    assert bytes(d.shared_info.buffer) == before


def test_bool_counts_as_int(hv):
    d = ipi_domain(hv, 3)
    d.guest.mask(True)
    assert d.shared_info.is_masked(1)
    d.guest.unmask(True)
    assert not d.shared_info.is_masked(1)


def test_unmask_bad_vcpu(hv):
    d = ipi_domain(hv, 3)
    d.guest.mask(2)
    with pytest.raises(TypeError):
        d.guest.unmask(2, vcpu="0")
    # Out of range for the domain: an int out of range (semantics.md "Everywhere") -- a
    # ValueError, or the hypervisor's ENOENT for a missing vCPU; either way refused.
    for bad in (-1, 2, 32):
        with pytest.raises((ValueError, OSError)):
            d.guest.unmask(2, vcpu=bad)
    assert d.shared_info.is_masked(2)


# --------------------------------------------------------------------------- Mini-OS


def test_minios_unmask_is_always_local(hv, hooks):
    d = ipi_domain(hv, 3, guest="minios")
    assert d.guest.mode == "minios"
    d.guest.mask(2)
    d.send(2)  # notify vCPU 0
    d.guest.unmask(2, vcpu=1)  # local path on vCPU 1, not a hypercall
    assert not si(d).masked(2)
    assert vstate(d, 1) == (1, 1)
    assert vstate(d, 0) == (0, 0)
    assert hooks == []


def test_minios_unmask_default_vcpu_local(hv, hooks):
    d = ipi_domain(hv, 70, guest="minios")
    d.guest.mask(65)
    d.send(65)
    d.guest.unmask(65)
    assert vstate(d, 0) == (1, 2) and hooks == []
    assert d.guest.do_upcall(0) == [65]
    assert d.guest.do_upcall(0) == []


def test_minios_unmask_selector_already_set(hv, hooks):
    d = ipi_domain(hv, 3, guest="minios")
    sv = si(d)
    d.guest.mask(2)
    d.send(2)
    d.send(3)
    sv.set_upcall_pending(0, 0)
    hooks.clear()
    d.guest.unmask(2)
    assert vstate(d, 0) == (0, 1) and hooks == []


def test_minios_unmask_of_non_pending_port_only_clears_the_mask(hv, hooks):
    d = ipi_domain(hv, 3, guest="minios")
    sv = si(d)
    d.guest.mask(2)
    before = sv.snapshot()
    d.guest.unmask(2, vcpu=1)
    assert changed_bytes(before, sv.snapshot()) == [0xA00]
    assert hooks == []
