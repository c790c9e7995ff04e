"""The hypervisor: domains, simulated time, global VIRQ handlers, host IRQs, hooks."""

from __future__ import annotations

import errno
from typing import Callable

from xenevtchn.constants import (
    DOMID_FIRST_RESERVED,
    HVM_MAX_VCPUS,
    IRQ_MAX_GUESTS,
    IRQ_MAX_GUESTS_LIMIT,
    LAYOUTS,
    NR_PIRQS,
    NR_PIRQS_MAX,
    NR_VIRQS,
    MAX_VIRT_CPUS,
    VirqClass,
    virq_class,
)
from xenevtchn.errors import EvtchnError

from . import commands, event_fifo, poll
from .channel import ECS_RESERVED
from .domain import Domain, Vcpu
from .events import raise_event
from .memory import DEFAULT_FRAMES, MAX_FRAMES
from .guest import GUEST_MODES
from .shared_info import SharedInfo
from .validate import as_int, int_in_range, u16, u32

Hook = Callable[[Vcpu], object]


class Hypervisor:
    """A simulated Xen with the 2-level and FIFO event-channel ABIs.

    ``on_kick(vcpu)`` runs when the hypervisor sets a vCPU's ``evtchn_upcall_pending``
    from 0 to 1; ``on_wake(vcpu)`` when a vCPU blocked in poll is woken. Hooks run after
    the state change of the call that caused them, in order, before that call returns;
    if hooks raise, every queued hook still runs and the first exception propagates.
    """

    def __init__(self, irq_max_guests: int = IRQ_MAX_GUESTS) -> None:
        """``irq_max_guests``: how many domains may share one host IRQ (1..255)."""
        self.irq_max_guests = int_in_range(irq_max_guests, "irq_max_guests", 1, IRQ_MAX_GUESTS_LIMIT)
        self.on_kick: Hook | None = None
        self.on_wake: Hook | None = None
        # HVM/PVH: on_interrupt(vcpu, vector) for a vector injection, on_gsi(domain, gsi,
        # level) for a change of the GSI/PCI-INTx callback line.
        self.on_interrupt: Callable[[Vcpu, int], object] | None = None
        self.on_gsi: Callable[[Domain, int, bool], object] | None = None
        self._domains: dict[int, Domain] = {}
        self._now = 0
        self._hardware_domain: Domain | None = None
        self._hardware_domain_assigned = False
        self._virq_handlers: dict[int, Domain] = {}  # explicitly configured global handlers
        self._irq_shareable: dict[int, bool] = {}  # host IRQ -> set by its first binder
        self._irq_guests: dict[int, list[Domain]] = {}  # host IRQ -> domains bound to it
        self._hooks: list[tuple[Hook, Vcpu]] = []
        # Xen-attached consumers' callbacks owed: (notify, vcpu, port), in send order.
        self._xen_calls: list[tuple[Callable[[int, int], object], int, int]] = []

    # -- hooks ---------------------------------------------------------------------------
    def queue_hook(self, hook: Hook | None, vcpu: Vcpu) -> None:
        """Remember to call ``hook(vcpu)`` when the current call completes."""
        if hook is not None:
            self._hooks.append((hook, vcpu))

    def queue_xen_notify(self, fn: Callable[[int, int], object] | None, vcpu: int, port: int) -> None:
        """Remember to call a Xen-attached channel's consumer ``fn(vcpu, port)``; these
        run before the kick/wake hooks of the same call. None: Xen's default consumer,
        not modelled (dropped)."""
        if fn is not None:
            self._xen_calls.append((fn, vcpu, port))

    @property
    def hooks_queued(self) -> bool:
        """Whether hooks are waiting to run."""
        return bool(self._hooks or self._xen_calls)

    def run_hooks(self) -> None:
        """Run the queued hooks in order; re-raise the first exception after all ran."""
        calls, self._xen_calls = self._xen_calls, []
        queued, self._hooks = self._hooks, []
        first_error: Exception | None = None
        for fn, v, port in calls:
            try:
                fn(v, port)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                if first_error is None:
                    first_error = exc
        for hook, vcpu in queued:
            try:
                hook(vcpu)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error

    def _finish(self) -> None:
        if self._hooks or self._xen_calls:
            self.run_hooks()

    # -- domains -------------------------------------------------------------------------
    def create_domain(
        self,
        vcpus: int = 1,
        privileged: bool = False,
        domid: int | None = None,
        max_evtchn_port: int | None = None,
        layout: str = "x86_64",
        shared_info: object = None,
        guest: str = "linux",
        memory_frames: int = DEFAULT_FRAMES,
        nr_pirqs: int = NR_PIRQS,
        type: str | None = None,
    ) -> Domain:
        """Create a domain (see docs/semantics.md "Hypervisor" for every rule).

        ``guest`` picks the guest kernel behind ``d.guest``: ``"linux"`` (PV Linux) or
        ``"minios"`` (else ``ValueError``). ``memory_frames``: how many 4 KiB frames
        ``d.memory`` has (1 .. 2**40).
        """
        if type is None:
            type = "pv"
        if type not in ("pv", "hvm", "pvh"):
            raise ValueError(f"type must be 'pv', 'hvm', 'pvh' or None, not {type!r}")
        # Xen: 8192 vCPUs for PV, 128 for HVM/PVH (xen-hvm-and-beyond 1.3).
        vcpus = int_in_range(vcpus, "vcpus", 1, MAX_VIRT_CPUS if type == "pv" else HVM_MAX_VCPUS)
        if domid is not None:
            domid = int_in_range(domid, "domid", 0, DOMID_FIRST_RESERVED - 1)
        if max_evtchn_port is None:
            pass  # no configured limit (dom0's INT_MAX): only the ABI limit applies
        elif not isinstance(max_evtchn_port, int):
            raise TypeError(f"max_evtchn_port must be None or an int, not {type(max_evtchn_port).__name__}")
        elif max_evtchn_port < 0:
            raise ValueError(f"max_evtchn_port must be None or an int >= 0, not {max_evtchn_port!r}")
        memory_frames = int_in_range(memory_frames, "memory_frames", 1, MAX_FRAMES)
        nr_pirqs = int_in_range(nr_pirqs, "nr_pirqs", 0, NR_PIRQS_MAX)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        if guest not in GUEST_MODES:
            raise ValueError(f"guest must be one of {GUEST_MODES}, not {guest!r}")
        info = SharedInfo(shared_info, layout)
        if domid is None:
            domid = self._lowest_free_domid()
        elif domid in self._domains:
            raise EvtchnError(errno.EEXIST, "create_domain")
        info.initialise(mask_upcalls=type == "pv")
        d = Domain(
            self,
            domid,
            vcpus,
            bool(privileged),
            None if max_evtchn_port is None else int(max_evtchn_port),
            info,
            guest,
            memory_frames,
            type,
        )
        d.nr_pirqs = nr_pirqs
        self._domains[domid] = d
        if d.privileged and not self._hardware_domain_assigned:
            self._hardware_domain = d
            self._hardware_domain_assigned = True
        return d

    def _lowest_free_domid(self) -> int:
        for domid in range(DOMID_FIRST_RESERVED):
            if domid not in self._domains:
                return domid
        raise EvtchnError(errno.ENOSPC, "create_domain")

    def get_domain(self, domid: int) -> Domain:
        """The live domain ``domid``, or ``EvtchnError(ESRCH)``."""
        d = self._domains.get(domid)
        if d is None:
            raise EvtchnError(errno.ESRCH)
        return d

    def domain(self, domid: int) -> Domain:
        """The live domain ``domid``; unknown → ``EvtchnError(ESRCH)``."""
        return self._get(domid, "domain")

    def _get(self, domid: object, what: str) -> Domain:
        d = self._domains.get(as_int(domid, "domid"))
        if d is None:
            raise EvtchnError(errno.ESRCH, what)
        return d

    @property
    def domains(self) -> tuple[Domain, ...]:
        """The live domains, by domid."""
        return tuple(self._domains[k] for k in sorted(self._domains))

    @property
    def hardware_domain(self) -> Domain | None:
        """The first privileged domain created, while it lives."""
        return self._hardware_domain

    def destroy_domain(self, domid: int) -> None:
        """Close every port (high to low), drop handler entries, free the domid."""
        d = self._get(domid, "destroy_domain")
        d.dying = True
        for port in range(d.valid_evtchns - 1, 0, -1):
            if d.channels[port].state > ECS_RESERVED:
                commands.close_port(d, port, by_xen=True)  # Xen's channels too
        event_fifo.teardown(d)
        for v in d.vcpus:  # the vCPUs are gone: no poll, no timer, no wake-up
            v.poll_evtchn, v.poll_deadline = 0, None
        d.poll_mask = 0
        for virq in [virq for virq, h in self._virq_handlers.items() if h is d]:
            del self._virq_handlers[virq]
        if self._hardware_domain is d:
            self._hardware_domain = None
        del self._domains[d.domid]
        d.destroyed = True

    def pause_domain(self, domid: int) -> None:
        """Increment the controller pause count."""
        self._get(domid, "pause_domain").pause_count += 1

    def unpause_domain(self, domid: int) -> None:
        """Decrement the controller pause count (``EINVAL`` when it is 0)."""
        d = self._get(domid, "unpause_domain")
        if d.pause_count == 0:
            raise EvtchnError(errno.EINVAL, "unpause_domain")
        d.pause_count -= 1

    # -- PIRQs / host IRQs -----------------------------------------------------------------
    def permit_pirq(self, domid: int, pirq: int) -> None:
        """Let domain ``domid`` bind ``pirq`` (below its ``nr_pirqs``, else ``ValueError``)."""
        pirq = int_in_range(pirq, "pirq", 0, NR_PIRQS_MAX - 1)
        d = self._get(domid, "permit_pirq")
        int_in_range(pirq, "pirq", 0, d.nr_pirqs - 1)
        d.permitted_pirqs.add(pirq)

    def bind_host_irq(self, d: Domain, irq: int, will_share: bool) -> None:
        """``pirq_guest_bind`` sharing rules: ``EBUSY`` when ``d`` may not join."""
        guests = self._irq_guests.get(irq)
        if not guests:
            self._irq_shareable[irq] = will_share
            self._irq_guests[irq] = [d]
            return
        if not (self._irq_shareable[irq] and will_share) or len(guests) >= self.irq_max_guests:
            raise EvtchnError(errno.EBUSY)
        guests.append(d)

    def unbind_host_irq(self, d: Domain, irq: int) -> None:
        """``pirq_guest_unbind``: the last binder leaving makes the IRQ unclaimed."""
        guests = self._irq_guests[irq]
        guests.remove(d)
        if not guests:
            del self._irq_guests[irq]
            del self._irq_shareable[irq]

    # -- VIRQs -----------------------------------------------------------------------------
    def global_virq_handler(self, virq: int) -> Domain | None:
        """The configured handler of a global VIRQ, else the hardware domain."""
        return self._virq_handlers.get(virq, self._hardware_domain)

    def set_virq_handler(self, virq: int, domid: int) -> None:
        """XEN_DOMCTL_set_virq_handler (§5.5)."""
        virq = as_int(virq, "virq")
        d = self._get(domid, "set_virq_handler")
        if not 0 <= virq < NR_VIRQS or virq_class(virq) != VirqClass.GLOBAL:
            raise EvtchnError(errno.EINVAL, "set_virq_handler")
        if self._virq_handlers.get(virq) is d:
            return
        current = self.global_virq_handler(virq)
        if current is d:
            return  # naming the implicit handler (the hardware domain) changes nothing
        if current is not None and current.vcpus[0].virq_to_evtchn[virq]:
            raise EvtchnError(errno.EBUSY, "set_virq_handler")
        self._virq_handlers[virq] = d

    def send_virq(self, domid: int, virq: int, vcpu: int = 0) -> None:
        """Raise ``virq`` in domain ``domid`` (per-vCPU VIRQs on vCPU ``vcpu``)."""
        virq, vcpu = as_int(virq, "virq"), as_int(vcpu, "vcpu")
        d = self._get(domid, "send_virq")
        if not 0 <= virq < NR_VIRQS:
            raise EvtchnError(errno.EINVAL, "send_virq")
        try:
            if virq_class(virq) == VirqClass.VCPU:
                v = d.vcpus[vcpu] if 0 <= vcpu < len(d.vcpus) else None
                if v is None:
                    raise EvtchnError(errno.ENOENT, "send_virq")
                port = v.virq_to_evtchn[virq]
                if port:
                    raise_event(d, v.id, port)  # targeted at that vCPU
            else:
                self._send_domain_virq(d, virq)
        finally:
            self._finish()

    def send_global_virq(self, virq: int) -> None:
        """Raise a global VIRQ in its handler domain (dropped if none or not bound)."""
        virq = as_int(virq, "virq")
        if not 0 <= virq < NR_VIRQS or virq_class(virq) != VirqClass.GLOBAL:
            raise EvtchnError(errno.EINVAL, "send_global_virq")
        handler = self.global_virq_handler(virq)
        if handler is None:
            return
        try:
            self._send_domain_virq(handler, virq)
        finally:
            self._finish()

    @staticmethod
    def _send_domain_virq(d: Domain, virq: int) -> None:
        port = d.vcpus[0].virq_to_evtchn[virq]
        if port:
            raise_event(d, d.channels[port].notify_vcpu, port)

    def send_pirq(self, domid: int, pirq: int) -> None:
        """Fire ``pirq`` of domain ``domid`` (dropped if not bound)."""
        pirq = as_int(pirq, "pirq")
        d = self._get(domid, "send_pirq")
        if not 0 <= pirq < d.nr_pirqs:
            raise EvtchnError(errno.EINVAL, "send_pirq")
        port = d.pirq_to_port.get(pirq)
        if port:
            try:
                raise_event(d, d.channels[port].notify_vcpu, port)
            finally:
                self._finish()

    def inject(self, domid: int, port: int) -> None:
        """Set ``port`` pending at its notify vCPU, as Xen's internal paths do."""
        port = as_int(port, "port")
        d = self._get(domid, "inject")
        if not d.port_is_valid(port):
            raise EvtchnError(errno.EINVAL, "inject")
        try:
            raise_event(d, d.channels[port].notify_vcpu, port)
        finally:
            self._finish()

    # -- Xen-attached channels (xen-hvm-and-beyond §4) --------------------------------------
    def alloc_xen_channel(
        self, domid: int, vcpu: int, remote_domid: int,
        notify: Callable[[int, int], object] | None = None,
    ) -> int:
        """A channel of ``domid`` that Xen holds, bindable by ``remote_domid``."""
        domid, vcpu, remote_domid = u16(domid, "domid"), u32(vcpu, "vcpu"), u16(remote_domid, "remote_domid")
        if notify is not None and not callable(notify):
            raise TypeError(f"notify must be callable or None, not {type(notify).__name__}")
        return commands.alloc_xen_channel(self._get(domid, "alloc_xen_channel"), vcpu, remote_domid, notify)

    def notify_xen_channel(self, domid: int, port: int) -> None:
        """Xen raises the bound peer of its channel (nothing while unbound)."""
        domid, port = u16(domid, "domid"), u32(port, "port")
        d = self._get(domid, "notify_xen_channel")
        try:
            commands.notify_xen_channel(d, port)
        finally:
            self._finish()

    def free_xen_channel(self, domid: int, port: int) -> None:
        """Xen closes its channel (a bound peer becomes UNBOUND naming ``domid``)."""
        domid, port = u16(domid, "domid"), u32(port, "port")
        commands.free_xen_channel(self._get(domid, "free_xen_channel"), port)

    # -- time ------------------------------------------------------------------------------
    @property
    def now(self) -> int:
        """Simulated system time in ns (starts at 0)."""
        return self._now

    def advance(self, ns: int) -> None:
        """Move time forward by ``ns`` and fire the poll timers that are due."""
        if not isinstance(ns, int):
            raise TypeError(f"ns must be an int, not {type(ns).__name__}")
        if ns < 0:
            raise ValueError(f"ns must be an int >= 0, not {ns!r}")
        self._now += ns
        try:
            poll.fire_due_timers(self._domains.values(), self._now)
        finally:
            self._finish()

    def __repr__(self) -> str:
        return f"<Hypervisor now={self._now} domains={sorted(self._domains)}>"
