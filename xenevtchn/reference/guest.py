"""The guest kernel's side of the 2-level ABI: ``d.guest`` (docs/semantics.md "Guest side").

Two guests are modelled, both from ``shared/spec/guest-side.md``:

* :class:`LinuxGuest` (the default): PV Linux's ``events_2l.c`` / ``events_base.c``
  (spec §1.3-1.7): a per-vCPU fairness cursor, the vCPU's VIRQ_TIMER port first, one
  ``pending & ~mask & on-this-vCPU`` snapshot per word visit, the start word visited
  twice, and an unmask that takes the local fast path on the port's own vCPU and the
  ``EVTCHNOP_unmask`` hypercall from any other.
* :class:`MiniOSGuest`: Mini-OS's ``do_hypervisor_callback`` (spec §2): strictly
  ascending, each selected word re-read until empty; unmask always local.

The guest masks nothing at start. A port is handled on its channel's notify vCPU, and
only *usable* channels (UNBOUND, INTERDOMAIN, PIRQ, VIRQ, IPI) have a handler; a pending
port of a FREE/RESERVED channel is skipped and left pending. A port bound through a
:class:`~.xenevtchn_handle.XenEvtchn` handle never reaches the upcall's list: if the
scan meets one (only possible after raw writes into shared_info) it is taken for its
handle, as Linux's upcall would pass it to the evtchn driver.

Every bit operation goes through :class:`~.shared_info.SharedInfo`, so the state lives
in the caller's shared_info buffer and nowhere else (except the fairness cursors, which
are Linux's private per-CPU variables).

Once the domain runs the FIFO ABI (after ``init_control``), both guests consume events
the way Linux's ``events_fifo.c`` does (spec guest-side §1.10; Mini-OS has no FIFO code
of its own): per vCPU a private ``head[16]`` kept across upcalls, ``ready`` taken with an
exchange, the highest-priority queue first, one event at a time, ``ready`` re-read after
every event. ``mask``/``unmask`` then work on the event words (docs/semantics.md
"FIFO event channels").
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable, Optional

from xenevtchn.constants import EVTCHN_FIFO_MAX_QUEUES, VIRQ_TIMER
from xenevtchn.errors import EvtchnError

from . import commands, event_fifo
from .event_2l import take_for_handle
from .event_fifo import LINK_MASK, LINKED, MASKED, PENDING, READY_MASK

if TYPE_CHECKING:
    from .domain import Domain

GUEST_MODES = ("linux", "minios")

Handler = Optional[Callable[[int], object]]


class Guest:
    """What the two guest kernels share: argument checks, ``mask``, port handling."""

    mode: str = ""

    def __init__(self, domain: Domain) -> None:
        self._domain = domain
        # FIFO: the private head[q] of each vCPU (Linux's per-CPU ``cpu_queue``).
        self._fifo_heads: list[list[int]] = [
            [0] * EVTCHN_FIFO_MAX_QUEUES for _ in range(len(domain.vcpus))
        ]
        # 2-level: selector words a pass had taken and not finished when a handler raised;
        # the vCPU's next pass takes them with the selector (as FIFO keeps its READY bits).
        self._leftover: list[int] = [0] * len(domain.vcpus)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of d{self._domain.domid}>"

    # -- argument checks -------------------------------------------------------------------
    def _alive(self, what: str) -> Domain:
        d = self._domain
        if d.destroyed:
            raise EvtchnError(errno.ESRCH, f"guest.{what}")
        return d

    def _port(self, port: object) -> int:
        """``port`` as an int in the ABI's range (``TypeError``/``ValueError``): the
        layout's 2-level range, or 0..131071 once the domain runs FIFO."""
        if not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        nr_ports = self._domain.max_evtchns
        if not 0 <= port < nr_ports:
            raise ValueError(f"port must be in 0..{nr_ports - 1}, not {port}")
        return int(port)

    def _vcpu(self, vcpu: object) -> int:
        """``vcpu`` as an existing vCPU id (``TypeError``/``ValueError``)."""
        if not isinstance(vcpu, int):
            raise TypeError(f"vcpu must be an int, not {type(vcpu).__name__}")
        count = len(self._domain.vcpus)
        if not 0 <= vcpu < count:
            raise ValueError(f"vcpu must be in 0..{count - 1}, not {vcpu}")
        return int(vcpu)

    @staticmethod
    def _handler(handler: object) -> Handler:
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable or None, not {type(handler).__name__}")
        return handler  # type: ignore[return-value,unused-ignore]

    def port_vcpu(self, port: int) -> int:
        """The vCPU that handles ``port``: its channel's notify vCPU (0 if no channel)."""
        channels = self._domain.channels
        return channels[port].notify_vcpu if port < len(channels) else 0

    def _usable(self, port: int) -> bool:
        channels = self._domain.channels
        return port < len(channels) and channels[port].usable

    # -- shared operations -------------------------------------------------------------------
    def mask(self, port: int) -> None:
        """``mask_evtchn``: set the port's mask bit (FIFO: MASKED in its event word, if
        an event-array page covers the port)."""
        d = self._alive("mask")
        port = self._port(port)
        d.port_ops.guest_mask(d, port)

    def unmask(self, port: int, vcpu: int | None = None) -> None:
        """Unmask ``port`` as if running on ``vcpu`` (default: the port's own vCPU)."""
        d = self._alive("unmask")
        port = self._port(port)
        here = None if vcpu is None else self._vcpu(vcpu)
        if d.fifo is not None:
            self._fifo_unmask(port)
        else:
            self._unmask_2l(port, here)

    def _unmask_2l(self, port: int, vcpu: int | None) -> None:
        raise NotImplementedError

    def _hypercall_unmask(self, port: int) -> None:
        """EVTCHNOP_unmask as the guest issues it: result ignored, hooks run."""
        d = self._domain
        hv = d.hypervisor
        try:
            commands.unmask(d, port)
        except EvtchnError:
            pass  # (void)HYPERVISOR_event_channel_op(EVTCHNOP_unmask, ...)
        finally:
            if hv.hooks_queued:
                hv.run_hooks()

    def _local_unmask(self, port: int, vcpu: int) -> None:
        """The local unmask (spec §1.7 PV / §2): clear mask, then look at pending.

        If pending, re-fire the swallowed edge on ``vcpu``: test-and-set its selector
        bit and, only if that was clear, set ``evtchn_upcall_pending`` (a guest write:
        no ``on_kick``). A handle's port is taken for its handle instead.
        """
        d = self._domain
        si = d.shared_info
        si.clear_mask(port)
        if not si.test_pending(port):
            return
        owner = d.handle_ports.get(port)
        if owner is not None:
            take_for_handle(d, port, owner)
        elif not si.test_and_set_sel(vcpu, port // si.layout.word_bits):
            si.test_and_set_upcall_pending(vcpu)

    def _handle_port(self, port: int, handled: list[int], handler: Handler) -> None:
        """Handle one port: clear pending, record it, then call ``handler(port)``.

        Only a port whose pending bit the clear takes is handled: one cleared since the
        scan read its word (by a handler's close, a reset) is passed over, as a scan on
        another vCPU would have taken it."""
        d = self._domain
        owner = d.handle_ports.get(port)
        if owner is not None:  # the evtchn driver's port: its ack takes it
            take_for_handle(d, port, owner)
            return
        if not d.shared_info.is_pending(port):
            return
        d.shared_info.clear_pending(port)
        handled.append(port)
        if handler is not None:
            handler(port)

    def do_upcall(self, vcpu: int = 0, handler: Handler = None) -> list[int]:
        """Run the event upcall on ``vcpu``; return the ports handled, in order.

        Repeats { clear ``evtchn_upcall_pending``; scan } while ``evtchn_upcall_pending``
        is set again. ``handler(port)`` runs for each port after its pending bit is
        cleared; an exception from it propagates at once (what was done stays done).
        """
        d = self._alive("do_upcall")
        v = self._vcpu(vcpu)
        handler = self._handler(handler)
        si = d.shared_info
        handled: list[int] = []
        while True:
            si.clear_upcall_pending(v)
            if d.fifo is not None:
                self._fifo_handle_events(v, handled, handler)
            else:
                self._handle_events(v, handled, handler)
            if not si.upcall_pending(v):
                return handled

    # -- FIFO (spec guest-side §1.10) ------------------------------------------------------
    def control_block_registered(self, vcpu: int) -> None:
        """A control block was registered for ``vcpu``: Linux zeroes its private heads."""
        self._fifo_heads[vcpu] = [0] * EVTCHN_FIFO_MAX_QUEUES

    def _fifo_unmask(self, port: int) -> None:
        """The post-XSA-332 FIFO unmask: not MASKED -> done; MASKED and PENDING -> the
        EVTCHNOP_unmask hypercall (Xen clears MASKED and links it); else clear MASKED.

        A port without an event word is left alone. BUSY is never left set by the
        hypervisor here, so there is nothing to spin on.
        """
        d = self._domain
        fifo = d.fifo
        assert fifo is not None
        if not fifo.has_word(port):
            return
        word = fifo.word(port)
        if not word & MASKED:
            return
        if word & PENDING:
            self._hypercall_unmask(port)
        else:
            fifo.set_word(port, word & ~MASKED)

    def _fifo_handle_events(self, vcpu: int, handled: list[int], handler: Handler) -> None:
        """Linux's FIFO ``handle_events`` on ``vcpu``: queues by priority, one event each.

        If a handler raises, the ready bits still owed are put back into the control
        block's ``ready`` before the exception propagates, so a later upcall continues.
        """
        fifo = self._domain.fifo
        assert fifo is not None
        fv = fifo.vcpus[vcpu]
        if fv.control is None:
            return
        heads = self._fifo_heads[vcpu]
        ready = fv.exchange_ready(0) & READY_MASK
        try:
            while ready:
                q = (ready & -ready).bit_length() - 1  # the highest priority ready
                port = heads[q] or fv.head(q)  # reached the tail last time: re-read
                # Unlink the port: clear LINKED and LINK; the old LINK is the next head.
                if fifo.has_word(port):
                    old = fifo.word(port)
                    fifo.set_word(port, old & ~(LINKED | LINK_MASK))
                else:
                    old = 0
                nxt = old & LINK_MASK
                if not nxt:
                    ready &= ~(1 << q)
                heads[q] = nxt
                if old & PENDING and not old & MASKED:
                    self._fifo_handle_port(port, handled, handler)
                ready |= fv.exchange_ready(0) & READY_MASK
        except BaseException:
            if ready:
                fv.exchange_ready(fv.ready() | ready)
            raise

    def _fifo_handle_port(self, port: int, handled: list[int], handler: Handler) -> None:
        """Handle one FIFO event: usable channels only (else left pending); a handle's
        port is taken for its handle; otherwise clear PENDING, record, ``handler(port)``."""
        if not self._usable(port):
            return
        d = self._domain
        owner = d.handle_ports.get(port)
        if owner is not None:
            event_fifo.take_for_handle(d, port, owner)
            return
        fifo = d.fifo
        assert fifo is not None
        fifo.set_word(port, fifo.word(port) & ~PENDING)
        handled.append(port)
        if handler is not None:
            handler(port)

    def _handle_events(self, vcpu: int, handled: list[int], handler: Handler) -> None:
        raise NotImplementedError


class LinuxGuest(Guest):
    """PV Linux with the 2-level ABI (spec §1.3-1.7)."""

    mode = "linux"

    def __init__(self, domain: Domain) -> None:
        super().__init__(domain)
        # current_word_idx / current_bit_idx per vCPU: kept across upcalls.
        self._cursor: list[tuple[int, int]] = [(0, 0)] * len(domain.vcpus)

    def _unmask_2l(self, port: int, vcpu: int | None) -> None:
        """``evtchn_2l_unmask`` run on ``vcpu`` (default: the port's own vCPU).

        On the port's own vCPU: the local fast path. From any other vCPU: the
        ``EVTCHNOP_unmask`` hypercall with the mask bit still set, so Xen re-raises a
        pending port on its notify vCPU (and may kick). Linux ignores its result.
        """
        own = self.port_vcpu(port)
        here = own if vcpu is None else vcpu
        if here == own:
            self._local_unmask(port, here)
        else:
            self._hypercall_unmask(port)

    def _active(self, vcpu: int, word: int) -> int:
        """``pending[word] & ~mask[word] & cpu_evtchn_mask[vcpu][word]``, read now."""
        si = self._domain.shared_info
        bits = si.pending_word(word) & ~si.mask_word(word)
        if not bits:
            return 0
        channels = self._domain.channels
        nr_channels = len(channels)
        base = word * si.layout.word_bits
        active = 0
        while bits:
            low = bits & -bits
            bits ^= low
            port = base + low.bit_length() - 1
            if port < nr_channels:
                channel = channels[port]
                if channel.usable and channel.notify_vcpu == vcpu:
                    active |= low
        return active

    def _handle_events(self, vcpu: int, handled: list[int], handler: Handler) -> None:
        """``evtchn_2l_handle_events`` (spec §1.4), step for step."""
        d = self._domain
        si = d.shared_info
        width = si.layout.word_bits
        # 1. Timer first: this vCPU's VIRQ_TIMER port, if active here. No cursor move.
        timer = d.vcpus[vcpu].virq_to_evtchn[VIRQ_TIMER]
        if timer and self._active(vcpu, timer // width) >> (timer % width) & 1:
            self._handle_port(timer, handled, handler)
        # 2. Take the selector (with the words an interrupted pass left).
        pending_words = self._leftover[vcpu] | si.exchange_sel(vcpu, 0)
        self._leftover[vcpu] = 0
        # 3. Start from the fairness cursor.
        start_word, start_bit = self._cursor[vcpu]
        word = start_word
        i = 0
        # 4. The word loop (i counts every iteration, wraps included).
        while pending_words:
            words = pending_words & ~((1 << word) - 1)
            if not words:
                word = 0
                i += 1
                continue
            word = (words & -words).bit_length() - 1
            bits = self._active(vcpu, word)  # one snapshot per visit
            first_visit_of_start = word == start_word and i == 0
            bit = start_bit if first_visit_of_start else 0
            while True:
                rest = bits & ~((1 << bit) - 1)
                if not rest:
                    break
                bit = (rest & -rest).bit_length() - 1
                try:
                    self._handle_port(word * width + bit, handled, handler)
                except BaseException:
                    self._leftover[vcpu] = pending_words  # this word included
                    raise
                bit = (bit + 1) % width
                self._cursor[vcpu] = (word, bit) if bit else ((word + 1) % width, 0)
                if bit == 0:
                    break
            if not first_visit_of_start:  # the start word is scanned twice
                pending_words &= ~(1 << word)
            word = (word + 1) % width
            i += 1


class MiniOSGuest(Guest):
    """Mini-OS (spec §2): no cursor, no timer-first, no per-vCPU binding."""

    mode = "minios"

    def _unmask_2l(self, port: int, vcpu: int | None) -> None:
        """``unmask_evtchn``: always the local path, on ``vcpu`` (default the port's own).

        Mini-OS's synchronous ``force_evtchn_callback`` is not run: the upcall happens
        when the caller runs :meth:`do_upcall` (docs/semantics.md lists the local path only).
        """
        here = self.port_vcpu(port) if vcpu is None else vcpu
        self._local_unmask(port, here)

    def _pending_unmasked(self, word: int) -> int:
        """``pending[word] & ~mask[word]``: Mini-OS has a default handler for every
        port, FREE ones included, and clears each port it handles."""
        si = self._domain.shared_info
        return si.pending_word(word) & ~si.mask_word(word)

    def _handle_events(self, vcpu: int, handled: list[int], handler: Handler) -> None:
        """The body of ``do_hypervisor_callback``: each selected word, lowest first,
        re-read and its lowest set bit handled until it reads 0."""
        si = self._domain.shared_info
        width = si.layout.word_bits
        selected = self._leftover[vcpu] | si.exchange_sel(vcpu, 0)
        self._leftover[vcpu] = 0
        while selected:
            low = selected & -selected
            selected ^= low
            word = low.bit_length() - 1
            while True:
                bits = self._pending_unmasked(word)
                if not bits:
                    break
                try:
                    self._handle_port(word * width + (bits & -bits).bit_length() - 1,
                                      handled, handler)
                except BaseException:
                    self._leftover[vcpu] = selected | low  # this word included
                    raise


def make_guest(domain: Domain, mode: str) -> Guest:
    """The guest kernel ``mode`` (one of :data:`GUEST_MODES`) for ``domain``."""
    if mode == "linux":
        return LinuxGuest(domain)
    if mode == "minios":
        return MiniOSGuest(domain)
    raise ValueError(f"guest must be one of {GUEST_MODES}, not {mode!r}")
