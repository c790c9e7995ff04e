"""The C structs of csrc/xen_abi.h and the constants of xenevtchn.constants against
shared/spec/xen-abi.json (spec xen-hypervisor.md §12).

Every struct and every field of both the ``x86_64`` and the ``x86_32`` (compat) layout is
compared with cffi's view of the compiled C types: size, offset of every field (including
dotted union members such as ``u.unbound.dom`` and array element strides such as
``vcpu_info[1]``), size of every field, and the x86_64 alignment.

The JSON is read from the spec directory beside the repository; when that is absent (an
sdist or a wheel test run) from the copy in ``tests/data/xen-abi.json``. When both exist
they must be identical, so the copy cannot silently go stale.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from xenevtchn import constants as C
from xenevtchn._native import ffi, lib

_HERE = Path(__file__).resolve().parent
SHARED_JSON = Path(__file__).resolve().parents[2] / "shared/spec/xen-abi.json"
LOCAL_JSON = _HERE / "data" / "xen-abi.json"


def _load_abi() -> dict:
    path = SHARED_JSON if SHARED_JSON.is_file() else LOCAL_JSON
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


ABI = _load_abi()
LAYOUTS = ("x86_64", "x86_32")

# x86_32 structs whose layout differs from x86_64 carry a compat_ prefix in C; every other
# struct is one C type shared by both layouts.
COMPAT_STRUCTS = {
    "vcpu_info",
    "arch_vcpu_info",
    "shared_info",
    "arch_shared_info",
    "sched_poll",
}


def c_struct_name(layout: str, name: str) -> str:
    if layout == "x86_32" and name in COMPAT_STRUCTS:
        return f"struct compat_{name}"
    return f"struct {name}"


def _struct_cases():
    for layout in LAYOUTS:
        for name in ABI[layout]["structs"]:
            yield pytest.param(layout, name, id=f"{layout}-{name}")


def _field_cases():
    for layout in LAYOUTS:
        for name, desc in ABI[layout]["structs"].items():
            for field in desc["fields"]:
                yield pytest.param(layout, name, field, id=f"{layout}-{name}.{field}")


_COMPONENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def resolve_field(ctype, path: str):
    """(offset, ctype) of a dotted / indexed field path, walked through cffi's fields."""
    offset = 0
    cur = ctype
    for comp in path.split("."):
        m = _COMPONENT.match(comp)
        assert m, f"cannot parse field path component {comp!r} of {path!r}"
        name, index = m.group(1), m.group(2)
        assert cur.kind in ("struct", "union"), f"{path!r}: {cur.cname} has no field {name!r}"
        fields = dict(cur.fields)
        assert name in fields, f"{cur.cname} has no field {name!r} (path {path!r}); has {sorted(fields)}"
        cf = fields[name]
        assert cf.bitsize == -1, f"{path!r} is a bit-field"
        offset += cf.offset
        cur = cf.type
        if index is not None:
            assert cur.kind == "array", f"{path!r}: {name} is not an array"
            idx = int(index)
            assert idx < cur.length, f"{path!r}: index {idx} out of range {cur.length}"
            cur = cur.item
            offset += idx * ffi.sizeof(cur)
    return offset, cur


def offsetof_args(path: str) -> list:
    """The arguments ffi.offsetof takes for a field path: names and array indexes."""
    args: list = []
    for comp in path.split("."):
        m = _COMPONENT.match(comp)
        args.append(m.group(1))
        if m.group(2) is not None:
            args.append(int(m.group(2)))
    return args


# ---- the JSON itself -------------------------------------------------------------------


def test_local_copy_exists():
    """The fallback copy must be present so the suite runs without the spec directory."""
    assert LOCAL_JSON.is_file(), f"missing {LOCAL_JSON}"
    with open(LOCAL_JSON, encoding="utf-8") as fh:
        json.load(fh)


@pytest.mark.skipif(not SHARED_JSON.is_file(), reason="shared spec directory not present (sdist)")
def test_local_copy_matches_shared_spec():
    assert json.loads(LOCAL_JSON.read_text("utf-8")) == json.loads(SHARED_JSON.read_text("utf-8")), (
        f"{LOCAL_JSON} is stale: copy {SHARED_JSON} over it"
    )


def test_json_has_both_layouts():
    for layout in LAYOUTS:
        assert ABI[layout]["structs"], layout
        assert "shared_info" in ABI[layout]["structs"]


# ---- structs ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout,name", list(_struct_cases()))
def test_struct_size(layout, name):
    want = ABI[layout]["structs"][name]["size"]
    cname = c_struct_name(layout, name)
    assert ffi.sizeof(cname) == want, f"sizeof({cname}) != {want} ({layout})"


@pytest.mark.parametrize("name", list(ABI["x86_64"]["structs"]))
def test_struct_alignment_x86_64(name):
    want = ABI["x86_64"]["structs"][name]["align"]
    cname = c_struct_name("x86_64", name)
    assert ffi.alignof(cname) == want, f"alignof({cname}) != {want}"


@pytest.mark.parametrize("layout,name,field", list(_field_cases()))
def test_field_offset_and_size(layout, name, field):
    want = ABI[layout]["structs"][name]["fields"][field]
    cname = c_struct_name(layout, name)
    offset, ftype = resolve_field(ffi.typeof(cname), field)
    assert offset == want["offset"], f"offsetof({cname}, {field}) = {offset}, spec {want['offset']}"
    assert ffi.offsetof(cname, *offsetof_args(field)) == want["offset"], (
        f"ffi.offsetof({cname}, {field}) disagrees with the spec"
    )
    assert ffi.sizeof(ftype) == want["size"], (
        f"sizeof({cname}.{field}) = {ffi.sizeof(ftype)}, spec {want['size']}"
    )
    # A field must lie inside its struct.
    assert want["offset"] + want["size"] <= ffi.sizeof(cname)


@pytest.mark.parametrize("layout,name", list(_struct_cases()))
def test_struct_has_exactly_the_spec_fields(layout, name):
    """No top-level field missing from, or added to, the spec's list."""
    spec_top = {f.split(".")[0].split("[")[0] for f in ABI[layout]["structs"][name]["fields"]}
    cname = c_struct_name(layout, name)
    c_top = {fname for fname, _ in ffi.typeof(cname).fields}
    assert c_top == spec_top, f"{cname}: C fields {sorted(c_top)} vs spec {sorted(spec_top)}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fields_in_order_and_non_overlapping(layout):
    """Top-level fields of every struct tile it in declaration order (unions aside)."""
    for name, desc in ABI[layout]["structs"].items():
        cname = c_struct_name(layout, name)
        ct = ffi.typeof(cname)
        if ct.kind != "struct":
            continue
        end = 0
        for fname, cf in ct.fields:
            assert cf.offset >= end, f"{cname}.{fname} overlaps the previous field"
            end = cf.offset + ffi.sizeof(cf.type)
        assert end <= ffi.sizeof(cname)


def test_evtchn_status_union_members_share_storage():
    """u.unbound.dom, u.interdomain.dom, u.pirq and u.virq all start at the union."""
    for layout in LAYOUTS:
        f = ABI[layout]["structs"]["evtchn_status"]["fields"]
        base = f["u"]["offset"]
        for member in ("u.unbound.dom", "u.interdomain.dom", "u.pirq", "u.virq"):
            assert f[member]["offset"] == base
        assert ffi.offsetof("struct evtchn_status", "u", "pirq") == base


# ---- types -----------------------------------------------------------------------------


@pytest.mark.parametrize("tname", ["domid_t", "evtchn_port_t", "event_word_t"])
def test_plain_types(tname):
    for layout in LAYOUTS:
        assert ffi.sizeof(tname) == ABI[layout]["types"][tname]["size"], (tname, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_xen_ulong_t_is_the_event_word(layout):
    """xen_ulong_t is the bitmap word and the selector: 8 bytes x86_64, 4 bytes x86_32."""
    want = ABI[layout]["types"]["xen_ulong_t"]["size"]
    si = ffi.typeof(c_struct_name(layout, "shared_info"))
    _, pend = resolve_field(si, "evtchn_pending")
    _, mask = resolve_field(si, "evtchn_mask")
    assert ffi.sizeof(pend.item) == want
    assert ffi.sizeof(mask.item) == want
    _, sel = resolve_field(ffi.typeof(c_struct_name(layout, "vcpu_info")), "evtchn_pending_sel")
    assert ffi.sizeof(sel) == want
    # W*W ports: the bitmaps have W words of W bits (spec §2.1).
    w = want * 8
    assert pend.length == w and mask.length == w
    assert w * w == ABI[layout]["constants"]["EVTCHN_2L_NR_CHANNELS"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shared_info_vcpu_slots(layout):
    si = ffi.typeof(c_struct_name(layout, "shared_info"))
    _, vi = resolve_field(si, "vcpu_info")
    assert vi.kind == "array"
    assert vi.length == ABI[layout]["constants"]["XEN_LEGACY_MAX_VCPUS"] == 32
    assert ffi.sizeof(vi.item) == ABI[layout]["structs"]["vcpu_info"]["size"]
    assert vi.item is ffi.typeof(c_struct_name(layout, "vcpu_info"))


def test_spec_handy_addresses_x86_64():
    """§12.3: pending bitmap at 2048, mask at 2560, vCPU v at 64v (+1 mask, +8 selector)."""
    s = "struct shared_info"
    assert ffi.offsetof(s, "evtchn_pending") == 2048
    assert ffi.offsetof(s, "evtchn_mask") == 2560
    for v in (0, 1, 17, 31):
        assert ffi.offsetof(s, "vcpu_info", v) == 64 * v
        assert ffi.offsetof(s, "vcpu_info", v) + ffi.offsetof("struct vcpu_info", "evtchn_upcall_mask") == 64 * v + 1
        assert ffi.offsetof(s, "vcpu_info", v) + ffi.offsetof("struct vcpu_info", "evtchn_pending_sel") == 64 * v + 8


def test_spec_handy_addresses_x86_32():
    """§12.2: pending at 2048, mask at 2176, selector u32 at 64v+4."""
    s = "struct compat_shared_info"
    assert ffi.offsetof(s, "evtchn_pending") == 2048
    assert ffi.offsetof(s, "evtchn_mask") == 2176
    for v in (0, 1, 31):
        base = ffi.offsetof(s, "vcpu_info", v)
        assert base == 64 * v
        assert base + ffi.offsetof("struct compat_vcpu_info", "evtchn_pending_sel") == 64 * v + 4


# ---- the C core's own view of the sizes ------------------------------------------------


@pytest.mark.parametrize("layout,code", [("x86_64", "XE_LAYOUT_X86_64"), ("x86_32", "XE_LAYOUT_X86_32")])
def test_xe_shinfo_size(layout, code):
    assert lib.xe_shinfo_size(getattr(lib, code)) == ABI[layout]["structs"]["shared_info"]["size"]


@pytest.mark.parametrize("layout,code", [("x86_64", "XE_LAYOUT_X86_64"), ("x86_32", "XE_LAYOUT_X86_32")])
def test_xe_shinfo_init_geometry(layout, code):
    page = ffi.new("uint64_t[]", 512)
    s = ffi.new("struct xe_shinfo *")
    assert lib.xe_shinfo_init(s, page, getattr(lib, code)) == 0
    w = ABI[layout]["types"]["xen_ulong_t"]["size"] * 8
    assert s.word_bits == w
    assert s.nr_ports == ABI[layout]["constants"]["EVTCHN_2L_NR_CHANNELS"] == w * w
    assert s.base == page
    # init writes nothing
    assert all(page[i] == 0 for i in range(512))


def test_c_enum_constants():
    k = ABI["x86_64"]["constants"]
    assert lib.XE_MAX_VCPUS == k["XEN_LEGACY_MAX_VCPUS"]
    assert lib.XE_NR_DOMIDS == k["DOMID_FIRST_RESERVED"]
    d = ABI["derived_constants"]
    for name in ("ECS_FREE", "ECS_RESERVED", "ECS_UNBOUND", "ECS_INTERDOMAIN", "ECS_PIRQ", "ECS_VIRQ", "ECS_IPI"):
        assert getattr(lib, "XE_" + name) == d[name], name


# ---- xenevtchn.constants -----------------------------------------------------------------

# Names that constants.py must define (prefix match or exact), checked against the JSON.
_REQUIRED = re.compile(
    r"^(EVTCHNOP_|EVTCHNSTAT_|VIRQ_|DOMID_|NR_VIRQS$|XEN_LEGACY_MAX_VCPUS$|BIND_PIRQ__WILL_SHARE$"
    r"|EVTCHN_2L_NR_CHANNELS$|EVTCHN_FIFO_NR_CHANNELS$|EVTCHN_FIFO_LINK_BITS$"
    r"|EVTCHN_FIFO_MAX_QUEUES$|EVTCHN_FIFO_PRIORITY_)"
)


def _constant_cases():
    names = set(ABI["x86_64"]["constants"]) | set(ABI["x86_32"]["constants"])
    return sorted(names)


@pytest.mark.parametrize("name", _constant_cases())
def test_module_constant(name):
    v64 = ABI["x86_64"]["constants"].get(name)
    v32 = ABI["x86_32"]["constants"].get(name)
    if name == "EVTCHN_2L_NR_CHANNELS":
        assert C.EVTCHN_2L_NR_CHANNELS == v64
        assert C.EVTCHN_2L_NR_CHANNELS_X86_32 == v32
        return
    assert v64 == v32, f"{name} differs between layouts in the JSON; handle it explicitly"
    if _REQUIRED.match(name):
        assert hasattr(C, name), f"xenevtchn.constants lacks {name}"
    if hasattr(C, name):
        got = getattr(C, name)
        assert got == v64, f"constants.{name} = {got}, spec {v64}"
        assert int(got) == v64


def test_evtchnop_reset_cont():
    assert C.EVTCHNOP_reset_cont == ABI["derived_constants"]["EVTCHNOP_reset_cont"]


def test_virq_arch_range():
    """VIRQ_ARCH_0..7 are 16..23 and NR_VIRQS is 24 (§6.1, JSON virq table)."""
    for i in range(8):
        assert getattr(C, f"VIRQ_ARCH_{i}") == 16 + i
    assert C.NR_VIRQS == 24 == ABI["x86_64"]["constants"]["NR_VIRQS"]
    named = {int(k.split()[0]) for k in ABI["virq_classification_head"] if k.split()[0].isdigit()}
    unnamed = {int(k.split()[0]) for k, v in ABI["virq_classification_head"].items() if "unnamed" in k}
    for num in named - unnamed:
        assert num in {int(v) for v in C.Virq}, f"VIRQ {num} missing from constants.Virq"


def test_enums_match_module_names():
    for member in C.EvtchnOp:
        assert getattr(C, f"EVTCHNOP_{member.name}") == member
    for member in C.EvtchnStat:
        assert getattr(C, f"EVTCHNSTAT_{member.name}") == member
    k = ABI["x86_64"]["constants"]
    assert {m.name: int(m) for m in C.EvtchnOp if m.name != "reset_cont"} == {
        n[len("EVTCHNOP_"):]: v for n, v in k.items() if n.startswith("EVTCHNOP_")
    }
    assert {m.name: int(m) for m in C.EvtchnStat} == {
        n[len("EVTCHNSTAT_"):]: v for n, v in k.items() if n.startswith("EVTCHNSTAT_")
    }


def test_derived_constants():
    d = ABI["derived_constants"]
    assert C.PAGE_SIZE == d["PAGE_SIZE"]
    assert C.EVTCHNS_PER_BUCKET == d["EVTCHNS_PER_BUCKET_x86_64_typical"]
    assert C.SCHEDOP_POLL_MAX_PORTS == d["SCHEDOP_poll_MAX_NR_PORTS"]
    assert C.IRQ_MAX_GUESTS == d["IRQ_MAX_GUESTS_DEFAULT"]
    assert C.EVTCHN_2L_NR_CHANNELS == d["EVTCHN_2L_MAX_PORTS_64bit_guest"]
    assert C.EVTCHN_2L_NR_CHANNELS_X86_32 == d["EVTCHN_2L_MAX_PORTS_32bit_guest"]
    for state in C.ChannelState:
        assert d[f"ECS_{state.name}"] == int(state)
    for cls in C.VirqClass:
        assert d[f"VIRQ_TYPE_{cls.name}"] == int(cls)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shared_info_size_constant(layout):
    assert C.SHARED_INFO_SIZE[layout] == ABI[layout]["structs"]["shared_info"]["size"]
    assert set(C.LAYOUTS) == set(LAYOUTS)
