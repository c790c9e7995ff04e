"""Per-domain PIRQ counts, the shared-IRQ limit, and PIRQ 0 (spec xen-hvm-and-beyond §6,
issue 19 item 5), on both implementations and through every entry point.
"""

from __future__ import annotations

import errno

import pytest

from hvhelpers import raises_errno


def test_default_nr_pirqs_and_irq_max_guests(xe, hv):
    d = hv.create_domain()
    assert d.nr_pirqs == 256 == xe.NR_PIRQS
    assert hv.irq_max_guests == 32 == xe.IRQ_MAX_GUESTS


@pytest.mark.parametrize("value, exc", [(-1, ValueError), (65537, ValueError), (2**70, ValueError),
                                        (1.0, TypeError), ("8", TypeError), (None, TypeError)])
def test_nr_pirqs_range(xe, hv, value, exc):
    with pytest.raises(exc):
        hv.create_domain(nr_pirqs=value)
    assert hv.domains == ()   # nothing created


@pytest.mark.parametrize("value", [0, 1, 65536])
def test_nr_pirqs_limits_accepted(hv, value):
    assert hv.create_domain(nr_pirqs=value).nr_pirqs == value


@pytest.mark.parametrize("value, exc", [(0, ValueError), (256, ValueError), (-1, ValueError),
                                        (1.5, TypeError), ("2", TypeError)])
def test_irq_max_guests_range(xe, value, exc):
    with pytest.raises(exc):
        xe.Hypervisor(irq_max_guests=value)


@pytest.mark.parametrize("value", [1, 255])
def test_irq_max_guests_limits_accepted(xe, value):
    assert xe.Hypervisor(irq_max_guests=value).irq_max_guests == value


def test_pirq_zero_is_never_bindable(xe, via, hv):
    dom0 = hv.create_domain(privileged=True)
    domu = hv.create_domain()
    hv.permit_pirq(domu.domid, 0)              # a grant changes nothing
    for d in (dom0, domu):
        for flags in (0, 1):
            with raises_errno(xe, errno.EPERM):
                via.bind_pirq(d, 0, flags)
    assert via.bind_pirq(dom0, 1) == 1           # no port was used up


def test_pirq_at_or_past_nr_pirqs_is_einval_first(xe, via, hv):
    dom0 = hv.create_domain(privileged=True, nr_pirqs=10)
    domu = hv.create_domain(nr_pirqs=10)
    for d in (dom0, domu):
        for pirq in (10, 255, 256, 2**32 - 1):
            with raises_errno(xe, errno.EINVAL):   # before EPERM, even for dom0
                via.bind_pirq(d, pirq)
    assert via.bind_pirq(dom0, 9) == 1
    none = hv.create_domain(privileged=True, nr_pirqs=0)
    with raises_errno(xe, errno.EINVAL):           # range before the PIRQ 0 rule
        via.bind_pirq(none, 0)


def test_large_nr_pirqs(xe, hv, hooks):
    d = hv.create_domain(privileged=True, nr_pirqs=65536)
    p = d.bind_pirq(65535)
    hv.send_pirq(d.domid, 65535)
    assert d.shared_info.is_pending(p) and hooks == [("kick", 0)]
    with raises_errno(xe, errno.EINVAL):
        d.bind_pirq(65536)


def test_permit_pirq_checks_the_domains_count(xe, hv):
    d = hv.create_domain(nr_pirqs=4)
    hv.permit_pirq(d.domid, 3)
    for bad in (4, 255, 65536, -1):
        with pytest.raises(ValueError):
            hv.permit_pirq(d.domid, bad)
    with pytest.raises(TypeError):
        hv.permit_pirq(d.domid, "3")
    with raises_errno(xe, errno.ESRCH):
        hv.permit_pirq(9, 1)
    assert d.bind_pirq(3) == 1


def test_send_pirq_checks_the_domains_count(xe, hv, hooks):
    d = hv.create_domain(privileged=True, nr_pirqs=4)
    for bad in (4, 256, -1):
        with raises_errno(xe, errno.EINVAL):
            hv.send_pirq(d.domid, bad)
    hv.send_pirq(d.domid, 3)                      # not bound: dropped
    assert hooks == []


def _sharers(hv, n, pirq):
    out = []
    for _ in range(n):
        d = hv.create_domain()
        hv.permit_pirq(d.domid, pirq)
        out.append(d)
    return out


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_irq_max_guests_limits_sharing(xe, limit):
    hv = xe.Hypervisor(irq_max_guests=limit)
    doms = _sharers(hv, limit + 1, 7)
    ports = [d.bind_pirq(7, xe.BIND_PIRQ__WILL_SHARE) for d in doms[:limit]]
    with raises_errno(xe, errno.EBUSY):
        doms[limit].bind_pirq(7, xe.BIND_PIRQ__WILL_SHARE)
    doms[0].close(ports[0])                      # a close frees a place
    assert doms[limit].bind_pirq(7, xe.BIND_PIRQ__WILL_SHARE) == 1


def test_default_limit_is_32(xe, hv):
    doms = _sharers(hv, 33, 5)
    for d in doms[:32]:
        d.bind_pirq(5, 1)
    with raises_errno(xe, errno.EBUSY):
        doms[32].bind_pirq(5, 1)


def test_snapshot_carries_nr_pirqs_and_irq_max_guests():
    import xenevtchn as xe

    hv = xe.Hypervisor(irq_max_guests=2)
    a = hv.create_domain(nr_pirqs=9)
    b = hv.create_domain(nr_pirqs=300)
    for d in (a, b):
        hv.permit_pirq(d.domid, 8)
        d.bind_pirq(8, 1)
    hv2 = xe.Hypervisor.restore(hv.snapshot())
    assert hv2.irq_max_guests == 2
    assert [d.nr_pirqs for d in hv2.domains] == [9, 300]
    c = hv2.create_domain()
    hv2.permit_pirq(c.domid, 8)
    with raises_errno(xe, errno.EBUSY):          # the restored limit applies
        c.bind_pirq(8, 1)
    with pytest.raises(ValueError):
        hv2.permit_pirq(a.domid, 9)
