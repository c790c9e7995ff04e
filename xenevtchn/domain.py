"""``Domain`` and ``Vcpu``: one guest as the hypervisor sees it.

Every method is a hypercall made *by* this domain. The Pythonic wrappers check argument
types and ranges first (``TypeError`` / ``ValueError``, nothing runs), then raise
``EvtchnError`` where the raw ``event_channel_op`` would return ``-errno``.
"""

from __future__ import annotations

import errno
import gc
import warnings
import weakref
from array import array
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Concatenate, Iterable, ParamSpec, Sequence, TypeVar

from . import commands as cmds
from . import fifo as fifo_cmds
from . import hvm
from . import hypercalls
from . import sched
from . import vcpu_info
from ._native import ffi, lib, make_fast_path
from .constants import (
    DOMID_SELF,
    EvtchnOp,
    EVTCHN_2L_NR_CHANNELS,
    EVTCHN_2L_NR_CHANNELS_X86_32,
    NR_VIRQS,
    VCPU_INFO_SIZE,
    XEN_LEGACY_MAX_VCPUS,
)
from .errors import EvtchnError
from .guest import GUESTS
from .memory import GuestMemory
from .port_table import PortTable
from .shared_info import SharedInfo
from .fifo import FifoState
from .status import EvtchnStatus

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

_P = ParamSpec("_P")
_R = TypeVar("_R")

U64 = 0xFFFFFFFFFFFFFFFF
U32 = 0xFFFFFFFF
U16 = 0xFFFF
MAX_PORT_UNLIMITED = 0x7FFFFFFF  # Xen's INT_MAX for a domain created with -1
KEY_PORT_BITS: int = lib.XE_KEY_PORT_BITS
KEY_PORT_SPAN = 1 << KEY_PORT_BITS   # ports a key can carry (every port of either ABI)


class _Slot:
    """A domain's number in the C core's slot table, for the one-argument fast paths.

    A cffi call with one argument takes a fast path that a call with two does not, so the
    per-event calls pass ``key = slot << KEY_PORT_BITS | port`` (a small int) and C finds
    the domain by its slot. The closures that use a key hold the slot; the slot number is
    reused only once the slot object is gone, so a stale ``d.send`` never reaches another
    domain. The table entry is cleared before the domain's C struct can be freed.
    """

    __slots__ = ("n", "base", "__weakref__")

    # No lock: ``_give_back`` runs as a weakref finalizer, which the cycle collector may
    # call inside any allocation, including one made while ``take`` held a lock (the
    # thread would then wait on itself). A deque's append and pop are atomic, so neither
    # side needs one.
    _free: deque[int] = deque(range(lib.XE_NR_SLOTS - 1, 0, -1))  # slot 0 is never used
    _misses = 0  # takes that found no slot since one last did (paces the collections)

    def __init__(self, n: int) -> None:
        self.n = n
        self.base = n << KEY_PORT_BITS

    @classmethod
    def take(cls, cdom: Any) -> _Slot | None:
        """A free slot now naming ``cdom``, or None when all are taken (slow paths then).

        Numbers come back when their slot objects are collected; a destroyed domain's
        are often in reference cycles, so an empty table first runs the cycle collector.
        If every slot is still held (more than ``XE_NR_SLOTS - 1`` domains, or closures of
        their fast paths, alive at once), the domain works on the checked paths and a
        ``RuntimeWarning`` says so.
        """
        try:
            n = cls._free.pop()
            cls._misses = 0
        except IndexError:
            # A full collection costs as much as the heap is large: with every slot held
            # by live domains, collecting on every creation made set-up quadratic. After
            # a collection that freed nothing, the next ones come after 1, 2, 4, ... more
            # misses (and at once again after one that freed a slot).
            misses = cls._misses
            cls._misses = misses + 1
            if misses & (misses - 1) == 0:
                gc.collect()
            try:
                n = cls._free.pop()
                cls._misses = 0
            except IndexError:
                warnings.warn(f"all {lib.XE_NR_SLOTS - 1} fast-path slots are held by live domains "
                              "(or by closures of their fast paths): this domain uses the checked "
                              "paths, which are slower", RuntimeWarning, stacklevel=5)
                return None
        lib.xe_slot_set(n, cdom)
        slot = cls(n)
        weakref.finalize(slot, cls._give_back, n, cdom)  # holds cdom until the entry is gone
        return slot

    @classmethod
    def new_world(cls) -> None:
        """A new Hypervisor: the next miss collects at once (an old world dropped just
        before holds its slots until a collection finds its cycles)."""
        cls._misses = 0

    @classmethod
    def _give_back(cls, n: int, _cdom: Any) -> None:
        """The finalizer: clear the table entry, then make the number free (never blocks)."""
        lib.xe_slot_set(n, ffi.NULL)
        cls._free.append(n)


def _uint(value: Any, name: str, top: int) -> int:
    """An int argument that must fit an unsigned ABI field of maximum ``top``."""
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= top:
        raise ValueError(f"{name} {value} does not fit its ABI field (0..{top})")
    return int(value)


class Vcpu:
    """One vCPU; the upcall fields are read live from its vcpu_info, wherever it lives
    (0 for a vCPU with none: vCPUs 32.. until they register one)."""

    __slots__ = ("domain", "id", "_s", "_c")

    def __init__(self, domain: Domain, vcpu_id: int) -> None:
        self.domain = domain
        self.id = vcpu_id
        self._s = domain.shared_info._s
        self._c = domain._c

    @property
    def upcall_pending(self) -> int:
        return int(lib.xe_vcpu_upcall_pending(self._s, self.id))

    @property
    def upcall_mask(self) -> int:
        return int(lib.xe_vcpu_upcall_mask(self._s, self.id))

    @property
    def pending_sel(self) -> int:
        return int(lib.xe_vcpu_pending_sel(self._s, self.id))

    @property
    def polling(self) -> bool:
        return bool(lib.xe_vcpu_polling(self._c, self.id))

    @property
    def vcpu_info(self) -> memoryview | None:
        """The live 64-byte ``vcpu_info`` (its shared_info slot, or the area it registered
        in ``domain.memory``); None while it has none."""
        area = lib.xe_vcpu_info(self._s, self.id)
        if area == ffi.NULL:
            return None
        return memoryview(ffi.buffer(ffi.cast("char *", area), VCPU_INFO_SIZE))

    @property
    def upcall_vector(self) -> int:
        """The vector ``HVMOP_set_evtchn_upcall_vector`` gave this vCPU; 0: none (PV: 0)."""
        st = self.domain._hvm
        return 0 if st is None else st.upcall_vectors[self.id]

    def __repr__(self) -> str:
        return f"<Vcpu d{self.domain.domid}v{self.id}>"


class Domain:
    """A domain created by ``Hypervisor.create_domain``."""

    def __init__(self, hv: Hypervisor, domid: int, vcpus: int, privileged: bool,
                 max_evtchn_port: int | None, layout: str, shared_info: SharedInfo,
                 guest: str = "linux", memory: GuestMemory | None = None,
                 type: str = "pv") -> None:
        self.hv = hv
        self.domid = domid
        self.privileged = privileged
        self.layout = layout
        self.type = type
        self.shared_info = shared_info
        self.shared_info.reset()
        # HVM/PVH upcall state (hvm.py); None for PV, which is kicked.
        self._hvm = None if type == "pv" else hvm.HvmState(vcpus, pvh=type == "pvh")
        if self._hvm is not None:
            for v in range(XEN_LEGACY_MAX_VCPUS):  # Xen's HVM builder only clears the page
                lib.xe_vcpu_set_upcall_mask(self.shared_info._s, v, 0)
        abi_ports = EVTCHN_2L_NR_CHANNELS if layout == "x86_64" else EVTCHN_2L_NR_CHANNELS_X86_32
        self.max_evtchn_port = abi_ports - 1 if max_evtchn_port is None else max_evtchn_port
        # None: no configured limit (dom0's INT_MAX), so the ABI's own limit applies.
        self._port_cap = MAX_PORT_UNLIMITED if max_evtchn_port is None else max_evtchn_port
        self.memory = memory if memory is not None else GuestMemory()
        self.fifo: FifoState | None = None  # set by the first successful init_control
        self._fifo_history: list[FifoState] = []
        self._c = ffi.new("struct xe_domain *")
        self._c.si = self.shared_info._s[0]
        self._c.hv = hv._c
        self._c.nr_vcpus = vcpus
        self._c.domid = domid
        # The guest's per-vCPU port maps (Linux's cpu_evtchn_mask), kept by the port table.
        self._vcpu_ports = ffi.new("uint64_t[]", vcpus * lib.XE_2L_ROUTE_WORDS)
        self._c.vcpu_ports = self._vcpu_ports
        # Where each vCPU's vcpu_info lives (C reads it through this table).
        self._vcpu_info = vcpu_info.VcpuInfoTable(self, vcpus)
        # vCPUs 32..: their poll / kick / wake state in arrays of ours (C: hi_bits).
        hi = vcpus - lib.XE_MAX_VCPUS
        if hi > 0:
            words = (hi + 31) // 32
            self._hi_bits = ffi.new("uint32_t[]", 3 * words)
            self._hi_poll_evtchn = ffi.new("int32_t[]", hi)
            self._c.hi_bits = self._hi_bits
            self._c.hi_poll_evtchn = self._hi_poll_evtchn
            self._c.hi_words = words
        self.ports = PortTable(self._c, abi_ports, min(abi_ports, self._port_cap + 1))
        self.vcpus: tuple[Vcpu, ...] = tuple(Vcpu(self, i) for i in range(vcpus))
        self.dying = False
        self.dead = False
        self._created = 0  # the hypervisor's creation counter when this domain was made
        self._virq_to_evtchn = [[0] * NR_VIRQS for _ in range(vcpus)]
        self._pirq_to_port: dict[int, int] = {}
        self.nr_pirqs = 256  # create_domain(nr_pirqs=...) sets it: PIRQs are 0..nr_pirqs-1
        # Xen-attached channels (hv.alloc_xen_channel): port -> the consumer's notify(vcpu, port)
        self._xen_channels: dict[int, Callable[[int, int], Any] | None] = {}
        self._permitted_pirqs: set[int] = set()
        self._pause_count = 0
        self._reset_next = 0
        self._handles: list[Any] = []  # XenEvtchn handles: C may point at their queues
        self.guest = GUESTS[guest](self)
        if self._hvm is not None:
            hvm.sync_kick_wake(self)
        self._bind_fast_paths()

    def _bind_fast_paths(self) -> None:
        """Per-instance fast paths: ``send``, ``event_channel_op`` and the guest's.

        With a slot, a PV domain's ``send`` and ``event_channel_op`` are builtins
        (csrc/python/fast_paths.c): one C call per event with no lock (the C path reads the
        port table), the refusal raised and the owed hooks run from C. Otherwise ``send`` is
        a closure making a two-argument C call and ``event_channel_op`` the class method.
        Anything a key cannot carry goes to the checked class method.
        An HVM/PVH domain's hypercalls are VM exits (the line check runs first): its
        ``send`` and ``event_channel_op`` stay the checked methods, its hooks are planned by
        ``Hypervisor._plan``; the guest's local paths keep their class methods too.
        """
        c = self._c
        hv = self.hv
        if self._hvm is not None:
            self._builtins = False
            self._slot = _Slot.take(c)
            self.guest._bind_fast_paths(self._slot)
            return
        slot = _Slot.take(c)
        self._slot = slot
        slow = Domain.send.__get__(self)
        xen_sent, XEN = cmds.xen_sent, cmds.XEN_SENT
        # Builtins, and hooks called from C (run_hooks.c), for the domains whose delivery
        # they were written for: PV. Any other kind (HVM/PVH interrupts) keeps the Python
        # paths, its hooks planned by Hypervisor._plan.
        self._builtins = getattr(self, "type", "pv") == "pv"
        if self._builtins:
            hv._hook_vcpus[self.domid] = self.vcpus
        if slot is not None and self._builtins:
            runner = hv._run_owed
            self.send = make_fast_path("send", slot.base, slow, slot, EvtchnError, runner,  # type: ignore[method-assign]
                                       self, xen_sent)
            self.event_channel_op = make_fast_path(  # type: ignore[method-assign]
                "event_channel_op", slot.base, Domain.event_channel_op.__get__(self), slot,
                EvtchnError, runner, self, xen_sent, EvtchnOp.send, EvtchnOp.unmask)
        else:
            after = hv._after
            c_send2 = lib.xe_evtchn_send

            def send(port: int) -> None:
                if 0 <= port <= U32:  # else the checked path's ValueError, not cffi's OverflowError
                    rc = c_send2(c, port)
                    if rc:
                        if rc < 0:
                            raise EvtchnError(-rc, "send")
                        if rc & XEN:
                            xen_sent(self, (port,), rc)
                        else:
                            after(rc)
                else:
                    slow(port)

            send.__doc__ = Domain.send.__doc__
            self.send = send  # type: ignore[method-assign]
        self.guest._bind_fast_paths(slot)

    def _kill(self) -> None:
        """After destruction every call answers ESRCH."""
        self.dead = True

        def gone(*_args: Any, **_kw: Any) -> Any:
            raise EvtchnError(errno.ESRCH, f"domain {self.domid} was destroyed")

        self.send = gone  # type: ignore[method-assign]
        self.__dict__.pop("event_channel_op", None)  # the general path answers -ESRCH
        if self.hv._hook_vcpus.get(self.domid) is self.vcpus:
            del self.hv._hook_vcpus[self.domid]
        self.guest._unbind_fast_paths()
        if self._slot is not None:
            # Closures taken earlier now reach no domain in C: ESRCH, or their checked
            # path. The number stays reserved while any of them lives.
            lib.xe_slot_set(self._slot.n, ffi.NULL)

    def _call(self, fn: Callable[Concatenate[Domain, _P], _R], *args: _P.args, **kw: _P.kwargs) -> _R:
        """``fn(self, *args)`` under the hypervisor's lock; ESRCH once destroyed."""
        with self.hv._lock:
            if self.dead:
                raise EvtchnError(errno.ESRCH, f"domain {self.domid} was destroyed")
            if self._hvm is not None:
                return self._vm_exit_then(fn, *args, **kw)
            return fn(self, *args, **kw)

    def _vm_exit_then(self, fn: Callable[Concatenate[Domain, _P], _R], *args: _P.args,
                      **kw: _P.kwargs) -> _R:
        """A hypercall of an HVM/PVH domain: the VM exit's line check, then ``fn``. A hook
        the check ran that raised does not stop the call; its error comes after."""
        err: Exception | None = None
        try:
            hvm.vm_exit(self)
        except Exception as exc:  # noqa: BLE001 - raised once the call ran
            err = exc
        result = fn(self, *args, **kw)
        if err is not None:
            raise err
        return result

    def vm_exit(self) -> None:
        """A VM exit of any vCPU (``hvm_maybe_deassert_evtchn_irq``): the GSI/INTx line
        drops if it is up and vCPU 0's upcall flag is clear. Nothing for PV domains."""
        with self.hv._lock:
            if not self.dead:
                hvm.vm_exit(self)

    # ---- HVM/PVH (spec xen-hvm-and-beyond §2) --------------------------------------

    def hvm_op(self, cmd: int, arg: Any) -> int:
        """Raw ``HYPERVISOR_hvm_op(cmd, arg)``: 0 set_param, 1 get_param (``struct
        xen_hvm_param``, 16 bytes), 23 set_evtchn_upcall_vector (8 bytes); 0 or ``-errno``."""
        if not isinstance(cmd, int):
            raise TypeError(f"cmd must be an int, not {type(cmd).__name__}")
        ptr, nbytes = hypercalls.writable_bytes(arg, "arg")
        try:
            with self.hv._lock:
                if self.dead:
                    return -errno.ESRCH
                if self._hvm is not None:
                    return self._vm_exit_then(hvm.hvm_op, cmd, ptr, nbytes)
                return hvm.hvm_op(self, cmd, ptr, nbytes)
        finally:
            if nbytes:
                ffi.release(ptr)

    def set_hvm_param(self, index: int, value: int, dom: int = DOMID_SELF) -> None:
        """``HVMOP_set_param``: only ``HVM_PARAM_CALLBACK_IRQ`` has an effect."""
        self._call(hvm.set_param, _uint(dom, "dom", U16), _uint(index, "index", U32),
                   _uint(value, "value", U64))

    def get_hvm_param(self, index: int, dom: int = DOMID_SELF) -> int:
        """``HVMOP_get_param``: the value last set (0 if never)."""
        return self._call(hvm.get_param, _uint(dom, "dom", U16), _uint(index, "index", U32))

    def set_callback_via(self, via: int) -> None:
        """``set_hvm_param(HVM_PARAM_CALLBACK_IRQ, via)``."""
        self.set_hvm_param(0, via)

    def set_upcall_vector(self, vcpu: int, vector: int) -> None:
        """``HVMOP_set_evtchn_upcall_vector``: ``vector`` (>= 0x10) for ``vcpu``'s upcalls;
        injected at once."""
        vcpu = _uint(vcpu, "vcpu", U32)
        vector = _uint(vector, "vector", 0xFF)
        if self._hvm is None:
            with self.hv._lock:
                if self.dead:
                    raise EvtchnError(errno.ESRCH, f"domain {self.domid} was destroyed")
            raise EvtchnError(errno.EINVAL, "set_upcall_vector: not an HVM/PVH domain")
        self._call(hvm.set_upcall_vector, vcpu, vector)

    @property
    def callback_asserted(self) -> bool:
        """Xen's ``callback_via_asserted``: the level last driven for vCPU 0 (PV: False)."""
        return self._hvm is not None and self._hvm.asserted

    # ---- raw hypercalls ----------------------------------------------------------

    def event_channel_op(self, cmd: int, arg: Any) -> int:
        """``HYPERVISOR_event_channel_op(cmd, arg)``: 0 or ``-errno``; outputs in ``arg``."""
        return hypercalls.event_channel_op(self, cmd, arg)

    def event_channel_op_compat(self, op: Any) -> int:
        """The old hypercall 16: a whole 28-byte ``struct evtchn_op``; commands 0-9."""
        return hypercalls.event_channel_op_compat(self, op)

    # ---- Pythonic wrappers ---------------------------------------------------------

    def alloc_unbound(self, remote_dom: int, dom: int = DOMID_SELF) -> int:
        """A new port in ``dom`` (default: this domain) that ``remote_dom`` may bind."""
        return self._call(cmds.alloc_unbound, _uint(dom, "dom", U16), _uint(remote_dom, "remote_dom", U16))

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        """Connect to ``remote_dom``'s unbound port; the new local port starts pending."""
        return self._call(cmds.bind_interdomain, _uint(remote_dom, "remote_dom", U16),
                          _uint(remote_port, "remote_port", U32))

    def bind_virq(self, virq: int, vcpu: int = 0) -> int:
        """Bind a VIRQ (per-vCPU ones on ``vcpu``; others must name vCPU 0)."""
        return self._call(cmds.bind_virq, _uint(virq, "virq", U32), _uint(vcpu, "vcpu", U32))

    def bind_pirq(self, pirq: int, flags: int = 0) -> int:
        """Bind a physical IRQ (``flags`` may hold ``BIND_PIRQ__WILL_SHARE``)."""
        return self._call(cmds.bind_pirq, _uint(pirq, "pirq", U32), _uint(flags, "flags", U32))

    def bind_ipi(self, vcpu: int = 0) -> int:
        """A port for inter-processor events, notifying ``vcpu`` forever."""
        return self._call(cmds.bind_ipi, _uint(vcpu, "vcpu", U32))

    def close(self, port: int) -> None:
        """Close a port; an interdomain peer silently becomes unbound again."""
        self._call(cmds.close_port, _uint(port, "port", U32))

    def send(self, port: int) -> None:  # replaced per instance by the C fast path
        """Notify the other end of ``port`` (interdomain), or this domain (IPI)."""
        self._call(cmds.send, _uint(port, "port", U32))

    def status(self, port: int, dom: int = DOMID_SELF) -> EvtchnStatus:
        """What ``port`` of ``dom`` is bound to."""
        return self._call(cmds.status, _uint(dom, "dom", U16), _uint(port, "port", U32))

    def bind_vcpu(self, port: int, vcpu: int) -> None:
        """Send future events of ``port`` to ``vcpu``."""
        self._call(cmds.bind_vcpu, _uint(port, "port", U32), _uint(vcpu, "vcpu", U32))

    def unmask(self, port: int) -> None:
        """``EVTCHNOP_unmask``: clear the mask bit; re-raise the port if it was pending."""
        self._call(cmds.unmask, _uint(port, "port", U32))

    def reset(self, dom: int = DOMID_SELF) -> None:
        """Close every port of ``dom`` (another domain must be paused first)."""
        self._call(cmds.reset, _uint(dom, "dom", U16))

    # ---- the FIFO ABI -----------------------------------------------------------------

    def init_control(self, control_gfn: int, offset: int, vcpu: int) -> int:
        """``EVTCHNOP_init_control``: register ``vcpu``'s FIFO control block at
        ``control_gfn`` + ``offset``; the first call switches the domain to FIFO.
        Returns the link bits (17)."""
        return self._call(fifo_cmds.init_control, _uint(control_gfn, "control_gfn", U64),
                          _uint(offset, "offset", U32), _uint(vcpu, "vcpu", U32))

    def expand_array(self, array_gfn: int) -> None:
        """``EVTCHNOP_expand_array``: one more event-array page (1024 ports) at ``array_gfn``."""
        self._call(fifo_cmds.expand_array, _uint(array_gfn, "array_gfn", U64))

    def set_priority(self, port: int, priority: int) -> None:
        """``EVTCHNOP_set_priority``: the FIFO queue (0 highest .. 15) for future events."""
        self._call(fifo_cmds.set_priority, _uint(port, "port", U32), _uint(priority, "priority", U32))

    @property
    def abi(self) -> str:
        """``"2l"`` or ``"fifo"``: the event-channel ABI the domain uses now."""
        return "fifo" if self.fifo is not None else "2l"

    def send_many(self, ports: Sequence[int] | Any) -> None:
        """Send on every port in order: a sequence of ints or a buffer of uint32.

        The first port that fails raises ``EvtchnError``; the ports before it were sent.
        """
        if self.dead:
            raise EvtchnError(errno.ESRCH, f"domain {self.domid} was destroyed")
        if self._hvm is not None:
            # One hypercall per port in Xen; the first exit's check is the one that can
            # lower the line (sends only raise flags). A hook it ran that raised does not
            # stop the sends; its error comes after.
            err: Exception | None = None
            try:
                self.vm_exit()
            except Exception as exc:  # noqa: BLE001
                err = exc
            self._send_many(ports)
            if err is not None:
                raise err
        else:
            self._send_many(ports)

    def _send_many(self, ports: Sequence[int] | Any) -> None:
        arr, n, view = _uint32_array(ports)
        if n == 0:
            return
        sent: list[int] = []
        try:
            rc = lib.xe_evtchn_send_batch(self._c, arr, n)  # the GIL is released meanwhile
            bad_port = int(arr[-rc >> 8]) if rc < 0 else 0
            if rc & cmds.XEN_SENT or (rc < 0 and self.hv._xen_channel_count()):
                # Some sends reached Xen-attached peers (a failed batch does not say: look).
                sent = ffi.unpack(arr, n if rc >= 0 else -rc >> 8)
        finally:
            ffi.release(arr)  # hand the caller's buffer back now, not at some GC
            if view is not None:
                view.release()
        if rc:
            if rc < 0:
                i, err = divmod(-rc, 256)
                if sent:
                    cmds.xen_sent(self, sent, 1)
                else:
                    self.hv._after(1)
                raise EvtchnError(err, f"send_many: port {bad_port} (index {i})")
            if sent:
                cmds.xen_sent(self, sent, rc)
            else:
                self.hv._after(rc)

    # ---- vcpu_info placement (VCPUOP_register_vcpu_info) ----------------------------

    def vcpu_op(self, cmd: int, vcpu: int, arg: Any) -> int:
        """Raw ``HYPERVISOR_vcpu_op(cmd, vcpu, arg)``: 0 or ``-errno``. Only
        VCPUOP_register_vcpu_info (10, a 16-byte ``struct vcpu_register_vcpu_info`` in
        ``arg``) is modelled; a missing vCPU is ``-ENOENT``, other commands ``-ENOSYS``."""
        return vcpu_info.vcpu_op(self, cmd, vcpu, arg)

    def register_vcpu_info(self, gfn: int, offset: int, vcpu: int) -> None:
        """Move ``vcpu``'s vcpu_info to ``gfn`` + ``offset`` of ``d.memory``, for good."""
        gfn = _uint(gfn, "gfn", U64)
        offset = _uint(offset, "offset", U32)
        vcpu = _uint(vcpu, "vcpu", U32)
        self._call(_register_vcpu_info, gfn, offset, vcpu)

    # ---- SCHEDOP_poll --------------------------------------------------------------

    def sched_poll(self, ports: Iterable[int], timeout: int = 0, vcpu: int = 0) -> bool:
        """SCHEDOP_poll on ``vcpu``: True if it returns at once, False once it blocks."""
        ports = [_uint(p, "port", U32) for p in ports]
        timeout = _uint(timeout, "timeout", 2**64 - 1)
        if not isinstance(vcpu, int):
            raise TypeError(f"vcpu must be an int, not {type(vcpu).__name__}")
        return self._call(_sched_poll, ports, timeout, vcpu)

    def sched_op(self, cmd: int, arg: Any, vcpu: int = 0) -> int:
        """Raw ``HYPERVISOR_sched_op(cmd, arg)`` made by ``vcpu``: 0 or ``-errno``.

        SCHEDOP_yield (0) answers 0; SCHEDOP_poll (3) takes ``struct sched_poll`` in this
        domain's layout in ``arg`` (a writable buffer; short: ``-EFAULT``), its ``ports``
        a guest address in ``d.memory``; every other command answers ``-ENOSYS``.
        """
        return sched.sched_op(self, cmd, arg, vcpu)

    def __repr__(self) -> str:
        state = " dead" if self.dead else ""
        return f"<Domain {self.domid} {self.type} vcpus={len(self.vcpus)} {self.layout}{state}>"


_U32_ARRAY = ffi.typeof("uint32_t[]")
_U32_FORMATS = frozenset(("I", "=I", "<I", "L", "=L", "<L"))


def _uint32_array(ports: Any) -> tuple[Any, int, memoryview | None]:
    """A ``uint32_t *`` over ``ports`` without copying a suitable buffer.

    Returns ``(cdata or None, n, view)``: release both the cdata and the view (if any)
    once C is done, so the caller's buffer is theirs again at once.
    """
    try:
        view = memoryview(ports)
    except TypeError:
        view = None
    if view is not None:
        if view.itemsize != 4 or view.format not in _U32_FORMATS:
            fmt = view.format
            view.release()
            raise TypeError(f"a port buffer must hold uint32 (format 'I'), not format {fmt!r}")
        if not view.c_contiguous:
            view.release()
            raise TypeError("a port buffer must be contiguous")
        n = view.nbytes >> 2
        if not n:
            view.release()
            return None, 0, None
        cdata = ffi.from_buffer(_U32_ARRAY, view)
        if int(ffi.cast("uintptr_t", cdata)) & 3:
            # Not 4-aligned (a byte-offset slice): C reads words, so take a copy.
            ffi.release(cdata)
            buf = array("I", view)
            view.release()
            return ffi.from_buffer(_U32_ARRAY, buf), n, None
        return cdata, n, view
    try:
        buf = array("I", ports)
    except OverflowError:
        raise ValueError("ports must be in 0..2**32-1") from None
    return (ffi.from_buffer(_U32_ARRAY, buf) if len(buf) else None), len(buf), None


def _register_vcpu_info(d: Domain, gfn: int, offset: int, vcpu: int) -> None:
    if vcpu >= len(d.vcpus):
        raise EvtchnError(errno.ENOENT, f"register_vcpu_info: no vCPU {vcpu}")
    vcpu_info.register(d, gfn, offset, vcpu)


def _sched_poll(d: Domain, ports: list[int], timeout: int, vcpu: int) -> bool:
    if not 0 <= vcpu < len(d.vcpus):
        raise EvtchnError(errno.ENOENT, "sched_poll")
    return sched.poll(d, vcpu, len(ports), ports.__getitem__, timeout)
