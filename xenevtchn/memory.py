"""``d.memory``: a domain's guest-physical memory, one 4096-byte frame at a time.

The FIFO hypercalls name frames by number (gfn), as in Xen: the control blocks and the
event-array pages live in this memory, and the C data path reads and writes them in
place. Frames are allocated zeroed on first use; ``map`` puts a caller's own page at a
frame instead (another simulator's guest memory, shared memory, ...).
"""

from __future__ import annotations

from typing import Any

from ._native import ffi
from .constants import PAGE_SIZE
from .shared_info import _writable_cdata

DEFAULT_FRAMES = 262144  # 1 GiB of 4 KiB frames


class GuestMemory:
    """Frames ``0 .. nr_frames-1`` of one domain, allocated lazily."""

    __slots__ = ("nr_frames", "_frames", "_in_use", "_retired", "_vcpu_info")

    def __init__(self, nr_frames: int = DEFAULT_FRAMES) -> None:
        if not isinstance(nr_frames, int):
            raise TypeError(f"memory_frames must be an int, not {type(nr_frames).__name__}")
        if not 1 <= nr_frames <= 1 << 40:
            raise ValueError(f"memory_frames {nr_frames} is outside 1..2**40")
        self.nr_frames = nr_frames
        self._frames: dict[int, tuple[Any, Any]] = {}  # gfn -> (char * cdata, owner)
        self._in_use: dict[int, int] = {}  # gfn -> how many FIFO structures use it
        self._retired: list[Any] = []  # pages C may still point at: kept alive
        self._vcpu_info: set[int] = set()  # frames holding a registered vcpu_info, for good

    def _gfn(self, gfn: Any) -> int:
        if not isinstance(gfn, int):
            raise TypeError(f"gfn must be an int, not {type(gfn).__name__}")
        if not 0 <= gfn < self.nr_frames:
            raise ValueError(f"gfn {gfn} is outside this domain's memory (0..{self.nr_frames - 1})")
        return int(gfn)

    def valid(self, gfn: int) -> bool:
        """Whether a hypercall may name ``gfn`` (Xen: a writable guest page)."""
        return 0 <= gfn < self.nr_frames

    def frame(self, gfn: int) -> Any:
        """The frame as a ``char *`` for C, allocated zeroed on first use."""
        entry = self._frames.get(gfn)
        if entry is None:
            page = ffi.new("uint64_t[]", PAGE_SIZE // 8)  # zeroed, 8-byte aligned
            entry = (ffi.cast("char *", page), page)
            self._frames[gfn] = entry
        return entry[0]

    def read(self, addr: int, n: int) -> bytes | None:
        """``n`` bytes at guest address ``addr`` (byte ``addr % 4096`` of frame
        ``addr // 4096``, spanning frames as needed); None if any byte lies outside the
        domain's memory. A frame never touched reads as zeros and stays unallocated."""
        if addr < 0 or n < 0 or addr + n > self.nr_frames * PAGE_SIZE:
            return None
        out = bytearray()
        while n:
            gfn, off = divmod(addr, PAGE_SIZE)
            k = min(n, PAGE_SIZE - off)
            entry = self._frames.get(gfn)
            out += bytes(k) if entry is None else ffi.buffer(entry[0] + off, k)[:]
            addr += k
            n -= k
        return bytes(out)

    def page(self, gfn: int) -> memoryview:
        """A writable 4096-byte view of frame ``gfn`` (zeroed on first use)."""
        return memoryview(ffi.buffer(self.frame(self._gfn(gfn)), PAGE_SIZE))

    def map(self, gfn: int, buffer: Any) -> None:
        """Place the caller's own writable page (>= 4096 bytes, 8-byte aligned) at ``gfn``.

        Refused (``ValueError``) while the frame is a FIFO control block or event-array
        page, or holds a registered vcpu_info. Only the first 4096 bytes are used; the
        caller keeps the buffer alive.
        """
        gfn = self._gfn(gfn)
        cdata, _ = _writable_cdata(buffer, PAGE_SIZE, "page")
        if gfn in self._in_use:
            ffi.release(cdata)
            raise ValueError(f"gfn {gfn} is in use as a FIFO control block or event-array page")
        if gfn in self._vcpu_info:
            ffi.release(cdata)
            raise ValueError(f"gfn {gfn} holds a registered vcpu_info")
        old = self._frames.get(gfn)
        if old is not None:
            self._retired.append(old)
        self._frames[gfn] = (ffi.cast("char *", cdata), (cdata, buffer))

    def __del__(self) -> None:
        # Give callers' pages their buffer exports back before the cycle collector clears
        # the buffers themselves (see SharedInfo.__del__).
        for entry in [*getattr(self, "_frames", {}).values(), *getattr(self, "_retired", ())]:
            owner = entry[1]
            if isinstance(owner, tuple):
                try:
                    ffi.release(owner[0])
                except (ValueError, TypeError):  # pragma: no cover - already released
                    pass

    # ---- the FIFO code's bookkeeping ------------------------------------------------

    def pin(self, gfn: int) -> Any:
        """Mark ``gfn`` as used by a FIFO structure; returns its ``char *``."""
        self._in_use[gfn] = self._in_use.get(gfn, 0) + 1
        return self.frame(gfn)

    def pin_vcpu_info(self, gfn: int) -> Any:
        """Mark ``gfn`` as holding a registered vcpu_info (until the domain dies: neither
        a FIFO teardown nor a reset undoes it); returns its ``char *``."""
        self._vcpu_info.add(gfn)
        return self.frame(gfn)

    @property
    def vcpu_info_frames(self) -> frozenset[int]:
        """The frames that hold a registered vcpu_info."""
        return frozenset(self._vcpu_info)

    def unpin_all(self) -> None:
        """The FIFO ABI was torn down: every frame may be remapped again."""
        self._in_use.clear()

    def __repr__(self) -> str:
        return f"<GuestMemory {self.nr_frames} frames, {len(self._frames)} allocated>"
