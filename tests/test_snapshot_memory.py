"""Restore's memory is bounded by the state a snapshot describes (issue 14, item 5): small
hostile snapshots (a few KiB that decompress to megabytes of JSON shapes no snapshot has)
are refused with ValueError while restore holds at most a few MiB, measured with
tracemalloc (no clocks)."""

from __future__ import annotations

import json
import tracemalloc
import zlib

import pytest

import xenevtchn as xe
from xenevtchn import snapshot as snap

CEILING = 4 << 20          # bytes restore may hold at once for any input below


def _pack(text: bytes) -> bytes:
    payload = zlib.compress(text, 9)
    return snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def _real_doc() -> dict:
    hv = xe.Hypervisor()
    hv.create_domain(privileged=True, vcpus=2)
    hv.create_domain(vcpus=1)
    return json.loads(zlib.decompress(hv.snapshot()[snap.HEADER.size:]))


def _with(path: list, value_json: bytes) -> bytes:
    """A real snapshot's text with the value at ``path`` replaced by raw JSON text."""
    doc = _real_doc()
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = "@@HOLE@@"
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode().replace(b'"@@HOLE@@"', value_json)


N = 8_000_000
HOSTILE = {
    "nested empty lists": lambda: b"[" + b"[]," * N + b"[]]",
    "deep nesting": lambda: b"[" * N + b"]" * N,
    "domains of empty lists": lambda: _with(["domains"], b"[" + b"[]," * N + b"[]]"),
    "domains of empty objects": lambda: _with(["domains"], b"[" + b"{}," * N + b"{}]"),
    "chans of empty lists": lambda: _with(["domains", 0, "ports", "chans"], b"[" + b"[]," * N + b"[]]"),
    "timers of tiny lists": lambda: _with(["hv", "timers"], b"[" + b"[0]," * N + b"[0]]"),
    "a huge string": lambda: _with(["domains", 0, "shared_info"], b'"' + b"A" * (4 * N) + b'"'),
    "many keys": lambda: b"{" + b"".join(b'"k%d":0,' % i for i in range(40_000)) + b'"z":0}',
    "section of nested lists": lambda: _with(["domains", 0, "sections"],
                                     b'{"x":{"version":1,"data":[' + b"[[[]]]," * N + b"[]]}}"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_small_hostile_snapshots_are_refused_within_a_memory_ceiling(name):
    data = _pack(HOSTILE[name]())
    assert len(data) < 256 << 10, len(data)      # small inputs ...
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with pytest.raises(ValueError):
            xe.Hypervisor.restore(data)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < CEILING + 50 * len(data), f"{name}: restore held {peak >> 20} MiB for {len(data)} bytes"


def test_a_real_snapshot_still_restores_under_the_shape_check():
    hv = xe.Hypervisor()
    d0 = hv.create_domain(privileged=True, vcpus=3)
    g = hv.create_domain(vcpus=2, guest="minios")
    for _ in range(40):
        p = g.alloc_unbound(0)
        d0.bind_interdomain(g.domid, p)
    data = hv.snapshot()
    assert xe.Hypervisor.restore(data).snapshot() == data
