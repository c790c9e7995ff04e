"""``xenevtchn simulate --plot FILE.png``: events per vCPU over simulated time, and the
raise -> handled latency of every event the guests took.

matplotlib is an optional extra (``pip install 'xenevtchn[plot]'``); it is imported only
here, only when a plot is asked for, with the non-interactive Agg backend.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .simulate import Simulation

INSTALL_HINT = "--plot needs matplotlib: pip install 'xenevtchn[plot]'"


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend; ``ImportError`` saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(sim: Simulation, out: IO[bytes] | str, bins: int = 100) -> None:
    """Draw the two panels of a finished run (built with ``record_timeline=True``)."""
    plt = require_matplotlib()
    end_us = max(sim.hv.now / 1000, 1e-3)
    width = end_us / bins
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), constrained_layout=True)
    series = [(f"{sim.names[vs.domid].split(' ')[0]} vCPU{vs.id}", vs.delivered_at or [])
              for vs in sim.vcpus.values()]
    edges = [i * width for i in range(bins + 1)]
    for label, times in series:
        counts = [0] * bins
        for t in times:
            counts[min(bins - 1, int(t / 1000 / width))] += 1
        top.plot(edges[:-1], [c / width for c in counts], label=label, linewidth=1)
    top.set_title("events handled per vCPU")
    top.set_xlabel("simulated time (µs)")
    top.set_ylabel("events per µs")
    if len(series) <= 16:
        top.legend(fontsize="small", ncol=4)
    lat = [x / 1000 for x in sim.latencies]
    bottom.hist(lat, bins=100, color="tab:orange", log=True)
    bottom.set_title(f"raise -> handled latency ({len(lat):,} events)")
    bottom.set_xlabel("latency (µs, simulated)")
    bottom.set_ylabel("events")
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
