"""hv.add_listener / hv.remove_listener: several functions per hook kind, after on_kick/on_wake."""

from __future__ import annotations

import pytest

import xenevtchn as xe


def setup():
    hv = xe.Hypervisor()
    d = hv.create_domain(vcpus=2)
    return hv, d


def test_kick_listeners_run_after_on_kick_in_the_order_added():
    hv, d = setup()
    ipi = d.bind_ipi(vcpu=1)
    calls = []
    hv.on_kick = lambda v: calls.append(("on_kick", v.id))
    hv.add_listener("kick", lambda v: calls.append(("a", v.id)))
    hv.add_listener("kick", lambda v: calls.append(("b", v.id)))
    d.send(ipi)
    assert calls == [("on_kick", 1), ("a", 1), ("b", 1)]


def test_setting_on_kick_later_does_not_disconnect_a_listener():
    hv, d = setup()
    ipi = d.bind_ipi(vcpu=0)
    seen = []
    hv.add_listener("kick", lambda v: seen.append("listener"))
    hv.on_kick = lambda v: seen.append("hook")
    hv.on_kick = None
    d.send(ipi)
    assert seen == ["listener"]


def test_wake_listeners_run_after_on_wake():
    hv, d = setup()
    p = d.bind_ipi(vcpu=0)
    d.guest.mask(p)
    calls = []
    hv.add_listener("wake", lambda v: calls.append(("w", v.id)))
    hv.on_wake = lambda v: calls.append(("on_wake", v.id))
    assert not d.sched_poll([p], vcpu=0)
    d.send(p)
    assert calls == [("on_wake", 0), ("w", 0)]


def test_every_owed_call_runs_and_the_first_error_propagates():
    hv, d = setup()
    ipi = d.bind_ipi(vcpu=0)
    calls = []

    def boom1(v):
        calls.append("boom1")
        raise RuntimeError("first")

    def boom2(v):
        calls.append("boom2")
        raise KeyError("second")

    hv.on_kick = boom1
    hv.add_listener("kick", boom2)
    hv.add_listener("kick", lambda v: calls.append("last"))
    with pytest.raises(RuntimeError, match="first"):
        d.send(ipi)
    assert calls == ["boom1", "boom2", "last"]


def test_remove_listener():
    hv, d = setup()
    ipi = d.bind_ipi(vcpu=0)
    seen = []

    def f(v):
        seen.append(v.id)

    hv.add_listener("kick", f)
    hv.remove_listener("kick", f)
    d.send(ipi)
    assert seen == []
    with pytest.raises(ValueError):
        hv.remove_listener("kick", f)


def test_bad_event_or_function_is_refused():
    hv, _ = setup()
    with pytest.raises(ValueError):
        hv.add_listener("kik", print)
    with pytest.raises(TypeError):
        hv.add_listener("kick", 3)
