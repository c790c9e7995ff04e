"""A domain's port table: Xen's per-channel records, kept where C can read them.

The records are a cffi-allocated array of ``struct xe_chan`` that the C data path reads
lock-free (the send fast path routes through it). Only this class writes them, under the
hypervisor's lock. A bytearray mirror of the states lets allocation find the lowest free
port with one C-speed ``find``.

Write order matters to a concurrent C reader: a binding writes every field before the
state, a free writes the state first.

Growth publishes through C (``xe_domain_set_chans``, ``xe_domain_set_valid``): release
stores, the new array before the new sizes, which the C readers load with acquire first
(``chans_of`` in csrc/evtchn_abi.h), so no reader pairs a new size with an old array on
any CPU. The record fields themselves are plain cffi stores; their order towards a C
reader on another CPU rests on the CPU keeping stores in order (x86's TSO) and, elsewhere,
on the fact that a reader that sees a half-written record at worst delivers or drops that
one racing event, as a send racing the same bind or close would in Xen.
"""

from __future__ import annotations

from typing import Any

from ._native import ffi, lib
from .constants import EVTCHN_FIFO_PRIORITY_DEFAULT, EVTCHNS_PER_BUCKET, ChannelState

FREE = ChannelState.FREE
RESERVED = ChannelState.RESERVED


class PortTable:
    """Per-port state of one domain, with Xen's allocation and validity rules."""

    __slots__ = ("chans", "chans_len", "state", "limit", "valid", "active", "fifo", "_cdom",
                 "_old_chans")

    def __init__(self, cdom: Any, max_ports: int, limit: int) -> None:
        """``max_ports``: the ABI's port count; ``limit``: ports must be < limit."""
        self.chans = ffi.new("struct xe_chan[]", max_ports)
        self.chans_len = max_ports
        self.state = bytearray(max_ports)
        self.limit = limit
        self._cdom = cdom
        lib.xe_domain_set_chans(cdom, self.chans, max_ports)
        self.valid = EVTCHNS_PER_BUCKET  # the first bucket exists from creation
        lib.xe_domain_set_valid(cdom, self.valid)
        self.active = 0
        self.fifo = False  # FIFO ABI: ports whose event word is still LINKED are busy
        self._old_chans: list[Any] = []  # arrays a concurrent C reader may still be using
        self._write(0, RESERVED)  # port 0 is never handed out

    def grow(self, max_ports: int) -> None:
        """Make room for ``max_ports`` records (the FIFO ABI's 131072), keeping them all.

        The old array stays alive: a sender in another thread may still be reading it.
        """
        if max_ports <= self.chans_len:
            return
        chans = ffi.new("struct xe_chan[]", max_ports)
        ffi.memmove(chans, self.chans, ffi.sizeof("struct xe_chan") * self.chans_len)
        self._old_chans.append(self.chans)
        self.chans = chans
        self.state.extend(bytes(max_ports - self.chans_len))
        self.chans_len = max_ports
        lib.xe_domain_set_chans(self._cdom, chans, max_ports)  # array, then size: release

    # ---- Xen's port_is_valid and get_free_port ---------------------------------

    def is_valid(self, port: int) -> bool:
        return 0 <= port < self.valid

    def alloc(self) -> int | None:
        """get_free_port(): the lowest free port, or None (Xen's -ENOSPC).

        Like Xen, a port past the valid range gets its bucket at once, so the range
        stays grown even if the command then fails and the port stays free.
        """
        port = self.state.find(FREE, 0, self.valid)
        if self.fifo:
            while port >= 0 and lib.xe_fifo_is_busy(self._cdom, port):
                port = self.state.find(FREE, port + 1, self.valid)
        if port < 0:
            port = self.valid  # the next bucket, all free
        if port >= self.limit:
            return None
        self._cover(port)
        return port

    def _cover(self, port: int) -> None:
        """Grow valid_evtchns bucket by bucket until ``port`` is covered."""
        if port >= self.valid:
            self.valid = (port // EVTCHNS_PER_BUCKET + 1) * EVTCHNS_PER_BUCKET
            lib.xe_domain_set_valid(self._cdom, self.valid)

    # ---- state changes ---------------------------------------------------------

    def _write(self, port: int, state: int, *, notify: int | None = None,
               remote_dom: int = 0, remote_port: int = 0, info: int = 0) -> None:
        c = self.chans[port]
        cdom = self._cdom
        if state != FREE:
            # The guest's per-vCPU map gains the port before it can be usable there, and
            # is brought back in line once the record is written (xe_2l_route_*).
            lib.xe_2l_route_add(cdom, port, c.notify_vcpu if notify is None else notify)
        if state == FREE:
            c.state = FREE
            c.user = ffi.NULL
            c.notify_vcpu = 0
            c.xen_consumer = 0
            c.remote_dom = 0
            c.remote_port = 0
            c.info = 0
        else:
            c.remote_dom = remote_dom
            c.remote_port = remote_port
            c.info = info
            if notify is not None:
                c.notify_vcpu = notify
            c.state = state
        self.state[port] = state
        lib.xe_2l_route_sync(cdom, port)

    def bind(self, port: int, state: int, *, notify: int | None = None,
             remote_dom: int = 0, remote_port: int = 0, info: int = 0, xen: bool = False) -> None:
        """Take a free port (from ``find_free``) into ``state``.

        ``xen``: a Xen-attached channel (``consumer_is_xen``): marked before its state is
        written, so a concurrent C reader never sees it usable; its FIFO priority is kept
        (Xen's allocation of one does not reset it).
        """
        self._cover(port)
        if self.state[port] == FREE:
            self.active += 1
        if xen:
            self.chans[port].xen_consumer = 1
        else:
            self.chans[port].priority = EVTCHN_FIFO_PRIORITY_DEFAULT  # every bind, as Xen's port init
        self._write(port, state, notify=notify, remote_dom=remote_dom,
                    remote_port=remote_port, info=info)

    def rebind(self, port: int, state: int, *, remote_dom: int = 0, remote_port: int = 0) -> None:
        """Change a bound port's state in place, keeping its notify vCPU and priority."""
        self._write(port, state, remote_dom=remote_dom, remote_port=remote_port)

    def free(self, port: int) -> None:
        if self.state[port] != FREE:
            self.active -= 1
        self._write(port, FREE)

    def set_notify(self, port: int, vcpu: int) -> None:
        lib.xe_2l_route_add(self._cdom, port, vcpu)
        self.chans[port].notify_vcpu = vcpu
        lib.xe_2l_route_sync(self._cdom, port)

    def notify(self, port: int) -> int:
        return int(self.chans[port].notify_vcpu)

    def remote(self, port: int) -> tuple[int, int]:
        c = self.chans[port]
        return int(c.remote_dom), int(c.remote_port)

    def info(self, port: int) -> int:
        return int(self.chans[port].info)

    def usable(self, port: int) -> bool:
        """Xen's evtchn_usable: guest-owned and beyond RESERVED."""
        return self.state[port] > RESERVED and not self.chans[port].xen_consumer
