"""Seeded fuzzing of the raw entry points of the native implementation.

``event_channel_op(cmd, buf)`` and ``event_channel_op_compat(buf)`` get tens of thousands
of calls with arbitrary commands and argument bytes (biased towards plausible values so
that many calls succeed and build up state). Every call must return an int that is 0 or a
negative errno from Xen's set (spec §0), must leave the buffer untouched on failure and
write only the command's OUT fields on success (spec §3, §4.7). At checkpoints and at
the end the port tables are checked for consistency through the public API only.

The second half checks type misuse of the Pythonic wrappers and entry points: each bad
call raises ``TypeError``/``ValueError``/``OverflowError`` and changes nothing.

Seeds are fixed, so every run is identical; ``XENEVTCHN_FUZZ_CALLS`` scales the length.
"""

from __future__ import annotations

import errno
import os
import random
import struct
from array import array

import pytest

import xenevtchn as xe

DOMID_SELF = 0x7FF0
CALLS = int(os.environ.get("XENEVTCHN_FUZZ_CALLS", "15000"))
SEEDS = [1, 2, 3]

# Xen's errno values a guest may see from these hypercalls (spec §0; ERESTART is internal).
KNOWN_ERRNOS = {
    errno.EPERM, errno.ENOENT, errno.ESRCH, errno.EAGAIN, errno.ENOMEM, errno.EACCES,
    errno.EFAULT, errno.EBUSY, errno.EEXIST, errno.EINVAL, errno.ENOSPC, errno.ENOSYS,
    errno.EOPNOTSUPP,
}

# (struct size, byte ranges a successful call may write) per command (spec §3, §4, §12.1)
CMDS = {
    0: (12, [(8, 12)]),   # bind_interdomain: local_port
    1: (12, [(8, 12)]),   # bind_virq: port
    2: (12, [(8, 12)]),   # bind_pirq: port
    3: (4, []),           # close
    4: (4, []),           # send
    5: (24, [(8, 24)]),   # status (union bytes checked separately)
    6: (8, [(4, 8)]),     # alloc_unbound: port
    7: (8, [(4, 8)]),     # bind_ipi: port
    8: (8, []),           # bind_vcpu
    9: (4, []),           # unmask
    10: (2, []),          # reset
    11: (24, [(16, 17)]),  # init_control: link_bits
    12: (8, []),          # expand_array
    13: (8, []),          # set_priority
    14: (2, []),          # reset_cont
}
# evtchn_status union bytes (relative to offset 16) NOT written, per status (spec §4.7)
STATUS_UNWRITTEN = {0: range(0, 8), 1: range(2, 8), 2: range(2, 4), 3: range(4, 8),
                    4: range(4, 8), 5: range(0, 8)}

SI = {
    "x86_64": dict(size=3136, pending=2048, mask=2560, nr=4096, bits=64, sel=8, selsz=8),
    "x86_32": dict(size=2344, pending=2048, mask=2176, nr=1024, bits=32, sel=4, selsz=4),
}
PER_VCPU_VIRQS = {0, 1, 7, 13}  # spec §6.1

DOMAINS = [
    dict(vcpus=2, privileged=True),
    dict(vcpus=3),
    dict(vcpus=1, layout="x86_32"),
    dict(vcpus=2, max_evtchn_port=70),
]


def make_world():
    hv = xe.Hypervisor()
    doms = [hv.create_domain(**kw) for kw in DOMAINS]
    for d in doms[1:]:
        for p in (1, 2, 3):
            hv.permit_pirq(d.domid, p)
    return hv, doms


def cfg(d):
    """The creation parameters of one of make_world()'s domains (domid = index)."""
    kw = DOMAINS[d.domid]
    return kw.get("layout", "x86_64"), kw.get("max_evtchn_port")


class ArgGen:
    """Argument bytes: random, or plausible values laid out on the 4-byte fields."""

    # command weights: binds and sends often, resets (which wipe a domain) rarely
    WEIGHTS = {0: 6, 1: 3, 2: 3, 3: 3, 4: 5, 5: 3, 6: 8, 7: 3, 8: 3, 9: 3, 10: 0.3}

    def __init__(self, rng, ndoms):
        self.r = rng
        self.domids = list(range(ndoms)) + [DOMID_SELF]
        self.recent = [1]  # ports returned by successful binds

    def note(self, cmd, buf, base):
        """Remember the port a successful bind returned (used as a future argument)."""
        off = {0: 8, 1: 8, 2: 8, 6: 4, 7: 4}.get(cmd)
        if off is not None and len(buf) >= base + off + 4:
            self.recent.append(struct.unpack_from("<I", buf, base + off)[0])
            del self.recent[:-16]

    def word(self):
        r = self.r
        k = r.randrange(10)
        if k < 3:
            return r.randrange(0, 6)
        if k < 5:
            return r.randrange(0, 80)
        if k < 6:
            return r.choice(self.recent)
        if k < 8:  # two domid_t fields (alloc_unbound dom/remote_dom, status dom, reset dom)
            a = r.choice(self.domids + [r.randrange(0x10000)])
            b = r.choice(self.domids + [r.randrange(0x10000)])
            return a | (b << 16)
        if k < 9:
            return r.choice([0xFFFFFFFF, 0x80000000, 4095, 4096, 1023, 1024, 24, 256, 0x7FF0])
        return r.getrandbits(32)

    def body(self, cmd):
        r = self.r
        size = CMDS.get(cmd, (r.randrange(0, 32), []))[0]
        k = r.randrange(10)
        if k < 6:
            n = size + r.choice([0, 0, 0, 1, 4, 8])
        elif k < 8:
            n = max(0, size - r.randrange(1, 4))
        else:
            n = r.randrange(0, 41)
        if r.randrange(8) == 0:
            return bytearray(r.getrandbits(8) for _ in range(n))
        words = b"".join(struct.pack("<I", self.word()) for _ in range((n + 3) // 4 + 1))
        return bytearray(words[:n])

    def cmd(self):
        r = self.r
        k = r.randrange(20)
        if k < 16:
            return r.choices(list(self.WEIGHTS), list(self.WEIGHTS.values()))[0]
        if k < 18:
            return r.randrange(11, 21)
        return r.choice([-1, -2, -3, 2**31 - 1, -(2**31), 2**32 + 3, 2**63, -(2**64)])


def check_call(d, cmd, buf, compat):
    """One fuzz call with the return-value and copy-back checks."""
    before = bytes(buf)
    rc = d.event_channel_op_compat(buf) if compat else d.event_channel_op(cmd, buf)
    assert type(rc) is int, f"returned {rc!r} ({type(rc).__name__})"
    what = f"{'compat' if compat else 'op'} cmd={cmd} arg={before.hex()} -> {rc}"
    if rc != 0:
        assert rc < 0 and -rc in KNOWN_ERRNOS, f"unexpected return: {what}"
        assert bytes(buf) == before, f"failed call wrote the buffer: {what} now {bytes(buf).hex()}"
        return rc
    base = 4 if compat else 0
    if compat:
        cmd = struct.unpack_from("<i", before, 0)[0]
        assert 0 <= cmd <= 9, f"compat success for a command it does not carry: {what}"
        assert len(before) >= 28, f"compat success with a short struct evtchn_op: {what}"
    assert cmd in CMDS, f"success for unknown command: {what}"
    size, outs = CMDS[cmd]
    assert len(before) >= base + size, f"success with a short buffer: {what}"
    writable = {base + i for a, b in outs for i in range(a, b)}
    changed = [i for i in range(len(buf)) if buf[i] != before[i] and i not in writable]
    assert not changed, f"bytes {changed} written outside the OUT fields: {what} now {bytes(buf).hex()}"
    if cmd == 5:
        st = struct.unpack_from("<I", buf, base + 8)[0]
        assert st in STATUS_UNWRITTEN, f"bad status {st}: {what}"
        for i in STATUS_UNWRITTEN[st]:
            j = base + 16 + i
            assert buf[j] == before[j], f"status {st} wrote union byte {i}: {what}"
    return rc


# ---------------------------------------------------------------- table consistency


def scan(hv, doms):
    """{domid: {port: status tuple}} for every valid port, via a privileged domain."""
    obs = next((d for d in doms if d.privileged), None)
    table = {}
    for d in doms:
        L = SI[cfg(d)[0]]
        ports = {}
        first_invalid = None
        for p in range(L["nr"] + 64):
            try:
                s = obs.status(p, dom=d.domid) if obs is not None else d.status(p)
            except xe.EvtchnError as e:
                assert e.errno == errno.EINVAL, f"dom{d.domid} status({p}): {e!r}"
                if first_invalid is None:
                    first_invalid = p
                continue
            assert first_invalid is None, (
                f"dom{d.domid}: port {p} valid after invalid port {first_invalid} "
                "(valid ports must be a prefix, spec §2.3)"
            )
            ports[p] = (int(s.status), s.vcpu, s.dom, s.port, s.pirq, s.virq)
        assert first_invalid is not None and first_invalid % 64 == 0, (
            f"dom{d.domid}: valid port range ends at {first_invalid}, not a bucket multiple"
        )
        table[d.domid] = ports
    return table


def check_consistency(hv, doms):
    table = scan(hv, doms)
    by_id = {d.domid: d for d in doms}
    for d in doms:
        A = d.domid
        nvcpu = len(d.vcpus)
        layout, max_port = cfg(d)
        L = SI[layout]
        ports = table[A]
        assert ports[0][0] == 0, f"dom{A}: port 0 must read as closed (reserved)"
        limit = min(L["nr"] - 1, max_port if max_port is not None else 1 << 30)
        virqs = {}
        pirqs = {}
        for p, (st, vcpu, dom, port, pirq, virq) in ports.items():
            where = f"dom{A} port {p} status {(st, vcpu, dom, port, pirq, virq)}"
            assert st in range(6), where
            assert isinstance(vcpu, int) and 0 <= vcpu < nvcpu, f"{where}: notify vCPU"
            if st != 0:
                assert 1 <= p <= limit, f"{where}: open port beyond the domain's limit {limit}"
            if st == 0:
                assert vcpu == 0 and dom is port is pirq is virq is None, where
            elif st == 1:
                assert dom is not None and 0 <= dom <= 0xFFFF and port is pirq is virq is None, where
            elif st == 2:
                assert pirq is virq is None, where
                assert dom in by_id, f"{where}: interdomain peer domain does not exist"
                peer = table[dom].get(port)
                assert peer is not None, f"{where}: peer port is not valid"
                assert peer[0] == 2 and peer[2] == A and peer[3] == p, (
                    f"{where}: peer dom{dom}:{port} says {peer}"
                )
            elif st == 3:
                assert 0 <= pirq < 256 and dom is port is virq is None, where
                assert pirq not in pirqs, f"{where}: pirq also bound on port {pirqs[pirq]}"
                pirqs[pirq] = p
            elif st == 4:
                assert 0 <= virq < 24 and dom is port is pirq is None, where
                key = (virq, vcpu) if virq in PER_VCPU_VIRQS else (virq,)
                assert key not in virqs, f"{where}: VIRQ {key} also bound on port {virqs[key]}"
                virqs[key] = p
            else:
                assert dom is port is pirq is virq is None, where

        # shared_info: no guest touched it, so (spec §7, §8) ...
        b = bytes(d.shared_info.buffer)
        W = L["bits"]
        pending = [p for p in range(L["nr"]) if b[L["pending"] + p // 8] >> (p % 8) & 1]
        for p in pending:  # ... pending only on open ports (close clears pending)
            assert p in ports and ports[p][0] != 0, f"dom{A}: port {p} pending but not open"
        assert not any(b[L["mask"]:L["mask"] + L["nr"] // 8]), f"dom{A}: a mask bit got set"
        assert not any(b[L["size"]:]), f"dom{A}: bytes past sizeof(shared_info) were written"
        sels, ups = [], []
        for v in range(32):
            vi = 64 * v
            up, mask = b[vi], b[vi + 1]
            sel = int.from_bytes(b[vi + L["sel"]:vi + L["sel"] + L["selsz"]], "little")
            assert mask == 1, f"dom{A} vcpu{v}: upcall_mask changed to {mask}"
            assert up in (0, 1), f"dom{A} vcpu{v}: upcall_pending = {up}"
            if v >= nvcpu:
                assert up == 0 and sel == 0, f"dom{A}: event delivered to missing vcpu{v}"
            if sel:
                assert up == 1, f"dom{A} vcpu{v}: selector {sel:#x} without upcall_pending"
            sels.append(sel)
            ups.append(up)
            assert sel >> (L["nr"] // W) == 0, f"dom{A} vcpu{v}: selector bit beyond the bitmap"
        for p in pending:  # every pending (unmasked) port was announced on some vCPU
            assert any(s >> (p // W) & 1 for s in sels), (
                f"dom{A}: port {p} pending but no vCPU has selector bit {p // W}"
            )
        for v in d.vcpus:
            assert not v.polling
    return table


def shapshot(hv, doms):
    state = [hv.now]
    obs = next(d for d in doms if d.privileged)
    for d in doms:
        state.append(bytes(d.shared_info.buffer))
        state.append(tuple(bool(v.polling) for v in d.vcpus))
        for p in range(0, 130):
            try:
                s = obs.status(p, dom=d.domid)
                state.append((p, int(s.status), s.vcpu, s.dom, s.port, s.pirq, s.virq))
            except xe.EvtchnError as e:
                state.append((p, "err", e.errno))
    return state


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_event_channel_op(seed):
    rng = random.Random(seed)
    hv, doms = make_world()
    gen = ArgGen(rng, len(doms))
    stats = {"ok": 0, "err": 0}
    for i in range(CALLS):
        d = doms[rng.randrange(len(doms))]
        compat = rng.randrange(4) == 0
        if compat:
            cmd = gen.cmd()
            body = gen.body(cmd if 0 <= cmd < 15 else -1)
            head = struct.pack("<I", cmd & 0xFFFFFFFF)
            buf = bytearray((head + body + bytes(28))[:28]) if rng.randrange(6) else bytearray(
                (head + body)[: rng.randrange(0, 33)]
            )
            rc = check_call(d, None, buf, compat=True)
            if rc == 0:
                gen.note(cmd, buf, 4)
        else:
            cmd = gen.cmd()
            buf = gen.body(cmd)
            rc = check_call(d, cmd, buf, compat=False)
            if rc == 0:
                gen.note(cmd, buf, 0)
        stats["ok" if rc == 0 else "err"] += 1
        k = rng.randrange(50)
        if k == 0:  # hypervisor-side sources now and then, to set pending bits
            hv.send_virq(doms[0].domid, rng.choice([0, 1, 2, 3]), 0)
        elif k == 1:
            hv.send_pirq(d.domid, rng.randrange(0, 5))
        elif k == 2:
            try:
                hv.inject(d.domid, rng.randrange(0, 80))
            except xe.EvtchnError as e:
                assert e.errno == errno.EINVAL
        if i % 5000 == 4999:
            check_consistency(hv, doms)
    check_consistency(hv, doms)
    # the fuzz was not just a stream of errors
    assert stats["ok"] > CALLS // 50, stats


def test_fuzz_pure_random_bytes():
    """Completely unstructured input: random cmd ints and random bytes of any length."""
    rng = random.Random(99)
    hv, doms = make_world()
    for _ in range(CALLS):
        d = doms[rng.randrange(len(doms))]
        buf = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(0, 48)))
        if rng.randrange(3) == 0:
            check_call(d, None, buf, compat=True)
        else:
            check_call(d, rng.randrange(-5, 20), buf, compat=False)
    check_consistency(hv, doms)


def _misuse_calls(hv, doms):
    d0, d1 = doms[0], doms[1]
    bad_ints = [None, 1.5, "1", b"1", -1, 2**32, 2**64, -(2**70), [1], object()]
    bad_doms = [None, 1.0, "0", -1, 0x10000, 2**64]
    calls = []
    for d in (d0, d1):
        for v in bad_ints:
            calls += [
                (f"close({v!r})", lambda d=d, v=v: d.close(v)),
                (f"send({v!r})", lambda d=d, v=v: d.send(v)),
                (f"unmask({v!r})", lambda d=d, v=v: d.unmask(v)),
                (f"status({v!r})", lambda d=d, v=v: d.status(v)),
                (f"bind_vcpu({v!r}, 0)", lambda d=d, v=v: d.bind_vcpu(v, 0)),
                (f"bind_vcpu(1, {v!r})", lambda d=d, v=v: d.bind_vcpu(1, v)),
                (f"bind_virq({v!r})", lambda d=d, v=v: d.bind_virq(v)),
                (f"bind_virq(0, {v!r})", lambda d=d, v=v: d.bind_virq(0, v)),
                (f"bind_ipi({v!r})", lambda d=d, v=v: d.bind_ipi(v)),
                (f"bind_pirq({v!r})", lambda d=d, v=v: d.bind_pirq(v)),
                (f"bind_pirq(1, {v!r})", lambda d=d, v=v: d.bind_pirq(1, v)),
                (f"bind_interdomain(0, {v!r})", lambda d=d, v=v: d.bind_interdomain(0, v)),
                (f"send_many([{v!r}])", lambda d=d, v=v: d.send_many([1, v])),
                (f"sched_poll([{v!r}])", lambda d=d, v=v: d.sched_poll([v])),
            ]
            if not isinstance(v, (bytes, list)):  # those are sequences of valid ints
                calls.append((f"sched_poll(ports={v!r})", lambda d=d, v=v: d.sched_poll(v)))
            if not isinstance(v, int):  # a negative vCPU is just one that does not exist
                calls.append(
                    (f"sched_poll([1], vcpu={v!r})", lambda d=d, v=v: d.sched_poll([1], vcpu=v))
                )
            if not isinstance(v, int) or v < 0 or v >= 2**64:
                calls.append(
                    (f"sched_poll([1], timeout={v!r})",
                     lambda d=d, v=v: d.sched_poll([1], timeout=v))
                )
        for v in bad_doms:
            calls += [
                (f"alloc_unbound({v!r})", lambda d=d, v=v: d.alloc_unbound(v)),
                (f"alloc_unbound(0, dom={v!r})", lambda d=d, v=v: d.alloc_unbound(0, dom=v)),
                (f"bind_interdomain({v!r}, 1)", lambda d=d, v=v: d.bind_interdomain(v, 1)),
                (f"status(1, dom={v!r})", lambda d=d, v=v: d.status(1, dom=v)),
                (f"reset(dom={v!r})", lambda d=d, v=v: d.reset(dom=v)),
            ]
        for cmd in (None, 1.5, "6", b"\x06", [6]):
            calls.append((f"event_channel_op({cmd!r}, buf)",
                          lambda d=d, c=cmd: d.event_channel_op(c, bytearray(24))))
        for arg in (None, 6, 1.5, "x" * 24, bytes(24), memoryview(bytes(24)), [0] * 24,
                    (0,) * 24):
            for cmd in (3, 5, 6, 10):
                calls.append((f"event_channel_op({cmd}, {type(arg).__name__})",
                              lambda d=d, c=cmd, a=arg: d.event_channel_op(c, a)))
            calls.append((f"event_channel_op_compat({type(arg).__name__})",
                          lambda d=d, a=arg: d.event_channel_op_compat(a)))
        calls += [
            ("send_many(array('H'))", lambda d=d: d.send_many(array("H", [1, 2]))),
            ("send_many(array('d'))", lambda d=d: d.send_many(array("d", [1.0]))),
            ("send_many(bytes)", lambda d=d: d.send_many(b"\x01\x00\x00\x00")),
            ("send_many(None)", lambda d=d: d.send_many(None)),
            ("send_many(1)", lambda d=d: d.send_many(1)),
        ]
    for v in [None, 1.5, "1", -1, 2**64]:
        calls.append((f"hv.permit_pirq(1, {v!r})", lambda v=v: hv.permit_pirq(1, v)))
        if v != 2**64:  # advance has no upper bound (semantics.md)
            calls.append((f"hv.advance({v!r})", lambda v=v: hv.advance(v)))
    for v in [None, 1.5, "1"]:
        calls += [
            (f"hv.send_virq(1, {v!r})", lambda v=v: hv.send_virq(1, v)),
            (f"hv.send_pirq(1, {v!r})", lambda v=v: hv.send_pirq(1, v)),
            (f"hv.inject(1, {v!r})", lambda v=v: hv.inject(1, v)),
            (f"hv.create_domain(vcpus={v!r})", lambda v=v: hv.create_domain(vcpus=v)),
        ]
    calls += [
        ("hv.create_domain(layout='arm')", lambda: hv.create_domain(layout="arm")),
        ("hv.create_domain(max_evtchn_port=-1)", lambda: hv.create_domain(max_evtchn_port=-1)),
        ("hv.create_domain(domid=0x7FF0)", lambda: hv.create_domain(domid=0x7FF0)),
        ("hv.create_domain(domid=-1)", lambda: hv.create_domain(domid=-1)),
        ("hv.create_domain(shared_info=bytes)",
         lambda: hv.create_domain(shared_info=bytes(4096))),
        ("hv.create_domain(shared_info=short)",
         lambda: hv.create_domain(shared_info=bytearray(100))),
    ]
    return calls


def _hv_domid_misuse_calls(hv):
    calls = []
    for v in [None, 1.5, "1", b"\x01", [1]]:
        calls += [
            (f"hv.send_virq({v!r}, 0)", lambda v=v: hv.send_virq(v, 0)),
            (f"hv.send_pirq({v!r}, 1)", lambda v=v: hv.send_pirq(v, 1)),
            (f"hv.inject({v!r}, 1)", lambda v=v: hv.inject(v, 1)),
            (f"hv.permit_pirq({v!r}, 1)", lambda v=v: hv.permit_pirq(v, 1)),
            (f"hv.pause_domain({v!r})", lambda v=v: hv.pause_domain(v)),
            (f"hv.unpause_domain({v!r})", lambda v=v: hv.unpause_domain(v)),
            (f"hv.destroy_domain({v!r})", lambda v=v: hv.destroy_domain(v)),
            (f"hv.domain({v!r})", lambda v=v: hv.domain(v)),
            (f"hv.set_virq_handler(2, {v!r})", lambda v=v: hv.set_virq_handler(2, v)),
        ]
        if v is not None:  # domid=None means "lowest unused"
            calls.append((f"hv.create_domain(domid={v!r})", lambda v=v: hv.create_domain(domid=v)))
    return calls


def build_busy_world():
    """A world with channels of every kind open and some ports pending."""
    hv, doms = make_world()
    d0, d1, d2, d3 = doms
    p = d1.alloc_unbound(0)
    d0.bind_interdomain(1, p)
    d2.alloc_unbound(3)
    d1.bind_virq(0, 1)
    d0.bind_virq(2)
    d1.bind_pirq(1, 1)
    ipi = d3.bind_ipi(1)
    d3.send(ipi)
    hv.send_virq(1, 0, 1)
    d0.sched_poll([d0.bind_ipi(0)], vcpu=1)
    return hv, doms


def run_misuse(hv, doms, calls):
    for what, fn in calls:
        before = shapshot(hv, doms)
        ndoms = len(hv.domains) if hasattr(hv, "domains") else None
        try:
            r = fn()
        except (TypeError, ValueError, OverflowError):
            pass
        except xe.EvtchnError as e:
            pytest.fail(f"{what}: raised EvtchnError({errno.errorcode.get(e.errno)}) "
                        "instead of a type/range error")
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{what}: raised {type(e).__name__}: {e!r}")
        else:
            pytest.fail(f"{what}: accepted, returned {r!r}")
        assert shapshot(hv, doms) == before, f"{what}: state changed"
        if ndoms is not None:
            assert len(hv.domains) == ndoms, f"{what}: a domain was created"


def test_type_misuse_changes_nothing():
    """Domain wrappers, raw entry points and hypervisor arguments other than domids:
    semantics.md "Entry points": non-int -> TypeError, out of the ABI field -> ValueError,
    a non-buffer or read-only buffer -> TypeError, all before anything runs."""
    hv, doms = build_busy_world()
    calls = _misuse_calls(hv, doms)
    assert len(calls) > 300
    run_misuse(hv, doms, calls)
    check_consistency_after_misuse(hv, doms)


def test_hypervisor_domid_type_misuse():
    """A domid that is not an int (None, float, str, ...) given to a Hypervisor method is
    a type error, not an unknown domain (ESRCH): docs/semantics.md "Hypervisor":
    "Everywhere: a non-int where an int is due raises TypeError"."""
    hv, doms = build_busy_world()
    run_misuse(hv, doms, _hv_domid_misuse_calls(hv))


def check_consistency_after_misuse(hv, doms):
    table = scan(hv, doms)
    assert table[1][1][0] == 2 and table[0][1][:4] == (2, 0, 1, 1)
