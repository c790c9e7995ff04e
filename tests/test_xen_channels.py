"""Xen-attached channels (spec xen-hvm-and-beyond §4, issue 19 item 4), on both the native
implementation and the reference model: allocation, what the owning guest may and may not
do (table 4.2, in Xen's check order), the peer side, Xen's notifications, free and
destruction. Native-only at the end: snapshots and threads.
"""

from __future__ import annotations

import errno
import struct
import threading

import pytest

from hvhelpers import raises_errno

DOMID_SELF = 0x7FF0
MASK_OFF = 2560  # x86_64 evtchn_mask in shared_info


def mask_bit(d, port):
    return d.shared_info.buffer[MASK_OFF + port // 8] >> (port % 8) & 1


def status(d, port, dom=DOMID_SELF):
    st = d.status(port, dom=dom)
    return (int(st.status), st.vcpu, st.dom, st.port)


@pytest.fixture
def log():
    return []


@pytest.fixture
def xen(hv, pair, log):
    """dom1 owns a Xen channel (notify vCPU 1) that dom0 may bind; its consumer logs."""
    dom0, domu = pair
    port = hv.alloc_xen_channel(domu.domid, 1, dom0.domid, notify=lambda v, p: log.append((v, p)))
    return port


def bound(hv, pair, xen):
    dom0, _ = pair
    return dom0.bind_interdomain(1, xen)


# ---------------------------------------------------------------------------- allocation

def test_alloc_is_unbound_naming_the_remote_at_the_notify_vcpu(hv, pair, xen):
    dom0, domu = pair
    assert xen == 1  # lowest free port
    assert status(domu, xen) == (1, 1, 0, None)
    assert status(dom0, xen, dom=1) == (1, 1, 0, None)  # seen by the privileged domain too
    assert hv.alloc_xen_channel(1, 0, 0) == 2


def test_remote_domid_is_taken_as_is(xe, hv, pair):
    dom0, domu = pair
    p = hv.alloc_xen_channel(1, 0, DOMID_SELF)  # not translated to the owner
    assert status(domu, p) == (1, 0, DOMID_SELF, None)
    for d in (domu, dom0):  # nobody's domid is DOMID_SELF: nobody can bind it
        with raises_errno(xe, errno.EINVAL):
            d.bind_interdomain(1, p)


def test_alloc_errors(xe, hv, pair):
    dom0, domu = pair
    with raises_errno(xe, errno.ESRCH):
        hv.alloc_xen_channel(7, 0, 0)
    with raises_errno(xe, errno.ESRCH):   # the domain before the vCPU
        hv.alloc_xen_channel(7, 99, 0)
    with raises_errno(xe, errno.ENOENT):  # [sim] no such vCPU; no port taken
        hv.alloc_xen_channel(1, 2, 0)
    assert domu.alloc_unbound(0) == 1
    small = hv.create_domain(max_evtchn_port=2)
    assert hv.alloc_xen_channel(small.domid, 0, 0) == 1
    assert hv.alloc_xen_channel(small.domid, 0, 0) == 2
    with raises_errno(xe, errno.ENOSPC):
        hv.alloc_xen_channel(small.domid, 0, 0)


@pytest.mark.parametrize("args, exc", [
    (("1", 0, 0), TypeError), ((1, 0.0, 0), TypeError), ((1, 0, None), TypeError),
    ((-1, 0, 0), ValueError), ((0x10000, 0, 0), ValueError), ((1, 2**32, 0), ValueError),
    ((1, 0, 0x10000), ValueError), ((1, -1, 0), ValueError),
])
def test_alloc_bad_arguments_change_nothing(hv, pair, args, exc):
    dom0, domu = pair
    with pytest.raises(exc):
        hv.alloc_xen_channel(*args)
    assert domu.alloc_unbound(0) == 1


def test_notify_must_be_callable(hv, pair):
    _, domu = pair
    with pytest.raises(TypeError):
        hv.alloc_xen_channel(1, 0, 0, notify=42)
    assert domu.alloc_unbound(0) == 1


# ---------------------------------------------------------------------------- the owner (table 4.2)

def test_owner_close_send_bind_vcpu_refused(xe, hv, pair, xen):
    _, domu = pair
    for fn in (lambda: domu.close(xen), lambda: domu.send(xen), lambda: domu.bind_vcpu(xen, 0)):
        with raises_errno(xe, errno.EINVAL):
            fn()
    with raises_errno(xe, errno.ENOENT):  # bind_vcpu: the vCPU is checked first
        domu.bind_vcpu(xen, 5)
    assert status(domu, xen) == (1, 1, 0, None)


def test_owner_raw_close_and_send_refused(hv, pair, xen):
    _, domu = pair
    assert domu.event_channel_op(3, bytearray(struct.pack("<I", xen))) == -errno.EINVAL   # close
    assert domu.event_channel_op(4, bytearray(struct.pack("<I", xen))) == -errno.EINVAL   # send
    assert domu.event_channel_op(8, bytearray(struct.pack("<II", xen, 0))) == -errno.EINVAL


def test_owner_unmask_is_a_silent_no_op(hv, pair, xen, hooks):
    _, domu = pair
    domu.shared_info.buffer[MASK_OFF + xen // 8] |= 1 << (xen % 8)   # the guest masks it
    assert domu.unmask(xen) is None
    assert mask_bit(domu, xen) == 1          # not even the mask bit is cleared
    assert domu.event_channel_op(9, bytearray(struct.pack("<I", xen))) == 0
    assert mask_bit(domu, xen) == 1
    assert hooks == []


def test_set_priority_enosys_on_2l_then_eacces_on_fifo(xe, hv, pair, xen):
    _, domu = pair
    with raises_errno(xe, errno.ENOSYS):
        domu.set_priority(xen, 3)
    domu.init_control(20, 0, 0)
    with raises_errno(xe, errno.EACCES):
        domu.set_priority(xen, 3)
    with raises_errno(xe, errno.EINVAL):   # port validity still comes first
        domu.set_priority(4096 * 40, 3)


def test_owner_poll_on_it_is_einval(xe, hv, pair, xen):
    _, domu = pair
    with raises_errno(xe, errno.EINVAL):
        domu.sched_poll([xen])
    domu.memory.page(30)[:4] = struct.pack("<I", xen)
    assert domu.sched_op(3, bytearray(struct.pack("<QI4xQ", 30 * 4096, 1, 0))) == -errno.EINVAL
    assert not domu.vcpus[0].polling


def test_inject_on_it_raises_nothing(hv, pair, xen, hooks):
    _, domu = pair
    hv.inject(1, xen)
    assert not domu.shared_info.is_pending(xen) and hooks == []
    assert domu.vcpus[1].upcall_pending == 0


def test_reset_skips_it_and_succeeds(hv, pair, xen):
    dom0, domu = pair
    q = bound(hv, pair, xen)
    a = domu.alloc_unbound(0)
    b = domu.bind_ipi(1)
    assert domu.reset() is None
    assert status(domu, xen) == (2, 1, 0, q)        # survives, still bound
    assert status(domu, a)[0] == 0 and status(domu, b)[0] == 0
    assert domu.reset() is None                      # only Xen's channels left: nothing to do


def test_reset_returns_a_fifo_domain_to_2l(hv, pair, xen):
    _, domu = pair
    domu.init_control(20, 0, 0)
    assert domu.abi == "fifo"
    domu.reset()
    assert domu.abi == "2l"
    assert status(domu, xen) == (1, 1, 0, None)


def test_reset_by_the_control_domain(hv, pair, xen):
    dom0, domu = pair
    domu.bind_ipi(0)
    hv.pause_domain(1)
    assert dom0.reset(dom=1) is None
    assert status(domu, xen) == (1, 1, 0, None)


# ---------------------------------------------------------------------------- the peer

def test_peer_binds_and_its_new_port_is_pending(hv, pair, xen, hooks, log):
    dom0, domu = pair
    q = dom0.bind_interdomain(1, xen)
    assert status(domu, xen) == (2, 1, 0, q)
    assert status(dom0, q) == (2, 0, 1, xen)
    assert dom0.shared_info.is_pending(q)
    assert hooks == [("kick", 0)] and log == []


def test_only_the_named_remote_binds(xe, hv, pair, xen):
    third = hv.create_domain()
    with raises_errno(xe, errno.EINVAL):
        third.bind_interdomain(1, xen)


def test_peer_send_calls_the_consumer_instead_of_raising(hv, pair, xen, hooks, log):
    dom0, domu = pair
    q = bound(hv, pair, xen)
    hooks.clear()
    dom0.send(q)
    assert log == [(1, xen)]                      # (owner's notify vCPU, Xen's port)
    assert not domu.shared_info.is_pending(xen)
    assert domu.vcpus[1].upcall_pending == 0 and hooks == []
    assert dom0.event_channel_op(4, bytearray(struct.pack("<I", q))) == 0
    assert dom0.event_channel_op_compat(bytearray(struct.pack("<iI", 4, q) + bytes(20))) == 0
    dom0.send_many([q, q])
    assert log == [(1, xen)] * 5


def test_send_many_mixes_consumers_and_kicks_in_order(hv, pair, log, hooks):
    dom0, domu = pair
    x1 = hv.alloc_xen_channel(1, 1, 0, notify=lambda v, p: log.append(("a", v, p)))
    x2 = hv.alloc_xen_channel(1, 0, 0, notify=lambda v, p: log.append(("b", v, p)))
    q1, q2 = dom0.bind_interdomain(1, x1), dom0.bind_interdomain(1, x2)
    ipi = dom0.bind_ipi(1)
    hooks.clear()
    dom0.send_many([q2, ipi, q1, q2])
    assert log == [("b", 0, x2), ("a", 1, x1), ("b", 0, x2)]
    assert hooks == [("kick", 1)]


def test_send_many_failure_still_notifies_the_ports_before_it(xe, hv, pair, xen, log):
    dom0, _ = pair
    q = bound(hv, pair, xen)
    with raises_errno(xe, errno.EINVAL):
        dom0.send_many([q, 999, q])
    assert log == [(1, xen)]


def test_default_consumer_drops_the_notification(hv, pair, hooks):
    dom0, domu = pair
    x = hv.alloc_xen_channel(1, 0, 0)   # notify=None
    q = dom0.bind_interdomain(1, x)
    hooks.clear()
    dom0.send(q)
    assert not domu.shared_info.is_pending(x) and hooks == []


def test_a_raising_consumer_propagates_after_the_state_change(hv, pair):
    dom0, domu = pair

    class Boom(Exception):
        pass

    def bad(v, p):
        raise Boom

    x = hv.alloc_xen_channel(1, 0, 0, notify=bad)
    q = dom0.bind_interdomain(1, x)
    with pytest.raises(Boom):
        dom0.send(q)
    assert status(domu, x) == (2, 0, 0, q)


def test_consumer_may_answer_through_xen(hv, pair, hooks):
    """An ioreq-server-like consumer: the device model kicks, Xen answers at once."""
    dom0, domu = pair
    box = {}
    x = hv.alloc_xen_channel(1, 0, 0, notify=lambda v, p: hv.notify_xen_channel(1, p))
    box["q"] = q = dom0.bind_interdomain(1, x)
    dom0.guest.do_upcall(0)                     # take the bind's pending event
    hooks.clear()
    dom0.send(q)
    assert dom0.shared_info.is_pending(q)
    assert hooks == [("kick", 0)]


def test_peer_close_leaves_it_unbound_and_xen_attached(xe, hv, pair, xen, log):
    dom0, domu = pair
    q = bound(hv, pair, xen)
    dom0.close(q)
    assert status(domu, xen) == (1, 1, 0, None)
    with raises_errno(xe, errno.EINVAL):
        domu.close(xen)
    q2 = dom0.bind_interdomain(1, xen)          # the remote can bind again
    dom0.send(q2)
    assert log == [(1, xen)]


# ---------------------------------------------------------------------------- Xen's side

def test_notify_raises_the_bound_peer(hv, pair, xen, hooks):
    dom0, domu = pair
    q = bound(hv, pair, xen)
    dom0.guest.do_upcall(0)
    hooks.clear()
    hv.notify_xen_channel(1, xen)
    assert dom0.shared_info.is_pending(q) and hooks == [("kick", 0)]
    assert not domu.shared_info.is_pending(xen)


def test_notify_follows_the_peers_notify_vcpu(hv, pair, xen, hooks):
    dom0, _ = pair
    q = bound(hv, pair, xen)
    dom0.guest.do_upcall(0)                     # the bind's event, on vCPU 0
    dom0.bind_vcpu(q, 1)
    hooks.clear()
    hv.notify_xen_channel(1, xen)
    assert hooks == [("kick", 1)]


def test_notify_while_unbound_does_nothing(hv, pair, xen, hooks):
    dom0, domu = pair
    hv.notify_xen_channel(1, xen)
    assert hooks == [] and not domu.shared_info.is_pending(xen)


def test_notify_wakes_a_poller(hv, pair, xen, hooks):
    dom0, _ = pair
    q = bound(hv, pair, xen)
    dom0.guest.do_upcall(0)
    dom0.shared_info.buffer[1] = 1              # vCPU 0 masks upcalls: poll blocks
    assert dom0.sched_poll([q]) is False
    hooks.clear()
    hv.notify_xen_channel(1, xen)
    assert not dom0.vcpus[0].polling and ("wake", 0) in hooks


@pytest.mark.parametrize("op", ["notify_xen_channel", "free_xen_channel"])
def test_notify_and_free_refuse_other_ports(xe, hv, pair, op):
    dom0, domu = pair
    fn = getattr(hv, op)
    a = domu.alloc_unbound(0)
    for port in (0, a, 2, 63, 64, 4096, 2**32 - 1):
        with raises_errno(xe, errno.EINVAL):
            fn(1, port)
    with raises_errno(xe, errno.ESRCH):
        fn(9, 1)
    for bad, exc in (("1", TypeError), (-1, ValueError), (2**32, ValueError)):
        with pytest.raises(exc):
            fn(1, bad)
    assert status(domu, a) == (1, 0, 0, None)


def test_free_closes_it_and_the_peer_names_the_owner(xe, hv, pair, xen):
    dom0, domu = pair
    q = bound(hv, pair, xen)
    hv.free_xen_channel(1, xen)
    assert status(domu, xen)[0] == 0
    assert status(dom0, q) == (1, 0, 1, None)
    with raises_errno(xe, errno.EINVAL):
        hv.free_xen_channel(1, xen)
    p = domu.alloc_unbound(0)                    # an ordinary port again
    assert p == xen
    domu.close(p)


def test_free_unbound(hv, pair, xen):
    _, domu = pair
    hv.free_xen_channel(1, xen)
    assert status(domu, xen)[0] == 0
    assert domu.bind_ipi(0) == xen


def test_destroying_the_owner_closes_them(hv, pair, xen):
    dom0, _ = pair
    q = bound(hv, pair, xen)
    hv.destroy_domain(1)
    assert status(dom0, q) == (1, 0, 1, None)


def test_destroying_the_peer_leaves_it_unbound(hv, pair, xen, log):
    dom0, domu = pair
    third = hv.create_domain()
    x = hv.alloc_xen_channel(1, 0, third.domid, notify=lambda v, p: log.append(p))
    third.bind_interdomain(1, x)
    hv.destroy_domain(third.domid)
    assert status(domu, x) == (1, 0, third.domid, None)
    hv.free_xen_channel(1, x)


# ---------------------------------------------------------------------------- native only

def test_snapshot_keeps_them_with_the_default_consumer():
    import xenevtchn as xe

    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True)
    hv.create_domain(vcpus=2)
    calls = []
    x = hv.alloc_xen_channel(1, 1, 0, notify=lambda v, p: calls.append(p))
    q = dom0.bind_interdomain(1, x)
    hv2 = xe.Hypervisor.restore(hv.snapshot())
    assert hv2.snapshot() == hv.snapshot()
    d0, d1 = hv2.domain(0), hv2.domain(1)
    assert status(d1, x) == (2, 1, 0, q)
    with raises_errno(xe, errno.EINVAL):
        d1.close(x)
    d0.send(q)                                    # restored with notify=None: dropped
    assert calls == [] and not d1.shared_info.is_pending(x)
    hv2.free_xen_channel(1, x)
    assert status(d0, q) == (1, 0, 1, None)


def test_snapshot_with_a_forged_xen_record_is_refused():
    import json
    import zlib

    import xenevtchn as xe
    from xenevtchn import snapshot as snap

    hv = xe.Hypervisor()
    d = hv.create_domain()
    d.bind_ipi(0)
    data = hv.snapshot()
    doc = json.loads(zlib.decompress(data[snap.HEADER.size:]))
    doc["domains"][0]["ports"]["chans"][1][2] = 1    # an IPI claimed by Xen
    payload = zlib.compress(json.dumps(doc).encode())
    forged = snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(ValueError, match="xen-consumer"):
        xe.Hypervisor.restore(forged)


def test_threads_sending_to_a_consumer_lose_nothing():
    import xenevtchn as xe

    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True, vcpus=2)
    hv.create_domain(vcpus=2)
    lock = threading.Lock()
    count = [0]

    def consumer(v, p):
        with lock:  # the test's own counter; the simulator holds no lock around this call
            count[0] += 1

    x = hv.alloc_xen_channel(1, 0, 0, notify=consumer)
    q = dom0.bind_interdomain(1, x)
    n, per = 4, 500

    def sender():
        for i in range(per):
            if i % 2:
                dom0.send(q)
            else:
                dom0.send_many([q])

    threads = [threading.Thread(target=sender) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count[0] == n * per
