"""XenEvtchn.close() against a sender in another thread (issue 14 item 9).

A sender that queues a port for a handle writes the handle's eventfd while it holds the
queue's lock (csrc/guest_2l.c, xe_user_take). close() must not close the descriptor while
such a writer may still use it, or the write could land in a descriptor number the
process has meanwhile reused for something else.
"""

from __future__ import annotations

import os
import threading

import xenevtchn as xe
from xenevtchn import handle as handle_mod


class _GrabLockAfterLastPop:
    """Stands in for the C library in xenevtchn.handle: when close() has emptied the queue,
    a sender takes the queue's lock, as xe_user_take does just before writing the fd."""

    def __init__(self, lib, u):
        self._lib, self._u = lib, u
        self.grabbed = threading.Event()

    def __getattr__(self, name):
        fn = getattr(self._lib, name)
        if name != "xe_user_pop":
            return fn

        def pop(u):
            r = fn(u)
            if r < 0 and not self.grabbed.is_set():
                self._u.lock = 1          # the sender is inside the lock now
                self.grabbed.set()
            return r

        return pop


def test_close_does_not_close_the_eventfd_under_a_sender(monkeypatch):
    hv = xe.Hypervisor()
    d = hv.create_domain()
    h = xe.XenEvtchn(d)
    fd = h.fileno()
    proxy = _GrabLockAfterLastPop(handle_mod.lib, h._u)
    monkeypatch.setattr(handle_mod, "lib", proxy)
    closer = threading.Thread(target=h.close)
    closer.start()
    assert proxy.grabbed.wait(60)
    closer.join(0.5)   # a close that ignores the lock is done by now
    # The sender, still holding the lock, writes the eventfd it read: it must be ours.
    os.fstat(fd)
    os.write(fd, (1).to_bytes(8, "little"))
    h._u.lock = 0      # the sender leaves the lock
    closer.join(60)
    assert not closer.is_alive()
    try:
        os.fstat(fd)
    except OSError:
        pass
    else:
        raise AssertionError("close() left the eventfd open")
    assert h._u.fd == -1

