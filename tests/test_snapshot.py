"""Snapshots: round trips, what is and is not captured, and refusing bad bytes safely."""

from __future__ import annotations

import errno
import json
import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xenevtchn as xe
from xenevtchn import snapshot as snap
from xenevtchn.scenario import default_scenario
from xenevtchn.simulate import Simulation


def rich_hypervisor() -> xe.Hypervisor:
    """A hypervisor in a state that touches every part of a snapshot."""
    sim = Simulation(default_scenario(guests=2, vcpus=2, events=3000, seed=5))
    sim.run()
    hv = sim.hv
    hv.on_kick = hv.on_wake = None
    small = hv.create_domain(vcpus=3, layout="x86_32", max_evtchn_port=70)
    mine = hv.create_domain(vcpus=1, shared_info=bytearray(4096), guest="minios")
    dom0 = hv.domain(0)
    hv.permit_pirq(small.domid, 40)
    small.bind_pirq(40, xe.BIND_PIRQ__WILL_SHARE)
    dom0.bind_pirq(40, xe.BIND_PIRQ__WILL_SHARE)          # a host IRQ shared by two domains
    hv.set_virq_handler(xe.VIRQ_CON_RING, small.domid)    # a global VIRQ handled elsewhere
    small.bind_virq(xe.VIRQ_CON_RING)
    for _ in range(66):                                   # past the first bucket of ports
        small.bind_ipi(2)
    ipi = small.bind_ipi(1)
    small.guest.mask(ipi)
    small.send(ipi)                                       # pending while masked
    p = mine.alloc_unbound(0)
    assert not mine.sched_poll([p], timeout=hv.now + 5000)  # blocked, timer armed
    hv.pause_domain(small.domid)
    small.guest.do_upcall(2)
    return hv


def test_round_trip_is_exact_and_hooks_are_not_state():
    hv = rich_hypervisor()
    data = hv.snapshot()
    copy = xe.Hypervisor.restore(data)
    assert isinstance(copy, xe.Hypervisor)
    assert copy.snapshot() == data
    assert copy.on_kick is None and copy.on_wake is None
    assert [d.domid for d in copy.domains] == [d.domid for d in hv.domains]
    for a, b in zip(hv.domains, copy.domains):
        assert bytes(a.shared_info.buffer[:a.shared_info.size]) == bytes(b.shared_info.buffer[:b.shared_info.size])
        assert [v.polling for v in a.vcpus] == [v.polling for v in b.vcpus]
        assert (a.privileged, a.layout, a.max_evtchn_port, a.guest.mode) == \
               (b.privileged, b.layout, b.max_evtchn_port, b.guest.mode)
    assert copy.now == hv.now


def test_restored_copy_and_original_go_on_identically():
    hv = rich_hypervisor()
    copy = xe.Hypervisor.restore(hv.snapshot())
    logs = []
    for h in (hv, copy):
        log: list[tuple[str, int, int]] = []
        h.on_kick = lambda v, log=log: log.append(("kick", v.domain.domid, v.id))
        h.on_wake = lambda v, log=log: log.append(("wake", v.domain.domid, v.id))
        logs.append(log)
        h.advance(6000)                      # the armed poll timer fires in both
        for d in h.domains:
            for v in d.vcpus:
                h.send_virq(d.domid, xe.VIRQ_TIMER, v.id)
        h.unpause_domain(3)                  # paused once: a second unpause is refused
        with pytest.raises(xe.EvtchnError):
            h.unpause_domain(3)
    assert logs[0] == logs[1] and ("wake", 4, 0) in logs[0]
    for a, b in zip(hv.domains, copy.domains):
        for v in range(len(a.vcpus)):
            assert a.guest.do_upcall(v) == b.guest.do_upcall(v)
    assert hv.snapshot() == copy.snapshot()


def test_fork_runs_two_futures_from_one_checkpoint():
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True)
    g = hv.create_domain()
    back = dom0.bind_interdomain(g.domid, g.alloc_unbound(0))
    dom0.guest.do_upcall(0)
    checkpoint = hv.snapshot()
    a, b = xe.Hypervisor.restore(checkpoint), xe.Hypervisor.restore(checkpoint)
    a.domain(0).send(back)
    assert a.domain(1).guest.do_upcall(0) == [1]
    assert b.domain(1).guest.do_upcall(0) == []          # b's future did not see a's event
    assert b.snapshot() == checkpoint and hv.snapshot() == checkpoint


def test_caller_buffer_is_restored_into_a_fresh_page():
    hv = xe.Hypervisor()
    buf = bytearray(4096)
    d = hv.create_domain(shared_info=buf)
    p = d.bind_ipi(0)
    d.send(p)
    copy = xe.Hypervisor.restore(hv.snapshot())
    cd = copy.domain(d.domid)
    assert cd.shared_info.is_pending(p)
    buf[:] = bytes(4096)                                   # the caller's page is not shared
    assert cd.shared_info.is_pending(p) and not d.shared_info.is_pending(p)


def test_handles_with_ports_are_refused_then_fine_once_closed():
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True)
    h = xe.XenEvtchn(dom0)
    h.bind_unbound_port(0)
    with pytest.raises(ValueError, match="XenEvtchn handle"):
        hv.snapshot()
    h.close()
    assert xe.Hypervisor.restore(hv.snapshot()).snapshot() == hv.snapshot()


def test_destroyed_domains_are_gone_and_their_ids_free():
    hv = xe.Hypervisor()
    hv.create_domain(privileged=True)
    g = hv.create_domain()
    g.alloc_unbound(0)
    hv.destroy_domain(g.domid)
    copy = xe.Hypervisor.restore(hv.snapshot())
    with pytest.raises(xe.EvtchnError) as e:
        copy.domain(1)
    assert e.value.errno == errno.ESRCH
    assert copy.create_domain().domid == 1


# ---- bad bytes ---------------------------------------------------------------------------


def _doc(data: bytes) -> dict:
    return snap.decode(data)


def _encode(doc: dict) -> bytes:
    payload = zlib.compress(json.dumps(doc).encode())
    return snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


@pytest.fixture(scope="module")
def good() -> bytes:
    return rich_hypervisor().snapshot()


def test_header_damage_is_a_clear_value_error(good):
    cases = {
        "shorter than the header": good[:5],
        "bad magic": b"NOTASNAP" + good[8:],
        "version 9 is not supported": good[:8] + struct.pack("<H", 9) + good[10:],
        "unknown flags": good[:10] + struct.pack("<H", 1) + good[12:],
        "truncated": good[:-1],
        "checksum": good[:-1] + bytes([good[-1] ^ 1]),
    }
    for what, data in cases.items():
        with pytest.raises(ValueError, match=what.split()[0]):
            xe.Hypervisor.restore(data)
    with pytest.raises(TypeError):
        xe.Hypervisor.restore("not bytes")  # type: ignore[arg-type]


def test_payload_that_is_not_json_or_not_a_snapshot(good):
    for payload in (b"not zlib", zlib.compress(b"{not json"), zlib.compress(b"[1, 2]"),
                    zlib.compress(b"{}"), zlib.compress(b"[" * 100000 + b"]" * 100000)):
        data = snap.HEADER.pack(snap.MAGIC, 1, 0, len(payload), zlib.crc32(payload)) + payload
        with pytest.raises(ValueError, match="snapshot"):
            xe.Hypervisor.restore(data)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["domains"][1]["ports"]["chans"].__setitem__(1, [1, 3, 0, 0, 0xFFFF, 0, 0, 1, 0, 0, 0]),
     "interdomain peer"),
    (lambda d: d["domains"][0]["scans"][0].__setitem__("cursor_word", 64), "cursor_word"),
    (lambda d: d["domains"][0]["ports"].__setitem__("valid", 100), "multiple of 64"),
    (lambda d: d["domains"][0]["ports"].__setitem__("active", 3), "active"),
    (lambda d: d["domains"][0].__setitem__("vcpus", 0), "vcpus"),
    (lambda d: d["domains"][0].__setitem__("shared_info", "AAAA"), "shared_info"),
    (lambda d: d["domains"][0]["c"].__setitem__("abi", 1), "FIFO section disagree"),
    (lambda d: d["domains"][0]["virq_to_evtchn"][0].__setitem__(5, 1), "not bound to that VIRQ"),
    (lambda d: (d["domains"][0]["sections"].__setitem__("fifo", {"version": 1, "data": {}}),
                d["domains"][0]["c"].__setitem__("abi", 1)), "sections.fifo"),
    (lambda d: d["domains"][0]["sections"].__setitem__("fifo", {"version": 2, "data": {}}), "'fifo' section"),
    (lambda d: d["domains"][0]["sections"].__setitem__("ring", {"version": 1, "data": {}}), "'ring' section"),
    (lambda d: d["domains"][0]["memory"]["frames"].append([3, "AAAA"]), "memory.frames"),
    (lambda d: d["domains"][0]["fifo_scans"][0].__setitem__("ready", 1 << 16), "fifo_scans"),
    (lambda d: d["hv"].__setitem__("timers", [[5, 0, 0, 1], [1, 0, 0, 2]]), "not a heap"),
    (lambda d: d["hv"].__setitem__("hardware_domain", 77), "hardware_domain"),
    (lambda d: d["domains"].append(d["domains"][0]), "domids"),
    (lambda d: d["domains"][0].pop("guest"), "keys differ"),
    (lambda d: d["domains"][0].__setitem__("max_evtchn_port", "many"), "max_evtchn_port"),
])
def test_inconsistent_documents_are_refused_naming_the_field(good, mutate, message):
    doc = _doc(good)
    mutate(doc)
    with pytest.raises(ValueError, match=message):
        xe.Hypervisor.restore(_encode(doc))


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


WEIRD = [None, True, -1, 0, 1, 63, 64, 4095, 4096, 0xFFFF, 2**32, 2**64, -(2**70), 1.5, "x", [], {}, [0, 0]]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.data())
def test_hostile_documents_never_crash_and_restore_only_consistent_states(good, data):
    """Change one to three values anywhere in a snapshot's document: restore either
    refuses with ValueError, or the hypervisor it builds works and snapshots cleanly."""
    doc = _doc(good)
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = data.draw(st.sampled_from(WEIRD))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed the path
    try:
        hv = xe.Hypervisor.restore(_encode(doc))
    except ValueError:
        return
    for d in hv.domains:  # everything still runs (and only raises the API's errors)
        for port in range(1, d.ports.valid):
            try:
                d.send(port)
            except xe.EvtchnError:
                pass
        for v in range(len(d.vcpus)):
            d.guest.do_upcall(v)
    hv.advance(10**6)
    assert xe.Hypervisor.restore(hv.snapshot()).snapshot() == hv.snapshot()


def test_random_byte_damage_is_always_a_value_error(good):
    rng = random.Random(1)
    for _ in range(200):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        if bytes(b) == good:
            continue
        with pytest.raises(ValueError):
            xe.Hypervisor.restore(bytes(b))


def test_fifo_domain_round_trips_mid_queue():
    """A FIFO domain with linked, masked and deferred events forks into a copy whose queues,
    words and guest cursors behave exactly as the original's."""
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2, memory_frames=64)
    d.init_control(3, 8, 0)
    d.init_control(4, 0, 1)
    d.expand_array(5)
    ports = [d.bind_ipi(v % 2) for v in range(1500)]  # ports past 1023 have no word yet
    d.set_priority(ports[10], 2)
    for p in (ports[5], ports[10], ports[7], ports[1200], ports[6]):
        d.send(p)
    d.guest.mask(ports[8])
    d.send(ports[8])
    assert d.guest.do_upcall(0, handler=lambda p: None)[:1] == [ports[10]]  # mid-queue state
    d.send(ports[4])
    data = hv.snapshot()
    copy = xe.Hypervisor.restore(data)
    assert copy.snapshot() == data
    c = copy.domain(d.domid)
    assert c.abi == "fifo" and c.fifo.array_gfns == [5]
    for dom in (d, c):
        dom.expand_array(6)  # raises the deferred port 1200's event
        dom.guest.unmask(ports[8])
    assert copy.snapshot() == hv.snapshot()
    assert [c.guest.do_upcall(v) for v in (0, 1)] == [d.guest.do_upcall(v) for v in (0, 1)]
    assert bytes(c.memory.page(5)) == bytes(d.memory.page(5))
