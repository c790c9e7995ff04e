"""The FIFO ABI's control plane: ``EVTCHNOP_init_control``, ``_expand_array`` and
``_set_priority`` (spec 4.12-4.14), and the switch back to 2-level on reset.

Like ``commands.py``, each command runs with the hypervisor's lock held, checks in Xen's
order and raises ``EvtchnError`` with Xen's errno. The queues, event words and control
blocks are worked by the C data path (``csrc/event_fifo.c``) in the domain's guest
memory (``memory.py``).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ._native import ffi, lib
from .constants import (
    EVTCHN_FIFO_LINK_BITS,
    EVTCHN_FIFO_NR_CHANNELS,
    EVTCHN_FIFO_PRIORITY_DEFAULT,
    EVTCHN_FIFO_PRIORITY_MIN,
    PAGE_SIZE,
)
from .errors import EvtchnError

if TYPE_CHECKING:
    from .domain import Domain

CONTROL_BLOCK_SIZE = 72  # struct evtchn_fifo_control_block
WORDS_PER_PAGE = PAGE_SIZE // 4
MAX_ARRAY_PAGES = EVTCHN_FIFO_NR_CHANNELS // WORDS_PER_PAGE


class FifoState:
    """A domain's FIFO ABI state: the C ``struct xe_fifo`` and the frames it uses."""

    __slots__ = ("c", "control_blocks", "array_gfns", "_vcpu_hi")

    def __init__(self, nr_vcpus: int = 1) -> None:
        self.c = ffi.new("struct xe_fifo *")
        # vCPUs 32..: their queues in an array of the control plane's (C: fifo_vcpu()).
        hi = max(0, nr_vcpus - len(self.c.vcpu))
        self._vcpu_hi = ffi.new("struct xe_fifo_vcpu[]", hi) if hi else ffi.NULL
        self.c.vcpu_hi = self._vcpu_hi
        self.c.nr_vcpu_hi = hi
        self.control_blocks: dict[int, tuple[int, int]] = {}  # vcpu -> (gfn, offset)
        self.array_gfns: list[int] = []  # event-array pages, in order

    def vcpu(self, v: int) -> Any:
        """vCPU ``v``'s ``struct xe_fifo_vcpu`` (its control block and queues)."""
        lo = len(self.c.vcpu)
        return self.c.vcpu[v] if v < lo else self._vcpu_hi[v - lo]

    @property
    def num_evtchns(self) -> int:
        """Ports that have an event word (1024 per array page)."""
        return int(self.c.num_evtchns)


def _fail(err: int, what: str) -> EvtchnError:
    return EvtchnError(err, what)


def _map_control_block(d: Domain, fifo: FifoState, vcpu: int, gfn: int, offset: int) -> None:
    if vcpu in fifo.control_blocks:
        raise _fail(errno.EINVAL, f"init_control: vCPU {vcpu} already has a control block")
    if not d.memory.valid(gfn):
        raise _fail(errno.EINVAL, f"init_control: gfn {gfn} is not a guest page")
    base = d.memory.pin(gfn)
    fifo.control_blocks[vcpu] = (gfn, offset)
    fifo.vcpu(vcpu).control_block = ffi.cast("uint32_t *", base + offset)


def init_control(d: Domain, control_gfn: int, offset: int, vcpu: int) -> int:
    if vcpu >= len(d.vcpus):
        raise _fail(errno.ENOENT, f"init_control: no vCPU {vcpu}")
    if offset > PAGE_SIZE - CONTROL_BLOCK_SIZE:
        raise _fail(errno.EINVAL, f"init_control: offset {offset} crosses the page")
    if offset % 8:
        raise _fail(errno.EINVAL, f"init_control: offset {offset} is not 8-byte aligned")
    if d.fifo is not None:
        _map_control_block(d, d.fifo, vcpu, control_gfn, offset)
    else:
        fifo = FifoState(len(d.vcpus))
        _map_control_block(d, fifo, vcpu, control_gfn, offset)  # a failure leaves 2-level
        _switch_to_fifo(d, fifo)
    d.guest._fifo_vcpu_reset(vcpu)
    return EVTCHN_FIFO_LINK_BITS


def _use_fifo(d: Domain, fifo: FifoState) -> None:
    pt = d.ports
    pt.grow(EVTCHN_FIFO_NR_CHANNELS)
    pt.limit = min(EVTCHN_FIFO_NR_CHANNELS, d._port_cap + 1)
    pt.fifo = True
    d.fifo = fifo
    d._fifo_history.append(fifo)  # C may still hold it after a reset: keep it alive
    lib.xe_fifo_switch(d._c, fifo.c)


def _switch_to_fifo(d: Domain, fifo: FifoState) -> None:
    pt = d.ports
    prev_ports = d.shared_info.nr_ports
    _use_fifo(d, fifo)
    # Ports already open keep a 2-level pending bit as a deferred FIFO event, raised when
    # an array page covers them; every one gets the default priority. Masks are not kept.
    si = d.shared_info._s
    for port in range(1, min(prev_ports, pt.valid)):
        c = pt.chans[port]
        if lib.xe_2l_is_pending(si, port):
            c.fifo_pending = 1
        c.priority = EVTCHN_FIFO_PRIORITY_DEFAULT


def restore_state(d: Domain, control_blocks: dict[int, tuple[int, int]], array_gfns: list[int],
                  tails: list[list[int]]) -> None:
    """Rebuild a snapshot's FIFO state (port records and guest memory are restored by the
    caller): no ports are set up and no deferred event is raised."""
    fifo = FifoState(len(d.vcpus))
    for vcpu, (gfn, offset) in sorted(control_blocks.items()):
        _map_control_block(d, fifo, vcpu, gfn, offset)
    _use_fifo(d, fifo)
    for gfn in array_gfns:
        if lib.xe_fifo_add_page(d._c, ffi.cast("uint32_t *", d.memory.pin(gfn))) < 0:
            raise ValueError("snapshot: too many FIFO array pages")  # checked before; never silent
        fifo.array_gfns.append(gfn)
    for vcpu, row in enumerate(tails):
        for q, tail in enumerate(row):
            fifo.vcpu(vcpu).queue[q].tail = tail


def expand_array(d: Domain, array_gfn: int) -> None:
    fifo = d.fifo
    if fifo is None:
        raise _fail(errno.EOPNOTSUPP, "expand_array: the domain does not use the FIFO ABI")
    if len(fifo.array_gfns) >= MAX_ARRAY_PAGES:
        raise _fail(errno.ENOSPC, "expand_array: the event array is full (128 pages)")
    if not d.memory.valid(array_gfn):
        raise _fail(errno.EINVAL, f"expand_array: gfn {array_gfn} is not a guest page")
    page = d.memory.pin(array_gfn)
    first = lib.xe_fifo_add_page(d._c, ffi.cast("uint32_t *", page))
    if first < 0:  # cannot happen after the checks above; never ignore it silently
        raise _fail(-first, "expand_array")
    fifo.array_gfns.append(array_gfn)
    d.hv._after(lib.xe_fifo_raise_deferred(d._c, first, first + WORDS_PER_PAGE))


def set_priority(d: Domain, port: int, priority: int) -> None:
    pt = d.ports
    if not pt.is_valid(port):
        raise _fail(errno.EINVAL, f"set_priority: port {port}")
    if d.fifo is None:
        raise _fail(errno.ENOSYS, "set_priority: the 2-level ABI has no priorities")
    if not pt.usable(port):
        raise _fail(errno.EACCES, f"set_priority: port {port} is not in use")
    if priority > EVTCHN_FIFO_PRIORITY_MIN:
        raise _fail(errno.EINVAL, f"set_priority: priority {priority} (0..15)")
    pt.chans[port].priority = priority  # the next link uses it; a linked event stays


def teardown(d: Domain) -> None:
    """A successful reset: drop every FIFO structure and go back to the 2-level ABI."""
    if d.fifo is None:
        return
    lib.xe_fifo_teardown(d._c)
    pt = d.ports
    pt.fifo = False
    pt.limit = min(d.shared_info.nr_ports, d._port_cap + 1)
    d.memory.unpin_all()
    d.fifo = None

