"""Raw ``d.sched_op(cmd, arg, vcpu)`` (spec xen-hvm-and-beyond §5, issue 19 item 5) on both
implementations: the commands, ``struct sched_poll`` in each layout, the port array read
from guest memory with the PV fault order, and the state the call leaves.
"""

from __future__ import annotations

import errno
import struct

import pytest

GIB = 1 << 30  # default guest memory: 262144 frames


def poll_arg(addr, nr, timeout=0, layout="x86_64"):
    if layout == "x86_64":
        return bytearray(struct.pack("<QI4xQ", addr, nr, timeout))
    return bytearray(struct.pack("<IIQ", addr, nr, timeout))


def put_ports(d, addr, ports):
    """Write the uint32 array byte by byte (it may cross a frame boundary)."""
    raw = b"".join(struct.pack("<I", p) for p in ports)
    for i, b in enumerate(raw):
        gfn, off = divmod(addr + i, 4096)
        d.memory.page(gfn)[off] = b


@pytest.fixture
def d(hv):
    hv.create_domain(privileged=True)
    return hv.create_domain(vcpus=2)


def test_constants(xe):
    assert (xe.SCHEDOP_yield, xe.SCHEDOP_block, xe.SCHEDOP_poll) == (0, 1, 3)
    assert xe.SCHED_POLL_SIZE == {"x86_64": 24, "x86_32": 16}


def test_yield_returns_0_and_does_nothing(hv, d, hooks):
    for arg in (bytearray(), bytearray(3), poll_arg(0, 1)):
        assert d.sched_op(0, arg) == 0
    assert d.sched_op(0, bytearray(), vcpu=1) == 0
    assert hooks == [] and not any(v.polling for v in d.vcpus)


@pytest.mark.parametrize("cmd", [1, 2, 4, 5, 99, -1, 2**31])
def test_other_commands_are_enosys(d, cmd):
    assert d.sched_op(cmd, poll_arg(4096, 1)) == -errno.ENOSYS
    assert not d.vcpus[0].polling


@pytest.mark.parametrize("arg, exc", [
    (b"\0" * 24, TypeError), (None, TypeError), ([0] * 24, TypeError), ("x" * 24, TypeError),
    (memoryview(bytes(24)), TypeError),
])
def test_arg_must_be_a_writable_buffer(d, arg, exc):
    with pytest.raises(exc):
        d.sched_op(3, arg)
    with pytest.raises(exc):
        d.sched_op(0, arg)


@pytest.mark.parametrize("kw", [dict(cmd=3.0), dict(cmd="3"), dict(vcpu=0.0), dict(vcpu=None)])
def test_cmd_and_vcpu_must_be_ints(d, kw):
    args = dict(cmd=3, arg=poll_arg(0, 0), vcpu=0) | kw
    with pytest.raises(TypeError):
        d.sched_op(**args)
    assert not d.vcpus[0].polling


def test_a_vcpu_that_does_not_exist(d):
    assert d.sched_op(3, poll_arg(0, 0), vcpu=2) == -errno.ENOENT
    assert d.sched_op(0, bytearray(), vcpu=-1) == -errno.ENOENT


def test_destroyed_domain_is_esrch(hv, d):
    hv.destroy_domain(d.domid)
    assert d.sched_op(3, poll_arg(0, 0)) == -errno.ESRCH


@pytest.mark.parametrize("layout, size", [("x86_64", 24), ("x86_32", 16)])
def test_short_struct_is_efault_with_no_effect(hv, layout, size, hooks):
    d = hv.create_domain(layout=layout)
    p = d.bind_ipi(0)
    put_ports(d, 4096, [p])
    for n in (0, 1, size - 1):
        assert d.sched_op(3, poll_arg(4096, 1, layout=layout)[:n]) == -errno.EFAULT
    assert not d.vcpus[0].polling and hooks == []
    assert d.sched_op(3, poll_arg(4096, 1, layout=layout)) == 0     # the whole struct: blocks
    assert d.vcpus[0].polling


def test_x86_32_layout_reads_a_32_bit_handle_and_a_timeout_at_8(hv, hooks):
    d = hv.create_domain(layout="x86_32")
    p = d.bind_ipi(0)
    put_ports(d, 8192 + 12, [p])
    arg = bytearray(struct.pack("<IIQ", 8192 + 12, 1, 500))
    assert d.sched_op(3, arg) == 0 and d.vcpus[0].polling
    hv.advance(499)
    assert d.vcpus[0].polling
    hv.advance(1)
    assert not d.vcpus[0].polling and hooks == [("wake", 0)]


def test_more_than_128_ports_is_einval_before_any_fault(d):
    assert d.sched_op(3, poll_arg(2**63, 129)) == -errno.EINVAL
    assert d.sched_op(3, poll_arg(2**63, 0xFFFFFFFF)) == -errno.EINVAL
    assert not d.vcpus[0].polling


def test_pv_handle_fault_comes_before_already_pending(d):
    p = d.bind_ipi(0)
    d.send(p)
    d.shared_info.buffer[1] = 1                  # upcalls masked: only the ports decide
    addr = GIB - 4                               # entry 0 readable, entry 1 past the end
    put_ports(d, addr, [p])
    assert d.sched_op(3, poll_arg(addr, 2)) == -errno.EFAULT
    assert d.sched_op(3, poll_arg(addr, 1)) == 0  # the whole range fits: pending, returns
    assert not d.vcpus[0].polling


def test_pv_handle_fault_comes_before_local_events(d):
    d.shared_info.buffer[0] = 1                  # upcall_pending,
    d.shared_info.buffer[1] = 0                  # unmasked (a PV vCPU starts masked)
    assert d.sched_op(3, poll_arg(GIB, 1)) == -errno.EFAULT
    assert d.sched_op(3, poll_arg(2**64 - 4, 2)) == -errno.EFAULT  # wraps: still outside
    assert d.sched_op(3, poll_arg(0, 1)) == 0     # readable: events need delivery, returns
    assert not d.vcpus[0].polling


def test_no_ports_reads_no_memory(d):
    d.shared_info.buffer[1] = 1
    assert d.sched_op(3, poll_arg(2**64 - 1, 0)) == 0
    assert d.vcpus[0].polling


def test_ports_array_spanning_frames(d, hooks):
    a, b = d.bind_ipi(0), d.bind_ipi(1)
    d.shared_info.buffer[1] = 1
    addr = 5 * 4096 - 2                          # entry 0 straddles frames 4 and 5
    put_ports(d, addr, [a, b])
    assert d.sched_op(3, poll_arg(addr, 2)) == 0 and d.vcpus[0].polling
    d.send(b)                                    # any polled port wakes it (several ports)
    assert not d.vcpus[0].polling and ("wake", 0) in hooks


def test_entries_after_the_first_pending_are_never_checked(d):
    p = d.bind_ipi(0)
    d.send(p)
    d.shared_info.buffer[1] = 1
    put_ports(d, 4096, [p, 4000, 2**32 - 1])      # invalid ports after the pending one
    assert d.sched_op(3, poll_arg(4096, 3)) == 0
    assert not d.vcpus[0].polling


def test_an_invalid_port_is_einval_and_undoes_the_block(d):
    p = d.bind_ipi(0)
    d.shared_info.buffer[1] = 1
    for bad in (0, 4096, 2**32 - 1, p + 1):
        put_ports(d, 4096, [p, bad])
        assert d.sched_op(3, poll_arg(4096, 2)) == -errno.EINVAL
        assert not d.vcpus[0].polling


def test_single_port_poll_is_woken_by_that_port_only(d, hooks):
    a, b = d.bind_ipi(1), d.bind_ipi(0)          # b: no kick for vCPU 1 (a kick ends a poll)
    put_ports(d, 4096, [a])
    d.shared_info.buffer[64 + 1] = 1              # vCPU 1's upcall mask
    assert d.sched_op(3, poll_arg(4096, 1), vcpu=1) == 0 and d.vcpus[1].polling
    d.send(b)
    assert d.vcpus[1].polling
    d.send(a)
    assert not d.vcpus[1].polling and hooks[-1] == ("wake", 1)


def test_a_blocked_vcpu_cannot_poll_again(d):
    d.shared_info.buffer[1] = 1
    assert d.sched_op(3, poll_arg(0, 0)) == 0
    assert d.sched_op(3, poll_arg(0, 0)) == -errno.EBUSY


def test_timeout_is_absolute_and_one_already_reached_wakes_at_once(hv, d, hooks):
    d.shared_info.buffer[1] = 1
    hv.advance(100)
    assert d.sched_op(3, poll_arg(0, 0, timeout=100)) == 0
    assert not d.vcpus[0].polling and hooks == [("wake", 0)]


def test_untouched_frames_read_as_zero_and_stay_unallocated():
    import xenevtchn as xe

    hv = xe.Hypervisor()
    d = hv.create_domain()
    before = hv.snapshot()
    assert d.sched_op(3, poll_arg(77 * 4096, 3)) == -errno.EINVAL   # port 0 read: invalid
    assert hv.snapshot() == before


def test_same_state_as_sched_poll(xe):
    """The raw call and the wrapper reach the same state (checked through a snapshot)."""
    import xenevtchn as native

    def run(raw):
        hv = native.Hypervisor()
        d = hv.create_domain(vcpus=2)
        ports = [d.bind_ipi(1) for _ in range(3)]
        put_ports(d, 8192, ports[:1])
        d.shared_info.buffer[65] = 1
        if raw:
            assert d.sched_op(3, poll_arg(8192, 1, timeout=50), vcpu=1) == 0
        else:
            assert d.sched_poll(ports[:1], timeout=50, vcpu=1) is False
        return hv.snapshot()

    assert run(True) == run(False)


def test_raw_poll_on_a_masked_upcall_pending_vcpu_blocks(d):
    p = d.bind_ipi(0)
    d.shared_info.buffer[0] = 1
    d.shared_info.buffer[1] = 1                  # pending but masked: not "needs delivery"
    put_ports(d, 4096, [p])
    assert d.sched_op(3, poll_arg(4096, 1)) == 0 and d.vcpus[0].polling
