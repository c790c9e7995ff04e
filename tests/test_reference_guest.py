"""Headline behaviours of the reference model's guest side (``d.guest``, ``XenEvtchn``).

Not exhaustive (the guest test-suite runs against both implementations); these pin the
spec's scan order (guest-side §1.4), Mini-OS's order (§2), the unmask re-fire (§1.7)
and libxenevtchn's take / pending / unmask cycle (§3), as docs/semantics.md decides.
"""

from __future__ import annotations

import errno
import os
import select

import pytest

from xenevtchn import reference as ref


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def ipis(d: ref.Domain, count: int, vcpu: int = 0) -> list[int]:
    """Bind ``count`` IPI ports on ``vcpu`` (ports come out ascending)."""
    return [d.bind_ipi(vcpu) for _ in range(count)]


@pytest.fixture
def hv() -> ref.Hypervisor:
    return ref.Hypervisor()


@pytest.fixture
def kicks(hv: ref.Hypervisor) -> list[tuple[int, int]]:
    log: list[tuple[int, int]] = []
    hv.on_kick = lambda v: log.append((v.domain.domid, v.id))
    return log


# -- d.guest ----------------------------------------------------------------------------
def test_guest_modes(hv: ref.Hypervisor) -> None:
    assert hv.create_domain().guest.mode == "linux"
    assert hv.create_domain(guest="minios").guest.mode == "minios"
    with pytest.raises(ValueError):
        hv.create_domain(guest="windows")


def test_worked_example_a2(hv: ref.Hypervisor) -> None:
    """Guest-side §1.4: "A2 gives 1, 5, 65, 129, 131" (fresh cursor, one vCPU)."""
    d = hv.create_domain()
    ipis(d, 131)
    d.send_many([131, 65, 5, 129, 1])  # raised out of order
    assert d.vcpus[0].pending_sel == 0b111 and d.vcpus[0].upcall_pending == 1
    seen: list[int] = []
    assert d.guest.do_upcall(0, seen.append) == [1, 5, 65, 129, 131]
    assert seen == [1, 5, 65, 129, 131]
    assert not any(d.shared_info.is_pending(p) for p in (1, 5, 65, 129, 131))
    assert d.vcpus[0].pending_sel == 0 and d.vcpus[0].upcall_pending == 0


def test_fairness_cursor_round_robin(hv: ref.Hypervisor) -> None:
    """Start word from the cursor up, later words (wrapping), then the start word in full."""
    d = hv.create_domain()
    ipis(d, 200)
    d.send_many([3, 10, 70])
    assert d.guest.do_upcall() == [3, 10, 70]  # cursor is now (1, 7)
    d.send_many([3, 70, 80, 200])
    assert d.guest.do_upcall() == [80, 200, 3, 70]


def test_timer_first_and_no_cursor_move(hv: ref.Hypervisor) -> None:
    d = hv.create_domain()
    ipis(d, 100)
    timer = d.bind_virq(ref.VIRQ_TIMER, 0)
    assert timer == 101
    d.send_many([2, 100])
    hv.send_virq(d.domid, ref.VIRQ_TIMER, 0)
    assert d.guest.do_upcall() == [timer, 2, 100]


def test_snapshot_per_word_visit_and_clear_before_handle(hv: ref.Hypervisor) -> None:
    """A port raised in a word during its visit waits for the start word's second visit;
    a port re-raised by its own handler is delivered again."""
    d = hv.create_domain()
    ipis(d, 80)
    d.send_many([5, 70])
    raised = set()

    def handler(port: int) -> None:
        if port == 5 and 6 not in raised:  # same word, above the current bit
            raised.add(6)
            d.send(6)
        if port == 70 and 70 not in raised:  # itself, after its pending bit was cleared
            raised.add(70)
            d.send(70)

    # Word 0 visit 1 (snapshot {5}), word 1 ({70}), word 0 visit 2 ({6}), then the
    # do/while pass picks up 70 raised again.
    assert d.guest.do_upcall(0, handler) == [5, 70, 6, 70]


def test_skips_masked_other_vcpu_and_free_ports(hv: ref.Hypervisor) -> None:
    d = hv.create_domain(vcpus=2)
    a, b, c = d.bind_ipi(0), d.bind_ipi(1), d.bind_ipi(0)
    d.guest.mask(c)
    d.send_many([a, b, c])
    d.shared_info.buffer[2048 + 7] |= 0x80  # port 63: FREE, pending, selector set below
    d.shared_info.buffer[8] |= 1
    assert d.guest.do_upcall(0) == [a]
    assert all(d.shared_info.is_pending(p) for p in (b, c, 63))  # left pending
    assert d.guest.do_upcall(1) == [b]


def test_minios_order_no_cursor_no_vcpu_binding(hv: ref.Hypervisor) -> None:
    linux, minios = hv.create_domain(vcpus=2), hv.create_domain(vcpus=2, guest="minios")
    for d in (linux, minios):
        ipis(d, 20)
        other = d.bind_ipi(1)  # port 21, notified on vCPU 1
        d.send(10)
        assert d.guest.do_upcall() == [10]
        d.send_many([other, 20, 3])
    assert linux.guest.do_upcall(0) == [20, 3]  # from the cursor (0, 11); not port 21
    assert minios.guest.do_upcall(0) == [3, 20, 21]  # ascending; any vCPU's port

    # Mini-OS re-reads the word: a lower port re-raised by a handler comes back at once.
    def handler(port: int) -> None:
        if port == 20:
            minios.send(3)

    minios.send_many([3, 20])
    assert minios.guest.do_upcall(0, handler) == [3, 20, 3]


def test_unmask_refires_once_locally_without_kick(hv: ref.Hypervisor, kicks: list) -> None:
    d = hv.create_domain()
    (port,) = ipis(d, 1)
    d.guest.mask(port)
    d.send(port)
    d.send(port)  # coalesces in the pending bit
    v = d.vcpus[0]
    assert (v.pending_sel, v.upcall_pending, kicks) == (0, 0, [])
    d.guest.unmask(port)  # own vCPU: the local fast path, a guest write
    assert (v.pending_sel, v.upcall_pending, kicks) == (1, 1, [])
    assert d.guest.do_upcall() == [port]
    assert d.guest.do_upcall() == []


def test_unmask_from_another_vcpu_is_the_hypercall(hv: ref.Hypervisor, kicks: list) -> None:
    d = hv.create_domain(vcpus=2)
    port = d.bind_ipi(1)
    d.guest.mask(port)
    d.send(port)
    d.guest.unmask(port, vcpu=0)  # not the port's vCPU: EVTCHNOP_unmask, Xen kicks vCPU 1
    assert kicks == [(d.domid, 1)]
    assert d.vcpus[1].pending_sel == 1 and d.vcpus[0].pending_sel == 0
    assert d.guest.do_upcall(1) == [port]


def test_guest_argument_checks(hv: ref.Hypervisor) -> None:
    d = hv.create_domain()
    with pytest.raises(ValueError):
        d.guest.mask(4096)
    with pytest.raises(TypeError):
        d.guest.unmask("1")
    with pytest.raises(ValueError):
        d.guest.do_upcall(1)


# -- XenEvtchn -------------------------------------------------------------------------------
@pytest.fixture
def pair(hv: ref.Hypervisor) -> tuple[ref.Domain, ref.Domain]:
    return hv.create_domain(privileged=True), hv.create_domain()


def test_handle_pending_unmask_cycle(hv: ref.Hypervisor, pair, kicks: list) -> None:
    dom0, domu = pair
    with ref.XenEvtchn(dom0) as h:
        port = h.bind_unbound_port(domu.domid)
        assert h.pending() is None and not readable(h.fileno())
        remote = domu.bind_interdomain(dom0.domid, port)
        kicks.clear()
        domu.send(remote)
        si = dom0.shared_info
        # Taken: masked, pending cleared, queued; no selector, no upcall, no kick.
        assert si.is_masked(port) and not si.is_pending(port)
        assert dom0.vcpus[0].pending_sel == 0 and dom0.vcpus[0].upcall_pending == 0
        assert kicks == [] and readable(h.fileno())
        domu.send(remote)  # while masked: stays pending, not queued twice
        assert si.is_pending(port)
        assert h.pending() == port and h.pending() is None and not readable(h.fileno())
        h.unmask(port)  # raised meanwhile: taken again at once
        assert h.pending() == port and si.is_masked(port) and not si.is_pending(port)
        h.unmask(port)  # nothing pending: just unmasked
        assert not si.is_masked(port) and h.pending() is None
        assert dom0.guest.do_upcall() == []


def test_handle_bind_interdomain_first_event_is_queued(hv: ref.Hypervisor, pair, kicks) -> None:
    dom0, domu = pair
    unbound = domu.alloc_unbound(dom0.domid)
    with ref.XenEvtchn(dom0) as h:
        port = h.bind_interdomain(domu.domid, unbound)
        assert h.pending() == port and kicks == []
        assert dom0.vcpus[0].upcall_pending == 0 and dom0.guest.do_upcall() == []
        h.notify(port)
        assert domu.shared_info.is_pending(unbound)
        virq = h.bind_virq(ref.VIRQ_DEBUG)
        hv.send_virq(dom0.domid, ref.VIRQ_DEBUG)
        assert h.pending() == virq


def test_select_on_fileno(hv: ref.Hypervisor, pair) -> None:
    dom0, domu = pair
    h = ref.XenEvtchn(dom0)
    a, b = h.bind_unbound_port(domu.domid), h.bind_unbound_port(domu.domid)
    ra, rb = domu.bind_interdomain(dom0.domid, a), domu.bind_interdomain(dom0.domid, b)
    fd = h.fileno()
    assert not readable(fd)
    domu.send(rb)
    domu.send(ra)
    assert readable(fd)
    assert h.pending() == b and readable(fd)  # delivery order; one port still queued
    assert h.pending() == a and not readable(fd)
    h.close()


def test_handle_errors_and_close(hv: ref.Hypervisor, pair) -> None:
    dom0, domu = pair
    h = ref.XenEvtchn(dom0)
    mine = h.bind_virq(ref.VIRQ_DEBUG)
    other = dom0.bind_ipi(0)
    for call in (h.notify, h.unbind):
        with pytest.raises(ref.EvtchnError) as info:
            call(other)
        assert info.value.errno == errno.ENOTCONN
    h.unmask(other)  # ignored
    fd = h.fileno()
    h.close()
    assert dom0.status(mine).status == ref.EVTCHNSTAT_closed
    assert dom0.status(other).status == ref.EVTCHNSTAT_ipi
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        h.pending()
    h.close()  # idempotent
