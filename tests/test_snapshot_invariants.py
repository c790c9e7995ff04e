"""Restore refuses states no sequence of calls reaches (issue 14, item 4): the rebuilt world
goes through ``xenevtchn.invariants.check_world``, the same checker the fuzz harness runs
on its live worlds, and the ValueError names the first broken rule."""

from __future__ import annotations

import json
import zlib

import pytest

import xenevtchn as xe
from xenevtchn import invariants
from xenevtchn import snapshot as snap

FREE, RESERVED, UNBOUND, INTERDOMAIN, PIRQ, VIRQ, IPI = range(7)
# a port record in a snapshot: [port, state, xen_consumer, notify_vcpu, remote_dom, priority,
#                                fifo_pending, remote_port, info, last_vcpu, last_priority]
STATE, XC, NOTIFY, RDOM, RPORT, INFO = 1, 2, 3, 4, 7, 8


def world() -> xe.Hypervisor:
    hv = xe.Hypervisor()
    d0 = hv.create_domain(privileged=True, vcpus=2)
    g = hv.create_domain(vcpus=1)
    p = g.alloc_unbound(0)
    d0.bind_interdomain(g.domid, p)
    g.bind_ipi(0)
    g.alloc_unbound(0)                      # waits for dom0
    hv.permit_pirq(g.domid, 9)
    g.bind_pirq(9)
    d0.bind_virq(xe.VIRQ_CON_RING)          # a global VIRQ, in its handler (the hardware domain)
    g.bind_virq(xe.VIRQ_TIMER)
    return hv


def _doc(hv: xe.Hypervisor) -> dict:
    return json.loads(zlib.decompress(hv.snapshot()[snap.HEADER.size:]))


def _encode(doc: dict) -> bytes:
    payload = zlib.compress(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    return snap.HEADER.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def _port(doc: dict, domid: int, state: int) -> list[int]:
    dom = next(d for d in doc["domains"] if d["domid"] == domid)
    return next(r for r in dom["ports"]["chans"] if r[STATE] == state)


def _free_record(doc: dict, domid: int, field: int, value: int) -> None:
    dom = next(d for d in doc["domains"] if d["domid"] == domid)
    chans = dom["ports"]["chans"]
    port = max(r[0] for r in chans) + 1
    rec = [port] + [0] * 10
    rec[field] = value
    chans.append(rec)


def _set(doc: dict, domid: int, state: int, field: int, value: int) -> None:
    _port(doc, domid, state)[field] = value


CASES = {
    "pirq claimed without a sharing flag": (lambda d: d["hv"].__setitem__("irq_shareable", []), "irq-guests"),
    "a port with xen_consumer set": (lambda d: _set(d, 1, IPI, XC, 1), "xen-consumer"),
    "a free record with a remote domain": (lambda d: _free_record(d, 1, RDOM, 5), "free-blank"),
    "a free record with a VIRQ number": (lambda d: _free_record(d, 0, INFO, 3), "free-blank"),
    "a free record notifying a missing vCPU": (lambda d: _free_record(d, 1, NOTIFY, 7), "notify-vcpu"),
    "an IPI with a remote domain": (lambda d: _set(d, 1, IPI, RDOM, 0) or _set(d, 1, IPI, RDOM, 3), "ipi"),
    "an IPI with a remote port": (lambda d: _set(d, 1, IPI, RPORT, 2), "ipi"),
    "a global VIRQ outside its handler": (lambda d: d["hv"].__setitem__("virq_handlers", [[xe.VIRQ_CON_RING, 1]]),
                                          "virq"),
    "an unbound port naming DOMID_SELF": (lambda d: _set(d, 1, UNBOUND, RDOM, 0x7FF0), "unbound"),
    "a PIRQ never permitted": (lambda d: next(x for x in d["domains"] if x["domid"] == 1)
                               .__setitem__("permitted_pirqs", []), "pirq"),
    "a timer for a missing vCPU": (lambda d: d["hv"].__setitem__("timer_seq", [[1, 5, 0]]), "timers"),
}


def test_a_real_world_passes_the_checker_and_round_trips():
    hv = world()
    invariants.check_world(hv)
    data = hv.snapshot()
    copy = xe.Hypervisor.restore(data)
    invariants.check_world(copy)
    assert copy.snapshot() == data


@pytest.mark.parametrize("name", sorted(CASES))
def test_unreachable_states_are_refused_naming_the_rule(name):
    mutate, rule = CASES[name]
    doc = _doc(world())
    mutate(doc)
    with pytest.raises(ValueError, match=rf"unreachable state.*({rule})"):
        xe.Hypervisor.restore(_encode(doc))


def test_the_next_bind_pirq_would_have_raised_keyerror():
    """Why the shareable rule matters: the world the old restore built broke later."""
    doc = _doc(world())
    doc["hv"]["irq_shareable"] = []
    with pytest.raises(ValueError, match="irq-guests"):
        xe.Hypervisor.restore(_encode(doc))
