"""The builtin ``do_upcall`` of Linux 2-level guests and the per-vCPU port maps under it.

``d.guest.do_upcall`` is a builtin (csrc/python/fast_upcall.c) that runs the whole
no-handler upcall in C; everything else goes to the checked method
``LinuxGuest.do_upcall``. These tests pin that the two are the same function: same
results, same errors, one nesting count, and that the per-vCPU maps (Linux's
cpu_evtchn_mask, kept by the port table) match the port records after every change.
"""

from __future__ import annotations

import errno
import gc
import inspect
import random
import tracemalloc
import weakref

import pytest

import xenevtchn as xe
from xenevtchn._native import ffi, lib
from xenevtchn.guest import LinuxGuest


def _world(vcpus: int = 4, seed: int = 1, n: int = 300):
    """A guest with IPIs and interdomain ports spread over its vCPUs, some moved."""
    rnd = random.Random(seed)
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True)
    g = hv.create_domain(vcpus=vcpus)
    ports = []
    for i in range(n):
        if i % 3:
            ports.append(g.bind_ipi(vcpu=rnd.randrange(vcpus)))
        else:
            r = g.alloc_unbound(dom0.domid)
            dom0.bind_interdomain(g.domid, r)
            ports.append(r)
    for p in rnd.sample([p for p in ports if g.ports.state[p] != xe.ChannelState.IPI], n // 6):
        g.bind_vcpu(p, rnd.randrange(vcpus))        # IPIs cannot move (EINVAL)
    for p in rnd.sample(ports, n // 10):
        g.close(p)
    return hv, g, [p for p in ports if g.ports.state[p]], rnd


def _raise(g, chosen):
    for p in chosen:
        g.send(p) if g.ports.state[p] == xe.ChannelState.IPI else g.shared_info.set_pending(p)


def test_a_builtin_with_the_methods_signature_and_doc():
    hv = xe.Hypervisor()
    g = hv.create_domain(vcpus=2)
    up = g.guest.do_upcall
    assert inspect.isbuiltin(up)
    assert str(inspect.signature(up)) == "(vcpu=0, handler=None)"
    assert up.__doc__.startswith("Run the event upcall")
    # Mini-OS and FIFO guests are not 2-level Linux: their do_upcall is the method.
    m = hv.create_domain(guest="minios")
    assert not inspect.isbuiltin(m.guest.do_upcall)


@pytest.mark.parametrize("seed", range(6))
def test_builtin_and_checked_method_agree(seed):
    """Two identical worlds: one upcalls through the builtin, one through the method."""
    (_, a, ports, rnd), (_, b, pb, _) = _world(seed=seed), _world(seed=seed)
    assert ports == pb
    slow = LinuxGuest.do_upcall.__get__(b.guest)
    for _round in range(25):
        chosen = rnd.sample(ports, rnd.choice([1, 2, 7, 64, 250]))
        _raise(a, chosen)
        _raise(b, chosen)
        for v in rnd.sample(range(4), 4):
            assert a.guest.do_upcall(v) == slow(v)
        assert bytes(a.shared_info.buffer) == bytes(b.shared_info.buffer)
        assert [a.guest.cursor(v) for v in range(4)] == [b.guest.cursor(v) for v in range(4)]


def test_without_the_maps_the_scan_reads_every_record():
    """A C embedder may leave vcpu_ports NULL: the scan must give the same answers."""
    (_, a, ports, rnd), (_, b, _, _) = _world(seed=7), _world(seed=7)
    b._c.vcpu_ports = ffi.NULL
    for _round in range(20):
        chosen = rnd.sample(ports, 40)
        _raise(a, chosen)
        _raise(b, chosen)
        for v in range(4):
            assert a.guest.do_upcall(v) == b.guest.do_upcall(v)
    b._c.vcpu_ports = b._vcpu_ports


def test_maps_follow_every_record_change():
    hv, g, ports, rnd = _world(seed=3)
    assert lib.xe_2l_route_check(g._c) == -1
    for _ in range(200):
        p = rnd.choice(ports)
        op = rnd.randrange(3)
        if op == 0 and g.ports.state[p] == xe.ChannelState.UNBOUND:
            g.bind_vcpu(p, rnd.randrange(4))
        elif op == 1 and g.ports.state[p]:
            g.close(p)
        else:
            ports.append(g.bind_ipi(vcpu=rnd.randrange(4)))
        assert lib.xe_2l_route_check(g._c) == -1
    g.reset()                          # EVTCHNOP_reset closes everything
    assert lib.xe_2l_route_check(g._c) == -1
    restored = xe.Hypervisor.restore(hv.snapshot())
    assert all(lib.xe_2l_route_check(d._c) == -1 for d in restored.domains)


def test_a_port_moved_to_another_vcpu_is_handled_there():
    hv = xe.Hypervisor()
    g = hv.create_domain(vcpus=2)
    p = g.alloc_unbound(0)             # notifies vCPU 0
    g.shared_info.set_pending(p)       # (raised as Xen would, on vCPU 0)
    g.bind_vcpu(p, 1)                  # the selector bit stays on vCPU 0
    assert g.guest.do_upcall(0) == []
    assert g.shared_info.is_pending(p)
    g.send(g.bind_ipi(vcpu=1))         # vCPU 1 gets a selector bit for the same word
    assert p in g.guest.do_upcall(1)


def test_arguments_the_builtin_does_not_take_go_to_the_method():
    hv = xe.Hypervisor()
    g = hv.create_domain(vcpus=2)
    ports = [g.bind_ipi(vcpu=1) for _ in range(3)]
    up = g.guest.do_upcall

    class Int(int):
        pass

    for p in ports:
        g.send(p)
    assert up(Int(1)) == ports                 # an int subclass: the method, same answer
    for p in ports:
        g.send(p)
    seen = []
    assert up(1, seen.append) == ports and seen == ports
    for p in ports:
        g.send(p)
    assert up(vcpu=True) == ports              # keywords (and a bool, as the method takes it)
    with pytest.raises(TypeError):
        up(1.0)
    with pytest.raises(ValueError):
        up(2)
    with pytest.raises(ValueError):
        up(-1)
    with pytest.raises(ValueError):
        up(2**70)
    with pytest.raises(TypeError):
        up(0, 5)                               # a handler that is not callable
    with pytest.raises(TypeError):
        up(0, None, None)
    with pytest.raises(TypeError):
        up(cpu=0)


def test_one_call_takes_more_ports_than_its_buffer():
    hv = xe.Hypervisor()
    g = hv.create_domain()
    ports = [g.bind_ipi() for _ in range(4095)]
    g.send_many(ports)
    assert g.guest.do_upcall() == ports        # 4 buffers' worth, in scan order
    assert not any(g.shared_info.is_pending(p) for p in ports)
    assert g.vcpus[0].upcall_pending == 0


def test_the_nesting_count_is_shared_with_the_method():
    """A handler (the method's upcall) calling the builtin on its own vCPU gets [], and
    the event it raised is taken by the outer upcall's next pass."""
    hv = xe.Hypervisor()
    g = hv.create_domain()
    a, b = g.bind_ipi(), g.bind_ipi()
    inner = []

    def handler(port):
        if port == a:
            g.send(b)
            inner.append(g.guest.do_upcall(0))

    g.send(a)
    assert g.guest.do_upcall(0, handler) == [a, b]
    assert inner == [[]]
    assert g.guest._scans[0].nesting == 0
    g.send(a)
    assert g.guest.do_upcall(0) == [a]         # not left "nested"


def test_a_destroyed_domains_builtin_answers_esrch():
    hv = xe.Hypervisor()
    g = hv.create_domain()
    up = g.guest.do_upcall
    hv.destroy_domain(g.domid)
    with pytest.raises(xe.EvtchnError) as e:
        up()
    assert e.value.errno == errno.ESRCH


def test_the_builtin_does_not_keep_its_domain_alive():
    """guest -> builtin -> checked method -> guest is a cycle the collector can see."""
    hv = xe.Hypervisor()
    g = hv.create_domain()
    g.send(g.bind_ipi())
    assert g.guest.do_upcall() == [1]
    refs = weakref.ref(g), weakref.ref(g.guest)
    del hv, g
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_no_memory_kept_per_call():
    hv = xe.Hypervisor()
    g = hv.create_domain(vcpus=2)
    ports = [g.bind_ipi(vcpu=p % 2) for p in range(200)]
    up = g.guest.do_upcall

    def rounds(n):
        for _ in range(n):
            g.send(ports[7])
            up(1)
            g.send_many(ports[:100])
            up(0)
            up(1)

    rounds(200)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    rounds(2000)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, grown              # 10,000 calls: no per-call leak
