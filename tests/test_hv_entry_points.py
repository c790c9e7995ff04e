"""Raw entry points and the wrappers' argument handling (spec §3, §4.7, §12;
API.md "Raw hypercall"; semantics.md "Entry points")."""

from __future__ import annotations

import array
import ctypes
import errno
import json
import mmap
import struct
from pathlib import Path

import pytest

import xenabi
from hvhelpers import FILL, RawVia, raises_errno
from xenabi import CMD, DOMID_SELF, pack, si, size_of, unpack

# The spec's file when shared/ sits beside the project (as in CI), else the copy the
# layout tests keep in tests/data (and check against the spec's when both exist).
_SHARED_ABI_JSON = Path(__file__).resolve().parents[2] / "shared" / "spec" / "xen-abi.json"
ABI_JSON = _SHARED_ABI_JSON if _SHARED_ABI_JSON.exists() else Path(__file__).resolve().parent / "data" / "xen-abi.json"
GUEST_CMDS = [n for n in CMD if n not in ("init_control", "expand_array", "set_priority")]


# ------------------------------------------------------------- our own tables vs the spec


def test_xenabi_tables_match_xen_abi_json():
    abi = json.loads(ABI_JSON.read_text())
    field_map = {
        "u_dom": ["u.unbound.dom", "u.interdomain.dom"],
        "u_port": ["u.interdomain.port"],
        "u_pirq": ["u.pirq"],
        "u_virq": ["u.virq"],
    }
    for layout in ("x86_64", "x86_32"):
        structs = abi[layout]["structs"]
        for name, (size, fields) in xenabi.STRUCTS.items():
            js = structs["evtchn_reset" if name == "reset_cont" else "evtchn_" + name]
            assert js["size"] == size, (layout, name)
            for key, (off, fmt) in fields.items():
                for jkey in field_map.get(key, [key]):
                    jf = js["fields"][jkey]
                    assert (jf["offset"], jf["size"]) == (off, struct.calcsize(fmt)), (name, key)
        sh = xenabi.SHINFO[layout]
        si_js = structs["shared_info"]
        vi = structs["vcpu_info"]["fields"]
        assert si_js["size"] == sh["size"]
        assert si_js["fields"]["evtchn_pending"]["offset"] == sh["pending"]
        assert si_js["fields"]["evtchn_mask"]["offset"] == sh["mask"]
        assert si_js["fields"]["vcpu_info[1]"]["offset"] == xenabi.VCPU_INFO_STRIDE
        assert vi["evtchn_upcall_pending"]["offset"] == 0
        assert vi["evtchn_upcall_mask"]["offset"] == 1
        assert vi["evtchn_pending_sel"]["offset"] == sh["sel"]
        assert vi["evtchn_pending_sel"]["size"] == struct.calcsize(sh["sel_fmt"])
        assert abi[layout]["types"]["xen_ulong_t"]["size"] * 8 == sh["bits"]
        assert abi[layout]["constants"]["EVTCHN_2L_NR_CHANNELS"] == sh["nr"]
        assert structs["evtchn_op"]["size"] == xenabi.EVTCHN_OP_SIZE
    for name, num in CMD.items():
        key = "EVTCHNOP_" + name
        got = abi["x86_64"]["constants"].get(key, abi["derived_constants"].get(key))
        assert got == num, name


def test_constants_match_the_abi(xe):
    abi = json.loads(ABI_JSON.read_text())
    consts = abi["x86_64"]["constants"]
    names = [
        k
        for k in consts
        if k.startswith(("EVTCHNOP_", "EVTCHNSTAT_", "VIRQ_"))
        or k in ("NR_VIRQS", "DOMID_SELF", "XEN_LEGACY_MAX_VCPUS", "BIND_PIRQ__WILL_SHARE",
                 "EVTCHN_2L_NR_CHANNELS")
    ]
    assert len(names) >= 40
    for k in names:
        assert getattr(xe, k) == consts[k], k
    assert xe.EVTCHNOP_reset_cont == 14
    assert xe.DOMID_SELF == 0x7FF0 and xe.NR_VIRQS == 24


def test_evtchn_error_is_oserror(xe, domu):
    assert issubclass(xe.EvtchnError, OSError)
    e = xe.EvtchnError(errno.EBUSY)
    assert e.errno == errno.EBUSY and isinstance(e, OSError)
    with pytest.raises(OSError) as ei:
        domu.close(0)
    assert type(ei.value) is xe.EvtchnError or isinstance(ei.value, xe.EvtchnError)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(xe.EvtchnError) as ei:
        domu.status(0, dom=999)
    assert ei.value.errno == errno.ESRCH


# --------------------------------------------------------------------- raw round trips


def test_raw_alloc_unbound_round_trip(xe, domu):
    buf = pack("alloc_unbound", fill=0xCC, extra=4, dom=DOMID_SELF, remote_dom=0x0123)
    assert domu.event_channel_op(xe.EVTCHNOP_alloc_unbound, buf) == 0
    assert buf == bytes.fromhex("f07f2301") + struct.pack("<I", 1) + b"\xcc" * 4
    assert unpack("alloc_unbound", buf)["dom"] == 0x7FF0  # DOMID_SELF is echoed, not resolved


def test_raw_bind_interdomain_round_trip(xe, pair):
    dom0, domu = pair
    rp = domu.alloc_unbound(dom0.domid)
    buf = pack("bind_interdomain", fill=0xCD, extra=4, remote_dom=domu.domid, remote_port=rp)
    before = bytes(buf)
    assert dom0.event_channel_op(0, buf) == 0
    assert buf[:8] == before[:8]  # remote_dom, padding, remote_port echoed
    assert struct.unpack_from("<I", buf, 8)[0] == 1
    assert buf[12:] == b"\xcd" * 4


@pytest.mark.parametrize(
    "name,fields,out_off",
    [
        ("bind_virq", dict(virq=0, vcpu=1), 8),
        ("bind_pirq", dict(pirq=200, flags=1), 8),
        ("bind_ipi", dict(vcpu=1), 4),
    ],
)
def test_raw_bind_round_trip(xe, dom0, name, fields, out_off):
    buf = pack(name, fill=0xEE, extra=8, **fields)
    before = bytes(buf)
    assert dom0.event_channel_op(CMD[name], buf) == 0
    assert buf[:out_off] == before[:out_off]
    assert struct.unpack_from("<I", buf, out_off)[0] == 1
    assert buf[out_off + 4 :] == before[out_off + 4 :]


def _status_raw(d, port, dom=DOMID_SELF):
    buf = bytearray(range(0x40, 0x40 + 24))  # every byte distinct
    struct.pack_into("<H", buf, 0, dom)
    struct.pack_into("<I", buf, 4, port)
    before = bytes(buf)
    assert d.event_channel_op(5, buf) == 0
    return before, buf


def test_raw_status_union_bytes_echo(xe, hv, pair):
    # spec §4.7 / §16: union bytes the state does not report keep the caller's bytes
    dom0, domu = pair
    ub = dom0.alloc_unbound(0x0ABC)
    pu = domu.alloc_unbound(dom0.domid)
    p0 = dom0.bind_interdomain(domu.domid, pu)
    pi = dom0.bind_pirq(0x42)
    vi = dom0.bind_virq(xe.VIRQ_TIMER, 1)
    ip = dom0.bind_ipi(1)

    def check(port, status, vcpu, union):
        before, buf = _status_raw(dom0, port)
        assert buf[:8] == before[:8]  # dom (DOMID_SELF 0x7FF0 stays), padding, port
        assert struct.unpack_from("<H", buf, 0)[0] == 0x7FF0
        assert struct.unpack_from("<II", buf, 8) == (status, vcpu)
        assert bytes(buf[16:24]) == union(before[16:24])

    keep = lambda u: u  # noqa: E731
    check(0, 0, 0, keep)  # RESERVED: closed
    check(40, 0, 0, keep)  # FREE: closed
    check(ip, 5, 1, keep)
    check(ub, 1, 0, lambda u: struct.pack("<H", 0x0ABC) + u[2:])
    check(p0, 2, 0, lambda u: struct.pack("<H", domu.domid) + u[2:4] + struct.pack("<I", pu))
    check(pi, 3, 0, lambda u: struct.pack("<I", 0x42) + u[4:])
    check(vi, 4, 1, lambda u: struct.pack("<I", xe.VIRQ_TIMER) + u[4:])


def test_raw_status_of_other_domain_echoes_dom(xe, pair):
    dom0, domu = pair
    p = domu.bind_ipi(0)
    before, buf = _status_raw(dom0, p, dom=domu.domid)
    assert struct.unpack_from("<H", buf, 0)[0] == domu.domid
    assert struct.unpack_from("<I", buf, 8)[0] == 5


def test_raw_commands_without_outputs_never_write(xe, hv, pair):
    dom0, domu = pair
    hv.pause_domain(domu.domid)
    ub = domu.alloc_unbound(0)
    ipi = domu.bind_ipi(0)
    si(domu).set_mask(ipi)
    for name, fields, caller in [
        ("bind_vcpu", dict(port=ub, vcpu=1), domu),
        ("send", dict(port=ipi), domu),
        ("unmask", dict(port=ipi), domu),
        ("close", dict(port=ub), domu),
        ("reset", dict(dom=DOMID_SELF), domu),
        ("reset", dict(dom=domu.domid), dom0),
    ]:
        buf = pack(name, fill=0x5A, extra=16, **fields)
        before = bytes(buf)
        assert caller.event_channel_op(CMD[name], buf) == 0, name
        assert bytes(buf) == before, name
    assert domu.status(ipi).status == 0  # the reset did run


def test_raw_accepts_any_writable_buffer(xe, domu):
    # a slice view: the struct written back lands in the underlying bytearray
    big = bytearray(b"\x99" * 32)
    view = memoryview(big)[8:16]
    pack_into = xenabi.pack_into
    pack_into("alloc_unbound", view, 0, dom=DOMID_SELF, remote_dom=0)
    assert domu.event_channel_op(6, view) == 0
    assert struct.unpack_from("<I", big, 12)[0] == 1
    assert big[:8] == b"\x99" * 8 and big[16:] == b"\x99" * 16
    # array('B'), array('I') (same bytes, other item size), ctypes, mmap
    a = array.array("B", pack("alloc_unbound", dom=DOMID_SELF, remote_dom=0))
    assert domu.event_channel_op(6, a) == 0
    assert struct.unpack_from("<I", a, 4)[0] == 2
    ai = array.array("I", [struct.unpack_from("<I", pack("alloc_unbound", dom=DOMID_SELF))[0], 0])
    assert domu.event_channel_op(6, ai) == 0
    assert ai[1] == 3
    cb = ctypes.create_string_buffer(bytes(pack("alloc_unbound", dom=DOMID_SELF)), 8)
    assert domu.event_channel_op(6, cb) == 0
    assert struct.unpack_from("<I", cb.raw, 4)[0] == 4
    m = mmap.mmap(-1, 4096)
    m[:8] = bytes(pack("alloc_unbound", dom=DOMID_SELF))
    assert domu.event_channel_op(6, m) == 0
    assert struct.unpack_from("<I", m, 4)[0] == 5
    assert domu.status(5).status == 1


BAD_ARGS = [
    lambda: b"\x00" * 64,
    lambda: memoryview(b"\x00" * 64),
    lambda: memoryview(bytearray(64)).toreadonly(),
    lambda: "x" * 64,
    lambda: None,
    lambda: 0,
    lambda: [0] * 64,
    lambda: object(),
]


@pytest.mark.parametrize("make", BAD_ARGS)
def test_raw_refuses_read_only_and_non_buffers(xe, domu, make):
    arg = make()
    for cmd in (6, 4, 99, -1):  # before anything runs, even before the cmd check
        with pytest.raises(TypeError):
            domu.event_channel_op(cmd, arg)
    with pytest.raises(TypeError):
        domu.event_channel_op_compat(arg)
    assert domu.alloc_unbound(0) == 1


@pytest.mark.parametrize("cmd", ["6", 6.0, None, b"\x06", [6]])
def test_raw_cmd_must_be_int(xe, domu, cmd):
    buf = pack("alloc_unbound", dom=DOMID_SELF)
    with pytest.raises(TypeError):
        domu.event_channel_op(cmd, buf)
    assert buf == pack("alloc_unbound", dom=DOMID_SELF)
    assert domu.alloc_unbound(0) == 1


def test_raw_cmd_intenum_accepted(xe, domu):
    buf = pack("bind_ipi", vcpu=0)
    assert domu.event_channel_op(xe.EVTCHNOP_bind_ipi, buf) == 0
    assert unpack("bind_ipi", buf)["port"] == 1


@pytest.mark.parametrize(
    "cmd", [-1, -2, 15, 16, 32, 100, 2**31 - 1, -(2**31), 2**32, 2**32 + 6, 2**63, 2**64, -(2**70)]
)
def test_raw_unknown_cmd_enosys(xe, domu, cmd):
    buf = bytearray(b"\x3c" * 64)
    assert domu.event_channel_op(cmd, buf) == -errno.ENOSYS
    assert buf == b"\x3c" * 64
    assert domu.event_channel_op(cmd, bytearray()) == -errno.ENOSYS


@pytest.mark.parametrize(
    "cmd,err",
    [
        (11, errno.ENOENT),  # init_control: vcpu 0x3c3c3c3c does not exist (checked first)
        (12, errno.EOPNOTSUPP),  # expand_array on a 2-level domain
        (13, errno.EINVAL),  # set_priority: port 0x3c3c3c3c is not valid
    ],
)
def test_raw_fifo_cmds_are_commands(xe, domu, cmd, err):
    # Spec §4.12-4.14 (tests/test_fifo_*.py cover them fully): real commands now; a
    # failure writes nothing, a short struct is -EFAULT, compat (16) still refuses them.
    buf = bytearray(b"\x3c" * 64)
    assert domu.event_channel_op(cmd, buf) == -err
    assert buf == b"\x3c" * 64
    assert domu.event_channel_op(cmd, bytearray(b"\x3c" * 7)) == -errno.EFAULT
    op = bytearray(b"\x3c" * 28)
    op[0:4] = cmd.to_bytes(4, "little")
    assert domu.event_channel_op_compat(op) == -errno.ENOSYS


def test_raw_reset_cont_idle_ebusy(xe, pair):
    dom0, domu = pair
    for d in (dom0, domu):
        buf = pack("reset_cont", fill=0x11, extra=6, dom=DOMID_SELF)
        before = bytes(buf)
        assert d.event_channel_op(14, buf) == -errno.EBUSY
        assert bytes(buf) == before


def _state(*doms):
    out = []
    for d in doms:
        out.append(si(d).snapshot())
        for p in range(64):
            st = d.status(p)
            out.append((st.status, st.vcpu, st.dom, st.port, st.pirq, st.virq))
    return out


SHORT_CASES = {
    "bind_interdomain": lambda ctx: dict(remote_dom=0, remote_port=ctx["rp"]),
    "bind_virq": lambda ctx: dict(virq=0, vcpu=0),
    "bind_pirq": lambda ctx: dict(pirq=5, flags=0),
    "close": lambda ctx: dict(port=ctx["ipi"]),
    "send": lambda ctx: dict(port=ctx["ipi"]),
    "status": lambda ctx: dict(dom=DOMID_SELF, port=ctx["ipi"]),
    "alloc_unbound": lambda ctx: dict(dom=DOMID_SELF, remote_dom=0),
    "bind_ipi": lambda ctx: dict(vcpu=0),
    "bind_vcpu": lambda ctx: dict(port=ctx["ub"], vcpu=1),
    "unmask": lambda ctx: dict(port=ctx["masked"]),
    "reset": lambda ctx: dict(dom=DOMID_SELF),
    "reset_cont": lambda ctx: dict(dom=DOMID_SELF),
}


@pytest.fixture
def short_ctx(hv, pair):
    dom0, domu = pair
    hv.permit_pirq(domu.domid, 5)
    ctx = dict(
        rp=dom0.alloc_unbound(domu.domid),
        ipi=domu.bind_ipi(0),
        ub=domu.alloc_unbound(0),
        masked=domu.bind_ipi(0),
    )
    s = si(domu)
    s.set_mask(ctx["masked"])
    domu.send(ctx["masked"])
    return dom0, domu, ctx


@pytest.mark.parametrize("name", GUEST_CMDS)
def test_raw_short_buffer_efault_no_side_effects(xe, short_ctx, name):
    dom0, domu, ctx = short_ctx
    full = pack(name, **SHORT_CASES[name](ctx))
    before = _state(dom0, domu)
    for n in sorted({0, 1, len(full) - 1}):
        buf = bytearray(full[:n])
        assert domu.event_channel_op(CMD[name], buf) == -errno.EFAULT, (name, n)
        assert buf == full[:n]
    assert _state(dom0, domu) == before


# ----------------------------------------------------------------------------- compat


def test_compat_round_trip(xe, domu):
    op = xenabi.compat_op("alloc_unbound", fill=0x77, dom=DOMID_SELF, remote_dom=0x0042)
    before = bytes(op)
    assert domu.event_channel_op_compat(op) == 0
    assert op[:8] == before[:8]  # cmd, dom, remote_dom
    assert struct.unpack_from("<I", op, 8)[0] == 1
    assert op[12:] == before[12:]
    # longer buffers are fine, the extra bytes untouched
    op = xenabi.compat_op("bind_ipi", fill=0x77, vcpu=1) + b"\x66" * 8
    assert domu.event_channel_op_compat(op) == 0
    assert struct.unpack_from("<I", op, 8)[0] == 2
    assert op[28:] == b"\x66" * 8 and op[12:28] == b"\x77" * 16


def test_compat_status(xe, domu):
    p = domu.bind_virq(xe.VIRQ_DEBUG, 1)
    op = bytearray(range(100, 128))
    struct.pack_into("<iHxxI", op, 0, 5, DOMID_SELF, p)
    before = bytes(op)
    assert domu.event_channel_op_compat(op) == 0
    assert op[:12] == before[:12]
    assert struct.unpack_from("<III", op, 12) == (4, 1, xe.VIRQ_DEBUG)
    assert op[24:28] == before[24:28]


@pytest.mark.parametrize("cmd", [10, 11, 12, 13, 14, 15, 32, 0x7FFFFFFF, -1, -(2**31)])
def test_compat_cmd_out_of_range_enosys(xe, domu, cmd):
    op = bytearray(b"\x00" * 28)
    struct.pack_into("<i", op, 0, cmd)
    before = bytes(op)
    assert domu.event_channel_op_compat(op) == -errno.ENOSYS
    assert op == before
    assert domu.alloc_unbound(0) == 1  # dom=0,remote=0 never ran as anything


def test_compat_reset_and_reset_cont_not_carried(xe, domu):
    p = domu.bind_ipi(0)
    for cmd in (10, 14):
        op = bytearray(28)
        struct.pack_into("<iH", op, 0, cmd, DOMID_SELF)
        assert domu.event_channel_op_compat(op) == -errno.ENOSYS
    assert domu.status(p).status == 5


@pytest.mark.parametrize("n", [0, 4, 8, 12, 27])
def test_compat_short_buffer_efault(xe, short_ctx, n):
    dom0, domu, ctx = short_ctx
    before = _state(dom0, domu)
    for name in ("alloc_unbound", "send", "close", "bind_ipi", "unmask", "status"):
        full = xenabi.compat_op(name, **SHORT_CASES[name](ctx))
        buf = bytearray(full[:n])
        assert domu.event_channel_op_compat(buf) == -errno.EFAULT, (name, n)
        assert buf == full[:n]
    bad = bytearray(27)
    bad[0] = 99  # the 28-byte copy-in fails before the cmd is looked at
    assert domu.event_channel_op_compat(bad) == -errno.EFAULT
    assert _state(dom0, domu) == before


def test_compat_all_commands_0_to_9(xe, pair):
    dom0, domu = pair
    raw = RawVia(xe)
    from hvhelpers import CompatVia

    c = CompatVia(xe)
    p = c.alloc_unbound(domu, dom0.domid)  # 6
    lp = c.bind_interdomain(dom0, domu.domid, p)  # 0
    v = c.bind_virq(domu, xe.VIRQ_TIMER, 1)  # 1
    g = c.bind_pirq(dom0, 9)  # 2
    i = c.bind_ipi(domu, 0)  # 7
    c.send(dom0, lp)  # 4
    assert si(domu).pending(p)
    c.bind_vcpu(domu, p, 1)  # 8
    assert c.status(domu, p) == (2, 1, dom0.domid, lp, None, None)  # 5
    si(domu).set_mask(i)
    c.unmask(domu, i)  # 9
    assert not si(domu).masked(i)
    c.close(domu, v)  # 3
    assert raw.status(domu, v)[0] == 0
    assert g == 2


# -------------------------------------------------------------------- wrapper arguments

WRAPPER_ARGS = {
    "alloc_unbound.remote_dom": (lambda d, x: d.alloc_unbound(x), 16),
    "alloc_unbound.dom": (lambda d, x: d.alloc_unbound(0, dom=x), 16),
    "bind_interdomain.remote_dom": (lambda d, x: d.bind_interdomain(x, 1), 16),
    "bind_interdomain.remote_port": (lambda d, x: d.bind_interdomain(DOMID_SELF, x), 32),
    "bind_virq.virq": (lambda d, x: d.bind_virq(x), 32),
    "bind_virq.vcpu": (lambda d, x: d.bind_virq(0, x), 32),
    "bind_pirq.pirq": (lambda d, x: d.bind_pirq(x), 32),
    "bind_pirq.flags": (lambda d, x: d.bind_pirq(1, x), 32),
    "bind_ipi.vcpu": (lambda d, x: d.bind_ipi(x), 32),
    "close.port": (lambda d, x: d.close(x), 32),
    "send.port": (lambda d, x: d.send(x), 32),
    "status.port": (lambda d, x: d.status(x), 32),
    "status.dom": (lambda d, x: d.status(0, dom=x), 16),
    "bind_vcpu.port": (lambda d, x: d.bind_vcpu(x, 0), 32),
    "bind_vcpu.vcpu": (lambda d, x: d.bind_vcpu(1, x), 32),
    "unmask.port": (lambda d, x: d.unmask(x), 32),
    "reset.dom": (lambda d, x: d.reset(dom=x), 16),
}


@pytest.mark.parametrize("which", list(WRAPPER_ARGS))
def test_wrapper_argument_checks(xe, hv, which):
    call, bits = WRAPPER_ARGS[which]
    d = hv.create_domain(vcpus=2, privileged=True)
    before = si(d).snapshot()
    # semantics.md: ValueError; the one-C-call fast path of send may let cffi's own
    # OverflowError through (API.md allows both), never anything else.
    out_of_range = (ValueError, OverflowError) if which == "send.port" else ValueError
    for bad in (-1, -(2**40), 2**bits, 2**32 + 1, 2**64, 2**100):
        with pytest.raises(out_of_range):
            call(d, bad)
    for bad in ("1", 1.0, None, b"\x01", [1], 1j):
        with pytest.raises(TypeError):
            call(d, bad)
    # nothing ran: no port allocated, nothing raised
    assert d.status(1).status == 0 and si(d).snapshot() == before
    # the largest value that fits reaches the hypervisor: success or EvtchnError only
    try:
        call(d, 2**bits - 1)
    except xe.EvtchnError:
        pass


def test_wrapper_largest_values_reach_xen(xe, dom0):
    cases = [
        (lambda: dom0.alloc_unbound(0, dom=0xFFFF), errno.ESRCH),
        (lambda: dom0.bind_interdomain(0xFFFF, 1), errno.ESRCH),
        (lambda: dom0.bind_interdomain(DOMID_SELF, 2**32 - 1), errno.EINVAL),
        (lambda: dom0.bind_virq(2**32 - 1), errno.EINVAL),
        (lambda: dom0.bind_virq(2**31), errno.EINVAL),
        (lambda: dom0.bind_virq(0, 2**32 - 1), errno.ENOENT),
        (lambda: dom0.bind_pirq(2**32 - 1), errno.EINVAL),
        (lambda: dom0.bind_ipi(2**32 - 1), errno.ENOENT),
        (lambda: dom0.close(2**32 - 1), errno.EINVAL),
        (lambda: dom0.send(2**32 - 1), errno.EINVAL),
        (lambda: dom0.status(2**32 - 1), errno.EINVAL),
        (lambda: dom0.status(0, dom=0xFFFF), errno.ESRCH),
        (lambda: dom0.bind_vcpu(2**32 - 1, 0), errno.EINVAL),
        (lambda: dom0.bind_vcpu(1, 2**32 - 1), errno.ENOENT),
        (lambda: dom0.unmask(2**32 - 1), errno.EINVAL),
        (lambda: dom0.reset(dom=0xFFFF), errno.ESRCH),
    ]
    for call, err in cases:
        with raises_errno(xe, err):
            call()
    assert dom0.alloc_unbound(0xFFFF) == 1
    assert dom0.status(1).dom == 0xFFFF
    assert dom0.bind_pirq(1, 2**32 - 1) == 2


def test_wrapper_bool_is_int(xe, domu):
    p = domu.bind_ipi(True)
    assert p == 1 and domu.status(True).vcpu == 1
    q = domu.alloc_unbound(False)
    domu.bind_vcpu(q, True)
    assert domu.status(q).vcpu == 1
    domu.close(True)
    assert domu.status(1).status == 0


def test_wrapper_defaults(xe, pair):
    dom0, domu = pair
    assert domu.bind_ipi() == 1
    assert domu.status(1).vcpu == 0
    assert domu.bind_virq(xe.VIRQ_TIMER) == 2
    assert domu.status(2).vcpu == 0
    assert dom0.bind_pirq(3) == 1
    assert domu.alloc_unbound(0) == 3
    assert domu.status(3, dom=DOMID_SELF).dom == 0
    domu.reset()
    assert domu.status(3).status == 0


def test_via_helpers_fill_is_not_a_valid_value():
    # the raw helpers prefill unset bytes with FILL; make sure it cannot look like a result
    assert FILL not in (0, 1) and size_of("status") == 24
