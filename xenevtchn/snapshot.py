"""Snapshots: ``hv.snapshot() -> bytes`` and ``Hypervisor.restore(data) -> Hypervisor``.

A snapshot holds the whole state of a hypervisor, so a simulation can be checkpointed
and forked: every domain (id, vCPUs, privilege, layout, ``max_evtchn_port``, pause count,
PIRQ grants and bindings, VIRQ tables, reset progress, guest kind), every port's record
(state, notify vCPU, remote end, VIRQ/PIRQ number, FIFO priority), the shared_info bytes,
the guest's per-vCPU scan state (Linux's fairness cursor), poll state (polling vCPUs,
the port each polls, kicked/woken bits, armed poll timers) and ``hv.now``; an HVM/PVH
domain's type, callback via, HVM params, per-vCPU upcall vectors and callback line
state (the ``hvm`` section; a domain without it is PV); the global
VIRQ handlers, host-IRQ sharing and which domain is the hardware domain.

Not captured, by design:

* the hooks ``on_kick`` / ``on_wake`` / ``on_interrupt`` / ``on_gsi`` and listeners (code,
  not state): a restored hypervisor has none;
* the ``notify`` callables of Xen-attached channels (``hv.alloc_xen_channel``): the
  channels themselves are captured (owner, port, state, peer, notify vCPU), and a
  restored one has ``notify=None``, Xen's default consumer, so a peer's send on it is
  dropped until the embedder frees it and allocates a new one;
* destroyed domains (``Domain`` objects a caller still holds answer ``ESRCH`` anyway);
* a caller's own shared_info buffer: the bytes are captured, and the restored domain gets
  them in a fresh page of its own (pass no buffer of yours to a restore);
* ``XenEvtchn`` handles: an open file descriptor and its queue cannot be forked, so
  ``snapshot()`` refuses (``ValueError``) while any port is bound through a handle.
  Close the handles first. Handles closed earlier leave nothing behind and are fine.

The format is versioned and self-describing: ``MAGIC`` (8 bytes), the format version
(uint16), flags (uint16, 0), the payload length and its CRC-32 (uint32 each, little
endian), then the payload: zlib-compressed UTF-8 JSON. No pickle: ``restore`` parses
plain data and checks every field (types, ranges, cross references) before it builds
anything, so corrupt, truncated, foreign or hostile bytes raise ``ValueError`` and never
reach the C core. The JSON's shape is checked while it is decompressed, before the parser
builds any object (``snapshot_shape``), so what restore allocates is bounded by the state
the snapshot describes, not by how much text a few compressed bytes expand to. The world
it builds must then pass ``xenevtchn.invariants.check_world`` (the rules every reachable
state keeps, which the hypercall fuzzer checks on live worlds); if it does not, restore
drops it and raises ``ValueError`` naming the broken rule. Snapshots of equal states are equal bytes.

Extending: state that only some domains have (the FIFO ABI's guest pages and control
blocks, for one) goes into a per-domain *section*: register a ``Section`` in
``SECTIONS`` with its own version, a ``capture(domain) -> dict | None`` and a
``check(data, domain_plan) -> plan`` / ``apply(domain, plan)`` pair. A snapshot names
every section it holds; a reader that lacks one refuses the snapshot.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ._native import ffi, lib
from .constants import (
    DOMID_FIRST_RESERVED,
    EVTCHN_FIFO_MAX_QUEUES,
    EVTCHN_FIFO_NR_CHANNELS,
    EVTCHNS_PER_BUCKET,
    HVM_NR_PARAMS,
    PAGE_SIZE,
    IRQ_MAX_GUESTS,
    IRQ_MAX_GUESTS_LIMIT,
    LAYOUTS,
    NR_PIRQS,
    NR_PIRQS_MAX,
    NR_VIRQS,
    SHARED_INFO_SIZE,
    MAX_VIRT_CPUS,
    VCPU_INFO_SIZE,
    XEN_LEGACY_MAX_VCPUS,
    ChannelState,
    VirqClass,
    virq_class,
)
from .domain import MAX_PORT_UNLIMITED
from .guest import GUESTS
from .invariants import InvariantError, check_world
from .snapshot_shape import MAX_TEXT, check_shape

if TYPE_CHECKING:
    from .domain import Domain
    from .hypervisor import Hypervisor

MAGIC = b"XEVTSNAP"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHII")
MAX_PAYLOAD = MAX_TEXT  # decompressed bytes we accept

# struct xe_chan as bytes (native byte order, no padding), checked against cffi's layout.
_CHAN_FIELDS = ("state", "xen_consumer", "notify_vcpu", "remote_dom", "priority", "fifo_pending",
                "remote_port", "info", "last_vcpu", "last_priority")
_CHAN = struct.Struct("=BBHHBBIIBBH4xQ")  # ... then padding (zero) and the user pointer (NULL)
assert _CHAN.size == ffi.sizeof("struct xe_chan")
assert [ffi.offsetof("struct xe_chan", f) for f in (*_CHAN_FIELDS, "last_vcpu_hi", "user")] == \
    [0, 1, 2, 4, 6, 7, 8, 12, 16, 17, 18, 24]
_CHAN_LIMITS = (0xFF, 0xFF, 0xFFFF, 0xFFFF, EVTCHN_FIFO_MAX_QUEUES - 1, 1, 0xFFFFFFFF, 0xFFFFFFFF,
                MAX_VIRT_CPUS - 1, EVTCHN_FIFO_MAX_QUEUES - 1)  # last_vcpu: the whole number
_MAX_PORTS = EVTCHN_FIFO_NR_CHANNELS  # a domain that ever used FIFO may have ports up to here
_SCAN_FIELDS = ("pending_words", "bits", "vcpu", "cursor_word", "cursor_bit", "start_w", "start_b",
                "w", "b", "i", "in_word", "end_visit", "commit", "next_word", "next_bit")
_SCAN_BELOW_WORD = ("cursor_word", "cursor_bit", "start_w", "start_b", "w", "b", "next_word", "next_bit")
_INTERDOMAIN = ChannelState.INTERDOMAIN


@dataclass(frozen=True)
class Section:
    """A per-domain part of the snapshot that only some domains need (e.g. FIFO state)."""

    version: int
    capture: Callable[[Domain], dict[str, Any] | None]       # None: nothing for this domain
    check: Callable[[dict[str, Any], dict[str, Any]], Any]    # (data, domain plan) -> plan
    apply: Callable[[Domain, Any], None]


def _capture_fifo(d: Domain) -> dict[str, Any] | None:
    f = d.fifo
    if f is None:
        return None
    for v in range(len(d.vcpus)):
        if any(f.vcpu(v).queue[q].lock for q in range(EVTCHN_FIFO_MAX_QUEUES)):  # pragma: no cover
            raise ValueError(f"domain {d.domid}: a FIFO queue is locked (a send is running)")
    return {
        "control_blocks": sorted([v, gfn, off] for v, (gfn, off) in f.control_blocks.items()),
        "array_gfns": list(f.array_gfns),
        "tails": [[int(f.vcpu(v).queue[q].tail) for q in range(EVTCHN_FIFO_MAX_QUEUES)]
                  for v in range(len(d.vcpus))],
    }


def _check_fifo(data: Any, dom: dict[str, Any]) -> dict[str, Any]:
    where = f"domain {dom['domid']}.sections.fifo"
    data = _obj(data, where, ("control_blocks", "array_gfns", "tails"))
    nv, nframes = dom["vcpus"], dom["memory"]["nr_frames"]
    cbs = {}
    for i, cb in enumerate(_list(data["control_blocks"], f"{where}.control_blocks")):
        v, gfn, off = _list(cb, f"{where}.control_blocks[{i}]", 3)
        v = _int(v, f"{where}.control_blocks[{i}].vcpu", 0, nv - 1)
        _int(gfn, f"{where}.control_blocks[{i}].gfn", 0, nframes - 1)
        _int(off, f"{where}.control_blocks[{i}].offset", 0, PAGE_SIZE - 72)
        if off % 8 or v in cbs:
            raise _fail(f"{where}.control_blocks[{i}]", "misaligned or a repeated vCPU")
        cbs[v] = (gfn, off)
    if not cbs:
        raise _fail(where, "a FIFO domain has at least one control block")
    gfns = [_int(g, f"{where}.array_gfns", 0, nframes - 1) for g in _list(data["array_gfns"], f"{where}.array_gfns")]
    if len(gfns) > EVTCHN_FIFO_NR_CHANNELS // 1024:
        raise _fail(f"{where}.array_gfns", "more than 128 pages")
    tails = []
    for v, row in enumerate(_list(data["tails"], f"{where}.tails", nv)):
        tails.append([_int(t, f"{where}.tails[{v}]", 0, 1024 * len(gfns)) for t in
                      _list(row, f"{where}.tails[{v}]", EVTCHN_FIFO_MAX_QUEUES)])
    return {"control_blocks": cbs, "array_gfns": gfns, "tails": tails}


def _apply_fifo(d: Domain, plan: dict[str, Any]) -> None:
    from .fifo import restore_state

    restore_state(d, plan["control_blocks"], plan["array_gfns"], plan["tails"])


def _capture_vcpus(d: Domain) -> dict[str, Any] | None:
    """vcpu_info registrations, and the poll/kick/wake state of vCPUs 32.. (absent for a
    domain with neither: older snapshots are such domains)."""
    t, c, nv = d._vcpu_info, d._c, len(d.vcpus)
    regs = sorted([v, gfn, off] for v, (gfn, off) in t.registered().items())
    if not regs and nv <= XEN_LEGACY_MAX_VCPUS:
        return None
    data: dict[str, Any] = {"registered": regs}
    if nv > XEN_LEGACY_MAX_VCPUS:
        words = int(c.hi_words)
        data["hi"] = {"bits": [int(x) for x in c.hi_bits[0:3 * words]],
                      "poll_evtchn": [int(x) for x in c.hi_poll_evtchn[0:nv - XEN_LEGACY_MAX_VCPUS]]}
    return data


def _check_vcpus(data: Any, dom: dict[str, Any]) -> dict[str, Any]:
    where = f"domain {dom['domid']}.sections.vcpus"
    nv, nframes = dom["vcpus"], dom["memory"]["nr_frames"]
    hi = nv - XEN_LEGACY_MAX_VCPUS
    data = _obj(data, where, ("registered", "hi") if hi > 0 else ("registered",))
    align = 8 if dom["layout"] == "x86_64" else 4
    regs: dict[int, tuple[int, int]] = {}
    listed = _list(data["registered"], f"{where}.registered")
    if len(listed) > nv:
        raise _fail(f"{where}.registered", f"{len(listed)} registrations for {nv} vCPUs")
    for i, r in enumerate(listed):
        v, gfn, off = _list(r, f"{where}.registered[{i}]", 3)
        v = _int(v, f"{where}.registered[{i}].vcpu", 0, nv - 1)
        gfn = _int(gfn, f"{where}.registered[{i}].gfn", 0, nframes - 1)
        off = _int(off, f"{where}.registered[{i}].offset", 0, PAGE_SIZE - VCPU_INFO_SIZE)
        if off % align or v in regs:
            raise _fail(f"{where}.registered[{i}]", "misaligned or a repeated vCPU")
        regs[v] = (gfn, off)
    plan: dict[str, Any] = {"registered": regs}
    if hi > 0:
        h = _obj(data["hi"], f"{where}.hi", ("bits", "poll_evtchn"))
        words = (hi + 31) // 32
        bits = [_int(x, f"{where}.hi.bits", 0, 0xFFFFFFFF) for x in _list(h["bits"], f"{where}.hi.bits", 3 * words)]
        if any(bits[m * words + w] >> min(32, hi - 32 * w) for m in range(3) for w in range(words)):
            raise _fail(f"{where}.hi.bits", "a bit names a vCPU that does not exist")
        pe = [_int(x, f"{where}.hi.poll_evtchn", -(2**31), 2**31 - 1)
              for x in _list(h["poll_evtchn"], f"{where}.hi.poll_evtchn", hi)]
        plan["hi"] = (bits, pe)
    return plan


def _apply_vcpus(d: Domain, plan: dict[str, Any]) -> None:
    """The areas' bytes came back with the domain's memory: only the pointers move."""
    t = d._vcpu_info
    for v, (gfn, off) in sorted(plan["registered"].items()):
        t.c[v] = d.memory.pin_vcpu_info(gfn) + off
        t.areas[v] = (gfn, off)
    if "hi" in plan:
        bits, pe = plan["hi"]
        c = d._c
        for i, x in enumerate(bits):
            c.hi_bits[i] = x
        for i, x in enumerate(pe):
            c.hi_poll_evtchn[i] = x
        c.hi_polling = sum(bin(x).count("1") for x in bits[:int(c.hi_words)])




def _capture_hvm(d: Domain) -> dict[str, Any] | None:
    st = d._hvm
    if st is None:
        return None
    return {"type": d.type, "via": st.via_type, "gsi": st.gsi, "pci_dev": st.pci_dev,
            "pci_intx": st.pci_intx, "vector": st.vector, "asserted": st.asserted,
            "params": sorted([i, v] for i, v in st.params.items()),
            "upcall_vectors": list(st.upcall_vectors)}


def _check_hvm(data: Any, dom: dict[str, Any]) -> dict[str, Any]:
    """An HVM/PVH domain's callback state (spec xen-hvm-and-beyond 2.1); the consistency
    of the whole (a GSI in range, PVH without a line) is the invariants' ``hvm`` rule."""
    where = f"domain {dom['domid']}.sections.hvm"
    data = _obj(data, where, ("type", "via", "gsi", "pci_dev", "pci_intx", "vector", "asserted",
                              "params", "upcall_vectors"))
    if data["type"] not in ("hvm", "pvh"):
        raise _fail(f"{where}.type", f"unknown type {data['type']!r:.20}")
    plan = {"type": data["type"], "via": _int(data["via"], f"{where}.via", 0, 3),
            "gsi": _int(data["gsi"], f"{where}.gsi", 0, 0xFF),
            "pci_dev": _int(data["pci_dev"], f"{where}.pci_dev", 0, 31),
            "pci_intx": _int(data["pci_intx"], f"{where}.pci_intx", 0, 3),
            "vector": _int(data["vector"], f"{where}.vector", 0, 0xFF),
            "asserted": _bool(data["asserted"], f"{where}.asserted")}
    params = {}
    for i, (index, value) in enumerate(_pairs(data["params"], f"{where}.params")):
        index = _int(index, f"{where}.params[{i}]", 0, HVM_NR_PARAMS - 1)
        if index in params:
            raise _fail(f"{where}.params", "repeated index")
        params[index] = _int(value, f"{where}.params[{i}]", 0, 2**64 - 1)
    plan["params"] = params
    plan["upcall_vectors"] = [_int(x, f"{where}.upcall_vectors", 0, 0xFF)
                              for x in _list(data["upcall_vectors"], f"{where}.upcall_vectors", dom["vcpus"])]
    return plan


def _apply_hvm(d: Domain, plan: dict[str, Any]) -> None:
    from .hvm import sync_kick_wake

    st = d._hvm
    assert st is not None and d.type == plan["type"]
    st.via_type, st.gsi, st.vector, st.asserted = plan["via"], plan["gsi"], plan["vector"], plan["asserted"]
    st.pci_dev, st.pci_intx = plan["pci_dev"], plan["pci_intx"]
    st.params = dict(plan["params"])
    st.upcall_vectors[:] = plan["upcall_vectors"]
    sync_kick_wake(d)


SECTIONS: dict[str, Section] = {"fifo": Section(1, _capture_fifo, _check_fifo, _apply_fifo),
                                "vcpus": Section(1, _capture_vcpus, _check_vcpus, _apply_vcpus),
                                "hvm": Section(1, _capture_hvm, _check_hvm, _apply_hvm)}


# ---- capture ------------------------------------------------------------------------------

def snapshot(hv: Hypervisor) -> bytes:
    """The whole state of ``hv`` as bytes (see the module docstring for what is in it)."""
    with hv._lock:
        state = {
            "format": "xenevtchn-snapshot",
            "version": FORMAT_VERSION,
            "hv": _capture_hv(hv),
            "domains": [_capture_domain(d) for d in hv.domains],
        }
    payload = zlib.compress(json.dumps(state, sort_keys=True, separators=(",", ":")).encode(), 6)
    return HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def _capture_hv(hv: Hypervisor) -> dict[str, Any]:
    hw = hv._hardware_domain
    return {
        "now": hv.now,
        "timer_counter": hv._seq,
        "timers": [list(t) for t in hv._timers],
        "timer_seq": sorted([domid, vcpu, seq] for (domid, vcpu), seq in hv._timer_seq.items()),
        "hardware_domain": None if hw is None else hw.domid,
        "hardware_domain_created": hv._hardware_domain_created,
        "virq_handlers": sorted([virq, d.domid] for virq, d in hv._virq_handlers.items()),
        "irq_guests": sorted([pirq, [d.domid for d in ds]] for pirq, ds in hv._irq_guests.items()),
        "irq_shareable": sorted([pirq, bool(v)] for pirq, v in hv._irq_shareable.items()),
        "irq_max_guests": hv.irq_max_guests,
    }


def _capture_domain(d: Domain) -> dict[str, Any]:
    c, pt, si = d._c, d.ports, d.shared_info
    chans = []
    raw = bytes(ffi.buffer(pt.chans, pt.chans_len * _CHAN.size))
    end = pt.valid * _CHAN.size  # records past the valid ports are all zero: skip them quickly
    if raw.count(0, end) != len(raw) - end:
        end = len(raw)
    for port, rec in enumerate(_CHAN.iter_unpack(raw[:end])):
        if not any(rec):
            continue
        if rec[11]:
            raise ValueError(
                f"domain {d.domid} port {port} is bound through a XenEvtchn handle: its file "
                "descriptor and queue cannot be captured; close the handle before taking a snapshot"
            )
        if pt.state[port] != rec[0]:  # pragma: no cover - the mirror is kept by PortTable
            raise AssertionError(f"port table mirror out of step at d{d.domid} port {port}")
        chans.append([port, *rec[:8], rec[8] | rec[10] << 8, rec[9]])  # last_vcpu whole
    sections = {}
    for name, sec in SECTIONS.items():
        data = sec.capture(d)
        if data is not None:
            sections[name] = {"version": sec.version, "data": data}
    return {
        "domid": d.domid,
        "vcpus": len(d.vcpus),
        "privileged": d.privileged,
        "layout": d.layout,
        "max_evtchn_port": None if d._port_cap == MAX_PORT_UNLIMITED else d._port_cap,
        "guest": d.guest.mode,
        "dying": bool(d.dying),
        "pause_count": d._pause_count,
        "reset_next": d._reset_next,
        "nr_pirqs": d.nr_pirqs,
        "permitted_pirqs": sorted(d._permitted_pirqs),
        "pirq_to_port": sorted([pirq, port] for pirq, port in d._pirq_to_port.items()),
        "virq_to_evtchn": [list(row) for row in d._virq_to_evtchn],
        "shared_info": base64.b64encode(bytes(si.buffer[:si.size])).decode("ascii"),
        "ports": {"valid": pt.valid, "active": pt.active, "chans": chans},
        "c": {"abi": int(c.abi), "dying": int(c.dying), "poll_mask": int(c.poll_mask),
              "poll_evtchn": [int(x) for x in c.poll_evtchn], "kicked": int(c.kicked),
              "woken": int(c.woken)},
        "scans": [{f: int(getattr(s, f)) for f in _SCAN_FIELDS} for s in d.guest._scans],
        "fifo_scans": [{"ready": int(s.ready), "reread": int(s.reread), "head": list(s.head)}
                       for s in d.guest._fifo_scans],
        "memory": {"nr_frames": d.memory.nr_frames,
                   "frames": [[gfn, base64.b64encode(bytes(d.memory.page(gfn))).decode("ascii")]
                              for gfn in sorted(d.memory._frames)]},
        "sections": sections,
    }


# ---- checking ---------------------------------------------------------------------------------

class _Bad(ValueError):
    pass


def _fail(where: str, msg: str) -> _Bad:
    return _Bad(f"corrupt snapshot: {where}: {msg}")


def _obj(v: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, "not an object")
    if set(v) != set(keys):
        missing, extra = sorted(set(keys) - set(v)), sorted(set(v) - set(keys))
        raise _fail(where, f"keys differ (missing {missing}, unexpected {extra})")
    return v


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, f"not an integer: {v!r:.40}")
    if not lo <= v <= hi:
        raise _fail(where, f"{v} is outside {lo}..{hi}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, f"not a boolean: {v!r:.40}")
    return v


def _list(v: Any, where: str, n: int | None = None) -> list[Any]:
    if not isinstance(v, list):
        raise _fail(where, "not a list")
    if n is not None and len(v) != n:
        raise _fail(where, f"{len(v)} entries, expected {n}")
    return v


def _pairs(v: Any, where: str) -> list[list[Any]]:
    out = []
    for i, p in enumerate(_list(v, where)):
        out.append(_list(p, f"{where}[{i}]", 2))
    return out


def decode(data: bytes) -> dict[str, Any]:
    """The header and payload of a snapshot, checked, as the parsed JSON document."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a snapshot is bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER.size:
        raise ValueError(f"not a xenevtchn snapshot: {len(data)} bytes is shorter than the header")
    magic, version, flags, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a xenevtchn snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise ValueError(f"snapshot format version {version} is not supported (this xenevtchn reads "
                         f"version {FORMAT_VERSION})")
    if flags != 0:
        raise ValueError(f"snapshot has unknown flags {flags:#x}")
    payload = data[HEADER.size:]
    if len(payload) != length:
        raise ValueError(f"truncated or padded snapshot: payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise ValueError("corrupt snapshot: checksum mismatch")
    check_shape(payload)      # streamed: nothing is built for a document of the wrong shape
    try:
        z = zlib.decompressobj()
        text = z.decompress(payload, MAX_PAYLOAD)
        if z.unconsumed_tail or not z.eof:
            raise ValueError("corrupt snapshot: payload too large or incomplete")
        doc = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"corrupt snapshot: {exc}") from None
    _obj(doc, "document", ("format", "version", "hv", "domains"))
    if doc["format"] != "xenevtchn-snapshot" or doc["version"] != FORMAT_VERSION:
        raise ValueError("corrupt snapshot: header and document disagree on the format")
    checked: dict[str, Any] = doc
    return checked


def _check_domain(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, dict) and "nr_pirqs" not in raw:
        raw["nr_pirqs"] = NR_PIRQS  # written before per-domain PIRQ counts: the old fixed count
    d = _obj(raw, where, ("domid", "vcpus", "privileged", "layout", "max_evtchn_port", "guest", "dying",
                          "pause_count", "reset_next", "nr_pirqs", "permitted_pirqs", "pirq_to_port",
                          "virq_to_evtchn", "shared_info", "ports", "c", "scans", "fifo_scans", "memory",
                          "sections"))
    domid = _int(d["domid"], f"{where}.domid", 0, DOMID_FIRST_RESERVED - 1)
    where = f"domain {domid}"
    nv = _int(d["vcpus"], f"{where}.vcpus", 1, MAX_VIRT_CPUS)
    _bool(d["privileged"], f"{where}.privileged")
    _bool(d["dying"], f"{where}.dying")
    if d["layout"] not in LAYOUTS:
        raise _fail(f"{where}.layout", f"unknown layout {d['layout']!r:.40}")
    if d["guest"] not in GUESTS:
        raise _fail(f"{where}.guest", f"unknown guest kind {d['guest']!r:.40}")
    nports = _MAX_PORTS
    word_bits = 64 if d["layout"] == "x86_64" else 32
    if d["max_evtchn_port"] is not None:
        _int(d["max_evtchn_port"], f"{where}.max_evtchn_port", 0, MAX_PORT_UNLIMITED - 1)
    _int(d["pause_count"], f"{where}.pause_count", 0, 2**63 - 1)
    _int(d["reset_next"], f"{where}.reset_next", 0, 2**32 - 1)
    nr_pirqs = _int(d["nr_pirqs"], f"{where}.nr_pirqs", 0, NR_PIRQS_MAX)
    pirqs = [_int(p, f"{where}.permitted_pirqs", 0, nr_pirqs - 1) for p in _list(d["permitted_pirqs"],
                                                                                   f"{where}.permitted_pirqs")]
    if len(set(pirqs)) != len(pirqs):
        raise _fail(f"{where}.permitted_pirqs", "duplicates")

    try:
        si = base64.b64decode(d["shared_info"], validate=True) if isinstance(d["shared_info"], str) else None
    except (binascii.Error, ValueError):
        si = None
    if si is None or len(si) != SHARED_INFO_SIZE[d["layout"]]:
        raise _fail(f"{where}.shared_info", f"not {SHARED_INFO_SIZE[d['layout']]} base64-encoded bytes")
    d["shared_info"] = si

    # Port records.
    pt = _obj(d["ports"], f"{where}.ports", ("valid", "active", "chans"))
    valid = _int(pt["valid"], f"{where}.ports.valid", EVTCHNS_PER_BUCKET, nports)
    if valid % EVTCHNS_PER_BUCKET:
        raise _fail(f"{where}.ports.valid", f"{valid} is not a multiple of {EVTCHNS_PER_BUCKET}")
    states = bytearray(nports)
    recs: dict[int, list[int]] = {}
    last = -1
    for i, rec in enumerate(_list(pt["chans"], f"{where}.ports.chans")):
        w = f"{where}.ports.chans[{i}]"
        rec = _list(rec, w, 1 + len(_CHAN_FIELDS))
        port = _int(rec[0], f"{w}.port", 0, nports - 1)
        if port <= last:
            raise _fail(w, "ports out of order or repeated")
        last = port
        vals = [_int(v, f"{w}.{f}", 0, top) for v, f, top in zip(rec[1:], _CHAN_FIELDS, _CHAN_LIMITS)]
        state = vals[0]
        if state > ChannelState.IPI:
            raise _fail(w, f"unknown channel state {state}")
        if state != ChannelState.FREE:
            if port >= valid:
                raise _fail(w, f"port {port} is in use but not below valid_evtchns {valid}")
            if vals[2] >= nv:
                raise _fail(w, f"notify vCPU {vals[2]} does not exist")
        if state == ChannelState.VIRQ and vals[7] >= NR_VIRQS:
            raise _fail(w, f"virq {vals[7]} out of range")
        if vals[8] >= nv:
            raise _fail(w, f"last queue's vCPU {vals[8]} does not exist")
        if vals[1] > 1:  # which states may carry it: the invariant checker's xen-consumer rule
            raise _fail(w, f"xen_consumer {vals[1]} is not a flag")
        if state == ChannelState.PIRQ and not 0 < vals[7] < nr_pirqs:
            raise _fail(w, f"pirq {vals[7]} out of range")
        if state == _INTERDOMAIN and vals[3] >= DOMID_FIRST_RESERVED:
            raise _fail(w, f"interdomain peer {vals[3]} is not a domid")
        states[port] = state
        recs[port] = vals
    if states[0] != ChannelState.RESERVED or states.count(ChannelState.RESERVED, 1):
        raise _fail(f"{where}.ports", "port 0 (and only port 0) must be reserved")
    active = len(states) - 1 - states.count(ChannelState.FREE, 1)
    if _int(pt["active"], f"{where}.ports.active", 0, nports) != active:
        raise _fail(f"{where}.ports.active", f"says {pt['active']}, the records say {active}")

    # Tables that point at ports.
    vt = _list(d["virq_to_evtchn"], f"{where}.virq_to_evtchn", nv)
    for v, row in enumerate(vt):
        for virq, port in enumerate(_list(row, f"{where}.virq_to_evtchn[{v}]", NR_VIRQS)):
            _int(port, f"{where}.virq_to_evtchn[{v}][{virq}]", 0, nports - 1)
            if port and (states[port] != ChannelState.VIRQ or recs[port][7] != virq):
                raise _fail(f"{where}.virq_to_evtchn[{v}][{virq}]", f"port {port} is not bound to that VIRQ")
    pmap = {}
    for i, (pirq, port) in enumerate(_pairs(d["pirq_to_port"], f"{where}.pirq_to_port")):
        pirq = _int(pirq, f"{where}.pirq_to_port[{i}]", 1, nr_pirqs - 1)
        port = _int(port, f"{where}.pirq_to_port[{i}]", 1, nports - 1)
        if pirq in pmap or states[port] != ChannelState.PIRQ or recs[port][7] != pirq:
            raise _fail(f"{where}.pirq_to_port[{i}]", f"port {port} is not bound to pirq {pirq}")
        pmap[pirq] = port
    d["pirq_to_port"] = pmap

    # The C-side fields and the guest's scans.
    c = _obj(d["c"], f"{where}.c", ("abi", "dying", "poll_mask", "poll_evtchn", "kicked", "woken"))
    _int(c["abi"], f"{where}.c.abi", 0, 1)
    _int(c["dying"], f"{where}.c.dying", 0, 255)
    for k in ("poll_mask", "kicked", "woken"):
        if _int(c[k], f"{where}.c.{k}", 0, 2**32 - 1) >> nv:
            raise _fail(f"{where}.c.{k}", "names a vCPU that does not exist")
    for i, x in enumerate(_list(c["poll_evtchn"], f"{where}.c.poll_evtchn", 32)):
        _int(x, f"{where}.c.poll_evtchn[{i}]", -(2**31), 2**31 - 1)
    for v, s in enumerate(_list(d["scans"], f"{where}.scans", nv)):
        s = _obj(s, f"{where}.scans[{v}]", _SCAN_FIELDS)
        for f in _SCAN_FIELDS:
            top = 2**64 - 1 if f in ("pending_words", "bits") else 2**32 - 1
            if f in _SCAN_BELOW_WORD:
                top = word_bits - 1
            _int(s[f], f"{where}.scans[{v}].{f}", 0, top)
        if s["vcpu"] != v:
            raise _fail(f"{where}.scans[{v}].vcpu", f"is {s['vcpu']}")
    for v, s in enumerate(_list(d["fifo_scans"], f"{where}.fifo_scans", nv)):
        s = _obj(s, f"{where}.fifo_scans[{v}]", ("ready", "reread", "head"))
        _int(s["ready"], f"{where}.fifo_scans[{v}].ready", 0, (1 << EVTCHN_FIFO_MAX_QUEUES) - 1)
        _int(s["reread"], f"{where}.fifo_scans[{v}].reread", 0, 1)
        for q, h in enumerate(_list(s["head"], f"{where}.fifo_scans[{v}].head", EVTCHN_FIFO_MAX_QUEUES)):
            _int(h, f"{where}.fifo_scans[{v}].head[{q}]", 0, _MAX_PORTS - 1)
    mem = _obj(d["memory"], f"{where}.memory", ("nr_frames", "frames"))
    nframes = _int(mem["nr_frames"], f"{where}.memory.nr_frames", 1, 1 << 40)
    frames = {}
    for i, (gfn, b64) in enumerate(_pairs(mem["frames"], f"{where}.memory.frames")):
        gfn = _int(gfn, f"{where}.memory.frames[{i}]", 0, nframes - 1)
        try:
            page = base64.b64decode(b64, validate=True) if isinstance(b64, str) else None
        except (binascii.Error, ValueError):
            page = None
        if gfn in frames or page is None or len(page) != PAGE_SIZE:
            raise _fail(f"{where}.memory.frames[{i}]", "a repeated frame or not 4096 base64-encoded bytes")
        frames[gfn] = page
    mem["frames"] = frames

    secs = d["sections"]
    if not isinstance(secs, dict):
        raise _fail(f"{where}.sections", "not an object")
    plans = {}
    for name, sec in secs.items():
        if name not in SECTIONS:
            raise ValueError(f"snapshot has a '{name}' section for domain {domid} that this xenevtchn "
                             "cannot restore")
        sec = _obj(sec, f"{where}.sections.{name}", ("version", "data"))
        if sec["version"] != SECTIONS[name].version:
            raise ValueError(f"snapshot's '{name}' section is version {sec['version']!r:.20}; this xenevtchn "
                             f"reads version {SECTIONS[name].version}")
        plans[name] = SECTIONS[name].check(sec["data"], d)
    if c["abi"] != ("fifo" in plans):
        raise _fail(f"{where}.c.abi", "the ABI and the FIFO section disagree")
    d["sections"] = plans
    d["_recs"] = recs
    d["_nports"] = nports
    return d


def _check(doc: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doms = [_check_domain(x, f"domains[{i}]") for i, x in enumerate(_list(doc["domains"], "domains"))]
    ids = [d["domid"] for d in doms]
    if ids != sorted(set(ids)):
        raise _fail("domains", "domids repeated or out of order")
    by_id = {d["domid"]: d for d in doms}
    for d in doms:  # an interdomain port's peer points back at it
        for port, rec in d["_recs"].items():
            if rec[0] != _INTERDOMAIN:
                continue
            peer = by_id.get(rec[3])
            prec = peer["_recs"].get(rec[6]) if peer is not None else None
            if prec is None or prec[0] != _INTERDOMAIN or prec[3] != d["domid"] or prec[6] != port:
                raise _fail(f"domain {d['domid']} port {port}",
                            f"interdomain with d{rec[3]}:{rec[6]}, which does not point back")

    if isinstance(doc["hv"], dict) and "irq_max_guests" not in doc["hv"]:
        doc["hv"]["irq_max_guests"] = IRQ_MAX_GUESTS  # written before the option existed
    h = _obj(doc["hv"], "hv", ("now", "timer_counter", "timers", "timer_seq", "hardware_domain",
                               "hardware_domain_created", "virq_handlers", "irq_guests", "irq_shareable",
                               "irq_max_guests"))
    max_guests = _int(h["irq_max_guests"], "hv.irq_max_guests", 1, IRQ_MAX_GUESTS_LIMIT)
    _int(h["now"], "hv.now", 0, 2**64 - 1)
    _int(h["timer_counter"], "hv.timer_counter", 0, 2**63 - 1)
    timers = []
    for i, t in enumerate(_list(h["timers"], "hv.timers")):
        t = _list(t, f"hv.timers[{i}]", 4)
        timers.append((_int(t[0], f"hv.timers[{i}].deadline", 0, 2**64 - 1),
                       _int(t[1], f"hv.timers[{i}].domid", 0, DOMID_FIRST_RESERVED - 1),
                       _int(t[2], f"hv.timers[{i}].vcpu", 0, MAX_VIRT_CPUS - 1),
                       _int(t[3], f"hv.timers[{i}].seq", 0, h["timer_counter"])))
    if any(timers[(i - 1) // 2] > timers[i] for i in range(1, len(timers))):
        raise _fail("hv.timers", "not a heap")
    h["timers"] = timers
    tseq = {}
    for i, t in enumerate(_list(h["timer_seq"], "hv.timer_seq")):
        t = _list(t, f"hv.timer_seq[{i}]", 3)
        key = (_int(t[0], f"hv.timer_seq[{i}]", 0, DOMID_FIRST_RESERVED - 1),
               _int(t[1], f"hv.timer_seq[{i}]", 0, MAX_VIRT_CPUS - 1))
        if key in tseq:
            raise _fail("hv.timer_seq", "repeated vCPU")
        tseq[key] = _int(t[2], f"hv.timer_seq[{i}]", 0, h["timer_counter"])
    h["timer_seq"] = tseq
    hw = h["hardware_domain"]
    if hw is not None and (_int(hw, "hv.hardware_domain", 0, 2**16) not in by_id):
        raise _fail("hv.hardware_domain", f"no domain {hw}")
    _bool(h["hardware_domain_created"], "hv.hardware_domain_created")
    handlers = {}
    for i, (virq, domid) in enumerate(_pairs(h["virq_handlers"], "hv.virq_handlers")):
        virq = _int(virq, f"hv.virq_handlers[{i}]", 0, NR_VIRQS - 1)
        if virq_class(virq) != VirqClass.GLOBAL or virq in handlers or domid not in by_id:
            raise _fail(f"hv.virq_handlers[{i}]", f"virq {virq} -> domain {domid!r:.20}")
        handlers[virq] = domid
    h["virq_handlers"] = handlers
    guests = {}
    for i, (pirq, ds) in enumerate(_pairs(h["irq_guests"], "hv.irq_guests")):
        pirq = _int(pirq, f"hv.irq_guests[{i}]", 1, NR_PIRQS_MAX - 1)
        ds = _list(ds, f"hv.irq_guests[{i}]")
        if pirq in guests or len(ds) > max_guests or len(set(map(repr, ds))) != len(ds) or \
                any(x not in by_id or isinstance(x, bool) for x in ds):
            raise _fail(f"hv.irq_guests[{i}]", "bad list of domains")
        guests[pirq] = ds
    h["irq_guests"] = guests
    share = {}
    for i, (pirq, v) in enumerate(_pairs(h["irq_shareable"], "hv.irq_shareable")):
        pirq = _int(pirq, f"hv.irq_shareable[{i}]", 1, NR_PIRQS_MAX - 1)
        if pirq in share:
            raise _fail("hv.irq_shareable", "repeated pirq")
        share[pirq] = _bool(v, f"hv.irq_shareable[{i}]")
    h["irq_shareable"] = share
    return h, doms


# ---- restore ----------------------------------------------------------------------------------

def restore(data: bytes, cls: type[Hypervisor] | None = None) -> Hypervisor:
    """A new hypervisor in exactly the state ``data`` captured (hooks unset).

    ``ValueError`` for anything that is not a complete, consistent snapshot this version
    can read, or that describes a state no sequence of calls reaches (the rules of
    ``xenevtchn.invariants``, checked on the rebuilt world, which is then dropped).
    """
    if cls is None:
        from .hypervisor import Hypervisor
        cls = Hypervisor
    doc = decode(data)
    try:
        h, doms = _check(doc)
    except (TypeError, KeyError, IndexError, AttributeError) as exc:  # shapes _check did not expect
        raise ValueError(f"corrupt snapshot: {type(exc).__name__}: {exc}") from None

    hv = cls(irq_max_guests=h["irq_max_guests"])
    for p in doms:
        d = hv.create_domain(vcpus=p["vcpus"], privileged=p["privileged"], domid=p["domid"],
                             max_evtchn_port=p["max_evtchn_port"], layout=p["layout"], guest=p["guest"],
                             memory_frames=p["memory"]["nr_frames"], nr_pirqs=p["nr_pirqs"],
                             type=p["sections"]["hvm"]["type"] if "hvm" in p["sections"] else "pv")
        _apply_domain(d, p)
    hv.now = h["now"]
    hv._seq = h["timer_counter"]
    hv._timers = list(h["timers"])
    hv._timer_seq = dict(h["timer_seq"])
    hv._hardware_domain = None if h["hardware_domain"] is None else hv._domains[h["hardware_domain"]]
    hv._hardware_domain_created = h["hardware_domain_created"]
    hv._virq_handlers = {virq: hv._domains[domid] for virq, domid in h["virq_handlers"].items()}
    hv._irq_guests = {pirq: [hv._domains[x] for x in ds] for pirq, ds in h["irq_guests"].items()}
    hv._irq_shareable = dict(h["irq_shareable"])
    try:
        check_world(hv)   # the fuzz harness's checker: only states some calls can reach
    except InvariantError as exc:   # the world was never handed out: it is simply dropped
        raise ValueError(f"corrupt snapshot: unreachable state: {exc}") from None
    return hv


def _apply_domain(d: Domain, p: dict[str, Any]) -> None:
    si = d.shared_info
    si.buffer[:si.size] = p["shared_info"]
    for gfn, page in p["memory"]["frames"].items():
        d.memory.page(gfn)[:] = page
    pt = d.ports
    top = max([p["ports"]["valid"], *(port + 1 for port in p["_recs"])])
    if top > pt.chans_len:
        pt.grow(_MAX_PORTS)
    buf = bytearray(pt.chans_len * _CHAN.size)
    for port, vals in p["_recs"].items():
        _CHAN.pack_into(buf, port * _CHAN.size, *vals[:8], vals[8] & 0xFF, vals[9], vals[8] >> 8, 0)
        pt.state[port] = vals[0]
        if vals[1]:
            d._xen_channels[port] = None  # the consumer's callable is code: not captured
    ffi.memmove(pt.chans, buf, len(buf))
    pt.valid = p["ports"]["valid"]
    pt.active = p["ports"]["active"]
    c = d._c
    c.valid_evtchns = pt.valid
    cp = p["c"]
    c.abi = cp["abi"]
    c.dying = cp["dying"]
    c.poll_mask = cp["poll_mask"]
    c.kicked = cp["kicked"]
    c.woken = cp["woken"]
    for i, x in enumerate(cp["poll_evtchn"]):
        c.poll_evtchn[i] = x
    for s, vals in zip(d.guest._scans, p["scans"]):
        for f in _SCAN_FIELDS:
            setattr(s, f, vals[f])
    for s, vals in zip(d.guest._fifo_scans, p["fifo_scans"]):
        s.ready, s.reread = vals["ready"], vals["reread"]
        for q, h in enumerate(vals["head"]):
            s.head[q] = h
    d.dying = p["dying"]
    d._pause_count = p["pause_count"]
    d._reset_next = p["reset_next"]
    d._permitted_pirqs = set(p["permitted_pirqs"])
    d._pirq_to_port = dict(p["pirq_to_port"])
    d._virq_to_evtchn[:] = [list(row) for row in p["virq_to_evtchn"]]  # in place: fast paths hold it
    for v in range(len(d.vcpus)):
        d.guest._sync_timer(v)
    lib.xe_2l_route_rebuild(d._c)   # the records were written field by field
    for name, plan in p["sections"].items():
        SECTIONS[name].apply(d, plan)
