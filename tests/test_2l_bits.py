"""The 2-level bit rules of spec xen-hypervisor.md §8 (with §7.1 mark_events_pending,
§7.3 selector, §1.4 bit numbering, §12 addresses) on ``SharedInfo``, for both layouts.

Every check looks at the raw bytes of ``SharedInfo.buffer`` at the addresses the spec
gives, and most compare the *whole* buffer with an expected copy, so a write to a wrong
address or an extra write anywhere is caught, not only a missing one.

The last part is a differential test: random operation sequences against a small
pure-Python model of §8 written here from the spec, comparing the full buffer after every
step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from xenevtchn.shared_info import SET_KICK, SET_NEWLY, SharedInfo

NEWLY = 1
KICK = 2
PAGE = 4096
NVCPUS = 32


@dataclass(frozen=True)
class Layout:
    name: str
    W: int  # bits per event word
    pending: int  # byte offset of evtchn_pending[]
    mask: int  # byte offset of evtchn_mask[]
    sel: int  # offset of evtchn_pending_sel inside vcpu_info
    size: int  # sizeof(shared_info)

    @property
    def nr_ports(self) -> int:
        return self.W * self.W

    @property
    def sel_bytes(self) -> int:
        return self.W // 8


X86_64 = Layout("x86_64", 64, 2048, 2560, 8, 3136)
X86_32 = Layout("x86_32", 32, 2048, 2176, 4, 2344)
LAYOUTS = {"x86_64": X86_64, "x86_32": X86_32}


@pytest.fixture(params=["x86_64", "x86_32"])
def L(request) -> Layout:
    return LAYOUTS[request.param]


@pytest.fixture
def si(L) -> SharedInfo:
    s = SharedInfo(layout=L.name)
    assert bytes(s.buffer) == bytes(len(s.buffer)), "a fresh default page must be zero"
    return s


# ---- raw-byte helpers (spec §1.4 / §12) ------------------------------------------------


def bit(mem, base: int, n: int) -> int:
    return (mem[base + n // 8] >> (n % 8)) & 1


def setbit(mem: bytearray, base: int, n: int) -> None:
    mem[base + n // 8] |= 1 << (n % 8)


def clrbit(mem: bytearray, base: int, n: int) -> None:
    mem[base + n // 8] &= ~(1 << (n % 8)) & 0xFF


def up_off(v: int) -> int:
    return 64 * v


def umask_off(v: int) -> int:
    return 64 * v + 1


def sel_off(L: Layout, v: int) -> int:
    return 64 * v + L.sel


def raw_sel(L: Layout, mem, v: int) -> int:
    o = sel_off(L, v)
    return int.from_bytes(bytes(mem[o : o + L.sel_bytes]), "little")


def raw(si: SharedInfo) -> bytearray:
    return bytearray(si.buffer)


def boundary_ports(L: Layout) -> list[int]:
    W = L.W
    return [0, 1, W - 1, W, W + 1, 2 * W - 1, 2 * W, L.nr_ports // 2 + 3, L.nr_ports - W,
            L.nr_ports - 2, L.nr_ports - 1]


def test_flag_values():
    assert SET_NEWLY == NEWLY
    assert SET_KICK == KICK


def test_geometry(si, L):
    assert si.word_bits == L.W
    assert si.nr_ports == L.nr_ports
    assert si.size == L.size


# ---- §8.1 set_pending --------------------------------------------------------------------


@pytest.mark.parametrize("vcpu", [0, 1, 5, 31])
def test_set_pending_fresh_sets_pending_selector_upcall(si, L, vcpu):
    for port in boundary_ports(L):
        si.buffer[:] = bytes(len(si.buffer))
        exp = raw(si)
        rc = si.set_pending(port, vcpu)
        assert rc == NEWLY | KICK, (port, vcpu, rc)
        setbit(exp, L.pending, port)
        setbit(exp, sel_off(L, vcpu), port // L.W)
        exp[up_off(vcpu)] = 1
        assert raw(si) == exp, (port, vcpu)
        # the readers agree with the raw bytes
        assert si.is_pending(port)
        assert not si.is_masked(port)
        assert si.pending_sel(vcpu) == 1 << (port // L.W)
        assert si.upcall_pending(vcpu) == 1


@pytest.mark.parametrize("port_of", [lambda L: 0, lambda L: L.W - 1, lambda L: L.W,
                                     lambda L: L.nr_ports - 1])
def test_set_pending_byte_addresses(si, L, port_of):
    """Bit p is byte pending+p/8, bit p%8; selector bit p/W of the LE word at 64v+sel."""
    port = port_of(L)
    si.set_pending(port, 3)
    mem = raw(si)
    assert mem[L.pending + port // 8] == 1 << (port % 8)
    o = sel_off(L, 3)
    w = port // L.W
    assert mem[o + w // 8] == 1 << (w % 8)
    assert mem[64 * 3] == 1
    nonzero = [i for i, b in enumerate(mem) if b]
    assert nonzero == sorted({L.pending + port // 8, o + w // 8, 64 * 3})


def test_set_pending_coalesces(si, L):
    for port in boundary_ports(L):
        si.set_pending(port, 2)
        before = raw(si)
        assert si.set_pending(port, 2) == 0
        assert raw(si) == before
        # "return immediately": no change for another vCPU either
        assert si.set_pending(port, 7) == 0
        assert raw(si) == before


def test_set_pending_coalesces_after_guest_consumed_selector(si, L):
    """A still-pending port gives no new edge even once sel/upcall were taken (§8.1 step 1)."""
    port = L.W + 5
    assert si.set_pending(port, 0) == NEWLY | KICK
    assert si.take_pending_sel(0) == 1 << 1
    si.set_upcall_pending(0, 0)
    before = raw(si)
    assert si.set_pending(port, 0) == 0
    assert raw(si) == before
    assert si.pending_sel(0) == 0
    assert si.upcall_pending(0) == 0


def test_set_pending_masked_port(si, L):
    for port in boundary_ports(L):
        si.buffer[:] = bytes(len(si.buffer))
        si.mask(port)
        exp = raw(si)
        assert bit(exp, L.mask, port) == 1
        rc = si.set_pending(port, 4)
        assert rc == NEWLY, (port, rc)
        setbit(exp, L.pending, port)
        assert raw(si) == exp  # no selector, no upcall
        assert si.is_pending(port) and si.is_masked(port)
        # and coalescing still applies to the masked pending port
        assert si.set_pending(port, 4) == 0
        assert raw(si) == exp


def test_set_pending_selector_already_set(si, L):
    """Sel bit already set => no mark_events_pending (upcall stays as it is)."""
    p1, p2 = 2 * L.W + 1, 2 * L.W + 9  # same word
    assert si.set_pending(p1, 6) == NEWLY | KICK
    si.set_upcall_pending(6, 0)
    exp = raw(si)
    assert si.set_pending(p2, 6) == NEWLY
    setbit(exp, L.pending, p2)
    assert raw(si) == exp
    assert si.upcall_pending(6) == 0
    # another word: sel bit was clear -> selector + upcall again
    p3 = 3 * L.W
    assert si.set_pending(p3, 6) == NEWLY | KICK
    setbit(exp, L.pending, p3)
    setbit(exp, sel_off(L, 6), 3)
    exp[up_off(6)] = 1
    assert raw(si) == exp


def test_set_pending_upcall_already_pending_no_kick(si, L):
    si.set_upcall_pending(9, 1)
    exp = raw(si)
    port = L.W * 4 + 2
    assert si.set_pending(port, 9) == NEWLY
    setbit(exp, L.pending, port)
    setbit(exp, sel_off(L, 9), 4)
    assert raw(si) == exp
    assert exp[up_off(9)] == 1


@pytest.mark.parametrize("prior,after,rc", [(0x01, 0x01, NEWLY), (0xFF, 0xFF, NEWLY),
                                            (0x03, 0x03, NEWLY), (0x80, 0x81, NEWLY | KICK),
                                            (0x02, 0x03, NEWLY | KICK)])
def test_upcall_pending_is_bit_0(si, L, prior, after, rc):
    """§7.1: test-and-set of *bit 0* of evtchn_upcall_pending."""
    si.buffer[up_off(1)] = prior
    assert si.set_pending(17, 1) == rc
    assert si.buffer[up_off(1)] == after


def test_set_pending_ignores_upcall_mask(si, L):
    """The PV upcall mask does not stop marking/kicking (§7.2: kicks ignore the mask)."""
    si.reset()
    exp = raw(si)
    assert si.set_pending(3, 0) == NEWLY | KICK
    setbit(exp, L.pending, 3)
    setbit(exp, sel_off(L, 0), 0)
    exp[up_off(0)] = 1
    assert raw(si) == exp
    assert si.upcall_mask(0) == 1


def test_set_pending_per_vcpu_isolation(si, L):
    """Raising towards vCPU 3 touches only vCPU 3's vcpu_info."""
    si.set_pending(L.W * 2, 3)
    for v in range(NVCPUS):
        if v == 3:
            continue
        assert bytes(si.buffer[64 * v : 64 * v + 64]) == bytes(64), v
    # a second vCPU raising another port in the same word gets its own selector/upcall
    assert si.set_pending(L.W * 2 + 1, 4) == NEWLY | KICK
    assert si.pending_sel(4) == 1 << 2
    assert si.pending_sel(3) == 1 << 2


def test_ports_in_one_word_share_selector_bit(si, L):
    for w in (0, 1, L.W - 1):
        si.buffer[:] = bytes(len(si.buffer))
        assert si.set_pending(w * L.W, 0) == NEWLY | KICK
        assert si.set_pending(w * L.W + L.W - 1, 0) == NEWLY
        assert si.pending_sel(0) == 1 << w
        if w + 1 < L.W:
            assert si.set_pending((w + 1) * L.W, 0) == NEWLY
            assert si.pending_sel(0) == (1 << w) | (1 << (w + 1))


def test_high_selector_bit_is_unsigned(si, L):
    """The top word's selector bit is W-1: read back as a positive int, not sign-extended."""
    si.set_pending(L.nr_ports - 1, 0)
    assert si.pending_sel(0) == 1 << (L.W - 1)
    assert raw_sel(L, si.buffer, 0) == 1 << (L.W - 1)
    assert si.take_pending_sel(0) == 1 << (L.W - 1)


# ---- §8.2 clear_pending, mask ----------------------------------------------------------------


def test_clear_pending_only_clears_the_bit(si, L):
    for port in boundary_ports(L):
        si.buffer[:] = bytes(len(si.buffer))
        si.set_pending(port, 2)
        si.mask(port)
        exp = raw(si)
        si.clear_pending(port)
        clrbit(exp, L.pending, port)
        assert raw(si) == exp  # selector, upcall and mask untouched
        assert not si.is_pending(port)
        si.clear_pending(port)  # idempotent
        assert raw(si) == exp


def test_clear_pending_keeps_neighbours(si, L):
    ports = [L.W - 1, L.W, L.W + 1]
    for p in ports:
        si.set_pending(p, 0)
    si.clear_pending(L.W)
    assert si.is_pending(L.W - 1) and si.is_pending(L.W + 1) and not si.is_pending(L.W)


def test_clear_then_set_gives_new_edge(si, L):
    assert si.set_pending(10, 0) == NEWLY | KICK
    si.clear_pending(10)
    assert si.set_pending(10, 0) == NEWLY  # sel still set -> no upcall
    si.clear_pending(10)
    si.take_pending_sel(0)
    si.set_upcall_pending(0, 0)
    assert si.set_pending(10, 0) == NEWLY | KICK


def test_mask_sets_only_the_mask_bit(si, L):
    for port in boundary_ports(L):
        si.buffer[:] = bytes(len(si.buffer))
        exp = raw(si)
        si.mask(port)
        setbit(exp, L.mask, port)
        assert raw(si) == exp
        si.mask(port)
        assert raw(si) == exp


# ---- §8.3 unmask ------------------------------------------------------------------------


def test_unmask_of_unmasked_port_does_nothing(si, L):
    """Step 1: mask bit already clear -> stop, even for a pending port with clear sel."""
    port = L.W + 3
    si.mask(port)
    si.set_pending(port, 0)
    si.buffer[L.mask + port // 8] &= ~(1 << (port % 8)) & 0xFF  # the guest clears the bit itself
    exp = raw(si)
    assert si.unmask(port, 0) == 0
    assert raw(si) == exp
    assert si.pending_sel(0) == 0 and si.upcall_pending(0) == 0


def test_unmask_not_pending(si, L):
    port = 5
    si.mask(port)
    exp = raw(si)
    assert si.unmask(port, 0) == 0
    clrbit(exp, L.mask, port)
    assert raw(si) == exp


@pytest.mark.parametrize("vcpu", [0, 7, 31])
def test_unmask_reraises_pending_port(si, L, vcpu):
    for port in boundary_ports(L):
        si.buffer[:] = bytes(len(si.buffer))
        si.mask(port)
        assert si.set_pending(port, 1) == NEWLY  # masked: swallowed edge
        exp = raw(si)
        rc = si.unmask(port, vcpu)
        assert rc == KICK, (port, vcpu, rc)
        clrbit(exp, L.mask, port)
        setbit(exp, sel_off(L, vcpu), port // L.W)
        exp[up_off(vcpu)] = 1
        assert raw(si) == exp, (port, vcpu)
        # second unmask: the mask bit is clear now -> nothing at all
        si.take_pending_sel(vcpu)
        si.set_upcall_pending(vcpu, 0)
        exp2 = raw(si)
        assert si.unmask(port, vcpu) == 0
        assert raw(si) == exp2


def test_unmask_selector_already_set(si, L):
    """Sel bit already set -> mask cleared, no upcall, rc 0."""
    p1, p2 = 3 * L.W, 3 * L.W + 7
    si.mask(p2)
    si.set_pending(p2, 0)
    si.set_pending(p1, 0)  # sets sel bit 3 + upcall
    si.set_upcall_pending(0, 0)
    exp = raw(si)
    assert si.unmask(p2, 0) == 0
    clrbit(exp, L.mask, p2)
    assert raw(si) == exp
    assert si.upcall_pending(0) == 0


def test_unmask_upcall_already_pending(si, L):
    """Sel bit clear but upcall_pending already 1 -> sel set, no KICK."""
    port = 2 * L.W + 2
    si.mask(port)
    si.set_pending(port, 0)
    si.set_upcall_pending(0, 1)
    exp = raw(si)
    assert si.unmask(port, 0) == 0
    clrbit(exp, L.mask, port)
    setbit(exp, sel_off(L, 0), 2)
    assert raw(si) == exp


def test_unmask_uses_given_vcpu_only(si, L):
    port = L.W * 5 + 1
    si.mask(port)
    si.set_pending(port, 2)
    assert si.unmask(port, 9) == KICK
    assert si.pending_sel(2) == 0 and si.upcall_pending(2) == 0
    assert si.pending_sel(9) == 1 << 5 and si.upcall_pending(9) == 1


def test_unmask_does_not_touch_other_mask_bits(si, L):
    for p in (L.W - 1, L.W, L.W + 1):
        si.mask(p)
    si.unmask(L.W, 0)
    assert si.is_masked(L.W - 1) and si.is_masked(L.W + 1) and not si.is_masked(L.W)


# ---- §8.4 is_pending / is_masked -------------------------------------------------------------


def test_readers_follow_raw_bits(si, L):
    for port in boundary_ports(L):
        assert not si.is_pending(port) and not si.is_masked(port)
        setbit(si.buffer, L.pending, port)
        assert si.is_pending(port) and not si.is_masked(port)
        setbit(si.buffer, L.mask, port)
        assert si.is_masked(port)
        clrbit(si.buffer, L.pending, port)
        assert not si.is_pending(port) and si.is_masked(port)
        clrbit(si.buffer, L.mask, port)


def test_readers_beyond_last_port(si, L):
    # fill bitmaps (and everything after them) with ones: must not be read for port >= W*W
    si.buffer[L.pending :] = b"\xff" * (len(si.buffer) - L.pending)
    before = raw(si)
    for port in (L.nr_ports, L.nr_ports + 1, L.nr_ports + L.W, 4096, 65535, 2**31, 2**32,
                 2**32 + 5, 2**64 + 1):
        assert si.is_pending(port) is False, port
        assert si.is_masked(port) is True, port
    assert raw(si) == before  # readers never write
    si.buffer[L.pending :] = bytes(len(si.buffer) - L.pending)
    for port in (L.nr_ports, 2**32 + 5):
        assert si.is_pending(port) is False
        assert si.is_masked(port) is True
    assert si.is_pending(L.nr_ports - 1) is False
    assert si.is_masked(L.nr_ports - 1) is False
    after = raw(si)
    si.is_pending(3)
    si.is_masked(3)
    assert raw(si) == after


def test_c_readers_beyond_last_port(L):
    """The C core itself (not only the Python wrapper) applies §8.4 to out-of-range ports."""
    from xenevtchn._native import ffi, lib

    page = ffi.new("uint8_t[]", PAGE + 8)
    base = ffi.cast("uint8_t *", (int(ffi.cast("uintptr_t", page)) + 7) & ~7)
    s = ffi.new("struct xe_shinfo *")
    code = lib.XE_LAYOUT_X86_64 if L.W == 64 else lib.XE_LAYOUT_X86_32
    assert lib.xe_shinfo_init(s, base, code) == 0
    ffi.memmove(base + L.pending, b"\xff" * (PAGE - L.pending), PAGE - L.pending)
    for port in (L.nr_ports, L.nr_ports + 1, L.nr_ports + L.W, 4096, 8191, 2**31, 2**32 - 1):
        assert lib.xe_2l_is_pending(s, port) == 0, port
        assert lib.xe_2l_is_masked(s, port) != 0, port
    ffi.memmove(base + L.pending, bytes(PAGE - L.pending), PAGE - L.pending)
    for port in (L.nr_ports, 2**32 - 1):
        assert lib.xe_2l_is_pending(s, port) == 0, port
        assert lib.xe_2l_is_masked(s, port) != 0, port
    assert lib.xe_2l_is_pending(s, L.nr_ports - 1) == 0
    assert lib.xe_2l_is_masked(s, L.nr_ports - 1) == 0


def test_readers_return_bools(si, L):
    si.set_pending(L.W - 1, 0)
    si.mask(L.W - 1)
    assert si.is_pending(L.W - 1) is True
    assert si.is_masked(L.W - 1) is True
    assert si.is_pending(0) is False
    assert si.is_masked(0) is False


# ---- selector, upcall fields ---------------------------------------------------------------


def test_take_pending_sel_exchanges_with_zero(si, L):
    for p in (0, L.W, 5 * L.W + 3, L.nr_ports - 1):
        si.set_pending(p, 11)
    want = (1 << 0) | (1 << 1) | (1 << 5) | (1 << (L.W - 1))
    assert raw_sel(L, si.buffer, 11) == want
    exp = raw(si)
    assert si.take_pending_sel(11) == want
    for i in range(L.sel_bytes):
        exp[sel_off(L, 11) + i] = 0
    assert raw(si) == exp  # pending bits and upcall untouched
    assert si.take_pending_sel(11) == 0
    assert raw(si) == exp


def test_take_pending_sel_raw_value(si, L):
    """All W selector bits are exchanged, whatever put them there."""
    full = (1 << L.W) - 1
    o = sel_off(L, 30)
    si.buffer[o : o + L.sel_bytes] = full.to_bytes(L.sel_bytes, "little")
    assert si.pending_sel(30) == full
    assert si.take_pending_sel(30) == full
    assert bytes(si.buffer[o : o + L.sel_bytes]) == bytes(L.sel_bytes)
    # the bytes around the selector (upcall flags, padding, arch) are untouched
    assert bytes(si.buffer[64 * 30 : 64 * 31]) == bytes(64)


def test_x86_64_selector_is_u64():
    si, L = SharedInfo(layout="x86_64"), X86_64
    o = sel_off(L, 0)
    si.buffer[o : o + 8] = (0x8000_0000_0000_0001).to_bytes(8, "little")
    assert si.take_pending_sel(0) == 0x8000_0000_0000_0001


def test_upcall_accessors(si, L):
    si.set_upcall_pending(5, 1)
    si.set_upcall_mask(6, 1)
    assert si.buffer[up_off(5)] == 1 and si.buffer[umask_off(6)] == 1
    assert si.upcall_pending(5) == 1 and si.upcall_mask(6) == 1
    assert si.upcall_mask(5) == 0 and si.upcall_pending(6) == 0
    si.buffer[umask_off(7)] = 0x42
    assert si.upcall_mask(7) == 0x42
    nonzero = [i for i, b in enumerate(si.buffer) if b]
    assert nonzero == [up_off(5), umask_off(6), umask_off(7)]


# ---- reset ------------------------------------------------------------------------------------


def test_reset(si, L):
    si.buffer[:] = b"\xa5" * len(si.buffer)
    si.reset()
    mem = raw(si)
    exp = bytearray(L.size)
    for v in range(NVCPUS):
        exp[umask_off(v)] = 1
    assert mem[: L.size] == exp
    assert mem[L.size :] == b"\xa5" * (len(mem) - L.size), "reset wrote past sizeof(shared_info)"
    for v in range(NVCPUS):
        assert si.upcall_mask(v) == 1
        assert si.upcall_pending(v) == 0
        assert si.pending_sel(v) == 0
    for p in boundary_ports(L):
        assert not si.is_pending(p) and not si.is_masked(p)


def test_reset_exact_size_buffer(L):
    buf = bytearray(b"\x5a" * L.size)
    s = SharedInfo(buf, layout=L.name)
    s.reset()
    exp = bytearray(L.size)
    for v in range(NVCPUS):
        exp[umask_off(v)] = 1
    assert buf == exp


def test_reset_after_activity(si, L):
    for p in boundary_ports(L):
        si.mask(p)
        si.set_pending(p, p % NVCPUS)
    si.reset()
    exp = bytearray(len(si.buffer))
    for v in range(NVCPUS):
        exp[umask_off(v)] = 1
    assert raw(si) == exp


# ---- bad arguments ----------------------------------------------------------------------------


def _bad_ports(L):
    return [-1, -(2**31), L.nr_ports, L.nr_ports + 1, 4096, 2**31, 2**32, 2**32 + 5, 2**64 + 3]


BAD_TYPES = [1.0, "1", None, b"\x01", [1], object()]


def _prime(si, L):
    """Some state, so that a stray write is visible whatever it does."""
    si.reset()
    for p in (1, L.W + 1, L.nr_ports - 1):
        si.set_pending(p, 0)
    si.mask(5)
    si.set_pending(5, 0)


def test_bad_port_values(si, L):
    _prime(si, L)
    before = raw(si)
    for port in _bad_ports(L):
        for call in (lambda p: si.set_pending(p, 0), si.clear_pending, si.mask,
                     lambda p: si.unmask(p, 0)):
            with pytest.raises(ValueError):
                call(port)
            assert raw(si) == before, port
    for port in (-1, -5):
        with pytest.raises(ValueError):
            si.is_pending(port)
        with pytest.raises(ValueError):
            si.is_masked(port)
    assert raw(si) == before


def test_bad_port_types(si, L):
    _prime(si, L)
    before = raw(si)
    for port in BAD_TYPES:
        for call in (lambda p: si.set_pending(p, 0), si.clear_pending, si.mask,
                     lambda p: si.unmask(p, 0), si.is_pending, si.is_masked):
            with pytest.raises(TypeError):
                call(port)
    assert raw(si) == before


def test_bad_vcpu_values(si, L):
    _prime(si, L)
    before = raw(si)
    for vcpu in (-1, 32, 33, 2**32, 2**32 + 1, 2**64):
        for call in (lambda v: si.set_pending(70 % L.nr_ports, v), lambda v: si.unmask(5, v),
                     si.take_pending_sel, si.upcall_pending, si.upcall_mask, si.pending_sel,
                     lambda v: si.set_upcall_pending(v, 1), lambda v: si.set_upcall_mask(v, 0)):
            with pytest.raises(ValueError):
                call(vcpu)
            assert raw(si) == before, vcpu


def test_bad_vcpu_types(si, L):
    _prime(si, L)
    before = raw(si)
    for vcpu in BAD_TYPES:
        for call in (lambda v: si.set_pending(70 % L.nr_ports, v), lambda v: si.unmask(5, v),
                     si.take_pending_sel, si.upcall_pending, si.upcall_mask, si.pending_sel,
                     lambda v: si.set_upcall_pending(v, 1), lambda v: si.set_upcall_mask(v, 0)):
            with pytest.raises(TypeError):
                call(vcpu)
    assert raw(si) == before


def test_x86_32_rejects_x86_64_only_ports():
    """Ports 1024..4095 do not exist for compat guests: no write into the mask bitmap."""
    s = SharedInfo(layout="x86_32")
    for port in (1024, 1025, 2047, 4095):
        with pytest.raises(ValueError):
            s.set_pending(port, 0)
        with pytest.raises(ValueError):
            s.mask(port)
    assert bytes(s.buffer) == bytes(len(s.buffer))


def test_bad_layout():
    for layout in ("x86", "arm64", "", None, 64):
        with pytest.raises(ValueError):
            SharedInfo(layout=layout)


# ---- differential test against a model of §8 ---------------------------------------------------


class Model:
    """Spec §8 / §7.1 on a plain bytearray, in the spec's own order."""

    def __init__(self, L: Layout, size: int) -> None:
        self.L = L
        self.mem = bytearray(size)

    def _tas(self, base: int, n: int) -> int:
        old = bit(self.mem, base, n)
        setbit(self.mem, base, n)
        return old

    def _tac(self, base: int, n: int) -> int:
        old = bit(self.mem, base, n)
        clrbit(self.mem, base, n)
        return old

    def _mark_events_pending(self, v: int) -> int:
        # §7.1: test-and-set bit 0 of evtchn_upcall_pending; kick iff it was clear
        return 0 if self._tas(up_off(v), 0) else KICK

    def set_pending(self, port: int, v: int) -> int:
        L = self.L
        if self._tas(L.pending, port):
            return 0
        rc = NEWLY
        if not bit(self.mem, L.mask, port):
            if not self._tas(sel_off(L, v), port // L.W):
                rc |= self._mark_events_pending(v)
        return rc

    def clear_pending(self, port: int) -> None:
        clrbit(self.mem, self.L.pending, port)

    def mask(self, port: int) -> None:
        setbit(self.mem, self.L.mask, port)

    def unmask(self, port: int, v: int) -> int:
        L = self.L
        if not self._tac(L.mask, port):
            return 0
        if bit(self.mem, L.pending, port) and not self._tas(sel_off(L, v), port // L.W):
            return self._mark_events_pending(v)
        return 0

    def take_pending_sel(self, v: int) -> int:
        o = sel_off(self.L, v)
        n = self.L.sel_bytes
        val = int.from_bytes(self.mem[o : o + n], "little")
        self.mem[o : o + n] = bytes(n)
        return val

    def set_upcall_pending(self, v: int, value: int) -> None:
        self.mem[up_off(v)] = value

    def reset(self) -> None:
        self.mem[: self.L.size] = bytes(self.L.size)
        for v in range(NVCPUS):
            self.mem[umask_off(v)] = 1


def _port_pool(L: Layout, rng: random.Random) -> list[int]:
    """Ports concentrated on a few words (so selector/mask interactions happen), plus
    word boundaries and a sprinkle of random ports."""
    W = L.W
    pool = set(boundary_ports(L))
    for w in (0, 1, W // 2, W - 1):
        pool.update(w * W + b for b in (0, 1, 2, W // 2, W - 2, W - 1))
    pool.update(rng.randrange(L.nr_ports) for _ in range(16))
    return sorted(pool)


@pytest.mark.parametrize("seed", [1, 2, 3, 20240901, 0xE7E7])
def test_differential_against_model(L, seed):
    rng = random.Random(seed)
    si = SharedInfo(layout=L.name)
    model = Model(L, len(si.buffer))
    if seed % 2:
        si.reset()
        model.reset()
    assert bytes(si.buffer) == bytes(model.mem)
    ports = _port_pool(L, rng)
    vcpus = [0, 1, 2, 31]
    ops = (["set"] * 8 + ["mask"] * 3 + ["unmask"] * 4 + ["clear"] * 3 + ["take"] * 2
           + ["upcall0"] * 2)
    counts: dict[str, int] = {}
    for step in range(4000):
        op = rng.choice(ops)
        port = rng.choice(ports)
        v = rng.choice(vcpus)
        if op == "set":
            got, want = si.set_pending(port, v), model.set_pending(port, v)
        elif op == "mask":
            got, want = si.mask(port), model.mask(port)
        elif op == "unmask":
            got, want = si.unmask(port, v), model.unmask(port, v)
        elif op == "clear":
            got, want = si.clear_pending(port), model.clear_pending(port)
        elif op == "take":
            got, want = si.take_pending_sel(v), model.take_pending_sel(v)
        else:  # the guest's upcall clears evtchn_upcall_pending
            got, want = si.set_upcall_pending(v, 0), model.set_upcall_pending(v, 0)
        key = f"{op}:{want}"
        counts[key] = counts.get(key, 0) + 1
        assert got == want, f"seed {seed} step {step}: {op}({port}, vcpu {v}) returned {got}, model {want}"
        if bytes(si.buffer) != bytes(model.mem):
            diff = [i for i in range(len(model.mem)) if si.buffer[i] != model.mem[i]]
            pytest.fail(f"seed {seed} step {step}: {op}({port}, vcpu {v}) left bytes {diff[:8]} "
                        f"different from the model")
        for p in (port, L.nr_ports - 1):
            assert si.is_pending(p) == bool(bit(model.mem, L.pending, p))
            assert si.is_masked(p) == bool(bit(model.mem, L.mask, p))
    # the sequence really exercised every branch
    for key in (f"set:{NEWLY | KICK}", f"set:{NEWLY}", "set:0", f"unmask:{KICK}", "unmask:0"):
        assert counts.get(key, 0) > 0, f"seed {seed}: branch {key} never taken ({counts})"
