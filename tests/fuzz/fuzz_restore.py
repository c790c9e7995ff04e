#!/usr/bin/env python3
"""Coverage-guided fuzzing of ``Hypervisor.restore`` with mutations of real snapshots.

    pip install -e '.[test,fuzz]'
    python tests/fuzz/fuzz_restore.py -max_total_time=60 /tmp/restore-corpus tests/fuzz/restore-corpus

(libFuzzer's options; new inputs go to the first directory, the others are read.)
``tests/test_fuzz_restore_corpus.py`` replays every file of ``tests/fuzz/restore-corpus/``
through the same ``run()`` in the normal test suite, without atheris.

An input picks one of a few real snapshots (``BASES``: interdomain, IPI, VIRQ and shared
PIRQ bindings, a global VIRQ handled outside dom0, an armed poll timer, a paused domain,
a Mini-OS x86_32 guest, a FIFO domain with queued events) and then a list of mutations:

- of the document: set any value (found by walking the JSON) to an integer near a limit,
  another value of the same document, or a value of another type; delete a key; duplicate,
  drop or swap list entries;
- of the JSON text: flip, insert or delete bytes, or repeat a slice (shapes that json
  would turn into big object trees);
- of the container: damage the header or the compressed bytes (checksum kept right or not).

The oracle: ``restore`` either raises ``ValueError`` (never anything else, never a crash),
or returns a hypervisor that passes ``xenevtchn.invariants.check_world`` (the checker the
hypercall fuzzer runs on live worlds), keeps working when driven (sends, upcalls, time:
only ``EvtchnError``), and whose snapshot restores to itself byte for byte.
"""

from __future__ import annotations

import copy
import json
import sys
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

SEEDING = __name__ == "__main__" and sys.argv[1:2] == ["--seeds"]
if __name__ == "__main__" and not SEEDING:
    import atheris

    with atheris.instrument_imports(include=["xenevtchn"]):
        import xenevtchn as xe
        from xenevtchn import invariants
        from xenevtchn import snapshot as snap
else:
    import xenevtchn as xe
    from xenevtchn import invariants
    from xenevtchn import snapshot as snap

MAX_MUTATIONS = 8
LIMITS = [0, 1, 2, 3, 7, 23, 24, 31, 32, 63, 64, 255, 256, 1023, 1024, 4095, 4096, 0x7FEF, 0x7FF0,
          0xFFFF, 0x10000, 131071, 131072, 2**31 - 1, 2**32 - 1, 2**32, 2**63, -1]
OTHER_TYPES: list[Any] = [None, True, False, "", "x86_64", "AAAA", [], {}, [0, 0], 1.5]


def _base_worlds() -> list[xe.Hypervisor]:
    out = []

    hv = xe.Hypervisor()
    d0 = hv.create_domain(privileged=True, vcpus=2)
    g = hv.create_domain(vcpus=3)
    h = hv.create_domain(vcpus=1, max_evtchn_port=100)
    for _ in range(3):
        p = g.alloc_unbound(0)
        d0.bind_interdomain(g.domid, p)
    g.alloc_unbound(0)
    q = g.bind_ipi(2)
    g.send(q)
    g.bind_virq(xe.VIRQ_TIMER, 1)
    for d in (g, h):
        hv.permit_pirq(d.domid, 9)
        d.bind_pirq(9, xe.BIND_PIRQ__WILL_SHARE)
    hv.set_virq_handler(xe.VIRQ_CON_RING, h.domid)
    h.bind_virq(xe.VIRQ_CON_RING)
    d0.bind_virq(xe.VIRQ_DEBUG)
    u = h.alloc_unbound(h.domid)
    h.sched_poll([u], timeout=5000)
    hv.pause_domain(h.domid)
    d0.send(1)
    out.append(hv)

    hv = xe.Hypervisor()
    d0 = hv.create_domain(privileged=True)
    m = hv.create_domain(vcpus=2, layout="x86_32", guest="minios", max_evtchn_port=70)
    for _ in range(5):
        p = m.alloc_unbound(0)
        d0.bind_interdomain(m.domid, p)
        d0.send(p)
    m.guest.do_upcall(0)
    m.bind_ipi(1)
    out.append(hv)

    hv = xe.Hypervisor()
    d0 = hv.create_domain(privileged=True)
    f = hv.create_domain(vcpus=2)
    f.init_control(10, 0, 0)
    f.init_control(12, 64, 1)
    f.expand_array(11)
    ports = []
    for i in range(6):
        p = f.alloc_unbound(0)
        ports.append(d0.bind_interdomain(f.domid, p))
        f.set_priority(p, 3 + i % 3)
    for p in ports:
        d0.send(p)
    out.append(hv)
    return out


BASES: list[bytes] = [hv.snapshot() for hv in _base_worlds()]


class Stream:
    """The fuzzer's bytes, front to back; reads past the end give zeros."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1] if self.pos <= len(self.data) else 0

    def u16(self) -> int:
        return self.byte() | self.byte() << 8

    def below(self, n: int) -> int:
        return self.u16() % n if n > 256 else self.byte() % n


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    out, todo = [], [(node, path)]
    while todo:
        n, p = todo.pop()
        out.append(p)
        if isinstance(n, dict):
            todo.extend((v, (*p, k)) for k, v in sorted(n.items(), reverse=True))
        elif isinstance(n, list):
            todo.extend((v, (*p, i)) for i, v in reversed(list(enumerate(n))))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _mutate_doc(doc: dict, s: Stream) -> None:
    paths = _paths(doc)[1:]
    path = paths[s.below(len(paths))]
    parent, key = _get(doc, path[:-1]), path[-1]
    k = s.byte() % 8
    if k < 3:
        parent[key] = LIMITS[s.below(len(LIMITS))] + (s.byte() % 3 - 1 if k == 2 else 0)
    elif k == 3:
        parent[key] = json.loads(json.dumps(_get(doc, paths[s.below(len(paths))])))
    elif k == 4:
        # A fresh copy: the same list object placed twice (or inside itself, by a later
        # mutation) would make the document a cycle that _paths walks forever, and would
        # carry one input's mutations into the next.
        parent[key] = copy.deepcopy(OTHER_TYPES[s.below(len(OTHER_TYPES))])
    elif k == 5:
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif k == 6 and isinstance(parent, list):
        parent.insert(key, json.loads(json.dumps(parent[key])))
    elif isinstance(parent, list) and len(parent) > 1:
        j = s.below(len(parent))
        parent[key], parent[j] = parent[j], parent[key]
    else:
        old = parent[key]
        parent[key] = old + 1 if isinstance(old, int) and not isinstance(old, bool) else old


def _mutate_text(text: bytearray, s: Stream) -> bytearray:
    if not text:
        return text
    i = s.below(len(text))
    k = s.byte() % 4
    if k == 0:
        text[i] ^= 1 << (s.byte() % 8)
    elif k == 1:
        text[i:i] = bytes([b"[]{},:0\"-"[s.byte() % 9]])
    elif k == 2:
        del text[i:i + 1 + s.byte() % 8]
    else:
        n = 1 + s.byte() % 16
        text[i:i] = text[i:i + n] * (1 + s.u16() % 4096)
    return text


def _pack(text: bytes, level: int = 6) -> bytes:
    payload = zlib.compress(bytes(text), level)
    return snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def build(data: bytes) -> bytes:
    """The snapshot bytes an input stands for."""
    s = Stream(data)
    base = BASES[s.byte() % len(BASES)]
    doc = json.loads(zlib.decompress(base[snap.HEADER.size:]))
    text: bytearray | None = None
    raw: bytearray | None = None
    for _ in range(1 + s.byte() % MAX_MUTATIONS):
        if s.done:
            break
        k = s.byte() % 16
        if k < 11 and text is None:
            _mutate_doc(doc, s)
        elif k < 15:
            if text is None:
                text = bytearray(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
            text = _mutate_text(text, s)
        else:
            if raw is None:
                if text is None:
                    text = bytearray(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
                raw = bytearray(_pack(text))
            i = s.below(len(raw))
            raw[i] ^= 1 << (s.byte() % 8)
            if s.byte() & 1:              # keep the checksum right: the payload is read
                body = bytes(raw[snap.HEADER.size:])
                raw[:snap.HEADER.size] = snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(body),
                                                          zlib.crc32(body))
    if raw is not None:
        return bytes(raw)
    if text is None:
        text = bytearray(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    return _pack(text)


def run(data: bytes) -> xe.Hypervisor | None:
    """Restore the input's snapshot and check whatever restore returns."""
    blob = build(data)
    try:
        hv = xe.Hypervisor.restore(blob)
    except ValueError:
        return None
    invariants.check_world(hv)
    again = hv.snapshot()
    assert xe.Hypervisor.restore(again).snapshot() == again, "a restored world does not round-trip"
    for d in hv.domains:
        for port in range(1, min(d.ports.valid, 200)):
            try:
                d.send(port)
            except xe.EvtchnError:
                pass
        for v in range(len(d.vcpus)):
            d.guest.do_upcall(v)
    hv.advance(10**6)
    invariants.check_world(hv)
    return hv


def test_one_input(data: bytes) -> None:
    run(data)


def write_seeds(folder: Path, n: int = 40) -> None:
    """The committed seeds: each base unchanged, then ``n`` short random mutation lists."""
    import hashlib
    import random

    rng = random.Random(14)
    inputs = [bytes([b]) for b in range(len(BASES))]
    inputs += [bytes(rng.randrange(256) for _ in range(rng.randrange(6, 40))) for _ in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    for data in inputs:
        (folder / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)


def main() -> None:
    if SEEDING:    # python tests/fuzz/fuzz_restore.py --seeds tests/fuzz/restore-corpus
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
