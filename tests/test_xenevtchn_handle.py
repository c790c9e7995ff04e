"""libxenevtchn for Python: ``xe.XenEvtchn(domain)`` (API.md "The guest side";
semantics.md "Guest side" last item; spec guest-side §3.1 kernel driver, §3.2 library).

A port bound through a handle is taken the moment it is raised (pending 0 -> 1 while
unmasked): mask bit set, pending bit cleared, queued, fd readable; no selector bit, no
upcall, so it never shows up in ``do_upcall``. Raised while masked it stays pending and is
taken at ``unmask()``. ``pending()`` returns the oldest queued port or None.
"""

from __future__ import annotations

import asyncio
import errno
import select
import selectors
import threading
import time

import pytest

from hvhelpers import raises_errno

VIRQ_TIMER, VIRQ_DEBUG = 0, 1
WAIT = 5.0  # upper bound for anything that waits; never a threshold


def taken(d, port):
    """The state of a port the handle has taken: masked, not pending."""
    s = d.shared_info
    return s.is_masked(port) and not s.is_pending(port)


def readable(h):
    r, _, _ = select.select([h.fileno()], [], [], 0)
    return bool(r)


def drain(h):
    out = []
    while True:
        p = h.pending()
        if p is None:
            return out
        out.append(p)


# ------------------------------------------------------------------------- binding


def test_bind_unbound_port_peer_connects_and_notifies(xe, pair):
    dom0, domu = pair
    h = xe.XenEvtchn(domu)
    p = h.bind_unbound_port(dom0.domid)
    assert isinstance(p, int) and p > 0
    st = domu.status(p)
    assert st.status == xe.EVTCHNSTAT_unbound and st.dom == dom0.domid
    assert h.pending() is None and not readable(h)

    q = dom0.bind_interdomain(domu.domid, p)
    st = domu.status(p)
    assert (st.status, st.dom, st.port) == (xe.EVTCHNSTAT_interdomain, dom0.domid, q)
    # Xen set the NEW port (q, in dom0) pending, not p.
    assert h.pending() is None
    assert dom0.guest.do_upcall(0) == [q]

    dom0.send(q)
    assert taken(domu, p)
    assert domu.vcpus[0].upcall_pending == 0 and domu.vcpus[0].pending_sel == 0
    assert readable(h)
    got = h.pending()
    assert got == p and type(got) is int
    assert h.pending() is None and not readable(h)

    # notify reaches the peer.
    h.notify(p)
    assert dom0.shared_info.is_pending(q)
    assert dom0.guest.do_upcall(0) == [q]
    h.close()


def test_bind_interdomain_gets_an_immediate_first_event(xe, pair):
    dom0, domu = pair
    r = dom0.alloc_unbound(domu.domid)
    with xe.XenEvtchn(domu) as h:
        p = h.bind_interdomain(dom0.domid, r)
        st = domu.status(p)
        assert (st.status, st.dom, st.port) == (xe.EVTCHNSTAT_interdomain, dom0.domid, r)
        # Xen leaves the new local port pending; binding to the handle takes it at once.
        assert readable(h)
        assert h.pending() == p
        assert h.pending() is None
        assert taken(domu, p)
        assert domu.guest.do_upcall(0) == []
        h.notify(p)
        assert dom0.guest.do_upcall(0) == [r]
        dom0.send(r)
        assert h.pending() is None  # still masked: waits for unmask
        assert domu.shared_info.is_pending(p)
        h.unmask(p)
        assert h.pending() == p


def test_two_handles_talk_to_each_other(xe, pair):
    dom0, domu = pair
    with xe.XenEvtchn(dom0) as h0, xe.XenEvtchn(domu) as h1:
        p = h1.bind_unbound_port(dom0.domid)
        q = h0.bind_interdomain(domu.domid, p)
        assert h0.pending() == q  # immediate first event
        h0.unmask(q)
        h1.notify(p)
        assert h0.pending() == q
        h0.notify(q)
        assert h1.pending() == p
        assert h0.pending() is None and h1.pending() is None


def test_bind_virq_binds_on_vcpu0(xe, hv, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        p = h.bind_virq(VIRQ_DEBUG)
        st = domu.status(p)
        assert (st.status, st.vcpu, st.virq) == (xe.EVTCHNSTAT_virq, 0, VIRQ_DEBUG)
        hv.send_virq(domu.domid, VIRQ_DEBUG, 1)  # not bound on vCPU 1: dropped
        assert h.pending() is None
        hv.send_virq(domu.domid, VIRQ_DEBUG, 0)
        assert h.pending() == p
        assert taken(domu, p)
        assert domu.guest.do_upcall(0) == [] and domu.guest.do_upcall(1) == []


def test_bound_timer_virq_is_not_taken_by_timer_first(xe, hv, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        p = h.bind_virq(VIRQ_TIMER)
        hv.send_virq(domu.domid, VIRQ_TIMER, 0)
        hv.send_virq(domu.domid, VIRQ_TIMER, 0)  # while masked: stays pending
        assert domu.guest.do_upcall(0) == []
        assert domu.shared_info.is_pending(p)
        assert h.pending() == p
        assert h.pending() is None


# ----------------------------------------------------------- pending() and unmask()


def handle_ports(xe, hv, d, n):
    h = xe.XenEvtchn(d)
    ports = [h.bind_unbound_port(0) for _ in range(n)]
    assert len(set(ports)) == n
    return h, ports


def test_pending_in_delivery_order(xe, hv, pair):
    dom0, domu = pair
    h, (p1, p2, p3) = handle_ports(xe, hv, domu, 3)
    for p in (p3, p1, p2):
        hv.inject(domu.domid, p)
        assert taken(domu, p)
    assert drain(h) == [p3, p1, p2]
    # Re-raised while masked (not yet unmasked): nothing new.
    hv.inject(domu.domid, p1)
    assert h.pending() is None
    # Unmask order decides the new delivery order: p2 (not pending) then p1 (pending).
    h.unmask(p2)
    h.unmask(p1)
    hv.inject(domu.domid, p2)
    assert drain(h) == [p1, p2]
    h.close()


def test_each_port_once_per_unmask_and_refire_after_queued_ports(xe, hv, pair):
    dom0, domu = pair
    h, (a, b) = handle_ports(xe, hv, domu, 2)
    hv.inject(domu.domid, a)
    hv.inject(domu.domid, b)
    assert h.pending() == a
    hv.inject(domu.domid, a)  # masked: coalesces into the pending bit
    h.unmask(a)  # re-fires at once: a queued after b
    assert drain(h) == [b, a]
    h.close()


def test_notifications_while_masked_coalesce(xe, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        p = h.bind_unbound_port(dom0.domid)
        q = dom0.bind_interdomain(domu.domid, p)
        dom0.send(q)
        assert h.pending() == p
        for _ in range(5):
            dom0.send(q)
        assert h.pending() is None and not readable(h)
        assert domu.shared_info.is_pending(p) and domu.shared_info.is_masked(p)
        h.unmask(p)
        assert readable(h)
        assert h.pending() == p
        assert h.pending() is None
        h.unmask(p)  # nothing pending: just unmasked
        assert h.pending() is None
        assert not domu.shared_info.is_masked(p)
        dom0.send(q)
        assert h.pending() == p


def test_unmask_without_pending_then_raise(xe, hv, pair):
    dom0, domu = pair
    h, (p,) = handle_ports(xe, hv, domu, 1)
    hv.inject(domu.domid, p)
    assert h.pending() == p
    h.unmask(p)
    assert not domu.shared_info.is_masked(p) and h.pending() is None
    hv.inject(domu.domid, p)
    assert h.pending() == p
    h.close()


def test_pending_never_blocks(xe, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        assert h.pending() is None
        h.bind_unbound_port(dom0.domid)
        assert h.pending() is None


def test_unmask_of_foreign_port_is_ignored(xe, hv, pair):
    dom0, domu = pair
    f = domu.bind_ipi(0)
    domu.guest.mask(f)
    domu.send(f)
    with xe.XenEvtchn(domu) as h, xe.XenEvtchn(domu) as other:
        o = other.bind_unbound_port(dom0.domid)
        hv.inject(domu.domid, o)
        before = bytes(domu.shared_info.buffer)
        h.unmask(f)
        h.unmask(o)
        h.unmask(200)  # no channel at all
        assert bytes(domu.shared_info.buffer) == before
        assert h.pending() is None
        assert other.pending() == o


def test_handles_are_separate(xe, hv, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h1, xe.XenEvtchn(domu) as h2:
        a = h1.bind_unbound_port(0)
        b = h2.bind_unbound_port(0)
        hv.inject(domu.domid, a)
        assert h2.pending() is None and not readable(h2)
        hv.inject(domu.domid, b)
        assert h1.pending() == a and h2.pending() == b


# --------------------------------------------------- never in the guest's do_upcall


def test_handle_ports_never_appear_in_do_upcall(xe, hv, pair):
    dom0, domu = pair
    g1 = domu.bind_ipi(0)
    with xe.XenEvtchn(domu) as h:
        p = h.bind_unbound_port(dom0.domid)
        g2 = domu.bind_ipi(0)
        assert p // 64 == g1 // 64 == g2 // 64  # all in word 0
        hv.inject(domu.domid, p)  # taken at once: no selector bit, no upcall
        assert (domu.vcpus[0].upcall_pending, domu.vcpus[0].pending_sel) == (0, 0)
        hv.inject(domu.domid, p)  # masked now: stays pending
        domu.send(g2)
        domu.send(g1)
        assert domu.guest.do_upcall(0) == [g1, g2]
        assert domu.shared_info.is_pending(p)
        assert domu.guest.do_upcall(0) == []
        assert h.pending() == p
        h.unmask(p)  # re-fires into the handle, not into the guest
        assert domu.guest.do_upcall(0) == []
        assert (domu.vcpus[0].upcall_pending, domu.vcpus[0].pending_sel) == (0, 0)
        assert h.pending() == p


def test_handle_port_moved_to_vcpu1_still_taken(xe, hv, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        p = h.bind_unbound_port(dom0.domid)
        domu.bind_vcpu(p, 1)
        hv.inject(domu.domid, p)
        assert h.pending() == p
        assert domu.vcpus[1].upcall_pending == 0 and domu.guest.do_upcall(1) == []


# ------------------------------------------------------- notify / unbind / close


def test_notify_and_unbind_of_foreign_ports_raise_enotconn(xe, pair):
    dom0, domu = pair
    f = domu.bind_ipi(0)
    with xe.XenEvtchn(domu) as h, xe.XenEvtchn(domu) as other:
        o = other.bind_unbound_port(dom0.domid)
        mine = h.bind_unbound_port(dom0.domid)
        for port in (f, o, 100, 0):
            with raises_errno(xe, errno.ENOTCONN):
                h.notify(port)
            with raises_errno(xe, errno.ENOTCONN):
                h.unbind(port)
        # Nothing was closed or sent.
        assert domu.status(f).status == xe.EVTCHNSTAT_ipi
        assert domu.status(o).status == xe.EVTCHNSTAT_unbound
        assert not domu.shared_info.is_pending(f)
        h.unbind(mine)
        assert domu.status(mine).status == xe.EVTCHNSTAT_closed
        with raises_errno(xe, errno.ENOTCONN):
            h.notify(mine)
        with raises_errno(xe, errno.ENOTCONN):
            h.unbind(mine)


def test_unbind_closes_port_and_peer_becomes_unbound(xe, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        p = h.bind_unbound_port(dom0.domid)
        q = dom0.bind_interdomain(domu.domid, p)
        h.unbind(p)
        assert domu.status(p).status == xe.EVTCHNSTAT_closed
        st = dom0.status(q)
        assert (st.status, st.dom) == (xe.EVTCHNSTAT_unbound, domu.domid)
        assert h.pending() is None


def test_close_unbinds_every_port(xe, hv, pair):
    dom0, domu = pair
    r = dom0.alloc_unbound(domu.domid)
    h = xe.XenEvtchn(domu)
    p1 = h.bind_unbound_port(dom0.domid)
    q1 = dom0.bind_interdomain(domu.domid, p1)
    p2 = h.bind_interdomain(dom0.domid, r)
    p3 = h.bind_virq(VIRQ_DEBUG)
    keep = domu.bind_ipi(0)
    h.close()
    for p in (p1, p2, p3):
        assert domu.status(p).status == xe.EVTCHNSTAT_closed
    for q in (q1, r):
        st = dom0.status(q)
        assert (st.status, st.dom) == (xe.EVTCHNSTAT_unbound, domu.domid)
    assert domu.status(keep).status == xe.EVTCHNSTAT_ipi
    # The VIRQ is free again: the guest may bind it itself.
    v = domu.bind_virq(VIRQ_DEBUG, 0)
    assert domu.status(v).status == xe.EVTCHNSTAT_virq and domu.status(v).virq == VIRQ_DEBUG


def test_calls_after_close_raise_valueerror(xe, pair):
    dom0, domu = pair
    h = xe.XenEvtchn(domu)
    p = h.bind_unbound_port(dom0.domid)
    r = dom0.alloc_unbound(domu.domid)
    h.close()
    calls = [
        lambda: h.notify(p),
        lambda: h.bind_unbound_port(dom0.domid),
        lambda: h.bind_interdomain(dom0.domid, r),
        lambda: h.bind_virq(VIRQ_DEBUG),
        lambda: h.unbind(p),
        lambda: h.pending(),
        lambda: h.unmask(p),
        lambda: h.fileno(),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    # Nothing was bound by the refused calls.
    assert dom0.status(r).status == xe.EVTCHNSTAT_unbound


def test_context_manager_closes(xe, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        p = h.bind_unbound_port(dom0.domid)
        q = dom0.bind_interdomain(domu.domid, p)
    assert domu.status(p).status == xe.EVTCHNSTAT_closed
    assert dom0.status(q).status == xe.EVTCHNSTAT_unbound
    with pytest.raises(ValueError):
        h.pending()


def test_context_manager_closes_on_exception(xe, pair):
    dom0, domu = pair
    with pytest.raises(KeyError):
        with xe.XenEvtchn(domu) as h:
            p = h.bind_unbound_port(dom0.domid)
            raise KeyError("x")
    assert domu.status(p).status == xe.EVTCHNSTAT_closed


# ---------------------------------------------------------------- fileno() and I/O


def test_fileno_readable_exactly_while_ports_are_queued(xe, hv, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        fd = h.fileno()
        assert isinstance(fd, int) and fd >= 0
        a, b = h.bind_unbound_port(0), h.bind_unbound_port(0)
        # Not readable: select times out (the timeout is only an upper bound to wait).
        assert select.select([fd], [], [], 0.05) == ([], [], [])
        hv.inject(domu.domid, a)
        hv.inject(domu.domid, b)
        assert select.select([fd], [], [], WAIT)[0] == [fd]
        assert h.pending() == a
        assert select.select([fd], [], [], 0)[0] == [fd]  # b still queued
        assert h.pending() == b
        assert select.select([fd], [], [], 0) == ([], [], [])
        # Raised while masked: not queued, not readable; unmask re-fires.
        hv.inject(domu.domid, a)
        assert not readable(h)
        h.unmask(a)
        assert readable(h)
        assert h.pending() == a
        assert not readable(h)


def test_select_wakes_on_event_from_another_thread(xe, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h:
        p = h.bind_unbound_port(dom0.domid)
        q = dom0.bind_interdomain(domu.domid, p)
        go = threading.Event()

        def sender():
            go.wait(WAIT)
            dom0.send(q)

        t = threading.Thread(target=sender)
        t.start()
        try:
            go.set()
            r, _, _ = select.select([h.fileno()], [], [], WAIT)
        finally:
            t.join(WAIT)
        assert r == [h.fileno()]
        assert h.pending() == p


def test_selectors(xe, hv, pair):
    dom0, domu = pair
    with xe.XenEvtchn(domu) as h, selectors.DefaultSelector() as sel:
        p = h.bind_unbound_port(0)
        sel.register(h.fileno(), selectors.EVENT_READ, data="evtchn")
        assert sel.select(timeout=0) == []
        hv.inject(domu.domid, p)
        events = sel.select(timeout=WAIT)
        assert [(k.data, ev) for k, ev in events] == [("evtchn", selectors.EVENT_READ)]
        assert h.pending() == p
        assert sel.select(timeout=0) == []
        sel.unregister(h.fileno())


def test_asyncio_reader(xe, pair):
    dom0, domu = pair
    h = xe.XenEvtchn(domu)
    p = h.bind_unbound_port(dom0.domid)
    q = dom0.bind_interdomain(domu.domid, p)
    got = []
    spurious = []

    async def main():
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(3)]

        def on_readable():
            port = h.pending()
            if port is None:
                spurious.append(1)
                return
            got.append(port)
            h.unmask(port)
            waiters[len(got) - 1].set_result(port)

        loop.add_reader(h.fileno(), on_readable)
        try:
            # 1: from a loop callback
            loop.call_later(0.01, dom0.send, q)
            assert await asyncio.wait_for(waiters[0], WAIT) == p
            # 2: from another thread while the loop waits in its selector
            t = threading.Thread(target=dom0.send, args=(q,))
            t.start()
            assert await asyncio.wait_for(waiters[1], WAIT) == p
            t.join(WAIT)
            # 3: from a thread that waits first, so the loop is surely idle
            t = threading.Thread(target=lambda: (time.sleep(0.02), dom0.send(q)))
            t.start()
            assert await asyncio.wait_for(waiters[2], WAIT) == p
            t.join(WAIT)
        finally:
            loop.remove_reader(h.fileno())

    asyncio.run(main())
    h.close()
    assert got == [p, p, p]
    assert spurious == []
