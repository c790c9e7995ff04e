"""Differential test of HVM/PVH domains with more than 32 vCPUs (up to 128): the native
implementation (C core) against the reference model (written from the spec), in lockstep,
on random sequences of callback changes (GSI, PCI INTx, vector, none, bad values), per-vCPU
upcall vectors, vcpu_info registrations, sends, unmasks, binds, moves, closes, polls,
upcalls, VM exits and resets, on an HVM domain of 128 vCPUs, a PVH one of 40 and an x86_32
HVM one of 70 beside a PV dom0. After every step: outcomes, hook calls (in order),
shared_info, the guest frames, every vCPU's vcpu_info, upcall flags and poll state, and
each domain's callback line and vectors must agree.

Scale with XENEVTCHN_DIFF_EXAMPLES / XENEVTCHN_DIFF_STEPS, as test_differential.py.
"""

from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import xenevtchn as native_mod
from xenevtchn import reference as ref_mod
from test_differential import Side, outcome

EXAMPLES = int(os.environ.get("XENEVTCHN_DIFF_EXAMPLES", "20"))
STEPS = int(os.environ.get("XENEVTCHN_DIFF_STEPS", "100"))
DOMS = {0: dict(vcpus=3, privileged=True, memory_frames=4),
        1: dict(vcpus=128, type="hvm", memory_frames=6),
        2: dict(vcpus=40, type="pvh", memory_frames=6),
        3: dict(vcpus=70, type="hvm", layout="x86_32", memory_frames=6)}
SIZE = {0: 3136, 1: 3136, 2: 3136, 3: 2344}
VCPUS = [0, 1, 31, 32, 33, 39, 63, 64, 69, 100, 127]
GUESTS = (1, 2, 3)
CALLBACKS = [0, 5, 47, 48, 0x105, (1 << 56) | (3 << 11) | 2, (1 << 56) | (31 << 11),
             (2 << 56) | 0xF3, (2 << 56) | 0x40, 3 << 56]
STATS = {"steps": 0, "high_interrupts": 0, "high_registered": 0}


class Hvm128Differential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.N = Side(native_mod, "native")
        self.R = Side(ref_mod, "reference")
        for domid, kw in DOMS.items():
            for s in (self.N, self.R):
                s.doms[domid] = s.hv.create_domain(domid=domid, **kw)
        self.ports: dict[int, list[int]] = {d: [] for d in DOMS}
        for a in GUESTS:   # an interdomain channel from dom0 per listed vCPU of each guest
            for v in VCPUS:
                if v < DOMS[a]["vcpus"]:
                    r = self.both(lambda s: s.doms[a].alloc_unbound(0))
                    self.track(a, r)
                    self.both(lambda s: s.doms[a].bind_vcpu(r[1], v))
                    self.track(0, self.both(lambda s: s.doms[0].bind_interdomain(a, r[1])))

    def track(self, domid: int, r: object) -> None:
        if isinstance(r, tuple) and r[0] == "int":
            self.ports[domid].append(r[1])

    def both(self, fn):
        self.N.log.clear()
        self.R.log.clear()
        rn = outcome(self.N, lambda: fn(self.N))
        rr = outcome(self.R, lambda: fn(self.R))
        assert rn == rr, f"outcome differs: native {rn!r} reference {rr!r}"
        assert self.N.log == self.R.log, f"hooks differ: native {self.N.log!r} reference {self.R.log!r}"
        STATS["high_interrupts"] += sum(1 for e in self.N.log if len(e) == 3 and e[1] >= 32
                                        and isinstance(e[2], tuple))
        return rn

    # ---- strategies ----

    def dom(self, data, guests_only=False):
        return data.draw(st.sampled_from(GUESTS if guests_only else sorted(DOMS)), label="domain")

    def vcpu(self, data, domid):
        n = DOMS[domid]["vcpus"]
        return data.draw(st.sampled_from([v for v in VCPUS if v < n] * 4 + [n, 2**32 - 1]), label="vcpu")

    def port(self, data, domid):
        known = self.ports[domid]
        return data.draw(st.sampled_from(known * 3 + [0, 4095]) if known else st.just(1), label="port")

    # ---- rules ----

    @rule(data=st.data())
    def callback(self, data):
        a = self.dom(data, guests_only=True)
        value = data.draw(st.sampled_from(CALLBACKS), label="via")
        self.both(lambda s: s.doms[a].set_callback_via(value))

    @rule(data=st.data())
    def upcall_vector(self, data):
        a = self.dom(data)
        v = self.vcpu(data, a)
        vector = data.draw(st.sampled_from([0xF3, 0x40, 0x10, 0x0F, 0]), label="vector")
        self.both(lambda s: s.doms[a].set_upcall_vector(v, vector))

    @rule(data=st.data())
    def register(self, data):
        a = self.dom(data)
        v = self.vcpu(data, a)
        gfn = data.draw(st.sampled_from([1, 2, 3, 4, 5, 6]), label="gfn")
        off = data.draw(st.sampled_from([0, 64, 128, 4032, 4033]), label="offset")
        r = self.both(lambda s: s.doms[a].register_vcpu_info(gfn, off, v))
        STATS["high_registered"] += v >= 32 and r in (None, ("int", 0))

    @rule(data=st.data())
    def send(self, data):
        a = self.dom(data)
        p = self.port(data, a)
        self.both(lambda s: s.doms[a].send(p))

    @rule(data=st.data())
    def unmask(self, data):
        a = self.dom(data)
        p = self.port(data, a)
        how = data.draw(st.sampled_from(["hypercall", "guest", "mask"]), label="how")
        if how == "hypercall":
            self.both(lambda s: s.doms[a].unmask(p))
        elif how == "guest":
            self.both(lambda s: s.doms[a].guest.unmask(p))
        else:
            self.both(lambda s: s.doms[a].guest.mask(p))

    @rule(data=st.data())
    def bind(self, data):
        a = self.dom(data)
        v = self.vcpu(data, a)
        if data.draw(st.booleans(), label="ipi"):
            self.track(a, self.both(lambda s: s.doms[a].bind_ipi(v)))
        else:
            self.track(a, self.both(lambda s: s.doms[a].bind_virq(0, v)))   # VIRQ_TIMER

    @rule(data=st.data())
    def move_or_close(self, data):
        a = self.dom(data)
        p = self.port(data, a)
        if data.draw(st.integers(0, 4), label="close") == 0:
            self.both(lambda s: s.doms[a].close(p))
        else:
            v = self.vcpu(data, a)
            self.both(lambda s: s.doms[a].bind_vcpu(p, v))

    @rule(data=st.data())
    def virq(self, data):
        a = self.dom(data)
        v = self.vcpu(data, a)
        self.both(lambda s: s.hv.send_virq(a, 0, v))

    @rule(data=st.data())
    def upcall(self, data):
        a = self.dom(data)
        v = self.vcpu(data, a)
        self.both(lambda s: s.doms[a].guest.do_upcall(v))

    @rule(data=st.data())
    def poll(self, data):
        a = self.dom(data)
        v = self.vcpu(data, a)
        ports = data.draw(st.lists(st.sampled_from(self.ports[a] or [1]), max_size=2), label="ports")
        timeout = data.draw(st.sampled_from([0, 50]), label="timeout")
        self.both(lambda s: s.doms[a].sched_poll(ports, timeout, v))

    @rule(data=st.data())
    def vm_exit(self, data):
        a = self.dom(data)
        self.both(lambda s: s.doms[a].vm_exit())

    @rule(ns=st.sampled_from([10, 100]))
    def advance(self, ns):
        self.both(lambda s: s.hv.advance(ns))

    @rule(data=st.data())
    def reset(self, data):
        if data.draw(st.integers(0, 5), label="reset") == 0:
            a = self.dom(data)
            self.both(lambda s: s.doms[a].reset())
            self.ports[a] = []

    # ---- the comparison ----

    @invariant()
    def same_state(self):
        STATS["steps"] += 1
        for domid, kw in DOMS.items():
            dn, dr = self.N.doms[domid], self.R.doms[domid]
            assert bytes(dn.shared_info.buffer[:SIZE[domid]]) == bytes(dr.shared_info.buffer[:SIZE[domid]]), \
                f"dom{domid}: shared_info differs"
            for g in range(kw["memory_frames"]):
                assert bytes(dn.memory.page(g)) == bytes(dr.memory.page(g)), f"dom{domid}: frame {g} differs"
            assert (dn.type, dn.callback_asserted) == (dr.type, dr.callback_asserted), f"dom{domid}: line differs"
            for v in range(kw["vcpus"]):
                a, b = dn.vcpus[v], dr.vcpus[v]
                assert (a.vcpu_info is None) == (b.vcpu_info is None), f"dom{domid} vCPU {v}: vcpu_info"
                if a.vcpu_info is not None:
                    assert bytes(a.vcpu_info) == bytes(b.vcpu_info), f"dom{domid} vCPU {v}: vcpu_info bytes"
                assert (a.polling, a.upcall_vector, a.upcall_pending, a.pending_sel) == \
                    (b.polling, b.upcall_vector, b.upcall_pending, b.pending_sel), f"dom{domid} vCPU {v}"


Hvm128Differential.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
    derandomize=not os.environ.get("XENEVTCHN_DIFF_RANDOM"), suppress_health_check=list(HealthCheck),
    print_blob=True,
    phases=[p for p in Phase if p != Phase.shrink or not os.environ.get("XENEVTCHN_DIFF_NOSHRINK")],
)
TestHvm128Differential = Hvm128Differential.TestCase


def test_zz_steps_ran():
    """Runs after the machine (file order): it really compared many steps, and the fixed
    profile reached registrations and interrupts of vCPUs beyond 32."""
    if STATS["steps"] == 0:  # deselected
        return
    print(f"\nHVM 128 differential: {STATS}")
    assert STATS["steps"] >= 500
    if not os.environ.get("XENEVTCHN_DIFF_RANDOM"):
        assert STATS["high_registered"] >= 5 and STATS["high_interrupts"] >= 5
