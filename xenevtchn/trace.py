"""Chrome / Perfetto trace-event JSON for ``xenevtchn simulate --trace FILE``.

The simulation driver records into a ``TraceRecorder`` only when a trace was asked for;
the library's data path knows nothing about it. The file is the JSON-object form of the
trace-event format (``{"traceEvents": [...], "displayTimeUnit": "ns"}``), which
https://ui.perfetto.dev and ``chrome://tracing`` open:

* one process per domain (``pid`` = domid + 1, so dom0 is pid 1: Perfetto's tools treat
  pid 0 as the idle/swapper process; named ``dom0 (privileged)``, ``d1 web`` ...), one
  thread per vCPU (``tid`` = vCPU id); and a process for Xen itself (``pid`` =
  ``XEN_PID`` + 1) with a thread per event source: each host device (PIRQs) and each vCPU's
  timer (VIRQ_TIMER);
* ``X`` (complete) slices for each send, upcall, handler run and blocked poll, ``i``
  (instant) events for mask and unmask, with simulated-time timestamps in microseconds;
* a flow (``s`` at the send, ``f`` with ``bp: "e"`` at the handler that took the event)
  from sender to receiver for every event that was handled; a send that coalesced into
  an already-pending event ends in the same handler run as the first one.
"""

from __future__ import annotations

import json
from typing import IO, Any

XEN_PID = 0x7FF2  # DOMID_XEN: the process of Xen's own event sources (timers, host devices)
PID_BASE = 1  # a domain's pid in the file is its domid + 1: no process is pid 0


def pid_of(domid: int) -> int:
    """The trace-file ``pid`` of domain ``domid`` (or of ``XEN_PID``)."""
    return domid + PID_BASE


def _us(ns: int | float) -> float:
    return round(ns / 1000.0, 3)


class TraceRecorder:
    """Collects trace events; ``write()`` saves them.

    Every method takes a domid (or ``XEN_PID``) where the file has a ``pid``, and writes
    ``pid_of(domid)``.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._next_flow = 0

    # ---- metadata ----------------------------------------------------------------------

    def process(self, domid: int, name: str, sort_index: int) -> None:
        pid = domid + PID_BASE
        self.events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                            "args": {"name": name}})
        self.events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                            "args": {"sort_index": sort_index}})

    def thread(self, domid: int, tid: int, name: str) -> None:
        self.events.append({"ph": "M", "name": "thread_name", "pid": domid + PID_BASE, "tid": tid,
                            "args": {"name": name}})

    # ---- events ------------------------------------------------------------------------

    def slice(self, name: str, cat: str, domid: int, tid: int, start_ns: int | float,
              end_ns: int | float, args: dict[str, Any] | None = None) -> None:
        """A complete (``X``) event from ``start_ns`` to ``end_ns`` of simulated time."""
        ev = {"ph": "X", "name": name, "cat": cat, "pid": domid + PID_BASE, "tid": tid,
              "ts": _us(start_ns), "dur": _us(end_ns - start_ns)}
        if args:
            ev["args"] = args
        self.events.append(ev)

    def instant(self, name: str, cat: str, domid: int, tid: int, ts_ns: int | float,
                args: dict[str, Any] | None = None) -> None:
        ev = {"ph": "i", "s": "t", "name": name, "cat": cat, "pid": domid + PID_BASE, "tid": tid, "ts": _us(ts_ns)}
        if args:
            ev["args"] = args
        self.events.append(ev)

    def flow(self, src: tuple[int, int, int | float], dst: tuple[int, int, int | float]) -> None:
        """A flow arrow from ``(domid, tid, ns)`` to ``(domid, tid, ns)``: ``s`` then ``f``."""
        self._next_flow += 1
        fid = self._next_flow
        spid, stid, sts = src
        dpid, dtid, dts = dst
        self.events.append({"ph": "s", "name": "event", "cat": "flow", "id": fid,
                            "pid": spid + PID_BASE, "tid": stid, "ts": _us(sts)})
        self.events.append({"ph": "f", "bp": "e", "name": "event", "cat": "flow", "id": fid,
                            "pid": dpid + PID_BASE, "tid": dtid, "ts": _us(dts)})

    # ---- output ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"traceEvents": self.events, "displayTimeUnit": "ns",
                "otherData": {"generator": "xenevtchn simulate", "clock": "simulated"}}

    def write(self, out: IO[str]) -> None:
        json.dump(self.to_json(), out, separators=(",", ":"))
        out.write("\n")
