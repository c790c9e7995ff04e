"""A ``Simulation``'s counters as rows: per vCPU, per port, and as a pandas DataFrame.

Each row is a plain dict, so a simulator can read them without pandas; ``summary_frame``
needs the optional extra ``pip install 'xenevtchn[frames]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .simulate import Simulation


def vcpu_counters(sim: Simulation) -> list[dict[str, Any]]:
    """One row per vCPU, dom0 first, in vCPU order."""
    return [{"domid": vs.domid, "name": sim.names[vs.domid], "vcpu": vs.id, "upcalls": vs.upcalls,
             "kicks": vs.kicks, "polls": vs.polls, "polls_woken": vs.woken}
            for vs in sim.vcpus.values()]


def port_counters(sim: Simulation) -> list[dict[str, Any]]:
    """One row per port the model handles: what was sent to it and what it delivered."""
    rows = []
    for domid, ports in sim.ports.items():
        for port in sorted(ports):
            p = ports[port]
            row: dict[str, Any] = {"domid": domid, "name": sim.names[domid], "port": port,
                                   "kind": p.kind, "label": p.label}
            row.update(p.tally.as_dict())
            rows.append(row)
    return rows


def summary_frame(sim: Simulation) -> Any:
    """The summary's per-domain rows as a ``pandas.DataFrame`` indexed by domid."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("summary_frame() needs pandas: pip install 'xenevtchn[frames]'") from exc
    return pd.DataFrame(sim.summary()["by_domain"]).set_index("domid")
