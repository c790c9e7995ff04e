"""Leaving FIFO: EVTCHNOP_reset tears FIFO down and returns the domain to the 2-level
ABI, whoever invoked it (spec xen-hypervisor §4.11 step 6, §9.6 last rule, §2.3 last
sentence); and what stays behind (valid_evtchns, guest memory, Xen's latches).
"""

from __future__ import annotations

import errno

from fifohelpers import ARRAY_GFN, CB_GFN, LINKED, PENDING, Fifo, errno_of, fifo_domain, ipis
from hvhelpers import raises_errno
from xenabi import si


def test_reset_returns_to_2l_and_2l_delivery_works(xe, hv, hooks):
    d, f = fifo_domain(hv, vcpus=2, pages=5)
    ports = ipis(d, 4500)
    d.send(ports[0])
    d.send(4500)
    d.reset()
    cb0, page0 = f.cb_bytes(0), bytes(d.memory.page(ARRAY_GFN))
    assert cb0[:4] == (1 << 7).to_bytes(4, "little")  # reset leaves guest memory alone
    # Every port closed (FIFO clear_pending ran: PENDING cleared, LINKED kept)...
    assert all(d.status(p).status == xe.EVTCHNSTAT_closed for p in (1, 4500))
    assert f.word(1) == LINKED | 4500 and f.word(4500) == LINKED
    # ...then FIFO torn down: 2-level commands again.
    with raises_errno(xe, errno.EOPNOTSUPP):
        d.expand_array(ARRAY_GFN + 9)
    # valid_evtchns stays above 4096 (§2.3): status still answers "closed" there.
    assert d.status(4543).status == xe.EVTCHNSTAT_closed
    assert errno_of(d.status, 4544) == errno.EINVAL
    # 2-level delivery: pending bit, selector, upcall; the guest's 2L scan handles it.
    hooks.clear()
    view = si(d)
    view.ack(0)
    p = d.bind_ipi(0)
    assert p == 1  # ports are no longer "busy": LINKED means nothing in 2L
    with raises_errno(xe, errno.ENOSYS):
        d.set_priority(p, 0)
    d.send(p)
    assert d.shared_info.is_pending(p) and view.sel(0) == 1 and hooks == [("kick", 0)]
    assert d.guest.do_upcall(0) == [p]
    # The 2L send touched neither the old control block nor the old event words.
    assert f.cb_bytes(0) == cb0 and bytes(d.memory.page(ARRAY_GFN)) == page0


def test_2l_limit_again_after_reset(xe, hv):
    d, f = fifo_domain(hv, vcpus=1)
    ipis(d, 10)
    d.reset()
    assert ipis(d, 4095)[-1] == 4095
    assert errno_of(d.bind_ipi, 0) == errno.ENOSPC


def test_reset_by_controller_tears_down_paused_domu(xe, hv):
    dom0 = hv.create_domain(vcpus=1, privileged=True)
    d, f = fifo_domain(hv, vcpus=1)
    d.bind_ipi(0)
    assert errno_of(dom0.reset, d.domid) == errno.EINVAL  # not paused (§4.11 step 3)
    d.expand_array(ARRAY_GFN + 1)  # still FIFO
    hv.pause_domain(d.domid)
    dom0.reset(d.domid)
    hv.unpause_domain(d.domid)
    assert errno_of(d.expand_array, ARRAY_GFN + 2) == errno.EOPNOTSUPP


def test_failed_reset_keeps_fifo(xe, hv):
    dom0 = hv.create_domain(vcpus=1, privileged=True)
    d, f = fifo_domain(hv, vcpus=1)
    assert errno_of(d.reset, dom0.domid) == errno.EPERM
    assert d.event_channel_op(14, bytearray(b"\xf0\x7f")) == -errno.EBUSY  # reset_cont idle
    p = d.bind_ipi(0)
    d.send(p)
    assert f.queue(0, 7) == [p]


def test_init_control_again_after_reset(xe, hv, hooks):
    """Second FIFO life with fresh frames: the switch latches the 2L pending bits again
    (here port 2, sent while the domain was 2-level) and expand_array raises them."""
    d, f = fifo_domain(hv, vcpus=1)
    ipis(d, 3)
    d.reset()
    assert ipis(d, 3) == [1, 2, 3]  # the old words are LINKED-free: nothing was queued
    d.send(2)
    si(d).ack(0)
    hooks.clear()
    g = Fifo(d)
    g.init(0, gfn=0x400)
    assert d.expand_array(0x401) is None
    g.pages.append(0x401)
    assert g.queue(0, 7) == [2] and hooks == [("kick", 0)]
    assert d.guest.do_upcall(0) == [2]


def test_deferred_latch_survives_reset(xe, hv):
    """Xen never clears a channel's deferred latch (spec §1.1, §4.13: raising it does not
    clear it, closing a port does not either): port 1 was raised with no event-array page
    in the first FIFO life, raised by expand_array and handled; then reset closed it. In a
    second FIFO life (fresh frames, nothing pending in 2L) the first expand_array raises
    port 1 again, FREE as it is."""
    d = hv.create_domain(vcpus=1)
    f = Fifo(d)
    f.init(0)
    p = d.bind_ipi(0)
    d.send(p)  # no page: latched
    f.expand()
    assert d.guest.do_upcall(0) == [p]
    d.reset()
    assert not d.shared_info.is_pending(p)
    g = Fifo(d)
    g.init(0, gfn=0x500)
    d.expand_array(0x501)
    g.pages.append(0x501)
    assert g.word(p) == PENDING | LINKED and g.head(0, 7) == p
    assert d.guest.do_upcall(0) == []  # FREE: left pending, not handled
    assert g.word(p) == PENDING


def test_destroying_a_fifo_domain(xe, hv):
    dom0 = hv.create_domain(vcpus=1, privileged=True)
    d, f = fifo_domain(hv, vcpus=1, pages=1)
    r = dom0.alloc_unbound(d.domid)
    p = d.bind_interdomain(dom0.domid, r)
    hv.destroy_domain(d.domid)  # ports closed, FIFO state freed (§11)
    assert dom0.status(r).status == xe.EVTCHNSTAT_unbound and dom0.status(r).dom == d.domid
    assert p == 1


def test_second_switch_reads_only_the_2l_bitmap(xe, hv):
    """After a FIFO life with 4200 ports and a reset, ports up to 4223 stay valid. The
    second switch copies 2L pending bits of ports 1..4095 only: the 2L bitmap has no
    bits for 4096+ (the bytes after it are the mask bitmap, where port 5 is masked)."""
    d, f = fifo_domain(hv, vcpus=1, pages=5)
    ipis(d, 4200)
    d.reset()
    assert d.status(4223).status == xe.EVTCHNSTAT_closed
    view = si(d)
    view.set_mask(5)  # 2L mask byte 2560: right after the 4096-bit pending bitmap
    view.set_pending(6)
    g = Fifo(d)
    g.init(0, gfn=0x600)
    for i in range(5):
        d.expand_array(0x601 + i)
        g.pages.append(0x601 + i)
    assert g.queue(0, 7) == [6]  # latched from the 2L bit, FREE; 4101 untouched
    assert g.word(4101) == 0
