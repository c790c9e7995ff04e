"""Helpers for the FIFO event-channel tests (spec xen-hypervisor §4.12-4.14, §9;
guest-side §1.10; API.md "Guest memory and the FIFO ABI").

Written from the spec's layout tables, not from either implementation. The guest's view
of FIFO state is read straight from guest memory: event words in the event-array pages
(port p: page p // 1024, byte 4 * (p % 1024), little-endian u32) and the per-vCPU
control block (ready u32 @0, _rsvd u32 @4, head[q] u32 @8 + 4q).

Layout used by :func:`fifo_domain` (any free frames would do):

* control block of vCPU v: frame ``CB_GFN + v``, offset 0;
* event-array page i: frame ``ARRAY_GFN + i``.
"""

from __future__ import annotations

import struct

import pytest

from hvhelpers import FILL, TRAIL, RawError, errname

# Event word bits (spec §9.1).
PENDING = 1 << 31
MASKED = 1 << 30
LINKED = 1 << 29
BUSY = 1 << 28
LINK_MASK = 0x1FFFF

WORDS_PER_PAGE = 1024
MAX_PAGES = 128
CB_SIZE = 72
CB_MAX_OFFSET = 4096 - 72  # 4024
LINK_BITS = 17
NR_FIFO_PORTS = 1 << 17

CB_GFN = 0x100
ARRAY_GFN = 0x200

# Raw structs (spec §12.1; checked against xen-abi.json in test_fifo_setup.py).
INIT_CONTROL = struct.Struct("<QII")  # control_gfn, offset, vcpu; link_bits @16, _pad @17..23
INIT_CONTROL_SIZE = 24
EXPAND_ARRAY = struct.Struct("<Q")
SET_PRIORITY = struct.Struct("<II")
CMD_INIT_CONTROL, CMD_EXPAND_ARRAY, CMD_SET_PRIORITY = 11, 12, 13

_U32 = struct.Struct("<I")


class Fifo:
    """The guest's view of one FIFO domain: event words and control blocks in d.memory.

    ``cbs`` maps vCPU -> (gfn, offset) of its control block; ``pages`` lists the gfns of
    the event-array pages in the order they were added.
    """

    def __init__(self, d, cbs=None, pages=None):
        self.d = d
        self.cbs = dict(cbs or {})
        self.pages = list(pages or [])

    # -- event words ------------------------------------------------------------------
    def _where(self, port):
        page = port // WORDS_PER_PAGE
        assert page < len(self.pages), f"port {port} has no event-array page"
        return self.d.memory.page(self.pages[page]), 4 * (port % WORDS_PER_PAGE)

    def word(self, port):
        mem, off = self._where(port)
        return _U32.unpack_from(mem, off)[0]

    def set_word(self, port, value):
        mem, off = self._where(port)
        _U32.pack_into(mem, off, value)

    def set_bits(self, port, bits):
        self.set_word(port, self.word(port) | bits)

    def clear_bits(self, port, bits):
        self.set_word(port, self.word(port) & ~bits & 0xFFFFFFFF)

    def link(self, port):
        return self.word(port) & LINK_MASK

    def flags(self, port):
        return self.word(port) & ~LINK_MASK

    # -- control blocks ---------------------------------------------------------------
    def _cb(self, vcpu):
        gfn, off = self.cbs[vcpu]
        return self.d.memory.page(gfn), off

    def ready(self, vcpu=0):
        mem, off = self._cb(vcpu)
        return _U32.unpack_from(mem, off)[0]

    def set_ready(self, vcpu, value):
        mem, off = self._cb(vcpu)
        _U32.pack_into(mem, off, value)

    def head(self, vcpu, q):
        mem, off = self._cb(vcpu)
        return _U32.unpack_from(mem, off + 8 + 4 * q)[0]

    def set_head(self, vcpu, q, port):
        mem, off = self._cb(vcpu)
        _U32.pack_into(mem, off + 8 + 4 * q, port)

    def cb_bytes(self, vcpu):
        mem, off = self._cb(vcpu)
        return bytes(mem[off : off + CB_SIZE])

    def queue(self, vcpu, q):
        """Walk queue q of ``vcpu`` from the control block's head along LINK (what
        Xen has linked; stops at LINK 0 or an unlinked word)."""
        port = self.head(vcpu, q)
        out = []
        while port and self.word(port) & LINKED and len(out) <= NR_FIFO_PORTS:
            out.append(port)
            port = self.link(port)
        return out

    # -- set-up -------------------------------------------------------------------------
    def init(self, vcpu, gfn=None, offset=0):
        gfn = CB_GFN + vcpu if gfn is None else gfn
        assert self.d.init_control(gfn, offset, vcpu) == LINK_BITS
        self.cbs[vcpu] = (gfn, offset)

    def expand(self, n=1):
        for _ in range(n):
            gfn = ARRAY_GFN + len(self.pages)
            assert self.d.expand_array(gfn) is None
            self.pages.append(gfn)


def fifo_domain(hv, vcpus=2, pages=1, cbs=None, **kw):
    """A domain switched to FIFO: control blocks for ``cbs`` (default every vCPU), then
    ``pages`` event-array pages (1024 ports each)."""
    d = hv.create_domain(vcpus=vcpus, **kw)
    f = Fifo(d)
    for v in range(vcpus) if cbs is None else cbs:
        f.init(v)
    f.expand(pages)
    return d, f


def ipis(d, n, vcpu=0):
    """Bind n IPIs on ``vcpu``; they take the lowest free ports (pinned by the caller)."""
    return [d.bind_ipi(vcpu) for _ in range(n)]


def guest_state(d):
    """Everything the guest can see of domain ``d``, byte for byte: the shared_info page,
    every guest frame touched so far (by number) and each vCPU's upcall flags. Two equal
    results mean a call changed nothing a guest could observe (nor allocated a frame)."""
    mem = d.memory
    frames = getattr(mem, "_frames", None)  # native: gfn -> (cdata, owner)
    if frames is None:
        frames = mem._pages  # reference: gfn -> page
    return (bytes(d.shared_info.buffer),
            sorted((gfn, bytes(mem.page(gfn))) for gfn in list(frames)),
            [(v.upcall_pending, v.upcall_mask) for v in d.vcpus])


def errno_of(fn, *args, **kw):
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    e = ei.value
    assert e.errno and e.errno > 0, repr(e)
    return e.errno


# -- the three FIFO commands through the wrapper or the raw hypercall ---------------------
class FifoWrapper:
    name = "wrapper"

    def __init__(self, xe):
        self.xe = xe

    def _w(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            assert isinstance(e, self.xe.EvtchnError), f"wrapper raised {type(e)!r}"
            raise

    def init_control(self, d, gfn, offset, vcpu):
        return self._w(d.init_control, gfn, offset, vcpu)

    def expand_array(self, d, gfn):
        assert self._w(d.expand_array, gfn) is None

    def set_priority(self, d, port, priority):
        assert self._w(d.set_priority, port, priority) is None


class FifoRaw:
    """``d.event_channel_op`` with the struct surrounded by FILL bytes; checks the
    copy-back rules of spec §3 / §4.12 on every call: a failure writes nothing;
    init_control writes only link_bits (byte 16); the other two never write."""

    name = "raw"

    def __init__(self, xe):
        self.xe = xe

    def _call(self, d, cmd, buf, out=()):
        before = bytes(buf)
        rc = d.event_channel_op(cmd, buf)
        assert isinstance(rc, int) and not isinstance(rc, bool)
        if rc:
            assert rc < 0
            assert bytes(buf) == before, f"cmd {cmd} failed ({errname(-rc)}) but wrote"
            raise RawError(-rc)
        changed = [i for i in range(len(buf)) if buf[i] != before[i] and i not in out]
        assert not changed, f"cmd {cmd}: bytes {changed} modified"
        return buf

    def init_control(self, d, gfn, offset, vcpu):
        buf = bytearray([FILL]) * (INIT_CONTROL_SIZE + TRAIL)
        INIT_CONTROL.pack_into(buf, 0, gfn, offset, vcpu)
        buf = self._call(d, CMD_INIT_CONTROL, buf, out=(16,))
        assert buf[17:24] == bytes([FILL]) * 7  # _pad echoed
        return buf[16]

    def expand_array(self, d, gfn):
        buf = bytearray([FILL]) * (8 + TRAIL)
        EXPAND_ARRAY.pack_into(buf, 0, gfn)
        self._call(d, CMD_EXPAND_ARRAY, buf)

    def set_priority(self, d, port, priority):
        buf = bytearray([FILL]) * (8 + TRAIL)
        SET_PRIORITY.pack_into(buf, 0, port, priority)
        self._call(d, CMD_SET_PRIORITY, buf)


@pytest.fixture(params=["wrapper", "raw"])
def fvia(request, xe):
    """The FIFO commands through the Pythonic wrappers or event_channel_op."""
    return {"wrapper": FifoWrapper, "raw": FifoRaw}[request.param](xe)


def expect_errno(fn, *args, err):
    got = errno_of(fn, *args)
    assert got == err, f"expected {errname(err)}, got {errname(got)}"

