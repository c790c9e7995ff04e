"""Bad input everywhere it enters, one test per family: wrong types, out-of-range numbers,
foreign buffers, closed handles, destroyed domains, and the shared-page helper.

Each bad call must answer with a clear exception (``TypeError`` for a non-int or a non-
buffer, ``ValueError``/``OverflowError`` for a number that does not fit, ``EvtchnError``
where Xen itself would fail the call) and change nothing: a digest of the whole world
(every live domain's shared_info bytes and every valid port's public status, pollers,
pause counts, PIRQ permissions, VIRQ handlers, handle queues, simulated time) is
compared before and after. ``bool`` counts as an int everywhere (docs/semantics.md), so
it is a good value, checked once for consistency. (test_fuzz_entry covers the same rules
for the raw entry points with generated values; the CLI and snapshots are covered
elsewhere.)
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from array import array
from multiprocessing import shared_memory
from typing import Any, Callable

import numpy as np
import pytest

import xenevtchn as xe
from xenevtchn.shared_page import SharedPage

U16, U32 = 0xFFFF, 0xFFFFFFFF
NON_INTS = [None, 1.5, "1", b"1", [1], object()]
NEGATIVE_AND_HUGE = [-1, 2**64, -(2**70)]


# ---------------------------------------------------------------- the world and its digest


def busy_world():
    """Channels of every kind, pending and masked bits, a poller, a handle, a pause."""
    hv = xe.Hypervisor()
    d0 = hv.create_domain(vcpus=2, privileged=True)
    d1 = hv.create_domain(vcpus=3)
    d2 = hv.create_domain(layout="x86_32")
    hv.permit_pirq(1, 5)
    p = d1.alloc_unbound(0)
    d0.bind_interdomain(1, p)
    d1.bind_virq(xe.VIRQ_TIMER, 2)
    d0.bind_virq(xe.VIRQ_CONSOLE)
    d1.bind_pirq(5)
    ipi = d2.bind_ipi(0)
    d2.send(ipi)
    d1.guest.mask(7)
    d2.alloc_unbound(1)
    d0.sched_poll([d0.bind_ipi(1)], vcpu=1)
    h = xe.XenEvtchn(d0)
    hp = h.bind_unbound_port(1)
    d1.send(d1.bind_interdomain(0, hp))
    hv.pause_domain(2)
    hv.advance(10)
    return hv, (d0, d1, d2), h


@pytest.fixture
def world():
    """busy_world(), its handle closed afterwards (a dropped handle keeps its fd)."""
    hv, doms, h = busy_world()
    yield hv, doms, h
    h.close()


def digest(hv, handles=()) -> list:
    out: list[Any] = [hv.now, tuple(d.domid for d in hv.domains),
                      sorted((v, d.domid) for v, d in hv._virq_handlers.items())]
    for d in hv.domains:
        out += [bytes(d.shared_info.buffer), tuple(v.polling for v in d.vcpus),
                d._pause_count, tuple(sorted(d._permitted_pirqs))]
        port = 0
        while True:
            try:
                s = d.status(port)
            except xe.EvtchnError as e:
                assert e.errno == errno.EINVAL
                break
            out.append((port, int(s.status), s.vcpu, s.dom, s.port, s.pirq, s.virq))
            port += 1
    for h in handles:
        out.append((sorted(h._ports), int(xe._native.lib.xe_user_queued(h._u)) if h._fd is not None else None))
    return out


def expect(exc: type | tuple, fn: Callable[[], Any], hv, handles=(), err: int | None = None) -> Any:
    """``fn()`` raises ``exc`` (with errno ``err`` for EvtchnError) and changes nothing."""
    before = digest(hv, handles)
    with pytest.raises(exc) as info:
        fn()
    if err is not None:
        assert info.value.errno == err, info.value
    assert not isinstance(info.value, xe.EvtchnError) or exc is xe.EvtchnError or xe.EvtchnError in (
        exc if isinstance(exc, tuple) else (exc,)), f"EvtchnError where a type/range error is due: {info.value!r}"
    assert digest(hv, handles) == before, "a refused call changed the world"
    return info.value


def kind_of(v: Any, top: int) -> type:
    """What a wrapper must raise for ``v`` in a field whose maximum is ``top``."""
    if not isinstance(v, int):
        return TypeError
    assert not 0 <= v <= top
    return ValueError


# ---------------------------------------------------------------- family: numbers


def _int_cases():
    # (label, call(domain, guest domain, value), field maximum)
    fields = [
        ("alloc_unbound(v)", lambda d, g, v: d.alloc_unbound(v), U16),
        ("alloc_unbound(0, dom=v)", lambda d, g, v: d.alloc_unbound(0, dom=v), U16),
        ("bind_interdomain(v, 1)", lambda d, g, v: d.bind_interdomain(v, 1), U16),
        ("bind_interdomain(1, v)", lambda d, g, v: d.bind_interdomain(1, v), U32),
        ("bind_virq(v)", lambda d, g, v: d.bind_virq(v), U32),
        ("bind_virq(0, vcpu=v)", lambda d, g, v: d.bind_virq(0, v), U32),
        ("bind_pirq(v)", lambda d, g, v: d.bind_pirq(v), U32),
        ("bind_pirq(1, flags=v)", lambda d, g, v: d.bind_pirq(1, v), U32),
        ("bind_ipi(v)", lambda d, g, v: d.bind_ipi(v), U32),
        ("close(v)", lambda d, g, v: d.close(v), U32),
        ("status(v)", lambda d, g, v: d.status(v), U32),
        ("status(1, dom=v)", lambda d, g, v: d.status(1, dom=v), U16),
        ("bind_vcpu(v, 0)", lambda d, g, v: d.bind_vcpu(v, 0), U32),
        ("bind_vcpu(1, v)", lambda d, g, v: d.bind_vcpu(1, v), U32),
        ("unmask(v)", lambda d, g, v: d.unmask(v), U32),
        ("reset(v)", lambda d, g, v: d.reset(v), U16),
        ("send_many([1, v])", lambda d, g, v: d.send_many([1, v]), U32),
        ("sched_poll([v])", lambda d, g, v: d.sched_poll([v]), U32),
        ("sched_poll([1], timeout=v)", lambda d, g, v: d.sched_poll([1], timeout=v), 2**64 - 1),
        ("guest.mask(v)", lambda d, g, v: g.guest.mask(v), 4095),
        ("guest.unmask(v)", lambda d, g, v: g.guest.unmask(v), 4095),
        ("guest.unmask(1, vcpu=v)", lambda d, g, v: g.guest.unmask(1, vcpu=v), 2),
        ("guest.do_upcall(v)", lambda d, g, v: g.guest.do_upcall(v), 2),
        ("guest.cursor(v)", lambda d, g, v: g.guest.cursor(v), 2),
        ("shared_info.is_pending(v)", lambda d, g, v: g.shared_info.is_pending(v), 2**200),
        ("shared_info.mask(v)", lambda d, g, v: g.shared_info.mask(v), 4095),
        ("shared_info.set_pending(1, vcpu=v)", lambda d, g, v: g.shared_info.set_pending(1, v), 31),
        ("shared_info.upcall_pending(v)", lambda d, g, v: g.shared_info.upcall_pending(v), 31),
        ("shared_info.take_pending_sel(v)", lambda d, g, v: g.shared_info.take_pending_sel(v), 31),
    ]
    for label, fn, top in fields:
        for v in [*NON_INTS, *NEGATIVE_AND_HUGE, top + 1]:
            if label.startswith("shared_info.is_pending") and isinstance(v, int) and v > 0:
                continue                     # a port past the layout is simply not pending
            if label.startswith("guest.unmask(1,") and v is None:
                continue                     # None is the default: the port's own vCPU
            yield pytest.param(fn, v, kind_of(v, top), id=f"{label}-{v!r}"[:60])


@pytest.mark.parametrize(("fn", "value", "exc"), list(_int_cases()))
def test_numbers_and_types(fn, value, exc, world):
    """Every Domain wrapper, guest and SharedInfo call: a non-int is a TypeError, an int
    that does not fit its field a ValueError, before anything runs."""
    hv, (d0, d1, d2), h = world
    expect(exc, lambda: fn(d0, d1, value), hv, (h,))


@pytest.mark.parametrize("value", [*NON_INTS, -1, 2**32, 2**64])
def test_send_fast_path_numbers(value, world):
    """d.send: a non-int is a TypeError; an int outside the port field a ValueError (the
    one-argument fast path hands anything it cannot take to the checked method)."""
    hv, (d0, d1, d2), h = world
    expect(TypeError if not isinstance(value, int) else ValueError, lambda: d1.send(value), hv, (h,))


def test_sched_poll_vcpu_and_ports_shapes(world):
    hv, (d0, d1, d2), h = world
    for v in NON_INTS:
        expect(TypeError, lambda: d1.sched_poll([1], vcpu=v), hv, (h,))
    for v in (-1, 3, 2**40):              # an int vCPU that does not exist: Xen's ENOENT
        expect(xe.EvtchnError, lambda: d1.sched_poll([1], vcpu=v), hv, (h,), errno.ENOENT)
    for ports in (None, 5, 1.5, object()):
        expect(TypeError, lambda: d1.sched_poll(ports), hv, (h,))
    expect(xe.EvtchnError, lambda: d1.sched_poll(range(1, 130)), hv, (h,), errno.EINVAL)
    expect(xe.EvtchnError, lambda: d0.sched_poll([1], vcpu=1), hv, (h,), errno.EBUSY)


def test_bool_is_an_int_everywhere(world):
    """The one non-int type that is accepted, consistently with docs/semantics.md."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    assert d.bind_ipi(True) == 1 and d.status(1).vcpu == 1
    assert d.status(True) == d.status(1)
    d.guest.mask(True)
    assert d.shared_info.is_masked(1) and d.shared_info.is_masked(True)
    d.guest.unmask(True, vcpu=True)
    assert not d.shared_info.is_masked(1)
    d.send(True)
    assert d.shared_info.is_pending(True)
    assert d.guest.do_upcall(True) == [1]


def test_guest_handler_must_be_callable(world):
    hv, (d0, d1, d2), h = world
    for bad in (5, "f", [print]):
        expect(TypeError, lambda: d1.guest.do_upcall(0, bad), hv, (h,))


# ---------------------------------------------------------------- family: hypervisor


def _hv_cases():
    T, V, E = TypeError, ValueError, xe.EvtchnError
    cases = [
        ("create_domain(vcpus=0)", lambda hv: hv.create_domain(vcpus=0), V, None),
        ("create_domain(vcpus=8193)", lambda hv: hv.create_domain(vcpus=8193), V, None),
        ("create_domain(vcpus=1.0)", lambda hv: hv.create_domain(vcpus=1.0), T, None),
        ("create_domain(domid=-1)", lambda hv: hv.create_domain(domid=-1), V, None),
        ("create_domain(domid=0x7FF0)", lambda hv: hv.create_domain(domid=0x7FF0), V, None),
        ("create_domain(domid=2**64)", lambda hv: hv.create_domain(domid=2**64), V, None),
        ("create_domain(domid='3')", lambda hv: hv.create_domain(domid="3"), T, None),
        ("create_domain(domid=1) taken", lambda hv: hv.create_domain(domid=1), E, errno.EEXIST),
        ("create_domain(max_evtchn_port=-1)", lambda hv: hv.create_domain(max_evtchn_port=-1), V, None),
        ("create_domain(max_evtchn_port='9')", lambda hv: hv.create_domain(max_evtchn_port="9"), T, None),
        ("create_domain(layout='arm')", lambda hv: hv.create_domain(layout="arm"), V, None),
        ("create_domain(layout=None)", lambda hv: hv.create_domain(layout=None), V, None),
        ("create_domain(guest='bsd')", lambda hv: hv.create_domain(guest="bsd"), V, None),
        ("create_domain(guest=[])", lambda hv: hv.create_domain(guest=[]), T, None),
        ("domain(7)", lambda hv: hv.domain(7), E, errno.ESRCH),
        ("domain(-1)", lambda hv: hv.domain(-1), E, errno.ESRCH),
        ("destroy_domain(7)", lambda hv: hv.destroy_domain(7), E, errno.ESRCH),
        ("destroy_domain('1')", lambda hv: hv.destroy_domain("1"), T, None),
        ("pause_domain(None)", lambda hv: hv.pause_domain(None), T, None),
        ("unpause_domain(1) not paused", lambda hv: hv.unpause_domain(1), E, errno.EINVAL),
        ("permit_pirq(1, 256)", lambda hv: hv.permit_pirq(1, 256), V, None),
        ("permit_pirq(1, -1)", lambda hv: hv.permit_pirq(1, -1), V, None),
        ("permit_pirq(1, 'x')", lambda hv: hv.permit_pirq(1, "x"), T, None),
        ("permit_pirq(9, 1)", lambda hv: hv.permit_pirq(9, 1), E, errno.ESRCH),
        ("set_virq_handler(1.0, 0)", lambda hv: hv.set_virq_handler(1.0, 0), T, None),
        ("set_virq_handler(0, 1) not global", lambda hv: hv.set_virq_handler(0, 1), E, errno.EINVAL),
        ("set_virq_handler(99, 1)", lambda hv: hv.set_virq_handler(99, 1), E, errno.EINVAL),
        ("send_virq(1, 24)", lambda hv: hv.send_virq(1, 24), E, errno.EINVAL),
        ("send_virq(1, -1)", lambda hv: hv.send_virq(1, -1), E, errno.EINVAL),
        ("send_virq(1, None)", lambda hv: hv.send_virq(1, None), T, None),
        ("send_virq(1, 0, vcpu=3)", lambda hv: hv.send_virq(1, 0, vcpu=3), E, errno.ENOENT),
        ("send_virq(1, 0, vcpu='0')", lambda hv: hv.send_virq(1, 0, vcpu="0"), T, None),
        ("send_virq(9, 0)", lambda hv: hv.send_virq(9, 0), E, errno.ESRCH),
        ("send_global_virq(0)", lambda hv: hv.send_global_virq(0), E, errno.EINVAL),
        ("send_global_virq(2**70)", lambda hv: hv.send_global_virq(2**70), E, errno.EINVAL),
        ("send_pirq(1, 256)", lambda hv: hv.send_pirq(1, 256), E, errno.EINVAL),
        ("send_pirq(1, 1.5)", lambda hv: hv.send_pirq(1, 1.5), T, None),
        ("inject(1, 2**32)", lambda hv: hv.inject(1, 2**32), V, None),
        ("inject(1, 64)", lambda hv: hv.inject(1, 64), E, errno.EINVAL),
        ("inject(1, None)", lambda hv: hv.inject(1, None), T, None),
        ("advance(-1)", lambda hv: hv.advance(-1), V, None),
        ("advance(1.0)", lambda hv: hv.advance(1.0), T, None),
    ]
    for label, fn, exc, err in cases:
        yield pytest.param(fn, exc, err, id=label)


@pytest.mark.parametrize(("fn", "exc", "err"), list(_hv_cases()))
def test_hypervisor_arguments(fn, exc, err, world):
    hv, doms, h = world
    expect(exc, lambda: fn(hv), hv, (h,), err)


# ---------------------------------------------------------------- family: foreign buffers


def _refused_args():
    rw = bytearray(48)
    strided_np = np.zeros(48, np.uint8)[::2]
    return [
        ("None", None, TypeError), ("int", 6, TypeError), ("str", "x" * 24, TypeError),
        ("list", [0] * 24, TypeError), ("bytes", bytes(24), TypeError),
        ("readonly memoryview", memoryview(bytearray(24)).toreadonly(), TypeError),
        ("readonly numpy", np.zeros(24, np.uint8).view(), TypeError),
        ("non-contiguous memoryview", memoryview(rw)[::2], TypeError),
        ("strided numpy", strided_np, TypeError),
    ]


@pytest.mark.parametrize("case", _refused_args(), ids=lambda c: c[0])
@pytest.mark.parametrize("entry", ["op", "compat"])
def test_hypercall_refused_buffers(case, entry, world):
    """A non-buffer, read-only or non-contiguous argument: a TypeError before anything."""
    _, arg, exc = case
    if isinstance(arg, np.ndarray) and arg.flags.c_contiguous:
        arg.flags.writeable = False
    hv, (d0, d1, d2), h = world
    if entry == "op":
        for cmd in (xe.EVTCHNOP_alloc_unbound, xe.EVTCHNOP_close, xe.EVTCHNOP_reset, 99):
            expect(exc, lambda: d0.event_channel_op(cmd, arg), hv, (h,))
    else:
        expect(exc, lambda: d0.event_channel_op_compat(arg), hv, (h,))


@pytest.mark.parametrize("cmd", [None, 1.5, "6", b"\x06", [6]])
def test_hypercall_cmd_type(cmd, world):
    hv, (d0, d1, d2), h = world
    expect(TypeError, lambda: d0.event_channel_op(cmd, bytearray(24)), hv, (h,))


def test_hypercall_short_and_unknown_change_nothing(world):
    """Too short: -EFAULT; unknown or huge cmd: -ENOSYS; the buffer and world untouched."""
    hv, (d0, d1, d2), h = world
    cases = [(cmd, n) for cmd, size in ((0, 12), (1, 12), (5, 24), (6, 8), (10, 2)) for n in (0, 1, size - 1)]
    cases += [(cmd, 24) for cmd in (-1, 15, 16, 2**31, 2**64, -(2**100))]
    for cmd, n in cases:
        before = digest(hv, (h,))
        arg = bytearray(b"\xa5" * n)
        rc = d0.event_channel_op(cmd, arg)
        assert rc == (-errno.ENOSYS if not 0 <= cmd <= 14 else -errno.EFAULT), (cmd, n, rc)
        assert arg == b"\xa5" * n and digest(hv, (h,)) == before
    for n in (0, 4, 27):
        before = digest(hv, (h,))
        op = bytearray(struct.pack("<i", 6) + b"\xa5" * 24)[:n]
        assert d0.event_channel_op_compat(op) == -errno.EFAULT
        assert digest(hv, (h,)) == before
    for cmd in (10, 11, 14, -1, 2**31 - 1):
        op = bytearray(struct.pack("<i", cmd) + bytes(24))
        assert d0.event_channel_op_compat(op) == -errno.ENOSYS


@pytest.mark.parametrize("kind", ["array_H", "array_Q", "numpy_uint16", "numpy_2d", "mmap", "ctypes",
                                  "memoryview_cast_I", "bigger"])
def test_hypercall_takes_any_writable_buffer(kind, world):
    """The raw hypercall takes bytes: any writable contiguous buffer of >= the struct's size,
    whatever its item type, and writes the OUT field in place."""
    hv = xe.Hypervisor()
    d = hv.create_domain()
    raw = struct.pack("<HHI", xe.DOMID_SELF, 0, 0)
    arg: Any = {
        "array_H": lambda: array("H", struct.unpack("<4H", raw)),
        "array_Q": lambda: array("Q", struct.unpack("<Q", raw)),
        "numpy_uint16": lambda: np.frombuffer(raw, np.uint16).copy(),
        "numpy_2d": lambda: np.frombuffer(raw, np.uint8).copy().reshape(2, 4),
        "mmap": lambda: _mmap_with(raw),
        "ctypes": lambda: (ctypes.c_uint8 * 8).from_buffer_copy(raw),
        "memoryview_cast_I": lambda: memoryview(bytearray(raw)).cast("I"),
        "bigger": lambda: bytearray(raw + b"\x5a" * 9),
    }[kind]()
    assert d.event_channel_op(xe.EVTCHNOP_alloc_unbound, arg) == 0
    b = bytes(memoryview(arg).cast("B"))
    assert struct.unpack_from("<I", b, 4)[0] == 1 and b[:4] == raw[:4]
    if kind == "bigger":
        assert b[8:] == b"\x5a" * 9
    assert int(d.status(1).status) == xe.EVTCHNSTAT_unbound


def _mmap_with(data: bytes) -> mmap.mmap:
    m = mmap.mmap(-1, 4096)
    m[:len(data)] = data
    return m


def _send_many_refused():
    u32 = np.arange(1, 9, dtype=np.uint32)
    return [
        ("array_H", array("H", [1, 2]), TypeError), ("array_d", array("d", [1.0]), TypeError),
        ("array_q", array("q", [1]), TypeError), ("numpy_int64", np.ones(2, np.int64), TypeError),
        ("numpy_big_endian", np.ones(2, ">u4"), TypeError), ("numpy_strided", u32[::2], TypeError),
        ("bytes", b"\x01\0\0\0", TypeError), ("memoryview_B", memoryview(bytearray(8)), TypeError),
        ("None", None, TypeError), ("int", 1, TypeError), ("float", 1.5, TypeError),
        ("str", "12", TypeError), ("list_of_str", ["1"], TypeError), ("list_of_float", [1.5], TypeError),
        ("list_of_None", [1, None], TypeError), ("negative", [1, -1], ValueError),
        ("too_big", [1, 2**32], ValueError), ("huge", [2**70], ValueError),
    ]


@pytest.mark.parametrize("case", _send_many_refused(), ids=lambda c: c[0])
def test_send_many_refused_inputs(case, world):
    """send_many's ports: a sequence of ints or a contiguous uint32 buffer; anything else
    is refused before the first send."""
    _, ports, exc = case
    hv, (d0, d1, d2), h = world
    expect(exc, lambda: d2.send_many(ports), hv, (h,))


def test_send_many_accepts_uint32_buffers():
    hv = xe.Hypervisor()
    d = hv.create_domain()
    ports = [d.bind_ipi(0) for _ in range(8)]
    for batch in (array("I", ports), np.array(ports, np.uint32).reshape(2, 4),
                  memoryview(array("I", ports)), memoryview(bytearray(array("I", ports).tobytes())).cast("I"),
                  (p for p in ports), range(1, 9), []):
        d.send_many(batch)
        for p in ports:
            if isinstance(batch, list):
                break
            assert d.shared_info.is_pending(p)
            d.shared_info.clear_pending(p)


def _shared_info_refused():
    ba = bytearray(4096 + 8)
    return [
        ("bytes", bytes(4096), TypeError), ("str", "x" * 4096, TypeError), ("int", 4096, TypeError),
        ("readonly", memoryview(bytearray(4096)).toreadonly(), TypeError),
        ("short", bytearray(3135), ValueError), ("short_x86_32", (bytearray(2343), "x86_32"), ValueError),
        ("misaligned", memoryview(ba)[1:4097], ValueError),
        ("strided", memoryview(bytearray(8192))[::2], ValueError),
        ("bad_layout", (bytearray(4096), "arm64"), ValueError),
        ("layout_none", (bytearray(4096), None), ValueError),
    ]


@pytest.mark.parametrize("case", _shared_info_refused(), ids=lambda c: c[0])
def test_shared_info_buffers_refused(case, world):
    """SharedInfo(...) and create_domain(shared_info=...) refuse the same buffers, and a
    refused create_domain takes no domid and touches no domain."""
    _, arg, exc = case
    buf, layout = arg if isinstance(arg, tuple) else (arg, "x86_64")
    with pytest.raises(exc):
        xe.SharedInfo(buf, layout)
    hv, doms, h = world
    expect(exc, lambda: hv.create_domain(shared_info=buf, layout=layout), hv, (h,))


@pytest.mark.parametrize("kind", ["bytearray", "mmap", "shared_memory", "numpy"])
def test_a_page_in_use_cannot_be_pulled(kind):
    """While a domain lives on a buffer, the buffer cannot be resized, closed or released
    under it (BufferError), and the domain goes on working."""
    hv = xe.Hypervisor()
    shm = None
    if kind == "bytearray":
        buf: Any = bytearray(4096)
    elif kind == "mmap":
        buf = mmap.mmap(-1, 4096)
    elif kind == "shared_memory":
        shm = shared_memory.SharedMemory(create=True, size=4096)
        buf = shm.buf
    else:
        buf = np.zeros(4096, np.uint8)
    try:
        d = hv.create_domain(shared_info=buf)
        p = d.bind_ipi(0)
        before = digest(hv)
        with pytest.raises(ValueError if kind == "numpy" else BufferError):  # numpy's own check
            if kind == "bytearray":
                buf.extend(b"x")
            elif kind == "mmap":
                buf.close()
            elif kind == "shared_memory":
                shm.close()
            else:
                buf.resize(8192)
        assert digest(hv) == before
        d.send(p)
        assert d.guest.do_upcall(0) == [p]
    finally:
        if shm is not None:
            hv.destroy_domain(0)
            del d, buf, hv
            import gc
            gc.collect()
            shm.close()
            shm.unlink()


# ---------------------------------------------------------------- family: closed handles


def test_closed_handle_refuses_everything(world):
    hv, (d0, d1, d2), h = world
    port = sorted(h._ports)[0]
    h.close()
    h.close()                                      # idempotent
    assert int(d0.status(port).status) == xe.EVTCHNSTAT_closed
    calls = [h.fileno, h.fd, h.pending, lambda: h.notify(port), lambda: h.unmask(port),
             lambda: h.unbind(port), lambda: h.bind_unbound_port(1), lambda: h.bind_virq(1),
             lambda: h.bind_interdomain(1, 1), h.__enter__]
    for fn in calls:
        expect(ValueError, fn, hv)
    with pytest.raises(ValueError):
        with h:
            pass


def test_handle_bad_arguments(world):
    hv, (d0, d1, d2), h = world
    port = sorted(h._ports)[0]
    for v in NON_INTS:
        expect(TypeError, lambda: h.notify(v), hv, (h,))
        expect(TypeError, lambda: h.unbind(v), hv, (h,))
        expect(TypeError, lambda: h.bind_unbound_port(v), hv, (h,))
        expect(TypeError, lambda: h.bind_virq(v), hv, (h,))
        expect(TypeError, lambda: h.bind_interdomain(1, v), hv, (h,))
    for v in (-1, 2**16):
        expect(ValueError, lambda: h.bind_unbound_port(v), hv, (h,))
        expect(ValueError, lambda: h.bind_interdomain(v, 1), hv, (h,))
    expect(ValueError, lambda: h.bind_interdomain(1, 2**32), hv, (h,))
    expect(xe.EvtchnError, lambda: h.bind_virq(24), hv, (h,), errno.EINVAL)
    other = d0.bind_ipi(0)                           # not bound through the handle
    expect(xe.EvtchnError, lambda: h.notify(other), hv, (h,), errno.ENOTCONN)
    expect(xe.EvtchnError, lambda: h.unbind(other), hv, (h,), errno.ENOTCONN)
    expect(xe.EvtchnError, lambda: h.unbind(2**70), hv, (h,), errno.ENOTCONN)
    h.unmask(other)                                  # like a write to the device: ignored
    h.unmask(2**70)
    assert port in h._ports


# ---------------------------------------------------------------- family: destroyed domains


def test_destroyed_domain_answers_esrch_everywhere(world):
    """Every call on a destroyed domain's objects is ESRCH (or -ESRCH from the raw
    hypercalls), even after its domid was reused; the new domain is not touched."""
    hv, (d0, d1, d2), h = world
    g = h2 = None
    port = d1.bind_ipi(1)
    hv.destroy_domain(1)
    new = hv.create_domain(vcpus=3, domid=1)
    p_new = new.bind_ipi(0)
    new.send(p_new)
    handles = (h,)
    esrch = [
        lambda: d1.alloc_unbound(0), lambda: d1.bind_interdomain(0, 1), lambda: d1.bind_virq(1),
        lambda: d1.bind_pirq(5), lambda: d1.bind_ipi(0), lambda: d1.close(port),
        lambda: d1.send(port), lambda: d1.send_many([port]), lambda: d1.status(port),
        lambda: d1.bind_vcpu(port, 0), lambda: d1.unmask(port), lambda: d1.reset(),
        lambda: d1.sched_poll([port]), lambda: d1.guest.mask(port),
        lambda: d1.guest.unmask(port), lambda: d1.guest.do_upcall(0),
        lambda: hv.destroy_domain(7), lambda: hv.send_virq(7, 0), lambda: hv.inject(7, 1),
        lambda: hv.send_pirq(7, 1), lambda: hv.pause_domain(7), lambda: hv.permit_pirq(7, 1),
    ]
    for fn in esrch:
        expect(xe.EvtchnError, fn, hv, handles, errno.ESRCH)
    for cmd in (0, 3, 4, 5, 6, 9, 10, 15, 99):
        before = digest(hv, handles)
        assert d1.event_channel_op(cmd, bytearray(24)) == -errno.ESRCH
        assert d1.event_channel_op_compat(bytearray(struct.pack("<i", cmd) + bytes(24))) == -errno.ESRCH
        assert digest(hv, handles) == before
    # type checks still come first
    expect(TypeError, lambda: d1.event_channel_op("x", bytearray(24)), hv, handles)
    expect(TypeError, lambda: d1.event_channel_op(4, b"1234"), hv, handles)
    assert new.shared_info.is_pending(p_new) and new.guest.do_upcall(0) == [p_new]
    assert g is None and h2 is None


def test_handle_of_a_destroyed_domain(world):
    hv, (d0, d1, d2), h = world
    port = sorted(h._ports)[0]
    hv.destroy_domain(0)
    for fn in (lambda: h.notify(port), lambda: h.bind_unbound_port(1), lambda: h.bind_virq(1)):
        expect(xe.EvtchnError, fn, hv, (), errno.ESRCH)
    # The event d1 sent before the destroy was already in the handle's queue: it stays
    # readable, exactly once (Linux keeps what its ring holds); nothing new arrives.
    assert h.pending() == port
    assert h.pending() is None
    h.close()                                        # still closes cleanly
    with pytest.raises(ValueError):
        h.fileno()


# ---------------------------------------------------------------- family: the shared page


def test_shared_page_bad_input():
    hv = xe.Hypervisor()
    with pytest.raises(ValueError):
        SharedPage.create("arm64")
    with pytest.raises(TypeError):
        SharedPage.create(name=5)
    for name, exc in ((5, TypeError), (None, TypeError), ("", ValueError), ("/", ValueError),
                      ("a/b", ValueError), ("x\0y", ValueError), ("xenevtchn-no-such-page", FileNotFoundError)):
        with pytest.raises(exc):
            SharedPage.attach(name)
    foreign = shared_memory.SharedMemory(create=True, size=4096)      # not one of ours
    small = shared_memory.SharedMemory(create=True, size=64)
    try:
        with pytest.raises(ValueError, match="not a xenevtchn"):
            SharedPage.attach(foreign.name)
        if os.fstat(os.open(f"/dev/shm/{small.name}", os.O_RDONLY)).st_size < 4096:
            with pytest.raises(ValueError, match="bytes"):
                SharedPage.attach(small.name)
    finally:
        for b in (foreign, small):
            b.close()
            b.unlink()
    page = SharedPage.create("x86_32")
    try:
        other = SharedPage.attach(page.name)
        with pytest.raises(ValueError, match="no domain"):
            other.raise_port(1)
        before = digest(hv)
        with pytest.raises(TypeError):
            page.create_domain(hv, shared_info=bytearray(4096))
        with pytest.raises(ValueError):
            page.create_domain(hv, layout="x86_64")
        with pytest.raises(ValueError):
            other.create_domain(hv)                   # only the owner
        with pytest.raises(ValueError):
            page.create_domain(hv, vcpus=99)
        assert digest(hv) == before and page.domid is None
        d = page.create_domain(hv, vcpus=2)
        with pytest.raises(ValueError):
            page.create_domain(hv)
        port = d.bind_ipi(1)
        bad = [(lambda: other.raise_port(None), TypeError), (lambda: other.raise_port(port, "1"), TypeError),
               (lambda: other.raise_port(port, 2), ValueError), (lambda: other.raise_port(port, -1), ValueError),
               (lambda: other.raise_port(1024), ValueError), (lambda: other.raise_port(-1), ValueError)]
        for fn, exc in bad:
            expect(exc, fn, hv)
        assert other.raise_port(port, 1) != 0
        other.close()
        other.close()
        for fn in (lambda: other.raise_port(port, 1), lambda: other.shared_info, lambda: other.domid):
            with pytest.raises(ValueError, match="closed"):
                fn()
    finally:
        page.close()
    assert not os.path.exists(f"/dev/shm/{page.name}")
    assert d.shared_info.is_pending(port)            # the owner's mapping outlives close()


def test_shared_page_close_while_viewed():
    """An attached page with a live view refuses to close, and stays usable."""
    page = SharedPage.create()
    try:
        hv = xe.Hypervisor()
        d = page.create_domain(hv)
        p = d.bind_ipi(0)
        other = SharedPage.attach(page.name)
        si = other.shared_info
        with pytest.raises(BufferError):
            other.close()
        assert not other.closed and si.set_pending(p) != 0
        del si
        other.close()
        assert other.closed
    finally:
        page.close()
