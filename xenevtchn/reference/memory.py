"""A domain's guest-physical memory, frame by frame: ``d.memory`` (docs/semantics.md
"FIFO event channels").

Frames are 4 KiB and allocated lazily: a frame that was never touched holds no storage.
``page(gfn)`` hands out a writable view of a frame (zero-filled on first use);
``map(gfn, buffer)`` puts a caller's own buffer at ``gfn`` instead, so another simulator's
memory can back the frames the FIFO ABI uses. The hypervisor side maps frames with
:meth:`GuestMemory.acquire` (control blocks, event-array pages), which pins them so that
``map`` cannot replace them while they are in use.
"""

from __future__ import annotations

import ctypes

from xenevtchn.constants import PAGE_SIZE

from .shared_info import writable_bytes

DEFAULT_FRAMES = 262144  # 1 GiB of 4 KiB frames
MAX_FRAMES = 1 << 40  # 52-bit guest-physical addresses
MAP_ALIGN = 8  # a mapped buffer's address must be 8-byte aligned (atomic event words)


def _buffer_address(view: memoryview) -> int:
    """The address of the first byte of a writable, C-contiguous byte view."""
    holder = (ctypes.c_ubyte * view.nbytes).from_buffer(view)
    return ctypes.addressof(holder)


class GuestMemory:
    """``nr_frames`` frames of 4096 bytes; frame numbers (gfns) are ``0..nr_frames-1``."""

    def __init__(self, nr_frames: int = DEFAULT_FRAMES) -> None:
        self._nr_frames = nr_frames
        self._pages: dict[int, memoryview] = {}
        self._pins: dict[int, int] = {}  # gfn -> how many FIFO mappings use it

    def __repr__(self) -> str:
        return f"GuestMemory(nr_frames={self._nr_frames}, touched={len(self._pages)})"

    @property
    def nr_frames(self) -> int:
        """How many frames the domain has."""
        return self._nr_frames

    def _gfn(self, gfn: object) -> int:
        if not isinstance(gfn, int):
            raise TypeError(f"gfn must be an int, not {type(gfn).__name__}")
        if not 0 <= gfn < self._nr_frames:
            raise ValueError(f"gfn must be in 0..{self._nr_frames - 1}, not {gfn}")
        return int(gfn)

    def page(self, gfn: int) -> memoryview:
        """A writable 4096-byte view of frame ``gfn`` (the same memory on every call)."""
        return self._frame(self._gfn(gfn))

    def map(self, gfn: int, buffer: object) -> None:
        """Back frame ``gfn`` with the first 4096 bytes of the caller's ``buffer``.

        ``buffer``: writable (else ``TypeError``), C-contiguous, at least 4096 bytes and
        8-byte aligned (else ``ValueError``). A frame in use as a FIFO control block or
        event-array page cannot be replaced (``ValueError``).
        """
        gfn = self._gfn(gfn)
        view = writable_bytes(buffer, "buffer")
        if view.nbytes < PAGE_SIZE:
            raise ValueError(f"buffer holds {view.nbytes} bytes; a frame needs {PAGE_SIZE}")
        view = view[:PAGE_SIZE]
        if _buffer_address(view) % MAP_ALIGN:
            raise ValueError(f"buffer address must be {MAP_ALIGN}-byte aligned")
        if self._pins.get(gfn):
            raise ValueError(f"frame {gfn} is in use as a FIFO control block or event-array page")
        self._pages[gfn] = view

    def read_guest(self, address: int, size: int) -> bytes | None:
        """``copy_from_guest`` of ``size`` bytes at guest address ``address`` (guest
        virtual = guest physical; frame ``address // 4096``): None when any byte is
        outside the domain's memory. Untouched frames read as zeros (not allocated)."""
        end = address + size
        if address < 0 or end > self._nr_frames * PAGE_SIZE:
            return None
        chunks = []
        while address < end:
            gfn, offset = divmod(address, PAGE_SIZE)
            take = min(end - address, PAGE_SIZE - offset)
            page = self._pages.get(gfn)
            chunks.append(bytes(take) if page is None else page[offset : offset + take].tobytes())
            address += take
        return b"".join(chunks)

    # -- the hypervisor's mappings ------------------------------------------------------
    def _frame(self, gfn: int) -> memoryview:
        view = self._pages.get(gfn)
        if view is None:
            view = self._pages[gfn] = memoryview(bytearray(PAGE_SIZE))
        return view

    def acquire(self, gfn: int) -> memoryview | None:
        """Map frame ``gfn`` for the hypervisor and pin it; None if there is no such frame."""
        if not 0 <= gfn < self._nr_frames:
            return None
        self._pins[gfn] = self._pins.get(gfn, 0) + 1
        return self._frame(gfn)

    def release(self, gfn: int) -> None:
        """Drop one pin taken by :meth:`acquire`."""
        left = self._pins[gfn] - 1
        if left:
            self._pins[gfn] = left
        else:
            del self._pins[gfn]
