"""vcpu_info anywhere and vCPUs beyond 32 (spec xen-hvm-and-beyond §1.3, §3, §9, §10;
API.md "HVM, PVH, Arm and beyond"), on both implementations.

Written from the spec: where each vCPU's vcpu_info lives, what an event for a vCPU with
none does, VCPUOP_register_vcpu_info's checks one error at a time in master's order, the
populate / switch / all-ones selector / mark-pending steps, and the raw vcpu_op entry.
"""

from __future__ import annotations

import errno
import struct

import pytest

from hvhelpers import RawError, raises_errno

U64 = 2**64 - 1
VI = 64                                    # sizeof(struct vcpu_info), x86
SEL = {"x86_64": (8, 8), "x86_32": (4, 4)}  # evtchn_pending_sel: offset, size
ALIGN = {"x86_64": 8, "x86_32": 4}
ARG = struct.Struct("<QII")                # struct vcpu_register_vcpu_info


def raw_register(d, gfn, offset, vcpu, rsvd=0):
    """VCPUOP_register_vcpu_info through the raw hypercall; RawError for -errno."""
    buf = bytearray(ARG.pack(gfn & U64, offset, rsvd))
    rc = d.vcpu_op(10, vcpu, buf)
    assert buf == ARG.pack(gfn & U64, offset, rsvd), "vcpu_op copied something back"
    if rc:
        raise RawError(-rc)


@pytest.fixture(params=["wrapper", "raw"])
def register(request):
    if request.param == "wrapper":
        return lambda d, gfn, offset, vcpu: d.register_vcpu_info(gfn, offset, vcpu)
    return raw_register


def sel_all_ones(layout):
    return (1 << 8 * SEL[layout][1]) - 1


def slot(d, v):
    return bytes(d.shared_info.buffer[v * VI:(v + 1) * VI])


# ---- §1.3: vCPU counts -------------------------------------------------------------------

def test_pv_limit_is_max_virt_cpus(hv):
    d = hv.create_domain(vcpus=8192)
    assert len(d.vcpus) == 8192
    with pytest.raises(ValueError):
        hv.create_domain(vcpus=8193)
    with pytest.raises(ValueError):
        hv.create_domain(vcpus=0)


# ---- §3.1: where each vcpu_info lives ------------------------------------------------------

@pytest.mark.parametrize("layout", ["x86_64", "x86_32"])
def test_legacy_slots_and_none_beyond(hv, layout):
    d = hv.create_domain(vcpus=40, layout=layout)
    for v in (0, 5, 31):
        vi = d.vcpus[v].vcpu_info
        assert vi is not None and len(vi) == VI and bytes(vi) == slot(d, v)
        assert d.vcpus[v].upcall_mask == 1          # PV: the builder masks every legacy slot
        vi[2] = 0x5A                                  # live: the view is the slot itself
        assert d.shared_info.buffer[v * VI + 2] == 0x5A
    for v in (32, 39):
        x = d.vcpus[v]
        assert x.vcpu_info is None
        assert (x.upcall_pending, x.pending_sel, x.upcall_mask) == (0, 0, 0)


def test_event_for_vcpu_without_vcpu_info_sets_only_the_pending_bit(hv, hooks):
    d = hv.create_domain(vcpus=40)
    before = bytes(d.shared_info.buffer[:2048])       # every legacy vcpu_info slot
    p = d.bind_ipi(35)
    d.unmask(p)
    d.send(p)
    assert d.shared_info.is_pending(p)
    assert hooks == []                                 # no upcall, no kick
    assert (d.vcpus[35].upcall_pending, d.vcpus[35].pending_sel) == (0, 0)
    assert bytes(d.shared_info.buffer[:2048]) == before   # no selector bit anywhere
    t = d.bind_virq(0, 36)                             # VIRQ_TIMER on vCPU 36
    hv.send_virq(d.domid, 0, 36)
    assert d.shared_info.is_pending(t) and hooks == []
    assert d.guest.do_upcall(35) == []                 # nothing to scan: the selector is 0


def test_event_for_vcpu_without_vcpu_info_still_wakes_its_poller(hv, hooks):
    d = hv.create_domain(vcpus=40)
    p = d.bind_ipi(33)
    assert d.sched_poll([p], vcpu=33) is False and d.vcpus[33].polling
    d.send(p)
    assert not d.vcpus[33].polling and hooks == [("wake", 33)]
    q = d.bind_ipi(34)
    assert d.sched_poll([q], vcpu=34) is False
    d.send(p)                                          # already pending: nothing at all
    assert d.vcpus[34].polling
    d.send(q)
    assert not d.vcpus[34].polling and hooks == [("wake", 33), ("wake", 34)]


def test_poll_on_vcpu_without_vcpu_info_never_sees_local_delivery(hv):
    d = hv.create_domain(vcpus=33)
    p = d.bind_ipi(32)
    # Nothing pending locally (the dummy reads 0): the poll blocks.
    assert d.sched_poll([p], vcpu=32) is False


# ---- §3.3 / §10: registering ------------------------------------------------------------

@pytest.mark.parametrize("layout", ["x86_64", "x86_32"])
def test_register_from_none_recovers_lost_events(hv, hooks, register, layout):
    d = hv.create_domain(vcpus=48, layout=layout)
    ports = [d.bind_ipi(40) for _ in range(3)]
    for p in ports:
        d.unmask(p)
        d.send(p)
    assert hooks == []
    d.memory.page(9)[128:192] = b"\xee" * 64           # garbage the populate must clear
    register(d, 9, 128, 40)
    vi = d.vcpus[40].vcpu_info
    assert vi is not None and bytes(vi) == bytes(d.memory.page(9)[128:192])
    # zero-filled, mask set, then the selector forced to all ones and the flag marked
    off, size = SEL[layout]
    assert int.from_bytes(vi[off:off + size], "little") == sel_all_ones(layout)
    assert vi[0] == 1 and vi[1] == 1
    rest = bytes(vi[2:off]) + bytes(vi[off + size:])
    assert rest == bytes(len(rest))
    assert hooks == [("kick", 40)]
    assert sorted(d.guest.do_upcall(40)) == sorted(ports)   # the spurious upcall finds them
    # From now on the vCPU gets upcalls like any other.
    hooks.clear()
    d.send(ports[0])
    assert hooks == [("kick", 40)] and d.vcpus[40].upcall_pending == 1


@pytest.mark.parametrize("flag", [0, 1])
def test_register_copies_the_old_slot_mask_included(hv, hooks, register, flag):
    d = hv.create_domain(vcpus=2)
    old = bytearray(range(100, 100 + VI))
    old[0], old[1] = flag, 0                           # upcall flag as given, mask clear
    d.shared_info.buffer[VI:2 * VI] = old
    register(d, 3, 64, 1)
    new = bytes(d.memory.page(3)[64:128])
    want = bytearray(old)
    want[8:16] = b"\xff" * 8                           # the selector forced to all ones
    want[0] = 1                                        # and events marked pending
    assert new == bytes(want)
    assert slot(d, 1) == bytes(old)                    # the old slot is left as it was
    assert hooks == ([] if flag else [("kick", 1)])   # no kick if the copied flag was 1
    assert d.vcpus[1].upcall_mask == 0                 # the copied mask, not a fresh 1


def test_old_slot_is_never_written_again(hv, hooks):
    d = hv.create_domain(vcpus=2)
    d.register_vcpu_info(0, 0, 1)
    frozen = slot(d, 1)
    p = d.bind_ipi(1)
    d.unmask(p)
    d.guest.do_upcall(1)
    d.send(p)
    d.send(p)
    assert slot(d, 1) == frozen
    assert d.vcpus[1].pending_sel == 1 and d.vcpus[1].upcall_pending == 1


def test_two_vcpu_infos_share_a_frame_with_a_control_block(hv):
    d = hv.create_domain(vcpus=3)
    d.register_vcpu_info(5, 0, 0)
    d.register_vcpu_info(5, 64, 1)
    d.init_control(5, 128, 0)
    d.init_control(5, 256, 1)
    d.register_vcpu_info(5, 4032, 2)                   # the last offset that fits
    d.expand_array(6)
    p = d.bind_ipi(1)
    d.send(p)
    assert d.guest.do_upcall(1) == [p]


def test_registered_frame_cannot_be_remapped(hv):
    d = hv.create_domain(vcpus=1)
    d.memory.map(7, bytearray(4096))                   # fine before
    d.register_vcpu_info(7, 0, 0)
    with pytest.raises(ValueError):
        d.memory.map(7, bytearray(4096))


def test_reset_keeps_the_registration(hv, hooks, xe):
    d = hv.create_domain(vcpus=34)
    d.register_vcpu_info(2, 0, 33)
    d.guest.do_upcall(33)
    d.reset()
    hooks.clear()
    p = d.bind_ipi(33)
    d.unmask(p)
    d.send(p)
    assert hooks == [("kick", 33)] and d.memory.page(2)[0] == 1
    with raises_errno(xe, errno.EBUSY):
        d.register_vcpu_info(3, 0, 33)


# ---- §3.3: the checks, one error at a time, in master's order -------------------------------

def test_check_order(hv, register, xe):
    d = hv.create_domain(vcpus=2, memory_frames=16)
    d.register_vcpu_info(1, 0, 1)                      # vCPU 1 is registered
    cases = [
        # 1. gaddr out of its frame (offset >= 4096, or the shift overflows) -> EINVAL,
        #    before "already registered", crossing, alignment or a bad frame.
        ((1, 4096, 1), errno.EINVAL),
        ((99, 4099, 1), errno.EINVAL),
        ((2**52, 0, 0), errno.EINVAL),
        ((2**52 - 1, 4095, 0), errno.EINVAL),         # gaddr == 2**64 - 1
        ((2**64 - 1, 0, 0), errno.EINVAL),
        # 2. already registered -> EBUSY, before crossing, alignment or the frame.
        ((99, 4090, 1), errno.EBUSY),
        ((99, 0, 1), errno.EBUSY),
        # 3. crossing the page -> ENXIO, before the frame check.
        ((99, 4040, 0), errno.ENXIO),
        ((1, 4033, 0), errno.ENXIO),
        # 4. misaligned -> ENXIO, before the frame check.
        ((99, 2, 0), errno.ENXIO),
        # 5. not a guest frame -> EINVAL.
        ((16, 0, 0), errno.EINVAL),
        ((99, 64, 0), errno.EINVAL),
    ]
    before = bytes(d.shared_info.buffer[:3136])
    for (gfn, offset, vcpu), err in cases:
        with raises_errno(xe, err):
            register(d, gfn, offset, vcpu)
        assert bytes(d.shared_info.buffer[:3136]) == before
        assert bytes(d.vcpus[0].vcpu_info) == slot(d, 0)       # vCPU 0 did not move
    d.memory.map(15, bytearray(4096))                  # no failed call held a frame
    register(d, 15, 4032, 0)                           # and the limits themselves pass


def test_alignment_per_layout(hv, xe):
    d64 = hv.create_domain(vcpus=2)
    d32 = hv.create_domain(vcpus=2, layout="x86_32")
    with raises_errno(xe, errno.ENXIO):
        d64.register_vcpu_info(1, 4, 0)
    d32.register_vcpu_info(1, 4, 0)                   # compat: alignof(xen_ulong_t) == 4
    with raises_errno(xe, errno.ENXIO):
        d32.register_vcpu_info(1, 70, 1)


def test_wrapper_arguments(hv, xe):
    d = hv.create_domain(vcpus=2)
    with raises_errno(xe, errno.ENOENT):
        d.register_vcpu_info(0, 0, 2)
    with raises_errno(xe, errno.ENOENT):
        d.register_vcpu_info(2**60, 4096, 7)           # the vCPU first
    for bad in ((-1, 0, 0), (2**64, 0, 0), (0, -1, 0), (0, 2**32, 0), (0, 0, 2**32), (0, 0, -1)):
        with pytest.raises((ValueError, OverflowError)):
            d.register_vcpu_info(*bad)
    for bad in ((1.0, 0, 0), (0, "0", 0), (0, 0, None)):
        with pytest.raises(TypeError):
            d.register_vcpu_info(*bad)
    assert bytes(d.vcpus[0].vcpu_info) == slot(d, 0)


# ---- §3.2: the raw hypercall ----------------------------------------------------------------

def test_vcpu_op_entry_order(hv):
    d = hv.create_domain(vcpus=2)
    good = bytearray(ARG.pack(4, 0, 0))
    assert d.vcpu_op(99, 2, good) == -errno.ENOENT     # the vCPU before the command
    assert d.vcpu_op(10, 2**31, good) == -errno.ENOENT
    assert d.vcpu_op(10, -1, good) == -errno.ENOENT
    assert d.vcpu_op(0, 0, good) == -errno.ENOSYS      # other commands: not modelled
    assert d.vcpu_op(11, 0, bytearray(2)) == -errno.ENOSYS  # before the argument is read
    for n in (0, 1, 8, 15):
        assert d.vcpu_op(10, 0, bytearray(n)) == -errno.EFAULT
    assert bytes(d.vcpus[0].vcpu_info) == slot(d, 0)
    long = bytearray(ARG.pack(4, 0, 0xDEADBEEF) + b"\x77" * 8)   # rsvd ignored, tail unread
    assert d.vcpu_op(10, 0, long) == 0
    assert long == ARG.pack(4, 0, 0xDEADBEEF) + b"\x77" * 8
    assert bytes(d.vcpus[0].vcpu_info) == bytes(d.memory.page(4)[0:64])
    assert d.vcpu_op(10, 0, bytearray(ARG.pack(5, 0, 0))) == -errno.EBUSY


def test_vcpu_op_hostile_buffers(hv):
    d = hv.create_domain(vcpus=1)
    for bad in (b"\x00" * 16, bytes(16), "x" * 16, None, 16, memoryview(b"\x00" * 16)):
        with pytest.raises(TypeError):
            d.vcpu_op(10, 0, bad)
    with pytest.raises(TypeError):
        d.vcpu_op("10", 0, bytearray(16))
    with pytest.raises(TypeError):
        d.vcpu_op(10, 0.0, bytearray(16))
    assert bytes(d.vcpus[0].vcpu_info) == slot(d, 0)
    # A non-byte buffer of the right size is read as bytes.
    arr = __import__("array").array("I", [3, 0, 0, 0])
    assert d.vcpu_op(10, 0, arr) == 0
    assert bytes(d.vcpus[0].vcpu_info) == bytes(d.memory.page(3)[0:64])


def test_destroyed_domain(hv, xe):
    d = hv.create_domain(vcpus=1)
    hv.destroy_domain(d.domid)
    assert d.vcpu_op(10, 0, bytearray(16)) == -errno.ESRCH
    with raises_errno(xe, errno.ESRCH):
        d.register_vcpu_info(0, 0, 0)


# ---- FIFO: the queue is linked, only the upcall is lost --------------------------------------

def test_fifo_vcpu_without_vcpu_info_links_the_queue(hv, hooks):
    d = hv.create_domain(vcpus=36)
    d.init_control(1, 0, 0)
    d.init_control(1, 128, 34)
    d.expand_array(2)
    p = d.bind_ipi(34)
    d.send(p)
    word = int.from_bytes(d.memory.page(2)[4 * p:4 * p + 4], "little")
    assert word >> 31 & 1 and word >> 29 & 1            # PENDING and LINKED
    ready = int.from_bytes(d.memory.page(1)[128:132], "little")
    assert ready == 1 << 7                               # the default priority's READY bit
    assert hooks == [] and d.vcpus[34].upcall_pending == 0
    d.register_vcpu_info(3, 0, 34)
    assert hooks == [("kick", 34)]
    assert d.guest.do_upcall(34) == [p]


def test_fifo_vcpu_beyond_256(hv, hooks):
    d = hv.create_domain(vcpus=300)
    d.init_control(1, 0, 0)
    d.init_control(1, 128, 290)
    d.init_control(1, 256, 35)
    d.expand_array(2)
    d.register_vcpu_info(3, 0, 290)
    d.guest.do_upcall(290)
    a = d.alloc_unbound(d.domid)
    b = d.bind_interdomain(d.domid, a)                   # a loopback pair
    d.guest.do_upcall(0)
    d.bind_vcpu(b, 290)
    hooks.clear()
    d.send(a)
    assert hooks == [("kick", 290)]
    d.bind_vcpu(b, 35)                                   # the event stays on 290's queue
    d.send(a)
    assert d.guest.do_upcall(35) == []
    assert d.guest.do_upcall(290) == [b]


# ---- hooks for many vCPUs ------------------------------------------------------------------

def test_kicks_across_vcpu_groups_come_in_vcpu_order(hv, hooks):
    d = hv.create_domain(vcpus=8192)
    ports = {}
    for v in (8191, 3, 4000, 40, 33, 64):
        if v >= 32:
            d.register_vcpu_info(v // 63, (v % 63) * 64, v)
            d.guest.do_upcall(v)
        ports[v] = d.bind_ipi(v)
        d.unmask(ports[v])
    hooks.clear()
    for v in (40, 64):
        assert d.sched_poll([ports[v]], vcpu=v) is False
    d.send_many([ports[v] for v in (8191, 3, 4000, 40, 33, 64)])
    assert sorted(h for h in hooks if h[0] == "kick") == sorted(("kick", v) for v in (3, 33, 40, 64, 4000, 8191))
    assert hooks.index(("wake", 40)) == hooks.index(("kick", 40)) + 1   # a kick ends the poll
    assert hooks.index(("wake", 64)) == hooks.index(("kick", 64)) + 1
    assert len(hooks) == 8
    assert not d.vcpus[40].polling and not d.vcpus[64].polling
    assert all(d.vcpus[v].upcall_pending for v in ports)


def test_kicks_in_more_groups_than_one_batch_of_records(hv, hooks):
    """One call kicks vCPUs in 200 groups of 32: more records than the hook runner takes
    at once; every kick still arrives exactly once."""
    d = hv.create_domain(vcpus=8192)
    targets = [32 * g + g % 32 for g in range(1, 201)]
    ports = []
    for i, v in enumerate(targets):
        d.register_vcpu_info(1 + i // 64, 64 * (i % 64), v)
        d.guest.do_upcall(v)
        p = d.bind_ipi(v)
        d.unmask(p)
        ports.append(p)
    hooks.clear()
    d.send_many(ports)
    assert sorted(hooks) == sorted(("kick", v) for v in targets)
    hooks.clear()
    d.send_many(ports)                                  # all pending: nothing more
    assert hooks == []
