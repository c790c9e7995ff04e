"""HVM/PVH upcall delivery (spec xen-hvm-and-beyond §2): the callback via, per-vCPU
upcall vectors, the level-triggered GSI/INTx line of vCPU 0, and ``HYPERVISOR_hvm_op``.

The C core records a kick whenever it raises a vCPU's ``evtchn_upcall_pending`` from 0
to 1 (Xen's ``vcpu_mark_events_pending``), whatever the domain's type. For an HVM/PVH
domain the hook planner turns each such kick into Xen's ``hvm_assert_evtchn_irq``
(``kick_calls``): an interrupt, a kick, a line change, or nothing. The hypercalls here
(set_param, set_upcall_vector) and the VM-exit check make the same decisions directly.

Hook calls are built as ``[fn, arg, fn, arg, ...]`` lists, the shape
``run_hooks`` (csrc/python/run_hooks.c) takes, so one runner calls them all.
"""

from __future__ import annotations

import errno
import struct
from functools import partial
from typing import TYPE_CHECKING, Any

from ._native import ffi, lib
from .constants import (
    DOMID_SELF,
    HVM_MIN_UPCALL_VECTOR,
    HVM_NR_GSIS,
    HVM_NR_PARAMS,
    XEN_HVM_PARAM_SIZE,
    XEN_HVM_UPCALL_VECTOR_SIZE,
    XEN_LEGACY_MAX_VCPUS,
    HvmOp,
    HvmParam,
)
from .errors import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain
    from .hypervisor import Hypervisor

# callback_via_type (Xen's HVMIRQ_callback_*)
VIA_NONE, VIA_GSI, VIA_PCI_INTX, VIA_VECTOR = 0, 1, 2, 3
VIA_NAMES = ("none", "gsi", "pci_intx", "vector")

_PARAM = struct.Struct("<HHIQ")      # struct xen_hvm_param: domid, pad, index, value
_UPCALL_VECTOR = struct.Struct("<IB3x")   # struct xen_hvm_evtchn_upcall_vector
assert _PARAM.size == XEN_HVM_PARAM_SIZE and _UPCALL_VECTOR.size == XEN_HVM_UPCALL_VECTOR_SIZE


def pci_intx_gsi(dev: int, intx: int) -> int:
    """The GSI of PCI device ``dev``'s INTx line (Xen's ``hvm_pci_intx_gsi``)."""
    return ((dev * 4 + dev // 8 + intx) & 31) + 16


class HvmState:
    """One HVM/PVH domain's upcall state (Xen's ``struct hvm_irq`` callback fields)."""

    __slots__ = ("pvh", "via_type", "gsi", "pci_dev", "pci_intx", "vector", "asserted",
                 "params", "upcall_vectors", "no_wake_hi")

    def __init__(self, nr_vcpus: int, pvh: bool) -> None:
        self.pvh = pvh                 # no vIOAPIC/vPIC: GSI/INTx callbacks are ignored
        self.via_type = VIA_NONE
        self.gsi = 0
        self.pci_dev = 0
        self.pci_intx = 0
        self.vector = 0
        self.asserted = False          # callback_via_asserted, tracked even for none/vector
        self.params: dict[int, int] = {}   # index -> the raw value last set
        self.upcall_vectors = [0] * nr_vcpus
        # kick_no_wake's words for vCPUs 32.. (the C core's hi_kick_no_wake), or NULL
        hi = nr_vcpus - XEN_LEGACY_MAX_VCPUS
        self.no_wake_hi: Any = ffi.new("uint32_t[]", (hi + 31) // 32) if hi > 0 else ffi.NULL

    def pv_evtchn(self) -> bool:
        """Xen's ``is_hvm_pv_evtchn_domain``."""
        return self.via_type == VIA_VECTOR or self.upcall_vectors[0] != 0

    def has_vector_delivery(self, v: int) -> bool:
        """The vCPU's upcall arrives as an interrupt vector (poll's "needs delivery")."""
        return self.upcall_vectors[v] != 0 or self.via_type == VIA_VECTOR

    def line_gsi(self) -> int | None:
        """The GSI the callback drives (GSI or PCI INTx), or None."""
        if self.via_type == VIA_GSI:
            return self.gsi
        if self.via_type == VIA_PCI_INTX:
            return pci_intx_gsi(self.pci_dev, self.pci_intx)
        return None

    def kick_no_wake(self, nr_vcpus: int) -> int:
        """Bits of the vCPUs that Xen does not kick (cases 3 and 4 of §2.3)."""
        if self.pv_evtchn():
            return 0
        bits = 0
        for v in range(nr_vcpus):
            if not self.upcall_vectors[v]:
                bits |= 1 << v
        return bits


def sync_kick_wake(d: Domain) -> None:
    """Tell the C core which of d's vCPUs a kick must not take out of poll."""
    st = d._hvm
    if st is not None:
        bits = st.kick_no_wake(len(d.vcpus))
        d._c.kick_no_wake = bits & 0xFFFFFFFF
        hi = st.no_wake_hi
        if hi != ffi.NULL:
            for w in range(len(hi)):
                hi[w] = bits >> (32 * w + 32) & 0xFFFFFFFF
            d._c.hi_kick_no_wake = hi


# ---- hvm_assert_evtchn_irq and the line --------------------------------------------------

def _interrupt(hv: Hypervisor, calls: list[Any], vcpu: Any, vector: int) -> None:
    for fn in hv._interrupt_fns:
        calls += (partial(fn, vcpu), vector)


def _gsi(hv: Hypervisor, calls: list[Any], d: Domain, gsi: int, level: bool) -> None:
    for fn in hv._gsi_fns:
        calls += (partial(fn, d, gsi), level)


def set_line(d: Domain, st: HvmState, asserted: bool, calls: list[Any]) -> None:
    """``hvm_set_callback_irq_level``: drive the callback to ``asserted`` if it moved."""
    if asserted == st.asserted:
        return
    st.asserted = asserted
    gsi = st.line_gsi()
    if gsi is not None:
        _gsi(d.hv, calls, d, gsi, asserted)


def assert_irq(d: Domain, v: int, calls: list[Any], *, pending: bool | None = None) -> bool:
    """``hvm_assert_evtchn_irq(v)`` (§2.3): append the hook calls; True when the vCPU is
    kicked (so a poll it is blocked in ends). ``pending``: v's ``upcall_pending`` as Xen
    reads it (None: read it now)."""
    st = d._hvm
    assert st is not None
    hv = d.hv
    vcpu = d.vcpus[v]
    if pending is None:
        pending = vcpu.upcall_pending != 0
    if st.upcall_vectors[v]:
        _interrupt(hv, calls, vcpu, st.upcall_vectors[v])
        return True
    if st.pv_evtchn():
        if st.via_type == VIA_VECTOR and pending:
            _interrupt(hv, calls, vcpu, st.vector)
        else:
            for fn in hv._kick_fns:
                calls += (fn, vcpu)
        return True
    if v == 0:
        set_line(d, st, pending, calls)
    return False


def kick_calls(d: Domain, kicked: int, woken: int, calls: list[Any]) -> None:
    """The hook calls for kicks and wake-ups the C core recorded for HVM/PVH domain ``d``:
    each kicked vCPU's upcall flag went 0 -> 1 (so Xen read it as set)."""
    wake_fns = d.hv._wake_fns
    v = 0
    while kicked >> v:
        if kicked >> v & 1:
            assert_irq(d, v, calls, pending=True)
            if woken >> v & 1:
                for fn in wake_fns:
                    calls += (fn, d.vcpus[v])
                woken &= ~(1 << v)
        v += 1
    v = 0
    while woken >> v:
        if woken >> v & 1:
            for fn in wake_fns:
                calls += (fn, d.vcpus[v])
        v += 1


def run_calls(calls: list[Any]) -> None:
    """Call every ``fn(arg)`` of ``calls``; the first exception (of any kind: a
    KeyboardInterrupt too, as the C hook runner does) is raised after all ran."""
    first: BaseException | None = None
    for i in range(0, len(calls) - 1, 2):
        try:
            calls[i](calls[i + 1])
        except BaseException as exc:  # noqa: BLE001 - raised once every owed hook ran
            if first is None:
                first = exc
    if first is not None:
        raise first


def _deliver(d: Domain, vcpus: list[int], calls: list[Any]) -> None:
    """Assert on each vCPU in order, ending the poll of every kicked vCPU; run everything
    owed. A woken vCPU's wake hooks follow its own interrupt or kick, before the next
    vCPU's (Xen's vcpu_kick unblocks it there), so the state changes all happen first and
    the hooks then run in that order."""
    wake_fns = d.hv._wake_fns
    for v in vcpus:
        if assert_irq(d, v, calls) and lib.xe_poll_cancel(d._c, v):
            for fn in wake_fns:
                calls += (fn, d.vcpus[v])
    run_calls(calls)


def vm_exit(d: Domain) -> None:
    """``hvm_maybe_deassert_evtchn_irq``: at a VM exit of any vCPU, lower the line if it
    is up and vCPU 0's upcall flag is clear. Nothing for PV domains."""
    st = d._hvm
    if st is None or not st.asserted or d.vcpus[0].upcall_pending:
        return
    calls: list[Any] = []
    set_line(d, st, False, calls)
    run_calls(calls)


# ---- HVMOP_set_param / get_param / set_evtchn_upcall_vector ------------------------------

def set_callback_via(d: Domain, via: int) -> None:
    """``hvm_set_callback_via`` (§2.2); runs the hooks it owes."""
    st = d._hvm
    assert st is not None
    t = (via >> 56) + 1
    if via == 0 or t > VIA_VECTOR:
        t = VIA_NONE
    if t != VIA_VECTOR and st.pvh:
        return   # no vIOAPIC/vPIC: nothing changes
    calls: list[Any] = []
    if st.asserted:   # the old line goes down
        gsi = st.line_gsi()
        if gsi is not None:
            _gsi(d.hv, calls, d, gsi, False)
    st.via_type = t
    if t == VIA_GSI:
        st.gsi = via & 0xFF
        if st.gsi == 0 or st.gsi >= HVM_NR_GSIS:
            st.via_type = VIA_NONE
        elif st.asserted:
            _gsi(d.hv, calls, d, st.gsi, True)
    elif t == VIA_PCI_INTX:
        st.pci_dev = (via >> 11) & 31
        st.pci_intx = via & 3
        if st.asserted:
            _gsi(d.hv, calls, d, pci_intx_gsi(st.pci_dev, st.pci_intx), True)
    elif t == VIA_VECTOR:
        st.vector = via & 0xFF
    sync_kick_wake(d)
    _deliver(d, list(range(len(d.vcpus))), calls)


def _target(d: Domain, domid: int) -> Domain:
    """The domain an HVM param call names (checks 3-5 of §2.4)."""
    target = d if domid == DOMID_SELF else d.hv._domains.get(domid)
    if target is None or target.dead:
        raise EvtchnError(errno.ESRCH, f"hvm_op: no domain {domid}")
    if target._hvm is None:
        raise EvtchnError(errno.EINVAL, f"hvm_op: domain {target.domid} is not HVM/PVH")
    if target is not d and not d.privileged:
        raise EvtchnError(errno.EPERM, f"hvm_op: domain {d.domid} may not reach {target.domid}")
    return target


def set_param(d: Domain, domid: int, index: int, value: int) -> None:
    if index >= HVM_NR_PARAMS:
        raise EvtchnError(errno.EINVAL, f"hvm param {index}")
    target = _target(d, domid)
    st = target._hvm
    assert st is not None
    if index == HvmParam.CALLBACK_IRQ:
        try:
            set_callback_via(target, value)
        finally:
            st.params[index] = value   # stored even where the via was ignored (PVH)
    else:
        st.params[index] = value   # [sim] stored, no effect


def get_param(d: Domain, domid: int, index: int) -> int:
    if index >= HVM_NR_PARAMS:
        raise EvtchnError(errno.EINVAL, f"hvm param {index}")
    st = _target(d, domid)._hvm
    assert st is not None
    return st.params.get(index, 0)


def set_upcall_vector(d: Domain, vcpu: int, vector: int) -> None:
    """The checks after copy-in (§2.5 steps 3-5)."""
    st = d._hvm
    assert st is not None
    if vector < HVM_MIN_UPCALL_VECTOR:
        raise EvtchnError(errno.EINVAL, f"upcall vector {vector:#x} below 0x10")
    if not 0 <= vcpu < len(d.vcpus):
        raise EvtchnError(errno.ENOENT, f"vcpu {vcpu}")
    st.upcall_vectors[vcpu] = vector
    sync_kick_wake(d)
    _deliver(d, [vcpu], [])


def hvm_op(d: Domain, cmd: int, ptr: Any, nbytes: int) -> int:
    """``HYPERVISOR_hvm_op(cmd, arg)`` on a borrowed buffer (lock held): 0 or -errno."""
    try:
        if cmd in (HvmOp.set_param, HvmOp.get_param):
            if nbytes < _PARAM.size:
                return -errno.EFAULT
            buf = ffi.buffer(ptr, _PARAM.size)
            domid, _pad, index, value = _PARAM.unpack_from(buf)
            if cmd == HvmOp.set_param:
                set_param(d, domid, index, value)
            else:
                value = get_param(d, domid, index)
                _PARAM.pack_into(buf, 0, domid, _pad, index, value)
            return 0
        if cmd == HvmOp.set_evtchn_upcall_vector:
            if d._hvm is None:
                return -errno.EINVAL
            if nbytes < _UPCALL_VECTOR.size:
                return -errno.EFAULT
            vcpu, vector = _UPCALL_VECTOR.unpack_from(ffi.buffer(ptr, _UPCALL_VECTOR.size))
            set_upcall_vector(d, vcpu, vector)
            return 0
        return -errno.ENOSYS   # [sim] not modelled
    except EvtchnError as exc:
        return -exc.errno
