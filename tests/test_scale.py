"""Scale (issue 15, item 4): creating a domain costs the same with 10 or 10,000 others, and
the limits a scenario meets are Xen's (domain ids, ports), each named in one line.

No clocks: the set-up's cost is counted in the work it does (how many domains' shared_info
ranges a creation reads), and the results are checked against a plain model."""

from __future__ import annotations

import random

import pytest

import xenevtchn as xe
from xenevtchn.errors import EvtchnError
from xenevtchn.scenario import MAX_GUESTS, ScenarioError, default_scenario, parse_scenario
from xenevtchn.shared_info import SharedInfo


def test_domids_are_the_lowest_free_under_churn():
    """Auto domids are always the lowest one no live domain holds, whatever mix of
    automatic, explicit and destroyed domains came before (a set is the model)."""
    for seed in range(20):
        rnd = random.Random(seed)
        hv = xe.Hypervisor()
        live: set[int] = set()
        for _ in range(300):
            op = rnd.random()
            if op < 0.5:
                want = min(set(range(len(live) + 1)) - live)
                assert hv.create_domain().domid == want
                live.add(want)
            elif op < 0.65:
                domid = rnd.randrange(80)
                if domid in live:
                    with pytest.raises(EvtchnError) as e:
                        hv.create_domain(domid=domid)
                    assert e.value.errno == 17  # EEXIST
                else:
                    assert hv.create_domain(domid=domid).domid == domid
                    live.add(domid)
            elif live:
                domid = rnd.choice(sorted(live))
                hv.destroy_domain(domid)
                live.remove(domid)
        assert {d.domid for d in hv.domains} == live


def test_creation_reads_no_other_domain(monkeypatch):
    """A creation checks its shared_info against its neighbours in address order only:
    500 domains read 500 ranges (their own), not 125,000 (every pair)."""
    reads = 0
    real = SharedInfo.address_range

    def counted(self):
        nonlocal reads
        reads += 1
        return real.fget(self)

    monkeypatch.setattr(SharedInfo, "address_range", property(counted))
    hv = xe.Hypervisor()
    for _ in range(500):
        hv.create_domain()
    assert reads == 500
    for domid in range(0, 500, 2):
        hv.destroy_domain(domid)
    assert reads == 750  # a destroy reads its own range once, to forget it


def test_overlapping_shared_info_is_refused_among_many():
    """Caller buffers laid side by side in one bytearray: each neighbour is fine, any
    overlap with a live domain is refused (naming it), and a destroyed domain's buffer is
    free again."""
    size = 4096
    view = memoryview(bytearray(size * 40))
    hv = xe.Hypervisor()
    page_domid = {}
    for i in [*range(0, 40, 2), *range(1, 40, 2)]:  # every other page, then the gaps
        page_domid[i] = hv.create_domain(shared_info=view[i * size:(i + 1) * size]).domid
    used = hv.domains[0].shared_info.size  # the struct, not the page, is what is in use
    for off in (size // 2, 17 * size + 8, 39 * size - 8):
        overlapped = {page_domid[p] for p in page_domid if p * size < off + used and off < p * size + used}
        with pytest.raises(ValueError, match="in use by domain") as e:
            hv.create_domain(shared_info=view[off:off + size])
        assert int(str(e.value).rsplit(" ", 1)[1]) in overlapped
    with pytest.raises(ValueError, match=f"in use by domain {page_domid[7]}$"):
        hv.create_domain(shared_info=view[7 * size:8 * size])
    hv.destroy_domain(page_domid[7])
    assert hv.create_domain(shared_info=view[7 * size:8 * size]).domid == page_domid[7]


def test_guest_limit_is_xens_domain_ids():
    assert MAX_GUESTS == 0x7FF0 - 1  # DOMID_FIRST_RESERVED - 1: dom0 is domid 0
    with pytest.raises(ScenarioError, match=r"32,752 guests in all; at most 32,751: Xen has 32,751 "
                                            r"domain ids for guests.*DOMID_FIRST_RESERVED \(0x7FF0\)"):
        parse_scenario({"guest": [{"count": 32_000, "devices": []}, {"count": 752, "devices": []}]}, "x.toml")


def test_ten_thousand_guests_are_a_valid_scenario():
    """--guests 10000 gets past the simulator's own limits: what stops the built-in
    scenario there is dom0's 2-level port table, Xen's limit, named as such."""
    with pytest.raises(ScenarioError, match="dom0"):
        default_scenario(guests=10_000)
    sc = parse_scenario({"guest": [{"count": 10_000, "devices": []}]}, "idle.toml")
    assert sc.nr_guests == 10_000
