"""Snapshots of HVM/PVH domains (issue 19 item 7 for items 1-2): the type, the callback
via, the params, the per-vCPU vectors and the line state survive a restore, and behave
the same afterwards; hostile sections are refused."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest

import xenevtchn as xe
from xenevtchn.snapshot import FORMAT_VERSION, HEADER, MAGIC

VEC = 0xF3


def _world():
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(vcpus=2, privileged=True)
    a = hv.create_domain(vcpus=2, type="hvm")
    b = hv.create_domain(vcpus=3, type="pvh")
    pv = hv.create_domain(vcpus=1)
    ports = {}
    for g in (a, b, pv):
        p = g.alloc_unbound(0)
        ports[g.domid] = (p, dom0.bind_interdomain(g.domid, p))
    a.set_callback_via(9)
    dom0.send(ports[a.domid][1])          # the line is up
    b.set_upcall_vector(2, VEC)
    b.set_callback_via((2 << 56) | 0x40)
    b.set_hvm_param(5, 77)
    return hv, ports


def _log(hv):
    calls = []
    hv.on_kick = lambda v: calls.append(("kick", v.domain.domid, v.id))
    hv.on_interrupt = lambda v, vec: calls.append(("int", v.domain.domid, v.id, vec))
    hv.on_gsi = lambda d, gsi, level: calls.append(("gsi", d.domid, gsi, level))
    return calls


def test_roundtrip_state_and_behaviour():
    hv, ports = _world()
    data = hv.snapshot()
    r = xe.Hypervisor.restore(data)
    assert r.snapshot() == data
    assert [d.type for d in r.domains] == ["pv", "hvm", "pvh", "pv"]
    a, b = r.domain(1), r.domain(2)
    assert a.callback_asserted and a.get_hvm_param(0) == 9
    assert [v.upcall_vector for v in b.vcpus] == [0, 0, VEC]
    assert b.get_hvm_param(5) == 77 and b.get_hvm_param(0) == (2 << 56) | 0x40
    assert a.vcpus[0].upcall_mask == 0 and r.domain(3).vcpus[0].upcall_mask == 1
    # the same calls give the same hooks in the original and in the copy
    logs = []
    for world in (hv, r):
        log = _log(world)
        d0 = world.domain(0)
        world.domain(1).guest.do_upcall(0)
        world.domain(1).vm_exit()                    # the line drops
        d0.send(ports[2][1])                         # to b's vCPU 0: the vector callback
        world.domain(2).guest.do_upcall(0)
        world.domain(2).bind_vcpu(ports[2][0], 2)
        d0.send(ports[2][1])                         # now vCPU 2: its own vector
        logs.append(log)
    assert logs[0] == logs[1] == [("gsi", 1, 9, False), ("int", 2, 0, 0x40), ("int", 2, 2, VEC)]


def _doc(data):
    return json.loads(zlib.decompress(data[HEADER.size:]))


def _pack(doc):
    payload = zlib.compress(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    return HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize("field,value", [
    ("type", "pv"), ("type", "arm"), ("via", 4), ("gsi", 256), ("vector", -1),
    ("upcall_vectors", [0, 0]), ("upcall_vectors", [0, 0, 0x0F]), ("asserted", 1),
    ("params", [[39, 0]]), ("params", [[0, 1], [0, 2]]), ("params", [[0, 2**64]]),
    ("via", 1),     # a GSI callback whose GSI is 0
])
def test_hostile_hvm_sections_are_refused(field, value):
    hv, _ = _world()
    doc = _doc(hv.snapshot())
    sec = doc["domains"][2]["sections"]["hvm"]["data"]
    sec[field] = value
    with pytest.raises(ValueError):
        xe.Hypervisor.restore(_pack(doc))


def test_pvh_with_a_line_is_unreachable():
    hv, _ = _world()
    doc = _doc(hv.snapshot())
    sec = doc["domains"][2]["sections"]["hvm"]["data"]
    sec["via"], sec["gsi"] = 1, 5
    with pytest.raises(ValueError, match="hvm"):
        xe.Hypervisor.restore(_pack(doc))


def test_a_pv_domain_without_section_stays_pv():
    hv, _ = _world()
    doc = _doc(hv.snapshot())
    del doc["domains"][1]["sections"]["hvm"]
    r = xe.Hypervisor.restore(_pack(doc))
    assert r.domain(1).type == "pv" and r.domain(1).vcpus[0].upcall_vector == 0
