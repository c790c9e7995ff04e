"""Xen's event-channel constants, as ``IntEnum`` classes and plain module names.

Numbers come from Xen's public headers (``xen.h``, ``event_channel.h``) and are checked
against ``shared/spec/xen-abi.json`` by the test suite.
"""

from __future__ import annotations

from enum import IntEnum


class EvtchnOp(IntEnum):
    """``EVTCHNOP_*`` command numbers for ``HYPERVISOR_event_channel_op``."""

    bind_interdomain = 0
    bind_virq = 1
    bind_pirq = 2
    close = 3
    send = 4
    status = 5
    alloc_unbound = 6
    bind_ipi = 7
    bind_vcpu = 8
    unmask = 9
    reset = 10
    init_control = 11
    expand_array = 12
    set_priority = 13
    reset_cont = 14


class EvtchnStat(IntEnum):
    """``EVTCHNSTAT_*`` values reported by ``EVTCHNOP_status``."""

    closed = 0
    unbound = 1
    interdomain = 2
    pirq = 3
    virq = 4
    ipi = 5


class Virq(IntEnum):
    """Virtual IRQ numbers (``VIRQ_*``); 5, 14 and 15 are unassigned but bindable."""

    TIMER = 0
    DEBUG = 1
    CONSOLE = 2
    DOM_EXC = 3
    TBUF = 4
    DEBUGGER = 6
    XENOPROF = 7
    CON_RING = 8
    PCPU_STATE = 9
    MEM_EVENT = 10
    ARGO = 11
    ENOMEM = 12
    XENPMU = 13
    ARCH_0 = 16
    ARCH_1 = 17
    ARCH_2 = 18
    ARCH_3 = 19
    ARCH_4 = 20
    ARCH_5 = 21
    ARCH_6 = 22
    ARCH_7 = 23


class VirqClass(IntEnum):
    """How a VIRQ is bound and delivered (Xen's ``VIRQ_TYPE_*``)."""

    GLOBAL = 0
    DOMAIN = 1
    VCPU = 2


class ChannelState(IntEnum):
    """Xen's hypervisor-private channel states (``ECS_*``)."""

    FREE = 0
    RESERVED = 1
    UNBOUND = 2
    INTERDOMAIN = 3
    PIRQ = 4
    VIRQ = 5
    IPI = 6


# EVTCHNOP_* as plain module-level names (the API contract uses Xen's spellings).
EVTCHNOP_bind_interdomain = EvtchnOp.bind_interdomain
EVTCHNOP_bind_virq = EvtchnOp.bind_virq
EVTCHNOP_bind_pirq = EvtchnOp.bind_pirq
EVTCHNOP_close = EvtchnOp.close
EVTCHNOP_send = EvtchnOp.send
EVTCHNOP_status = EvtchnOp.status
EVTCHNOP_alloc_unbound = EvtchnOp.alloc_unbound
EVTCHNOP_bind_ipi = EvtchnOp.bind_ipi
EVTCHNOP_bind_vcpu = EvtchnOp.bind_vcpu
EVTCHNOP_unmask = EvtchnOp.unmask
EVTCHNOP_reset = EvtchnOp.reset
EVTCHNOP_init_control = EvtchnOp.init_control
EVTCHNOP_expand_array = EvtchnOp.expand_array
EVTCHNOP_set_priority = EvtchnOp.set_priority
EVTCHNOP_reset_cont = EvtchnOp.reset_cont

EVTCHNSTAT_closed = EvtchnStat.closed
EVTCHNSTAT_unbound = EvtchnStat.unbound
EVTCHNSTAT_interdomain = EvtchnStat.interdomain
EVTCHNSTAT_pirq = EvtchnStat.pirq
EVTCHNSTAT_virq = EvtchnStat.virq
EVTCHNSTAT_ipi = EvtchnStat.ipi

VIRQ_TIMER = Virq.TIMER
VIRQ_DEBUG = Virq.DEBUG
VIRQ_CONSOLE = Virq.CONSOLE
VIRQ_DOM_EXC = Virq.DOM_EXC
VIRQ_TBUF = Virq.TBUF
VIRQ_DEBUGGER = Virq.DEBUGGER
VIRQ_XENOPROF = Virq.XENOPROF
VIRQ_CON_RING = Virq.CON_RING
VIRQ_PCPU_STATE = Virq.PCPU_STATE
VIRQ_MEM_EVENT = Virq.MEM_EVENT
VIRQ_ARGO = Virq.ARGO
VIRQ_ENOMEM = Virq.ENOMEM
VIRQ_XENPMU = Virq.XENPMU
VIRQ_ARCH_0 = Virq.ARCH_0
VIRQ_ARCH_1 = Virq.ARCH_1
VIRQ_ARCH_2 = Virq.ARCH_2
VIRQ_ARCH_3 = Virq.ARCH_3
VIRQ_ARCH_4 = Virq.ARCH_4
VIRQ_ARCH_5 = Virq.ARCH_5
VIRQ_ARCH_6 = Virq.ARCH_6
VIRQ_ARCH_7 = Virq.ARCH_7
VIRQ_MCA = Virq.ARCH_0  # x86 names VIRQ_ARCH_0 this way
NR_VIRQS = 24

# Per-vCPU VIRQs (bind once per vCPU, fixed notify vCPU); VIRQ_ARGO is per-domain
# (Xen 4.21+); every other number below NR_VIRQS, assigned or not, is global.
_VCPU_VIRQS = frozenset({Virq.TIMER, Virq.DEBUG, Virq.XENOPROF, Virq.XENPMU})
_DOMAIN_VIRQS = frozenset({Virq.ARGO})


def virq_class(virq: int) -> VirqClass:
    """Classify ``virq`` (0 <= virq < NR_VIRQS) the way Xen 4.21+ does."""
    if not 0 <= virq < NR_VIRQS:
        raise ValueError(f"virq {virq} is outside 0..{NR_VIRQS - 1}")
    if virq in _VCPU_VIRQS:
        return VirqClass.VCPU
    if virq in _DOMAIN_VIRQS:
        return VirqClass.DOMAIN
    return VirqClass.GLOBAL


DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_IDLE = 0x7FFF

XEN_LEGACY_MAX_VCPUS = 32
BIND_PIRQ__WILL_SHARE = 1
NR_PIRQS = 256  # per domain, in this simulator
IRQ_MAX_GUESTS = 32  # guests that may share one host IRQ (Xen's default)

EVTCHN_2L_NR_CHANNELS = 4096  # x86_64: 64 words of 64 bits
EVTCHN_2L_NR_CHANNELS_X86_32 = 1024  # 32-bit (compat) guests: 32 words of 32 bits
EVTCHN_FIFO_NR_CHANNELS = 1 << 17
EVTCHN_FIFO_LINK_BITS = 17
EVTCHN_FIFO_MAX_QUEUES = 16
EVTCHN_FIFO_PRIORITY_MAX = 0
EVTCHN_FIFO_PRIORITY_DEFAULT = 7
EVTCHN_FIFO_PRIORITY_MIN = 15
EVTCHNS_PER_BUCKET = 64  # port_is_valid() grows in steps of this many ports
SCHEDOP_POLL_MAX_PORTS = 128
PAGE_SIZE = 4096
NR_PIRQS_MAX = 65536  # the largest per-domain nr_pirqs the simulator accepts
IRQ_MAX_GUESTS_LIMIT = 255  # irq-max-guests is stored in a byte


class SchedOp(IntEnum):
    """``HYPERVISOR_sched_op`` commands (public/sched.h); only yield and poll are modelled."""

    yield_ = 0
    block = 1
    shutdown = 2
    poll = 3


SCHEDOP_yield = SchedOp.yield_
SCHEDOP_block = SchedOp.block
SCHEDOP_shutdown = SchedOp.shutdown
SCHEDOP_poll = SchedOp.poll
# struct sched_poll: (size, ports offset/size, nr_ports offset, timeout offset) per layout
SCHED_POLL_SIZE = {"x86_64": 24, "x86_32": 16}



class VcpuOp(IntEnum):
    """``HYPERVISOR_vcpu_op`` commands (public/vcpu.h); only register_vcpu_info is modelled."""

    register_vcpu_info = 10


VCPUOP_register_vcpu_info = VcpuOp.register_vcpu_info
VCPU_REGISTER_VCPU_INFO_SIZE = 16  # struct vcpu_register_vcpu_info {u64 mfn; u32 offset; u32 rsvd}
VCPU_INFO_SIZE = 64  # sizeof(struct vcpu_info), x86 (both layouts)
MAX_VIRT_CPUS = 8192  # x86 PV's vCPU limit (MAX_VIRT_CPUS)

SHARED_INFO_SIZE = {"x86_64": 3136, "x86_32": 2344}
LAYOUTS = ("x86_64", "x86_32")

# Domain types (spec xen-hvm-and-beyond §1) and their vCPU limits.
DOMAIN_TYPES = ("pv", "hvm", "pvh")
HVM_MAX_VCPUS = 128   # x86 HVM and PVH


class HvmOp(IntEnum):
    """``HYPERVISOR_hvm_op`` commands (public/hvm/hvm_op.h) that are modelled."""

    set_param = 0
    get_param = 1
    set_evtchn_upcall_vector = 23


class HvmParam(IntEnum):
    """``HVM_PARAM_*`` indices (public/hvm/params.h); only the callback is modelled."""

    CALLBACK_IRQ = 0


class HvmCallbackType(IntEnum):
    """The type byte (bits 63:56) of ``HVM_PARAM_CALLBACK_IRQ``."""

    GSI = 0
    PCI_INTX = 1
    VECTOR = 2


HVMOP_set_param = HvmOp.set_param
HVMOP_get_param = HvmOp.get_param
HVMOP_set_evtchn_upcall_vector = HvmOp.set_evtchn_upcall_vector
HVM_PARAM_CALLBACK_IRQ = HvmParam.CALLBACK_IRQ
HVM_NR_PARAMS = 39
HVM_PARAM_CALLBACK_TYPE_GSI = HvmCallbackType.GSI
HVM_PARAM_CALLBACK_TYPE_PCI_INTX = HvmCallbackType.PCI_INTX
HVM_PARAM_CALLBACK_TYPE_VECTOR = HvmCallbackType.VECTOR
HVM_PARAM_CALLBACK_TYPE_PPI = 2  # Arm's name for type 2
GUEST_EVTCHN_PPI = 31
HVM_NR_GSIS = 48          # VIOAPIC_NUM_PINS: GSIs of a domU's emulated IOAPIC
HVM_MIN_UPCALL_VECTOR = 0x10
XEN_HVM_PARAM_SIZE = 16   # struct xen_hvm_param
XEN_HVM_UPCALL_VECTOR_SIZE = 8  # struct xen_hvm_evtchn_upcall_vector

__all__ = [
    "EvtchnOp",
    "EvtchnStat",
    "Virq",
    "VirqClass",
    "ChannelState",
    "virq_class",
    "EVTCHNOP_bind_interdomain",
    "EVTCHNOP_bind_virq",
    "EVTCHNOP_bind_pirq",
    "EVTCHNOP_close",
    "EVTCHNOP_send",
    "EVTCHNOP_status",
    "EVTCHNOP_alloc_unbound",
    "EVTCHNOP_bind_ipi",
    "EVTCHNOP_bind_vcpu",
    "EVTCHNOP_unmask",
    "EVTCHNOP_reset",
    "EVTCHNOP_init_control",
    "EVTCHNOP_expand_array",
    "EVTCHNOP_set_priority",
    "EVTCHNOP_reset_cont",
    "EVTCHNSTAT_closed",
    "EVTCHNSTAT_unbound",
    "EVTCHNSTAT_interdomain",
    "EVTCHNSTAT_pirq",
    "EVTCHNSTAT_virq",
    "EVTCHNSTAT_ipi",
    "VIRQ_TIMER",
    "VIRQ_DEBUG",
    "VIRQ_CONSOLE",
    "VIRQ_DOM_EXC",
    "VIRQ_TBUF",
    "VIRQ_DEBUGGER",
    "VIRQ_XENOPROF",
    "VIRQ_CON_RING",
    "VIRQ_PCPU_STATE",
    "VIRQ_MEM_EVENT",
    "VIRQ_ARGO",
    "VIRQ_ENOMEM",
    "VIRQ_XENPMU",
    "VIRQ_ARCH_0",
    "VIRQ_ARCH_1",
    "VIRQ_ARCH_2",
    "VIRQ_ARCH_3",
    "VIRQ_ARCH_4",
    "VIRQ_ARCH_5",
    "VIRQ_ARCH_6",
    "VIRQ_ARCH_7",
    "VIRQ_MCA",
    "NR_VIRQS",
    "DOMID_FIRST_RESERVED",
    "DOMID_SELF",
    "DOMID_IO",
    "DOMID_XEN",
    "DOMID_COW",
    "DOMID_INVALID",
    "DOMID_IDLE",
    "XEN_LEGACY_MAX_VCPUS",
    "BIND_PIRQ__WILL_SHARE",
    "NR_PIRQS",
    "IRQ_MAX_GUESTS",
    "EVTCHN_2L_NR_CHANNELS",
    "EVTCHN_2L_NR_CHANNELS_X86_32",
    "EVTCHN_FIFO_NR_CHANNELS",
    "EVTCHN_FIFO_LINK_BITS",
    "EVTCHN_FIFO_MAX_QUEUES",
    "EVTCHN_FIFO_PRIORITY_MAX",
    "EVTCHN_FIFO_PRIORITY_DEFAULT",
    "EVTCHN_FIFO_PRIORITY_MIN",
    "EVTCHNS_PER_BUCKET",
    "SCHEDOP_POLL_MAX_PORTS",
    "NR_PIRQS_MAX",
    "IRQ_MAX_GUESTS_LIMIT",
    "SchedOp",
    "SCHEDOP_yield",
    "SCHEDOP_block",
    "SCHEDOP_shutdown",
    "SCHEDOP_poll",
    "SCHED_POLL_SIZE",
    "VcpuOp",
    "VCPUOP_register_vcpu_info",
    "VCPU_REGISTER_VCPU_INFO_SIZE",
    "VCPU_INFO_SIZE",
    "MAX_VIRT_CPUS",
    "PAGE_SIZE",
    "SHARED_INFO_SIZE",
    "LAYOUTS",
    "DOMAIN_TYPES",
    "HVM_MAX_VCPUS",
    "HvmOp",
    "HvmParam",
    "HvmCallbackType",
    "HVMOP_set_param",
    "HVMOP_get_param",
    "HVMOP_set_evtchn_upcall_vector",
    "HVM_PARAM_CALLBACK_IRQ",
    "HVM_NR_PARAMS",
    "HVM_PARAM_CALLBACK_TYPE_GSI",
    "HVM_PARAM_CALLBACK_TYPE_PCI_INTX",
    "HVM_PARAM_CALLBACK_TYPE_VECTOR",
    "HVM_PARAM_CALLBACK_TYPE_PPI",
    "GUEST_EVTCHN_PPI",
    "HVM_NR_GSIS",
    "HVM_MIN_UPCALL_VECTOR",
]
