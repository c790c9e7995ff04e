"""A restored hypervisor behaves exactly like the original, on any sequence of operations.

This reuses the differential state machine of ``test_differential.py`` (every hypercall,
raw entry point, event source, poll, time, guest poke, domain life cycle ...), but its two
sides are an original native hypervisor and ``Hypervisor.restore(original.snapshot())``
instead of native and reference. The ``fork`` rule re-forks the copy from the original
at random points, so snapshots are taken in every state the machine reaches (vCPUs
blocked in poll with armed timers, paused domains, shared PIRQs, masked pending ports,
half-scanned cursors ...). After every step, besides all the differential machine's
comparisons (outcomes, hook calls in order, shared_info bytes, polling, statuses), the
two sides' snapshots must be equal bytes, and restoring a snapshot must give it back.

Two rules exercise the guest's state, which the reference comparison cannot: Linux's
``do_upcall`` (its fairness cursor lives in the snapshot) and the guest's mask/unmask.

Scale it up like the differential test: ``XENEVTCHN_SNAP_EXAMPLES=<n>``,
``XENEVTCHN_SNAP_STEPS=<n>``.
"""

from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import invariant, rule
from test_differential import Differential, Side

import xenevtchn as native_mod
from xenevtchn.constants import VirqClass, virq_class

EXAMPLES = int(os.environ.get("XENEVTCHN_SNAP_EXAMPLES", "12"))
STEPS = int(os.environ.get("XENEVTCHN_SNAP_STEPS", "80"))
GLOBAL_VIRQS = [v for v in range(24) if virq_class(v) == VirqClass.GLOBAL]


class ForkedCopy(Differential):
    """Original (``self.N``) against a restored copy (``self.R``), in lockstep."""

    def __init__(self) -> None:
        super().__init__()  # builds native and reference sides; the reference one is replaced
        # A restored Xen-attached channel has notify=None (callables are not state): the
        # original's consumers stay silent so both sides observe the same.
        self.N.xen_silent = True
        self.forks = 0
        self.fork()

    def _restored_side(self, data: bytes) -> Side:
        side = Side.__new__(Side)
        side.m = native_mod
        side.name = "reference"  # the machine's name for its second side
        side.hv = native_mod.Hypervisor.restore(data)
        assert side.hv.on_kick is None and side.hv.on_wake is None  # hooks are not state
        side.doms = {domid: side.hv.domain(domid) for domid in self.N.doms}
        side.dead = list(self.N.dead)  # destroyed domains answer ESRCH, whoever holds them
        side.log = []
        side.boom = False
        side.xen_silent = True
        side.bufs = {}
        side.hv.on_kick = lambda v: side.hook(v, "kick")
        side.hv.on_wake = lambda v: side.hook(v, "wake")
        side.hv.on_interrupt = lambda v, vec: side.hook(v, ("int", vec))
        side.hv.on_gsi = side.gsi
        return side

    @rule()
    def fork(self) -> None:
        """Replace the copy with a fresh restore of the original's current state."""
        self.R = self._restored_side(self.N.hv.snapshot())
        # Restored domains live in fresh pages, not in the caller's buffers: compare the
        # shared_info structs (the machine always does), not the callers' whole buffers.
        self.N.bufs.clear()
        self.forks += 1

    @invariant()
    def same_snapshot(self) -> None:
        a = self.N.hv.snapshot()
        assert a == self.R.hv.snapshot(), "original and restored copy differ in state"
        assert native_mod.Hypervisor.restore(a).snapshot() == a, "snapshot -> restore -> snapshot changed it"

    @rule(data=st.data())
    def guest_upcall(self, data) -> None:
        a = self.dom(data)
        v = data.draw(st.integers(0, len(self.N.doms[a].vcpus) - 1), label="vcpu")
        self.both(lambda s: tuple(s.doms[a].guest.do_upcall(v)))

    @rule()
    def sweep(self) -> None:
        """Bring out what state hides until it is used: fire every armed poll timer, raise
        every bound port and run an upcall on every vCPU (the order shows the fairness
        cursors), and unpause every domain once (pause counts)."""
        self.both(lambda s: s.hv.advance(10_000))
        for virq in GLOBAL_VIRQS:  # who handles global VIRQs
            self.both(lambda s: s.hv.send_global_virq(virq))
        for domid in self.domids():
            for port in self.bound_ports(domid):
                self.both(lambda s: s.hv.inject(domid, port))
            for v in range(len(self.N.doms[domid].vcpus)):
                self.both(lambda s: tuple(s.doms[domid].guest.do_upcall(v)))
            self.both(lambda s: s.hv.unpause_domain(domid))
            self.both(lambda s: s.doms[domid].bind_pirq(3, 1))  # host IRQ sharing and grants

    @rule()
    def fork_and_sweep(self) -> None:
        self.fork()
        self.sweep()

    @rule(data=st.data())
    def guest_mask_unmask(self, data) -> None:
        a = self.dom(data)
        port = self.port(data, domid=a)
        unmask = data.draw(st.booleans(), label="unmask")
        vcpu = data.draw(st.sampled_from([None, 0, 1]), label="on vcpu")

        def op(s):
            g = s.doms[a].guest
            if not unmask:
                return g.mask(port)
            return g.unmask(port, vcpu=None if vcpu is None or vcpu >= len(s.doms[a].vcpus) else vcpu)

        self.both(op)


ForkedCopy.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    phases=[p for p in Phase if p != Phase.shrink or not os.environ.get("XENEVTCHN_DIFF_NOSHRINK")],
)
TestForkedCopy = ForkedCopy.TestCase
