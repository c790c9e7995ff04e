"""Where each vCPU's ``vcpu_info`` lives, and ``HYPERVISOR_vcpu_op`` (hypercall 24).

vCPUs 0..31 start on their legacy slot in shared_info; higher ones start with none (Xen's
``dummy_vcpu_info``: their upcalls are lost, their events are not). A vCPU moves to an
area of its domain's memory with ``VCPUOP_register_vcpu_info`` (spec
xen-hvm-and-beyond 3), checked here in master's order; the C core then fills the area,
switches the vCPU's entry in the domain's table (``struct xe_shinfo.vcpu_info``, read by
every C data path) and marks events pending. Raw calls return 0 or ``-errno``.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Any

from ._native import ffi, lib
from .constants import (
    HVM_MAX_VCPUS,
    MAX_VIRT_CPUS,
    PAGE_SIZE,
    VCPU_INFO_SIZE,
    VCPU_REGISTER_VCPU_INFO_SIZE,
    XEN_LEGACY_MAX_VCPUS,
    VcpuOp,
)
from .errors import EvtchnError
from .hypercalls import writable_bytes

if TYPE_CHECKING:
    from .domain import Domain

U64 = 0xFFFFFFFFFFFFFFFF
# struct vcpu_register_vcpu_info {uint64 mfn; uint32 offset; uint32 rsvd}
_REGISTER = struct.Struct("<QII")
assert _REGISTER.size == VCPU_REGISTER_VCPU_INFO_SIZE
# alignof(xen_ulong_t): the area must be aligned to it (compat guests: 4).
_ALIGN = {"x86_64": 8, "x86_32": 4}


def max_vcpus(layout: str, dtype: str = "pv") -> int:
    """The most vCPUs a domain of this layout and type may have (spec
    xen-hvm-and-beyond 1.3): x86 PV ``MAX_VIRT_CPUS`` (8192); HVM/PVH ``HVM_MAX_VCPUS`` (128).

    The one place the limit is decided."""
    del layout  # both x86 layouts: MAX_VIRT_CPUS
    return MAX_VIRT_CPUS if dtype == "pv" else HVM_MAX_VCPUS


class VcpuInfoTable:
    """A domain's ``void *vcpu_info[]`` for the C core, and the Python side's record of
    which vCPUs registered where (``areas[v]``: ``(gfn, offset)`` or None)."""

    __slots__ = ("c", "areas")

    def __init__(self, d: Domain, nr_vcpus: int) -> None:
        n = max(nr_vcpus, XEN_LEGACY_MAX_VCPUS)
        self.c = ffi.new("void *[]", n)
        base = d.shared_info._cdata
        for v in range(XEN_LEGACY_MAX_VCPUS):  # the legacy slots; higher vCPUs: none
            self.c[v] = base + v * VCPU_INFO_SIZE
        self.areas: list[tuple[int, int] | None] = [None] * nr_vcpus
        # Both views of the domain's shared_info read through the same table.
        for s in (d.shared_info._s, ffi.addressof(d._c, "si")):
            s.vcpu_info = self.c
            s.nr_vcpu_info = n

    def registered(self) -> dict[int, tuple[int, int]]:
        """``{vcpu: (gfn, offset)}`` of every registration."""
        return {v: a for v, a in enumerate(self.areas) if a is not None}


def register(d: Domain, gfn: int, offset: int, vcpu: int) -> None:
    """VCPUOP_register_vcpu_info for ``vcpu`` of ``d`` (the hypervisor's lock held; the
    vCPU exists). Raises ``EvtchnError`` with master's errno at the first failing check."""
    table: VcpuInfoTable = d._vcpu_info
    # 1. gaddr = (mfn << PAGE_SHIFT) + offset must not wrap out of the frame.
    gaddr = ((gfn << 12) + offset) & U64
    if gaddr == U64 or gaddr >> 12 != gfn:
        raise EvtchnError(errno.EINVAL, f"register_vcpu_info: offset {offset} of gfn {gfn}")
    # 2. One registration per vCPU, for good.
    if table.areas[vcpu] is not None:
        raise EvtchnError(errno.EBUSY, f"register_vcpu_info: vCPU {vcpu} already registered")
    # 3. The area may not cross the page; 4. it is aligned to xen_ulong_t.
    page_off = gaddr & (PAGE_SIZE - 1)
    if page_off + VCPU_INFO_SIZE > PAGE_SIZE:
        raise EvtchnError(errno.ENXIO, f"register_vcpu_info: offset {page_off} crosses the page")
    if page_off % _ALIGN[d.layout]:
        raise EvtchnError(errno.ENXIO, f"register_vcpu_info: offset {page_off} is misaligned")
    # 5. A guest RAM page (every simulator frame is writable: no -EACCES).
    if not d.memory.valid(gfn):
        raise EvtchnError(errno.EINVAL, f"register_vcpu_info: gfn {gfn} is not a guest page")
    area = d.memory.pin_vcpu_info(gfn) + page_off
    table.areas[vcpu] = (gfn, page_off)
    rc = lib.xe_vcpu_info_register(d._c, vcpu, area)
    if rc < 0:  # pragma: no cover - the table covers every vCPU of the domain
        raise EvtchnError(-rc, "register_vcpu_info")
    d.hv._after(rc)


def vcpu_op(d: Domain, cmd: Any, vcpu: Any, arg: Any) -> int:
    """Raw ``HYPERVISOR_vcpu_op(cmd, vcpu, arg)``: 0 or ``-errno`` (nothing copied back)."""
    if not isinstance(cmd, int):
        raise TypeError(f"cmd must be an int, not {type(cmd).__name__}")
    if not isinstance(vcpu, int):
        raise TypeError(f"vcpu must be an int, not {type(vcpu).__name__}")
    ptr, nbytes = writable_bytes(arg, "arg")
    try:
        raw = bytes(ffi.buffer(ptr, nbytes)) if nbytes else b""  # copy_from_guest
    finally:
        if nbytes:
            ffi.release(ptr)
    with d.hv._lock:
        if d.dead:
            return -errno.ESRCH
        if not 0 <= vcpu < len(d.vcpus):
            return -errno.ENOENT  # before the command is looked at
        if cmd != VcpuOp.register_vcpu_info:
            return -errno.ENOSYS  # x86: [sim] the other commands are not modelled
        if nbytes < _REGISTER.size:
            return -errno.EFAULT
        gfn, offset, _rsvd = _REGISTER.unpack_from(raw)
        try:
            register(d, gfn, offset, vcpu)
        except EvtchnError as exc:
            return -exc.errno
        return 0
