#!/usr/bin/env python3
"""Coverage-guided fuzzing of every way in: bytes become a sequence of calls on 4 domains.

    pip install -e '.[test,fuzz]'
    python tests/fuzz/fuzz_hypercalls.py -max_total_time=60 /tmp/corpus tests/fuzz/corpus

(libFuzzer's options; new inputs go to the first directory, the others are read.)
``tests/test_fuzz_corpus.py`` replays every file of ``tests/fuzz/corpus/`` through the same
``run()`` in the normal test suite, without atheris.

The world: dom0 (privileged, 2 vCPUs, x86_64, Linux), dom1 (3 vCPUs, its shared_info in a
caller's bytearray), dom2 (1 vCPU, x86_32), dom3 (2 vCPUs, Mini-OS, max_evtchn_port 70).
Each step decodes one operation from the input: a raw ``event_channel_op`` or
``event_channel_op_compat`` with any command (FIFO's 11-13 included) and argument bytes
that are mostly plausible, a Pythonic wrapper, the ``send``/``send_many`` fast paths, the
guest's mask/unmask/upcall, hypervisor-side sources (VIRQ, PIRQ, inject), poll and time,
routing and pausing, destroying and re-creating a domain, and calls on a destroyed one.

After every step the whole world is checked (``check_world``), and the step's own effect
is checked against what it may do (``check_step``):

- tables: ``xenevtchn.invariants.check_world``, the one checker that ``Hypervisor.restore``
  also runs on every world it rebuilds (its module docstring lists the rules: states valid,
  port 0 reserved, nothing open past the domain's limit or the valid range, free records
  blank, notify vCPUs exist, interdomain peers agree both ways, VIRQ/PIRQ ports, tables
  and host IRQ guest lists agree one to one, the active count and mirrors match, ...);
- 2-level shared_info: pending only on open ports, nothing written outside the event
  words and the vcpu_info upcall bytes and selectors, no event on a missing vCPU, a
  selector bit only with the upcall flag set; (guests write mask bits at will, so mask
  bits are free);
- a hypervisor-side step never sets a mask bit, clears one only through unmask, clears a
  pending bit only by closing its port, never clears a selector bit or upcall flag; every
  port it makes pending and unmasked is announced on its notify vCPU (selector bit and
  upcall flag): no lost edge; ``on_kick`` runs exactly once per 0 -> 1 upcall flag; a
  vCPU left polling was not woken by any newly pending port it polls;
- ``do_upcall`` handles exactly the ports the guest's scan must (pending, unmasked, in a
  selected word; for Linux bound to that vCPU, the timer port first), clears exactly their
  pending bits and that vCPU's selector and flag; guest mask/unmask do what the guest
  side says and nothing else;
- every call returns or raises what its documentation allows; raw calls also go through
  test_fuzz_entry's ``check_call`` (return values, copy-back only into OUT fields).

Domains that ever switch to FIFO are checked for tables only.
"""

from __future__ import annotations

import errno
import struct
import sys
from array import array
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))    # test_fuzz_entry lives in tests/

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["xenevtchn"]):   # coverage of the package
        import xenevtchn as xe
else:
    import xenevtchn as xe

from test_fuzz_entry import CMDS, KNOWN_ERRNOS, SI, check_call  # noqa: E402
from xenevtchn import invariants  # noqa: E402
from xenevtchn._native import ffi, lib  # noqa: E402
from xenevtchn.constants import VirqClass, virq_class  # noqa: E402

DOMID_SELF = 0x7FF0
MAX_STEPS = 64
PER_VCPU_VIRQS = {v for v in range(24) if virq_class(v) == VirqClass.VCPU}
CONFIGS = [
    dict(vcpus=2, privileged=True),
    dict(vcpus=3),
    dict(vcpus=1, layout="x86_32"),
    dict(vcpus=2, guest="minios", max_evtchn_port=70),
]
SPECIAL = [0, 1, 63, 64, 65, 70, 71, 127, 1023, 1024, 4095, 4096, 0x7FEF, 0x7FF0, 0xFFFF,
           0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
FREE, RESERVED, UNBOUND, INTERDOMAIN, PIRQ, VIRQ, IPI = range(7)

class Stream:
    """The fuzzer's bytes, read front to back; reads past the end give zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out + bytes(n - len(out))

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def below(self, n: int) -> int:
        return self.byte() % n


class World:
    """The hypervisor, one slot per configured domain, and what the hooks saw."""

    def __init__(self) -> None:
        self.hv = xe.Hypervisor()
        self.slots: list[Any] = [None] * len(CONFIGS)
        self.dead: list[Any] = []
        self.ever_fifo: set[int] = set()          # id() of Domain objects that went FIFO
        self.kicks: list[tuple[int, int]] = []
        self.wakes: list[tuple[int, int]] = []
        self.recent = [1]
        self.hv.on_kick = lambda v: self.kicks.append((v.domain.domid, v.id))
        self.hv.on_wake = lambda v: self.wakes.append((v.domain.domid, v.id))
        for i in range(len(CONFIGS)):
            self.create(i)

    def create(self, i: int) -> None:
        kw = dict(CONFIGS[i])
        if i == 1:
            kw["shared_info"] = bytearray(4096 + 64)   # a caller's buffer, bigger than a page
        d = self.hv.create_domain(domid=i, **kw)
        if not d.privileged:
            for p in (1, 2, 3):
                self.hv.permit_pirq(i, p)
        self.slots[i] = d

    def live(self) -> list[Any]:
        return [d for d in self.slots if d is not None]

    def domain(self, s: Stream) -> Any:
        """A live domain (or, now and then, a dead one: every call must answer ESRCH)."""
        k = s.byte()
        if k >= 248 and self.dead:
            return self.dead[k % len(self.dead)]
        d = self.slots[k % len(self.slots)]
        return d if d is not None else (self.live() or [None])[0]

    def note(self, port: int) -> None:
        self.recent.append(port)
        del self.recent[:-16]

    # ---- argument words -------------------------------------------------------------

    def domid_word(self, s: Stream) -> int:
        k = s.below(8)
        if k < 5:
            return k % 4
        if k == 5:
            return DOMID_SELF
        if k == 6:
            return s.u16()
        return s.below(12)

    def word(self, s: Stream) -> int:
        k = s.below(16)
        if k < 5:
            return s.below(8)
        if k < 7:
            return s.byte()
        if k < 10:
            return self.recent[s.below(len(self.recent))]
        if k < 12:
            return self.domid_word(s) | self.domid_word(s) << 16
        if k < 14:
            return SPECIAL[s.below(len(SPECIAL))]
        return s.u32()


def fifo(d: Any) -> bool:
    return int(d._c.abi) != int(lib.XE_ABI_2L)


# ---------------------------------------------------------------- reading state


def chans(d: Any) -> list[tuple[int, ...]]:
    """(state, xen_consumer, notify, remote_dom, remote_port, info, user) per valid port."""
    return invariants.records(d)


def _vcpu_struct(L: dict) -> struct.Struct:
    sel = {4: "I", 8: "Q"}[L["selsz"]]
    one = f"BB{L['sel'] - 2}x{sel}{64 - L['sel'] - L['selsz']}x"
    return struct.Struct("<" + one * 32)


def _free_bits(L: dict) -> int:
    """A mask of every shared_info bit that only the event paths may write."""
    m = 0
    for v in range(32):
        vi = 64 * v
        m |= 0xFFFF << (8 * vi)
        m |= ((1 << (8 * L["selsz"])) - 1) << (8 * (vi + L["sel"]))
    m |= ((1 << (8 * (L["mask"] + L["nr"] // 8 - L["pending"]))) - 1) << (8 * L["pending"])
    return m


_VCPUS = {k: _vcpu_struct(L) for k, L in SI.items()}
_EVENT_BITS = {k: _free_bits(L) for k, L in SI.items()}


class Page:
    """One domain's 2-level shared_info, decoded."""

    def __init__(self, d: Any) -> None:
        L = SI[d.layout]
        self.L = L
        self.raw = b = bytes(d.shared_info.buffer)
        nbytes = L["nr"] // 8
        self.pending = int.from_bytes(b[L["pending"]:L["pending"] + nbytes], "little")
        self.mask = int.from_bytes(b[L["mask"]:L["mask"] + nbytes], "little")
        vals = _VCPUS[d.layout].unpack_from(b)
        self.up, self.umask, self.sel = list(vals[0::3]), list(vals[1::3]), list(vals[2::3])
        self.outside = int.from_bytes(b, "little") & ~_EVENT_BITS[d.layout]


class Snap:
    def __init__(self, w: World) -> None:
        self.doms = {id(d): d for d in w.live()}
        self.pages = {id(d): Page(d) for d in w.live()}
        self.chans = {id(d): chans(d) for d in w.live()}
        self.polling = {id(d): [bool(v.polling) for v in d.vcpus] for d in w.live()}
        self.poll_port = {id(d): [int(d._c.poll_evtchn[v]) for v in range(len(d.vcpus))]
                          for d in w.live()}


def bits(x: int):
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


def usable(row: tuple[int, ...]) -> bool:
    return row[0] > RESERVED and row[1] == 0


# ---------------------------------------------------------------- invariants


def check_world(w: World, snap: Snap) -> None:
    """The shared invariants (``xenevtchn.invariants``, the same ones ``restore`` checks)
    on this world, plus what only this harness knows: which domains it holds, and what its
    guests' shared_info pages may contain."""
    hv = w.hv
    live = w.live()
    by_id = {d.domid: d for d in live}
    assert set(hv._domains) == set(by_id), (set(hv._domains), set(by_id))
    for domid in range(16):
        expect = by_id[domid]._c if domid in by_id else ffi.NULL
        assert hv._c.domains[domid] == expect, f"C domain table wrong at {domid}"
    rows_of = {d.domid: snap.chans[id(d)] for d in live}
    try:
        invariants.check_world(hv, rows_of)
    except invariants.InvariantError as exc:
        raise AssertionError(str(exc)) from None
    for d in live:
        if fifo(d):
            w.ever_fifo.add(id(d))
        if id(d) not in w.ever_fifo:
            check_page(d, snap.pages[id(d)], rows_of[d.domid])


def check_page(d: Any, pg: Page, rows: list[tuple[int, ...]]) -> None:
    A, nv = d.domid, len(d.vcpus)
    for p in bits(pg.pending):
        assert p < len(rows) and usable(rows[p]), f"dom{A}: port {p} pending but not open"
    # nothing outside the event words and the vcpu_info upcall bytes / selectors
    assert not pg.outside, f"dom{A}: shared_info written outside the event fields"
    for v in range(32):
        assert pg.up[v] in (0, 1) and pg.umask[v] in (0, 1), (A, v, pg.up[v], pg.umask[v])
        if v >= nv:
            assert pg.up[v] == 0 and pg.sel[v] == 0 and pg.umask[v] == 1, f"dom{A}: event on missing vCPU {v}"
        if pg.sel[v]:
            assert pg.up[v] == 1, f"dom{A} vcpu{v}: selector {pg.sel[v]:#x} without the upcall flag"


def check_step(w: World, before: Snap, after: Snap, kind: str, info: dict) -> None:
    """What one step may have changed, given its kind ("hv" or "guest")."""
    kicks = list(w.kicks)
    for key, d in before.doms.items():
        if key not in after.doms or key in w.ever_fifo:
            continue
        pb, pa = before.pages[key], after.pages[key]
        rows_a = after.chans[key]
        A, W = d.domid, pb.L["bits"]
        my_kicks = [v for dom, v in kicks if dom == A]
        newly_up = {v for v in range(len(d.vcpus)) if pb.up[v] == 0 and pa.up[v] == 1}
        pu_b, pu_a = pb.pending & ~pb.mask, pa.pending & ~pa.mask
        if kind == "hv":
            assert pa.mask & ~pb.mask == 0, f"dom{A}: a hypervisor step set mask bits"
            if info.get("op") != "unmask":
                assert pa.mask == pb.mask, f"dom{A}: mask bits changed by {info}"
            for p in bits(pb.pending & ~pa.pending):
                assert p >= len(rows_a) or rows_a[p][0] == FREE, f"dom{A}: pending port {p} cleared but open"
            for p in bits(pa.pending & ~pb.pending):
                assert p < len(rows_a) and usable(rows_a[p]), f"dom{A}: closed port {p} made pending"
            for v in range(32):
                assert pa.sel[v] & pb.sel[v] == pb.sel[v], f"dom{A} vcpu{v}: selector bits cleared"
                assert pa.up[v] >= pb.up[v], f"dom{A} vcpu{v}: upcall flag cleared"
            for p in bits(pu_a & ~pu_b):    # no lost edge
                v = rows_a[p][2]
                assert pa.sel[v] >> (p // W) & 1 and pa.up[v] == 1, (
                    f"dom{A}: port {p} became pending+unmasked without announcement on vCPU {v} "
                    f"({info})")
            assert sorted(my_kicks) == sorted(newly_up), f"dom{A}: kicks {my_kicks}, upcall 0->1 {newly_up}"
            # pollers that stayed blocked did not poll a port that became pending
            newly_pending = pa.pending & ~pb.pending
            for v, (was, now) in enumerate(zip(before.polling[key], after.polling[key])):
                if was and now and newly_pending:
                    want = before.poll_port[key][v]
                    assert want > 0 and not newly_pending >> want & 1, (
                        f"dom{A} vcpu{v}: still polling ({want}) after ports {list(bits(newly_pending))} rose")
        else:
            assert set(my_kicks) <= newly_up and len(my_kicks) == len(set(my_kicks)), (A, my_kicks, newly_up)
            if info.get("domain") is not d or info["op"] in ("none", "dead"):
                assert (pa.pending, pa.mask, pa.sel, pa.up) == (pb.pending, pb.mask, pb.sel, pb.up), (
                    f"dom{A}: changed by another domain's guest step {info}")
                continue
            op = info["op"]
            if op == "mask":
                p = info["port"]
                assert pa.mask == pb.mask | 1 << p and pa.pending == pb.pending and pa.sel == pb.sel
            elif op == "unmask":
                check_guest_unmask(d, info, pb, pa, before.chans[key])
            elif op == "upcall":
                check_upcall(d, info, pb, pa, before.chans[key])
        for v in range(len(d.vcpus)):
            if before.polling[key][v] and not after.polling[key][v]:
                assert (A, v) in w.wakes, f"dom{A} vcpu{v} left poll without on_wake"
    for dom, v in w.wakes:
        d = next((x for x in after.doms.values() if x.domid == dom), None)
        if d is not None:
            assert not d.vcpus[v].polling, f"dom{dom} vcpu{v}: on_wake but still polling"


def check_guest_unmask(d: Any, info: dict, pb: Page, pa: Page, rows: list) -> None:
    p, vcpu, W = info["port"], info["vcpu"], pb.L["bits"]
    valid = p < len(rows)
    notify = rows[p][2] if valid else 0
    local = d.guest.mode == "minios" or vcpu is None or vcpu == notify
    at = (0 if vcpu is None else vcpu) if d.guest.mode == "minios" else (notify if vcpu is None else vcpu)
    if local:
        assert not pa.mask >> p & 1, "local unmask left the mask bit"
        if pb.pending >> p & 1:
            assert pa.sel[at] >> (p // W) & 1 and pa.up[at] == 1, "local unmask lost a pending edge"
    elif valid and usable(rows[p]):
        assert not pa.mask >> p & 1, "unmask hypercall left the mask bit"
        if pb.mask >> p & 1 and pb.pending >> p & 1:
            assert pa.sel[notify] >> (p // W) & 1 and pa.up[notify] == 1, "unmask hypercall lost an edge"
    else:
        assert pa.mask == pb.mask, "unmask of a port the hypercall refuses changed mask bits"
    assert pa.pending == pb.pending


def check_upcall(d: Any, info: dict, pb: Page, pa: Page, rows: list) -> None:
    v, got, W = info["vcpu"], info["handled"], pb.L["bits"]
    linux = d.guest.mode == "linux"
    active = pb.pending & ~pb.mask
    expect = set()
    for p in bits(active):
        if not pb.sel[v] >> (p // W) & 1:
            continue
        if linux and not (p < len(rows) and usable(rows[p]) and rows[p][2] == v):
            continue
        expect.add(p)
    if linux:
        t = d._virq_to_evtchn[v][0]       # VIRQ_TIMER, taken first whatever the selector says
        if t and active >> t & 1 and rows[t][2] == v and usable(rows[t]):
            expect.add(t)
            assert got and got[0] == t, f"timer port {t} not handled first: {got}"
    assert len(got) == len(set(got)), f"a port handled twice in one upcall: {got}"
    assert set(got) == expect, f"upcall on vCPU {v} handled {sorted(got)}, expected {sorted(expect)}"
    assert info["calls"] == got, "handler calls differ from the returned list"
    cleared = 0
    for p in got:
        cleared |= 1 << p
    assert pa.pending == pb.pending & ~cleared, "upcall cleared other pending bits"
    assert pa.mask == pb.mask
    assert pa.sel[v] == 0 and pa.up[v] == 0, "upcall left its selector or flag"
    for u in range(32):
        if u != v:
            assert (pa.sel[u], pa.up[u]) == (pb.sel[u], pb.up[u]), f"upcall on {v} touched vCPU {u}"


def cross_check_status(w: World) -> None:
    """The public status of every valid port says what the internal records say."""
    live = w.live()
    obs = next((d for d in live if d.privileged), None)
    for d in live:
        for p, row in enumerate(chans(d)):
            st = obs.status(p, dom=d.domid) if obs is not None else d.status(p)
            state, _, notify, rdom, rport, info, _ = row
            want = {FREE: (0, None, None, None, None), RESERVED: (0, None, None, None, None),
                    UNBOUND: (1, rdom, None, None, None), INTERDOMAIN: (2, rdom, rport, None, None),
                    PIRQ: (3, None, None, info, None), VIRQ: (4, None, None, None, info),
                    IPI: (5, None, None, None, None)}[state]
            assert (int(st.status), st.dom, st.port, st.pirq, st.virq) == want, (d.domid, p, st, row)
            assert st.vcpu == notify, (d.domid, p, st, row)


# ---------------------------------------------------------------- operations

Op = Callable[[World, Stream], tuple[str, dict]]


def expect_errno(exc: BaseException, allowed: set[int] | None = None) -> None:
    if not isinstance(exc, xe.EvtchnError):
        raise exc
    ok = KNOWN_ERRNOS if allowed is None else allowed
    assert exc.errno in ok, f"unexpected errno {errno.errorcode.get(exc.errno, exc.errno)}: {exc!r}"


def dead_call(d: Any, fn: Callable[[], Any]) -> None:
    """On a destroyed domain every Pythonic call must raise ESRCH."""
    try:
        fn()
    except xe.EvtchnError as e:
        assert e.errno == errno.ESRCH, f"destroyed domain answered {e!r}"
    else:
        raise AssertionError("a destroyed domain accepted a call")


def arg_bytes(w: World, s: Stream, cmd: int) -> bytearray:
    size = CMDS.get(cmd, (s.below(32), []))[0]
    k = s.below(16)
    n = size if k < 11 else size + 4 if k < 13 else max(0, size - 1 - s.below(3)) if k < 15 else s.below(41)
    if s.below(16) == 0:
        return bytearray(s.take(n))
    words = b"".join(struct.pack("<I", w.word(s)) for _ in range((n + 3) // 4))
    return bytearray(words[:n])


def op_raw(w: World, s: Stream) -> tuple[str, dict]:
    d = w.domain(s)
    k = s.byte()
    cmd = k % 16 if k < 250 else struct.unpack("<i", s.take(4))[0]
    if k % 16 in (11, 12, 13) and k < 250:        # FIFO: plausible frames and offsets
        buf = bytearray(CMDS[k % 16][0])
        if cmd == 11:
            struct.pack_into("<QII", buf, 0, s.below(8), 8 * s.below(510), s.below(4))
        elif cmd == 12:
            struct.pack_into("<Q", buf, 0, s.below(12))
        else:
            struct.pack_into("<II", buf, 0, w.word(s), s.below(18))
    else:
        buf = arg_bytes(w, s, cmd)
    if d.dead:
        assert d.event_channel_op(cmd, buf) == -errno.ESRCH
        return "hv", {"op": "dead"}
    rc = check_call(d, cmd, buf, compat=False)
    if rc == 0:
        off = {0: 8, 1: 8, 2: 8, 6: 4, 7: 4}.get(cmd)
        if off is not None:
            w.note(struct.unpack_from("<I", buf, off)[0])
    return "hv", {"op": "unmask" if cmd == 9 else "raw"}


def op_compat(w: World, s: Stream) -> tuple[str, dict]:
    d = w.domain(s)
    k = s.byte()
    cmd = k % 11 if k < 240 else struct.unpack("<i", s.take(4))[0]
    body = arg_bytes(w, s, cmd)
    buf = bytearray((struct.pack("<i", cmd) + bytes(body) + bytes(28))[:28])
    if s.below(12) == 0:
        buf = buf[:s.below(28)]
    if d.dead:
        assert d.event_channel_op_compat(buf) == -errno.ESRCH
        return "hv", {"op": "dead"}
    rc = check_call(d, None, buf, compat=True)
    if rc == 0:
        off = {0: 8, 1: 8, 2: 8, 6: 4, 7: 4}.get(cmd)
        if off is not None:
            w.note(struct.unpack_from("<I", buf, 4 + off)[0])
    return "hv", {"op": "unmask" if cmd == 9 else "raw"}


def op_wrapper(w: World, s: Stream) -> tuple[str, dict]:
    d = w.domain(s)
    which = s.below(11)
    u16 = lambda: w.domid_word(s) & 0xFFFF  # noqa: E731
    u32 = lambda: w.word(s)  # noqa: E731
    calls: list[Callable[[], Any]] = [
        lambda: d.alloc_unbound(u16(), u16()),
        lambda: d.bind_interdomain(u16(), u32()),
        lambda: d.bind_virq(s.below(26), s.below(4)),
        lambda: d.bind_pirq(s.below(6) if s.byte() < 240 else u32(), s.below(3)),
        lambda: d.bind_ipi(s.below(4)),
        lambda: d.close(u32()),
        lambda: d.status(u32(), u16()),
        lambda: d.bind_vcpu(u32(), s.below(4)),
        lambda: d.unmask(u32()),
        lambda: d.reset(u16()),
        lambda: d.send(u32()),
    ]
    fn = calls[which]
    if d.dead:
        dead_call(d, fn)
        return "hv", {"op": "dead"}
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001
        expect_errno(e)
    else:
        if which in (0, 1, 2, 3, 4):
            assert isinstance(r, int)
            w.note(r)
    return "hv", {"op": "unmask" if which == 8 else "wrapper"}


def op_send(w: World, s: Stream) -> tuple[str, dict]:
    d = w.domain(s)
    ports = [w.word(s) for _ in range(1 + s.below(6))]
    if d.dead:
        dead_call(d, lambda: d.send_many(ports))
        return "hv", {"op": "dead"}
    try:
        if len(ports) == 1 or s.below(2):
            for p in ports:
                d.send(p)
        else:
            d.send_many(array("I", ports) if s.below(2) else ports)
    except Exception as e:  # noqa: BLE001
        expect_errno(e, {errno.EINVAL})
    return "hv", {"op": "send"}


def _guest_port(w: World, s: Stream, d: Any) -> int:
    k = s.below(8)
    nr = d.shared_info.nr_ports
    if k < 5:
        return w.recent[s.below(len(w.recent))] % nr
    if k < 7:
        return s.byte()
    return nr - 2 + s.below(4)          # around the end of the layout's range


def op_guest_mask(w: World, s: Stream) -> tuple[str, dict]:
    d = w.domain(s)
    port = _guest_port(w, s, d)
    if d.dead:
        dead_call(d, lambda: d.guest.mask(port))
        return "guest", {"op": "dead"}
    try:
        d.guest.mask(port)
    except ValueError:
        assert port >= d.shared_info.nr_ports
        return "guest", {"op": "none", "domain": d}
    return "guest", {"op": "mask", "domain": d, "port": port}


def op_guest_unmask(w: World, s: Stream) -> tuple[str, dict]:
    d = w.domain(s)
    port = _guest_port(w, s, d)
    k = s.below(6)
    vcpu = None if k < 3 else k - 3
    if d.dead:
        dead_call(d, lambda: d.guest.unmask(port, vcpu))
        return "guest", {"op": "dead"}
    try:
        d.guest.unmask(port, vcpu)
    except ValueError:
        assert port >= d.shared_info.nr_ports or (vcpu is not None and vcpu >= len(d.vcpus))
        return "guest", {"op": "none", "domain": d}
    return "guest", {"op": "unmask", "domain": d, "port": port, "vcpu": vcpu}


def op_upcall(w: World, s: Stream) -> tuple[str, dict]:
    d = w.domain(s)
    vcpu = s.below(4)
    calls: list[int] = []
    if d.dead:
        dead_call(d, lambda: d.guest.do_upcall(vcpu))
        return "guest", {"op": "dead"}
    try:
        got = d.guest.do_upcall(vcpu, calls.append if s.below(2) else None)
    except ValueError:
        assert vcpu >= len(d.vcpus)
        return "guest", {"op": "none", "domain": d}
    if not calls:
        calls = list(got)
    if id(d) in w.ever_fifo or fifo(d):
        return "guest", {"op": "fifo", "domain": d}
    return "guest", {"op": "upcall", "domain": d, "vcpu": vcpu, "handled": got, "calls": calls}


def op_hv_source(w: World, s: Stream) -> tuple[str, dict]:
    hv = w.hv
    k = s.below(4)
    domid = w.domid_word(s)
    try:
        if k == 0:
            hv.send_virq(domid, s.below(26), s.below(4))
        elif k == 1:
            hv.send_global_virq(s.below(26))
        elif k == 2:
            hv.send_pirq(domid, s.below(8) if s.byte() < 250 else 255 + s.below(3))
        else:
            hv.inject(domid, w.word(s))
    except Exception as e:  # noqa: BLE001
        expect_errno(e, {errno.ESRCH, errno.EINVAL, errno.ENOENT})
    return "hv", {"op": "source"}


def op_poll(w: World, s: Stream) -> tuple[str, dict]:
    hv = w.hv
    if s.below(3) == 0:
        hv.advance(s.below(4) * 50)
        return "hv", {"op": "advance"}
    d = w.domain(s)
    ports = [w.word(s) for _ in range(s.below(4))]
    k = s.below(4)
    timeout = 0 if k < 2 else hv.now + 50 * s.below(4) if k == 2 else s.u32()
    vcpu = s.below(4)
    if d.dead:
        dead_call(d, lambda: d.sched_poll(ports, timeout, vcpu))
        return "hv", {"op": "dead"}
    try:
        r = d.sched_poll(ports, timeout, vcpu)
        assert isinstance(r, bool)
        if r:
            assert not d.vcpus[vcpu].polling
    except Exception as e:  # noqa: BLE001
        expect_errno(e, {errno.EINVAL, errno.ENOENT, errno.EBUSY})
    return "hv", {"op": "poll"}


def op_routing(w: World, s: Stream) -> tuple[str, dict]:
    hv = w.hv
    k = s.below(4)
    domid = w.domid_word(s) % 8
    try:
        if k == 0:
            hv.permit_pirq(domid, s.below(8))
        elif k == 1:
            hv.set_virq_handler(s.below(26), domid)
        elif k == 2:
            hv.pause_domain(domid)
        else:
            hv.unpause_domain(domid)
    except Exception as e:  # noqa: BLE001
        expect_errno(e, {errno.ESRCH, errno.EINVAL, errno.EBUSY})
    return "hv", {"op": "routing"}


def op_lifecycle(w: World, s: Stream) -> tuple[str, dict]:
    i = s.below(len(CONFIGS))
    if s.below(4):                         # mostly a no-op: destroying is drastic
        return "hv", {"op": "none"}
    d = w.slots[i]
    if d is not None:
        w.hv.destroy_domain(d.domid)
        assert d.dead and not any(v.polling for v in d.vcpus)
        w.slots[i] = None
        w.dead.append(d)
        del w.dead[:-4]
    else:
        w.create(i)
    return "hv", {"op": "lifecycle"}


OPS: list[tuple[Op, int]] = [
    (op_raw, 10), (op_compat, 3), (op_wrapper, 6), (op_send, 5), (op_guest_mask, 3),
    (op_guest_unmask, 3), (op_upcall, 4), (op_hv_source, 3), (op_poll, 2), (op_routing, 2),
    (op_lifecycle, 1),
]
TABLE = [op for op, weight in OPS for _ in range(weight)]


def run(data: bytes) -> World:
    """Decode and run one input, checking everything after every step."""
    s = Stream(data)
    w = World()
    before = Snap(w)
    check_world(w, before)
    for _ in range(MAX_STEPS):
        if s.done:
            break
        if not w.live():
            w.create(0)
            before = Snap(w)
        op = TABLE[s.byte() % len(TABLE)]
        w.kicks.clear()
        w.wakes.clear()
        kind, info = op(w, s)
        after = Snap(w)
        check_world(w, after)
        check_step(w, before, after, kind, info)
        before = after
    cross_check_status(w)
    return w


def test_one_input(data: bytes) -> None:
    run(data)


def main() -> None:
    global TABLE
    done: dict[Op, Op] = {}                 # the decoders' branches guide the fuzzer too
    TABLE = [done.setdefault(op, atheris.instrument_func(op)) for op in TABLE]
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
