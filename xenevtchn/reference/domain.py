"""A domain as the hypervisor sees it: vCPUs, port table, and its hypercall entry points.

The command logic lives in :mod:`.commands` (EVTCHNOP_*) and :mod:`.poll` (SCHEDOP_poll);
this module holds the per-domain state and the Python-facing methods that validate
arguments, run a command as this domain, and raise ``EvtchnError`` on failure.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from types import ModuleType

from xenevtchn.constants import (
    DOMID_SELF,
    EVTCHN_FIFO_NR_CHANNELS,
    EVTCHN_FIFO_PRIORITY_DEFAULT,
    EVTCHNS_PER_BUCKET,
    NR_VIRQS,
)
from xenevtchn.errors import EvtchnError

from . import commands, event_2l, hvm, hypercall, poll, vcpu_op
from .channel import ECS_FREE, ECS_RESERVED, Channel
from .event_fifo import FifoState
from .guest import Guest, make_guest
from .memory import DEFAULT_FRAMES, GuestMemory
from .shared_info import SharedInfo, writable_bytes
from .status import EvtchnStatus
from .validate import int_in_range, port_list, u16, u32, u64, as_int

if TYPE_CHECKING:
    from .hypervisor import Hypervisor
    from .xenevtchn_handle import XenEvtchn

_R = TypeVar("_R")


class Vcpu:
    """One vCPU: its ``vcpu_info`` flags (read live from shared_info) and poll state."""

    __slots__ = ("_domain", "id", "virq_to_evtchn", "poll_evtchn", "poll_deadline")

    def __init__(self, domain: Domain, vcpu_id: int) -> None:
        self._domain = domain
        self.id: int = vcpu_id
        self.virq_to_evtchn: list[int] = [0] * NR_VIRQS  # port per VIRQ, 0 = unbound
        self.poll_evtchn: int = 0  # >0 one port, <0 several or none, 0 not polling
        self.poll_deadline: int | None = None  # armed poll timer (absolute ns)

    @property
    def domain(self) -> Domain:
        """The domain this vCPU belongs to."""
        return self._domain

    @property
    def upcall_pending(self) -> int:
        """``vcpu_info.evtchn_upcall_pending``."""
        return self._domain.shared_info.upcall_pending(self.id)

    @property
    def upcall_mask(self) -> int:
        """``vcpu_info.evtchn_upcall_mask``."""
        return self._domain.shared_info.upcall_mask(self.id)

    @property
    def pending_sel(self) -> int:
        """``vcpu_info.evtchn_pending_sel``."""
        return self._domain.shared_info.pending_sel(self.id)

    @property
    def vcpu_info(self) -> memoryview | None:
        """The live 64-byte vcpu_info wherever it lives; None while it has none."""
        return self._domain.shared_info.vcpu_info(self.id)

    @property
    def polling(self) -> bool:
        """Blocked in SCHEDOP_poll (its bit in the domain's ``poll_mask``)."""
        return bool(self._domain.poll_mask >> self.id & 1)

    @property
    def upcall_vector(self) -> int:
        """The vCPU's HVMOP_set_evtchn_upcall_vector vector; 0 when none (always for PV)."""
        irq = self._domain.hvm
        return 0 if irq is None else irq.vcpu_vectors[self.id]

    def unblock(self) -> None:
        """End a poll, if any: clear the poll state and queue ``on_wake``."""
        d = self._domain
        bit = 1 << self.id
        if d.poll_mask & bit:
            d.poll_mask &= ~bit
            self.poll_evtchn = 0
            hv = d.hypervisor
            hv.queue_hook(hv.on_wake, self)

    def __repr__(self) -> str:
        return f"<Vcpu d{self._domain.domid}v{self.id}>"


class Domain:
    """A domain created by :meth:`Hypervisor.create_domain`; every call runs as it."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        domid: int,
        vcpus: int,
        privileged: bool,
        max_evtchn_port: int | None,
        shared_info: SharedInfo,
        guest: str = "linux",
        memory_frames: int = DEFAULT_FRAMES,
        type: str = "pv",
    ) -> None:
        self.hypervisor = hypervisor
        self.type = type
        # HVM/PVH callback state; None for a PV domain.
        self.hvm: hvm.HvmIrq | None = None if type == "pv" else hvm.HvmIrq(vcpus, type == "hvm")
        self._domid = domid
        self._privileged = privileged
        self._shared_info = shared_info
        self._vcpus = tuple(Vcpu(self, i) for i in range(vcpus))
        # As configured; None reports the 2-level limit but allocation has no configured
        # limit (dom0's INT_MAX), so a FIFO domain can use every FIFO port.
        if max_evtchn_port is None:
            self.max_evtchn_port = shared_info.layout.nr_ports - 1
            self._port_limit = 2**31 - 1
        else:
            self.max_evtchn_port = self._port_limit = min(max_evtchn_port, 2**31 - 1)
        self._memory = GuestMemory(memory_frames)
        # The ABI in use: its port operations, and the FIFO state (None: 2-level).
        self.port_ops: ModuleType = event_2l
        self.fifo: FifoState | None = None
        # Port table: one bucket of 64 records at creation, port 0 RESERVED (§2.3, §11).
        self.channels: list[Channel] = [Channel() for _ in range(EVTCHNS_PER_BUCKET)]
        self.channels[0].state = ECS_RESERVED
        self.active_evtchns = 0  # channels not FREE, port 0 not counted
        self._free_hint = 1  # every port below it is known not to be FREE
        self.pirq_to_port: dict[int, int] = {}
        self.permitted_pirqs: set[int] = set()
        self.nr_pirqs = 256  # PIRQs are 0..nr_pirqs-1 (create_domain sets it)
        self.xen_evtchns = 0  # channels held by Xen (alloc_xen_channel)
        self.pause_count = 0
        self.poll_mask = 0  # bit v set while vCPU v is blocked in poll
        self.reset_next = 0  # EVTCHNOP_reset progress cursor, 0 = none in progress
        self.dying = False
        self.destroyed = False
        # Ports bound through a XenEvtchn handle (libxenevtchn), and their handle.
        self.handle_ports: dict[int, XenEvtchn] = {}
        # VCPUOP_register_vcpu_info: vcpu -> (gfn, offset in the frame), for good.
        self.registered_vcpu_info: dict[int, tuple[int, int]] = {}
        self._guest: Guest = make_guest(self, guest)

    # -- public attributes ----------------------------------------------------------------
    @property
    def domid(self) -> int:
        """The domain id."""
        return self._domid

    @property
    def privileged(self) -> bool:
        """Whether the domain has the control domain's rights."""
        return self._privileged

    @property
    def vcpus(self) -> tuple[Vcpu, ...]:
        """The vCPUs, indexed by id."""
        return self._vcpus

    @property
    def shared_info(self) -> SharedInfo:
        """The domain's shared_info."""
        return self._shared_info

    @property
    def guest(self) -> Guest:
        """The guest kernel's view of this domain (``"linux"`` or ``"minios"``)."""
        return self._guest

    @property
    def memory(self) -> GuestMemory:
        """The domain's guest-physical memory (frames used by the FIFO ABI)."""
        return self._memory

    @property
    def abi(self) -> str:
        """``"2l"`` or ``"fifo"``: the event-channel ABI in use."""
        return "fifo" if self.fifo is not None else "2l"

    @property
    def max_evtchns(self) -> int:
        """Xen's ``max_evtchns(d)``: 131072 in FIFO mode, else 4096 (1024 for x86_32)."""
        if self.fifo is not None:
            return EVTCHN_FIFO_NR_CHANNELS
        return self._shared_info.layout.nr_ports

    @property
    def layout(self) -> str:
        """``"x86_64"`` or ``"x86_32"``."""
        return self._shared_info.layout.name

    @property
    def valid_evtchns(self) -> int:
        """Ports covered by storage buckets: ``port_is_valid(p)`` iff ``p < valid_evtchns``."""
        return len(self.channels)

    def __repr__(self) -> str:
        return f"<Domain {self._domid}{' privileged' if self._privileged else ''}>"

    # -- port table (spec §2) -------------------------------------------------------------
    def port_is_valid(self, port: int) -> bool:
        """Xen's ``port_is_valid``: bucket-granular, not "allocated"."""
        return 0 <= port < len(self.channels)

    def get_vcpu(self, vcpu_id: int) -> Vcpu:
        """The vCPU ``vcpu_id``, or ``EvtchnError(ENOENT)``."""
        if not 0 <= vcpu_id < len(self._vcpus):
            raise EvtchnError(errno.ENOENT)
        return self._vcpus[vcpu_id]

    def get_free_port(self) -> int:
        """Xen's ``get_free_port`` (§2.2): the lowest FREE, non-busy port, growing buckets
        as needed.

        The port is only found (and its bucket allocated), not claimed: a command whose
        later checks fail simply leaves it FREE. Busy ports (FIFO: word still LINKED) are
        FREE but skipped; the guest may consume them at any time, so the search hint
        never moves past one.
        """
        if self.dying:
            raise EvtchnError(errno.EINVAL)
        limit = min(self._port_limit + 1, self.max_evtchns)
        channels = self.channels
        ops = self.port_ops
        first_free = -1
        try:
            for port in range(self._free_hint, limit):
                if port >= len(channels):  # not covered yet: add a bucket; the port is free
                    channels.extend(Channel() for _ in range(EVTCHNS_PER_BUCKET))
                    if first_free < 0:
                        first_free = port
                    return port
                if channels[port].state == ECS_FREE:
                    if first_free < 0:
                        first_free = port
                    if not ops.is_busy(self, port):
                        return port
            raise EvtchnError(errno.ENOSPC)
        finally:
            if first_free >= 0:
                self._free_hint = first_free

    def claim_port(self, port: int, state: int, notify_vcpu: int = 0) -> Channel:
        """Make FREE ``port`` (from :meth:`get_free_port`) a channel in ``state``."""
        channel = self.channels[port]
        channel.state = state  # type: ignore[assignment]
        channel.notify_vcpu = notify_vcpu
        channel.priority = EVTCHN_FIFO_PRIORITY_DEFAULT  # every bind resets it (§9.6)
        self.active_evtchns += 1
        return channel

    def free_port(self, port: int) -> None:
        """``evtchn_free``: clear pending (usable only), state FREE, notify vCPU 0.

        The 2-level mask bit is left alone. A port bound through a ``XenEvtchn`` handle
        stops belonging to it, however it was closed.
        """
        if self.handle_ports:
            self.handle_ports.pop(port, None)
        channel = self.channels[port]
        if channel.usable:
            self.port_ops.clear_pending(self, port)
        self.active_evtchns -= 1
        channel.reset_to_free()
        if port < self._free_hint:
            self._free_hint = port

    # -- running calls as this domain -------------------------------------------------------
    def _call(self, what: str, command: Callable[..., _R], *args: Any) -> _R:
        """Run ``command(self, *args)``; raise ``EvtchnError`` named ``what``; run hooks."""
        if self.destroyed:
            raise EvtchnError(errno.ESRCH, what)
        hv = self.hypervisor
        try:
            hvm.vm_exit(self)  # every hypercall is a VM exit (HVM/PVH)
            return command(self, *args)
        except EvtchnError as exc:
            raise EvtchnError(exc.errno, what) from None
        finally:
            if hv.hooks_queued:
                hv.run_hooks()

    # -- HVM/PVH (xen-hvm-and-beyond §2) ------------------------------------------------------
    def vm_exit(self) -> None:
        """A VM exit: lower the callback line if it is up and vCPU 0's flag is clear."""
        if self.destroyed:
            return
        hv = self.hypervisor
        try:
            hvm.vm_exit(self)
        finally:
            if hv.hooks_queued:
                hv.run_hooks()

    def hvm_op(self, cmd: int, arg: object) -> int:
        """Raw HYPERVISOR_hvm_op (0 set_param, 1 get_param, 23 set upcall vector)."""
        cmd = as_int(cmd, "cmd")
        view = writable_bytes(arg, "arg")
        if self.destroyed:
            return -errno.ESRCH
        hv = self.hypervisor
        try:
            hvm.vm_exit(self)
            return hvm.hvm_op(self, cmd, view)
        finally:
            if hv.hooks_queued:
                hv.run_hooks()

    def set_hvm_param(self, index: int, value: int, dom: int = DOMID_SELF) -> None:
        """HVMOP_set_param."""
        args = (u16(dom, "dom"), u32(index, "index"), u64(value, "value"))
        self._call("set_hvm_param", hvm.set_param, *args)

    def get_hvm_param(self, index: int, dom: int = DOMID_SELF) -> int:
        """HVMOP_get_param."""
        return self._call("get_hvm_param", hvm.get_param, u16(dom, "dom"), u32(index, "index"))

    def set_callback_via(self, via: int) -> None:
        """HVMOP_set_param(HVM_PARAM_CALLBACK_IRQ, via)."""
        self.set_hvm_param(hvm.PARAM_CALLBACK_IRQ, via)

    def set_upcall_vector(self, vcpu: int, vector: int) -> None:
        """HVMOP_set_evtchn_upcall_vector."""
        vcpu = u32(vcpu, "vcpu")
        vector = int_in_range(vector, "vector", 0, 0xFF)
        self._call("set_upcall_vector", hvm.set_upcall_vector, vcpu, vector)

    @property
    def callback_asserted(self) -> bool:
        """Xen's ``callback_via_asserted`` (False for PV)."""
        return self.hvm is not None and self.hvm.asserted

    # -- raw hypercalls --------------------------------------------------------------------
    def event_channel_op(self, cmd: int, arg: object) -> int:
        """``HYPERVISOR_event_channel_op(cmd, arg)``: 0 or ``-errno``."""
        return hypercall.event_channel_op(self, cmd, arg)

    def event_channel_op_compat(self, op: object) -> int:
        """The legacy hypercall 16 on a whole 28-byte ``struct evtchn_op``."""
        return hypercall.event_channel_op_compat(self, op)

    # -- Pythonic wrappers ------------------------------------------------------------------
    def alloc_unbound(self, remote_dom: int, dom: int = DOMID_SELF) -> int:
        """EVTCHNOP_alloc_unbound: a port in ``dom`` that ``remote_dom`` may bind."""
        args = (u16(dom, "dom"), u16(remote_dom, "remote_dom"))
        return self._call("alloc_unbound", commands.alloc_unbound, *args)

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        """EVTCHNOP_bind_interdomain: connect to ``remote_dom``'s unbound port."""
        args = (u16(remote_dom, "remote_dom"), u32(remote_port, "remote_port"))
        return self._call("bind_interdomain", commands.bind_interdomain, *args)

    def bind_virq(self, virq: int, vcpu: int = 0) -> int:
        """EVTCHNOP_bind_virq."""
        args = (u32(virq, "virq"), u32(vcpu, "vcpu"))
        return self._call("bind_virq", commands.bind_virq, *args)

    def bind_pirq(self, pirq: int, flags: int = 0) -> int:
        """EVTCHNOP_bind_pirq."""
        args = (u32(pirq, "pirq"), u32(flags, "flags"))
        return self._call("bind_pirq", commands.bind_pirq, *args)

    def bind_ipi(self, vcpu: int = 0) -> int:
        """EVTCHNOP_bind_ipi."""
        return self._call("bind_ipi", commands.bind_ipi, u32(vcpu, "vcpu"))

    def close(self, port: int) -> None:
        """EVTCHNOP_close."""
        self._call("close", commands.close, u32(port, "port"))

    def send(self, port: int) -> None:
        """EVTCHNOP_send."""
        self._call("send", commands.send, u32(port, "port"))

    def status(self, port: int, dom: int = DOMID_SELF) -> EvtchnStatus:
        """EVTCHNOP_status."""
        args = (u16(dom, "dom"), u32(port, "port"))
        return self._call("status", commands.status, *args)

    def bind_vcpu(self, port: int, vcpu: int) -> None:
        """EVTCHNOP_bind_vcpu."""
        self._call("bind_vcpu", commands.bind_vcpu, u32(port, "port"), u32(vcpu, "vcpu"))

    def unmask(self, port: int) -> None:
        """EVTCHNOP_unmask."""
        self._call("unmask", commands.unmask, u32(port, "port"))

    def reset(self, dom: int = DOMID_SELF) -> None:
        """EVTCHNOP_reset."""
        self._call("reset", commands.reset, u16(dom, "dom"))

    def init_control(self, control_gfn: int, offset: int, vcpu: int) -> int:
        """EVTCHNOP_init_control: register ``vcpu``'s FIFO control block; returns link_bits."""
        args = (u64(control_gfn, "control_gfn"), u32(offset, "offset"), u32(vcpu, "vcpu"))
        return self._call("init_control", commands.init_control, *args)

    def expand_array(self, array_gfn: int) -> None:
        """EVTCHNOP_expand_array: one more event-array page (1024 event words)."""
        self._call("expand_array", commands.expand_array, u64(array_gfn, "array_gfn"))

    def set_priority(self, port: int, priority: int) -> None:
        """EVTCHNOP_set_priority (FIFO): 0 highest .. 15 lowest."""
        args = (u32(port, "port"), u32(priority, "priority"))
        self._call("set_priority", commands.set_priority, *args)

    def send_many(self, ports: Sequence[int] | object) -> None:
        """EVTCHNOP_send on each port in order; the first failure raises (earlier sent)."""
        self._call("send", commands.send_many, port_list(ports))

    def sched_op(self, cmd: int, arg: object, vcpu: int = 0) -> int:
        """Raw HYPERVISOR_sched_op (yield 0, poll 3; else -ENOSYS): 0 or ``-errno``."""
        cmd, vcpu = as_int(cmd, "cmd"), as_int(vcpu, "vcpu")
        data = writable_bytes(arg, "arg").tobytes()  # copied in
        if self.destroyed:
            return -errno.ESRCH
        hv = self.hypervisor
        try:
            hvm.vm_exit(self)
            return poll.sched_op(self, cmd, data, vcpu)
        finally:
            if hv.hooks_queued:
                hv.run_hooks()

    def vcpu_op(self, cmd: int, vcpu: int, arg: object) -> int:
        """Raw HYPERVISOR_vcpu_op (register_vcpu_info 10; else -ENOSYS): 0 or ``-errno``."""
        cmd, vcpu = as_int(cmd, "cmd"), as_int(vcpu, "vcpu")
        data = writable_bytes(arg, "arg").tobytes()  # copied in
        if self.destroyed:
            return -errno.ESRCH
        hv = self.hypervisor
        try:
            return vcpu_op.vcpu_op(self, cmd, vcpu, data)
        finally:
            if hv.hooks_queued:
                hv.run_hooks()

    def register_vcpu_info(self, gfn: int, offset: int, vcpu: int) -> None:
        """VCPUOP_register_vcpu_info: ``vcpu``'s vcpu_info moves to ``gfn`` + ``offset``."""
        args = (u64(gfn, "gfn"), u32(offset, "offset"), u32(vcpu, "vcpu"))
        self._call("register_vcpu_info", vcpu_op.register_vcpu_info, *args)

    def sched_poll(self, ports: Sequence[int] | object, timeout: int = 0, vcpu: int = 0) -> bool:
        """SCHEDOP_poll on vCPU ``vcpu``: True if it returns at once, False if now blocked."""
        args = (port_list(ports), u64(timeout, "timeout"), as_int(vcpu, "vcpu"))
        return self._call("sched_poll", poll.sched_poll, *args)
