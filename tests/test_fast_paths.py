"""The per-instance fast paths (issue 8) do exactly what the checked paths do.

``d.send``, ``d.guest.unmask``, ``d.guest.do_upcall`` without a handler and
``d.event_channel_op`` on a ``bytearray`` are closures doing one C call; a domain is found
in C by its slot, carried in the call's one integer argument. Here: every argument the
fast paths leave to the class methods still gets the class methods' answer, a stale
closure of a destroyed domain never reaches another domain, slots come back once nothing
uses them, domains without a slot still work, the whole no-handler upcall in C agrees with
the handler path port for port, and hooks run in domain creation order whichever domains
the C core listed.
"""

from __future__ import annotations

import errno
import gc
import random
import struct
from array import array

import pytest

import xenevtchn as xe
from xenevtchn import domain as domain_mod


def channels(hv, n, dom0=None, guest=None):
    dom0 = dom0 or hv.create_domain(privileged=True)
    guest = guest or hv.create_domain()
    pairs = []
    for _ in range(n):
        r = guest.alloc_unbound(dom0.domid)
        pairs.append((dom0.bind_interdomain(guest.domid, r), r))
    return dom0, guest, pairs


# ---- d.send ------------------------------------------------------------------------------


def test_send_fast_path_refusals_match_the_checked_path():
    hv = xe.Hypervisor()
    dom0, guest, pairs = channels(hv, 3)
    for bad in (-1, 2**32, 2**64):
        with pytest.raises((ValueError, OverflowError)):
            dom0.send(bad)
    for bad in (1.0, "1", None, b"\x01"):
        with pytest.raises(TypeError):
            dom0.send(bad)
    for port in (0, 200, 2**17 - 1, 2**17, 2**32 - 1):   # in the ABI field, not a channel
        with pytest.raises(xe.EvtchnError) as e:
            dom0.send(port)
        assert e.value.errno == errno.EINVAL
    assert not any(guest.shared_info.is_pending(r) for _, r in pairs)
    dom0.send(xe.EvtchnStat.interdomain)   # an int subclass (IntEnum 2) is a port number
    assert guest.shared_info.is_pending(pairs[1][1])


def test_stale_send_of_a_destroyed_domain_never_reaches_another():
    hv = xe.Hypervisor()
    dom0, guest, pairs = channels(hv, 1)
    stale = guest.send
    g_local, = [guest.bind_ipi() for _ in range(1)]
    hv.destroy_domain(guest.domid)
    with pytest.raises(xe.EvtchnError) as e:
        guest.send(g_local)
    assert e.value.errno == errno.ESRCH
    newcomers = [hv.create_domain() for _ in range(3)]
    ipis = [d.bind_ipi() for d in newcomers]
    for d, p in zip(newcomers, ipis):
        d.shared_info.clear_pending(p)
    with pytest.raises(xe.EvtchnError) as e:
        stale(g_local)                      # a send taken before the destruction
    assert e.value.errno == errno.ESRCH
    assert not any(d.shared_info.is_pending(p) for d, p in zip(newcomers, ipis))


def _free_slots():
    gc.collect()
    return len(domain_mod._Slot._free)


def test_slots_come_back_when_nothing_uses_them():
    before = _free_slots()
    hv = xe.Hypervisor()
    doms = [hv.create_domain() for _ in range(5)]
    assert _free_slots() == before - 5
    keep = doms[2].send
    del hv, doms
    assert _free_slots() == before - 5      # a live closure keeps its domain (and its hv)
    del keep
    assert _free_slots() == before


class _AllHeld(list):
    """A free list that never gives a slot out (numbers given back meanwhile are kept)."""

    def pop(self, *_args):
        raise IndexError("every slot is held")


def test_domains_without_a_slot_take_the_two_argument_paths(monkeypatch):
    real, held = domain_mod._Slot._free, _AllHeld()
    monkeypatch.setattr(domain_mod._Slot, "_free", held)
    monkeypatch.setattr(domain_mod._Slot, "take", _take_then_return(real, held))
    hv = xe.Hypervisor()
    with pytest.warns(RuntimeWarning, match="fast-path slots"):
        dom0, guest, pairs = channels(hv, 2)
    assert guest._slot is None and "event_channel_op" not in vars(guest)
    dom0.send(pairs[0][0])
    assert guest.shared_info.is_pending(pairs[0][1])
    guest.guest.mask(pairs[1][1])
    dom0.send(pairs[1][0])
    guest.guest.unmask(pairs[1][1])
    assert guest.guest.do_upcall(0) == [pairs[0][1], pairs[1][1]]
    assert dom0.event_channel_op(4, bytearray(struct.pack("=I", pairs[0][0]))) == 0
    assert guest.guest.do_upcall(0) == [pairs[0][1]]


def _take_then_return(real, held):
    """_Slot.take, after which numbers given back to the stand-in list go to the real one."""
    take = domain_mod._Slot.take.__func__

    def wrapped(cls, cdom):
        try:
            return take(cls, cdom)
        finally:
            real.extend(held)
            held.clear()

    return classmethod(wrapped)


# ---- send_many ---------------------------------------------------------------------------


def test_send_many_failure_reports_index_port_and_errno():
    hv = xe.Hypervisor()
    dom0, guest, pairs = channels(hv, 300)
    ports = [p for p, _ in pairs]
    ports[257] = 4000                       # past the valid range
    with pytest.raises(xe.EvtchnError) as e:
        dom0.send_many(array("I", ports))
    assert e.value.errno == errno.EINVAL
    assert "port 4000 (index 257)" in str(e.value)
    assert all(guest.shared_info.is_pending(r) for _, r in pairs[:257])
    assert not any(guest.shared_info.is_pending(r) for _, r in pairs[258:])


# ---- guest.unmask ------------------------------------------------------------------------


def test_guest_unmask_fast_path_refusals_and_slow_cases():
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    p = d.bind_ipi(vcpu=1)
    d.guest.do_upcall(1)
    with pytest.raises(ValueError):
        d.guest.unmask(4096)
    with pytest.raises(ValueError):
        d.guest.unmask(-1)
    with pytest.raises(TypeError):
        d.guest.unmask(1.0)
    d.guest.mask(p)
    d.send(p)
    d.guest.unmask(p)                        # local on its notify vCPU 1: re-fired there
    assert d.vcpus[1].upcall_pending == 1 and d.vcpus[0].upcall_pending == 0
    assert d.guest.do_upcall(1) == [p]
    d.guest.mask(p)
    d.send(p)
    d.guest.unmask(p, vcpu=0)               # from another vCPU: the hypercall
    assert d.guest.do_upcall(1) == [p]
    d.guest.unmask(1000)                     # past the valid range: Linux unmasks locally
    hv.destroy_domain(d.domid)
    with pytest.raises(xe.EvtchnError) as e:
        d.guest.unmask(p)
    assert e.value.errno == errno.ESRCH
    with pytest.raises(xe.EvtchnError):
        d.guest.do_upcall()


def test_guest_unmask_of_a_handle_port_requeues_it():
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True)
    g = hv.create_domain()
    with xe.XenEvtchn(g) as h:
        port = h.bind_unbound_port(dom0.domid)
        back = dom0.bind_interdomain(g.domid, port)
        dom0.send(back)
        assert h.pending() == port            # taken: masked, queued
        dom0.send(back)                       # raised while masked: stays pending
        assert h.pending() is None
        g.guest.unmask(port)                  # the driver's unmask takes it again
        assert h.pending() == port


# ---- do_upcall without a handler ----------------------------------------------------------


@pytest.mark.parametrize("layout,seed", [("x86_64", 1), ("x86_64", 2), ("x86_32", 3)])
def test_upcall_in_c_matches_the_handler_path(layout, seed):
    """Twin domains, the same events: do_upcall(v) against do_upcall(v, handler)."""
    rng = random.Random(seed)
    twins = []
    nports = 4095 if layout == "x86_64" else 1023
    for _ in range(2):
        hv = xe.Hypervisor()
        d = hv.create_domain(vcpus=3, layout=layout)
        ipis = [d.bind_ipi(vcpu=random.Random(p).randrange(3)) for p in range(nports - 3)]
        timers = [d.bind_virq(xe.VIRQ_TIMER, vcpu=v) for v in range(3)]
        twins.append(d)
    fast, slow = twins
    assert len(ipis) + len(timers) == nports
    longest = 0
    for rnd in range(25):
        k = rng.choice([0, 1, 5, 64, 1500, len(ipis)])
        ports = rng.sample(ipis, min(k, len(ipis)))
        masked = rng.sample(range(1, nports + 1), rng.choice([0, 10]))
        for d in twins:
            for p in masked:
                d.guest.mask(p)
            d.send_many(array("I", ports))
            if rnd % 3 == 0:
                hv_ = d.hv
                hv_.send_virq(d.domid, xe.VIRQ_TIMER, vcpu=rnd % 3)
        for v in range(3):
            got = fast.guest.do_upcall(v)
            seen = []
            want = slow.guest.do_upcall(v, seen.append)
            assert got == want == seen, (rnd, v)
            longest = max(longest, len(got))
            assert fast.guest.cursor(v) == slow.guest.cursor(v)
        for d in twins:
            for p in masked:
                d.guest.unmask(p)
        assert bytes(fast.shared_info.buffer) == bytes(slow.shared_info.buffer), rnd
    if layout == "x86_64":   # some upcall took more than one C call's worth of ports
        from xenevtchn.guest import _UPCALL_CAP
        assert longest > _UPCALL_CAP


def test_upcall_fast_path_refusals():
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    p = d.bind_ipi(vcpu=1)
    d.send(p)
    for bad in (2, -1):
        with pytest.raises(ValueError):
            d.guest.do_upcall(bad)
    for bad in (1.0, "1", None):
        with pytest.raises(TypeError):
            d.guest.do_upcall(bad)
    with pytest.raises(TypeError):
        d.guest.do_upcall(1, handler=5)
    assert d.guest.do_upcall(True) == [p]   # bool is an int: the checked path takes it


# ---- event_channel_op on a bytearray --------------------------------------------------------


def test_raw_fast_path_answers_as_the_general_path():
    hv = xe.Hypervisor()
    dom0, guest, pairs = channels(hv, 2)
    (l0, r0), (l1, r1) = pairs
    op = dom0.event_channel_op
    assert op(4, bytearray(struct.pack("=I", l0))) == 0
    assert guest.shared_info.is_pending(r0)
    assert op(xe.EVTCHNOP_send, bytearray(struct.pack("=Ixxxx", l1))) == 0   # longer is fine
    assert guest.shared_info.is_pending(r1)
    assert op(4, bytearray(3)) == -errno.EFAULT
    assert op(4, bytearray(struct.pack("=I", 4000))) == -errno.EINVAL
    assert op(4, bytearray(struct.pack("=I", 2**17 + l0))) == -errno.EINVAL
    assert op(4, bytearray(struct.pack("=I", 2**32 - 1))) == -errno.EINVAL
    for cmd in (4.0, "4", None):
        with pytest.raises(TypeError):
            op(cmd, bytearray(struct.pack("=I", l0)))
    for arg in (bytes(4), memoryview(bytearray(4)).toreadonly()):
        with pytest.raises(TypeError):
            op(4, arg)
    # EVTCHNOP_unmask on the receiving side: re-raises a pending masked port.
    guest.guest.do_upcall(0)
    guest.guest.mask(r0)
    dom0.send(l0)
    kicks = []
    hv.on_kick = kicks.append
    assert guest.event_channel_op(9, bytearray(struct.pack("=I", r0))) == 0
    assert kicks == [guest.vcpus[0]]
    assert guest.event_channel_op(xe.EVTCHNOP_unmask, bytearray(struct.pack("=I", 5000))) == -errno.EINVAL

    def boom(v):
        raise xe.EvtchnError(errno.EIO, "hook")

    hv.on_kick = boom
    guest.guest.do_upcall(0)
    assert op(4, bytearray(struct.pack("=I", l0))) == -errno.EIO   # as the general path
    hv.destroy_domain(dom0.domid)
    assert op(4, bytearray(struct.pack("=I", l0))) == -errno.ESRCH
    assert dom0.event_channel_op(4, bytearray(struct.pack("=I", l0))) == -errno.ESRCH


# ---- hooks: only listed domains, creation order -------------------------------------------


def test_hooks_run_in_creation_order_whatever_the_c_list_order():
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True, domid=0)
    # Created in this order; domids deliberately not ascending.
    ids = [900, 7, 300] + list(range(1000, 1070))   # 73 guests: more than one C batch
    guests = [hv.create_domain(domid=i) for i in ids]
    backs = [channels(hv, 1, dom0, g)[2][0][0] for g in guests]
    kicked = []
    hv.on_kick = lambda v: kicked.append(v.domain.domid)
    for g in guests:
        g.guest.do_upcall(0)
    dom0.send_many(array("I", reversed(backs)))   # one call kicks them all, last one first
    assert kicked == ids


def test_hooks_owed_by_a_destroyed_domain_are_dropped():
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=1)
    p = d.bind_ipi()
    d.guest.do_upcall(0)
    kicked = []
    hv.on_kick = kicked.append
    d.send(p)
    assert kicked == [d.vcpus[0]]
    hv.destroy_domain(d.domid)
    e = hv.create_domain(domid=d.domid)
    q = e.bind_ipi()
    e.guest.do_upcall(0)
    e.send(q)
    assert kicked == [d.vcpus[0], e.vcpus[0]]


def test_a_listed_domain_whose_bits_were_taken_runs_no_hook():
    """Another thread may take a domain's bits while the domain is still listed."""
    from xenevtchn._native import lib

    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    p = d.bind_ipi(vcpu=1)
    d.guest.do_upcall(1)
    calls = []
    hv.on_kick = hv.on_wake = calls.append
    assert lib.xe_evtchn_send(d._c, p) == lib.XE_EV_HOOKS   # recorded, hooks not yet run
    assert lib.xe_take_kicked(d._c) == 0b10                 # someone else took the bit
    hv._after(lib.XE_EV_HOOKS)
    assert calls == []
    d.guest.do_upcall(1)
    d.send(p)
    assert calls == [d.vcpus[1]]
