"""``XenEvtchn``: libxenevtchn over ``/dev/xen/evtchn``, for one domain (spec §3.1-3.2).

A handle binds ports for user space. Such a port is *taken* the moment it is raised
(pending 0 -> 1 while unmasked), as the Linux driver's lateeoi ack takes it: its mask
bit is set, its pending bit cleared, it is queued here and :meth:`XenEvtchn.fileno`
becomes readable. No selector bit or upcall is raised for it, so it never appears in
``d.guest.do_upcall``. Raised while masked, it stays pending and is taken at
:meth:`XenEvtchn.unmask`. The taking itself happens in the model's delivery path
(:func:`.event_2l.take_for_handle`, :func:`.event_fifo.take_for_handle`), which looks
the port up in ``d.handle_ports``.

The file descriptor is a real eventfd in semaphore mode whose counter is the number of
queued ports: 1 is written per queued port and 1 read per port :meth:`pending` returns,
so it is readable exactly while ports are queued (``select``, ``asyncio``).
"""

from __future__ import annotations

import errno
import os
from collections import deque
from types import TracebackType
from typing import Callable

from xenevtchn.constants import DOMID_SELF
from xenevtchn.errors import EvtchnError

from . import commands, event_fifo
from .domain import Domain
from .event_2l import take_for_handle
from .event_fifo import MASKED, PENDING
from .validate import u16, u32


class XenEvtchn:
    """A libxenevtchn handle (``xenevtchn_open``) acting for ``domain``.

    ``bind_*`` return the new port, bound to this handle and armed (unmasked; a port
    already pending, as after ``bind_interdomain``, is taken at once). ``pending()``
    returns the oldest queued port or ``None``; ``unmask(port)`` re-arms a port
    (taking it again at once if it was raised meanwhile). ``notify``/``unbind`` of a
    port not bound here raise ``EvtchnError(ENOTCONN)``; ``unmask`` of one is ignored.
    ``close()`` unbinds every port bound here and closes the fd; every other call on a
    closed handle raises ``ValueError``.
    """

    def __init__(self, domain: Domain) -> None:
        if not isinstance(domain, Domain):
            raise TypeError(f"domain must be a reference Domain, not {type(domain).__name__}")
        if domain.destroyed:
            raise EvtchnError(errno.ESRCH, "XenEvtchn")
        self._domain = domain
        self._queue: deque[int] = deque()
        self._fd = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    # -- state ------------------------------------------------------------------------------
    @property
    def domain(self) -> Domain:
        """The domain this handle acts for."""
        return self._domain

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._fd < 0

    def ports(self) -> list[int]:
        """The ports currently bound through this handle, ascending."""
        return sorted(p for p, h in self._domain.handle_ports.items() if h is self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd} ports={self.ports()}"
        return f"<XenEvtchn d{self._domain.domid} {state}>"

    def _open(self) -> Domain:
        if self._fd < 0:
            raise ValueError("operation on a closed XenEvtchn handle")
        return self._domain

    def _live(self, what: str) -> Domain:
        """The domain, once the arguments were checked: ``ESRCH`` if it was destroyed."""
        d = self._domain
        if d.destroyed:
            raise EvtchnError(errno.ESRCH, what)
        return d

    def _owned(self, what: str, port: object) -> tuple[Domain, int]:
        self._open()
        port = u32(port, "port")
        d = self._live(what)
        if d.handle_ports.get(port) is not self:
            raise EvtchnError(errno.ENOTCONN, what)
        return d, port

    # -- delivery (called by the model's event path) ------------------------------------------
    def deliver(self, port: int) -> None:
        """Queue ``port`` (already masked and cleared) and make the fd readable."""
        self._queue.append(port)
        os.eventfd_write(self._fd, 1)

    def _arm(self, d: Domain, port: int) -> None:
        """The driver's unmask (lateeoi): clear the mask; if pending, take the port.

        FIFO: the same on the port's event word (nothing if it has none yet; a raise
        while it has none is latched and taken when its page arrives).
        """
        fifo = d.fifo
        if fifo is not None:
            if fifo.has_word(port):
                word = fifo.word(port) & ~MASKED
                fifo.set_word(port, word)
                if word & PENDING:
                    event_fifo.take_for_handle(d, port, self)
            return
        si = d.shared_info
        si.clear_mask(port)
        if si.test_pending(port):
            take_for_handle(d, port, self)

    def _bind(self, d: Domain, command: Callable[..., int], *args: object) -> int:
        """Run a bind command as ``d``, then bind the new port here and arm it.

        All of it happens before the hooks of the call run (``Domain._call``).
        """
        port = command(d, *args)
        d.handle_ports[port] = self
        self._arm(d, port)
        return port

    # -- libxenevtchn ---------------------------------------------------------------------------
    def fileno(self) -> int:
        """The eventfd: readable exactly while ports are queued (``xenevtchn_fd``)."""
        self._open()
        return self._fd

    def notify(self, port: int) -> None:
        """``xenevtchn_notify``: EVTCHNOP_send on a port bound here."""
        d, port = self._owned("notify", port)
        d._call("notify", commands.send, port)

    def bind_unbound_port(self, remote_domid: int) -> int:
        """``xenevtchn_bind_unbound_port``: a new port that ``remote_domid`` may bind."""
        self._open()
        remote = u16(remote_domid, "remote_domid")
        d = self._live("bind_unbound_port")
        return d._call("bind_unbound_port", self._bind, commands.alloc_unbound, DOMID_SELF, remote)

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        """``xenevtchn_bind_interdomain``: connect to ``remote_domid``'s unbound port.

        Xen leaves the new port pending, so it is queued here at once.
        """
        self._open()
        args = (u16(remote_domid, "remote_domid"), u32(remote_port, "remote_port"), self)
        d = self._live("bind_interdomain")
        return d._call("bind_interdomain", self._bind, commands.bind_interdomain, *args)

    def bind_virq(self, virq: int) -> int:
        """``xenevtchn_bind_virq``: bind ``virq`` on vCPU 0."""
        self._open()
        virq = u32(virq, "virq")
        d = self._live("bind_virq")
        return d._call("bind_virq", self._bind, commands.bind_virq, virq, 0)

    def unbind(self, port: int) -> None:
        """``xenevtchn_unbind``: EVTCHNOP_close on a port bound here.

        Entries already queued for it stay queued (the driver's ring is not purged).
        """
        d, port = self._owned("unbind", port)
        d._call("unbind", commands.close, port)  # free_port drops it from handle_ports

    def pending(self) -> int | None:
        """``xenevtchn_pending``: the oldest queued port, or ``None`` (never blocks).

        The port returned is masked and its pending bit was cleared when it was taken;
        it is not delivered again until :meth:`unmask`.
        """
        self._open()
        if not self._queue:
            return None
        os.eventfd_read(self._fd)
        return self._queue.popleft()

    def unmask(self, port: int) -> None:
        """``xenevtchn_unmask``: re-arm a port bound here; take it now if it is pending.

        A port not bound through this handle is ignored.
        """
        self._open()
        port = u32(port, "port")
        d = self._live("unmask")
        if d.handle_ports.get(port) is self:
            self._arm(d, port)

    def close(self) -> None:
        """``xenevtchn_close``: unbind (EVTCHNOP_close) every port bound here, close the fd.

        Closing a closed handle does nothing.
        """
        if self._fd < 0:
            return
        d = self._domain
        try:
            if not d.destroyed:
                for port in self.ports():
                    d._call("close", commands.close, port)
        finally:
            self._queue.clear()
            fd, self._fd = self._fd, -1
            os.close(fd)

    # -- context manager / cleanup ------------------------------------------------------------
    def __enter__(self) -> XenEvtchn:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Only the fd: ports still bound keep the handle alive through d.handle_ports,
        # so an unreachable handle owns no port (or its domain is gone too).
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            try:
                os.close(fd)
            except OSError:
                pass
