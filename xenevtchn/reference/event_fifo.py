"""The FIFO ABI (spec §4.12-4.14, §9): its port operations, queue state and set-up.

Guest-visible state lives only in guest memory (``d.memory``): one 32-bit event word per
port in the event-array pages, and one 72-byte control block per vCPU. What is private
to Xen is kept here: per vCPU and priority the queue ``tail``, and per channel the
deferred ``fifo_pending`` latch, the ``priority`` and ``fifo_lastq``
(:class:`~.channel.Channel`).

The model is single-threaded, so every compare-and-swap of Xen succeeds at its first try
unless the word no longer has the bit it checks; BUSY is therefore never left set by
Xen (linking onto a tail clears it, as Xen's successful link does).

A port bound through a :class:`~.xenevtchn_handle.XenEvtchn` handle is *taken* instead
of being linked: when :func:`set_pending` finds it unmasked it sets MASKED, clears
PENDING and queues the port on its handle (docs/semantics.md "FIFO event channels").
"""

from __future__ import annotations

import errno
import struct
import sys
from typing import TYPE_CHECKING

from xenevtchn.constants import (
    EVTCHN_FIFO_LINK_BITS,
    EVTCHN_FIFO_MAX_QUEUES,
    EVTCHN_FIFO_NR_CHANNELS,
    EVTCHN_FIFO_PRIORITY_DEFAULT,
    EVTCHN_FIFO_PRIORITY_MIN,
    PAGE_SIZE,
)
from xenevtchn.errors import EvtchnError

from .events import check_pollers, mark_events_pending

if TYPE_CHECKING:
    from .domain import Domain
    from .xenevtchn_handle import XenEvtchn

# Event word bits (spec §9.1).
PENDING = 1 << 31
MASKED = 1 << 30
LINKED = 1 << 29
BUSY = 1 << 28
LINK_MASK = (1 << EVTCHN_FIFO_LINK_BITS) - 1

WORDS_PER_PAGE = PAGE_SIZE // 4  # 1024 event words per event-array page
MAX_PAGES = EVTCHN_FIFO_NR_CHANNELS // WORDS_PER_PAGE  # 128
CONTROL_BLOCK_SIZE = 72  # ready u32 @0, _rsvd u32 @4, head[16] u32 @8
CONTROL_BLOCK_MAX_OFFSET = PAGE_SIZE - CONTROL_BLOCK_SIZE  # 4024
READY_OFFSET = 0
HEAD_OFFSET = 8
READY_MASK = (1 << EVTCHN_FIFO_MAX_QUEUES) - 1

_U32 = struct.Struct("<I")


class FifoVcpu:
    """A vCPU's FIFO state: its control block (None until registered) and queue tails."""

    __slots__ = ("control", "control_gfn", "tail")

    def __init__(self) -> None:
        self.control: memoryview | None = None  # the 72 bytes of the control block
        self.control_gfn: int | None = None
        self.tail: list[int] = [0] * EVTCHN_FIFO_MAX_QUEUES  # last port Xen linked, per queue

    def head(self, priority: int) -> int:
        """``control_block.head[priority]``."""
        assert self.control is not None
        return int(_U32.unpack_from(self.control, HEAD_OFFSET + 4 * priority)[0])

    def set_head(self, priority: int, port: int) -> None:
        assert self.control is not None
        _U32.pack_into(self.control, HEAD_OFFSET + 4 * priority, port)

    def ready(self) -> int:
        """``control_block.ready``."""
        assert self.control is not None
        return int(_U32.unpack_from(self.control, READY_OFFSET)[0])

    def exchange_ready(self, value: int = 0) -> int:
        """``xchg(control_block.ready, value)``: return the old word."""
        assert self.control is not None
        old: int = _U32.unpack_from(self.control, READY_OFFSET)[0]
        _U32.pack_into(self.control, READY_OFFSET, value)
        return old

    def test_and_set_ready(self, priority: int) -> bool:
        """Set bit ``priority`` of ``ready``; return whether it was already set."""
        old = self.ready()
        bit = 1 << priority
        if old & bit:
            return True
        _U32.pack_into(self.control, READY_OFFSET, old | bit)  # type: ignore[arg-type]
        return False


class FifoState:
    """A domain's FIFO state: per-vCPU queues and the event array (pages of words)."""

    __slots__ = ("vcpus", "pages", "page_gfns")

    def __init__(self, nr_vcpus: int) -> None:
        self.vcpus = [FifoVcpu() for _ in range(nr_vcpus)]
        self.pages: list[memoryview] = []
        self.page_gfns: list[int] = []

    @property
    def num_evtchns(self) -> int:
        """Ports that have an event word (1024 per event-array page)."""
        return len(self.pages) * WORDS_PER_PAGE

    def has_word(self, port: int) -> bool:
        return 0 <= port < len(self.pages) * WORDS_PER_PAGE

    def word(self, port: int) -> int:
        """The event word of ``port`` (which must have one)."""
        return int(_U32.unpack_from(self.pages[port >> 10], (port & 1023) * 4)[0])

    def set_word(self, port: int, value: int) -> None:
        _U32.pack_into(self.pages[port >> 10], (port & 1023) * 4, value)


def _fifo(d: Domain) -> FifoState:
    fifo = d.fifo
    assert fifo is not None
    return fifo


# -- port operations (spec §9.3-9.6) --------------------------------------------------------
def set_pending(d: Domain, vcpu_id: int, port: int) -> None:
    """``evtchn_fifo_set_pending`` (§9.3) of ``port`` on ``d``'s vCPU ``vcpu_id``."""
    fifo = _fifo(d)
    channel = d.channels[port]
    # 1. No event word yet: remember it in the deferred latch (no upcall, no poller).
    if not fifo.has_word(port):
        channel.fifo_pending = True
        return
    # 3. No control block on the target vCPU: the event is dropped entirely.
    fv = fifo.vcpus[vcpu_id]
    if fv.control is None:
        return
    # 4. PENDING.
    word = fifo.word(port)
    newly = not word & PENDING
    word |= PENDING
    fifo.set_word(port, word)
    linked = True
    priority = channel.priority
    # 5. Unmasked and not yet linked: link it at the tail of queue (vcpu_id, priority).
    if not word & MASKED:
        owner = d.handle_ports.get(port) if d.handle_ports else None
        if owner is not None:
            take_for_handle(d, port, owner)
        elif not word & LINKED:
            fifo.set_word(port, word | LINKED)
            old_vcpu, old_priority = channel.fifo_lastq
            old_tails = fifo.vcpus[old_vcpu].tail
            if old_tails[old_priority] == port:  # a. it was the old queue's tail
                old_tails[old_priority] = 0
            if (old_vcpu, old_priority) != (vcpu_id, priority):  # b. moved queue
                channel.fifo_lastq = (vcpu_id, priority)
            linked = False  # c. append to the tail if the tail is still LINKED
            tail = fv.tail[priority]
            if tail:
                linked = _set_link(fifo, tail, port)
            if not linked:  # d. the queue was empty: the new head
                fv.set_head(priority, port)
            fv.tail[priority] = port  # e.
    # 6. A queue that was empty: ready bit, and an upcall if that bit was clear.
    if not linked and not fv.test_and_set_ready(priority):
        mark_events_pending(d.vcpus[vcpu_id])
    # 7. Pollers, only when PENDING was newly set.
    if newly:
        check_pollers(d, port)


def _set_link(fifo: FifoState, tail: int, port: int) -> bool:
    """Replace the LINK of ``tail``'s word with ``port`` (clearing BUSY) iff it is LINKED."""
    if not fifo.has_word(tail):
        return False
    word = fifo.word(tail)
    if not word & LINKED:
        return False  # the guest already consumed the tail: the queue is empty
    fifo.set_word(tail, (word & ~(BUSY | LINK_MASK)) | port)
    return True


def clear_pending(d: Domain, port: int) -> None:
    """``evtchn_fifo_clear_pending`` (§9.4): clear PENDING only (LINKED stays)."""
    fifo = _fifo(d)
    if fifo.has_word(port):
        fifo.set_word(port, fifo.word(port) & ~PENDING)


def unmask(d: Domain, port: int) -> None:
    """``evtchn_fifo_unmask`` (§9.5): clear MASKED; if PENDING, set it pending again."""
    fifo = _fifo(d)
    if not fifo.has_word(port):
        return
    word = fifo.word(port) & ~MASKED
    fifo.set_word(port, word)
    if word & PENDING:
        set_pending(d, d.channels[port].notify_vcpu, port)


def is_pending(d: Domain, port: int) -> bool:
    """The word exists and has PENDING (§9.6)."""
    fifo = _fifo(d)
    return fifo.has_word(port) and bool(fifo.word(port) & PENDING)


def is_masked(d: Domain, port: int) -> bool:
    """No word, or MASKED (§9.6)."""
    fifo = _fifo(d)
    return not fifo.has_word(port) or bool(fifo.word(port) & MASKED)


def is_busy(d: Domain, port: int) -> bool:
    """The word exists and is still LINKED: allocation skips such a FREE port (§9.6)."""
    fifo = _fifo(d)
    return fifo.has_word(port) and bool(fifo.word(port) & LINKED)


def guest_mask(d: Domain, port: int) -> None:
    """The guest's mask: set MASKED in the word (nothing if the port has no word)."""
    fifo = _fifo(d)
    if fifo.has_word(port):
        fifo.set_word(port, fifo.word(port) | MASKED)


def take_for_handle(d: Domain, port: int, owner: XenEvtchn) -> None:
    """The evtchn driver takes ``port``: set MASKED, clear PENDING, queue it on ``owner``."""
    fifo = _fifo(d)
    fifo.set_word(port, (fifo.word(port) | MASKED) & ~PENDING)
    owner.deliver(port)


# -- set-up and tear-down (spec §4.12, §4.13, §4.11) ----------------------------------------
def init_control(d: Domain, gfn: int, offset: int, vcpu_id: int) -> int:
    """EVTCHNOP_init_control (§4.12), after the argument checks: returns link_bits."""
    if d.fifo is None:
        fifo = FifoState(len(d.vcpus))
        _map_control_block(d, fifo, vcpu_id, gfn, offset)  # failure: still 2-level
        d.fifo = fifo
        d.port_ops = sys.modules[__name__]  # this module's port operations
        _setup_ports(d)
    else:
        _map_control_block(d, d.fifo, vcpu_id, gfn, offset)
    return EVTCHN_FIFO_LINK_BITS


def _map_control_block(d: Domain, fifo: FifoState, vcpu_id: int, gfn: int, offset: int) -> None:
    fv = fifo.vcpus[vcpu_id]
    if fv.control is not None:
        raise EvtchnError(errno.EINVAL)
    page = d.memory.acquire(gfn)
    if page is None:
        raise EvtchnError(errno.EINVAL)
    fv.control = page[offset : offset + CONTROL_BLOCK_SIZE]
    fv.control_gfn = gfn


def _setup_ports(d: Domain) -> None:
    """Every valid port 1 .. (2-level limit - 1): 2L pending bit -> latch; priority 7."""
    si = d.shared_info
    channels = d.channels
    for port in range(1, min(len(channels), si.layout.nr_ports)):
        channel = channels[port]
        if si.test_pending(port):
            channel.fifo_pending = True
        channel.priority = EVTCHN_FIFO_PRIORITY_DEFAULT


def expand_array(d: Domain, gfn: int) -> None:
    """EVTCHNOP_expand_array (§4.13)."""
    fifo = d.fifo
    if fifo is None:
        raise EvtchnError(errno.EOPNOTSUPP)
    if len(fifo.pages) >= MAX_PAGES:
        raise EvtchnError(errno.ENOSPC)
    page = d.memory.acquire(gfn)
    if page is None:
        raise EvtchnError(errno.EINVAL)
    first = fifo.num_evtchns
    fifo.pages.append(page)
    fifo.page_gfns.append(gfn)
    # Raise what was latched while these ports had no word (no channel-state check).
    channels = d.channels
    for port in range(first, min(fifo.num_evtchns, len(channels))):
        channel = channels[port]
        if channel.fifo_pending:
            set_pending(d, channel.notify_vcpu, port)


def set_priority(d: Domain, port: int, priority: int) -> None:
    """EVTCHNOP_set_priority (§4.14), after the port-valid check."""
    if d.fifo is None:
        raise EvtchnError(errno.ENOSYS)
    channel = d.channels[port]
    if not channel.usable:
        raise EvtchnError(errno.EACCES)
    if priority > EVTCHN_FIFO_PRIORITY_MIN:
        raise EvtchnError(errno.EINVAL)
    channel.priority = priority  # only the next link uses it


def teardown(d: Domain) -> None:
    """Unmap every control block and event-array page; back to the 2-level ABI."""
    fifo = d.fifo
    if fifo is None:
        return
    from . import event_2l

    memory = d.memory
    for fv in fifo.vcpus:
        if fv.control_gfn is not None:
            memory.release(fv.control_gfn)
    for gfn in fifo.page_gfns:
        memory.release(gfn)
    d.fifo = None
    d.port_ops = event_2l
