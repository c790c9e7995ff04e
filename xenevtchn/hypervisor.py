"""``Hypervisor``: domains, global VIRQ handlers, PIRQ routing, simulated time, hooks."""

from __future__ import annotations

import bisect
import builtins
import errno
import heapq
import threading
from typing import Any, Callable, Iterator

from . import commands as cmds
from . import hvm
from ._native import ffi, lib, make_hook_runner
from .constants import (
    DOMAIN_TYPES,
    DOMID_FIRST_RESERVED,
    MAX_VIRT_CPUS,
    IRQ_MAX_GUESTS,
    IRQ_MAX_GUESTS_LIMIT,
    LAYOUTS,
    NR_PIRQS,
    NR_PIRQS_MAX,
    NR_VIRQS,
    VirqClass,
    virq_class,
)
from .domain import Domain, Vcpu, _Slot, _uint
from .errors import EvtchnError
from .guest import GUESTS
from .memory import DEFAULT_FRAMES, GuestMemory
from .shared_info import SharedInfo
from .vcpu_info import max_vcpus

Hook = Callable[[Vcpu], Any]


LISTENER_EVENTS = ("kick", "wake", "interrupt", "gsi")


def check_vcpus(vcpus: Any, layout: str, dtype: str) -> int:
    """``vcpus`` for a new domain of this layout and type (``vcpu_info.max_vcpus``)."""
    if not isinstance(vcpus, int):
        raise TypeError(f"vcpus must be an int, not {type(vcpus).__name__}")
    top = max_vcpus(layout, dtype)
    if not 1 <= vcpus <= top:
        raise ValueError(f"vcpus must be in 1..{top} for a {dtype} domain, not {vcpus}")
    return int(vcpus)


def _pv_calls(d: Domain, kicked: int, woken: int, kick_fns: tuple[Any, ...],
              wake_fns: tuple[Any, ...], calls: list[Any]) -> None:
    """Append a PV domain's owed hook calls ``fn, vcpu`` for its kicked and woken bits.
    A kick ends that vCPU's poll (spec 10.2) before other pollers are checked (8.1 step
    3): its wake follows its kick, then the other wakes."""
    for v in _bits(kicked):
        vcpu = d.vcpus[v]
        for fn in kick_fns:
            calls += (fn, vcpu)
        if woken >> v & 1:
            for fn in wake_fns:
                calls += (fn, vcpu)
            woken &= ~(1 << v)
    for v in _bits(woken):
        vcpu = d.vcpus[v]
        for fn in wake_fns:
            calls += (fn, vcpu)


def _hook(hook: Any, name: str) -> Any:
    """A hook must be callable or None: refused when set, not when an event fires."""
    if hook is not None and not callable(hook):
        raise TypeError(f"{name} must be callable or None, not {type(hook).__name__}")
    return hook


class Hypervisor:
    """A simulated Xen: create domains, then drive them through their hypercalls.

    ``on_kick(vcpu)`` runs when the hypervisor raises a vCPU's ``evtchn_upcall_pending``
    from 0 to 1; ``on_wake(vcpu)`` when a vCPU blocked in poll is woken. Both run before
    the call that caused them returns (after a whole ``send_many`` batch). Listeners added
    with ``add_listener("kick" | "wake", fn)`` run after them, in the order added.
    """

    def __init__(self, irq_max_guests: int = IRQ_MAX_GUESTS) -> None:
        """``irq_max_guests``: Xen's ``irq-max-guests`` boot option, the most domains that
        may share one host IRQ (1..255)."""
        if not isinstance(irq_max_guests, int):
            raise TypeError(f"irq_max_guests must be an int, not {type(irq_max_guests).__name__}")
        if not 1 <= irq_max_guests <= IRQ_MAX_GUESTS_LIMIT:
            raise ValueError(f"irq_max_guests must be in 1..{IRQ_MAX_GUESTS_LIMIT}, not {irq_max_guests}")
        self.irq_max_guests = int(irq_max_guests)
        _Slot.new_world()
        self._c = ffi.new("struct xe_hv *")
        self._lock = threading.RLock()
        self._domains: dict[int, Domain] = {}
        # Lowest-free domid in O(log n): every free domid below ``_domid_high`` is in
        # ``_free_domids`` (a heap, possibly holding ids taken since: skipped when seen).
        self._domid_high = 0
        self._free_domids: list[int] = []
        # Live domains' shared_info address ranges, sorted: (start, end, domid).
        self._shinfo_ranges: list[tuple[int, int, int]] = []
        self._graveyard: list[Domain] = []  # destroyed; a running C call may still use them
        self._hardware_domain: Domain | None = None
        self._hardware_domain_created = False  # only the first privileged domain is it
        self._virq_handlers: dict[int, Domain] = {}
        self._irq_guests: dict[int, list[Domain]] = {}
        self._irq_shareable: dict[int, bool] = {}
        self._timers: list[tuple[int, int, int, int]] = []  # (deadline, domid, vcpu, seq)
        self._timer_seq: dict[tuple[int, int], int] = {}
        self._seq = 0
        self.now = 0
        self._on_kick: Hook | None = None
        self._on_wake: Hook | None = None
        self._listeners: dict[str, list[Any]] = {event: [] for event in LISTENER_EVENTS}
        self._kick_fns: tuple[Hook, ...] = ()  # on_kick then the listeners: what _after calls
        self._wake_fns: tuple[Hook, ...] = ()
        self._on_interrupt: Callable[[Vcpu, int], Any] | None = None
        self._on_gsi: Callable[[Domain, int, bool], Any] | None = None
        self._interrupt_fns: tuple[Callable[[Vcpu, int], Any], ...] = ()
        self._gsi_fns: tuple[Callable[[Domain, int, bool], Any], ...] = ()
        self._hvm_domains = 0  # live HVM/PVH domains: their kicks are planned by hvm.py
        self._plan_memo: tuple[Any, list[Any], list[Any]] | None = None
        self._created = 0  # creation order of domains: the order their hooks run in
        self._c_address = int(ffi.cast("uintptr_t", self._c))  # for the hook runner
        # What C calls after a send (csrc/python/run_hooks.c): per hook kind it dispatches
        # (kick, wake), the callables in call order; and the Vcpu objects of every domain
        # whose hooks C may call itself (the others: _plan).
        self._hook_table: list[tuple[Hook, ...]] = [(), ()]
        self._hook_vcpus: dict[int, tuple[Vcpu, ...]] = {}
        self._run_owed = make_hook_runner(self._c_address, self._plan, self._hook_table,
                                          self._hook_vcpus)
        # Hooks a call recorded but could not run (an exception landed before its hook
        # runner) are reported by the next send, which runs them (csrc/evtchn.c).
        self._c.report_owed = 1

    @property
    def on_kick(self) -> Hook | None:
        """Called with the ``Vcpu`` whose ``evtchn_upcall_pending`` went from 0 to 1."""
        return self._on_kick

    @on_kick.setter
    def on_kick(self, hook: Hook | None) -> None:
        self._on_kick = _hook(hook, "on_kick")
        self._rebuild_hooks()

    @property
    def on_wake(self) -> Hook | None:
        """Called with the ``Vcpu`` woken from ``SCHEDOP_poll``."""
        return self._on_wake

    @on_wake.setter
    def on_wake(self, hook: Hook | None) -> None:
        self._on_wake = _hook(hook, "on_wake")
        self._rebuild_hooks()

    @property
    def on_interrupt(self) -> Callable[[Vcpu, int], Any] | None:
        """Called with ``(vcpu, vector)`` when an HVM/PVH vCPU is sent its upcall vector."""
        return self._on_interrupt

    @on_interrupt.setter
    def on_interrupt(self, hook: Callable[[Vcpu, int], Any] | None) -> None:
        self._on_interrupt = _hook(hook, "on_interrupt")
        self._rebuild_hooks()

    @property
    def on_gsi(self) -> Callable[[Domain, int, bool], Any] | None:
        """Called with ``(domain, gsi, level)`` when an HVM domain's GSI/PCI-INTx callback
        line changes level."""
        return self._on_gsi

    @on_gsi.setter
    def on_gsi(self, hook: Callable[[Domain, int, bool], Any] | None) -> None:
        self._on_gsi = _hook(hook, "on_gsi")
        self._rebuild_hooks()

    def add_listener(self, event: str, fn: Any) -> None:
        """Call ``fn`` on every ``event`` ("kick", "wake", "interrupt" or "gsi") with the
        arguments of ``on_kick``/``on_wake``/``on_interrupt``/``on_gsi``, after that hook.

        Listeners run in the order they were added; one added twice runs twice.
        """
        if event not in self._listeners:
            raise ValueError(f"event must be one of {', '.join(LISTENER_EVENTS)}, not {event!r}")
        if not callable(fn):
            raise TypeError(f"listener must be callable, not {type(fn).__name__}")
        with self._lock:
            self._listeners[event].append(fn)
            self._rebuild_hooks()

    def remove_listener(self, event: str, fn: Any) -> None:
        """Remove the last-added ``fn`` for ``event``; ValueError if it is not listening."""
        if event not in self._listeners:
            raise ValueError(f"event must be one of {', '.join(LISTENER_EVENTS)}, not {event!r}")
        with self._lock:
            fns = self._listeners[event]
            for i in range(len(fns) - 1, -1, -1):
                if fns[i] == fn:
                    del fns[i]
                    break
            else:
                raise ValueError(f"{fn!r} is not a {event!r} listener")
            self._rebuild_hooks()

    def _rebuild_hooks(self) -> None:
        """One tuple per event of what to call, so firing a hook costs no more with none set."""
        kick = () if self._on_kick is None else (self._on_kick,)
        wake = () if self._on_wake is None else (self._on_wake,)
        self._kick_fns = kick + tuple(self._listeners["kick"])
        self._wake_fns = wake + tuple(self._listeners["wake"])
        self._hook_table[:] = [self._kick_fns, self._wake_fns]
        interrupt = () if self._on_interrupt is None else (self._on_interrupt,)
        gsi = () if self._on_gsi is None else (self._on_gsi,)
        self._interrupt_fns = interrupt + tuple(self._listeners["interrupt"])
        self._gsi_fns = gsi + tuple(self._listeners["gsi"])

    # ---- domains ---------------------------------------------------------------------

    def create_domain(self, vcpus: int = 1, privileged: bool = False, domid: int | None = None,
                      max_evtchn_port: int | None = None, layout: str = "x86_64",
                      shared_info: Any = None, guest: str = "linux",
                      memory_frames: int = DEFAULT_FRAMES, nr_pirqs: int = NR_PIRQS,
                      type: str | None = None) -> Domain:
        """Create a domain; see ``docs/semantics.md`` for the argument rules.

        ``guest`` picks the guest kernel behind ``d.guest``: ``"linux"`` or ``"minios"``.
        ``memory_frames`` sizes ``d.memory`` (4 KiB frames, allocated lazily; 1 GiB).
        ``nr_pirqs`` is the domain's PIRQ count (0..65536; Xen derives it from the host).
        ``type``: ``"pv"`` (None), ``"hvm"`` or ``"pvh"``; HVM/PVH start with every
        ``evtchn_upcall_mask`` 0 and take upcalls through ``hvm_op`` callbacks.
        """
        if type is None:
            type = "pv"
        if not isinstance(type, str) or type not in DOMAIN_TYPES:
            raise ValueError(f"type must be one of {DOMAIN_TYPES} or None, not {type!r}")
        if guest not in GUESTS:
            raise ValueError(f"guest must be one of {sorted(GUESTS)}, not {guest!r}")
        if not isinstance(privileged, int) or privileged not in (0, 1):
            raise TypeError(f"privileged must be a bool, not {privileged!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        vcpus = check_vcpus(vcpus, layout, type)
        if max_evtchn_port is not None:
            if not isinstance(max_evtchn_port, int):
                raise TypeError("max_evtchn_port must be an int or None")
            if max_evtchn_port < 0:
                raise ValueError(f"max_evtchn_port must be >= 0, not {max_evtchn_port}")
        if not isinstance(nr_pirqs, int):
            raise TypeError(f"nr_pirqs must be an int, not {builtins.type(nr_pirqs).__name__}")
        if not 0 <= nr_pirqs <= NR_PIRQS_MAX:
            raise ValueError(f"nr_pirqs must be in 0..{NR_PIRQS_MAX}, not {nr_pirqs}")
        memory = GuestMemory(memory_frames)
        si = SharedInfo(shared_info, layout)  # the buffer is an argument: checked first
        with self._lock:
            self._reap()
            lo, hi = si.address_range
            i = bisect.bisect_left(self._shinfo_ranges, (lo, hi, -1))
            for j in (i - 1, i):  # the ranges do not overlap: only the neighbours can
                if 0 <= j < len(self._shinfo_ranges):
                    olo, ohi, odomid = self._shinfo_ranges[j]
                    if lo < ohi and olo < hi:
                        raise ValueError(f"that shared_info buffer is in use by domain {odomid}")
            if domid is None:
                domid = self._lowest_free_domid()
                if domid >= DOMID_FIRST_RESERVED:
                    raise EvtchnError(errno.ENOSPC, "no free domid")
            else:
                domid = _uint(domid, "domid", DOMID_FIRST_RESERVED - 1)
                if domid in self._domains:
                    raise EvtchnError(errno.EEXIST, f"domain {domid} exists")
            d = Domain(self, domid, vcpus, bool(privileged), max_evtchn_port, layout, si, guest,
                       memory, type)
            if d._hvm is not None:
                self._hvm_domains += 1
            d.nr_pirqs = int(nr_pirqs)
            self._created += 1
            d._created = self._created
            self._domains[domid] = d
            self._take_domid(domid)
            bisect.insort(self._shinfo_ranges, (lo, hi, domid))
            self._c.domains[domid] = d._c
            if privileged and not self._hardware_domain_created:
                self._hardware_domain = d
                self._hardware_domain_created = True
            return d

    def _lowest_free_domid(self) -> int:
        """The lowest domid no live domain has (DOMID_FIRST_RESERVED when none is left)."""
        free = self._free_domids
        while free and free[0] in self._domains:
            heapq.heappop(free)
        while self._domid_high in self._domains:
            self._domid_high += 1
        return min(free[0], self._domid_high) if free else self._domid_high

    def _take_domid(self, domid: int) -> None:
        """``domid`` is now in use (lock held): keep the free-domid index in step."""
        if self._free_domids and self._free_domids[0] == domid:
            heapq.heappop(self._free_domids)
        elif domid == self._domid_high:
            self._domid_high += 1
        # else: an explicit domid, above the mark (skipped when the mark reaches it) or
        # in the heap (skipped when it surfaces)

    def domain(self, domid: int) -> Domain:
        """The live domain ``domid``; ``EvtchnError(ESRCH)`` if there is none."""
        if not isinstance(domid, int):
            raise TypeError(f"domid must be an int, not {type(domid).__name__}")
        d = self._domains.get(domid)
        if d is None:
            raise EvtchnError(errno.ESRCH, f"no domain {domid}")
        return d

    @property
    def domains(self) -> tuple[Domain, ...]:
        """Every live domain, by domid."""
        return tuple(self._domains[k] for k in sorted(self._domains))

    def destroy_domain(self, domid: int) -> None:
        """Close every port of the domain as Xen does, then forget it."""
        with self._lock:
            d = self.domain(domid)
            d.dying = True
            for v in d.vcpus:
                self._timer_seq.pop((domid, v.id), None)
                lib.xe_poll_cancel(d._c, v.id)
            cmds.destroy_ports(d)
            for virq, h in list(self._virq_handlers.items()):
                if h is d:
                    del self._virq_handlers[virq]
            if self._hardware_domain is d:
                self._hardware_domain = None
            del self._domains[domid]
            if domid < self._domid_high:
                heapq.heappush(self._free_domids, domid)
            lo, hi = d.shared_info.address_range
            del self._shinfo_ranges[bisect.bisect_left(self._shinfo_ranges, (lo, hi, domid))]
            self._c.domains[domid] = ffi.NULL
            if d._hvm is not None:
                self._hvm_domains -= 1
            d._kill()
            self._graveyard.append(d)
            self._reap()

    def _reap(self) -> None:
        """Let go of destroyed domains that no C call can still be using (lock held).

        A destroyed domain is out of the C domain table and its slot; a send running in
        another thread may still have found it there just before, and the C list of
        domains owing hooks may still hold it. Once the C core reports no such call
        running (``xe_borrowers``, read after those removals) and the domain owes no
        hooks, nothing but Python references reach it: the hypervisor drops its own, and
        the domain's memory goes with the last one (a caller's stale ``Domain``, or a
        closure of its fast paths, keeps it, answering ESRCH). A domain still owing hooks
        waits for the next ``destroy_domain`` or ``create_domain``.
        """
        if self._graveyard and not lib.xe_borrowers():
            self._graveyard = [d for d in self._graveyard if d._c.hooks_owed]

    def pause_domain(self, domid: int) -> None:
        with self._lock:
            self.domain(domid)._pause_count += 1

    def unpause_domain(self, domid: int) -> None:
        with self._lock:
            d = self.domain(domid)
            if d._pause_count == 0:
                raise EvtchnError(errno.EINVAL, f"domain {domid} is not paused")
            d._pause_count -= 1

    # ---- routing: PIRQs and VIRQs -------------------------------------------------------

    def permit_pirq(self, domid: int, pirq: int) -> None:
        """Let an unprivileged domain bind ``pirq`` (as ``xl pci-attach``/irqs= would).

        ``pirq`` must be below the domain's ``nr_pirqs`` (``ValueError``)."""
        pirq = _uint(pirq, "pirq", NR_PIRQS_MAX - 1)
        with self._lock:
            d = self.domain(domid)
            if pirq >= d.nr_pirqs:
                raise ValueError(f"pirq {pirq} is not below domain {domid}'s nr_pirqs {d.nr_pirqs}")
            d._permitted_pirqs.add(pirq)

    def _virq_handler(self, virq: int) -> Domain | None:
        return self._virq_handlers.get(virq, self._hardware_domain)

    def set_virq_handler(self, virq: int, domid: int) -> None:
        """XEN_DOMCTL_set_virq_handler: route global ``virq`` to ``domid``."""
        if not isinstance(virq, int):
            raise TypeError(f"virq must be an int, not {type(virq).__name__}")
        with self._lock:
            d = self.domain(domid)  # the domctl looks the domain up first
            if not 0 <= virq < NR_VIRQS or virq_class(virq) != VirqClass.GLOBAL:
                raise EvtchnError(errno.EINVAL, f"virq {virq} is not a global VIRQ")
            current = self._virq_handler(virq)
            if current is d:
                return
            if d.dying:
                raise EvtchnError(errno.EINVAL)
            if current is not None and current._virq_to_evtchn[0][virq]:
                raise EvtchnError(errno.EBUSY, f"domain {current.domid} still has virq {virq} bound")
            self._virq_handlers[virq] = d

    def _check_virq(self, virq: int) -> int:
        if not isinstance(virq, int):
            raise TypeError(f"virq must be an int, not {type(virq).__name__}")
        if not 0 <= virq < NR_VIRQS:
            raise EvtchnError(errno.EINVAL, f"virq {virq}")
        return virq

    def send_virq(self, domid: int, virq: int, vcpu: int = 0) -> None:
        """Raise ``virq`` in ``domid`` (per-vCPU VIRQs on ``vcpu``)."""
        if not isinstance(vcpu, int):
            raise TypeError(f"vcpu must be an int, not {type(vcpu).__name__}")
        with self._lock:
            d = self.domain(domid)
            virq = self._check_virq(virq)
            if virq_class(virq) == VirqClass.VCPU and not 0 <= vcpu < len(d.vcpus):
                raise EvtchnError(errno.ENOENT, f"vcpu {vcpu}")
            cmds.deliver_virq(self, d, virq, vcpu)

    def send_global_virq(self, virq: int) -> None:
        """Raise a global VIRQ in its handler domain (dropped if nobody handles it)."""
        virq = self._check_virq(virq)
        with self._lock:
            if virq_class(virq) != VirqClass.GLOBAL:
                raise EvtchnError(errno.EINVAL, f"virq {virq} is not global")
            d = self._virq_handler(virq)
            if d is not None:
                cmds.deliver_virq(self, d, virq, 0)

    def send_pirq(self, domid: int, pirq: int) -> None:
        """The host IRQ behind ``pirq`` fired for ``domid``."""
        if not isinstance(pirq, int):
            raise TypeError(f"pirq must be an int, not {type(pirq).__name__}")
        with self._lock:
            d = self.domain(domid)
            if not 0 <= pirq < d.nr_pirqs:
                raise EvtchnError(errno.EINVAL, f"pirq {pirq}")
            port = d._pirq_to_port.get(pirq)
            if port:
                self._after(lib.xe_evtchn_raise(d._c, port))

    def inject(self, domid: int, port: int) -> None:
        """Raise a bound port at its notify vCPU, as Xen's own paths do."""
        port = _uint(port, "port", 0xFFFFFFFF)
        with self._lock:
            d = self.domain(domid)
            rc = lib.xe_evtchn_raise(d._c, port)
            if rc < 0:
                raise EvtchnError(-rc, f"inject: port {port}")
            self._after(rc)

    # ---- Xen-attached channels (spec xen-hvm-and-beyond §4) -------------------------------

    def alloc_xen_channel(self, domid: int, vcpu: int, remote_domid: int,
                          notify: Callable[[int, int], Any] | None = None) -> int:
        """A channel of ``domid`` held by Xen itself (an ioreq server's or vm_event's):
        UNBOUND, bindable by ``remote_domid`` (taken as is, DOMID_SELF not translated),
        notify vCPU ``vcpu``. When the peer sends, ``notify(vcpu, port)`` runs instead of
        any event; ``None`` stands for Xen's default consumer, which is not modelled (the
        notification is dropped). The owning guest cannot close, send on, move or unmask
        it. Unknown domid: ``ESRCH``; a vCPU that does not exist: ``ENOENT``.
        """
        domid = _uint(domid, "domid", 0xFFFF)
        vcpu = _uint(vcpu, "vcpu", 0xFFFFFFFF)
        remote_domid = _uint(remote_domid, "remote_domid", 0xFFFF)
        if notify is not None and not callable(notify):
            raise TypeError(f"notify must be callable or None, not {type(notify).__name__}")
        with self._lock:
            return cmds.alloc_xen_channel(self.domain(domid), vcpu, remote_domid, notify)

    def notify_xen_channel(self, domid: int, port: int) -> None:
        """Xen notifies the peer of its channel ``port`` of ``domid``: the peer's port is
        raised if bound, nothing happens while unbound; ``EINVAL`` if ``port`` is not a
        Xen-attached channel."""
        domid = _uint(domid, "domid", 0xFFFF)
        port = _uint(port, "port", 0xFFFFFFFF)
        with self._lock:
            cmds.notify_xen_channel(self.domain(domid), port)

    def free_xen_channel(self, domid: int, port: int) -> None:
        """Xen closes its channel ``port`` of ``domid`` (a bound peer falls back to
        unbound, naming ``domid``); ``EINVAL`` if it is not a Xen-attached channel."""
        domid = _uint(domid, "domid", 0xFFFF)
        port = _uint(port, "port", 0xFFFFFFFF)
        with self._lock:
            cmds.free_xen_channel(self.domain(domid), port)

    def _xen_channel_count(self) -> int:
        return sum(len(d._xen_channels) for d in list(self._domains.values()))

    # ---- time and poll timers -----------------------------------------------------------

    def _arm_poll_timer(self, d: Domain, vcpu: int, deadline: int) -> None:
        self._seq += 1
        self._timer_seq[(d.domid, vcpu)] = self._seq
        heapq.heappush(self._timers, (deadline, d.domid, vcpu, self._seq))
        self._fire_timers()

    def _fire_timers(self) -> None:
        """Fire every due timer; a raising hook stops none of them (its error comes last)."""
        first_error: BaseException | None = None
        while self._timers and self._timers[0][0] <= self.now:
            _, domid, vcpu, seq = heapq.heappop(self._timers)
            if self._timer_seq.get((domid, vcpu)) != seq:
                continue  # re-armed since, or the domain is gone
            del self._timer_seq[(domid, vcpu)]
            d = self._domains.get(domid)
            if d is not None:
                try:
                    self._after(lib.xe_poll_wake(d._c, vcpu))
                except Exception as exc:
                    if first_error is None:
                        first_error = exc
        if first_error is not None:
            raise first_error

    def advance(self, ns: int) -> None:
        """Let ``ns`` nanoseconds of simulated time pass, firing due poll timers."""
        if not isinstance(ns, int):
            raise TypeError(f"ns must be an int, not {type(ns).__name__}")
        if ns < 0:
            raise ValueError(f"time cannot go backwards ({ns} ns)")
        with self._lock:
            self.now += ns
            self._fire_timers()

    # ---- snapshots (snapshot.py) ---------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes; ``Hypervisor.restore`` rebuilds it (hooks excepted)."""
        from .snapshot import snapshot

        return snapshot(self)

    @classmethod
    def restore(cls, data: bytes) -> Hypervisor:
        """A new hypervisor in the state ``data`` captured; ``ValueError`` if it is not one."""
        from .snapshot import restore

        return restore(data, cls)

    # ---- hooks ---------------------------------------------------------------------------

    def _after(self, flags: int) -> None:
        """Run the hooks owed for kicks and wake-ups the C core recorded.

        C lists the domains that recorded any (``xe_hv_take_hooks``), so this touches only
        those; they run in the order the domains were created, as if every domain were
        visited in turn. The records are taken and the hooks called by one builtin (the
        runner of csrc/python/run_hooks.c: records of one domain of ``_hook_vcpus`` are
        dispatched in C, any others through ``_plan``), so no exception, not even one a signal
        handler raises between two bytecodes, can drop a hook whose record was taken:
        every owed hook runs, then the first exception any of them raised propagates.
        Records C keeps because this call was interrupted before it took them run in the
        next call that runs hooks.
        """
        if flags:
            self._run_owed()

    def _owed_bits(self, rec: tuple[int, ...]) -> dict[int, list[Any]]:
        """Records (domid | group << 16, kicked bits, woken bits) merged per live domain:
        creation order -> [domain, kicked, woken], the bits of all its vCPUs."""
        domains = self._domains
        owed: dict[int, list[Any]] = {}
        for i in range(0, len(rec), 3):
            d = domains.get(rec[i] & 0xFFFF)
            if d is None:
                continue
            shift = 32 * (rec[i] >> 16)  # a record of vCPUs 32g .. 32g + 31
            o = owed.get(d._created)
            if o is None:
                owed[d._created] = [d, rec[i + 1] << shift, rec[i + 2] << shift]
            else:  # listed again while an earlier batch was taken: one visit
                o[1] |= rec[i + 1] << shift
                o[2] |= rec[i + 2] << shift
        return owed

    def _plan(self, rec: tuple[int, ...]) -> list[Any]:
        """The hook calls ``[fn, vcpu, ...]`` owed for records (domid, kicked, woken)."""
        if self._hvm_domains:
            return self._plan_hvm(rec)
        kick_fns, wake_fns = self._kick_fns, self._wake_fns
        if not kick_fns and not wake_fns:
            return []  # the bits are taken; nobody to call
        if (len(rec) == 3 and rec[1] and not rec[2] and rec[1] & (rec[1] - 1) == 0
                and len(kick_fns) == 1 and rec[0] <= 0xFFFF):
            # The usual case: one vCPU of one domain kicked, nobody woken, one hook.
            d = self._domains.get(rec[0])
            return [] if d is None else [kick_fns[0], d.vcpus[rec[1].bit_length() - 1]]
        owed = self._owed_bits(rec)
        calls: list[Any] = []
        for key in sorted(owed) if len(owed) > 1 else owed:
            d, kicked, woken = owed[key]
            _pv_calls(d, kicked, woken, kick_fns, wake_fns, calls)
        return calls

    def _plan_hvm(self, rec: tuple[int, ...]) -> list[Any]:
        """``_plan`` while HVM/PVH domains exist: their kicks become Xen's
        ``hvm_assert_evtchn_irq`` (hvm.py), which may move a domain's callback line. The
        plan is called again with the same records if it raised: the calls and line
        changes of a plan that got that far are kept and given again, so a retry neither
        loses a line change nor makes one twice."""
        memo = self._plan_memo
        if memo is not None and memo[0] is rec:
            for st, level in memo[2]:
                st.asserted = level
            return memo[1]
        owed = self._owed_bits(rec)
        calls: list[Any] = []
        changes: list[Any] = []
        kick_fns, wake_fns = self._kick_fns, self._wake_fns
        for key in sorted(owed):
            d, kicked, woken = owed[key]
            st = d._hvm
            if st is not None:
                before = st.asserted
                hvm.kick_calls(d, kicked, woken, calls)
                if st.asserted != before:
                    changes.append((st, st.asserted))
                    st.asserted = before   # applied below, once the memo holds it
                continue
            _pv_calls(d, kicked, woken, kick_fns, wake_fns, calls)
        self._plan_memo = (rec, calls, changes)
        for st, level in changes:
            st.asserted = level
        return calls


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low
