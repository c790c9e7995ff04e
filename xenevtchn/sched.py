"""``HYPERVISOR_sched_op`` (hypercall 29) made raw: ``d.sched_op(cmd, arg, vcpu)``.

SCHEDOP_yield answers 0 and does nothing; SCHEDOP_poll reads ``struct sched_poll`` from
``arg`` in the domain's layout and the array of ports from the domain's memory (guest
virtual = guest physical, spec xen-hvm-and-beyond §5), with ``do_poll``'s checks in Xen's
order. Everything else is not modelled: ``-ENOSYS``. Returns 0 or ``-errno``.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Any, Callable

from ._native import ffi, lib
from .constants import SCHED_POLL_SIZE, SCHEDOP_POLL_MAX_PORTS, SchedOp
from .errors import EvtchnError
from .hypercalls import writable_bytes

if TYPE_CHECKING:
    from .domain import Domain

# struct sched_poll: (ports handle, nr_ports, timeout) per layout.
_SCHED_POLL = {"x86_64": struct.Struct("<QI4xQ"), "x86_32": struct.Struct("<IIQ")}
assert all(_SCHED_POLL[k].size == v for k, v in SCHED_POLL_SIZE.items())


def translated(d: Domain) -> bool:
    """Whether guest handles are translated (HVM, PVH, Arm): ``guest_handle_okay``
    always passes for them and faults surface only when an entry is read. Every domain
    is PV, HVM or PVH (``d.type``)."""
    return d.type in ("hvm", "pvh")


def sched_op(d: Domain, cmd: Any, arg: Any, vcpu: Any) -> int:
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
        if d._hvm is not None:
            return d._vm_exit_then(_sched_op, cmd, raw, nbytes, vcpu)
        return _sched_op(d, cmd, raw, nbytes, vcpu)


def _sched_op(d: Domain, cmd: int, raw: bytes, nbytes: int, vcpu: int) -> int:
    if not 0 <= vcpu < len(d.vcpus):
        return -errno.ENOENT   # no such vCPU to make the call
    if cmd == SchedOp.yield_:
        return 0
    if cmd != SchedOp.poll:
        return -errno.ENOSYS   # [sim] not modelled
    layout = _SCHED_POLL[d.layout]
    if nbytes < layout.size:
        return -errno.EFAULT
    addr, nr_ports, timeout = layout.unpack_from(raw)
    try:
        poll(d, vcpu, nr_ports, _reader(d, addr, nr_ports), timeout)
        return 0   # returning at once and blocking both answer 0
    except EvtchnError as exc:
        return -exc.errno


def _reader(d: Domain, addr: int, nr_ports: int) -> Callable[[int], int] | None:
    """Entry ``i`` of the guest's port array (``EFAULT`` if unreadable), or None when the
    PV ``guest_handle_okay`` check already fails for the whole range."""
    mem = d.memory
    if nr_ports and not translated(d) and mem.read(addr, 4 * nr_ports) is None:
        return None

    def read(i: int) -> int:
        b = mem.read(addr + 4 * i, 4)
        if b is None:
            raise EvtchnError(errno.EFAULT, "sched_op: port array")
        return int.from_bytes(b, "little")

    return read


def _needs_delivery(d: Domain, si: Any, vcpu: int) -> bool:
    """Local events need delivery: PV when the upcall flag is set and not masked; HVM/PVH
    (spec xen-hvm-and-beyond 2.6) when the flag is set and the vCPU's upcall is a vector,
    mask ignored; a GSI/INTx/no callback never counts."""
    st = d._hvm
    if st is None:
        return bool(lib.xe_vcpu_upcall_pending(si, vcpu)) and not lib.xe_vcpu_upcall_mask(si, vcpu)
    return st.has_vector_delivery(vcpu) and bool(lib.xe_vcpu_upcall_pending(si, vcpu))


def poll(d: Domain, vcpu: int, nr_ports: int, read: Callable[[int], int] | None,
         timeout: int) -> bool:
    """do_poll after the copy-in: True if it returns at once, False once blocked.

    ``read(i)`` gives the i-th port; ``read`` None means the PV handle check failed.
    """
    if nr_ports > SCHEDOP_POLL_MAX_PORTS:
        raise EvtchnError(errno.EINVAL, "sched_poll: more than 128 ports")
    c = d._c
    if lib.xe_vcpu_polling(c, vcpu):
        raise EvtchnError(errno.EBUSY, f"sched_poll: vCPU {vcpu} is already blocked in poll")
    if read is None:
        raise EvtchnError(errno.EFAULT, "sched_poll: port array outside guest memory")
    si = d.shared_info._s
    # Begin and cancel are one unit: whatever is raised once the poll began (a fault
    # reading a port, a bad port, or a signal handler's exception between two bytecodes)
    # cancels it, so a failed call never leaves the vCPU blocked. Calls on a domain are
    # serialized (Domain._call), so the cancel can only undo this call's own begin.
    try:
        lib.xe_poll_begin(c, vcpu)
        if _needs_delivery(d, si, vcpu):
            lib.xe_poll_cancel(c, vcpu)
            return True
        first = 0
        for i in range(nr_ports):
            port = read(i)
            if i == 0:
                first = port
            if not d.ports.is_valid(port) or not d.ports.usable(port):
                raise EvtchnError(errno.EINVAL, f"sched_poll: port {port}")
            if lib.xe_evtchn_is_pending(c, port):
                lib.xe_poll_cancel(c, vcpu)
                return True
        if nr_ports == 1:
            lib.xe_poll_set_port(c, vcpu, first)
        if timeout:
            d.hv._arm_poll_timer(d, vcpu, timeout)
    except BaseException:
        lib.xe_poll_cancel(c, vcpu)
        raise
    return False
