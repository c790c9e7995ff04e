"""EVTCHNOP_init_control (11), EVTCHNOP_expand_array (12), EVTCHNOP_set_priority (13):
every check of spec xen-hypervisor §4.12-4.14 in Xen's order, the raw structs (§12.1),
the wrappers' argument checks, and the switch from 2-level (§4.12 step 4).
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from fifohelpers import (
    ARRAY_GFN,
    CB_GFN,
    CB_MAX_OFFSET,
    INIT_CONTROL,
    LINK_BITS,
    LINKED,
    PENDING,
    Fifo,
    errno_of,
    fifo_domain,
    fvia,  # noqa: F401 - fixture
)
from hvhelpers import raises_errno
from xenabi import si

HERE = os.path.dirname(os.path.abspath(__file__))


def _abi():
    for path in (os.path.join(HERE, "..", "..", "shared", "spec", "xen-abi.json"),
                 os.path.join(HERE, "data", "xen-abi.json")):
        if os.path.exists(path):
            with open(path) as fh:
                return json.load(fh)
    pytest.fail("xen-abi.json not found")


@pytest.mark.parametrize("layout", ["x86_64", "x86_32"])
def test_struct_layouts_match_xen_abi_json(layout):
    structs = _abi()[layout]["structs"]
    ic = structs["evtchn_init_control"]
    assert ic["size"] == 24
    assert {k: (v["offset"], v["size"]) for k, v in ic["fields"].items()} == {
        "control_gfn": (0, 8), "offset": (8, 4), "vcpu": (12, 4), "link_bits": (16, 1), "_pad": (17, 7)
    }
    assert INIT_CONTROL.size == 16  # the three inputs; link_bits at 16
    ea = structs["evtchn_expand_array"]
    assert ea["size"] == 8 and ea["fields"]["array_gfn"] == {"offset": 0, "size": 8}
    sp = structs["evtchn_set_priority"]
    assert sp["size"] == 8
    assert sp["fields"] == {"port": {"offset": 0, "size": 4}, "priority": {"offset": 4, "size": 4}}
    cb = structs["evtchn_fifo_control_block"]
    assert cb["size"] == 72 and cb["fields"]["ready"]["offset"] == 0
    assert cb["fields"]["head"]["offset"] == 8 and cb["fields"]["head[1]"]["offset"] == 12
    assert 4096 - cb["size"] == CB_MAX_OFFSET


# ------------------------------------------------------------------ init_control (§4.12)


def test_init_control_returns_link_bits(fvia, hv):
    d = hv.create_domain(vcpus=2)
    assert fvia.init_control(d, CB_GFN, 0, 0) == LINK_BITS == 17
    assert fvia.init_control(d, CB_GFN + 1, 0, 1) == 17  # later vCPUs: same answer


@pytest.mark.parametrize("vcpu", [2, 31, 32, 2**32 - 1])
def test_init_control_enoent_for_missing_vcpu(fvia, xe, hv, vcpu):
    d = hv.create_domain(vcpus=2)
    with raises_errno(xe, errno.ENOENT):
        fvia.init_control(d, CB_GFN, 0, vcpu)
    # Step 1 comes before the offset checks and the gfn check.
    with raises_errno(xe, errno.ENOENT):
        fvia.init_control(d, 2**64 - 1, 4, vcpu)
    with raises_errno(xe, errno.ENOENT):
        fvia.init_control(d, CB_GFN, 2**32 - 1, vcpu)
    _assert_still_2l(xe, d)


@pytest.mark.parametrize("offset", [4025, 4028, 4032, 4096, 2**32 - 8, 2**32 - 1, 4, 1, 7, 4020, 12])
def test_init_control_bad_offset_einval(fvia, xe, hv, offset):
    # > 4096 - 72 = 4024 -> EINVAL; not a multiple of 8 -> EINVAL.
    d = hv.create_domain(vcpus=1)
    with raises_errno(xe, errno.EINVAL):
        fvia.init_control(d, CB_GFN, offset, 0)
    _assert_still_2l(xe, d)


@pytest.mark.parametrize("offset", [0, 8, 64, 2048, 4016, 4024])
def test_init_control_good_offsets(fvia, hv, offset):
    d = hv.create_domain(vcpus=1)
    assert fvia.init_control(d, CB_GFN, offset, 0) == 17


def test_control_block_at_last_offset_uses_the_page_end(hv):
    # offset 4024: ready @4024, head[15] @4024 + 8 + 60 = 4092..4095 (spec §9.1).
    d = hv.create_domain(vcpus=1)
    f = Fifo(d)
    f.init(0, offset=4024)
    f.expand()
    p = d.bind_ipi(0)
    d.set_priority(p, 15)
    d.send(p)
    page = d.memory.page(CB_GFN)
    assert page[4092:4096] == p.to_bytes(4, "little")
    assert page[4024:4028] == (1 << 15).to_bytes(4, "little")
    assert bytes(page[:4024]) == bytes(4024)


def test_init_control_second_block_for_same_vcpu_einval(fvia, xe, hv):
    d = hv.create_domain(vcpus=2)
    fvia.init_control(d, CB_GFN, 0, 0)
    for gfn, off in [(CB_GFN, 0), (CB_GFN + 5, 8), (2**64 - 1, 0)]:
        with raises_errno(xe, errno.EINVAL):
            fvia.init_control(d, gfn, off, 0)
    assert fvia.init_control(d, CB_GFN + 1, 0, 1) == 17  # the other vCPU is still free


def test_init_control_bad_gfn_first_call_leaves_domain_2l(fvia, xe, hv):
    d = hv.create_domain(vcpus=2, memory_frames=64)
    with raises_errno(xe, errno.EINVAL):
        fvia.init_control(d, 64, 0, 0)
    _assert_still_2l(xe, d)
    assert fvia.init_control(d, 63, 0, 0) == 17  # a retry with a good frame switches


def test_init_control_bad_gfn_later_call_einval_and_vcpu_stays_without_block(fvia, xe, hv):
    d = hv.create_domain(vcpus=2, memory_frames=64)
    fvia.init_control(d, 1, 0, 0)
    with raises_errno(xe, errno.EINVAL):
        fvia.init_control(d, 64, 0, 1)
    assert fvia.init_control(d, 2, 0, 1) == 17  # vCPU 1 had no block registered


def test_two_control_blocks_may_share_a_frame(hv):
    # Xen only asks for a writable page; vCPUs 0 and 1 at offsets 0 and 128 of one frame.
    d = hv.create_domain(vcpus=2)
    f = Fifo(d)
    f.init(0, gfn=CB_GFN, offset=0)
    f.init(1, gfn=CB_GFN, offset=128)
    f.expand()
    a, b = d.bind_ipi(0), d.bind_ipi(1)
    d.send(b)
    assert f.ready(1) == 1 << 7 and f.head(1, 7) == b
    assert f.ready(0) == 0 and f.head(0, 7) == 0
    d.send(a)
    assert f.ready(0) == 1 << 7 and f.head(0, 7) == a


def test_raw_init_control_copy_back(xe, hv):
    d = hv.create_domain(vcpus=1)
    buf = bytearray(b"\x5a" * 40)
    INIT_CONTROL.pack_into(buf, 0, CB_GFN, 16, 0)
    assert d.event_channel_op(11, buf) == 0
    expect = bytearray(b"\x5a" * 40)
    INIT_CONTROL.pack_into(expect, 0, CB_GFN, 16, 0)
    expect[16] = 17  # only link_bits written; _pad (17..23) and trailing bytes echoed
    assert buf == expect
    assert d.event_channel_op(xe.EVTCHNOP_init_control, buf) == -errno.EINVAL  # 2nd block
    assert buf == expect


@pytest.mark.parametrize("cmd,size", [(11, 24), (12, 8), (13, 8)])
def test_raw_short_buffer_efault_without_side_effects(xe, hv, cmd, size):
    d = hv.create_domain(vcpus=1)
    if cmd != 11:
        Fifo(d).init(0)
    for n in (0, size - 1):
        buf = bytearray(n)
        if cmd == 11 and n >= 16:
            INIT_CONTROL.pack_into(buf, 0, CB_GFN, 0, 0)
        before = bytes(buf)
        assert d.event_channel_op(cmd, buf) == -errno.EFAULT
        assert buf == before
    if cmd == 11:
        _assert_still_2l(xe, d)
    elif cmd == 12:
        # no page was added: port 1's events are still deferred
        p = d.bind_ipi(0)
        d.send(p)
        assert d.vcpus[0].upcall_pending == 0


@pytest.mark.parametrize("cmd", [11, 12, 13])
def test_compat_hypercall_refuses_fifo_commands(xe, hv, cmd):
    d = hv.create_domain(vcpus=1)
    op = bytearray(28)
    op[0] = cmd
    INIT_CONTROL.pack_into(op, 4, CB_GFN, 0, 0)
    before = bytes(op)
    assert d.event_channel_op_compat(op) == -errno.ENOSYS
    assert bytes(op) == before
    _assert_still_2l(xe, d)


def _assert_still_2l(xe, d):
    """2-level: expand_array -EOPNOTSUPP, set_priority -ENOSYS, sends set 2L bits."""
    with raises_errno(xe, errno.EOPNOTSUPP):
        d.expand_array(ARRAY_GFN)
    p = d.bind_ipi(0)
    with raises_errno(xe, errno.ENOSYS):
        d.set_priority(p, 0)
    d.send(p)
    assert d.shared_info.is_pending(p)
    d.close(p)


# ------------------------------------------------------------------ wrappers' arguments


@pytest.mark.parametrize(
    "call,exc",
    [
        (lambda d: d.init_control("1", 0, 0), TypeError),
        (lambda d: d.init_control(1.0, 0, 0), TypeError),
        (lambda d: d.init_control(None, 0, 0), TypeError),
        (lambda d: d.init_control(1, "0", 0), TypeError),
        (lambda d: d.init_control(1, 0, 0.0), TypeError),
        (lambda d: d.init_control(-1, 0, 0), ValueError),
        (lambda d: d.init_control(2**64, 0, 0), ValueError),
        (lambda d: d.init_control(1, -8, 0), ValueError),
        (lambda d: d.init_control(1, 2**32, 0), ValueError),
        (lambda d: d.init_control(1, 0, -1), ValueError),
        (lambda d: d.init_control(1, 0, 2**32), ValueError),
        (lambda d: d.expand_array("1"), TypeError),
        (lambda d: d.expand_array(None), TypeError),
        (lambda d: d.expand_array(-1), ValueError),
        (lambda d: d.expand_array(2**64), ValueError),
        (lambda d: d.set_priority("1", 0), TypeError),
        (lambda d: d.set_priority(1, 0.5), TypeError),
        (lambda d: d.set_priority(-1, 0), ValueError),
        (lambda d: d.set_priority(2**32, 0), ValueError),
        (lambda d: d.set_priority(1, -1), ValueError),
        (lambda d: d.set_priority(1, 2**32), ValueError),
    ],
)
def test_wrapper_argument_checks(xe, hv, call, exc):
    d = hv.create_domain(vcpus=1)
    with pytest.raises(exc):
        call(d)
    _assert_still_2l(xe, d)  # nothing ran


def test_wrappers_accept_abi_maxima_and_bool(xe, hv):
    d = hv.create_domain(vcpus=1)
    with raises_errno(xe, errno.EINVAL):  # u64 max is a valid argument: EINVAL from Xen
        d.init_control(2**64 - 1, 0, 0)
    with raises_errno(xe, errno.EINVAL):  # port u32 max: not valid
        d.set_priority(2**32 - 1, 2**32 - 1)
    assert d.init_control(True, 0, False) == 17  # bool counts as int: gfn 1, vCPU 0


def test_destroyed_domain_esrch(xe, hv):
    d = hv.create_domain(vcpus=1)
    Fifo(d).init(0)
    hv.destroy_domain(d.domid)
    for call in (lambda: d.init_control(CB_GFN, 0, 0), lambda: d.expand_array(ARRAY_GFN),
                 lambda: d.set_priority(1, 0)):
        assert errno_of(call) == errno.ESRCH
    for cmd, size in ((11, 24), (12, 8), (13, 8), (11, 0)):
        assert d.event_channel_op(cmd, bytearray(size)) == -errno.ESRCH


# ------------------------------------------------------------------ expand_array (§4.13)


def test_expand_array_before_init_control_eopnotsupp(fvia, xe, hv):
    d = hv.create_domain(vcpus=1)
    for gfn in (ARRAY_GFN, 2**64 - 1):  # checked before the gfn
        with raises_errno(xe, errno.EOPNOTSUPP):
            fvia.expand_array(d, gfn)


def test_expand_array_enospc_after_128_pages(fvia, xe, hv):
    d, f = fifo_domain(hv, vcpus=1, pages=0)
    for i in range(128):
        fvia.expand_array(d, ARRAY_GFN + i)
    for gfn in (ARRAY_GFN + 128, 2**64 - 1):  # ENOSPC before the gfn check
        with raises_errno(xe, errno.ENOSPC):
            fvia.expand_array(d, gfn)


def test_expand_array_bad_gfn_einval_takes_no_slot(fvia, xe, hv):
    d, f = fifo_domain(hv, vcpus=1, pages=0, memory_frames=1024)
    with raises_errno(xe, errno.EINVAL):
        fvia.expand_array(d, 1024)
    fvia.expand_array(d, 1000)  # becomes page 0: ports 0..1023
    p = d.bind_ipi(0)
    d.send(p)
    assert int.from_bytes(d.memory.page(1000)[4 * p : 4 * p + 4], "little") == PENDING | LINKED


def test_expand_array_grows_the_word_range_page_by_page(hv):
    d, f = fifo_domain(hv, vcpus=1, pages=1)
    ports = [d.bind_ipi(0) for _ in range(1100)]
    assert ports == list(range(1, 1101))
    d.send(1023)  # word 1023: the last of page 0
    d.send(1024)  # no page 1 yet: deferred
    assert f.queue(0, 7) == [1023]
    f.expand()
    assert f.queue(0, 7) == [1023, 1024]
    assert f.word(1024) == PENDING | LINKED
    assert d.memory.page(ARRAY_GFN + 1)[0:4] == (PENDING | LINKED).to_bytes(4, "little")


# ------------------------------------------------------------------ set_priority (§4.14)


@pytest.mark.parametrize("fifo", [False, True])
def test_set_priority_invalid_port_einval_first(fvia, xe, hv, fifo):
    d = hv.create_domain(vcpus=1)
    if fifo:
        Fifo(d).init(0)
    for port in (64, 65, 4096, 2**17, 2**32 - 1):  # 64+: not valid in a fresh domain
        with raises_errno(xe, errno.EINVAL):
            fvia.set_priority(d, port, 99)  # port checked before the mode and priority


def test_set_priority_2l_enosys(fvia, xe, hv):
    d = hv.create_domain(vcpus=1)
    p = d.bind_ipi(0)
    for port, prio in ((p, 0), (p, 99), (0, 0), (5, 3), (63, 16)):  # even FREE/RESERVED ones
        with raises_errno(xe, errno.ENOSYS):
            fvia.set_priority(d, port, prio)


def test_set_priority_unusable_eacces_before_priority(fvia, xe, hv):
    d, f = fifo_domain(hv, vcpus=1)
    p = d.bind_ipi(0)
    d.close(p)
    for port in (0, p, 63):  # RESERVED, freed, never used
        for prio in (0, 15, 16, 2**32 - 1):
            with raises_errno(xe, errno.EACCES):
                fvia.set_priority(d, port, prio)


def test_set_priority_range(fvia, xe, hv):
    d, f = fifo_domain(hv, vcpus=1)
    p = d.bind_ipi(0)
    for prio in (16, 17, 255, 2**32 - 1):
        with raises_errno(xe, errno.EINVAL):
            fvia.set_priority(d, p, prio)
    for prio in (0, 15, 7):
        fvia.set_priority(d, p, prio)


@pytest.mark.parametrize("kind", ["unbound", "interdomain", "virq", "pirq", "ipi"])
def test_set_priority_every_usable_state_and_rebind_resets_to_7(xe, hv, kind):
    dom0 = hv.create_domain(vcpus=1, privileged=True)
    d, f = fifo_domain(hv, vcpus=1)
    if kind == "unbound":
        p = d.alloc_unbound(0)
    elif kind == "interdomain":
        p = d.bind_interdomain(0, dom0.alloc_unbound(d.domid))
        d.guest.do_upcall(0)  # bind_interdomain leaves it pending: consume it
    elif kind == "virq":
        p = d.bind_virq(xe.VIRQ_TIMER, 0)
    elif kind == "pirq":
        hv.permit_pirq(d.domid, 5)
        p = d.bind_pirq(5)
    else:
        p = d.bind_ipi(0)
    d.set_priority(p, 2)
    d.close(p)
    q = d.bind_ipi(0)  # a bind resets the priority to 7 (§9.6)
    assert q == p
    d.send(q)
    assert f.head(0, 7) == q and f.ready(0) == 1 << 7


def test_remote_half_of_bind_interdomain_keeps_its_priority(hv):
    # §4.2 step 6: the remote (unbound) channel is not re-initialised.
    a, fa = fifo_domain(hv, vcpus=1)
    b = hv.create_domain(vcpus=1)
    pa = a.alloc_unbound(b.domid)
    a.set_priority(pa, 4)
    pb = b.bind_interdomain(a.domid, pa)
    b.send(pb)
    assert fa.ready(0) == 1 << 4 and fa.head(0, 4) == pa


# ------------------------------------------------------------------ the switch (§4.12 4e)


def test_switch_latches_2l_pending_bits_and_raises_them_per_page(xe, hv, hooks):
    """Hand-worked: 2L domain, IPIs 1..4 on vCPU 0. Ports 2 and 3 pending in 2L, port 3
    also 2L-masked; FREE port 9 has its 2L pending bit set by hand.
    init_control: nothing visible (no event-array page: latches only).
    expand_array: every valid port of the new page with its latch set is raised, in port
    order, to its notify vCPU, without re-checking the channel state: queue 7 = 2, 3, 9
    (masks are not carried over), ready bit 7, one kick of vCPU 0.
    """
    d = hv.create_domain(vcpus=1)
    assert [d.bind_ipi(0) for _ in range(4)] == [1, 2, 3, 4]
    view = si(d)
    d.send(3)
    d.send(2)
    view.set_mask(3)
    view.set_pending(9)
    view.ack(0)  # the guest took the 2L upcall and cleared its flags
    hooks.clear()
    snap = view.snapshot()
    f = Fifo(d)
    f.init(0)
    assert view.snapshot() == snap  # 2L bits, selector, flags untouched by the switch
    assert hooks == [] and f.ready(0) == 0
    f.expand()
    assert f.queue(0, 7) == [2, 3, 9]
    assert f.word(2) == PENDING | LINKED | 3
    assert f.word(3) == PENDING | LINKED | 9
    assert f.word(9) == PENDING | LINKED
    assert f.word(1) == 0 and f.word(4) == 0
    assert f.ready(0) == 1 << 7
    assert hooks == [("kick", 0)] and d.vcpus[0].upcall_pending == 1
    assert view.snapshot()[2048:] == snap[2048:]  # the 2L bitmaps are left as they were
    assert d.guest.do_upcall(0) == [2, 3]  # 9 is FREE: not handled, left pending
    assert f.word(9) == PENDING


def test_switch_only_covers_2l_ports_x86_32(xe, hv):
    # x86_32: the 2L ABI has ports 0..1023; the pending bit of port 5 is at byte 2048.
    d = hv.create_domain(vcpus=1, layout="x86_32")
    assert [d.bind_ipi(0) for _ in range(5)] == [1, 2, 3, 4, 5]
    d.send(5)
    assert d.shared_info.buffer[2048] == 1 << 5
    f = Fifo(d)
    f.init(0)
    f.expand()
    assert f.queue(0, 7) == [5]
    # FIFO lifts the 1024-port limit of the 32-bit layout.
    more = [d.bind_ipi(0) for _ in range(1100)]
    assert more[-1] == 1105
    f.expand()
    d.send(1105)
    assert f.queue(0, 7) == [5, 1105]
    assert d.guest.do_upcall(0) == [5, 1105]


def test_max_evtchn_port_reporting_and_fifo_limit(xe, hv):
    assert hv.create_domain().max_evtchn_port == 4095
    assert hv.create_domain(layout="x86_32").max_evtchn_port == 1023
    d, f = fifo_domain(hv, vcpus=1)
    assert d.max_evtchn_port == 4095  # still what was configured (None)
    e, _ = fifo_domain(hv, vcpus=1, max_evtchn_port=70)
    assert e.max_evtchn_port == 70
    assert [e.bind_ipi(0) for _ in range(70)] == list(range(1, 71))
    assert errno_of(e.bind_ipi, 0) == errno.ENOSPC  # an explicit limit still applies


def test_2l_domain_stops_at_4095_fifo_goes_on(xe, hv):
    d = hv.create_domain(vcpus=1)
    assert [d.bind_ipi(0) for _ in range(4095)][-1] == 4095
    assert errno_of(d.bind_ipi, 0) == errno.ENOSPC
    assert errno_of(d.status, 4096) == errno.EINVAL  # not valid (64-port buckets)
    Fifo(d).init(0)
    assert d.bind_ipi(0) == 4096  # FIFO: up to 131071
    assert d.status(4159).status == xe.EVTCHNSTAT_closed  # bucket 4096..4159 now valid
    assert errno_of(d.status, 4160) == errno.EINVAL
