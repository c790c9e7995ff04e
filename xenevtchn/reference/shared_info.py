"""The guest-visible ``struct shared_info`` of the 2-level ABI, over a caller's buffer.

Only the parts the event-channel model touches are decoded: the per-vCPU ``vcpu_info``
flags and selector, and the ``evtchn_pending`` / ``evtchn_mask`` bitmaps (spec §1.4,
§12). Every bitmap is little-endian, so bit ``n`` of a bitmap or selector word always
lives at byte ``n // 8``, bit ``n % 8``: all bit operations below work on single bytes,
whatever the word size of the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenevtchn.constants import PAGE_SIZE, SHARED_INFO_SIZE, XEN_LEGACY_MAX_VCPUS

VCPU_INFO_SIZE = 64  # stride of shared_info.vcpu_info[] in both layouts
UPCALL_PENDING_OFFSET = 0  # evtchn_upcall_pending, a byte of vcpu_info
UPCALL_MASK_OFFSET = 1  # evtchn_upcall_mask, a byte of vcpu_info


@dataclass(frozen=True)
class Layout:
    """Where the 2-level event-channel fields sit for one guest word size."""

    name: str
    size: int  # sizeof(struct shared_info)
    word_bits: int  # W: bits per evtchn_pending word / selector
    nr_ports: int  # W * W ports exist in the 2-level ABI
    pending_offset: int  # evtchn_pending[]
    mask_offset: int  # evtchn_mask[]
    sel_offset: int  # evtchn_pending_sel inside vcpu_info
    sel_size: int  # bytes of evtchn_pending_sel (xen_ulong_t)


LAYOUTS: dict[str, Layout] = {
    "x86_64": Layout("x86_64", SHARED_INFO_SIZE["x86_64"], 64, 4096, 2048, 2560, 8, 8),
    "x86_32": Layout("x86_32", SHARED_INFO_SIZE["x86_32"], 32, 1024, 2048, 2176, 4, 4),
}


def writable_bytes(buffer: object, what: str = "buffer") -> memoryview:
    """Return a writable, C-contiguous, one-dimensional byte view of ``buffer``.

    Raises ``TypeError`` for a non-buffer, a read-only buffer or a non-contiguous one.
    """
    try:
        view = memoryview(buffer)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be a writable buffer, not {type(buffer).__name__}") from None
    if view.readonly:
        raise TypeError(f"{what} must be a writable buffer (this one is read-only)")
    if not view.c_contiguous:
        raise TypeError(f"{what} must be a C-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _check_port(port: int) -> int:
    if not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if port < 0:
        raise ValueError(f"port must be >= 0, not {port}")
    return port


class SharedInfo:
    """A domain's ``shared_info`` living in a writable buffer (Xen's byte layout).

    ``SharedInfo(buffer=None, layout="x86_64")`` only wraps the buffer (a fresh zeroed
    4096-byte page when ``None``); :meth:`initialise` does what Xen's domain builder does.
    The methods not in the public API (``test_and_set_pending`` ...) are the hypervisor's
    primitive bit operations used by the model.
    """

    def __init__(self, buffer: object = None, layout: str = "x86_64") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, not {layout!r}")
        self.layout: Layout = LAYOUTS[layout]
        if buffer is None:
            buffer = bytearray(PAGE_SIZE)
        view = writable_bytes(buffer, "shared_info")
        if view.nbytes < self.layout.size:
            raise ValueError(
                f"shared_info buffer holds {view.nbytes} bytes; the {layout} layout needs "
                f"at least {self.layout.size}"
            )
        self._view = view
        # vCPUs whose vcpu_info is not their legacy slot: the area they registered, or
        # None (vCPUs 32.. start with none: Xen's dummy, written to but never read).
        self._placed: dict[int, memoryview | None] = {}

    # -- where each vcpu_info lives (VCPUOP_register_vcpu_info, xen-hvm-and-beyond §3.1) --
    def vcpu_info(self, vcpu: int) -> memoryview | None:
        """The 64 bytes of ``vcpu``'s vcpu_info wherever it lives, or None when it has none."""
        if vcpu in self._placed:
            return self._placed[vcpu]
        if vcpu < XEN_LEGACY_MAX_VCPUS:
            return self._view[vcpu * VCPU_INFO_SIZE : (vcpu + 1) * VCPU_INFO_SIZE]
        return None

    def place_vcpu_info(self, vcpu: int, area: memoryview) -> None:
        """From now on ``vcpu``'s vcpu_info is ``area`` (64 bytes); the old one is left alone."""
        self._placed[vcpu] = area

    def _vi_byte(self, vcpu: int, offset: int) -> int:
        vi = self.vcpu_info(vcpu)
        return 0 if vi is None else vi[offset]

    # -- public API ---------------------------------------------------------------------
    @property
    def buffer(self) -> memoryview:
        """Writable byte view of the whole underlying buffer."""
        return self._view

    def is_pending(self, port: int) -> bool:
        """The ``evtchn_pending`` bit of ``port`` (ports beyond the ABI: not pending)."""
        port = _check_port(port)
        if port >= self.layout.nr_ports:
            return False
        return bool(self._view[self.layout.pending_offset + (port >> 3)] >> (port & 7) & 1)

    def is_masked(self, port: int) -> bool:
        """The ``evtchn_mask`` bit of ``port`` (ports beyond the ABI: masked)."""
        port = _check_port(port)
        if port >= self.layout.nr_ports:
            return True
        return bool(self._view[self.layout.mask_offset + (port >> 3)] >> (port & 7) & 1)

    def __repr__(self) -> str:
        return f"SharedInfo(layout={self.layout.name!r}, nbytes={self._view.nbytes})"

    # -- domain builder -----------------------------------------------------------------
    def initialise(self, mask_upcalls: bool = True) -> None:
        """Zero the struct; for PV set ``evtchn_upcall_mask = 1`` in all 32 ``vcpu_info``
        (HVM/PVH stay all zero)."""
        view = self._view
        view[: self.layout.size] = bytes(self.layout.size)
        for vcpu in range(XEN_LEGACY_MAX_VCPUS if mask_upcalls else 0):
            view[vcpu * VCPU_INFO_SIZE + UPCALL_MASK_OFFSET] = 1

    # -- hypervisor primitives (ports are known to be < nr_ports) -----------------------
    def test_and_set_pending(self, port: int) -> bool:
        """Set the pending bit of ``port``; return whether it was already set."""
        i = self.layout.pending_offset + (port >> 3)
        bit = 1 << (port & 7)
        old = self._view[i]
        if old & bit:
            return True
        self._view[i] = old | bit
        return False

    def test_pending(self, port: int) -> bool:
        """The pending bit of ``port`` (no argument checks)."""
        return bool(self._view[self.layout.pending_offset + (port >> 3)] >> (port & 7) & 1)

    def test_mask(self, port: int) -> bool:
        """The mask bit of ``port`` (no argument checks)."""
        return bool(self._view[self.layout.mask_offset + (port >> 3)] >> (port & 7) & 1)

    def clear_pending(self, port: int) -> None:
        """Clear the pending bit of ``port``."""
        i = self.layout.pending_offset + (port >> 3)
        self._view[i] &= ~(1 << (port & 7)) & 0xFF

    def test_and_clear_mask(self, port: int) -> bool:
        """Clear the mask bit of ``port``; return whether it was set."""
        i = self.layout.mask_offset + (port >> 3)
        bit = 1 << (port & 7)
        old = self._view[i]
        if not old & bit:
            return False
        self._view[i] = old & ~bit & 0xFF
        return True

    def test_and_set_sel(self, vcpu: int, word: int) -> bool:
        """Set bit ``word`` of ``vcpu``'s ``evtchn_pending_sel``; return its old value.
        A vCPU with no vcpu_info: its writes go nowhere, reported as "already set" so
        that nothing follows them (no upcall flag, no kick)."""
        vi = self.vcpu_info(vcpu)
        if vi is None:
            return True
        i = self.layout.sel_offset + (word >> 3)
        bit = 1 << (word & 7)
        old = vi[i]
        if old & bit:
            return True
        vi[i] = old | bit
        return False

    def test_and_set_upcall_pending(self, vcpu: int) -> bool:
        """Set bit 0 of ``vcpu``'s ``evtchn_upcall_pending``; return its old value (True,
        i.e. nothing to notify, for a vCPU with no vcpu_info)."""
        vi = self.vcpu_info(vcpu)
        if vi is None:
            return True
        old = vi[UPCALL_PENDING_OFFSET]
        if old & 1:
            return True
        vi[UPCALL_PENDING_OFFSET] = old | 1
        return False

    def upcall_pending(self, vcpu: int) -> int:
        """``evtchn_upcall_pending`` of ``vcpu``'s vcpu_info (a byte; 0 with none)."""
        return self._vi_byte(vcpu, UPCALL_PENDING_OFFSET)

    def upcall_mask(self, vcpu: int) -> int:
        """``evtchn_upcall_mask`` of ``vcpu``'s vcpu_info (a byte; 0 with none)."""
        return self._vi_byte(vcpu, UPCALL_MASK_OFFSET)

    def pending_sel(self, vcpu: int) -> int:
        """``evtchn_pending_sel`` of ``vcpu``'s vcpu_info (a 64- or 32-bit word; 0 with none)."""
        vi = self.vcpu_info(vcpu)
        if vi is None:
            return 0
        start = self.layout.sel_offset
        return int.from_bytes(vi[start : start + self.layout.sel_size], "little")

    # -- guest primitives (the guest kernel's own reads and atomic writes) --------------
    def set_mask(self, port: int) -> None:
        """Set the mask bit of ``port`` (the guest's ``mask_evtchn``)."""
        self._view[self.layout.mask_offset + (port >> 3)] |= 1 << (port & 7)

    def clear_mask(self, port: int) -> None:
        """Clear the mask bit of ``port`` (the guest's local unmask)."""
        i = self.layout.mask_offset + (port >> 3)
        self._view[i] &= ~(1 << (port & 7)) & 0xFF

    def _word(self, offset: int, word: int) -> int:
        size = self.layout.word_bits >> 3
        start = offset + word * size
        return int.from_bytes(self._view[start : start + size], "little")

    def pending_word(self, word: int) -> int:
        """``evtchn_pending[word]`` (bit ``b`` is port ``word * W + b``)."""
        return self._word(self.layout.pending_offset, word)

    def mask_word(self, word: int) -> int:
        """``evtchn_mask[word]``."""
        return self._word(self.layout.mask_offset, word)

    def exchange_sel(self, vcpu: int, value: int = 0) -> int:
        """``xchg(evtchn_pending_sel, value)`` in ``vcpu``'s vcpu_info: the old word (0
        and nothing written for a vCPU with none)."""
        vi = self.vcpu_info(vcpu)
        if vi is None:
            return 0
        start = self.layout.sel_offset
        end = start + self.layout.sel_size
        old = int.from_bytes(vi[start:end], "little")
        vi[start:end] = value.to_bytes(self.layout.sel_size, "little")
        return old

    def clear_upcall_pending(self, vcpu: int) -> None:
        """``evtchn_upcall_pending = 0`` in ``vcpu``'s vcpu_info (the first thing an upcall does)."""
        vi = self.vcpu_info(vcpu)
        if vi is not None:
            vi[UPCALL_PENDING_OFFSET] = 0
