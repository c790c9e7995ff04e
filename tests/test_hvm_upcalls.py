"""Domain types and HVM/PVH upcall delivery (spec xen-hvm-and-beyond §1, §2, §8, §10;
issue 19 items 1 and 2), on both implementations.

Every expectation comes from the spec: the check order of each new call, the four cases
of ``hvm_assert_evtchn_irq`` in order, the level-triggered GSI/INTx line that only a VM
exit lowers, the hook sequences, and the traps of §10 one by one.
"""

from __future__ import annotations

import errno
import struct

import pytest

from hvhelpers import raises_errno

GSI_TYPE, INTX_TYPE, VECTOR_TYPE = 0, 1, 2
VEC = 0xF3  # Linux's HYPERVISOR_CALLBACK_VECTOR


def via(kind, low):
    return (kind << 56) | low


def param_buf(index, value=0, domid=0x7FF0):
    return bytearray(struct.pack("<HHIQ", domid, 0, index, value))


def vector_buf(vcpu, vector):
    return bytearray(struct.pack("<IB3x", vcpu, vector))


@pytest.fixture
def log(hv):
    """Every hook call in order: ("kick"|"wake", vcpu), ("int", vcpu, vector),
    ("gsi", domid, gsi, level)."""
    calls = []  # dom0's own kicks (its bind_interdomain ports start pending) are left out
    hv.on_kick = lambda v: v.domain.domid and calls.append(("kick", v.id))
    hv.on_wake = lambda v: v.domain.domid and calls.append(("wake", v.id))
    hv.on_interrupt = lambda v, vec: calls.append(("int", v.id, vec))
    hv.on_gsi = lambda d, gsi, level: calls.append(("gsi", d.domid, gsi, level))
    return calls


@pytest.fixture
def dom0(hv):
    return hv.create_domain(vcpus=2, privileged=True)


def hvm_guest(hv, dom0, type="hvm", vcpus=2):
    """An HVM/PVH guest with one interdomain channel per vCPU from dom0.
    Returns (guest, [guest port per vCPU], [dom0 port per vCPU])."""
    g = hv.create_domain(vcpus=vcpus, type=type)
    gports, dports = [], []
    for v in range(vcpus):
        p = g.alloc_unbound(dom0.domid)
        g.bind_vcpu(p, v)
        gports.append(p)
        dports.append(dom0.bind_interdomain(g.domid, p))
    return g, gports, dports


def clear_upcall(g, vcpu=0):
    """The guest takes its upcall on ``vcpu`` (clears the flag and handles the ports)."""
    g.guest.do_upcall(vcpu)


# ---- §1: types, limits, initial shared_info ---------------------------------------------

def test_constants(xe):
    assert (xe.HVMOP_set_param, xe.HVMOP_get_param, xe.HVMOP_set_evtchn_upcall_vector) == (0, 1, 23)
    assert (xe.HVM_PARAM_CALLBACK_IRQ, xe.HVM_NR_PARAMS) == (0, 39)
    assert (xe.HVM_PARAM_CALLBACK_TYPE_GSI, xe.HVM_PARAM_CALLBACK_TYPE_PCI_INTX,
            xe.HVM_PARAM_CALLBACK_TYPE_VECTOR, xe.HVM_PARAM_CALLBACK_TYPE_PPI) == (0, 1, 2, 2)
    assert xe.GUEST_EVTCHN_PPI == 31
    assert (xe.HVM_MAX_VCPUS, xe.MAX_VIRT_CPUS) == (128, 8192)


def test_types(hv):
    assert hv.create_domain().type == "pv"
    assert hv.create_domain(type=None).type == "pv"
    for t in ("pv", "hvm", "pvh"):
        assert hv.create_domain(type=t).type == t
    for bad in ("HVM", "arm", "", 1, b"hvm"):
        with pytest.raises(ValueError):
            hv.create_domain(type=bad)


@pytest.mark.parametrize("t,limit", [("pv", 8192), ("hvm", 128), ("pvh", 128)])
def test_vcpu_limits(hv, t, limit):
    for n in (0, -1, limit + 1):
        with pytest.raises(ValueError):
            hv.create_domain(vcpus=n, type=t)
    assert len(hv.create_domain(vcpus=32, type=t).vcpus) == 32


@pytest.mark.parametrize("t,mask", [("pv", 1), ("hvm", 0), ("pvh", 0)])
@pytest.mark.parametrize("layout,size", [("x86_64", 64), ("x86_32", 64)])
def test_initial_shared_info(xe, hv, t, mask, layout, size):
    page = bytearray(b"\xff" * 4096)
    d = hv.create_domain(vcpus=2, type=t, layout=layout, shared_info=page)
    assert [d.vcpus[v].upcall_mask for v in range(2)] == [mask] * 2
    for slot in range(32):   # every legacy slot, not only the domain's vCPUs
        info = page[slot * size:(slot + 1) * size]
        assert info[1] == mask and info[0] == 0 and not any(info[2:])
    assert not any(page[32 * size:xe.SHARED_INFO_SIZE[layout]])


# ---- §2.4: HVMOP_set_param / get_param ---------------------------------------------------

def test_param_roundtrip_and_echo(hv, dom0):
    g = hv.create_domain(type="hvm")
    assert g.get_hvm_param(0) == 0
    assert g.hvm_op(0, param_buf(0, via(VECTOR_TYPE, VEC))) == 0
    buf = param_buf(0, 0xDEAD)
    buf += b"\xaa" * 4  # bytes past the struct stay as they were
    assert g.hvm_op(1, buf) == 0
    assert struct.unpack_from("<HHIQ", buf) == (0x7FF0, 0, 0, via(VECTOR_TYPE, VEC))
    assert buf[16:] == b"\xaa" * 4
    assert g.get_hvm_param(0) == via(VECTOR_TYPE, VEC)
    # dom0 (privileged) may set and read another domain's parameter
    dom0.set_hvm_param(0, 7, dom=g.domid)
    assert dom0.get_hvm_param(0, dom=g.domid) == 7 == g.get_hvm_param(0)


@pytest.mark.parametrize("cmd", [0, 1])
def test_param_check_order(hv, dom0, cmd):
    g = hv.create_domain(type="hvm")
    other = hv.create_domain(type="hvm")
    pv = hv.create_domain()
    # 1. copy-in fault first, whatever the fields say
    assert g.hvm_op(cmd, bytearray(15)) == -errno.EFAULT
    # 2. index >= 39 before the domain lookup
    assert g.hvm_op(cmd, param_buf(39, domid=0x1234)) == -errno.EINVAL
    # 3. unknown domain
    assert g.hvm_op(cmd, param_buf(0, domid=0x1234)) == -errno.ESRCH
    # 4. a PV target (itself or another), before the permission check
    assert pv.hvm_op(cmd, param_buf(0)) == -errno.EINVAL
    assert g.hvm_op(cmd, param_buf(0, domid=pv.domid)) == -errno.EINVAL
    # 5. an unprivileged caller naming another domain
    assert g.hvm_op(cmd, param_buf(0, domid=other.domid)) == -errno.EPERM
    assert pv.hvm_op(cmd, param_buf(0, domid=g.domid)) == -errno.EPERM
    # naming itself by id works like DOMID_SELF
    assert g.hvm_op(cmd, param_buf(0, domid=g.domid)) == 0
    assert dom0.hvm_op(cmd, param_buf(0, domid=g.domid)) == 0


def test_param_wrappers(hv):
    g = hv.create_domain(type="hvm")
    pv = hv.create_domain()
    with raises_errno(hv_module(hv), errno.EINVAL):
        pv.set_callback_via(via(VECTOR_TYPE, VEC))
    with raises_errno(hv_module(hv), errno.EINVAL):
        pv.get_hvm_param(0)
    with raises_errno(hv_module(hv), errno.EINVAL):
        g.set_hvm_param(39, 0)
    with raises_errno(hv_module(hv), errno.ESRCH):
        g.get_hvm_param(0, dom=0x1234)
    for bad in (-1, 2**64):
        with pytest.raises((ValueError, OverflowError)):
            g.set_hvm_param(0, bad)
    with pytest.raises(TypeError):
        g.set_hvm_param(0, "1")
    with pytest.raises(TypeError):
        g.hvm_op(0, bytes(16))   # read-only buffer
    assert g.hvm_op(2, bytearray(64)) == -errno.ENOSYS


def hv_module(hv):
    import importlib
    return importlib.import_module(type(hv).__module__.rsplit(".", 1)[0])


def test_other_params_are_stored_without_effect(hv, log):
    g = hv.create_domain(type="hvm")
    g.set_hvm_param(38, 123)
    assert g.get_hvm_param(38) == 123 and log == []


# ---- §2.5: HVMOP_set_evtchn_upcall_vector ------------------------------------------------

def test_upcall_vector_check_order(hv, log):
    g = hv.create_domain(vcpus=2, type="hvm")
    pv = hv.create_domain()
    # 1. not HVM/PVH, before copy-in
    assert pv.hvm_op(23, bytearray(0)) == -errno.EINVAL
    assert pv.hvm_op(23, vector_buf(0, VEC)) == -errno.EINVAL
    # 2. copy-in fault
    assert g.hvm_op(23, bytearray(7)) == -errno.EFAULT
    # 3. vector < 0x10 before the vCPU check
    assert g.hvm_op(23, vector_buf(99, 0x0F)) == -errno.EINVAL
    # 4. no such vCPU
    assert g.hvm_op(23, vector_buf(2, 0x10)) == -errno.ENOENT
    assert log == [] and [v.upcall_vector for v in g.vcpus] == [0, 0]
    assert g.hvm_op(23, vector_buf(1, 0x10)) == 0
    assert g.vcpus[1].upcall_vector == 0x10 and pv.vcpus[0].upcall_vector == 0


def test_upcall_vector_injects_at_once_and_can_change(hv, log):
    g = hv.create_domain(vcpus=2, type="pvh")
    assert g.vcpus[1].upcall_pending == 0
    g.set_upcall_vector(1, VEC)
    assert log == [("int", 1, VEC)]   # spurious by design: the flag is not looked at
    g.set_upcall_vector(1, 0x20)
    assert log[-1] == ("int", 1, 0x20) and g.vcpus[1].upcall_vector == 0x20
    with raises_errno(hv_module(hv), errno.EINVAL):
        g.set_upcall_vector(1, 0)   # it can never be cleared
    assert g.vcpus[1].upcall_vector == 0x20
    with pytest.raises(ValueError):
        g.set_upcall_vector(0, 0x100)
    with raises_errno(hv_module(hv), errno.EINVAL):
        hv.create_domain().set_upcall_vector(0, VEC)


# ---- §2.3: the four cases in order ---------------------------------------------------------

def test_case1_per_vcpu_vector_wins(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(via(VECTOR_TYPE, 0x40))   # a vector callback too
    g.set_upcall_vector(0, VEC)
    log.clear()
    dom0.send(dp[0])
    assert log == [("int", 0, VEC)]
    dom0.send(dp[1])                # vCPU 1 has no own vector: the callback vector
    assert log[-1] == ("int", 1, 0x40)


def test_case2_vector_callback(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(via(VECTOR_TYPE, VEC))
    # configuring it asserts on every vCPU: nothing pending -> a kick with nothing to deliver
    assert log == [("kick", 0), ("kick", 1)]
    log.clear()
    dom0.send(dp[1])
    assert log == [("int", 1, VEC)]
    dom0.send(dp[1])                # flag still set: no 0 -> 1, no hook
    assert log == [("int", 1, VEC)]
    assert not g.callback_asserted


def test_case2_kick_when_vcpu0_has_vector_and_callback_is_gsi(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(5)
    g.set_upcall_vector(0, VEC)
    log.clear()
    dom0.send(dp[1])   # pv-evtchn domain, v1 has no vector, callback not a vector
    assert log == [("kick", 1)]


def test_case3_gsi_line_on_vcpu0(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(9)
    assert log == []
    dom0.send(dp[0])
    assert log == [("gsi", g.domid, 9, True)] and g.callback_asserted
    clear_upcall(g)                 # the guest clears the flag: the line stays up
    assert g.vcpus[0].upcall_pending == 0 and g.callback_asserted
    dom0.send(dp[0])                # 0 -> 1 again while high: no new edge
    assert log == [("gsi", g.domid, 9, True)]
    clear_upcall(g)
    g.vm_exit()
    assert log[-1] == ("gsi", g.domid, 9, False) and not g.callback_asserted
    g.vm_exit()
    assert len(log) == 2


def test_vm_exit_needs_vcpu0_flag_clear(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(9)
    dom0.send(dp[0])
    g.vm_exit()                     # flag still set: the line stays up
    assert g.callback_asserted and len(log) == 1


@pytest.mark.parametrize("call", ["status", "raw_send", "compat", "sched_yield", "hvm_op",
                                  "send_many", "short_raw", "set_param"])
def test_every_hypercall_is_a_vm_exit(hv, dom0, log, call):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(9)
    dom0.send(dp[0])
    clear_upcall(g)
    assert g.callback_asserted
    if call == "status":
        g.status(gp[0])
    elif call == "raw_send":
        assert g.event_channel_op(4, bytearray(struct.pack("<I", gp[1]))) == 0
    elif call == "compat":
        assert g.event_channel_op_compat(bytearray(27)) == -errno.EFAULT
    elif call == "sched_yield":
        assert g.sched_op(0, bytearray(8)) == 0
    elif call == "hvm_op":
        assert g.hvm_op(77, bytearray(16)) == -errno.ENOSYS
    elif call == "send_many":
        g.send_many([gp[1]])
    elif call == "short_raw":
        assert g.event_channel_op(4, bytearray(2)) == -errno.EFAULT
    elif call == "set_param":
        g.set_hvm_param(38, 1)
    assert log[1] == ("gsi", g.domid, 9, False) and not g.callback_asserted


def test_send_from_hvm_guest_lowers_then_raises(hv, dom0, log):
    """An HVM guest's send is a VM exit (the line drops) and the IPI it sends to vCPU 0
    raises the line again: down before up."""
    g = hv.create_domain(vcpus=2, type="hvm")
    ipi = g.bind_ipi(0)
    g.set_callback_via(9)
    g.send(ipi)
    clear_upcall(g)
    log.clear()
    g.send(ipi)
    assert log == [("gsi", g.domid, 9, False), ("gsi", g.domid, 9, True)]


def test_vm_exit_is_a_no_op_for_pv(hv, dom0, log):
    p = dom0.alloc_unbound(dom0.domid)
    dom0.vm_exit()
    assert not dom0.callback_asserted and log == []
    assert p


def test_case4_other_vcpus_reach_nobody(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    for cb in (0, 9, via(INTX_TYPE, 3 << 11)):
        g.set_callback_via(cb)
        log.clear()
        dom0.send(dp[1])
        assert log == []
        assert g.vcpus[1].upcall_pending == 1 and g.shared_info.is_pending(gp[1])
        assert g.guest.do_upcall(1) == [gp[1]]


# ---- §2.2: hvm_set_callback_via -------------------------------------------------------------

def test_asserted_tracked_without_callback_then_gsi_raises_at_once(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    dom0.send(dp[0])
    assert g.callback_asserted and log == []   # type none: nothing visible
    g.set_callback_via(11)
    assert log == [("gsi", g.domid, 11, True)]


def test_switching_lines_old_down_before_new_up(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(5)
    dom0.send(dp[0])
    g.set_callback_via(7)
    assert log == [("gsi", g.domid, 5, True), ("gsi", g.domid, 5, False), ("gsi", g.domid, 7, True)]
    log.clear()
    dev, intx = 3, 2
    g.set_callback_via(via(INTX_TYPE, (dev << 11) | intx | (0xFF << 16)))  # bus/domain ignored
    gsi = ((dev * 4 + dev // 8 + intx) & 31) + 16
    assert gsi == 30
    assert log == [("gsi", g.domid, 7, False), ("gsi", g.domid, gsi, True)]
    log.clear()
    g.set_callback_via(via(VECTOR_TYPE, VEC))   # the line goes down; vector delivery now
    assert log[0] == ("gsi", g.domid, gsi, False)
    assert ("int", 0, VEC) in log
    assert g.callback_asserted   # the flag is Xen's; only the visible line moved


def test_step5_lowers_line_when_vcpu0_flag_clear(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(5)
    dom0.send(dp[0])
    clear_upcall(g)
    log.clear()
    # Set by dom0, so no VM exit of the guest comes first: down 5, up 6, then vCPU 0's
    # assert at step 5 reads the flag (0) and lowers the new line.
    dom0.set_hvm_param(0, 6, dom=g.domid)
    assert log == [("gsi", g.domid, 5, False), ("gsi", g.domid, 6, True), ("gsi", g.domid, 6, False)]
    assert not g.callback_asserted


def test_guest_setting_its_via_exits_first(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(5)
    dom0.send(dp[0])
    clear_upcall(g)
    log.clear()
    g.set_callback_via(6)   # the hypercall's VM exit lowers 5; nothing is asserted after
    assert log == [("gsi", g.domid, 5, False)] and not g.callback_asserted


def test_only_the_low_byte_is_the_gsi(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(0x1_0000_0105)
    dom0.send(dp[0])
    assert log == [("gsi", g.domid, 5, True)]
    assert g.get_hvm_param(0) == 0x1_0000_0105


@pytest.mark.parametrize("value", [0x100, 48, 0xFF, via(3, 5), via(0xFF, 5), 0])
def test_values_that_decode_to_none(hv, dom0, log, value):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_callback_via(value)
    dom0.send(dp[0])
    assert log == [] and g.callback_asserted
    assert g.get_hvm_param(0) == value


def test_pvh_ignores_gsi_intx_and_zero(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0, type="pvh")
    g.set_callback_via(via(VECTOR_TYPE, VEC))
    log.clear()
    for value in (5, via(INTX_TYPE, 1 << 11), 0):
        g.set_callback_via(value)            # succeeds, reads back, changes nothing
        assert g.get_hvm_param(0) == value
        assert log == []
        dom0.send(dp[1])
        assert log == [("int", 1, VEC)]     # still the vector callback
        clear_upcall(g, 1)
        log.clear()


def test_linux6_setup_never_drives_gsi1(hv, dom0, log):
    """Linux >= 6.0: vector 0xF3 on every CPU, then CALLBACK_IRQ = 1 on CPU 0 (§2.5)."""
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_upcall_vector(0, VEC)
    g.set_upcall_vector(1, VEC)
    log.clear()
    g.set_callback_via(1)
    assert log == [("int", 0, VEC), ("int", 1, VEC)]
    log.clear()
    for p in dp:
        dom0.send(p)
    assert log == [("int", 0, VEC), ("int", 1, VEC)]
    assert not any(c[0] == "gsi" for c in log)


# ---- §2.6: the mask means nothing; poll ---------------------------------------------------

def test_mask_is_ignored_for_hvm_delivery(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    g.set_upcall_vector(0, VEC)
    g.shared_info.buffer[1] = 1   # the guest sets its mask byte
    log.clear()
    dom0.send(dp[0])
    assert log == [("int", 0, VEC)]


def test_poll_needs_delivery_hvm_vector(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    other = g.alloc_unbound(dom0.domid)
    g.set_upcall_vector(0, VEC)
    dom0.send(dp[0])
    g.shared_info.buffer[1] = 1   # masked: ignored for HVM
    assert g.sched_poll([other]) is True
    assert not g.vcpus[0].polling


def test_poll_gsi_callback_never_needs_delivery(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    other = g.alloc_unbound(dom0.domid)
    g.set_callback_via(5)
    dom0.send(dp[1])
    assert g.vcpus[1].upcall_pending
    assert g.sched_poll([other], vcpu=1) is False
    assert g.vcpus[1].polling


def test_line_case_kick_does_not_end_poll(hv, dom0, log):
    """Case 4: an event for vCPU 1 under a GSI callback sets its flag but does not kick
    it, so its poll of another port goes on."""
    g, gp, dp = hvm_guest(hv, dom0)
    other = g.alloc_unbound(dom0.domid)
    g.set_callback_via(5)
    assert g.sched_poll([other], vcpu=1) is False
    log.clear()
    dom0.send(dp[1])
    assert g.vcpus[1].polling and log == []
    # the polled port itself still wakes it (check_pollers)
    g.close(other)


def test_vector_injection_wakes_poller(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0)
    other = g.alloc_unbound(dom0.domid)
    g.set_callback_via(via(VECTOR_TYPE, VEC))
    assert g.sched_poll([other], vcpu=1) is False
    log.clear()
    dom0.send(dp[1])
    assert log == [("int", 1, VEC), ("wake", 1)] and not g.vcpus[1].polling
    assert g.sched_poll([other], vcpu=0) is False
    log.clear()
    g.set_upcall_vector(0, 0x30)   # injection on set: wakes vCPU 0 too
    assert log == [("int", 0, 0x30), ("wake", 0)] and not g.vcpus[0].polling


# ---- hooks: exceptions, guest side ---------------------------------------------------------

def test_raising_on_gsi_after_state_change_and_other_hooks(hv, dom0):
    g, gp, dp = hvm_guest(hv, dom0)
    seen = []

    def bad_gsi(d, gsi, level):
        seen.append((gsi, level))
        raise RuntimeError("gsi")

    hv.on_gsi = bad_gsi
    hv.on_interrupt = lambda v, vec: seen.append(("int", v.id))
    g.set_upcall_vector(1, VEC)
    g.set_callback_via(5)
    assert seen == [("int", 1), ("int", 1)]   # on set, and at the via's step 5
    seen.clear()
    dom0_port = dp[0]
    with pytest.raises(RuntimeError):
        dom0.send(dom0_port)
    assert seen == [(5, True)] and g.callback_asserted
    clear_upcall(g)
    with pytest.raises(RuntimeError):
        g.set_callback_via(6)   # old down raises; the new via is still in place
    assert g.get_hvm_param(0) == 6
    assert seen[1:] == [(5, False), ("int", 1)]
    assert not g.callback_asserted


def test_guest_handles_hvm_upcalls_like_pv(hv, dom0, log):
    g, gp, dp = hvm_guest(hv, dom0, vcpus=1)
    g.set_callback_via(via(VECTOR_TYPE, VEC))
    extra = [g.alloc_unbound(dom0.domid) for _ in range(3)]
    dextra = [dom0.bind_interdomain(g.domid, p) for p in extra]
    clear_upcall(g)
    for p in dextra:
        dom0.send(p)
    got = []
    assert sorted(g.guest.do_upcall(0, handler=got.append)) == sorted(extra)
    assert got and g.vcpus[0].upcall_pending == 0


def test_two_hvm_domains_and_pv_side_by_side(hv, dom0, log):
    a, ap, adp = hvm_guest(hv, dom0)
    b, bp, bdp = hvm_guest(hv, dom0, type="pvh")
    a.set_callback_via(5)
    b.set_callback_via(via(VECTOR_TYPE, VEC))
    pv = hv.create_domain(vcpus=1)
    pp = pv.alloc_unbound(dom0.domid)
    pdp = dom0.bind_interdomain(pv.domid, pp)
    log.clear()
    dom0.send_many([adp[0], bdp[1], pdp])
    assert log == [("gsi", a.domid, 5, True), ("int", 1, VEC), ("kick", 0)]


# ---- §2.8: PIRQs on HVM ------------------------------------------------------------------

def test_hvm_pirqs_need_no_grant_and_share_nothing(xe, hv, dom0, log):
    a = hv.create_domain(type="hvm", nr_pirqs=64)
    b = hv.create_domain(type="pvh")
    with raises_errno(xe, errno.EINVAL):
        a.bind_pirq(64)                       # the range check still comes first
    with raises_errno(xe, errno.EPERM):
        a.bind_pirq(0)                        # PIRQ 0 is nobody's (API.md)
    pa = a.bind_pirq(10)                      # no grant needed
    pb = b.bind_pirq(10)                      # same number, no host IRQ, no EBUSY
    p0 = dom0.bind_pirq(10)                   # the PV domain's host IRQ is its own
    with raises_errno(xe, errno.EEXIST):
        a.bind_pirq(10, xe.BIND_PIRQ__WILL_SHARE)
    hv.send_pirq(a.domid, 10)
    assert a.shared_info.is_pending(pa) and not b.shared_info.is_pending(pb)
    a.close(pa)
    b.close(pb)
    dom0.close(p0)
    assert a.bind_pirq(10)
    pv = hv.create_domain()
    with raises_errno(xe, errno.EPERM):
        pv.bind_pirq(10)                      # PV still needs its grant


def test_hvm_pirq_close_leaves_pv_sharers_alone(xe, hv, dom0):
    """Found by the snapshot differential: an HVM domain's close of a PIRQ must not drop
    the host IRQ that PV domains share under the same number."""
    pv = hv.create_domain()
    hv.permit_pirq(pv.domid, 7)
    pv.bind_pirq(7, xe.BIND_PIRQ__WILL_SHARE)
    dom0.bind_pirq(7, xe.BIND_PIRQ__WILL_SHARE)
    g = hv.create_domain(type="hvm")
    g.close(g.bind_pirq(7))
    other = hv.create_domain()
    hv.permit_pirq(other.domid, 7)
    with raises_errno(xe, errno.EBUSY):
        other.bind_pirq(7)            # still shared by two PV domains that said WILL_SHARE
    if hasattr(hv, "snapshot"):
        type(hv).restore(hv.snapshot())
