"""The pieces both scenario engines share: the random generator and the latency histogram.

The generator's outputs are checked against published values (splitmix64 of seed
1234567) and against a second, independent reading of the xoshiro256** definition; the
histogram's buckets against their definition (every value in exactly one bucket, three
significant digits) and its percentiles against a sorted list.
"""

from __future__ import annotations

import math
import random

import pytest

from xenevtchn.latency import NR_BUCKETS, LatencyHistogram, bucket_range, index
from xenevtchn.simrng import M64, SimRandom, splitmix64


def test_splitmix64_matches_its_published_outputs():
    x, out = 1234567, []
    for _ in range(5):
        x, z = splitmix64(x)
        out.append(z)
    assert out == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                   4593380528125082431, 16408922859458223821]


def _xoshiro_reference(seed: int, n: int) -> list[int]:
    """xoshiro256** written again from its definition, on a list of four words."""
    s, x = [], seed
    for _ in range(4):
        x, z = splitmix64(x)
        s.append(z)
    rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & M64  # noqa: E731
    out = []
    for _ in range(n):
        out.append(rotl((s[1] * 5) & M64, 7) * 9 & M64)
        t = (s[1] << 17) & M64
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t  # noqa: E702
        s[3] = rotl(s[3], 45)
    return out


@pytest.mark.parametrize("seed", [0, 1, 7, 2**63 - 1, 2**64 - 1])
def test_xoshiro256starstar_is_the_definition(seed):
    r = SimRandom(seed)
    assert [r.next_u64() for _ in range(200)] == _xoshiro_reference(seed, 200)


def test_the_conversions_are_the_documented_ones():
    a, b = SimRandom(99), SimRandom(99)
    for _ in range(500):
        x = b.next_u64()
        assert a.random() == (x >> 11) * 2.0 ** -53
        x = b.next_u64()
        assert a.randrange(10) == (x * 10) >> 64
        x = b.next_u64()
        assert a.randint(500, 3000) == 500 + ((x * 2501) >> 64)
        x = b.next_u64()
        assert a.uniform(2.0, 30.0) == 2.0 + 28.0 * ((x >> 11) * 2.0 ** -53)
        x = b.next_u64()
        assert a.expovariate(1e-4) == -math.log(1.0 - (x >> 11) * 2.0 ** -53) / 1e-4


def test_draws_stay_in_range_and_spread():
    r = SimRandom(5)
    seen = [r.randrange(7) for _ in range(7000)]
    assert set(seen) == set(range(7)) and all(800 < seen.count(k) < 1200 for k in range(7))
    assert all(0.0 <= r.random() < 1.0 for _ in range(1000))
    with pytest.raises(ValueError):
        r.randrange(0)
    with pytest.raises(TypeError):
        SimRandom(1.5)  # type: ignore[arg-type]


def test_every_value_falls_in_its_own_bucket_with_three_significant_digits():
    rnd = random.Random(3)
    values = list(range(5000)) + [rnd.randrange(1 << k) for k in range(12, 64) for _ in range(50)]
    values += [2**63 - 1, 2**62, 2047, 2048, 4095, 4096]
    for v in values:
        i = index(v)
        lo, hi = bucket_range(i)
        assert 0 <= i < NR_BUCKETS and lo <= v <= hi, v
        assert hi - lo + 1 <= max(1, lo / 1024), v   # narrower than 1/1024 of its values
    # buckets are contiguous and ascending
    for i in range(1, 6000):
        assert bucket_range(i)[0] == bucket_range(i - 1)[1] + 1
    assert index(2**63 - 1) == NR_BUCKETS - 1


def test_percentiles_against_a_sorted_list():
    rnd = random.Random(11)
    for n in (1, 2, 10, 999, 20_000):
        vals = [int(rnd.expovariate(1 / 3000)) for _ in range(n)]
        h = LatencyHistogram()
        for v in vals:
            h.record(v)
        srt = sorted(vals)
        assert h.count == n and h.total == sum(vals) and h.max == srt[-1]
        for q in (0.5, 0.9, 0.99, 0.999):
            exact = srt[min(n - 1, int(q * n))]
            got = h.value_at(q)
            assert exact <= got <= srt[-1] and got - exact <= exact / 1024 + 1, (n, q)
        s = h.summary_us()
        assert list(s) == ["count", "mean", "p50", "p90", "p99", "p99.9", "max"]
        assert s["mean"] == round(sum(vals) / n / 1000, 3)
    assert LatencyHistogram().summary_us()["p99"] == 0.0


def test_memory_is_flat_in_events():
    """A million samples take no more buckets than the value range allows."""
    h = LatencyHistogram()
    rnd = random.Random(1)
    for _ in range(200_000):
        h.record(rnd.randrange(500, 60_000))
    assert len(h.counts) < 1024 * 6 + 2048
