"""``d.guest``: the guest kernel's side of a domain's event channels.

``LinuxGuest`` handles upcalls as Linux's 2-level code does (fairness cursor per vCPU,
VIRQ_TIMER first, clear-before-handle, repeat while the upcall flag is set again);
``MiniOSGuest`` as Mini-OS does (ascending, each word re-read until empty). The word and
bit work runs in C (``csrc/guest_2l.c``); only handler calls are Python.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable

from ._native import ffi, lib, make_fast_path, make_fast_upcall
from .constants import EVTCHN_FIFO_NR_CHANNELS, VIRQ_TIMER
from .errors import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain, _Slot

Handler = Callable[[int], object]
_CHUNK = 4096  # ports taken from C per call when no handler runs in between
_UPCALL_CAP = 1024  # ports per xe_2l_upcall call (the fast do_upcall), per vCPU


class _Guest:
    mode = ""

    def __init__(self, domain: Domain) -> None:
        self._d = domain
        self._si = domain.shared_info
        nv = len(domain.vcpus)
        # One block, so C can reach a vCPU's scan from the domain (xe_2l_upcall_key). Each
        # scan also holds its vCPU's upcall nesting count, whatever the ABI.
        self._scan_block = ffi.new("struct xe_scan[]", nv)
        self._scans = [self._scan_block + v for v in range(nv)]
        for v, scan in enumerate(self._scans):
            scan.vcpu = v
            scan.timer = domain._virq_to_evtchn[v][VIRQ_TIMER]
        self._fifo_scans = [ffi.new("struct xe_fifo_scan *", {"vcpu": v})
                            for v in range(len(domain.vcpus))]
        # The batch buffer of each vCPU's upcalls (made at its first use). Per vCPU, not
        # per guest: _drain fills it with the GIL released, and upcalls of two vCPUs run
        # at once; the nesting count lets only one upcall of a vCPU drain at a time.
        self._outs: list[Any] = [None] * nv

    # ---- argument checks -----------------------------------------------------------

    def _port(self, port: int) -> int:
        if not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        top = EVTCHN_FIFO_NR_CHANNELS if self._d.fifo is not None else self._si.nr_ports
        if not 0 <= port < top:
            raise ValueError(f"port {port} is outside 0..{top - 1}")
        return port

    def _vcpu(self, vcpu: int) -> int:
        if not isinstance(vcpu, int):
            raise TypeError(f"vcpu must be an int, not {type(vcpu).__name__}")
        if not 0 <= vcpu < len(self._d.vcpus):
            raise ValueError(f"vcpu {vcpu} does not exist (domain has {len(self._d.vcpus)})")
        return vcpu

    def _alive(self) -> None:
        if self._d.dead:
            raise EvtchnError(errno.ESRCH, f"domain {self._d.domid} was destroyed")

    # ---- per-instance fast paths ---------------------------------------------------

    _FAST = ("unmask", "mask", "do_upcall")

    def _bind_fast_paths(self, slot: _Slot | None) -> None:
        """Install per-instance fast paths (the domain's slot keys them): ``mask(port)`` as
        a builtin (csrc/python/fast_paths.c) that writes a 2-level mask bit, and leaves any
        other case (a FIFO domain, an argument to refuse, a destroyed domain) to the method."""
        if slot is not None and self._d._builtins:
            self.mask = make_fast_path(  # type: ignore[method-assign]
                "mask", slot.base, _Guest.mask.__get__(self), slot, EvtchnError, self._d.hv._run_owed)

    def _unbind_fast_paths(self) -> None:
        """The domain is gone: back to the class methods, which answer ESRCH (closures
        taken earlier find no domain in C and fall back to them too)."""
        for name in self._FAST:
            self.__dict__.pop(name, None)
        self._d._c.scans = ffi.NULL
        for scan in self._scans:
            scan.d = ffi.NULL

    def _sync_timer(self, vcpu: int) -> None:
        """The vCPU's VIRQ_TIMER binding changed: the C upcall takes the new port first."""
        self._scans[vcpu].timer = self._d._virq_to_evtchn[vcpu][VIRQ_TIMER]

    # ---- mask / unmask -------------------------------------------------------------

    def mask(self, port: int) -> None:
        """Set the port's mask bit (the guest's own write; FIFO: the word's MASKED)."""
        self._alive()
        port = self._port(port)
        if self._d.fifo is not None:
            lib.xe_fifo_mask(self._d._c, port)
        else:
            lib.xe_2l_mask(self._si._s, port)

    def unmask(self, port: int, vcpu: int | None = None) -> None:
        """Clear the port's mask bit and re-raise it if pending: each guest kind's own way."""
        raise NotImplementedError  # LinuxGuest and MiniOSGuest define it

    def _local_unmask(self, port: int, vcpu: int) -> None:
        d = self._d
        if d.ports.is_valid(port) and d.ports.chans[port].user != ffi.NULL:
            lib.xe_user_unmask(d._c, port)  # a handle's port: re-fired into its queue
        elif d.fifo is not None:
            self._fifo_unmask(port)
        else:
            lib.xe_2l_guest_unmask(self._si._s, vcpu, port)

    def _fifo_unmask(self, port: int) -> None:
        """Linux's FIFO unmask: clear MASKED locally, or let Xen do it (and link the
        event) with ``EVTCHNOP_unmask`` when the event is pending."""
        if lib.xe_fifo_guest_unmask(self._d._c, port):
            try:
                self._d.unmask(port)
            except EvtchnError:
                pass  # Linux ignores the hypercall's answer

    def _fifo_vcpu_reset(self, vcpu: int) -> None:
        """The guest initialised ``vcpu``'s control block: its private heads start at 0."""
        ffi.memmove(self._fifo_scans[vcpu], ffi.new("struct xe_fifo_scan *", {"vcpu": vcpu}),
                    ffi.sizeof("struct xe_fifo_scan"))

    def fifo_heads(self, vcpu: int = 0) -> list[int]:
        """The guest's private FIFO head per priority on ``vcpu`` (0: read the control block)."""
        return list(self._fifo_scans[self._vcpu(vcpu)].head)

    # ---- the upcall ----------------------------------------------------------------

    def do_upcall(self, vcpu: int = 0, handler: Handler | None = None) -> list[int]:
        """Run the event upcall on ``vcpu``; returns the ports handled, in order."""
        self._alive()
        vcpu = self._vcpu(vcpu)
        if handler is not None and not callable(handler):
            raise TypeError("handler must be callable or None")
        si, c = self._si._s, self._d._c
        count = self._scans[vcpu]       # holds the vCPU's nesting count
        if self._d.fifo is not None:
            scan, run = self._fifo_scans[vcpu], self._fifo_pass
        else:
            scan, run = count, self._pass
        # `owner` says, from C, whether this call holds the nesting count: enter sets it
        # and leave clears it in the same C call as the count, so an exception landing
        # between any two bytecodes (a signal handler's) finds it right, and the cleanup
        # gives back exactly the count this call took.
        owner = ffi.new("uint32_t *")
        handled: list[int] = []
        try:
            if lib.xe_upcall_enter_owned(count, owner):
                # An upcall of this vCPU is running (this is one of its handlers, or another
                # thread): return at once; that upcall makes another pass (Linux's nesting).
                return []
            while True:
                lib.xe_upcall_pass_begin(count)
                lib.xe_vcpu_set_upcall_pending(si, vcpu, 0)
                run(c, vcpu, scan, handler, handled)
                if lib.xe_upcall_leave_owned(count, si, owner):
                    return handled
        except BaseException:
            lib.xe_upcall_abort_owned(count, owner)
            raise

    def _pass(self, c: Any, vcpu: int, scan: Any, handler: Handler | None, handled: list[int]) -> None:
        raise NotImplementedError

    def _fifo_pass(self, c: Any, vcpu: int, scan: Any, handler: Handler | None, handled: list[int]) -> None:
        """Linux's FIFO handle_events: highest priority first, one event at a time."""
        # An exception between the begin and the try leaves the queues taken in the scan's
        # own READY bits; the next begin ORs them in (csrc/guest_fifo.c).
        lib.xe_fifo_scan_begin(c, scan)
        try:
            self._drain(c, vcpu, scan, handler, handled, lib.xe_fifo_scan_fill,
                        lib.xe_fifo_scan_next)
        except BaseException:
            lib.xe_fifo_scan_abort(c, scan)  # the queues still owed stay READY
            raise

    def _drain(self, c: Any, vcpu: int, scan: Any, handler: Handler | None, handled: list[int],
               fill: Any, nxt: Any) -> None:
        """Take the scan's ports: in C-sized batches, or one by one around ``handler``."""
        if handler is None:
            out = self._outs[vcpu]
            if out is None:
                out = self._outs[vcpu] = ffi.new("uint32_t[]", _CHUNK)
            while n := fill(c, scan, out, _CHUNK):
                handled += ffi.unpack(out, n)
        else:
            while (port := nxt(c, scan)) >= 0:
                handled.append(port)
                handler(port)


class LinuxGuest(_Guest):
    """A PV Linux guest, 2-level ABI (``drivers/xen/events/events_2l.c``)."""

    mode = "linux"

    def unmask(self, port: int, vcpu: int | None = None) -> None:
        """Unmask as Linux does on ``vcpu`` (default: the port's own notify vCPU).

        On the port's own vCPU: the local fast path (clear mask, then re-fire a pending
        port through the selector and upcall flag). From any other vCPU: the
        ``EVTCHNOP_unmask`` hypercall, which re-raises it on the notify vCPU.
        """
        self._alive()
        port = self._port(port)
        notify = self._d.ports.notify(port) if self._d.ports.is_valid(port) else 0
        vcpu = notify if vcpu is None else self._vcpu(vcpu)
        if vcpu == notify or self._d.fifo is not None:  # FIFO: the same on every vCPU
            self._local_unmask(port, vcpu)
        else:
            try:
                self._d.unmask(port)
            except EvtchnError:
                pass  # Linux ignores the hypercall's answer (e.g. EINVAL past the valid range)

    def _bind_fast_paths(self, slot: _Slot | None) -> None:
        """``unmask(port)``, ``mask(port)`` and ``do_upcall(vcpu, handler)``: builtins.

        Anything else (a ``vcpu`` for unmask, an argument to refuse, a domain that is not
        2-level) goes to the class method, which checks it and does the work. A domain that
        is not PV (``d._builtins`` false) keeps the class methods for mask and unmask.
        """
        super()._bind_fast_paths(slot)
        slow_unmask = LinuxGuest.unmask.__get__(self)
        slow_upcall = LinuxGuest.do_upcall.__get__(self)
        if slot is not None and self._d._builtins:
            # A builtin (csrc/python/fast_paths.c): a plain int port and no vCPU -> one C
            # call (Linux's local unmask on the port's notify vCPU); anything else ->
            # slow_unmask.
            self.unmask = make_fast_path(  # type: ignore[method-assign]
                "unmask", slot.base, slow_unmask, slot, EvtchnError, self._d.hv._run_owed)

        nv = len(self._d.vcpus)
        block = ffi.new("uint32_t[]", nv * _UPCALL_CAP)
        self._upcall_out = block
        for v, scan in enumerate(self._scans):
            scan.d = self._d._c
            scan.out = block + v * _UPCALL_CAP
            scan.cap = _UPCALL_CAP
        self._d._c.scans = self._scan_block
        if slot is not None:
            # A builtin (csrc/python/fast_upcall.c): a plain int vCPU -> one C upcall and
            # the list, the handler (if any) called from C; anything else -> slow_upcall.
            self.do_upcall = make_fast_upcall(slow_upcall, slot.base, nv)  # type: ignore[method-assign]

    def cursor(self, vcpu: int = 0) -> tuple[int, int]:
        """The vCPU's fairness cursor (word, bit): where the next scan starts."""
        s = self._scans[self._vcpu(vcpu)]
        return int(s.cursor_word), int(s.cursor_bit)

    def _pass(self, c: Any, vcpu: int, scan: Any, handler: Handler | None, handled: list[int]) -> None:
        timer = self._d._virq_to_evtchn[vcpu][VIRQ_TIMER]
        if timer:
            port = lib.xe_2l_take_timer(c, vcpu, timer)
            if port >= 0:
                handled.append(port)
                if handler is not None:
                    handler(port)
        lib.xe_2l_scan_begin(c, scan)
        self._drain(c, vcpu, scan, handler, handled, lib.xe_2l_scan_fill, lib.xe_2l_scan_next)
        lib.xe_2l_scan_end(scan)


class MiniOSGuest(_Guest):
    """A Mini-OS guest: ascending order from port 0, each word re-read until empty."""

    mode = "minios"

    def unmask(self, port: int, vcpu: int | None = None) -> None:
        """Mini-OS always unmasks locally (on ``vcpu``, default vCPU 0)."""
        self._alive()
        port = self._port(port)
        self._local_unmask(port, 0 if vcpu is None else self._vcpu(vcpu))

    def _pass(self, c: Any, vcpu: int, scan: Any, handler: Handler | None, handled: list[int]) -> None:
        lib.xe_minios_scan_begin(c, scan)
        self._drain(c, vcpu, scan, handler, handled, lib.xe_minios_scan_fill,
                    lib.xe_minios_scan_next)


GUESTS = {"linux": LinuxGuest, "minios": MiniOSGuest}
