"""Chrome / Perfetto trace-event JSON for ``xenevtchn simulate --trace FILE``.

The simulation driver records into a ``TraceRecorder`` only when a trace was asked for;
the library's data path knows nothing about it. The file is the JSON-object form of the
trace-event format (``{"traceEvents": [...], "displayTimeUnit": "ns"}``), which
https://ui.perfetto.dev and ``chrome://tracing`` open, plain or gzip-compressed
(``F.json.gz``):

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

Events are streamed: the recorder formats each event as one line of JSON text and writes
them to its output in batches, so memory stays flat however long the run. The C engine
(``csrc/engine/sim_engine.c``) formats the same lines itself, byte for byte, into a
buffer that ``c_engine.py`` hands to ``raw()``. Every event after the first is preceded by
``",\\n"``; ``close()`` writes the closing bracket and the file's other keys.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import queue
import threading
from typing import IO, Any, Protocol

from .atomic_file import AtomicOutput

XEN_PID = 0x7FF2  # DOMID_XEN: the process of Xen's own event sources (timers, host devices)
PID_BASE = 1  # a domain's pid in the file is its domid + 1: no process is pid 0

HEADER = b'{"traceEvents":[\n'
FOOTER = (b'\n],"displayTimeUnit":"ns",'
          b'"otherData":{"generator":"xenevtchn simulate","clock":"simulated"}}\n')
BATCH = 2048  # events formatted before one write to the output
GZIP_LEVEL = 1  # fastest: a trace compresses ~10x at level 1 already
SYNC_EVERY = 8 << 20  # bytes a trace file's writer thread writes between two fdatasync
QUEUE_DEPTH = 8  # chunks (of up to ~256 KiB) waiting for the writer thread, at most
_POLL_S = 0.05  # the writer thread's and its feeder's waits look again this often


class BinarySink(Protocol):
    """Where a recorder writes: a binary file, a gzip stream, a wrapped text stream."""

    def write(self, data: bytes | memoryview, /) -> Any: ...


class TraceWriteError(OSError):
    """Writing the trace's output failed (a full disk, a closed pipe ...)."""


def pid_of(domid: int) -> int:
    """The trace-file ``pid`` of domain ``domid`` (or of ``XEN_PID``)."""
    return domid + PID_BASE


def us_text(ns: int) -> str:
    """Simulated ``ns`` as microseconds in JSON: at most three decimals, at least one."""
    if ns < 0:
        return "-" + us_text(-ns)
    q, r = divmod(ns, 1000)
    if not r:
        return f"{q}.0"
    return f"{q}.{r:03d}".rstrip("0")


def _value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        return json.dumps(v, separators=(",", ":"))
    return str(v) if isinstance(v, int) else json.dumps(v)


def _args(args: dict[str, Any]) -> str:
    return ",\"args\":{" + ",".join(f"{json.dumps(k)}:{_value(v)}" for k, v in args.items()) + "}"


class TraceRecorder:
    """Formats trace events and streams them to ``out`` (a binary file) in batches.

    ``TraceRecorder()`` with no output keeps the text in memory (``events`` parses it
    back): fine for short runs and tests. Every method takes a domid (or ``XEN_PID``) where
    the file has a ``pid``, and writes ``pid_of(domid)``. ``close()`` ends the document;
    a write that fails raises ``TraceWriteError``.
    """

    def __init__(self, out: BinarySink | None = None) -> None:
        self._mem: io.BytesIO | None = None
        if out is None:
            out = self._mem = io.BytesIO()
        self.out: BinarySink = out
        self.count = 0  # events recorded so far
        self._lines: list[str] = []
        self._next_flow = 0
        self._names: dict[str, str] = {}
        self._started = False
        self.closed = False

    # ---- output ------------------------------------------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        if self.closed:
            raise ValueError("the trace was closed")
        try:
            if not self._started:
                self._started = True
                self.out.write(HEADER)
            if data:
                self.out.write(data)
        except OSError as exc:
            raise TraceWriteError(exc.errno, exc.strerror or str(exc)) from exc

    def _add(self, line: str) -> None:
        self._lines.append(line if self.count else line[2:])
        self.count += 1
        if len(self._lines) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the events formatted so far."""
        lines, self._lines = self._lines, []
        self._write("".join(lines).encode("ascii"))

    def raw(self, data: bytes | memoryview, events: int) -> None:
        """``events`` events formatted elsewhere (the C engine), each led by ``",\\n"``."""
        if not events:
            return
        self.flush()
        if not self.count:
            data = memoryview(data)[2:]
        self.count += events
        self._write(data)

    def close(self) -> None:
        """End the JSON document (the output itself stays open)."""
        if self.closed:
            return
        self.flush()
        self._write(FOOTER)
        self.closed = True

    def json_name(self, name: str) -> str:
        """``name`` as JSON text (memoized: labels repeat)."""
        text = self._names.get(name)
        if text is None:
            text = self._names[name] = json.dumps(name)
        return text

    # ---- metadata ----------------------------------------------------------------------

    def process(self, domid: int, name: str, sort_index: int) -> None:
        pid = domid + PID_BASE
        self._add(f',\n{{"ph":"M","name":"process_name","pid":{pid},"tid":0,"args":{{"name":{json.dumps(name)}}}}}')
        self._add(f',\n{{"ph":"M","name":"process_sort_index","pid":{pid},"tid":0,'
                  f'"args":{{"sort_index":{sort_index}}}}}')

    def thread(self, domid: int, tid: int, name: str) -> None:
        self._add(f',\n{{"ph":"M","name":"thread_name","pid":{domid + PID_BASE},"tid":{tid},'
                  f'"args":{{"name":{json.dumps(name)}}}}}')

    # ---- events ------------------------------------------------------------------------

    def slice(self, name: str, cat: str, domid: int, tid: int, start_ns: int,
              end_ns: int, args: dict[str, Any] | None = None) -> None:
        """A complete (``X``) event from ``start_ns`` to ``end_ns`` of simulated time."""
        self._add(f',\n{{"ph":"X","name":{self.json_name(name)},"cat":"{cat}","pid":{domid + PID_BASE},'
                  f'"tid":{tid},"ts":{us_text(start_ns)},"dur":{us_text(end_ns - start_ns)}'
                  f'{_args(args) if args else ""}}}')

    def instant(self, name: str, cat: str, domid: int, tid: int, ts_ns: int,
                args: dict[str, Any] | None = None) -> None:
        self._add(f',\n{{"ph":"i","s":"t","name":{self.json_name(name)},"cat":"{cat}",'
                  f'"pid":{domid + PID_BASE},"tid":{tid},"ts":{us_text(ts_ns)}'
                  f'{_args(args) if args else ""}}}')

    def flow(self, src: tuple[int, int, int], dst: tuple[int, int, int]) -> None:
        """A flow arrow from ``(domid, tid, ns)`` to ``(domid, tid, ns)``: ``s`` then ``f``."""
        self._next_flow += 1
        fid = self._next_flow
        spid, stid, sts = src
        dpid, dtid, dts = dst
        self._add(f',\n{{"ph":"s","name":"event","cat":"flow","id":{fid},"pid":{spid + PID_BASE},'
                  f'"tid":{stid},"ts":{us_text(sts)}}}')
        self._add(f',\n{{"ph":"f","bp":"e","name":"event","cat":"flow","id":{fid},"pid":{dpid + PID_BASE},'
                  f'"tid":{dtid},"ts":{us_text(dts)}}}')

    # ---- in memory ---------------------------------------------------------------------

    def text(self) -> bytes:
        """The whole document so far, closed (a recorder made without an output only)."""
        if self._mem is None:
            raise ValueError("this recorder streams to a file: read the file")
        self.flush()
        return self._mem.getvalue() + FOOTER

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events recorded so far, parsed back (in-memory recorders only)."""
        return list(json.loads(self.text())["traceEvents"])

    def to_json(self) -> dict[str, Any]:
        return dict(json.loads(self.text()))

    def write(self, out: IO[str]) -> None:
        """Copy an in-memory recorder's whole document to a text stream."""
        out.write(self.text().decode("ascii"))


class _WriterThread:
    """Writes chunks to ``out`` on a thread of its own, so the disk (and gzip, which
    releases the GIL) work while the engine runs: at most ``depth`` chunks wait, so memory
    stays bounded. A write that failed is raised by the next ``write()`` or by ``close()``.

    Both sides wait with a timeout and look again: a Ctrl-C that lands inside the queue's
    condition variable on the main thread can lose a wake-up, and must not hang the exit."""

    def __init__(self, out: BinarySink, depth: int = QUEUE_DEPTH, sync_fd: int | None = None) -> None:
        self._out = out
        self._sync_fd = sync_fd
        self._unsynced = 0
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="xenevtchn-trace-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while not self._stop:
            try:
                item = self._q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is None:
                return
            if self._error is None:
                try:
                    self._out.write(item)
                    self._unsynced += len(item)
                    if self._sync_fd is not None and self._unsynced >= SYNC_EVERY:
                        # Start the disk on what is written so far, on this thread while
                        # the engine runs, rather than all of it in commit()'s fsync.
                        self._unsynced = 0
                        os.fdatasync(self._sync_fd)
                except BaseException as exc:  # handed to the main thread by _raise()
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _put(self, item: bytes | None) -> None:
        while True:
            self._raise()
            if not self._thread.is_alive():
                raise ValueError("the trace writer was stopped")
            try:
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def write(self, data: bytes | memoryview) -> int:
        self._put(bytes(data))   # a copy: the engine reuses its buffer
        return len(data)

    def close(self) -> None:
        """Wait for every chunk to be written; raise the first failure."""
        if self._thread.is_alive():
            self._put(None)
            self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Drop the chunks not yet written and stop the thread (after the write it is in)."""
        self._stop = True
        self._thread.join()


class TraceFile:
    """The file behind ``--trace PATH``: a temporary file beside ``PATH`` (see
    ``atomic_file``), gzip-compressed when the name ends in ``.gz``, renamed into place by
    ``commit()``; ``discard()`` (also after a failure or Ctrl-C) leaves an older file there
    untouched and no temporary file behind."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._out = AtomicOutput(path, "wb")
        self.path = self._out.path
        self._gz: gzip.GzipFile | None = None
        target: BinarySink = self._out.file
        if self.path.name.endswith(".gz"):
            # No name and a zero time in the header: the same run gives the same bytes.
            try:
                self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._out.file,
                                         compresslevel=GZIP_LEVEL, mtime=0)
            except BaseException:
                self._out.discard()
                raise
            target = self._gz
        self._writer = _WriterThread(target, sync_fd=self._out.file.fileno())
        self.stream: BinarySink = self._writer

    def commit(self) -> None:
        try:
            self._writer.close()
            if self._gz is not None:
                self._gz.close()  # the gzip trailer
        except BaseException:
            self.discard()
            raise
        self._out.commit()

    def discard(self) -> None:
        self._writer.abort()
        if self._gz is not None:
            gz, self._gz = self._gz, None
            with contextlib.suppress(Exception):
                gz.close()
        self._out.discard()
