"""HYPERVISOR_vcpu_op (hypercall 24): VCPUOP_register_vcpu_info, from
xen-hvm-and-beyond §3 (master's rules; §9 lists what older Xen did instead).

A vCPU's vcpu_info starts in its shared_info slot (vCPUs 0..31) or nowhere (32..); the
guest may move it, once, to any 64 bytes of its own memory. The move copies the old
area whole (or starts from zeros with the mask set), forces the selector to all ones
and marks events pending, so the guest's next upcall scans every word.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from xenevtchn.constants import PAGE_SIZE
from xenevtchn.errors import EvtchnError

from .events import mark_events_pending
from .shared_info import UPCALL_MASK_OFFSET, VCPU_INFO_SIZE

if TYPE_CHECKING:
    from .domain import Domain

VCPUOP_REGISTER_VCPU_INFO = 10
ARG = struct.Struct("<QII")  # mfn (a gfn here), offset, rsvd: 16 bytes
_ALIGN = {"x86_64": 8, "x86_32": 4}  # alignof(xen_ulong_t)
_U64 = (1 << 64) - 1


def register_vcpu_info(d: Domain, gfn: int, offset: int, vcpu: int) -> None:
    """§3.3, checks in order, then populate / switch / selector / mark pending."""
    if vcpu >= len(d.vcpus):
        raise EvtchnError(errno.ENOENT, "register_vcpu_info")
    gaddr = ((gfn << 12) + offset) & _U64
    if gaddr == _U64 or gaddr >> 12 != gfn:
        raise EvtchnError(errno.EINVAL, "register_vcpu_info")
    if vcpu in d.registered_vcpu_info:
        raise EvtchnError(errno.EBUSY, "register_vcpu_info")
    in_page = gaddr % PAGE_SIZE
    if in_page + VCPU_INFO_SIZE > PAGE_SIZE:
        raise EvtchnError(errno.ENXIO, "register_vcpu_info")
    if gaddr % _ALIGN[d.shared_info.layout.name]:
        raise EvtchnError(errno.ENXIO, "register_vcpu_info")
    page = d.memory.acquire(gfn)  # held for good: the frame can no longer be remapped
    if page is None:
        raise EvtchnError(errno.EINVAL, "register_vcpu_info")
    area = page[in_page : in_page + VCPU_INFO_SIZE]
    si = d.shared_info
    old = si.vcpu_info(vcpu)
    if old is None:  # from the dummy: a fresh area, upcalls masked
        area[:] = bytes(VCPU_INFO_SIZE)
        area[UPCALL_MASK_OFFSET] = 1
    else:
        area[:] = old.tobytes()
    si.place_vcpu_info(vcpu, area)
    d.registered_vcpu_info[vcpu] = (gfn, in_page)
    sel = si.layout.sel_offset
    area[sel : sel + si.layout.sel_size] = b"\xff" * si.layout.sel_size
    mark_events_pending(d.vcpus[vcpu])  # no kick if the copied flag was already set


def vcpu_op(d: Domain, cmd: int, vcpu: int, data: bytes) -> int:
    """§3.2: the vCPU first, then the command, then the argument's copy-in."""
    if not 0 <= vcpu < len(d.vcpus):
        return -errno.ENOENT
    if cmd != VCPUOP_REGISTER_VCPU_INFO:
        return -errno.ENOSYS
    if len(data) < ARG.size:
        return -errno.EFAULT
    gfn, offset, _rsvd = ARG.unpack_from(data)
    try:
        register_vcpu_info(d, gfn, offset, vcpu)
    except EvtchnError as exc:
        return -exc.errno
    return 0
