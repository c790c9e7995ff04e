"""``xenevtchn simulate --plot FILE.png``: events per vCPU over simulated time, and the
raise -> handled latency of every event the guests took.

The file's format follows its extension (``.png``, ``.pdf``, ``.svg`` ... whatever
matplotlib writes); other extensions are refused before the run. Above ``MAX_LINES``
vCPUs the top panel draws one line per domain instead, so it keeps its legend.

matplotlib is an optional extra (``pip install 'xenevtchn[plot]'``); it is imported only
here, only when a plot is asked for, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .simulate import Simulation

INSTALL_HINT = "--plot needs matplotlib: pip install 'xenevtchn[plot]'"
MAX_LINES = 16  # more vCPUs than this: one line per domain


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend; ``ImportError`` saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_format(path: str) -> str:
    """The format matplotlib writes for ``path``'s extension; ``ValueError`` if none."""
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in supported:
        raise ValueError(f"--plot {path}: the extension must name a format matplotlib writes: "
                         + ", ".join(f".{e}" for e in sorted(supported)))
    return ext


def _series(sim: Simulation) -> tuple[str, list[tuple[str, list[int]]]]:
    """The top panel's lines: per vCPU, or per domain above ``MAX_LINES`` vCPUs."""
    if len(sim.vcpus) <= MAX_LINES:
        return "vCPU", [(f"{sim.names[vs.domid].split(' ')[0]} vCPU{vs.id}", vs.delivered_at or [])
                        for vs in sim.vcpus.values()]
    per_dom: dict[int, list[int]] = {}
    for vs in sim.vcpus.values():
        per_dom.setdefault(vs.domid, []).extend(vs.delivered_at or [])
    return "domain", [(sim.names[domid], times) for domid, times in per_dom.items()]


def figure(sim: Simulation, bins: int = 100) -> Any:
    """The two panels of a finished run (built with ``record_timeline=True``)."""
    plt = require_matplotlib()
    end_us = max(sim.hv.now / 1000, 1e-3)
    width = end_us / bins
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), constrained_layout=True)
    per, series = _series(sim)
    edges = [i * width for i in range(bins + 1)]
    for label, times in series:
        counts = [0] * bins
        for t in times:
            counts[min(bins - 1, int(t / 1000 / width))] += 1
        top.plot(edges[:-1], [c / width for c in counts], label=label, linewidth=1)
    top.set_title(f"events handled per {per}")
    top.set_xlabel("simulated time (µs)")
    top.set_ylabel("events per µs")
    top.legend(fontsize="small", ncol=4 if len(series) <= MAX_LINES else 8)
    samples = sim.latency.samples()  # (bucket's lowest value in ns, count)
    bottom.hist([v / 1000 for v, _ in samples], weights=[c for _, c in samples], bins=100,
                color="tab:orange", log=True)
    bottom.set_title(f"raise -> handled latency ({sim.latency.count:,} events)")
    bottom.set_xlabel("latency (µs, simulated)")
    bottom.set_ylabel("events")
    return fig


def plot(sim: Simulation, out: IO[bytes] | str, bins: int = 100, fmt: str = "png") -> None:
    """Draw the two panels of a finished run into ``out`` as ``fmt`` (see ``plot_format``)."""
    plt = require_matplotlib()
    fig = figure(sim, bins)
    fig.savefig(out, format=fmt, dpi=100)
    plt.close(fig)
