"""Guest memory: ``d.memory`` and ``create_domain(memory_frames=...)`` (API.md "Guest
memory and the FIFO ABI"; docs/semantics.md "FIFO event channels").
"""

from __future__ import annotations

import errno
import mmap

import pytest

from fifohelpers import ARRAY_GFN, CB_GFN, LINKED, PENDING, Fifo, fifo_domain


def test_default_and_custom_frame_count(hv):
    assert hv.create_domain().memory.nr_frames == 262144  # 1 GiB of 4 KiB frames
    assert hv.create_domain(memory_frames=16).memory.nr_frames == 16
    assert hv.create_domain(memory_frames=1).memory.nr_frames == 1
    assert hv.create_domain(memory_frames=2**40).memory.nr_frames == 2**40  # lazily allocated


@pytest.mark.parametrize("bad", [0, -1, 2**40 + 1])
def test_memory_frames_out_of_range(hv, bad):
    with pytest.raises(ValueError):
        hv.create_domain(memory_frames=bad)
    assert hv.domains == ()  # nothing created


@pytest.mark.parametrize("bad", ["16", 16.0, None])
def test_memory_frames_not_an_int(hv, bad):
    with pytest.raises(TypeError):
        hv.create_domain(memory_frames=bad)


def test_page_is_a_zeroed_writable_frame_and_always_the_same_memory(hv):
    d = hv.create_domain(memory_frames=8)
    p = d.memory.page(3)
    assert isinstance(p, memoryview) and not p.readonly
    assert p.nbytes == 4096 and bytes(p) == bytes(4096)
    p[0], p[4095] = 0x5A, 0xA5
    q = d.memory.page(3)
    assert q[0] == 0x5A and q[4095] == 0xA5  # the same memory every call
    q[100] = 7
    assert p[100] == 7
    assert bytes(d.memory.page(4)) == bytes(4096)  # other frames untouched
    assert d.memory.page(True)[0] == 0  # bool counts as an int (frame 1)
    assert d.memory.page(7).nbytes == 4096  # the last frame


@pytest.mark.parametrize("gfn", [-1, 8, 2**64, 2**70])
def test_page_outside_memory(hv, gfn):
    d = hv.create_domain(memory_frames=8)
    with pytest.raises(ValueError):
        d.memory.page(gfn)


@pytest.mark.parametrize("gfn", ["1", 1.0, None, b"\x01"])
def test_page_gfn_not_an_int(hv, gfn):
    d = hv.create_domain(memory_frames=8)
    with pytest.raises(TypeError):
        d.memory.page(gfn)


def test_map_places_the_callers_buffer(hv):
    d = hv.create_domain(memory_frames=8)
    d.memory.page(2)[10] = 99  # replaced by the map below
    buf = bytearray(b"\x11" * 4096)
    assert d.memory.map(2, buf) is None
    p = d.memory.page(2)
    assert p.nbytes == 4096 and p[10] == 0x11  # the caller's bytes, not a copy
    p[0] = 0x42
    assert buf[0] == 0x42
    buf[1] = 0x43
    assert d.memory.page(2)[1] == 0x43


def test_map_uses_the_first_4096_bytes_of_a_bigger_buffer(hv):
    d = hv.create_domain(memory_frames=8)
    buf = bytearray(8192)
    d.memory.map(1, buf)
    p = d.memory.page(1)
    assert p.nbytes == 4096
    p[4095] = 1
    assert buf[4095] == 1 and buf[4096:] == bytes(4096)


def test_map_mmap_and_memoryview_buffers(hv):
    d = hv.create_domain(memory_frames=8)
    m = mmap.mmap(-1, 8192)
    d.memory.map(0, m)
    d.memory.page(0)[5] = 5
    assert m[5] == 5
    backing = bytearray(3 * 4096)
    d.memory.map(1, memoryview(backing)[4096:])  # 8-aligned slice of an aligned buffer
    d.memory.page(1)[0] = 9
    assert backing[4096] == 9


@pytest.mark.parametrize("size", [0, 1, 4095])
def test_map_short_buffer(hv, size):
    d = hv.create_domain(memory_frames=8)
    with pytest.raises(ValueError):
        d.memory.map(1, bytearray(size))


def test_map_misaligned_buffer(hv):
    d = hv.create_domain(memory_frames=8)
    backing = bytearray(4096 + 16)
    for shift in (1, 4):
        with pytest.raises(ValueError):
            d.memory.map(1, memoryview(backing)[shift : shift + 4096])


@pytest.mark.parametrize("buf", [bytes(4096), memoryview(bytes(4096)), [0] * 4096, "x" * 4096, None])
def test_map_read_only_or_not_a_buffer(hv, buf):
    d = hv.create_domain(memory_frames=8)
    with pytest.raises(TypeError):
        d.memory.map(1, buf)


@pytest.mark.parametrize("gfn,exc", [(-1, ValueError), (8, ValueError), ("1", TypeError)])
def test_map_bad_gfn(hv, gfn, exc):
    d = hv.create_domain(memory_frames=8)
    with pytest.raises(exc):
        d.memory.map(gfn, bytearray(4096))


def test_map_refuses_frames_in_use_by_fifo_until_reset(hv):
    d, f = fifo_domain(hv, vcpus=2, pages=2)
    for gfn in (CB_GFN, CB_GFN + 1, ARRAY_GFN, ARRAY_GFN + 1):
        with pytest.raises(ValueError):
            d.memory.map(gfn, bytearray(4096))
    d.memory.map(ARRAY_GFN + 2, bytearray(4096))  # not (yet) an event-array page
    d.memory.map(CB_GFN + 2, bytearray(4096))
    # EVTCHNOP_reset tears FIFO down (spec §4.11 step 6): the frames are free again.
    d.reset()
    for gfn in (CB_GFN, CB_GFN + 1, ARRAY_GFN, ARRAY_GFN + 1):
        d.memory.map(gfn, bytearray(4096))


def test_fifo_state_lives_in_mapped_buffers(hv):
    """Control block and event words are the caller's bytes (spec §9.1 layout)."""
    d = hv.create_domain(vcpus=1, memory_frames=64)
    cb_page = bytearray(4096)
    array_page = bytearray(4096)
    d.memory.map(5, cb_page)
    d.memory.map(6, array_page)
    assert d.init_control(5, 64, 0) == 17
    d.expand_array(6)
    port = d.bind_ipi(0)
    assert port == 1
    d.send(port)
    # word of port 1 at byte 4: PENDING|LINKED (0xA0000000), LINK 0.
    assert array_page[4:8] == (PENDING | LINKED).to_bytes(4, "little")
    # control block at offset 64: ready = bit 7 (default priority), head[7] = 1.
    assert cb_page[64:68] == (1 << 7).to_bytes(4, "little")
    assert cb_page[64 + 8 + 4 * 7 : 64 + 8 + 4 * 8] == (1).to_bytes(4, "little")
    assert cb_page[:64] == bytes(64) and cb_page[64 + 72 :] == bytes(4096 - 136)
    # The guest clears the bits in its own buffer and Xen sees it (next send re-links).
    assert d.guest.do_upcall(0) == [1]
    assert array_page[4:8] == bytes(4)


@pytest.mark.parametrize("cmd", ["init_control", "expand_array"])
def test_hypercall_gfn_outside_memory_is_einval(hv, cmd):
    d = hv.create_domain(vcpus=1, memory_frames=16)
    f = Fifo(d)
    if cmd == "init_control":
        for gfn in (16, 17, 2**32, 2**64 - 1):
            assert d.event_channel_op(11, bytearray(gfn.to_bytes(8, "little") + bytes(16))) == -errno.EINVAL
            with pytest.raises(OSError) as ei:
                d.init_control(gfn, 0, 0)
            assert ei.value.errno == errno.EINVAL
        f.init(0, gfn=15)  # the last frame is fine
        assert d.abi == "fifo" and f.cbs == {0: (15, 0)}
    else:
        f.init(0, gfn=0)
        for gfn in (16, 2**64 - 1):
            assert d.event_channel_op(12, bytearray(gfn.to_bytes(8, "little"))) == -errno.EINVAL
            with pytest.raises(OSError) as ei:
                d.expand_array(gfn)
            assert ei.value.errno == errno.EINVAL
        assert d.expand_array(15) is None
