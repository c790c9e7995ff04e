"""The random numbers of ``xenevtchn simulate``: one generator, the same in Python and C.

Both scenario engines (``simulate.py`` in Python, ``csrc/engine/sim_engine.c`` in C) draw from
xoshiro256** (Blackman and Vigna) seeded through splitmix64, with the same conversions,
so a scenario and a seed give the same run, to the last count, on either engine:

* state: four splitmix64 outputs from ``seed`` (mod 2**64);
* ``random()``: ``(x >> 11) * 2**-53``, a double in [0, 1) (exact in both languages);
* ``randbelow(n)``: ``(x * n) >> 64`` (the high word of the 128-bit product), n >= 1;
* ``randint(a, b)``: ``a + randbelow(b - a + 1)``;
* ``uniform(a, b)``: ``a + (b - a) * random()`` (no fused multiply-add in C);
* ``expovariate(lambd)``: ``-log(1.0 - random()) / lambd`` (the platform's ``log``, which
  CPython's ``math.log`` calls too).

Each draw takes exactly one 64-bit output; the engines draw at the same points of the
model in the same order (see ``simulate.py``).
"""

from __future__ import annotations

import math

M64 = (1 << 64) - 1
_TWO_M53 = 2.0 ** -53


def splitmix64(x: int) -> tuple[int, int]:
    """One splitmix64 step: (the new state, the output)."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return x, z ^ (z >> 31)


class SimRandom:
    """xoshiro256** with the draws both engines use (``random.Random``-like names)."""

    __slots__ = ("_s0", "_s1", "_s2", "_s3")

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        x = seed & M64
        out = []
        for _ in range(4):
            x, z = splitmix64(x)
            out.append(z)
        self._s0, self._s1, self._s2, self._s3 = out

    def next_u64(self) -> int:
        s0, s1, s2, s3 = self._s0, self._s1, self._s2, self._s3
        r = (s1 * 5) & M64
        r = ((((r << 7) | (r >> 57)) & M64) * 9) & M64
        t = (s1 << 17) & M64
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = ((s3 << 45) | (s3 >> 19)) & M64
        self._s0, self._s1, self._s2, self._s3 = s0, s1, s2, s3
        return r

    def random(self) -> float:
        return (self.next_u64() >> 11) * _TWO_M53

    def randbelow(self, n: int) -> int:
        return (self.next_u64() * n) >> 64

    def randrange(self, n: int) -> int:
        if n < 1:
            raise ValueError(f"empty range for randrange({n})")
        return (self.next_u64() * n) >> 64

    def randint(self, a: int, b: int) -> int:
        return a + self.randrange(b - a + 1)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def expovariate(self, lambd: float) -> float:
        return -math.log(1.0 - self.random()) / lambd
