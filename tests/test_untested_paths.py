"""Paths the coverage report showed no test reaching (issue 20), each with the exact state
it must leave:

* ``Hypervisor._after`` merging a domain the C core listed twice (once in a batch already
  taken, again before the next batch was taken);
* ``snapshot.restore`` of a FIFO domain with ports at and above 4096 (the port table must
  grow past the 2-level size before the records are written);
* ``Domain.send`` for a domain that got no fast-path slot: its error and hook branches,
  and its refusals (the checked path's ValueError, not cffi's OverflowError);
* ``snapshot.restore`` refusing malformed documents, one field at a time;
* ``EVTCHNOP_unmask`` (``d.unmask``) of a port bound through a ``XenEvtchn`` handle: the
  re-fired event goes to the handle's queue (gcov showed the C branch unreached).
"""

from __future__ import annotations

import base64
import copy
import errno
import json
import zlib
from collections import deque

import pytest

import xenevtchn as xe
import xenevtchn.domain as domain_mod
import xenevtchn.hypervisor as hv_mod
from xenevtchn import snapshot as snap
from xenevtchn._native import lib

# ---- _after: a domain listed twice ---------------------------------------------------------
# The hook runner (csrc/python/run_hooks.c) takes C's records in batches of 64; a domain
# kicked again by another thread between two takes is listed twice. Hypervisor._plan turns
# the records into calls: one visit per domain, in creation order, its bits merged.


def test_after_merges_a_domain_listed_in_two_batches():
    hv = xe.Hypervisor()
    doms = [hv.create_domain(vcpus=2) for _ in range(70)]
    calls = []
    hv.on_kick = lambda v: calls.append(("kick", v.domain.domid, v.id))
    again = doms[-2]
    # C's list is last-in first-out: the first batch holds the domains kicked last,
    # `again` among them (vCPU 0), and the second batch lists it again (vCPU 1).
    rec: list[int] = []
    for d in reversed(doms):
        rec += [d.domid, 0b01, 0]
    rec += [again.domid, 0b10, 0]
    plan = hv._plan(tuple(rec))
    for i in range(0, len(plan), 2):
        plan[i](plan[i + 1])
    want = []
    for d in doms:
        want.append(("kick", d.domid, 0))
        if d is again:
            want.append(("kick", d.domid, 1))
    assert calls == want


def test_after_merges_wakes_too():
    """The merge ORs the woken bits as well: a poller woken between two takes is woken once,
    right after its own kick."""
    hv = xe.Hypervisor()
    doms = [hv.create_domain(vcpus=2) for _ in range(3)]
    log = []
    hv.on_kick = lambda v: log.append(("kick", v.domain.domid, v.id))
    hv.on_wake = lambda v: log.append(("wake", v.domain.domid, v.id))
    poller = doms[1]
    rec = (doms[2].domid, 1, 0, poller.domid, 1, 0, doms[0].domid, 1, 0, poller.domid, 2, 2)
    plan = hv._plan(rec)
    for i in range(0, len(plan), 2):
        plan[i](plan[i + 1])
    assert log == [("kick", doms[0].domid, 0), ("kick", poller.domid, 0), ("kick", poller.domid, 1),
                   ("wake", poller.domid, 1), ("kick", doms[2].domid, 0)]


def test_hooks_owed_by_raw_c_sends_run_on_the_next_python_send():
    """Kicks recorded by C calls that run no hooks (more than one batch of them) all run,
    once each and in creation order, at the next send that runs hooks."""
    hv = xe.Hypervisor()
    doms = [hv.create_domain(vcpus=2) for _ in range(70)]
    ipis = [d.bind_ipi(0) for d in doms]
    calls = []
    hv.on_kick = lambda v: calls.append((v.domain.domid, v.id))
    for d, p in zip(doms[:-1], ipis[:-1]):
        assert lib.xe_evtchn_send(d._c, p) > 0
    doms[-1].send(ipis[-1])
    assert calls == [(d.domid, 0) for d in doms]


# ---- restore: FIFO ports at and above 4096 ------------------------------------------------


def test_restore_fifo_domain_with_ports_past_4096():
    hv = xe.Hypervisor()
    hv.create_domain(privileged=True)
    g = hv.create_domain(vcpus=1)
    assert g.init_control(0x10, 0, 0) == 17
    for i in range(5):                           # event words for ports 0..5119
        g.expand_array(0x20 + i)
    ports = [g.bind_ipi(0) for _ in range(4100)]
    assert ports == list(range(1, 4101))
    g.set_priority(4099, 3)
    g.send(4099)
    g.send(4097)
    g.guest.mask(4100)
    g.send(4100)                                 # pending but masked: not linked
    data = hv.snapshot()

    r = xe.Hypervisor.restore(data)
    assert r.snapshot() == data                  # byte for byte the same state
    rg = r.domain(g.domid)
    assert rg.ports.chans_len > 4100 and rg.status(4100).status == xe.EVTCHNSTAT_ipi
    assert rg.status(4101).status == xe.EVTCHNSTAT_closed
    assert rg.bind_ipi(0) == 4101                # the table goes on past 4096 after a restore
    assert rg.guest.do_upcall(0) == [4099, 4097]  # queue 3 first, then the default queue 7
    rg.guest.unmask(4100)                        # linked now (EVTCHNOP_unmask), then taken
    assert rg.guest.do_upcall(0) == [4100]
    rg.send(4098)
    assert rg.guest.do_upcall(0) == [4098]
    # the original is untouched by all that
    assert hv.snapshot() == data


# ---- send without a fast-path slot ----------------------------------------------------------


@pytest.fixture
def slotless(monkeypatch):
    """A hypervisor whose domains get no slot (as when every slot is held)."""
    monkeypatch.setattr(domain_mod._Slot, "take", classmethod(lambda cls, cdom: None))
    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True, vcpus=2)
    g = hv.create_domain(vcpus=2)
    assert dom0._slot is None and g._slot is None
    return hv, dom0, g


def test_slotless_send_errors(slotless):
    hv, dom0, g = slotless
    p = g.bind_ipi(1)
    before = bytes(g.shared_info.buffer)
    for port in (0, 5000, 4096, 0xFFFFFFFF, p + 1):          # reserved, past the range, free
        with pytest.raises(xe.EvtchnError) as ei:
            g.send(port)
        assert ei.value.errno == errno.EINVAL, port
    for port in (-1, 2**32, 2**64):                          # the checked path's refusal
        with pytest.raises(ValueError):
            g.send(port)
    for port in ("1", 1.0, None):
        with pytest.raises(TypeError):
            g.send(port)
    assert bytes(g.shared_info.buffer) == before
    hv.destroy_domain(g.domid)
    with pytest.raises(xe.EvtchnError) as ei:
        g.send(p)
    assert ei.value.errno == errno.ESRCH


def test_slotless_send_runs_the_hooks(slotless):
    hv, dom0, g = slotless
    local = dom0.bind_interdomain(g.domid, g.alloc_unbound(dom0.domid))
    remote = dom0.status(local).port
    g.bind_vcpu(remote, 1)
    g.guest.do_upcall(0)
    dom0.guest.do_upcall(0)                  # bind_interdomain raised dom0's end: taken
    log = []
    hv.on_kick = lambda v: log.append(("kick", v.domain.domid, v.id))
    hv.on_wake = lambda v: log.append(("wake", v.domain.domid, v.id))
    assert g.sched_poll([remote], vcpu=0) is False             # vCPU 0 polls the port
    dom0.send(local)
    assert log == [("kick", g.domid, 1), ("wake", g.domid, 0)]
    assert g.shared_info.is_pending(remote) and g.vcpus[1].upcall_pending == 1
    log.clear()
    dom0.send(local)                                             # already pending: no hook
    assert log == []
    assert g.guest.do_upcall(1) == [remote]


# ---- EVTCHNOP_unmask of a handle's port ------------------------------------------------------


def test_unmask_hypercall_of_a_handle_port_requeues_it(xe):
    hv = xe.Hypervisor()
    g = hv.create_domain()
    d0 = hv.create_domain(privileged=True)
    h = xe.XenEvtchn(g)
    try:
        hp = h.bind_unbound_port(d0.domid)
        lp = d0.bind_interdomain(g.domid, hp)
        assert h.pending() is None
        d0.send(lp)
        assert h.pending() == hp                  # taken by the driver: masked, queued
        si = g.shared_info
        assert si.is_masked(hp) and not si.is_pending(hp)
        d0.send(lp)                               # raised while masked: stays in the page
        assert h.pending() is None and si.is_pending(hp)
        g.unmask(hp)                              # the hypercall, not h.unmask()
        assert h.pending() == hp and h.pending() is None
        assert si.is_masked(hp) and not si.is_pending(hp)   # taken again by the driver
        assert g.vcpus[0].upcall_pending == 0     # the kernel's handler never saw it
        g.unmask(hp)                              # nothing pending: nothing queued
        assert h.pending() is None and not si.is_masked(hp)
    finally:
        h.close()


# ---- restore refuses malformed documents ----------------------------------------------------


def _encode(doc):
    payload = zlib.compress(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), 6)
    return snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


@pytest.fixture(scope="module")
def busy_doc():
    """A snapshot document of a world with something in every table."""
    hv = xe.Hypervisor()
    d0 = hv.create_domain(privileged=True, vcpus=2)
    g = hv.create_domain(vcpus=2)
    f = hv.create_domain(vcpus=1)
    hv.permit_pirq(g.domid, 7)
    g.bind_pirq(7, 1)
    d0.bind_interdomain(g.domid, g.alloc_unbound(d0.domid))
    g.bind_virq(0, 1)
    d0.bind_virq(2)
    hv.set_virq_handler(3, g.domid)
    g.bind_virq(3)
    f.init_control(4, 0, 0)
    f.expand_array(5)
    f.send(f.bind_ipi(0))
    d0.sched_poll([d0.bind_ipi(1)], timeout=100, vcpu=1)
    data = hv.snapshot()
    doc = snap.decode(data)
    assert _encode(doc) == data                  # the encoder above is the real one
    return doc


def _dom(doc, domid):
    return next(d for d in doc["domains"] if d["domid"] == domid)


def _chan(doc, domid, state):
    return next(c for c in _dom(doc, domid)["ports"]["chans"] if c[1] == state)


# (what is broken, a function that breaks a copy of the document, words of the error)
MALFORMED = [
    ("fifo cb misaligned", lambda d: _dom(d, 2)["sections"]["fifo"]["data"]["control_blocks"][0].__setitem__(2, 4),
     "misaligned or a repeated vCPU"),
    ("fifo cb repeated", lambda d: _dom(d, 2)["sections"]["fifo"]["data"]["control_blocks"].append([0, 4, 0]),
     "misaligned or a repeated vCPU"),
    ("fifo without cb", lambda d: _dom(d, 2)["sections"]["fifo"]["data"].__setitem__("control_blocks", []),
     "at least one control block"),
    ("fifo 129 pages", lambda d: _dom(d, 2)["sections"]["fifo"]["data"].__setitem__("array_gfns", [5] * 129),
     "more than 128 pages"),
    ("privileged not bool", lambda d: _dom(d, 1).__setitem__("privileged", 1), "not a boolean"),
    ("doc format", lambda d: d.__setitem__("format", "other"), "disagree on the format"),
    ("layout", lambda d: _dom(d, 1).__setitem__("layout", "arm"), "unknown layout"),
    ("guest kind", lambda d: _dom(d, 1).__setitem__("guest", "windows"), "unknown guest kind"),
    ("pirqs repeated", lambda d: _dom(d, 1).__setitem__("permitted_pirqs", [7, 7]), "duplicates"),
    # refused by the shape check while the text streams in: base64 is a string token's alphabet
    ("shared_info not base64", lambda d: _dom(d, 1).__setitem__("shared_info", "!!!"), "not snapshot JSON at"),
    ("shared_info short", lambda d: _dom(d, 1).__setitem__("shared_info", base64.b64encode(bytes(100)).decode()),
     "base64-encoded bytes"),
    ("ports out of order", lambda d: _dom(d, 1)["ports"]["chans"].reverse(), "out of order or repeated"),
    ("unknown state", lambda d: _dom(d, 1)["ports"]["chans"][1].__setitem__(1, 9), "unknown channel state"),
    ("port past valid", lambda d: _dom(d, 1)["ports"]["chans"].append([5000, 5, 0, 0, 0, 7, 0, 0, 0, 0, 7]),
     "not below valid_evtchns"),
    ("virq out of range", lambda d: _chan(d, 1, 5).__setitem__(8, 24), "virq 24 out of range"),
    ("last vcpu", lambda d: _chan(d, 1, 4).__setitem__(9, 5), "last queue's vCPU 5"),
    ("pirq out of range", lambda d: _chan(d, 1, 4).__setitem__(8, 256), "pirq 256 out of range"),
    ("port 0 not reserved", lambda d: _dom(d, 1)["ports"]["chans"][0].__setitem__(1, 0),
     "port 0 (and only port 0) must be reserved"),
    ("pirq map wrong", lambda d: _dom(d, 1).__setitem__("pirq_to_port", [[8, _chan(d, 1, 4)[0]]]),
     "is not bound to pirq 8"),
    ("scan vcpu", lambda d: _dom(d, 1)["scans"][1].__setitem__("vcpu", 0), "scans[1].vcpu"),
    ("frame not base64", lambda d: _dom(d, 2)["memory"]["frames"][0].__setitem__(1, "@@"),
     "not snapshot JSON at"),
    ("frame short", lambda d: _dom(d, 2)["memory"]["frames"][0].__setitem__(1, "AAAA"),
     "not 4096 base64-encoded bytes"),
    ("sections not object", lambda d: _dom(d, 1).__setitem__("sections", []), "sections: not an object"),
    ("timer_seq repeated", lambda d: d["hv"]["timer_seq"].append(list(d["hv"]["timer_seq"][0])), "repeated vCPU"),
    ("virq handler not global", lambda d: d["hv"]["virq_handlers"].append([0, 1]), "virq 0 -> domain 1"),
    ("virq handler unknown dom", lambda d: d["hv"]["virq_handlers"].__setitem__(0, [3, 9]), "virq 3 -> domain 9"),
    ("irq guests unknown dom", lambda d: d["hv"]["irq_guests"][0].__setitem__(1, [1, 9]), "bad list of domains"),
    ("irq guests repeated", lambda d: d["hv"]["irq_guests"][0].__setitem__(1, [1, 1]), "bad list of domains"),
    ("irq shareable repeated", lambda d: d["hv"]["irq_shareable"].append(list(d["hv"]["irq_shareable"][0])),
     "repeated pirq"),
    ("shape: domains not dicts", lambda d: _dom(d, 1).__setitem__("c", {"abi": 0}),
     "domains[1].c: keys differ (missing ['dying'"),
    ("shape: unhashable domid", lambda d: d["hv"]["virq_handlers"].__setitem__(0, [3, [1]]),
     "virq_handlers[0]: not a list of integers"),
    ("shape: chans rec short", lambda d: _dom(d, 1)["ports"]["chans"][1].pop(), "ports.chans[1]"),
]


@pytest.mark.parametrize("what,breaks,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_restore_refuses_malformed(busy_doc, what, breaks, words):
    doc = copy.deepcopy(busy_doc)
    breaks(doc)
    assert doc != busy_doc
    with pytest.raises(ValueError) as ei:
        xe.Hypervisor.restore(_encode(doc))
    assert "snapshot" in str(ei.value) and words in str(ei.value), str(ei.value)
    with pytest.raises(ValueError):
        snap.restore(_encode(doc))           # the module's own entry point, default class
    # and the unbroken document restores (the refusal was this field's)
    assert snap.restore(_encode(busy_doc)).snapshot() == _encode(busy_doc)


def test_restore_refuses_a_payload_that_does_not_end():
    """The zlib stream stops short (valid CRC over the bytes given): incomplete."""
    whole = zlib.compress(b'{"format":"xenevtchn-snapshot"}')
    payload = whole[:-6]                         # no end of stream
    data = snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(ValueError, match="payload too large or incomplete|keys differ"):
        xe.Hypervisor.restore(data)


def test_restore_refuses_a_payload_past_the_limit(monkeypatch):
    hv = xe.Hypervisor()
    hv.create_domain()
    data = hv.snapshot()  # of the right shape (the streaming check passes it), and > 64 bytes
    monkeypatch.setattr(snap, "MAX_PAYLOAD", 64)
    with pytest.raises(ValueError, match="payload too large or incomplete"):
        xe.Hypervisor.restore(data)

