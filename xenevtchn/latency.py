"""Latencies as a log-linear histogram (HdrHistogram's bucketing), the same in C and Python.

Memory stays flat however many events a run has. Values are integer nanoseconds >= 0.
Every value below 2048 has its own bucket; above that, each power of two [2**k, 2**(k+1))
is split into 1024 equal buckets, so a bucket is narrower than 1/1024 of its values
(three significant digits). ``index()`` is ``csrc/engine/sim_engine.c``'s ``hist_index``.

Percentiles are read HdrHistogram's way: the highest value of the bucket that holds the
sample of 0-based rank ``min(n - 1, int(q * n))`` (never more than the exact maximum).
"""

from __future__ import annotations

from typing import Iterable

SUB_BITS = 10                       # 1024 buckets per power of two above 2048
NR_BUCKETS = (64 - 11 + 1) << SUB_BITS  # enough for every value below 2**63
PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))


def index(v: int) -> int:
    """The bucket of value ``v`` (0 <= v < 2**63)."""
    b = (v | 2047).bit_length() - 11
    return ((b + 1) << SUB_BITS) + (v >> b) - (1 << SUB_BITS)


def bucket_range(i: int) -> tuple[int, int]:
    """The lowest and highest value that fall in bucket ``i``."""
    if i < 2048:
        return i, i
    b = (i >> SUB_BITS) - 1
    low = ((i & ((1 << SUB_BITS) - 1)) + (1 << SUB_BITS)) << b
    return low, low + (1 << b) - 1


class LatencyHistogram:
    """Counts per bucket (a dict: only buckets that were hit), with exact count, sum, max."""

    __slots__ = ("counts", "count", "total", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.max = 0

    def record(self, v: int) -> None:
        b = (v | 2047).bit_length() - 11
        i = ((b + 1) << SUB_BITS) + (v >> b) - (1 << SUB_BITS)
        c = self.counts
        c[i] = c.get(i, 0) + 1
        self.count += 1
        self.total += v
        if v > self.max:
            self.max = v

    def load(self, counts: Iterable[tuple[int, int]], count: int, total: int, vmax: int) -> None:
        """Replace the contents with buckets read from elsewhere (the C engine)."""
        self.counts = {i: n for i, n in counts if n}
        self.count, self.total, self.max = count, total, vmax

    def value_at(self, q: float) -> int:
        """The percentile ``q`` (0..1) in nanoseconds; 0 for an empty histogram."""
        n = self.count
        if not n:
            return 0
        rank = min(n - 1, int(q * n))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen > rank:
                return min(bucket_range(i)[1], self.max)
        return self.max

    def samples(self) -> list[tuple[int, int]]:
        """(bucket's lowest value, count) per bucket hit, ascending (for plots)."""
        return [(bucket_range(i)[0], self.counts[i]) for i in sorted(self.counts)]

    def summary_us(self) -> dict[str, float | int]:
        """count, mean, p50, p90, p99, p99.9 and max, in microseconds (3 decimals)."""
        out: dict[str, float | int] = {
            "count": self.count,
            "mean": round(self.total / self.count / 1000, 3) if self.count else 0.0,
        }
        for key, q in PERCENTILES:
            out[key] = round(self.value_at(q) / 1000, 3)
        out["max"] = round(self.max / 1000, 3)
        return out
