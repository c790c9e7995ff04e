"""Headline behaviours of the pure-Python reference model (``xenevtchn.reference``).

Not exhaustive: the spec test-suite covers the rest. These pin the traps of spec §16 and
the semantics.md decisions the model implements.
"""

from __future__ import annotations

import errno
import struct
from array import array

import pytest

from xenevtchn import reference as ref

PENDING, MASK = 2048, 2560  # x86_64 shared_info offsets


def set_mask(d: ref.Domain, port: int) -> None:
    """Guest-side: set the 2-level mask bit of ``port``."""
    d.shared_info.buffer[MASK + port // 8] |= 1 << (port % 8)


def errno_of(fn, *args, **kwargs) -> int:
    with pytest.raises(ref.EvtchnError) as info:
        fn(*args, **kwargs)
    return info.value.errno


@pytest.fixture
def hv() -> ref.Hypervisor:
    return ref.Hypervisor()


@pytest.fixture
def dom0(hv: ref.Hypervisor) -> ref.Domain:
    return hv.create_domain(privileged=True)


@pytest.fixture
def domu(hv: ref.Hypervisor, dom0: ref.Domain) -> ref.Domain:
    return hv.create_domain(vcpus=2)


def test_exports() -> None:
    assert ref.EVTCHNOP_reset_cont == 14 and ref.VIRQ_TIMER == 0 and ref.NR_VIRQS == 24
    assert issubclass(ref.EvtchnError, OSError)
    for name in ("Hypervisor", "Domain", "Vcpu", "SharedInfo", "EvtchnStatus"):
        assert name in ref.__all__


def test_creation_initialises_shared_info(hv: ref.Hypervisor) -> None:
    page = bytearray(b"\xee" * 4096)
    d = hv.create_domain(vcpus=3, shared_info=page)
    d.shared_info.buffer[4000] = 0x42  # the shared_info lives in the caller's page
    assert page[4000] == 0x42 and d.shared_info.buffer.nbytes == 4096
    page[4000] = 0xEE
    assert all(page[64 * i : 64 * i + 2] == b"\x00\x01" for i in range(32))
    assert page[2048:3136] == bytes(1088) and page[3136:] == b"\xee" * (4096 - 3136)
    assert [(v.id, v.upcall_pending, v.upcall_mask, v.pending_sel, v.polling) for v in d.vcpus] == [
        (i, 0, 1, 0, False) for i in range(3)
    ]
    with pytest.raises(TypeError):
        hv.create_domain(shared_info=bytes(4096))
    with pytest.raises(ValueError):
        hv.create_domain(shared_info=bytearray(3135))


def test_port_validity_is_bucket_granular(domu: ref.Domain) -> None:
    assert domu.status(0) == ref.EvtchnStatus(ref.EVTCHNSTAT_closed, 0)
    assert domu.status(5).status == ref.EVTCHNSTAT_closed
    assert errno_of(domu.status, 64) == errno.EINVAL
    domu.unmask(63)
    assert errno_of(domu.unmask, 64) == errno.EINVAL
    assert errno_of(domu.close, 0) == errno.EINVAL
    ports = [domu.bind_ipi() for _ in range(64)]
    assert ports == list(range(1, 65)) and domu.valid_evtchns == 128
    domu.close(7)
    assert domu.bind_ipi() == 7  # lowest free port


def test_alloc_unbound_allocates_before_privilege_check(hv: ref.Hypervisor, dom0: ref.Domain) -> None:
    full = hv.create_domain(max_evtchn_port=1)
    other = hv.create_domain()
    full.alloc_unbound(0)
    assert errno_of(other.alloc_unbound, 0, dom=full.domid) == errno.ENOSPC
    assert errno_of(other.alloc_unbound, 0, dom=dom0.domid) == errno.EPERM
    port = dom0.alloc_unbound(ref.DOMID_SELF, dom=other.domid)  # remote = the caller
    assert other.status(port) == ref.EvtchnStatus(ref.EVTCHNSTAT_unbound, 0, dom=dom0.domid)


def test_bind_interdomain_pending_kick_and_close(hv: ref.Hypervisor, dom0: ref.Domain, domu: ref.Domain) -> None:
    kicks: list[ref.Vcpu] = []
    hv.on_kick = kicks.append
    remote = domu.alloc_unbound(dom0.domid)
    assert errno_of(dom0.bind_interdomain, domu.domid, 100) == errno.EINVAL
    local = dom0.bind_interdomain(domu.domid, remote)
    v0 = dom0.vcpus[0]
    assert dom0.shared_info.is_pending(local) and v0.upcall_pending == 1 and v0.pending_sel == 1
    assert kicks == [v0]
    assert dom0.status(local) == ref.EvtchnStatus(ref.EVTCHNSTAT_interdomain, 0, dom=domu.domid, port=remote)
    domu.send(remote)  # already pending: nothing more
    assert kicks == [v0]
    dom0.close(local)
    assert not dom0.shared_info.is_pending(local)
    assert domu.status(remote) == ref.EvtchnStatus(ref.EVTCHNSTAT_unbound, 0, dom=dom0.domid)
    before = bytes(domu.shared_info.buffer), bytes(dom0.shared_info.buffer)
    domu.send(remote)  # unbound: silently dropped
    assert (bytes(domu.shared_info.buffer), bytes(dom0.shared_info.buffer)) == before
    assert kicks == [v0]


def test_set_pending_masked_still_wakes_poller(hv: ref.Hypervisor, domu: ref.Domain) -> None:
    wakes: list[ref.Vcpu] = []
    hv.on_wake = wakes.append
    ipi = domu.bind_ipi(1)
    set_mask(domu, ipi)
    v1 = domu.vcpus[1]
    assert domu.sched_poll([ipi], vcpu=1) is False and v1.polling
    domu.send(ipi)
    assert domu.shared_info.is_pending(ipi) and v1.pending_sel == 0 and v1.upcall_pending == 0
    assert wakes == [v1] and not v1.polling
    # unmask hypercall: mask bit set -> selector + upcall; a second unmask does nothing
    domu.unmask(ipi)
    assert v1.pending_sel == 1 and v1.upcall_pending == 1
    domu.shared_info.buffer[64] = 0  # guest clears upcall_pending
    domu.unmask(ipi)
    assert v1.upcall_pending == 0


def test_poll_timeouts_are_absolute_and_stale(hv: ref.Hypervisor, domu: ref.Domain) -> None:
    wakes: list[ref.Vcpu] = []
    hv.on_wake = wakes.append
    ipi = domu.bind_ipi()
    other = domu.bind_ipi()
    v = domu.vcpus[0]
    hv.advance(1000)
    assert domu.sched_poll([ipi], timeout=1500) is False
    domu.send(other)  # upcall_mask is 1, but the kick ends the poll anyway
    assert not v.polling and wakes == [v]
    domu.shared_info.buffer[0] = 0  # guest acknowledges
    assert domu.sched_poll([ipi], timeout=0) is False  # no timeout: old deadline stays armed
    hv.advance(499)
    assert v.polling
    hv.advance(1)
    assert not v.polling and wakes == [v, v]
    assert domu.sched_poll([], timeout=hv.now) is False and not v.polling  # fires at once
    assert len(wakes) == 3
    domu.send(ipi)
    assert domu.sched_poll([other, ipi]) is True
    assert errno_of(domu.sched_poll, [ipi], vcpu=5) == errno.ENOENT
    assert errno_of(domu.sched_poll, [70]) == errno.EINVAL
    assert errno_of(domu.sched_poll, [ipi] * 129) == errno.EINVAL


def test_raw_hypercall_copy_in_copy_out(domu: ref.Domain) -> None:
    ipi = domu.bind_ipi(1)
    buf = bytearray(struct.pack("<H2xI", ref.DOMID_SELF, ipi) + b"\xaa" * 16 + b"tail")
    assert domu.event_channel_op(ref.EVTCHNOP_status, buf) == 0
    assert struct.unpack_from("<HII", buf, 0)[0] == ref.DOMID_SELF  # input echoed
    assert struct.unpack_from("<II", buf, 8) == (ref.EVTCHNSTAT_ipi, 1)
    assert buf[16:] == b"\xaa" * 8 + b"tail"  # union untouched for IPI
    failed = bytearray(struct.pack("<III", 99, 0, 0x12345678))
    assert domu.event_channel_op(ref.EVTCHNOP_bind_virq, failed) == -errno.EINVAL
    assert struct.unpack("<III", failed)[2] == 0x12345678  # no copy-back on failure
    assert domu.event_channel_op(ref.EVTCHNOP_status, bytearray(23)) == -errno.EFAULT
    for cmd in (15, -1):  # 11..13 are the FIFO commands (tests/test_fifo_*.py)
        assert domu.event_channel_op(cmd, bytearray(32)) == -errno.ENOSYS
    assert domu.event_channel_op(ref.EVTCHNOP_reset_cont, bytearray(b"\xf0\x7f")) == -errno.EBUSY
    with pytest.raises(TypeError):
        domu.event_channel_op(ref.EVTCHNOP_send, bytes(4))
    op = bytearray(28)
    struct.pack_into("<iI", op, 0, ref.EVTCHNOP_bind_ipi, 0)
    assert domu.event_channel_op_compat(op) == 0
    assert struct.unpack_from("<I", op, 8)[0] == ipi + 1
    struct.pack_into("<i", op, 0, ref.EVTCHNOP_reset)
    assert domu.event_channel_op_compat(op) == -errno.ENOSYS


def test_virq_rules(hv: ref.Hypervisor, dom0: ref.Domain, domu: ref.Domain) -> None:
    assert errno_of(domu.bind_virq, ref.VIRQ_CONSOLE) == errno.EBUSY  # not the handler
    assert errno_of(domu.bind_virq, ref.VIRQ_CONSOLE, 1) == errno.EINVAL
    assert errno_of(domu.bind_virq, ref.VIRQ_TIMER, 2) == errno.ENOENT
    argo = domu.bind_virq(ref.VIRQ_ARGO)  # per-domain: anyone
    timer = domu.bind_virq(ref.VIRQ_TIMER, 1)
    assert errno_of(domu.bind_virq, ref.VIRQ_TIMER, 1) == errno.EEXIST
    assert errno_of(domu.bind_vcpu, timer, 0) == errno.EINVAL
    assert errno_of(domu.bind_vcpu, 200, 7) == errno.ENOENT  # vCPU checked before port
    domu.bind_vcpu(argo, 1)
    hv.send_virq(domu.domid, ref.VIRQ_ARGO)
    assert domu.vcpus[1].pending_sel == 1 and domu.vcpus[0].pending_sel == 0
    console = dom0.bind_virq(ref.VIRQ_CONSOLE)
    assert errno_of(hv.set_virq_handler, ref.VIRQ_CONSOLE, domu.domid) == errno.EBUSY
    hv.send_global_virq(ref.VIRQ_CONSOLE)
    assert dom0.shared_info.is_pending(console)
    assert errno_of(domu.send, console) == errno.EINVAL


def test_pirq_permission_and_sharing(hv: ref.Hypervisor, dom0: ref.Domain, domu: ref.Domain) -> None:
    other = hv.create_domain()
    assert errno_of(domu.bind_pirq, 9) == errno.EPERM
    assert errno_of(domu.bind_pirq, 256) == errno.EINVAL
    hv.permit_pirq(domu.domid, 9)
    hv.permit_pirq(other.domid, 9)
    port = domu.bind_pirq(9, ref.BIND_PIRQ__WILL_SHARE)
    assert errno_of(domu.bind_pirq, 9) == errno.EEXIST
    assert errno_of(other.bind_pirq, 9, 0) == errno.EBUSY  # needs WILL_SHARE too
    other.bind_pirq(9, ref.BIND_PIRQ__WILL_SHARE)
    assert domu.status(port) == ref.EvtchnStatus(ref.EVTCHNSTAT_pirq, 0, pirq=9)
    hv.send_pirq(domu.domid, 9)
    assert domu.shared_info.is_pending(port)
    p200 = dom0.bind_pirq(200)  # privileged: any PIRQ
    assert dom0.status(p200) == ref.EvtchnStatus(ref.EVTCHNSTAT_pirq, 0, pirq=200)


def test_reset_and_destroy(hv: ref.Hypervisor, dom0: ref.Domain, domu: ref.Domain) -> None:
    remote = domu.alloc_unbound(dom0.domid)
    local = dom0.bind_interdomain(domu.domid, remote)
    assert errno_of(dom0.reset, domu.domid) == errno.EINVAL  # not paused
    assert errno_of(domu.reset, dom0.domid) == errno.EPERM
    hv.pause_domain(domu.domid)
    dom0.reset(domu.domid)
    assert domu.status(remote).status == ref.EVTCHNSTAT_closed
    assert dom0.status(local) == ref.EvtchnStatus(ref.EVTCHNSTAT_unbound, 0, dom=domu.domid)
    remote = domu.bind_interdomain(dom0.domid, local)
    hv.destroy_domain(domu.domid)
    assert dom0.status(local) == ref.EvtchnStatus(ref.EVTCHNSTAT_unbound, 0, dom=domu.domid)
    assert errno_of(domu.send, remote) == errno.ESRCH
    assert domu.event_channel_op(ref.EVTCHNOP_send, bytearray(4)) == -errno.ESRCH
    assert errno_of(hv.domain, domu.domid) == errno.ESRCH
    assert hv.create_domain().domid == domu.domid  # reused at once


def test_x86_32_layout(hv: ref.Hypervisor) -> None:
    d = hv.create_domain(vcpus=2, layout="x86_32", shared_info=bytearray(2344))
    ports = [d.bind_ipi(1) for _ in range(40)]
    d.send(ports[-1])  # port 40: word 1 of 32 bits
    info = d.shared_info.buffer
    assert d.vcpus[1].pending_sel == 0b10 and info[64 + 4] == 0b10
    assert info[2048 + 5] == 1 and d.shared_info.is_pending(40)
    assert d.shared_info.is_masked(1024) and not d.shared_info.is_pending(1024)


def test_wrapper_validation_and_send_many(domu: ref.Domain) -> None:
    with pytest.raises(TypeError):
        domu.send("1")
    with pytest.raises(ValueError):
        domu.send(2**32)
    with pytest.raises(ValueError):
        domu.alloc_unbound(0x10000)
    with pytest.raises(TypeError):
        domu.send_many(array("H", [1]))
    a, b = domu.bind_ipi(), domu.bind_ipi()
    with pytest.raises(ref.EvtchnError) as info:
        domu.send_many(array("I", [a, 63, b]))
    assert info.value.errno == errno.EINVAL
    assert domu.shared_info.is_pending(a) and not domu.shared_info.is_pending(b)


def test_status_equality_is_by_fields() -> None:
    class Other:
        status, vcpu, dom, port, pirq, virq = ref.EVTCHNSTAT_ipi, 0, None, None, None, None

    assert ref.EvtchnStatus(ref.EVTCHNSTAT_ipi, 0) == Other()
    assert ref.EvtchnStatus(ref.EVTCHNSTAT_ipi, 1) != Other()
    with pytest.raises(AttributeError):
        ref.EvtchnStatus(ref.EVTCHNSTAT_ipi, 0).vcpu = 1  # type: ignore[misc]
