"""Raw hypercall entry: ``event_channel_op`` / ``event_channel_op_compat`` (spec §3).

The command's struct is copied in (a snapshot of its bytes), decoded, run, and on
success copied back whole, input fields echoed, for commands that have outputs. Bytes
the command does not write (padding, unused union bytes of ``evtchn_status``) keep the
values copied in.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

from xenevtchn.constants import EvtchnOp, EvtchnStat
from xenevtchn.errors import EvtchnError

from . import commands, hvm, structs
from .shared_info import writable_bytes

if TYPE_CHECKING:
    from .domain import Domain

# A handler decodes the snapshot, runs the command, writes outputs into the snapshot
# and returns whether the struct is copied back.
Handler = Callable[["Domain", bytearray], bool]


def _alloc_unbound(caller: Domain, data: bytearray) -> bool:
    dom, remote_dom, _ = structs.ALLOC_UNBOUND.unpack(data)
    port = commands.alloc_unbound(caller, dom, remote_dom)
    structs.U32.pack_into(data, 4, port)
    return True


def _bind_interdomain(caller: Domain, data: bytearray) -> bool:
    remote_dom, remote_port, _ = structs.BIND_INTERDOMAIN.unpack(data)
    port = commands.bind_interdomain(caller, remote_dom, remote_port)
    structs.U32.pack_into(data, 8, port)
    return True


def _bind_virq(caller: Domain, data: bytearray) -> bool:
    virq, vcpu, _ = structs.BIND_VIRQ.unpack(data)
    port = commands.bind_virq(caller, virq, vcpu)
    structs.U32.pack_into(data, 8, port)
    return True


def _bind_pirq(caller: Domain, data: bytearray) -> bool:
    pirq, flags, _ = structs.BIND_PIRQ.unpack(data)
    port = commands.bind_pirq(caller, pirq, flags)
    structs.U32.pack_into(data, 8, port)
    return True


def _bind_ipi(caller: Domain, data: bytearray) -> bool:
    vcpu, _ = structs.BIND_IPI.unpack(data)
    port = commands.bind_ipi(caller, vcpu)
    structs.U32.pack_into(data, 4, port)
    return True


def _close(caller: Domain, data: bytearray) -> bool:
    commands.close(caller, structs.PORT_ONLY.unpack(data)[0])
    return False


def _send(caller: Domain, data: bytearray) -> bool:
    commands.send(caller, structs.PORT_ONLY.unpack(data)[0])
    return False


def _status(caller: Domain, data: bytearray) -> bool:
    dom, port = structs.STATUS.unpack(data)
    result = commands.status(caller, dom, port)
    structs.STATUS_OUT.pack_into(data, structs.STATUS_OUT_OFFSET, result.status, result.vcpu)
    union = structs.STATUS_UNION_OFFSET
    if result.status in (EvtchnStat.unbound, EvtchnStat.interdomain):
        structs.U16.pack_into(data, union, result.dom)
    if result.status == EvtchnStat.interdomain:
        structs.U32.pack_into(data, structs.STATUS_INTERDOMAIN_PORT_OFFSET, result.port)
    elif result.status == EvtchnStat.pirq:
        structs.U32.pack_into(data, union, result.pirq)
    elif result.status == EvtchnStat.virq:
        structs.U32.pack_into(data, union, result.virq)
    return True


def _bind_vcpu(caller: Domain, data: bytearray) -> bool:
    port, vcpu = structs.BIND_VCPU.unpack(data)
    commands.bind_vcpu(caller, port, vcpu)
    return False


def _unmask(caller: Domain, data: bytearray) -> bool:
    commands.unmask(caller, structs.PORT_ONLY.unpack(data)[0])
    return False


def _reset(caller: Domain, data: bytearray) -> bool:
    commands.reset(caller, structs.RESET.unpack(data)[0])
    return False


def _reset_cont(caller: Domain, data: bytearray) -> bool:
    commands.reset_cont(caller, structs.RESET.unpack(data)[0])
    return False


def _init_control(caller: Domain, data: bytearray) -> bool:
    control_gfn, offset, vcpu = structs.INIT_CONTROL.unpack(data)
    link_bits = commands.init_control(caller, control_gfn, offset, vcpu)
    structs.U8.pack_into(data, structs.INIT_CONTROL_LINK_BITS_OFFSET, link_bits)
    return True  # inputs and _pad echoed, link_bits written


def _expand_array(caller: Domain, data: bytearray) -> bool:
    commands.expand_array(caller, structs.EXPAND_ARRAY.unpack(data)[0])
    return False


def _set_priority(caller: Domain, data: bytearray) -> bool:
    port, priority = structs.SET_PRIORITY.unpack(data)
    commands.set_priority(caller, port, priority)
    return False


# cmd -> (size of its struct, handler).
COMMANDS: dict[int, tuple[int, Handler]] = {
    EvtchnOp.bind_interdomain: (structs.BIND_INTERDOMAIN.size, _bind_interdomain),
    EvtchnOp.bind_virq: (structs.BIND_VIRQ.size, _bind_virq),
    EvtchnOp.bind_pirq: (structs.BIND_PIRQ.size, _bind_pirq),
    EvtchnOp.close: (structs.PORT_ONLY.size, _close),
    EvtchnOp.send: (structs.PORT_ONLY.size, _send),
    EvtchnOp.status: (structs.STATUS.size, _status),
    EvtchnOp.alloc_unbound: (structs.ALLOC_UNBOUND.size, _alloc_unbound),
    EvtchnOp.bind_ipi: (structs.BIND_IPI.size, _bind_ipi),
    EvtchnOp.bind_vcpu: (structs.BIND_VCPU.size, _bind_vcpu),
    EvtchnOp.unmask: (structs.PORT_ONLY.size, _unmask),
    EvtchnOp.reset: (structs.RESET.size, _reset),
    EvtchnOp.init_control: (structs.INIT_CONTROL.size, _init_control),
    EvtchnOp.expand_array: (structs.EXPAND_ARRAY.size, _expand_array),
    EvtchnOp.set_priority: (structs.SET_PRIORITY.size, _set_priority),
    EvtchnOp.reset_cont: (structs.RESET.size, _reset_cont),
}
COMPAT_COMMANDS = range(0, 10)  # hypercall 16 forwards cmds 0..9 only


def _dispatch(caller: Domain, cmd: int, view: memoryview) -> int:
    """Copy in, run, copy back on success; hooks run after the copy-back."""
    entry = COMMANDS.get(cmd)
    if entry is None:
        return -errno.ENOSYS
    size, handler = entry
    if view.nbytes < size:
        return -errno.EFAULT
    data = bytearray(view[:size])
    hv = caller.hypervisor
    try:
        try:
            copy_back = handler(caller, data)
        except EvtchnError as exc:
            return -exc.errno
        if copy_back:
            view[:size] = data
        return 0
    finally:
        if hv.hooks_queued:
            hv.run_hooks()


def event_channel_op(caller: Domain, cmd: int, arg: object) -> int:
    """``HYPERVISOR_event_channel_op``: 0 or ``-errno``."""
    if not isinstance(cmd, int):
        raise TypeError(f"cmd must be an int, not {type(cmd).__name__}")
    view = writable_bytes(arg, "arg")
    if caller.destroyed:
        return -errno.ESRCH
    hv = caller.hypervisor
    try:
        hvm.vm_exit(caller)  # a hypercall is a VM exit: the HVM line check runs first
        return _dispatch(caller, cmd, view)
    finally:
        if hv.hooks_queued:
            hv.run_hooks()


def event_channel_op_compat(caller: Domain, op: object) -> int:
    """Hypercall 16: ``struct evtchn_op`` (cmd at 0, the command's struct at 4)."""
    view = writable_bytes(op, "op")
    if caller.destroyed:
        return -errno.ESRCH
    hv = caller.hypervisor
    try:
        hvm.vm_exit(caller)
        return _compat(caller, view)
    finally:
        if hv.hooks_queued:
            hv.run_hooks()


def _compat(caller: Domain, view: memoryview) -> int:
    if view.nbytes < structs.EVTCHN_OP_SIZE:
        return -errno.EFAULT
    (cmd,) = structs.EVTCHN_OP_CMD.unpack_from(view, 0)
    if cmd not in COMPAT_COMMANDS:
        return -errno.ENOSYS
    return _dispatch(caller, cmd, view[structs.EVTCHN_OP_UNION_OFFSET : structs.EVTCHN_OP_SIZE])
