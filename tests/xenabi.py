"""Independent ABI helpers for the tests (spec §7, §8, §12; xen-abi.json).

Written from the spec's layout tables, not from either implementation: every struct is
packed with ``struct`` (little-endian, explicit offsets) so that a wrong offset in the
package cannot hide behind the same mistake here.  ``test_hv_entry_points`` checks these
tables against ``shared/spec/xen-abi.json``.
"""

from __future__ import annotations

import struct

DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_INVALID = 0x7FF4

# Command numbers (spec §3, §4; reset_cont = 14 is not in the guest header).
CMD = {
    "bind_interdomain": 0,
    "bind_virq": 1,
    "bind_pirq": 2,
    "close": 3,
    "send": 4,
    "status": 5,
    "alloc_unbound": 6,
    "bind_ipi": 7,
    "bind_vcpu": 8,
    "unmask": 9,
    "reset": 10,
    "init_control": 11,
    "expand_array": 12,
    "set_priority": 13,
    "reset_cont": 14,
}

# x86_64 layouts, spec §12.1: name -> (sizeof, {field: (offset, struct format)}).
# The status union members overlap (u.unbound.dom / u.interdomain.dom / u.pirq / u.virq).
STRUCTS = {
    "alloc_unbound": (8, {"dom": (0, "H"), "remote_dom": (2, "H"), "port": (4, "I")}),
    "bind_interdomain": (
        12,
        {"remote_dom": (0, "H"), "remote_port": (4, "I"), "local_port": (8, "I")},
    ),
    "bind_virq": (12, {"virq": (0, "I"), "vcpu": (4, "I"), "port": (8, "I")}),
    "bind_pirq": (12, {"pirq": (0, "I"), "flags": (4, "I"), "port": (8, "I")}),
    "bind_ipi": (8, {"vcpu": (0, "I"), "port": (4, "I")}),
    "close": (4, {"port": (0, "I")}),
    "send": (4, {"port": (0, "I")}),
    "status": (
        24,
        {
            "dom": (0, "H"),
            "port": (4, "I"),
            "status": (8, "I"),
            "vcpu": (12, "I"),
            "u_dom": (16, "H"),
            "u_port": (20, "I"),
            "u_pirq": (16, "I"),
            "u_virq": (16, "I"),
        },
    ),
    "bind_vcpu": (8, {"port": (0, "I"), "vcpu": (4, "I")}),
    "unmask": (4, {"port": (0, "I")}),
    "reset": (2, {"dom": (0, "H")}),
    "reset_cont": (2, {"dom": (0, "H")}),
    "init_control": (
        24,
        {"control_gfn": (0, "Q"), "offset": (8, "I"), "vcpu": (12, "I"), "link_bits": (16, "B")},
    ),
    "expand_array": (8, {"array_gfn": (0, "Q")}),
    "set_priority": (8, {"port": (0, "I"), "priority": (4, "I")}),
}

# Byte ranges (relative to the struct) a successful command may write (spec §3, §4).
# Everything else must read back exactly as the caller supplied it.
OUT_RANGES = {
    "alloc_unbound": [(4, 8)],
    "bind_interdomain": [(8, 12)],
    "bind_virq": [(8, 12)],
    "bind_pirq": [(8, 12)],
    "bind_ipi": [(4, 8)],
    "status": [(8, 24)],
    "close": [],
    "send": [],
    "bind_vcpu": [],
    "unmask": [],
    "reset": [],
    "reset_cont": [],
}

# evtchn_status union bytes (relative to the union at offset 16) that Xen does NOT write,
# per reported status (spec §4.7): they keep the caller's input.
STATUS_UNION_UNWRITTEN = {
    0: range(0, 8),  # closed
    1: range(2, 8),  # unbound: only u.unbound.dom (2 bytes) written
    2: range(2, 4),  # interdomain: padding between dom and port
    3: range(4, 8),  # pirq: u32
    4: range(4, 8),  # virq: u32
    5: range(0, 8),  # ipi
}

EVTCHN_OP_SIZE = 28  # struct evtchn_op: cmd (int32) at 0, union at 4


def size_of(name: str) -> int:
    return STRUCTS[name][0]


def pack_into(name: str, buf, base: int = 0, **fields) -> None:
    """Write the named fields of struct ``name`` into ``buf`` at ``base``."""
    _, layout = STRUCTS[name]
    for key, value in fields.items():
        off, fmt = layout[key]
        struct.pack_into("<" + fmt, buf, base + off, value)


def pack(name: str, fill: int = 0, extra: int = 0, **fields) -> bytearray:
    """A bytearray holding struct ``name`` (plus ``extra`` trailing bytes), all bytes
    ``fill`` except the given fields."""
    buf = bytearray([fill]) * (size_of(name) + extra)
    pack_into(name, buf, 0, **fields)
    return buf


def unpack(name: str, buf, base: int = 0) -> dict:
    _, layout = STRUCTS[name]
    return {
        key: struct.unpack_from("<" + fmt, buf, base + off)[0]
        for key, (off, fmt) in layout.items()
    }


def compat_op(name: str, fill: int = 0, cmd: int | None = None, **fields) -> bytearray:
    """A 28-byte ``struct evtchn_op`` with ``cmd`` (default: the command of ``name``)."""
    buf = bytearray([fill]) * EVTCHN_OP_SIZE
    struct.pack_into("<i", buf, 0, CMD[name] if cmd is None else cmd)
    pack_into(name, buf, 4, **fields)
    return buf


def decode_status(buf, base: int = 0):
    """(status, vcpu, dom, port, pirq, virq) from an evtchn_status, None where the state
    has no such field (API.md / semantics.md "Status")."""
    return status_fields_tuple(unpack("status", buf, base))


def status_fields_tuple(f: dict):
    st = f["status"]
    dom = port = pirq = virq = None
    if st == 1:
        dom = f["u_dom"]
    elif st == 2:
        dom, port = f["u_dom"], f["u_port"]
    elif st == 3:
        pirq = f["u_pirq"]
    elif st == 4:
        virq = f["u_virq"]
    return (st, f["vcpu"], dom, port, pirq, virq)


# ---------------------------------------------------------------- shared_info (§1.4, §12)

SHINFO = {
    "x86_64": dict(size=3136, pending=2048, mask=2560, bits=64, nr=4096, sel=8, sel_fmt="<Q"),
    "x86_32": dict(size=2344, pending=2048, mask=2176, bits=32, nr=1024, sel=4, sel_fmt="<I"),
}
VCPU_INFO_STRIDE = 64


class SharedInfoView:
    """Reads and writes Xen's shared_info bytes directly, as a guest kernel would."""

    def __init__(self, buf, layout: str = "x86_64"):
        mv = memoryview(buf)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        self.m = mv
        self.layout = layout
        self.L = SHINFO[layout]

    # bitmaps
    def _bit(self, base: int, port: int) -> int:
        return (self.m[base + port // 8] >> (port % 8)) & 1

    def _setbit(self, base: int, port: int, value: int) -> None:
        i = base + port // 8
        if value:
            self.m[i] = self.m[i] | (1 << (port % 8))
        else:
            self.m[i] = self.m[i] & ~(1 << (port % 8)) & 0xFF

    def pending(self, port: int) -> int:
        return self._bit(self.L["pending"], port)

    def set_pending(self, port: int, value: int = 1) -> None:
        self._setbit(self.L["pending"], port, value)

    def masked(self, port: int) -> int:
        return self._bit(self.L["mask"], port)

    def set_mask(self, port: int, value: int = 1) -> None:
        self._setbit(self.L["mask"], port, value)

    def word(self, port: int) -> int:
        return port // self.L["bits"]

    # vcpu_info
    def upcall_pending(self, vcpu: int) -> int:
        return self.m[VCPU_INFO_STRIDE * vcpu]

    def set_upcall_pending(self, vcpu: int, value: int) -> None:
        self.m[VCPU_INFO_STRIDE * vcpu] = value

    def upcall_mask(self, vcpu: int) -> int:
        return self.m[VCPU_INFO_STRIDE * vcpu + 1]

    def set_upcall_mask(self, vcpu: int, value: int) -> None:
        self.m[VCPU_INFO_STRIDE * vcpu + 1] = value

    def sel(self, vcpu: int) -> int:
        return struct.unpack_from(self.L["sel_fmt"], self.m, VCPU_INFO_STRIDE * vcpu + self.L["sel"])[0]

    def set_sel(self, vcpu: int, value: int) -> None:
        struct.pack_into(self.L["sel_fmt"], self.m, VCPU_INFO_STRIDE * vcpu + self.L["sel"], value)

    def ack(self, vcpu: int) -> None:
        """What a guest does on entering its upcall: clear upcall_pending and selector."""
        self.set_upcall_pending(vcpu, 0)
        self.set_sel(vcpu, 0)

    def snapshot(self) -> bytes:
        return bytes(self.m[: self.L["size"]])


def si(domain, layout: str = "x86_64") -> SharedInfoView:
    return SharedInfoView(domain.shared_info.buffer, layout)
