"""``XenEvtchn``: libxenevtchn's API for Python, over a simulated ``/dev/xen/evtchn``.

A port bound through a handle is taken the moment it is raised, as the kernel driver
takes it: masked, its pending bit cleared, queued, and the handle's ``fileno()`` (an
eventfd) made readable. ``pending()`` hands ports out in delivery order; ``unmask()``
re-arms a port and takes it again at once if it was raised meanwhile.
"""

from __future__ import annotations

import errno
import os
import weakref
from typing import TYPE_CHECKING

from . import commands as cmds
from ._native import ffi, lib
from .constants import DOMID_SELF, EVTCHN_FIFO_NR_CHANNELS
from .domain import _uint
from .errors import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain


class XenEvtchn:
    """One open ``/dev/xen/evtchn`` of ``domain`` (``xenevtchn_open``)."""

    def __init__(self, domain: Domain) -> None:
        if domain.dead:
            raise EvtchnError(errno.ESRCH, f"domain {domain.domid} was destroyed")
        self._d = domain
        self._fd: int | None = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # A handle dropped without close() still gives its descriptor back. The finalizer
        # takes no lock: it runs only once the handle is unreachable, when no C path can
        # reach its queue (the domain holds every live handle). Not at interpreter exit,
        # where the handle may still be live and senders running: the OS closes it then.
        self._closer = weakref.finalize(self, os.close, self._fd)
        self._closer.atexit = False
        cap = EVTCHN_FIFO_NR_CHANNELS  # one slot per port the domain can ever have
        self._ring = ffi.new("uint32_t[]", cap)
        self._u = ffi.new("struct xe_user *", {"ring": self._ring, "cap": cap, "fd": self._fd})
        self._ports: set[int] = set()
        domain._handles.append(self)  # C may point at self._u while the domain lives

    # ---- plumbing --------------------------------------------------------------------

    def _open(self) -> None:
        if self._fd is None:
            raise ValueError("operation on a closed XenEvtchn handle")

    def _mine(self, port: int) -> int:
        self._open()
        if not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if port not in self._ports:
            raise EvtchnError(errno.ENOTCONN, f"port {port} is not bound through this handle")
        return port

    def _adopt(self, port: int) -> int:
        """Bind a fresh port to the handle; one already pending is taken at once."""
        d = self._d
        with d.hv._lock:
            d.ports.chans[port].user = self._u
            self._ports.add(port)
            lib.xe_user_unmask(d._c, port)
        return port

    # ---- libxenevtchn ---------------------------------------------------------------

    def fileno(self) -> int:
        """A descriptor that is readable exactly while ports are queued."""
        self._open()
        return self._fd  # type: ignore[return-value]

    fd = fileno

    def bind_unbound_port(self, remote_domid: int) -> int:
        self._open()
        return self._adopt(self._d.alloc_unbound(remote_domid, DOMID_SELF))

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        """Connect to a peer's unbound port; expect an immediate first event."""
        self._open()
        d = self._d

        def claim(port: int) -> None:  # the driver's view: masked, ours, then unmasked
            lib.xe_evtchn_mask(d._c, port)
            d.ports.chans[port].user = self._u

        port = d._call(cmds.bind_interdomain, _uint(remote_domid, "remote_domid", 0xFFFF),
                       _uint(remote_port, "remote_port", 0xFFFFFFFF), claim)
        return self._adopt(port)

    def bind_virq(self, virq: int) -> int:
        self._open()
        return self._adopt(self._d.bind_virq(virq, 0))

    def notify(self, port: int) -> None:
        self._d.send(self._mine(port))

    def unbind(self, port: int) -> None:
        port = self._mine(port)
        self._ports.discard(port)
        self._d.close(port)

    def pending(self) -> int | None:
        """The next delivered port (already masked and cleared), or None."""
        self._open()
        port = lib.xe_user_pop(self._u)
        return None if port < 0 else int(port)

    def unmask(self, port: int) -> None:
        """Re-arm ``port``; an event raised while it was masked is delivered again."""
        self._open()
        if isinstance(port, int) and port in self._ports:
            with self._d.hv._lock:
                if self._d._hvm is not None:
                    self._d.vm_exit()   # the driver's unmask hypercall is a VM exit
                lib.xe_user_unmask(self._d._c, port)

    def close(self) -> None:
        """Unbind every port of the handle and close its descriptor (idempotent)."""
        if self._fd is None:
            return
        for port in sorted(self._ports):
            try:
                self._d.close(port)
            except EvtchnError:
                pass  # closed already, by the domain or a reset
        self._ports.clear()
        while lib.xe_user_pop(self._u) >= 0:
            pass  # the ring goes with the file
        # Detached under the queue's lock, which every C write to the eventfd holds: a
        # sender in another thread is either done with the descriptor or sees -1, so
        # closing it next cannot let a send write into a reused descriptor number.
        lib.xe_user_detach_fd(self._u)
        self._closer()   # closes the descriptor, once
        self._fd = None

    def __enter__(self) -> XenEvtchn:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"fd={self._fd} ports={sorted(self._ports)}"
        return f"<XenEvtchn d{self._d.domid} {state}>"
