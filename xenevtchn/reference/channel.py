"""The hypervisor-private record of one event channel (spec §1.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from xenevtchn.constants import EVTCHN_FIFO_PRIORITY_DEFAULT, ChannelState

if TYPE_CHECKING:
    from .domain import Domain

ECS_FREE = ChannelState.FREE
ECS_RESERVED = ChannelState.RESERVED
ECS_UNBOUND = ChannelState.UNBOUND
ECS_INTERDOMAIN = ChannelState.INTERDOMAIN
ECS_PIRQ = ChannelState.PIRQ
ECS_VIRQ = ChannelState.VIRQ
ECS_IPI = ChannelState.IPI


class Channel:
    """One port's state. The union ``u`` of Xen is spread over optional attributes.

    A channel Xen itself holds (``xen_consumer``: ``hv.alloc_xen_channel``) is never
    *usable*; any other is usable exactly when its state is above RESERVED.
    """

    __slots__ = (
        "state", "notify_vcpu", "remote_domid", "remote_dom", "remote_port", "pirq", "virq",
        "priority", "fifo_pending", "fifo_lastq",
        "xen_consumer", "xen_notify",
    )

    def __init__(self) -> None:
        self.state: ChannelState = ECS_FREE
        self.notify_vcpu: int = 0
        self.remote_domid: int = 0  # UNBOUND: the domid allowed to bind
        self.remote_dom: Domain | None = None  # INTERDOMAIN: the peer domain
        self.remote_port: int = 0  # INTERDOMAIN: the peer port
        self.pirq: int = 0  # PIRQ
        self.virq: int = 0  # VIRQ
        # FIFO only (spec §1.1); freeing the channel leaves them alone, as Xen does.
        self.priority: int = EVTCHN_FIFO_PRIORITY_DEFAULT
        self.fifo_pending: bool = False  # raised while the port had no event word
        self.fifo_lastq: tuple[int, int] = (0, 0)  # (vcpu, priority) of the last queue
        self.xen_consumer: bool = False  # held by Xen (consumer_is_xen)
        self.xen_notify: Callable[[int, int], object] | None = None  # its consumer callback

    @property
    def usable(self) -> bool:
        """Xen's ``evtchn_usable``: not FREE/RESERVED (and not Xen-attached)."""
        return self.state > ECS_RESERVED and not self.xen_consumer

    def reset_to_free(self) -> None:
        """State FREE, notify vCPU 0, union cleared (the record part of ``evtchn_free``).

        The FIFO fields (priority, latch, last queue) are not touched.
        """
        self.state = ECS_FREE
        self.notify_vcpu = 0
        self.remote_domid = 0
        self.remote_dom = None
        self.remote_port = 0
        self.pirq = 0
        self.virq = 0
        self.xen_consumer = False
        self.xen_notify = None

    def __repr__(self) -> str:
        return f"Channel({self.state.name}, notify_vcpu={self.notify_vcpu})"
