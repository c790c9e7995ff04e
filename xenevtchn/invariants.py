"""What holds in every world that some sequence of calls can reach: one checker for all.

``check_world(hv)`` raises ``InvariantError`` (a ``ValueError``) naming the first rule a
hypervisor's state breaks. ``Hypervisor.restore`` runs it on every world it rebuilds (so a
snapshot of a state no sequence of calls reaches is refused), and the fuzz harness
(``tests/fuzz/fuzz_hypercalls.py``) runs it after every step of its live worlds.

The rules are about state the hypervisor owns: port records, the per-domain VIRQ and
PIRQ tables, the host IRQ guest lists, the global VIRQ handlers, the C core's copies of
them. A guest's shared_info page is the guest's to write, so what is in it is not an
invariant of the hypervisor (the fuzz harness checks it separately, for its own guests).

Rules (the name starts the message):

- ``domain-table``: the C core's domain table names each live domain's C struct.
- ``valid-range``: valid_evtchns is a whole number of 64-port buckets within the ABI's
  ports; nothing is written past it (records and the state mirror stay zero).
- ``port0``: port 0 is reserved and no other port is.
- ``mirror``: the Python state mirror equals each C record's state.
- ``route-map``: the guest's per-vCPU port maps agree with the records.
- ``xen-consumer``: only unbound and interdomain channels are Xen-attached
  (``hv.alloc_xen_channel`` makes them unbound; the peer's bind makes them interdomain).
- ``handle``: a port's handle pointer is set only in a domain with XenEvtchn handles.
- ``notify-vcpu``: every record's notify vCPU exists.
- ``free-blank``: a free record has no notify vCPU, remote end or VIRQ/PIRQ number.
- ``port-limit``: no port is open past the domain's max_evtchn_port or the ABI's limit.
- ``unbound``: an unbound port names a real remote domid (never DOMID_SELF) and nothing else.
- ``interdomain``: the peer is a live domain whose port points back at this one.
- ``pirq``: a PIRQ port has a PIRQ number, no remote end, the domain's PIRQ table maps the
  number to it, and an unprivileged domain was permitted that PIRQ.
- ``virq``: a VIRQ port has a VIRQ number and no remote end; the per-vCPU table maps it
  back; one port per (VIRQ, vCPU); a global VIRQ is bound only in its handler domain.
- ``ipi``: an IPI port has no remote end and no number.
- ``active``: the domain's active count is its number of open ports.
- ``virq-table`` / ``pirq-table``: every table entry points at a port bound to it.
- ``irq-guests``: each claimed host IRQ has a sharing flag and lists exactly the live
  domains that bind it (at most ``hv.irq_max_guests``, none twice); no flag without a claim.
- ``virq-handler``: handlers are live domains and handle global VIRQs only.
- ``hardware-domain``: the hardware domain, if any, is live.
- ``timers``: armed poll timers belong to vCPUs of live domains.
- ``vcpu-bits``: the C core's poll, kicked and woken masks name existing vCPUs only (vCPUs
  32.. in their own arrays, whose count of polling vCPUs adds up).
- ``vcpu-info``: every vCPU's vcpu_info is where the domain says (a registered area inside
  its memory, aligned and not crossing a page; else the legacy slot, or none from vCPU 32),
  both shared_info views use the domain's table, and exactly the registered frames are held.
- ``abi``: the C core's ABI matches whether the domain has FIFO state.
- ``hvm``: a PV domain has no HVM state; an HVM/PVH one has a vector (0 or >= 0x10) per
  vCPU, a GSI callback names a GSI in 1..47, a PVH domain has no GSI/INTx callback, and
  the C core's kick_no_wake bits (vCPUs 32.. in hi_kick_no_wake) are those the
  callback state implies.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ._native import ffi, lib
from .constants import (
    DOMID_FIRST_RESERVED,
    EVTCHN_2L_NR_CHANNELS,
    EVTCHN_2L_NR_CHANNELS_X86_32,
    EVTCHN_FIFO_NR_CHANNELS,
    EVTCHNS_PER_BUCKET,
    HVM_MIN_UPCALL_VECTOR,
    HVM_NR_GSIS,
    NR_VIRQS,
    PAGE_SIZE,
    VCPU_INFO_SIZE,
    XEN_LEGACY_MAX_VCPUS,
    ChannelState,
    VirqClass,
    virq_class,
)

if TYPE_CHECKING:
    from .domain import Domain
    from .hypervisor import Hypervisor

DOMID_SELF = 0x7FF0
FREE, RESERVED, UNBOUND, INTERDOMAIN, PIRQ, VIRQ, IPI = (int(s) for s in (
    ChannelState.FREE, ChannelState.RESERVED, ChannelState.UNBOUND, ChannelState.INTERDOMAIN,
    ChannelState.PIRQ, ChannelState.VIRQ, ChannelState.IPI))
PER_VCPU_VIRQS = frozenset(v for v in range(NR_VIRQS) if virq_class(v) == VirqClass.VCPU)
_ABI_PORTS = {"x86_64": EVTCHN_2L_NR_CHANNELS, "x86_32": EVTCHN_2L_NR_CHANNELS_X86_32}

# struct xe_chan, read in one go: these fields, in this order, from cffi's layout.
FIELDS = ("state", "xen_consumer", "notify_vcpu", "remote_dom", "remote_port", "info", "user")
CHAN_SIZE: int = ffi.sizeof("struct xe_chan")


def _chan_struct() -> tuple[struct.Struct, list[int]]:
    codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
    types = dict(ffi.typeof("struct xe_chan").fields)
    order = sorted(FIELDS, key=lambda n: ffi.offsetof("struct xe_chan", n))
    fmt, pos = "=", 0
    for name in order:
        off = ffi.offsetof("struct xe_chan", name)
        fmt += "x" * (off - pos) + codes[ffi.sizeof(types[name].type)]
        pos = off + ffi.sizeof(types[name].type)
    return struct.Struct(fmt + "x" * (CHAN_SIZE - pos)), [order.index(f) for f in FIELDS]


_CHAN, _IDX = _chan_struct()


class InvariantError(ValueError):
    """A state no sequence of calls reaches; ``rule`` names the broken rule."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule


def records(d: Domain) -> list[tuple[int, ...]]:
    """(state, xen_consumer, notify, remote_dom, remote_port, info, user) per valid port."""
    raw = ffi.buffer(d.ports.chans, d.ports.valid * CHAN_SIZE)[:]
    rows = list(_CHAN.iter_unpack(raw))
    if _IDX != list(range(len(FIELDS))):
        rows = [tuple(row[i] for i in _IDX) for row in rows]
    return rows


def is_fifo(d: Domain) -> bool:
    return int(d._c.abi) != int(lib.XE_ABI_2L)


def check_world(hv: Hypervisor, rows_of: dict[int, list[tuple[int, ...]]] | None = None) -> None:
    """Raise ``InvariantError`` for the first broken rule (see the module docstring).

    ``rows_of`` may give each live domain's ``records(d)`` by domid, already read.
    """
    live: dict[int, Domain] = dict(hv._domains)
    if rows_of is None:
        rows_of = {domid: records(d) for domid, d in live.items()}
    pirq_owners: dict[int, list[Domain]] = {}
    for domid, d in live.items():
        if d.domid != domid or d.dead:
            raise InvariantError("domain-table", f"d{domid} is listed as {d!r}")
        if hv._c.domains[domid] != d._c:
            raise InvariantError("domain-table", f"the C table's entry {domid} is not that domain")
        _check_domain(hv, d, rows_of, pirq_owners, live)
    _check_hv(hv, live, pirq_owners)


def _check_hvm(d: Domain) -> None:
    st, A, nv = d._hvm, d.domid, len(d.vcpus)
    if st is None:
        if d.type != "pv" or d._c.kick_no_wake or d._c.hi_kick_no_wake != ffi.NULL:
            raise InvariantError("hvm", f"d{A}: type {d.type!r} without HVM state")
        return
    if d.type not in ("hvm", "pvh") or st.pvh != (d.type == "pvh"):
        raise InvariantError("hvm", f"d{A}: type {d.type!r} with HVM state")
    if len(st.upcall_vectors) != nv or any(0 < x < HVM_MIN_UPCALL_VECTOR or x > 0xFF
                                           for x in st.upcall_vectors):
        raise InvariantError("hvm", f"d{A}: upcall vectors {st.upcall_vectors[:8]}")
    if not 0 <= st.via_type <= 3 or (st.via_type == 1 and not 0 < st.gsi < HVM_NR_GSIS) or \
            (st.pvh and st.via_type in (1, 2)):
        raise InvariantError("hvm", f"d{A}: callback type {st.via_type} gsi {st.gsi}")
    want, c = st.kick_no_wake(nv), d._c
    if int(c.kick_no_wake) != want & 0xFFFFFFFF:
        raise InvariantError("hvm", f"d{A}: kick_no_wake {int(c.kick_no_wake):#x}")
    # vCPUs 32..: one word per 32 in the C core's hi_kick_no_wake (NULL up to 32 vCPUs)
    words = (nv - XEN_LEGACY_MAX_VCPUS + 31) // 32 if nv > XEN_LEGACY_MAX_VCPUS else 0
    if (c.hi_kick_no_wake == ffi.NULL) != (words == 0) or \
            sum(int(c.hi_kick_no_wake[w]) << 32 * w for w in range(words)) != want >> 32:
        raise InvariantError("hvm", f"d{A}: kick_no_wake of vCPUs 32.. {want >> 32:#x} not in C")


def _check_domain(hv: Hypervisor, d: Domain, rows_of: dict[int, list[tuple[int, ...]]],
                  pirq_owners: dict[int, list[Domain]], live: dict[int, Domain]) -> None:
    A, pt, nv = d.domid, d.ports, len(d.vcpus)
    _check_hvm(d)
    rows = rows_of[A]
    fifo = is_fifo(d)
    if fifo != (d.fifo is not None):
        raise InvariantError("abi", f"d{A}: the C core's ABI is {int(d._c.abi)}, FIFO state "
                             f"{'present' if d.fifo is not None else 'absent'}")
    top = EVTCHN_FIFO_NR_CHANNELS if fifo else _ABI_PORTS[d.layout]
    if pt.valid % EVTCHNS_PER_BUCKET or not EVTCHNS_PER_BUCKET <= pt.valid <= min(top, pt.chans_len) \
            or int(d._c.valid_evtchns) != pt.valid:
        raise InvariantError("valid-range", f"d{A}: valid_evtchns {pt.valid} (C {int(d._c.valid_evtchns)})")
    past = ffi.buffer(pt.chans, pt.chans_len * CHAN_SIZE)[pt.valid * CHAN_SIZE:]
    if past.count(0) != len(past) or pt.state.count(0, pt.valid) != len(pt.state) - pt.valid:
        raise InvariantError("valid-range", f"d{A}: a record past valid_evtchns {pt.valid} was written")
    bad = lib.xe_2l_route_check(d._c)
    if bad >= 0:
        raise InvariantError("route-map", f"d{A}: port {bad}'s per-vCPU map bits disagree with its record")
    if rows[0][0] != RESERVED:
        raise InvariantError("port0", f"d{A}: port 0 is not reserved")
    for bits in ("poll_mask", "kicked", "woken"):
        if int(getattr(d._c, bits)) >> nv:
            raise InvariantError("vcpu-bits", f"d{A}: {bits} names a vCPU that does not exist")
    limit = min(top - 1, d._port_cap)  # the cap asked for at creation (unlimited: the ABI's)
    active = 0
    virq_ports: dict[tuple[int, int], int] = {}
    for p, row in enumerate(rows):
        state, xc, notify, rdom, rport, info, user = row
        where = f"d{A} port {p}"
        if pt.state[p] != state:
            raise InvariantError("mirror", f"{where}: the mirror says {pt.state[p]}, the record {state}")
        if xc and state not in (UNBOUND, INTERDOMAIN):
            raise InvariantError("xen-consumer", f"{where}: a Xen-attached channel in state {state} "
                                 "(only unbound or interdomain ones exist)")
        if user and not d._handles:
            raise InvariantError("handle", f"{where} has a handle pointer but the domain has no handles")
        if notify >= nv:
            raise InvariantError("notify-vcpu", f"{where}: notify vCPU {notify} does not exist")
        if p == 0:
            continue
        if state == RESERVED or state > IPI:
            raise InvariantError("port0", f"{where}: state {state}")
        if state == FREE:
            if notify or rdom or rport or info or user:
                raise InvariantError("free-blank", f"{where} is free but its record is not blank {row[:6]}")
            continue
        active += 1
        if p > limit:
            raise InvariantError("port-limit", f"{where} is open past the limit {limit}")
        if state == UNBOUND:
            # a Xen-attached channel keeps its remote id as given (Xen translates no DOMID_SELF)
            if (rdom == DOMID_SELF and not xc) or rport or info:
                raise InvariantError("unbound", f"{where}: remote {rdom}:{rport}, number {info}")
        elif state == INTERDOMAIN:
            peer = rows_of.get(rdom)
            if info or peer is None or (rdom, rport) == (A, p) or rport >= len(peer) or \
                    peer[rport][0] != INTERDOMAIN or peer[rport][3] != A or peer[rport][4] != p:
                raise InvariantError("interdomain", f"{where}: its peer d{rdom}:{rport} does not point back")
        elif state == PIRQ:
            if not 0 < info < d.nr_pirqs or rdom or rport or d._pirq_to_port.get(info) != p:
                raise InvariantError("pirq", f"{where}: pirq {info}, the table says "
                                     f"{d._pirq_to_port.get(info)}")
            if d._hvm is None:   # HVM/PVH bind no host IRQ and need no grant
                if not d.privileged and info not in d._permitted_pirqs:
                    raise InvariantError("pirq", f"{where}: pirq {info} was never permitted to d{A}")
                pirq_owners.setdefault(info, []).append(d)
        elif state == VIRQ:
            v = notify if info in PER_VCPU_VIRQS else 0
            if info >= NR_VIRQS or rdom or rport or d._virq_to_evtchn[v][info] != p or \
                    (info, v) in virq_ports:
                raise InvariantError("virq", f"{where}: virq {info} on vCPU {v}; the virq table says "
                                     f"{d._virq_to_evtchn[v][info] if info < NR_VIRQS else None}")
            virq_ports[(info, v)] = p
            if virq_class(info) == VirqClass.GLOBAL and hv._virq_handler(info) is not d:
                raise InvariantError("virq", f"{where}: global virq {info} is bound outside its handler domain")
        elif rdom or rport or info:     # IPI
            raise InvariantError("ipi", f"{where}: remote {rdom}:{rport}, number {info}")
    if pt.active != active:
        raise InvariantError("active", f"d{A}: active {pt.active}, counted {active}")
    if len(d._virq_to_evtchn) != nv:
        raise InvariantError("virq-table", f"d{A}: {len(d._virq_to_evtchn)} rows for {nv} vCPUs")
    for v, table in enumerate(d._virq_to_evtchn):
        for virq, port in enumerate(table):
            if port and (virq_ports.get((virq, v)) != port or (v and virq not in PER_VCPU_VIRQS)):
                raise InvariantError("virq-table", f"d{A}: virq table {v}/{virq} -> {port}")
    for pirq, port in d._pirq_to_port.items():
        if not (0 < port < len(rows) and rows[port][0] == PIRQ and rows[port][5] == pirq):
            raise InvariantError("pirq-table", f"d{A}: pirq {pirq} -> port {port}")
    _check_vcpu_info(d)


def _address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


def _check_vcpu_info(d: Domain) -> None:
    """Each vCPU's vcpu_info is where its registration (or its legacy slot, or none for
    vCPUs 32..) says, in both views of shared_info; vCPUs 32..'s poll state adds up."""
    A, nv, t = d.domid, len(d.vcpus), d._vcpu_info
    n = max(nv, XEN_LEGACY_MAX_VCPUS)
    for s in (d.shared_info._s, ffi.addressof(d._c, "si")):
        if s.vcpu_info != t.c or s.nr_vcpu_info != n:
            raise InvariantError("vcpu-info", f"d{A}: a shared_info view does not use the domain's table")
    if len(t.areas) != nv:
        raise InvariantError("vcpu-info", f"d{A}: {len(t.areas)} registrations for {nv} vCPUs")
    base, frames = _address(d.shared_info._cdata), set()
    for v in range(n):
        area = t.areas[v] if v < nv else None
        if area is None:
            want = base + v * VCPU_INFO_SIZE if v < XEN_LEGACY_MAX_VCPUS else 0
        else:
            gfn, off = area
            if not d.memory.valid(gfn) or off + VCPU_INFO_SIZE > PAGE_SIZE or off % 4 or \
                    (d.layout == "x86_64" and off % 8):
                raise InvariantError("vcpu-info", f"d{A} vCPU {v}: registered at {gfn}:{off}")
            want = _address(d.memory.frame(gfn)) + off
            frames.add(gfn)
        if _address(t.c[v]) != want:
            raise InvariantError("vcpu-info", f"d{A} vCPU {v}: the C table points elsewhere")
    if frames != d.memory.vcpu_info_frames:
        raise InvariantError("vcpu-info", f"d{A}: vcpu_info frames {sorted(d.memory.vcpu_info_frames)}, "
                             f"registered {sorted(frames)}")
    c, hi = d._c, nv - XEN_LEGACY_MAX_VCPUS
    if hi <= 0:
        if c.hi_bits != ffi.NULL or c.hi_polling:
            raise InvariantError("vcpu-bits", f"d{A}: state for vCPUs 32.. with {nv} vCPUs")
        return
    words = int(c.hi_words)
    if words != (hi + 31) // 32 or c.hi_bits == ffi.NULL:
        raise InvariantError("vcpu-bits", f"d{A}: {words} words for {hi} vCPUs past 31")
    polling = 0
    for m in range(3):
        for w in range(words):
            bits = int(c.hi_bits[m * words + w])
            if bits >> min(32, hi - 32 * w):
                raise InvariantError("vcpu-bits", f"d{A}: a bit names a vCPU that does not exist")
            polling += bin(bits).count("1") if m == 0 else 0
    if polling != int(c.hi_polling):
        raise InvariantError("vcpu-bits", f"d{A}: {polling} vCPUs past 31 poll, counted {int(c.hi_polling)}")


def _check_hv(hv: Hypervisor, live: dict[int, Domain], pirq_owners: dict[int, list[Domain]]) -> None:
    if set(hv._irq_guests) != set(hv._irq_shareable):
        raise InvariantError("irq-guests", "host IRQ shareable flags and guest lists are out of step "
                             f"(pirqs {sorted(set(hv._irq_guests) ^ set(hv._irq_shareable))[:8]})")
    for pirq, guests in hv._irq_guests.items():
        ids = [g.domid for g in guests]
        if not guests or len(guests) > hv.irq_max_guests or len(set(ids)) != len(ids) or \
                any(live.get(g.domid) is not g for g in guests) or \
                sorted(ids) != sorted(g.domid for g in pirq_owners.get(pirq, [])):
            raise InvariantError("irq-guests", f"pirq {pirq}: guests {ids}, bound in "
                                 f"{sorted(g.domid for g in pirq_owners.get(pirq, []))}")
    if not set(pirq_owners) <= set(hv._irq_guests):
        raise InvariantError("irq-guests", f"pirqs {sorted(set(pirq_owners) - set(hv._irq_guests))} are "
                             "bound but not claimed")
    for virq, d in hv._virq_handlers.items():
        if not 0 <= virq < NR_VIRQS or virq_class(virq) != VirqClass.GLOBAL or live.get(d.domid) is not d:
            raise InvariantError("virq-handler", f"virq {virq} -> {d!r}")
    hw = hv._hardware_domain
    if hw is not None and live.get(hw.domid) is not hw:
        raise InvariantError("hardware-domain", f"{hw!r} is not live")
    for (domid, vcpu) in hv._timer_seq:
        owner = live.get(domid)
        if owner is None or not 0 <= vcpu < len(owner.vcpus) or domid >= DOMID_FIRST_RESERVED:
            raise InvariantError("timers", f"a poll timer is armed for d{domid} vCPU {vcpu}")


def broken_rule(hv: Hypervisor) -> str | None:
    """The message of the first broken rule, or None for a reachable-looking world."""
    try:
        check_world(hv)
    except InvariantError as exc:
        return str(exc)
    return None


__all__ = ["InvariantError", "check_world", "broken_rule", "records", "is_fifo"]

