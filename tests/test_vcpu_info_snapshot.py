"""Snapshots of vcpu_info registrations and of vCPUs beyond 32 (issue 19 item 7 for
item 3): a restored world reads and writes every vCPU's vcpu_info where the original
did, and a document whose registrations or high-vCPU state no calls could reach is
refused as a ValueError naming the field."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

import xenevtchn as xe
from xenevtchn import snapshot as snap


def _doc(data: bytes) -> dict:
    return json.loads(zlib.decompress(data[snap.HEADER.size:]))


def _encode(doc: dict) -> bytes:
    payload = zlib.compress(json.dumps(doc).encode())
    return snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def world() -> xe.Hypervisor:
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=70)
    small = hv.create_domain(vcpus=2, layout="x86_32")
    small.register_vcpu_info(4, 4, 1)                  # compat: 4-byte aligned
    d.register_vcpu_info(7, 128, 3)                    # a legacy slot moved
    d.register_vcpu_info(7, 192, 40)                   # vCPUs 32.. given one
    d.register_vcpu_info(8, 4032, 69)
    lost = d.bind_ipi(65)                              # no vcpu_info: only the pending bit
    d.unmask(lost)
    d.send(lost)
    d.sched_poll([d.bind_ipi(66)], vcpu=66)            # vCPU 66 blocks in poll
    d.sched_poll([], vcpu=33)
    return hv


def test_round_trip():
    hv = world()
    data = hv.snapshot()
    hv2 = xe.Hypervisor.restore(data)
    assert hv2.snapshot() == data
    d, d2 = hv.domain(0), hv2.domain(0)
    for v in range(70):
        a, b = d.vcpus[v].vcpu_info, d2.vcpus[v].vcpu_info
        assert (a is None) == (b is None) and (a is None or bytes(a) == bytes(b)), v
        assert d.vcpus[v].polling == d2.vcpus[v].polling
    assert d2.vcpus[40].vcpu_info is not None and d2.vcpus[65].vcpu_info is None
    assert d2.vcpus[66].polling and d2.vcpus[33].polling
    # The restored C table points into the restored memory, live.
    d2.guest.do_upcall(40)
    p = d2.bind_ipi(40)
    d2.unmask(p)
    kicks = []
    hv2.on_kick = lambda v: kicks.append(v.id)
    hv2.on_wake = lambda v: kicks.append(("wake", v.id))
    d2.send(p)
    assert kicks == [40, ("wake", 33)] and d2.memory.page(7)[192] == 1   # vCPU 33 polled any port
    with pytest.raises(ValueError):
        d2.memory.map(8, bytearray(4096))
    with pytest.raises(xe.EvtchnError):
        d2.register_vcpu_info(9, 0, 69)
    lost = next(p for p in range(1, 8) if d2.status(p).status == xe.EVTCHNSTAT_ipi and d2.status(p).vcpu == 65)
    d2.register_vcpu_info(9, 0, 65)                    # and the lost event is found
    assert d2.guest.do_upcall(65) == [lost]
    assert xe.Hypervisor.restore(hv2.snapshot()).snapshot() == hv2.snapshot()


def test_domains_without_either_carry_no_section():
    hv = xe.Hypervisor()
    hv.create_domain(vcpus=32)
    assert "vcpus" not in _doc(hv.snapshot())["domains"][0]["sections"]


def _section(doc: dict, domid: int = 0) -> dict:
    return next(d for d in doc["domains"] if d["domid"] == domid)["sections"]["vcpus"]["data"]


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["registered"].append([3, 1, 0]), "registered"),                 # vCPU 3 twice
    (lambda s: s["registered"].__setitem__(0, [3, 7, 132]), "registered"),       # misaligned
    (lambda s: s["registered"].__setitem__(0, [3, 7, 4040]), "offset"),          # crosses the page
    (lambda s: s["registered"].__setitem__(0, [70, 7, 0]), "vcpu"),              # no such vCPU
    (lambda s: s["registered"].__setitem__(0, [3, 2**40, 0]), "gfn"),            # outside memory
    (lambda s: s["hi"]["bits"].__setitem__(1, 1 << 6), "bits"),                  # vCPU 70 polls
    (lambda s: s["hi"]["bits"].pop(), "bits"),
    (lambda s: s["hi"]["poll_evtchn"].append(0), "poll_evtchn"),
    (lambda s: s.pop("hi"), "hi"),
    (lambda s: s.__setitem__("extra", 1), "vcpus"),
])
def test_bad_sections_are_refused(mutate, field):
    doc = _doc(world().snapshot())
    mutate(_section(doc))
    with pytest.raises(ValueError, match=field):
        xe.Hypervisor.restore(_encode(doc))


def test_areas_may_overlap_and_still_restore():
    """Xen asks only for a writable page: two vCPUs may name the same bytes (the
    section's checks allow it, and so does the invariant checker)."""
    doc = _doc(world().snapshot())
    _section(doc)["registered"].append([44, 7, 128])   # vCPU 3's bytes
    _section(doc)["hi"]["bits"][0] |= 1 << 5           # vCPU 37 was kicked: allowed
    hv = xe.Hypervisor.restore(_encode(doc))
    d = hv.domain(0)
    assert bytes(d.vcpus[44].vcpu_info) == bytes(d.vcpus[3].vcpu_info)
