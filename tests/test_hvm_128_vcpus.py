"""HVM/PVH domains with up to 128 vCPUs (spec xen-hvm-and-beyond §1.3 ``HVM_MAX_VCPUS``,
§2.3 the four cases of ``hvm_assert_evtchn_irq``, §3.1 vCPUs without a vcpu_info, §10),
on both implementations; snapshots of such a domain on the native one.

vCPUs 32..127 of an HVM/PVH domain have no vcpu_info until they register one: an event for
one sets the port's pending bit and nothing else. Once registered, the vCPU is delivered to
by the rules of §2.3 like any other: through its own upcall vector (case 1), a kick or the
vector callback of a pv-evtchn domain (case 2), and never by the GSI/INTx line, which is
vCPU 0's alone (case 4: nobody is told and a poll of another port goes on).
"""

from __future__ import annotations

import pytest

import xenevtchn as native

VEC = 0xF3   # Linux's HYPERVISOR_CALLBACK_VECTOR
GSI_TYPE, INTX_TYPE, VECTOR_TYPE = 0, 1, 2
HIGH = (32, 40, 63, 64, 100, 127)   # vCPUs beyond the legacy slots, across word edges


def via(kind, low):
    return (kind << 56) | low


@pytest.fixture
def log(hv):
    """Every hook call of the guests in order (dom0's own are left out)."""
    calls = []
    hv.on_kick = lambda v: v.domain.domid and calls.append(("kick", v.id))
    hv.on_wake = lambda v: v.domain.domid and calls.append(("wake", v.id))
    hv.on_interrupt = lambda v, vec: calls.append(("int", v.id, vec))
    hv.on_gsi = lambda d, gsi, level: calls.append(("gsi", d.domid, gsi, level))
    return calls


@pytest.fixture
def dom0(hv):
    return hv.create_domain(vcpus=2, privileged=True)


def guest128(hv, dom0, type="hvm", vcpus=128, on=(0,) + HIGH):
    """A guest with one interdomain channel from dom0 bound to each vCPU of ``on``.
    Returns (guest, {vcpu: guest port}, {vcpu: dom0 port})."""
    g = hv.create_domain(vcpus=vcpus, type=type, memory_frames=16)
    gp, dp = {}, {}
    for v in on:
        p = g.alloc_unbound(dom0.domid)
        g.bind_vcpu(p, v)
        gp[v] = p
        dp[v] = dom0.bind_interdomain(g.domid, p)
    return g, gp, dp


def register(g, v):
    """vCPU v's vcpu_info in frame 1 + v // 64, at offset 64 * (v % 64)."""
    g.register_vcpu_info(1 + v // 64, 64 * (v % 64), v)


# ---- §1.3: the limit ----------------------------------------------------------------------

@pytest.mark.parametrize("t", ["hvm", "pvh"])
def test_1_to_128_vcpus_and_129_is_refused(hv, t):
    for n in (129, 130, 8192, 0):
        with pytest.raises(ValueError):
            hv.create_domain(vcpus=n, type=t)
    for n in (1, 33, 64, 65, 128):
        d = hv.create_domain(vcpus=n, type=t)
        assert len(d.vcpus) == n and d.type == t
    assert len(hv.create_domain(vcpus=129).vcpus) == 129   # PV's limit is not HVM's


def test_high_vcpus_start_without_vcpu_info(hv):
    g = hv.create_domain(vcpus=128, type="hvm")
    assert g.vcpus[31].vcpu_info is not None
    for v in range(32, 128):
        vc = g.vcpus[v]
        assert vc.vcpu_info is None
        assert (vc.upcall_pending, vc.upcall_mask, vc.pending_sel, vc.upcall_vector) == (0, 0, 0, 0)


# ---- §3.1 + §2.3 case 1: vCPU 100 registers, sets its vector, gets its interrupts --------

def test_vcpu100_registers_sets_a_vector_and_gets_interrupts(hv, dom0, log):
    g, gp, dp = guest128(hv, dom0)
    dom0.send(dp[100])
    # no vcpu_info: the event is kept (pending bit), the upcall is lost, nobody is told
    assert log == [] and g.shared_info.is_pending(gp[100])
    assert g.vcpus[100].upcall_pending == 0
    register(g, 100)
    # populate: zero-filled, mask 1, selector all ones, flag 0 -> 1; no vector and no
    # callback yet, so §2.3 case 4: still nobody
    vc = g.vcpus[100]
    assert log == [] and vc.upcall_pending == 1 and vc.upcall_mask == 1
    assert vc.pending_sel == 2**64 - 1
    g.set_upcall_vector(100, VEC)          # injected at once, unconditionally (§2.5 step 5)
    assert log == [("int", 100, VEC)] and vc.upcall_vector == VEC
    log.clear()
    assert g.guest.do_upcall(100) == [gp[100]]   # registering recovered the lost event
    assert vc.upcall_pending == 0
    dom0.send(dp[100])
    assert log == [("int", 100, VEC)]
    log.clear()
    dom0.send(dp[100])                     # already pending: no new edge
    assert log == []


def test_vector_set_before_registering_interrupts_twice(hv, dom0, log):
    g, gp, dp = guest128(hv, dom0)
    g.set_upcall_vector(100, VEC)          # no vcpu_info: the injection happens anyway
    assert log == [("int", 100, VEC)]
    log.clear()
    dom0.send(dp[100])                     # no flag to set: nothing
    assert log == []
    register(g, 100)                       # mark pending 0 -> 1: case 1
    assert log == [("int", 100, VEC)]
    assert g.guest.do_upcall(100) == [gp[100]]


@pytest.mark.parametrize("t", ["hvm", "pvh"])
def test_every_high_vcpu_its_own_vector(hv, dom0, log, t):
    g, gp, dp = guest128(hv, dom0, type=t)
    for i, v in enumerate(HIGH):
        register(g, v)
        g.set_upcall_vector(v, 0x40 + i)
        g.guest.do_upcall(v)
    log.clear()
    for v in reversed(HIGH):
        dom0.send(dp[v])
    assert log == [("int", v, 0x40 + HIGH.index(v)) for v in reversed(HIGH)]


# ---- §2.3 cases 3/4: the line is vCPU 0's; a high vCPU reaches nobody and stays in poll ---

@pytest.mark.parametrize("cb", [5, via(INTX_TYPE, 3 << 11), 0], ids=["gsi", "intx", "none"])
def test_line_callback_high_vcpu_reaches_nobody_and_keeps_polling(hv, dom0, log, cb):
    g, gp, dp = guest128(hv, dom0)
    for v in HIGH:
        register(g, v)
        g.guest.do_upcall(v)
    g.set_callback_via(cb)
    other = g.alloc_unbound(dom0.domid)
    for v in HIGH:
        assert g.sched_poll([other], vcpu=v) is False   # no delivery to wait for (§2.6)
    log.clear()
    for v in HIGH:
        dom0.send(dp[v])
        assert g.vcpus[v].upcall_pending == 1 and g.shared_info.is_pending(gp[v])
    assert log == []
    assert all(g.vcpus[v].polling for v in HIGH)
    # vCPU 0 still drives the line (case 3); the pollers are not woken by it either
    dom0.send(dp[0])
    line = [] if cb == 0 else [("gsi", g.domid, 5 if cb == 5 else 28, True)]
    assert log == line and all(g.vcpus[v].polling for v in HIGH)
    log.clear()
    # the polled port itself still ends the polls (check_pollers), in vCPU order
    peer = dom0.bind_interdomain(g.domid, other)
    dom0.send(peer)
    assert log == [("wake", v) for v in HIGH]
    assert not any(g.vcpus[v].polling for v in HIGH)
    for v in HIGH:
        assert g.guest.do_upcall(v) == [gp[v]]


def test_pv_evtchn_domain_kicks_high_vcpus_and_ends_their_poll(hv, dom0, log):
    """vCPU 0 has a vector: a pv-evtchn domain (case 2), so a high vCPU without a vector
    is kicked under a GSI callback, and with a vector callback gets the callback vector."""
    g, gp, dp = guest128(hv, dom0)
    register(g, 100)
    g.set_upcall_vector(0, 0x30)
    g.set_callback_via(9)
    g.guest.do_upcall(100)
    other = g.alloc_unbound(dom0.domid)
    assert g.sched_poll([other], vcpu=100) is False
    log.clear()
    dom0.send(dp[100])
    assert log == [("kick", 100), ("wake", 100)] and not g.vcpus[100].polling
    g.guest.do_upcall(100)
    g.set_callback_via(via(VECTOR_TYPE, VEC))
    g.guest.do_upcall(100)
    assert g.sched_poll([other], vcpu=100) is False   # nothing pending: blocks
    log.clear()
    dom0.send(dp[100])
    assert log == [("int", 100, VEC), ("wake", 100)] and not g.vcpus[100].polling


def test_vector_callback_step5_asserts_all_128_in_order(hv, dom0, log):
    g, gp, dp = guest128(hv, dom0)
    for v in (40, 100):
        register(g, v)                      # flag 1 after registering
    log.clear()
    g.set_callback_via(via(VECTOR_TYPE, VEC))
    # pv-evtchn (case 2): the vector where the flag is set, a kick where it is not
    assert log == [("int", v, VEC) if v in (40, 100) else ("kick", v) for v in range(128)]


def test_step5_wakes_each_poller_right_after_its_own_kick(hv, dom0, log):
    """§2.3: a kick or injection ends the vCPU's poll where Xen's vcpu_kick runs, so its
    on_wake follows its own on_kick / on_interrupt, before the next vCPU is asserted."""
    g, gp, dp = guest128(hv, dom0)
    register(g, 100)
    other = g.alloc_unbound(dom0.domid)
    for v in (1, 40, 100, 127):
        assert g.sched_poll([other], vcpu=v) is False
    log.clear()
    g.set_callback_via(via(VECTOR_TYPE, VEC))
    want = []
    for v in range(128):
        want.append(("int", v, VEC) if v == 100 else ("kick", v))
        if v in (1, 40, 100, 127):
            want.append(("wake", v))
    assert log == want
    assert not any(g.vcpus[v].polling for v in range(128))
    for v in (0, 33):
        assert g.sched_poll([other], vcpu=v) is False
    log.clear()
    g.set_upcall_vector(33, 0x44)          # one vCPU: its interrupt, then its wake
    assert log == [("int", 33, 0x44), ("wake", 33)] and g.vcpus[0].polling


def test_gsi_line_still_follows_vcpu0_with_128_vcpus(hv, dom0, log):
    g, gp, dp = guest128(hv, dom0)
    register(g, 127)
    g.set_callback_via(7)
    log.clear()
    dom0.send(dp[0])
    assert log == [("gsi", g.domid, 7, True)]
    log.clear()
    g.guest.do_upcall(0)
    dom0.send(dp[127])                      # another vCPU's event: no VM exit of vCPU 0's
    assert log == []
    g.vm_exit()
    assert log == [("gsi", g.domid, 7, False)]


# ---- snapshots (native) ---------------------------------------------------------------------

def _world():
    hv = native.Hypervisor()
    dom0 = hv.create_domain(vcpus=2, privileged=True)
    g, gp, dp = guest128(hv, dom0)
    p = hv.create_domain(vcpus=100, type="pvh", memory_frames=4)
    for v in (40, 100, 127):
        register(g, v)
        g.guest.do_upcall(v)
    g.set_upcall_vector(100, VEC)
    g.set_callback_via(5)
    other = g.alloc_unbound(0)
    assert g.sched_poll([other], vcpu=40) is False
    p.set_upcall_vector(99, 0x50)
    return hv, g.domid, gp, dp, other


def _hooks(hv):
    calls = []
    hv.on_kick = lambda v: calls.append(("kick", v.domain.domid, v.id))
    hv.on_wake = lambda v: calls.append(("wake", v.domain.domid, v.id))
    hv.on_interrupt = lambda v, vec: calls.append(("int", v.domain.domid, v.id, vec))
    hv.on_gsi = lambda d, gsi, level: calls.append(("gsi", d.domid, gsi, level))
    return calls


def test_snapshot_roundtrip_of_128_vcpu_domain():
    from xenevtchn import invariants

    hv, gid, gp, dp, other = _world()
    data = hv.snapshot()
    r = native.Hypervisor.restore(data)
    assert r.snapshot() == data
    invariants.check_world(r)
    g = r.domain(gid)
    assert len(g.vcpus) == 128 and g.type == "hvm"
    assert [v for v in range(128) if g.vcpus[v].upcall_vector] == [100]
    assert [v for v in range(32, 128) if g.vcpus[v].vcpu_info is not None] == [40, 100, 127]
    assert g.vcpus[40].polling
    assert r.domain(gid + 1).vcpus[99].upcall_vector == 0x50
    logs = []
    for world in (hv, r):
        calls = _hooks(world)
        d0, gg = world.domain(0), world.domain(gid)
        d0.send(dp[40])     # case 4: nobody, vCPU 40 stays in poll
        d0.send(dp[100])    # case 1
        d0.send(dp[127])    # case 4
        still = gg.vcpus[40].polling
        d0.send(dp[0])      # the line
        logs.append((calls, still, gg.vcpus[40].polling))
        invariants.check_world(world)
    assert logs[0] == logs[1]
    assert logs[0] == ([("int", gid, 100, VEC), ("gsi", gid, 5, True)], True, True)


def test_restore_refuses_a_wrong_number_of_upcall_vectors():
    """The hvm section carries one vector per vCPU: 127 or 129 for 128 vCPUs is refused."""
    import json
    import zlib

    from xenevtchn.snapshot import FORMAT_VERSION, HEADER, MAGIC

    hv, gid, *_ = _world()
    data = hv.snapshot()
    for change in (lambda vs: vs.append(0), lambda vs: vs.pop()):
        doc = json.loads(zlib.decompress(data[HEADER.size:]))
        dom = next(d for d in doc["domains"] if d["domid"] == gid)
        change(dom["sections"]["hvm"]["data"]["upcall_vectors"])
        payload = zlib.compress(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        bad = HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload
        with pytest.raises(ValueError, match="upcall_vectors"):
            native.Hypervisor.restore(bad)
