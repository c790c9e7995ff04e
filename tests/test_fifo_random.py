"""Random FIFO traffic compared with a small independent model (spec xen-hypervisor §9.3,
§9.5; guest-side §1.10), on seeded random operation sequences.

The model keeps, per port, PENDING / MASKED / LINKED, the priority, and for a linked
port the queue it was linked on (vCPU, priority at link time) and a link sequence
number. A queue is FIFO in link order and the consumer drains priority 0 first, so a
drain without side effects must hand out the vCPU's linked, pending, unmasked ports
ordered by (priority at link time, link sequence). Ready bits and upcalls: a link onto
an empty queue sets ready bit q; if that bit was clear and upcall_pending was 0, the
vCPU is kicked.
"""

from __future__ import annotations

import random

import pytest

from fifohelpers import LINKED, MASKED, PENDING, fifo_domain

VCPUS = 3
PORTS = 24


class Model:
    def __init__(self, notify):
        self.notify = notify  # port -> vCPU
        self.pending = {p: False for p in notify}
        self.masked = dict.fromkeys(notify, False)
        self.linked = dict.fromkeys(notify, False)
        self.prio = dict.fromkeys(notify, 7)
        self.where = {}  # port -> (link priority, seq)
        self.seq = 0
        self.ready = [0] * VCPUS
        self.upcall = [0] * VCPUS
        self.kicks = []

    def _link(self, p):
        v, q = self.notify[p], self.prio[p]
        empty = not any(self.linked[o] and self.notify[o] == v and self.where[o][0] == q
                        for o in self.notify)
        self.linked[p] = True
        self.where[p] = (q, self.seq)
        self.seq += 1
        if empty and not self.ready[v] >> q & 1:
            self.ready[v] |= 1 << q
            if not self.upcall[v]:
                self.upcall[v] = 1
                self.kicks.append(v)

    def send(self, p):
        self.pending[p] = True
        if not self.masked[p] and not self.linked[p]:
            self._link(p)

    def mask(self, p):
        self.masked[p] = True

    def unmask(self, p):  # guest unmask: hypercall if pending, else local clear
        if self.masked[p]:
            self.masked[p] = False
            if self.pending[p] and not self.linked[p]:
                self._link(p)

    def drain(self, v):
        order = sorted((self.where[p], p) for p in self.notify if self.linked[p] and self.notify[p] == v)
        out = []
        for _, p in order:
            self.linked[p] = False
            if self.pending[p] and not self.masked[p]:
                self.pending[p] = False
                out.append(p)
        self.ready[v] = 0
        self.upcall[v] = 0
        return out

    def word_flags(self, p):
        return (PENDING if self.pending[p] else 0) | (MASKED if self.masked[p] else 0) | (
            LINKED if self.linked[p] else 0)


@pytest.mark.parametrize("seed", range(60))
def test_random_traffic_matches_model(xe, hv, seed):
    rng = random.Random(seed)
    d, f = fifo_domain(hv, vcpus=VCPUS)
    kicks = []
    hv.on_kick = lambda vcpu: kicks.append(vcpu.id)
    notify = {}
    for _ in range(PORTS):
        v = rng.randrange(VCPUS)
        notify[d.bind_ipi(v)] = v
    m = Model(notify)
    ports = sorted(notify)
    for step in range(80):
        p = rng.choice(ports)
        op = rng.random()
        if op < 0.45:
            d.send(p)
            m.send(p)
        elif op < 0.55:
            d.guest.mask(p)
            m.mask(p)
        elif op < 0.68:
            d.guest.unmask(p)
            m.unmask(p)
        elif op < 0.78:
            q = rng.choice([0, 3, 7, 7, 15, rng.randrange(16)])
            d.set_priority(p, q)
            m.prio[p] = q
        else:
            v = rng.randrange(VCPUS)
            got = d.guest.do_upcall(v)
            assert got == m.drain(v), f"seed {seed} step {step}: drain of vCPU {v}"
        where = f"seed {seed} step {step}"
        assert [f.flags(p) for p in ports] == [m.word_flags(p) for p in ports], where
        assert [f.ready(v) for v in range(VCPUS)] == m.ready, where
        assert [d.vcpus[v].upcall_pending for v in range(VCPUS)] == m.upcall, where
        assert kicks == m.kicks, where
    for v in range(VCPUS):
        assert d.guest.do_upcall(v) == m.drain(v)
        assert all(not f.word(p) & LINKED for p in ports if notify[p] == v)
