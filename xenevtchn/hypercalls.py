"""The raw hypercall entry points: Xen's argument structs in a caller's buffer.

``event_channel_op(cmd, buf)`` reads the command's struct out of ``buf`` (copy-in), runs
the command, and on success writes its output fields back in place (copy-out: input
fields are echoed, i.e. left as the caller wrote them). A buffer too short for the struct
is ``-EFAULT`` with nothing done.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable

from . import commands as cmds
from . import fifo
from ._native import ffi
from .constants import EvtchnOp
from .errors import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain

Handler = Callable[["Domain", Any], None]


def _alloc_unbound(d: Domain, a: Any) -> None:
    dom, remote = int(a.dom), int(a.remote_dom)
    a.port = cmds.alloc_unbound(d, dom, remote)


def _bind_interdomain(d: Domain, a: Any) -> None:
    rdom, rport = int(a.remote_dom), int(a.remote_port)
    a.local_port = cmds.bind_interdomain(d, rdom, rport)


def _bind_virq(d: Domain, a: Any) -> None:
    virq, vcpu = int(a.virq), int(a.vcpu)
    a.port = cmds.bind_virq(d, virq, vcpu)


def _bind_pirq(d: Domain, a: Any) -> None:
    pirq, flags = int(a.pirq), int(a.flags)
    a.port = cmds.bind_pirq(d, pirq, flags)


def _close(d: Domain, a: Any) -> None:
    cmds.close_port(d, int(a.port))


def _send(d: Domain, a: Any) -> None:
    cmds.send(d, int(a.port))


def _status(d: Domain, a: Any) -> None:
    st = cmds.status(d, int(a.dom), int(a.port))
    a.status = st.status
    a.vcpu = st.vcpu
    # Union bytes a status does not describe keep whatever the caller put there.
    if st.status == 1:
        a.u.unbound.dom = st.dom
    elif st.status == 2:
        a.u.interdomain.dom = st.dom
        a.u.interdomain.port = st.port
    elif st.status == 3:
        a.u.pirq = st.pirq
    elif st.status == 4:
        a.u.virq = st.virq


def _bind_ipi(d: Domain, a: Any) -> None:
    a.port = cmds.bind_ipi(d, int(a.vcpu))


def _bind_vcpu(d: Domain, a: Any) -> None:
    cmds.bind_vcpu(d, int(a.port), int(a.vcpu))


def _unmask(d: Domain, a: Any) -> None:
    cmds.unmask(d, int(a.port))


def _init_control(d: Domain, a: Any) -> None:
    gfn, offset, vcpu = int(a.control_gfn), int(a.offset), int(a.vcpu)
    a.link_bits = fifo.init_control(d, gfn, offset, vcpu)


def _expand_array(d: Domain, a: Any) -> None:
    fifo.expand_array(d, int(a.array_gfn))


def _set_priority(d: Domain, a: Any) -> None:
    fifo.set_priority(d, int(a.port), int(a.priority))


def _reset(d: Domain, a: Any) -> None:
    cmds.reset(d, int(a.dom))


def _reset_cont(d: Domain, a: Any) -> None:
    cmds.reset(d, int(a.dom), cont=True)


# cmd -> (C struct type, its size, handler); any other cmd answers -ENOSYS.
COMMANDS: dict[int, tuple[str, int, Handler]] = {}
for _cmd, _ctype, _fn in (
    (EvtchnOp.bind_interdomain, "struct evtchn_bind_interdomain", _bind_interdomain),
    (EvtchnOp.bind_virq, "struct evtchn_bind_virq", _bind_virq),
    (EvtchnOp.bind_pirq, "struct evtchn_bind_pirq", _bind_pirq),
    (EvtchnOp.close, "struct evtchn_close", _close),
    (EvtchnOp.send, "struct evtchn_send", _send),
    (EvtchnOp.status, "struct evtchn_status", _status),
    (EvtchnOp.alloc_unbound, "struct evtchn_alloc_unbound", _alloc_unbound),
    (EvtchnOp.bind_ipi, "struct evtchn_bind_ipi", _bind_ipi),
    (EvtchnOp.bind_vcpu, "struct evtchn_bind_vcpu", _bind_vcpu),
    (EvtchnOp.unmask, "struct evtchn_unmask", _unmask),
    (EvtchnOp.reset, "struct evtchn_reset", _reset),
    (EvtchnOp.init_control, "struct evtchn_init_control", _init_control),
    (EvtchnOp.expand_array, "struct evtchn_expand_array", _expand_array),
    (EvtchnOp.set_priority, "struct evtchn_set_priority", _set_priority),
    (EvtchnOp.reset_cont, "struct evtchn_reset", _reset_cont),
):
    COMMANDS[int(_cmd)] = (_ctype + " *", ffi.sizeof(_ctype), _fn)

COMPAT_OP_SIZE = ffi.sizeof("struct evtchn_op")
COMPAT_MAX_CMD = int(EvtchnOp.unmask)


def writable_bytes(arg: Any, what: str) -> tuple[Any, int]:
    """Borrow a writable, contiguous buffer as ``char *``; ``TypeError`` otherwise."""
    try:
        view = memoryview(arg)
    except TypeError:
        raise TypeError(f"{what} must be a writable buffer (bytearray, ...), not {type(arg).__name__}") from None
    with view:
        if view.readonly:
            raise TypeError(f"{what} must be writable; got a read-only {type(arg).__name__}")
        if not view.c_contiguous:
            raise TypeError(f"{what} must be a contiguous buffer")
        nbytes = view.nbytes
    if nbytes == 0:
        return ffi.NULL, 0
    return ffi.from_buffer(arg, require_writable=True), nbytes


def run(d: Domain, cmd: int, ptr: Any, nbytes: int) -> int:
    """Dispatch one command on a buffer already borrowed; returns 0 or -errno."""
    if d.dead:
        return -errno.ESRCH   # a destroyed domain makes no hypercalls
    if d._hvm is not None:
        with d.hv._lock:
            if d.dead:
                return -errno.ESRCH
            return d._vm_exit_then(_dispatch, cmd, ptr, nbytes)
    return _dispatch(d, cmd, ptr, nbytes)


def _dispatch(d: Domain, cmd: int, ptr: Any, nbytes: int) -> int:
    entry = COMMANDS.get(cmd)
    if entry is None:
        return -errno.ENOSYS
    ctype, size, handler = entry
    if nbytes < size:
        return -errno.EFAULT
    try:
        with d.hv._lock:
            if d.dead:
                return -errno.ESRCH
            handler(d, ffi.cast(ctype, ptr))
    except EvtchnError as exc:
        return -exc.errno
    return 0


def event_channel_op(d: Domain, cmd: int, arg: Any) -> int:
    if not isinstance(cmd, int):
        raise TypeError(f"cmd must be an int, not {type(cmd).__name__}")
    ptr, nbytes = writable_bytes(arg, "arg")
    try:
        return run(d, cmd, ptr, nbytes)
    finally:
        if nbytes:
            ffi.release(ptr)  # the caller's buffer is theirs again when we return


def event_channel_op_compat(d: Domain, op: Any) -> int:
    ptr, nbytes = writable_bytes(op, "op")
    try:
        if d.dead:
            return -errno.ESRCH
        if d._hvm is not None and nbytes < COMPAT_OP_SIZE:
            d.vm_exit()   # a hypercall is a VM exit, even one that faults
        if nbytes < COMPAT_OP_SIZE:
            return -errno.EFAULT
        cmd = int(ffi.cast("int32_t *", ptr)[0])
        if not 0 <= cmd <= COMPAT_MAX_CMD:
            if d._hvm is not None:
                d.vm_exit()
            return -errno.ENOSYS
        return run(d, cmd, ptr + 4, COMPAT_OP_SIZE - 4)
    finally:
        if nbytes:
            ffi.release(ptr)

