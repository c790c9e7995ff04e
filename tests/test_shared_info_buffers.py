"""``SharedInfo`` over every kind of caller-owned buffer, and its refusal of bad ones.

The data path must write the *caller's* memory in place (spec xen-hypervisor.md §1.4 /
§12: the shared_info page is guest memory that other parties map), so every check here
reads the bytes back through the caller's own object, never only through
``SharedInfo.buffer``. Bad buffers must be refused with the right exception and a message
naming the problem, and without a single byte written.
"""

from __future__ import annotations

import array
import gc
import mmap
import subprocess
import sys
import textwrap
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import pytest

from xenevtchn._native import ffi
from xenevtchn.shared_info import SET_KICK, SET_NEWLY, SharedInfo

PAGE = 4096
SIZES = {"x86_64": 3136, "x86_32": 2344}
GEOM = {  # pending, mask, selector offset in vcpu_info, selector bytes, W
    "x86_64": (2048, 2560, 8, 8, 64),
    "x86_32": (2048, 2176, 4, 4, 32),
}
PATTERN = 0x5A


def raises(exc_type, fn, *args, **kwargs) -> str:
    """Call fn, require exc_type, return its message.

    Unlike ``pytest.raises`` this keeps no reference to the exception, so no reference
    cycle (exception -> traceback -> frame -> exception) outlives the call. Whether the
    package survives such cycles being garbage-collected is tested separately, in a child
    process, by ``test_refused_buffer_errors_survive_gc``.
    """
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return str(exc)
    pytest.fail(f"{exc_type.__name__} not raised")


def addr_of(obj) -> int:
    return int(ffi.cast("uintptr_t", ffi.from_buffer(obj)))


def attach_shm(name: str) -> shared_memory.SharedMemory:
    """A second SharedMemory on an existing block, without the resource tracker owning it."""
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        shm = shared_memory.SharedMemory(name=name)
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
        return shm


def close_shm(shm: shared_memory.SharedMemory, unlink: bool) -> None:
    try:
        try:
            shm.close()
        except BufferError:  # a view still alive in a traceback: collect, retry
            gc.collect()
            shm.close()
    finally:
        if unlink:
            shm.unlink()


class CallerBuffer:
    """A buffer object as the caller holds it, with reads/writes through that object."""

    def __init__(self, obj, read, write, cleanup=None):
        self.obj = obj
        self._read = read
        self._write = write
        self.cleanup = cleanup

    def read(self) -> bytes:
        data = self._read()
        assert isinstance(data, bytes)
        return data

    def write(self, offset: int, data: bytes) -> None:
        self._write(offset, data)


def _make(kind: str) -> CallerBuffer:
    if kind == "bytearray":
        b = bytearray(PAGE)

        def w(o, d):
            b[o : o + len(d)] = d

        return CallerBuffer(b, lambda: bytes(b), w)
    if kind == "mmap":
        m = mmap.mmap(-1, PAGE)

        def w(o, d):
            m[o : o + len(d)] = d

        return CallerBuffer(m, lambda: m[:], w, cleanup=m.close)
    if kind == "shared_memory":
        shm = shared_memory.SharedMemory(create=True, size=PAGE)
        shm.buf[:PAGE] = bytes(PAGE)

        def w(o, d):
            shm.buf[o : o + len(d)] = d

        def read():
            return bytes(shm.buf[:PAGE])

        cb = CallerBuffer(shm.buf, read, w, cleanup=lambda: close_shm(shm, unlink=True))
        cb.shm = shm
        return cb
    if kind == "numpy_uint8":
        a = np.zeros(PAGE, dtype=np.uint8)

        def w(o, d):
            a[o : o + len(d)] = np.frombuffer(d, dtype=np.uint8)

        return CallerBuffer(a, a.tobytes, w)
    if kind == "numpy_uint64":
        a = np.zeros(PAGE // 8, dtype=np.uint64)

        def w(o, d):
            a.view(np.uint8)[o : o + len(d)] = np.frombuffer(d, dtype=np.uint8)

        return CallerBuffer(a, a.tobytes, w)
    if kind == "array_Q":
        a = array.array("Q", bytes(PAGE))
        assert len(a) * a.itemsize == PAGE

        def w(o, d):
            memoryview(a).cast("B")[o : o + len(d)] = d

        return CallerBuffer(a, a.tobytes, w)
    if kind == "memoryview":
        b = bytearray(PAGE)
        mv = memoryview(b)

        def w(o, d):
            b[o : o + len(d)] = d

        return CallerBuffer(mv, lambda: bytes(b), w, cleanup=mv.release)
    if kind == "memoryview_Q":
        b = bytearray(PAGE)
        mv = memoryview(b).cast("Q")

        def w(o, d):
            b[o : o + len(d)] = d

        return CallerBuffer(mv, lambda: bytes(b), w, cleanup=mv.release)
    raise AssertionError(kind)


KINDS = ["bytearray", "mmap", "shared_memory", "numpy_uint8", "numpy_uint64", "array_Q",
         "memoryview", "memoryview_Q"]


@pytest.fixture(params=KINDS)
def cbuf(request):
    cb = _make(request.param)
    yield cb
    if cb.cleanup is not None:
        gc.collect()  # drop SharedInfo views of the test so the export is released
        cb.cleanup()


@pytest.fixture(params=["x86_64", "x86_32"])
def layout(request):
    return request.param


def expected_reset(layout: str, tail: int) -> bytes:
    size = SIZES[layout]
    exp = bytearray(size)
    for v in range(32):
        exp[64 * v + 1] = 1
    return bytes(exp) + bytes([tail]) * (PAGE - size)


# ---- default page ------------------------------------------------------------------------


def test_default_page(layout):
    si = SharedInfo(layout=layout)
    assert len(si.buffer) == PAGE
    assert si.buffer.nbytes == PAGE
    assert bytes(si.buffer) == bytes(PAGE)
    assert addr_of(si.buffer) % 8 == 0
    assert si.set_pending(1, 0) == SET_NEWLY | SET_KICK
    assert si.buffer[2048] == 0b10
    assert not si.buffer.readonly


def test_default_pages_are_distinct(layout):
    a, b = SharedInfo(layout=layout), SharedInfo(layout=layout)
    a.set_pending(3, 0)
    assert not b.is_pending(3)
    assert bytes(b.buffer) == bytes(PAGE)


# ---- every buffer kind ------------------------------------------------------------------------


def test_construction_writes_nothing(cbuf, layout):
    cbuf.write(0, bytes([PATTERN]) * PAGE)
    si = SharedInfo(cbuf.obj, layout=layout)
    assert cbuf.read() == bytes([PATTERN]) * PAGE
    assert len(si.buffer) == PAGE
    assert bytes(si.buffer) == bytes([PATTERN]) * PAGE
    del si


def test_bits_land_in_callers_buffer(cbuf, layout):
    pend, mask, selo, selb, W = GEOM[layout]
    cbuf.write(0, bytes([PATTERN]) * PAGE)
    si = SharedInfo(cbuf.obj, layout=layout)
    si.reset()
    assert cbuf.read() == expected_reset(layout, PATTERN), "reset() must write the caller's bytes"

    port, vcpu = W + 3, 5  # word 1, bit 3
    assert si.set_pending(port, vcpu) == SET_NEWLY | SET_KICK
    exp = bytearray(expected_reset(layout, PATTERN))
    exp[pend + port // 8] |= 1 << (port % 8)
    exp[64 * vcpu + selo] |= 1 << 1
    exp[64 * vcpu] = 1
    assert cbuf.read() == bytes(exp)

    last = W * W - 1
    si.mask(last)
    exp[mask + last // 8] |= 1 << (last % 8)
    assert si.set_pending(last, 0) == SET_NEWLY
    exp[pend + last // 8] |= 1 << (last % 8)
    assert cbuf.read() == bytes(exp)
    assert si.unmask(last, 0) == SET_KICK
    exp[mask + last // 8] &= ~(1 << (last % 8)) & 0xFF
    exp[64 * 0 + selo + (W - 1) // 8] |= 1 << ((W - 1) % 8)
    exp[0] = 1
    assert cbuf.read() == bytes(exp)

    assert si.take_pending_sel(vcpu) == 1 << 1
    exp[64 * vcpu + selo : 64 * vcpu + selo + selb] = bytes(selb)
    si.clear_pending(port)
    exp[pend + port // 8] &= ~(1 << (port % 8)) & 0xFF
    assert cbuf.read() == bytes(exp)
    del si


def test_caller_writes_are_seen_live(cbuf, layout):
    pend, mask, selo, selb, W = GEOM[layout]
    si = SharedInfo(cbuf.obj, layout=layout)
    cbuf.write(pend + 1, b"\x04")  # port 10 pending
    cbuf.write(mask + 1, b"\x04")  # port 10 masked
    cbuf.write(64 * 2 + selo, (1 << (W - 1) | 1).to_bytes(selb, "little"))
    cbuf.write(64 * 2, b"\x01")
    cbuf.write(64 * 2 + 1, b"\x01")
    assert si.is_pending(10) and si.is_masked(10)
    assert not si.is_pending(11) and not si.is_masked(9)
    assert si.pending_sel(2) == (1 << (W - 1)) | 1
    assert si.upcall_pending(2) == 1 and si.upcall_mask(2) == 1
    # a pending port the caller set is coalesced by the data path
    assert si.set_pending(10, 0) == 0
    # unmask re-raises it (§8.3)
    assert si.unmask(10, 0) == SET_KICK
    del si


def test_exact_size_buffer(layout):
    size = SIZES[layout]
    b = bytearray(size)
    si = SharedInfo(b, layout=layout)
    assert len(si.buffer) == size
    si.reset()
    assert bytes(b) == expected_reset(layout, 0)[:size]
    pend, _, selo, _, W = GEOM[layout]
    top = W * W - 1
    si.set_pending(top, 31)
    assert b[pend + top // 8] == 0x80
    assert b[64 * 31] == 1


def test_larger_buffer_is_fine(layout):
    b = bytearray(PAGE * 3)
    si = SharedInfo(b, layout=layout)
    si.reset()
    assert bytes(b[SIZES[layout] :]) == bytes(len(b) - SIZES[layout])


def test_two_views_of_one_buffer(layout):
    b = bytearray(PAGE)
    s1 = SharedInfo(b, layout=layout)
    s2 = SharedInfo(memoryview(b), layout=layout)
    assert s1.set_pending(7, 1) == SET_NEWLY | SET_KICK
    assert s2.is_pending(7)
    assert s2.set_pending(7, 1) == 0
    s2.mask(8)
    assert s1.is_masked(8)


def test_buffer_stays_alive_and_pinned(layout):
    """The view keeps the caller's buffer alive and exported (it cannot be resized or
    freed under the C core), and releases it when the view goes away."""
    b = bytearray(PAGE)
    si = SharedInfo(b, layout=layout)
    with pytest.raises(BufferError):
        b.extend(b"x")
    with pytest.raises(BufferError):
        del b[:8]
    si.set_pending(1, 0)
    assert b[2048] == 2
    del si
    gc.collect()
    b.extend(b"x")  # export released
    assert len(b) == PAGE + 1

    si = SharedInfo(bytearray(PAGE), layout=layout)  # only the view holds it
    gc.collect()
    si.set_pending(2, 0)
    assert si.is_pending(2)


def test_shared_memory_second_attachment(layout):
    pend, mask, selo, selb, W = GEOM[layout]
    shm = shared_memory.SharedMemory(create=True, size=PAGE)
    shm2 = None
    si = si2 = None
    try:
        shm.buf[:PAGE] = bytes(PAGE)
        shm2 = attach_shm(shm.name)
        si = SharedInfo(shm.buf, layout=layout)
        si.reset()
        assert bytes(shm2.buf[:PAGE]) == expected_reset(layout, 0)
        port = 2 * W + 6
        assert si.set_pending(port, 3) == SET_NEWLY | SET_KICK
        assert shm2.buf[pend + port // 8] == 1 << (port % 8)
        assert shm2.buf[64 * 3] == 1
        assert int.from_bytes(bytes(shm2.buf[64 * 3 + selo : 64 * 3 + selo + selb]), "little") == 1 << 2
        # a view over the second mapping shares the same bits both ways
        si2 = SharedInfo(shm2.buf, layout=layout)
        assert si2.is_pending(port)
        assert si2.set_pending(port, 3) == 0
        si2.mask(port + 1)
        assert si.is_masked(port + 1)
        assert si.take_pending_sel(3) == 1 << 2
        assert si2.pending_sel(3) == 0
    finally:
        del si, si2
        gc.collect()
        if shm2 is not None:
            close_shm(shm2, unlink=False)
        close_shm(shm, unlink=True)


def test_shared_memory_other_process(layout):
    """Bits set by another process through its own SharedInfo appear in ours."""
    pend, mask, selo, selb, W = GEOM[layout]
    shm = shared_memory.SharedMemory(create=True, size=PAGE)
    si = None
    try:
        shm.buf[:PAGE] = bytes(PAGE)
        si = SharedInfo(shm.buf, layout=layout)
        si.reset()
        si.mask(W + 1)
        child = textwrap.dedent(
            f"""
            import sys
            from multiprocessing import resource_tracker, shared_memory
            from xenevtchn.shared_info import SharedInfo
            shm = shared_memory.SharedMemory(name={shm.name!r})
            resource_tracker.unregister(shm._name, "shared_memory")
            si = SharedInfo(shm.buf, layout={layout!r})
            rc1 = si.set_pending({W}, 4)
            rc2 = si.set_pending({W + 1}, 4)
            print(rc1, rc2)
            del si
            shm.close()
            """
        )
        out = subprocess.run([sys.executable, "-P", "-c", child], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [str(SET_NEWLY | SET_KICK), str(SET_NEWLY)]
        assert si.is_pending(W) and si.is_pending(W + 1)
        assert si.pending_sel(4) == 1 << 1
        assert si.upcall_pending(4) == 1
        assert si.unmask(W + 1, 4) == 0  # sel bit already set
    finally:
        del si
        gc.collect()
        close_shm(shm, unlink=True)


# ---- bad buffers -------------------------------------------------------------------------------


def _readonly_cases():
    b = bytearray(b"\x5a" * PAGE)
    ro_np = np.full(PAGE, PATTERN, dtype=np.uint8)
    ro_np.flags.writeable = False
    ro_mmap = mmap.mmap(-1, PAGE, prot=mmap.PROT_READ)
    return [
        ("bytes", bytes([PATTERN]) * PAGE, None),
        ("readonly_memoryview", memoryview(b).toreadonly(), b),
        ("numpy_readonly", ro_np, ro_np),
        ("mmap_prot_read", ro_mmap, None),
    ]


@pytest.mark.parametrize("case", range(4), ids=["bytes", "readonly_memoryview", "numpy_readonly",
                                                "mmap_prot_read"])
def test_readonly_buffers_raise_typeerror(layout, case):
    name, obj, backing = _readonly_cases()[case]
    msg = raises(TypeError, SharedInfo, obj, layout=layout).lower()
    assert "read-only" in msg or "readonly" in msg or "writable" in msg, msg
    if backing is not None:
        assert bytes(backing) == bytes([PATTERN]) * PAGE


@pytest.mark.parametrize("make", [
    lambda n: bytearray(b"\x5a" * n),
    lambda n: np.full(n, PATTERN, dtype=np.uint8),
    lambda n: memoryview(bytearray(b"\x5a" * (n + 64)))[:n],
    lambda n: mmap.mmap(-1, n) if n else bytearray(),
], ids=["bytearray", "numpy", "memoryview", "mmap"])
@pytest.mark.parametrize("short_by", [1, 8, 64])
def test_too_small_raises_valueerror(layout, make, short_by):
    need = SIZES[layout]
    obj = make(need - short_by)
    if isinstance(obj, mmap.mmap):
        obj[:] = bytes([PATTERN]) * len(obj)
    before = bytes(obj)
    msg = raises(ValueError, SharedInfo, obj, layout=layout)
    assert str(need) in msg, f"message should give the size needed ({need}): {msg!r}"
    assert bytes(obj) == before


def test_too_small_edges(layout):
    need = SIZES[layout]
    for n in (0, 1, 64, 2048, need - 1):
        raises(ValueError, SharedInfo, bytearray(n), layout=layout)
    # the x86_32 size is too small for x86_64, not the other way round
    if layout == "x86_64":
        raises(ValueError, SharedInfo, bytearray(SIZES["x86_32"]), layout="x86_64")
    exact = SharedInfo(bytearray(need), layout=layout)  # exactly enough is fine
    assert exact.size == need
    # numpy uint64 whose byte size is one word short
    raises(ValueError, SharedInfo, np.zeros((need - 1) // 8, dtype=np.uint64), layout=layout)


def _aligned_base(extra: int = 64):
    raw = bytearray([PATTERN]) * (PAGE + extra)
    start = (-addr_of(raw)) % 8
    return raw, start


@pytest.mark.parametrize("offset", [1, 2, 3, 5, 6, 7])
def test_misaligned_raises_valueerror(layout, offset):
    raw, start = _aligned_base()
    view = memoryview(raw)[start + offset : start + offset + PAGE]
    assert addr_of(view) % 8 == offset
    msg = raises(ValueError, SharedInfo, view, layout=layout)
    assert "align" in msg.lower(), msg
    assert raw == bytearray([PATTERN]) * (PAGE + 64)


def test_misaligned_by_4_x86_64():
    """The x86_64 words are u64 accessed atomically: 4-byte alignment is not enough."""
    raw, start = _aligned_base()
    view = memoryview(raw)[start + 4 : start + 4 + PAGE]
    msg = raises(ValueError, SharedInfo, view, layout="x86_64")
    assert "align" in msg.lower()
    assert raw == bytearray([PATTERN]) * (PAGE + 64)


def test_aligned_slice_is_fine(layout):
    raw, start = _aligned_base()
    view = memoryview(raw)[start + 8 : start + 8 + PAGE]
    si = SharedInfo(view, layout=layout)
    si.reset()
    assert raw[start + 8 + 1] == 1  # vcpu 0 upcall_mask, in the caller's bytearray
    assert raw[start + 7] == PATTERN and raw[start + 8 + SIZES[layout]] == PATTERN


def test_misaligned_numpy(layout):
    a = np.full(PAGE + 64, PATTERN, dtype=np.uint8)
    k = (-a.ctypes.data) % 8
    sub = a[k + 3 : k + 3 + PAGE]
    assert sub.ctypes.data % 8 == 3
    raises(ValueError, SharedInfo, sub, layout=layout)
    assert (a == PATTERN).all()


@pytest.mark.parametrize("kind", ["numpy_strided", "numpy_fortran", "memoryview_strided"])
def test_non_contiguous_raises_valueerror(layout, kind):
    if kind == "numpy_strided":
        backing = np.full(2 * PAGE, PATTERN, dtype=np.uint8)
        obj = backing[::2]
    elif kind == "numpy_fortran":
        backing = np.full((64, 64), PATTERN, dtype=np.uint8, order="F")
        obj = backing
    else:
        backing = bytearray([PATTERN]) * (2 * PAGE)
        obj = memoryview(backing)[::2]
    assert not memoryview(obj).c_contiguous
    msg = raises(ValueError, SharedInfo, obj, layout=layout)
    assert "contiguous" in msg.lower(), msg
    assert bytes(backing) == bytes([PATTERN]) * (2 * PAGE if kind != "numpy_fortran" else PAGE)


@pytest.mark.parametrize("obj", [4096, 3.5, "x" * PAGE, [0] * PAGE, (0,) * PAGE, {"a": 1},
                                 object(), iter(b"x" * PAGE)],
                         ids=["int", "float", "str", "list", "tuple", "dict", "object", "iterator"])
def test_non_buffers_raise_typeerror(layout, obj):
    msg = raises(TypeError, SharedInfo, obj, layout=layout)
    assert "buffer" in msg.lower(), msg


def test_bad_layout_with_good_buffer():
    b = bytearray(b"\x5a" * PAGE)
    for bad in ("x86", "X86_64", "", 64):
        raises(ValueError, SharedInfo, b, layout=bad)
    assert b == bytearray(b"\x5a" * PAGE)


_GC_CHILD = textwrap.dedent(
    """
    import faulthandler, gc, sys
    faulthandler.enable()
    import numpy as np
    from xenevtchn._native import ffi
    from xenevtchn.shared_info import SharedInfo

    PAGE = 4096

    def addr_of(obj):
        return int(ffi.cast("uintptr_t", ffi.from_buffer(obj)))

    def misaligned_view():
        raw = bytearray(PAGE + 64)
        start = (-addr_of(raw)) % 8
        return memoryview(raw)[start + 1 : start + 1 + PAGE]

    def misaligned_numpy():
        a = np.zeros(PAGE + 64, dtype=np.uint8)
        k = (-a.ctypes.data) % 8
        return a[k + 3 : k + 3 + PAGE]

    cases = {
        "misaligned_memoryview": (misaligned_view, ValueError),
        "misaligned_numpy": (misaligned_numpy, ValueError),
        "small_memoryview": (lambda: memoryview(bytearray(PAGE))[:100], ValueError),
        "readonly_memoryview": (lambda: memoryview(bytearray(PAGE)).toreadonly(), TypeError),
        "strided_memoryview": (lambda: memoryview(bytearray(2 * PAGE))[::2], ValueError),
    }
    name = sys.argv[1]
    make, exc_type = cases[name]

    def attempt(layout):
        # Keep the exception in a local, as pytest.raises' ExceptionInfo or
        # "except E as e: err = e" does: exception -> traceback -> this frame -> exception
        # is a reference cycle that only the garbage collector frees.
        buf = make()
        err = None
        try:
            SharedInfo(buf, layout=layout)
        except exc_type as exc:
            err = exc
        if err is None:
            sys.exit(f"{name}: no {exc_type.__name__}")
        return str(err)

    gc.disable()
    for layout in ("x86_64", "x86_32"):
        for _ in range(20):
            attempt(layout)
    gc.enable()
    gc.collect()
    gc.collect()
    print("ok", name)
    """
)


@pytest.mark.parametrize("case", ["misaligned_memoryview", "misaligned_numpy", "small_memoryview",
                                  "readonly_memoryview", "strided_memoryview"])
def test_refused_buffer_errors_survive_gc(case):
    """A refused buffer's exception may be kept (``pytest.raises``, ``except ... as e``
    stored away) and later garbage-collected as part of a reference cycle: that must not
    crash the interpreter. Run in a child process so a crash is a test failure here."""
    out = subprocess.run([sys.executable, "-P", "-c", _GC_CHILD, case], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"ok {case}", (
        f"child exited {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr[-3000:]}"
    )
