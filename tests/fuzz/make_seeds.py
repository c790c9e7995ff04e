"""Write hand-shaped seed inputs for fuzz_hypercalls.py into the corpus (``seed-*`` files).

The fuzzer finds inputs that reach new Python code; it rarely builds the deep states the
C data path cares about (many channels open and pending, masks and unmasks racing with
sends, upcalls that handle a dozen ports). These seeds encode such scenarios with the
harness's own byte format, so the corpus replay and every fuzzing run start from them.

    python tests/fuzz/make_seeds.py tests/fuzz/corpus

Re-run it (after deleting the old ``seed-*`` files) when the harness's decoding changes.
"""

from __future__ import annotations

import collections
import hashlib
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import fuzz_hypercalls as fz  # noqa: E402

IDX = {op.__name__: fz.TABLE.index(op) for op in set(fz.TABLE)}
NR_VCPUS = [c["vcpus"] for c in fz.CONFIGS]
SELF = 5                                     # domid_word(): selector 5 is DOMID_SELF


class Encoder:
    """Bytes that the harness decodes into the named calls (see its op_* functions)."""

    def __init__(self) -> None:
        self.b = bytearray()
        self.recent = 1                      # length of World.recent (ports of binds)

    def _op(self, name: str, dom: int) -> None:
        self.b += bytes([IDX[name], dom])

    def _recent(self, back: int) -> bytes:   # word(): selector 7 picks World.recent[i]
        return bytes([7, (self.recent - 1 - back) % 256])

    def _wrapper(self, dom: int, which: int, args: bytes = b"") -> None:
        self._op("op_wrapper", dom)
        self.b += bytes([which]) + args

    def connect(self, a: int, b: int) -> None:
        """b offers a port to a (alloc_unbound), a binds it (bind_interdomain)."""
        self._wrapper(b, 0, bytes([a, SELF]))
        self.recent += 1
        self._wrapper(a, 1, bytes([b]) + self._recent(0))
        self.recent += 1

    def bind_ipi(self, d: int, vcpu: int) -> None:
        self._wrapper(d, 4, bytes([vcpu]))
        self.recent += 1

    def bind_timer(self, d: int, vcpu: int) -> None:
        self._wrapper(d, 2, bytes([0, vcpu]))
        self.recent += 1

    def bind_vcpu(self, d: int, back: int, vcpu: int) -> None:
        self._wrapper(d, 7, self._recent(back) + bytes([vcpu]))

    def close(self, d: int, back: int) -> None:
        self._wrapper(d, 5, self._recent(back))

    def send(self, d: int, back: int) -> None:
        self._op("op_send", d)
        self.b += bytes([0]) + self._recent(back)

    def timer_tick(self, d: int, vcpu: int) -> None:
        self.b += bytes([IDX["op_hv_source"], 0, d, 0, vcpu])

    def mask(self, d: int, back: int) -> None:
        self._op("op_guest_mask", d)
        self.b += bytes([0]) + self._recent(back)[1:]

    def unmask(self, d: int, back: int, vcpu: int | None) -> None:
        self._op("op_guest_unmask", d)
        self.b += bytes([0]) + self._recent(back)[1:] + bytes([0 if vcpu is None else 3 + vcpu])

    def upcall(self, d: int, vcpu: int, handler: int = 1) -> None:
        self._op("op_upcall", d)
        self.b += bytes([vcpu, handler])


def scenario(rng: random.Random) -> bytes:
    e = Encoder()
    for _ in range(rng.randrange(6, 14)):
        k = rng.randrange(10)
        a, b = rng.sample(range(4), 2) if rng.randrange(3) else (rng.randrange(4),) * 2
        if k < 3:
            e.connect(a, b)
            for _ in range(rng.randrange(1, 4)):
                e.send(a, 0)
            if rng.randrange(2):
                e.bind_vcpu(b, 1, rng.randrange(NR_VCPUS[b]))
        elif k < 5:
            e.bind_ipi(a, rng.randrange(NR_VCPUS[a]))
            e.send(a, 0)
        elif k == 5:
            v = rng.randrange(NR_VCPUS[a])
            e.bind_timer(a, v)
            e.timer_tick(a, v)
        elif k == 6:
            e.mask(a, rng.randrange(3))
            e.send(a, rng.randrange(3))
            e.unmask(a, rng.randrange(3), rng.choice([None, 0, 1]))
        elif k == 7:
            e.close(a, rng.randrange(3))
        else:
            e.upcall(a, rng.randrange(NR_VCPUS[a]), rng.randrange(2))
    for d in range(4):
        for v in range(NR_VCPUS[d]):
            e.upcall(d, v)
    return bytes(e.b)


def score(data: bytes) -> int:
    """Ports handled by upcalls (twice) plus guest masks and unmasks in one run."""
    c: collections.Counter[str] = collections.Counter()
    table = fz.TABLE

    def counted(op):
        def run(w, s):
            kind, info = op(w, s)
            if info.get("op") == "upcall":
                c["ports"] += len(info["handled"])
            elif kind == "guest" and info.get("op") in ("mask", "unmask"):
                c["guest"] += 1
            return kind, info
        return run

    wrapped = {op: counted(op) for op in set(table)}
    fz.TABLE = [wrapped[op] for op in table]
    try:
        fz.run(data)
    finally:
        fz.TABLE = table
    return 2 * c["ports"] + c["guest"]


def main(out: Path, n: int = 25, tries: int = 400) -> None:
    rng = random.Random(7)
    cands = sorted((scenario(rng) for _ in range(tries)), key=score, reverse=True)
    for data in cands[:n]:
        (out / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
