"""``SharedInfo``: a shared_info struct in Xen's layout, in memory the caller may own.

The bytes live in any writable buffer (a fresh page by default, or a ``bytearray``,
``mmap``, ``multiprocessing.shared_memory`` block, NumPy array, ...); the C core reads and
writes them with C11 atomics, so other threads, processes or simulators sharing the
memory see every bit change as it happens.
"""

from __future__ import annotations

from typing import Any

from ._native import ffi, lib
from .constants import PAGE_SIZE, SHARED_INFO_SIZE, XEN_LEGACY_MAX_VCPUS

_LAYOUT_CODES: dict[str, int] = {"x86_64": lib.XE_LAYOUT_X86_64, "x86_32": lib.XE_LAYOUT_X86_32}


def layout_code(layout: str) -> int:
    """The C core's number for a layout name; ``ValueError`` for an unknown one."""
    try:
        return _LAYOUT_CODES[layout]
    except (KeyError, TypeError):
        raise ValueError(f"layout must be one of {sorted(_LAYOUT_CODES)}, not {layout!r}") from None


def _writable_cdata(buffer: Any, need: int, what: str = "shared_info") -> tuple[Any, int]:
    """Borrow ``buffer`` for C: writable, C-contiguous, >= need bytes, 8-byte aligned."""
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TypeError(
            f"{what} must be a writable buffer (bytearray, mmap, ...), not {type(buffer).__name__}"
        ) from None
    with view:
        if view.readonly:
            raise TypeError(f"{what} buffer is read-only ({type(buffer).__name__})")
        if not view.c_contiguous:
            raise ValueError(f"{what} buffer must be C-contiguous")
        nbytes = view.nbytes
    if nbytes < need:
        raise ValueError(f"{what} buffer holds {nbytes} bytes; it needs at least {need}")
    cdata = ffi.from_buffer(buffer, require_writable=True)
    if int(ffi.cast("uintptr_t", cdata)) % 8:
        # Give the buffer export back now: left to the garbage collector, it can be torn
        # down in a cycle (through this exception's traceback) after the exporter itself.
        ffi.release(cdata)
        raise ValueError(f"{what} buffer must be 8-byte aligned (its words are accessed atomically)")
    return cdata, nbytes


def _byte(value: Any, name: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} is one byte: {value} is outside 0..255")
    return value


class SharedInfo:
    """A view of one ``struct shared_info`` (x86_64) or ``compat_shared_info`` (x86_32).

    ``SharedInfo()`` allocates a zeroed 4096-byte page; ``SharedInfo(buf)`` uses the
    caller's buffer in place. Nothing is written on construction; ``reset()`` initialises
    the struct as Xen's domain builder does (all zero, every ``evtchn_upcall_mask`` = 1).

    The data-path methods (``set_pending``, ``unmask``, ...) are the bit rules of Xen's
    2-level ABI with no port table behind them; a ``Domain`` applies channel checks first.
    """

    __slots__ = ("_owner", "_cdata", "_nbytes", "_s", "layout", "nr_ports", "word_bits",
                 "buffer", "_borrowed", "__weakref__")

    def __init__(self, buffer: Any = None, layout: str = "x86_64") -> None:
        code = layout_code(layout)
        need = SHARED_INFO_SIZE[layout]
        self._borrowed = None
        if buffer is None:
            buffer = ffi.new("uint64_t[]", PAGE_SIZE // 8)  # malloc'd: 8-byte aligned, zeroed
            cdata, nbytes = ffi.cast("char *", buffer), PAGE_SIZE
        else:
            cdata, nbytes = _writable_cdata(buffer, need)
            self._borrowed = cdata
        self._owner = buffer
        self._cdata = cdata
        self._nbytes = nbytes
        self._s = ffi.new("struct xe_shinfo *")
        rc = lib.xe_shinfo_init(self._s, cdata, code)
        if rc:
            raise ValueError("the C core refused this shared_info buffer")
        self.layout = layout
        self.word_bits = int(self._s.word_bits)
        self.nr_ports = int(self._s.nr_ports)
        self.buffer: memoryview = memoryview(ffi.buffer(cdata, nbytes))

    def __del__(self) -> None:
        # Give a caller's buffer its export back before the cycle collector clears the
        # buffer (a memoryview torn down with an export still held crashes CPython).
        borrowed = getattr(self, "_borrowed", None)
        if borrowed is not None:
            self._borrowed = None
            try:
                ffi.release(borrowed)
            except (ValueError, TypeError):  # pragma: no cover - already released
                pass

    @property
    def address_range(self) -> tuple[int, int]:
        """``(first, end)`` addresses of the struct in memory: what two domains must not share."""
        start = int(ffi.cast("uintptr_t", self._cdata))
        return start, start + self.size

    # ---- whole-struct operations -------------------------------------------------

    def reset(self) -> None:
        """Zero the struct and set ``evtchn_upcall_mask`` = 1 in all 32 vcpu_info slots."""
        lib.xe_shinfo_reset(self._s)

    @property
    def size(self) -> int:
        """``sizeof(struct shared_info)`` for this layout (the buffer may be larger)."""
        return SHARED_INFO_SIZE[self.layout]

    # ---- argument checks -----------------------------------------------------------

    def _port(self, port: int) -> int:
        if not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if not 0 <= port < self.nr_ports:
            raise ValueError(f"port {port} is outside 0..{self.nr_ports - 1} for {self.layout}")
        return port

    @staticmethod
    def _vcpu(vcpu: int) -> int:
        if not isinstance(vcpu, int):
            raise TypeError(f"vcpu must be an int, not {type(vcpu).__name__}")
        if not 0 <= vcpu < XEN_LEGACY_MAX_VCPUS:
            raise ValueError(f"vcpu {vcpu} is outside 0..{XEN_LEGACY_MAX_VCPUS - 1}")
        return vcpu

    # ---- per-port state (read live) ------------------------------------------------

    def is_pending(self, port: int) -> bool:
        """The port's pending bit; ports past the layout's last one are never pending."""
        if not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if port < 0:
            raise ValueError(f"port {port} is negative")
        return port < self.nr_ports and bool(lib.xe_2l_is_pending(self._s, port))

    def is_masked(self, port: int) -> bool:
        """The port's mask bit; ports past the layout's last one count as masked."""
        if not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if port < 0:
            raise ValueError(f"port {port} is negative")
        return port >= self.nr_ports or bool(lib.xe_2l_is_masked(self._s, port))

    # ---- per-vCPU state (read live) ------------------------------------------------

    def upcall_pending(self, vcpu: int) -> int:
        return int(lib.xe_vcpu_upcall_pending(self._s, self._vcpu(vcpu)))

    def upcall_mask(self, vcpu: int) -> int:
        return int(lib.xe_vcpu_upcall_mask(self._s, self._vcpu(vcpu)))

    def pending_sel(self, vcpu: int) -> int:
        return int(lib.xe_vcpu_pending_sel(self._s, self._vcpu(vcpu)))

    def set_upcall_pending(self, vcpu: int, value: int) -> None:
        lib.xe_vcpu_set_upcall_pending(self._s, self._vcpu(vcpu), _byte(value, "evtchn_upcall_pending"))

    def set_upcall_mask(self, vcpu: int, value: int) -> None:
        lib.xe_vcpu_set_upcall_mask(self._s, self._vcpu(vcpu), _byte(value, "evtchn_upcall_mask"))

    # ---- the 2-level bit rules (Xen's event_2l.c) ---------------------------------

    def set_pending(self, port: int, vcpu: int = 0) -> int:
        """Raise ``port`` towards ``vcpu``; returns ``SET_NEWLY | SET_KICK`` flags."""
        return int(lib.xe_2l_set_pending(self._s, self._vcpu(vcpu), self._port(port)))

    def clear_pending(self, port: int) -> None:
        lib.xe_2l_clear_pending(self._s, self._port(port))

    def mask(self, port: int) -> None:
        lib.xe_2l_mask(self._s, self._port(port))

    def unmask(self, port: int, vcpu: int = 0) -> int:
        """The ``EVTCHNOP_unmask`` action; returns ``SET_KICK`` when an upcall is due."""
        return int(lib.xe_2l_unmask(self._s, self._vcpu(vcpu), self._port(port)))

    def take_pending_sel(self, vcpu: int) -> int:
        """Exchange the vCPU's ``evtchn_pending_sel`` with 0, as a guest's upcall does."""
        return int(lib.xe_2l_take_pending_sel(self._s, self._vcpu(vcpu)))

    def __repr__(self) -> str:
        return f"<SharedInfo {self.layout} {self._nbytes} bytes at {hex(int(ffi.cast('uintptr_t', self._cdata)))}>"


SET_NEWLY: int = lib.XE_SET_NEWLY
SET_KICK: int = lib.XE_SET_KICK
