"""Threads registering vcpu_info areas while others send to those vCPUs (native C core).

The race the spec's all-ones selector is there for (xen-hvm-and-beyond §3.3 step 9): a
sender that still reads the old vcpu_info (a legacy slot, or none at all for vCPUs 32..)
while the area moves sets its selector bit where nobody looks any more, or sets none.
Whatever the interleaving, once every thread has joined: a pending, unmasked port has its
vCPU's upcall flag set in the new area, and that vCPU's upcall finds it. No event is lost,
and the checker's rules hold.
"""

from __future__ import annotations

import threading

import pytest

import xenevtchn as xe
from xenevtchn.invariants import check_world

pytestmark = pytest.mark.usefixtures("fast_switching")   # tests/conftest.py

VCPUS = (1, 40, 41, 63)   # a legacy slot that moves, and vCPUs that start with none


def _round(seed: int) -> None:
    hv = xe.Hypervisor()
    kicks: list[int] = []
    lock = threading.Lock()

    def on_kick(v: xe.Vcpu) -> None:
        with lock:   # hooks may run on any sender's thread
            kicks.append(v.id)

    hv.on_kick = on_kick
    d = hv.create_domain(vcpus=64)
    ports = {v: [d.bind_ipi(v) for _ in range(3)] for v in VCPUS}
    for ps in ports.values():
        for p in ps:
            d.unmask(p)
    start = threading.Barrier(len(VCPUS) + 2)

    def sender(v: int) -> None:
        start.wait()
        for i in range(200):
            d.send(ports[v][(i + seed) % 3])

    def registrar(vs: tuple[int, ...], gfn: int) -> None:
        start.wait()
        for k, v in enumerate(vs):
            d.register_vcpu_info(gfn, 64 * k, v)

    threads = [threading.Thread(target=sender, args=(v,)) for v in VCPUS]
    threads += [threading.Thread(target=registrar, args=(VCPUS[0::2], 10)),
                threading.Thread(target=registrar, args=(VCPUS[1::2], 11))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check_world(hv)
    for v in VCPUS:
        assert d.vcpus[v].vcpu_info is not None
        pending = [p for p in ports[v] if d.shared_info.is_pending(p)]
        assert pending, f"vCPU {v}: a port it was sent on must still be pending"
        assert d.vcpus[v].upcall_pending == 1, f"vCPU {v}: an event was left without an upcall"
        assert v in kicks                  # the 0 -> 1 of its upcall flag was announced
        assert sorted(d.guest.do_upcall(v)) == sorted(pending)


@pytest.mark.parametrize("seed", range(12))
def test_register_while_sending(seed):
    _round(seed)


def test_two_threads_register_the_same_vcpu():
    """Exactly one registration wins; the other answers EBUSY and moves nothing."""
    for _ in range(30):
        hv = xe.Hypervisor()
        d = hv.create_domain(vcpus=40)
        results: list[object] = []
        start = threading.Barrier(2)

        def go(gfn: int) -> None:
            start.wait()
            try:
                d.register_vcpu_info(gfn, 0, 35)
                results.append(gfn)
            except xe.EvtchnError as exc:
                results.append(exc.errno)

        ts = [threading.Thread(target=go, args=(g,)) for g in (3, 4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        winners = [r for r in results if r in (3, 4)]
        assert len(winners) == 1 and results.count(16) == 1   # EBUSY
        area = d.vcpus[35].vcpu_info
        assert area is not None and bytes(area) == bytes(d.memory.page(winners[0])[0:64])
        check_world(hv)
