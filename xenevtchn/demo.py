"""A short, deterministic tour: dom0 and two guests raise and handle events.

``xenevtchn demo`` (and ``xenevtchn`` with no arguments) runs it. Each guest handles its
upcalls with the simplest correct 2-level scan: clear ``evtchn_upcall_pending``, take the
selector, and for each selected word clear-then-handle its pending, unmasked ports.
"""

from __future__ import annotations

from typing import TextIO

from . import VIRQ_TIMER, Domain, Hypervisor, Vcpu


def handle_upcall(d: Domain, vcpu: int) -> list[int]:
    """Handle every pending, unmasked port signalled to ``vcpu``; returns them in order."""
    si = d.shared_info
    handled: list[int] = []
    while si.upcall_pending(vcpu):
        si.set_upcall_pending(vcpu, 0)
        sel = si.take_pending_sel(vcpu)
        for word in range(si.word_bits):
            if not sel >> word & 1:
                continue
            for port in range(word * si.word_bits, (word + 1) * si.word_bits):
                if si.is_pending(port) and not si.is_masked(port):
                    si.clear_pending(port)
                    handled.append(port)
    return handled


def run(out: TextIO) -> dict[str, int]:
    hv = Hypervisor()
    kicks: list[Vcpu] = []
    hv.on_kick = kicks.append
    dom0 = hv.create_domain(vcpus=2, privileged=True)
    guests = [hv.create_domain(vcpus=2) for _ in range(2)]
    print(f"created dom0 (privileged, 2 vCPUs) and guests {[g.domid for g in guests]}", file=out)

    links = []
    for g in guests:
        for name in ("net", "blk"):
            front = g.alloc_unbound(remote_dom=0)              # the frontend offers a port
            back = dom0.bind_interdomain(g.domid, front)        # the backend connects
            links.append((name, g, front, back))
            print(f"  d{g.domid} {name}front port {front} <-> dom0 {name}back port {back}", file=out)
        g.bind_virq(VIRQ_TIMER, vcpu=0)
        g.bind_ipi(vcpu=1)
    print(f"dom0 upcalls for the fresh backend ports: {handle_upcall(dom0, 0)}", file=out)

    stats = {"sent": 0, "handled": 0, "coalesced": 0}
    for rnd in range(3):
        for name, g, front, back in links:
            for _ in range(2):                                  # the second one coalesces
                stats["coalesced"] += dom0.shared_info.is_pending(back)
                g.send(front)                                   # request
                stats["sent"] += 1
        handled = handle_upcall(dom0, 0)
        stats["handled"] += len(handled)
        for name, g, front, back in links:
            if back in handled:
                dom0.send(back)                                 # response
                stats["sent"] += 1
        for g in guests:
            hv.send_virq(g.domid, VIRQ_TIMER, 0)
            got = handle_upcall(g, 0)
            stats["handled"] += len(got)
            print(f"round {rnd}: d{g.domid} vCPU0 handled ports {got}", file=out)
    stats["kicks"] = len(kicks)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in stats.items()), file=out)
    return stats
