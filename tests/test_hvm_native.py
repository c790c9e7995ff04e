"""HVM/PVH delivery in the native implementation only: listeners of the new hooks, the
owed-hook planner's retry rule, hooks with no callable set, the fast paths an HVM domain
keeps or gives up, and several threads raising events at once."""

from __future__ import annotations

import threading

import pytest

import xenevtchn as xe

VEC = 0xF3


def _pair(type_="hvm", vcpus=2):
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(vcpus=2, privileged=True)
    g = hv.create_domain(vcpus=vcpus, type=type_)
    gp, dp = [], []
    for v in range(vcpus):
        p = g.alloc_unbound(0)
        g.bind_vcpu(p, v)
        gp.append(p)
        dp.append(dom0.bind_interdomain(g.domid, p))
    dom0.guest.do_upcall(0)
    return hv, dom0, g, gp, dp


def test_interrupt_and_gsi_listeners_follow_their_hooks():
    hv, dom0, g, gp, dp = _pair()
    calls = []
    hv.on_interrupt = lambda v, vec: calls.append(("on_interrupt", v.id, vec))
    hv.add_listener("interrupt", lambda v, vec: calls.append(("a", v.id, vec)))
    hv.on_gsi = lambda d, gsi, level: calls.append(("on_gsi", gsi, level))
    hv.add_listener("gsi", lambda d, gsi, level: calls.append(("b", gsi, level)))
    g.set_upcall_vector(1, VEC)
    g.set_callback_via(9)
    calls.clear()
    dom0.send(dp[1])
    dom0.send(dp[0])
    assert calls == [("on_interrupt", 1, VEC), ("a", 1, VEC), ("on_gsi", 9, True), ("b", 9, True)]
    with pytest.raises(ValueError):
        hv.add_listener("line", print)
    with pytest.raises(TypeError):
        hv.on_gsi = 5
    with pytest.raises(TypeError):
        hv.on_interrupt = "no"


def test_the_line_moves_with_no_hook_set():
    hv, dom0, g, gp, dp = _pair()
    g.set_callback_via(9)
    dom0.send(dp[0])
    assert g.callback_asserted
    g.guest.do_upcall(0)
    g.status(gp[0])   # a hypercall: VM exit
    assert not g.callback_asserted


def test_a_retried_plan_neither_loses_nor_repeats_a_line_change():
    """run_hooks calls the plan again with the same records if it raised: the memo gives
    the same calls back, and the line change is made once."""
    hv, dom0, g, gp, dp = _pair()
    seen = []
    hv.on_gsi = lambda d, gsi, level: seen.append((gsi, level))
    g.set_callback_via(9)
    rec = (g.domid, 1, 0)          # vCPU 0 kicked: its flag went 0 -> 1
    first = hv._plan(rec)
    assert g.callback_asserted
    again = hv._plan(rec)
    assert again == first and len(first) == 2 and g.callback_asserted
    fresh = hv._plan((g.domid, 1, 0))   # a new record: the line is already up, nothing
    assert fresh == []


def test_hvm_send_skips_the_lock_free_fast_path_but_keeps_the_guest_ones():
    hv, dom0, g, gp, dp = _pair()
    pv = hv.create_domain()
    assert "send" in vars(pv) and "send" not in vars(g)   # checked class method: VM exit first
    assert "event_channel_op" not in vars(g)
    assert "do_upcall" in vars(g.guest)                    # no hypercall in it


def test_threads_raising_into_an_hvm_domain():
    """Four threads send to an HVM guest's two vCPUs (one on its own vector, one on the
    vector callback) while the guest drains: every interrupt names a vCPU and its vector,
    and nothing is left behind once all stop."""
    hv, dom0, g, gp, dp = _pair(vcpus=2)
    g.set_upcall_vector(0, VEC)
    g.set_callback_via((2 << 56) | 0x40)
    got = []
    lock = threading.Lock()

    def on_interrupt(v, vec):
        with lock:
            got.append((v.id, vec))

    hv.on_interrupt = on_interrupt
    stop = threading.Event()
    errors = []

    def sender(port):
        try:
            for _ in range(2000):
                dom0.send(port)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def drainer():
        while not stop.is_set():
            for v in (0, 1):
                g.guest.do_upcall(v)

    threads = [threading.Thread(target=sender, args=(dp[i % 2],)) for i in range(4)]
    d = threading.Thread(target=drainer)
    d.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    d.join()
    assert not errors
    assert got and set(got) <= {(0, VEC), (1, 0x40)}
    for v in (0, 1):
        g.guest.do_upcall(v)
    assert not any(g.shared_info.is_pending(p) for p in gp)
    assert not g.callback_asserted


def test_kicks_of_high_pv_vcpus_while_hvm_domains_exist():
    """With an HVM domain alive every record goes through the HVM planner, which must read
    the vCPU group of a record as the PV planner does (vCPUs 32 and up)."""
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True)
    hv.create_domain(type="hvm", vcpus=2)
    pv = hv.create_domain(vcpus=70)
    kicked: list[tuple[int, int]] = []
    hv.on_kick = lambda v: kicked.append((v.domain.domid, v.id))
    for v in (35, 69):
        pv.register_vcpu_info(gfn=3, offset=64 * (v - 34), vcpu=v)
        pv.guest.do_upcall(v)
    ports = []
    for v in (35, 69, 1):
        p = pv.alloc_unbound(dom0.domid)
        pv.bind_vcpu(p, v)
        ports.append(dom0.bind_interdomain(pv.domid, p))
    kicked.clear()
    for p in ports:
        dom0.send(p)
    assert kicked == [(pv.domid, 35), (pv.domid, 69), (pv.domid, 1)]


def test_every_injected_interrupt_runs_when_a_hook_raises_keyboardinterrupt():
    """Setting a vector callback asserts every vCPU at once (each has an event waiting): a
    hook that raises KeyboardInterrupt (a Ctrl-C landing in it) does not cost the other
    vCPUs theirs."""
    hv = xe.Hypervisor()
    g = hv.create_domain(type="hvm", vcpus=3)
    for v in range(3):
        g.send(g.bind_ipi(v))          # no callback yet: the events wait, flags set
    seen: list[int] = []

    def hook(v: xe.Vcpu, vector: int) -> None:
        seen.append(v.id)
        if v.id == 0:
            raise KeyboardInterrupt

    hv.on_interrupt = hook
    with pytest.raises(KeyboardInterrupt):
        g.set_callback_via(2 << 56 | 0xF3)     # HVM_PARAM_CALLBACK_TYPE_VECTOR, vector 0xF3
    assert seen == [0, 1, 2]
