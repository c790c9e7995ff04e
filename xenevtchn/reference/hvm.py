"""HVM and PVH upcalls (xen-hvm-and-beyond §2), modelled straight from the spec.

A domain of type ``"hvm"`` or ``"pvh"`` carries an :class:`HvmIrq`. Marking one of its
vCPUs' events pending runs :func:`assert_evtchn_irq` instead of the PV kick; every
hypercall it makes first runs :func:`vm_exit`.
"""

from __future__ import annotations

import errno
import struct
from functools import partial
from typing import TYPE_CHECKING

from xenevtchn.constants import DOMID_SELF
from xenevtchn.errors import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain, Vcpu

NR_PARAMS = 39          # HVM_NR_PARAMS
PARAM_CALLBACK_IRQ = 0
NR_GSIS = 48            # a domU's vIOAPIC pins
MIN_VECTOR = 0x10
PARAM_STRUCT = struct.Struct("<HHIQ")        # xen_hvm_param
UPCALL_VECTOR_STRUCT = struct.Struct("<IB")  # xen_hvm_evtchn_upcall_vector (8 bytes)
UPCALL_VECTOR_SIZE = 8


class HvmIrq:
    """The callback fields of Xen's ``struct hvm_irq`` and the per-vCPU vectors."""

    def __init__(self, nr_vcpus: int, has_pic: bool) -> None:
        self.has_pic = has_pic        # HVM has a vIOAPIC/vPIC; PVH has not
        self.via = "none"             # "none" | "gsi" | "pci_intx" | "vector"
        self.gsi = 0
        self.dev = 0
        self.intx = 0
        self.vector = 0
        self.asserted = False
        self.params = [0] * NR_PARAMS
        self.vcpu_vectors = [0] * nr_vcpus

    def line(self) -> int | None:
        """The GSI the via drives, for the gsi and pci_intx types."""
        if self.via == "gsi":
            return self.gsi
        if self.via == "pci_intx":
            return 16 + ((4 * self.dev + self.dev // 8 + self.intx) % 32)
        return None

    def is_pv_evtchn(self) -> bool:
        return self.via == "vector" or self.vcpu_vectors[0] != 0


def _queue_gsi(d: Domain, gsi: int, level: bool) -> None:
    hv = d.hypervisor
    if hv.on_gsi is not None:
        hv.queue_hook(partial(hv.on_gsi, d, gsi), level)  # type: ignore[arg-type]


def _queue_interrupt(v: Vcpu, vector: int) -> None:
    hv = v.domain.hypervisor
    if hv.on_interrupt is not None:
        hv.queue_hook(partial(hv.on_interrupt, v), vector)  # type: ignore[arg-type]


def set_callback_irq_level(d: Domain) -> None:
    """``hvm_set_callback_irq_level`` for vCPU 0: the mask is not read."""
    irq = d.hvm
    assert irq is not None
    level = d.vcpus[0].upcall_pending != 0
    if level == irq.asserted:
        return
    irq.asserted = level
    gsi = irq.line()
    if gsi is not None:
        _queue_gsi(d, gsi, level)


def assert_evtchn_irq(v: Vcpu) -> None:
    """``hvm_assert_evtchn_irq``: the first of four cases that matches."""
    d = v.domain
    irq = d.hvm
    assert irq is not None
    if irq.vcpu_vectors[v.id]:
        _queue_interrupt(v, irq.vcpu_vectors[v.id])
        v.unblock()
    elif irq.is_pv_evtchn():
        if irq.via == "vector" and v.upcall_pending:
            _queue_interrupt(v, irq.vector)
        else:
            hv = d.hypervisor
            hv.queue_hook(hv.on_kick, v)
        v.unblock()
    elif v.id == 0:
        set_callback_irq_level(d)


def vm_exit(d: Domain) -> None:
    """``hvm_maybe_deassert_evtchn_irq``: nothing for PV."""
    irq = d.hvm
    if irq is not None and irq.asserted and d.vcpus[0].upcall_pending == 0:
        set_callback_irq_level(d)


def set_callback_via(d: Domain, via: int) -> None:
    irq = d.hvm
    assert irq is not None
    kind = via >> 56
    if via == 0 or kind > 2:
        new = "none"
    else:
        new = ("gsi", "pci_intx", "vector")[kind]
    if new != "vector" and not irq.has_pic:
        return
    if irq.asserted:
        old = irq.line()
        if old is not None:
            _queue_gsi(d, old, False)
    irq.via = new
    if new == "gsi":
        irq.gsi = via & 0xFF
        if irq.gsi == 0 or irq.gsi >= NR_GSIS:
            irq.via = "none"
        elif irq.asserted:
            _queue_gsi(d, irq.gsi, True)
    elif new == "pci_intx":
        irq.dev = (via >> 11) & 0x1F
        irq.intx = via & 3
        if irq.asserted:
            gsi = irq.line()
            assert gsi is not None
            _queue_gsi(d, gsi, True)
    elif new == "vector":
        irq.vector = via & 0xFF
    for v in d.vcpus:
        assert_evtchn_irq(v)


def _target(caller: Domain, domid: int) -> Domain:
    hv = caller.hypervisor
    if domid == DOMID_SELF:
        target = caller
    else:
        try:
            target = hv.get_domain(domid)
        except EvtchnError:
            raise EvtchnError(errno.ESRCH) from None
    if target.hvm is None:
        raise EvtchnError(errno.EINVAL)
    if target is not caller and not caller.privileged:
        raise EvtchnError(errno.EPERM)
    return target


def set_param(caller: Domain, domid: int, index: int, value: int) -> None:
    if index >= NR_PARAMS:
        raise EvtchnError(errno.EINVAL)
    target = _target(caller, domid)
    irq = target.hvm
    assert irq is not None
    if index == PARAM_CALLBACK_IRQ:
        set_callback_via(target, value)
    irq.params[index] = value


def get_param(caller: Domain, domid: int, index: int) -> int:
    if index >= NR_PARAMS:
        raise EvtchnError(errno.EINVAL)
    irq = _target(caller, domid).hvm
    assert irq is not None
    return irq.params[index]


def set_upcall_vector(caller: Domain, vcpu_id: int, vector: int) -> None:
    irq = caller.hvm
    if irq is None:
        raise EvtchnError(errno.EINVAL)
    if vector < MIN_VECTOR:
        raise EvtchnError(errno.EINVAL)
    if vcpu_id >= len(caller.vcpus):
        raise EvtchnError(errno.ENOENT)
    irq.vcpu_vectors[vcpu_id] = vector
    assert_evtchn_irq(caller.vcpus[vcpu_id])


def hvm_op(caller: Domain, cmd: int, view: memoryview) -> int:
    """``HYPERVISOR_hvm_op`` on the caller's buffer: 0 or -errno (copy-back on get)."""
    try:
        if cmd in (0, 1):
            if view.nbytes < PARAM_STRUCT.size:
                return -errno.EFAULT
            domid, pad, index, value = PARAM_STRUCT.unpack_from(view, 0)
            if cmd == 0:
                set_param(caller, domid, index, value)
            else:
                value = get_param(caller, domid, index)
                PARAM_STRUCT.pack_into(view, 0, domid, pad, index, value)
            return 0
        if cmd == 23:
            if caller.hvm is None:
                return -errno.EINVAL
            if view.nbytes < UPCALL_VECTOR_SIZE:
                return -errno.EFAULT
            vcpu_id, vector = UPCALL_VECTOR_STRUCT.unpack_from(view, 0)
            set_upcall_vector(caller, vcpu_id, vector)
            return 0
        return -errno.ENOSYS
    except EvtchnError as exc:
        return -exc.errno
