"""Parameter sweeps: every point of a grid is one ``simulate`` run, here or on a Dask cluster.

Runs are independent and each is single-threaded, so a sweep scales with the number of
worker processes. Locally they run in the standard library's process pool (lighter than
Dask's local cluster for the sweeps this is for: see the README); with a
``dask.distributed.Client`` (``--scheduler``) they run on that cluster's workers.

A sweep's result is one record per point, in grid order whatever order runs finish in::

    {"params": {"guests": 4, "seed": 1}, "summary": {...} or None, "error": None or "..."}

``summary`` is what ``simulate --json`` prints for that point; a run that failed keeps its
record, with ``error`` saying why. ``flatten()`` makes a record one flat row (the
parameters, then the summary's numbers as ``totals.sent``, ``by_kind.ipi.sent``,
``latency_us.p99``, ...), which is what ``.csv``, ``.parquet`` and ``sweep_frame()`` hold.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .grid import GridError, Point, expand
from .scenario import Scenario, default_scenario

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

ENGINES = ("c", "python")
FORMATS = (".csv", ".jsonl", ".parquet")
WALL_FIELDS = ("wall_s", "events_per_s")  # the only fields that depend on where a run ran
Progress = Callable[[int, int], None]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; ``records`` holds the runs finished so far, in grid order."""

    def __init__(self, records: list[dict[str, Any]], total: int) -> None:
        super().__init__(f"{len(records)} of {total} runs finished")
        self.records = records
        self.total = total


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot run in this installation."""


# ---- one run ------------------------------------------------------------------------------

def engine_options(engine: str | None) -> dict[str, Any]:
    """The keyword ``Simulation`` takes for ``engine`` (``{}``: its default engine)."""
    if engine is None:
        return {}
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    from .simulate import Simulation

    try:  # a tiny world, built but not run: the engine can start here
        Simulation(default_scenario(guests=1, vcpus=1, events=1), engine=engine)
    except Exception as exc:  # noqa: BLE001 - whatever stops it, it is not available
        raise EngineUnavailable(f"the {engine} engine cannot run here: {exc}") from None
    return {"engine": engine}


def run_one(scenario: Scenario, options: Mapping[str, Any]) -> dict[str, Any]:
    """One ``simulate`` run: its summary."""
    from .simulate import Simulation

    sim = Simulation(scenario, **options)
    sim.run()
    return sim.summary()


def _task(index: int, scenario: Scenario, options: Mapping[str, Any]) -> tuple[int, Any, str | None]:
    """What a worker runs: a failure becomes the run's error, never a lost run."""
    try:
        return index, run_one(scenario, options), None
    except Exception as exc:  # noqa: BLE001 - reported in the run's row
        return index, None, _error_text(exc)


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _quiet_worker() -> None:
    """Ctrl-C is the parent's to handle: it stops the sweep and writes what finished."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---- running a grid -----------------------------------------------------------------------

def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_points(points: list[Point], engine: str | None = None, client: Any = None,
               workers: int | None = None, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run every point; one record each, in grid order. Ctrl-C raises ``SweepInterrupted``."""
    options = engine_options(engine)
    results: dict[int, tuple[Any, str | None]] = {}
    total = len(points)

    def done(index: int, summary: Any, error: str | None) -> None:
        results[index] = (summary, error)
        if progress is not None:
            progress(len(results), total)

    if progress is not None:
        progress(0, total)
    try:
        if client is not None:
            _run_dask(points, options, client, done)
        elif (workers or default_workers()) == 1 or total == 1:
            for p in points:
                done(*_task(p.index, p.scenario, options))
        else:
            _run_pool(points, options, min(workers or default_workers(), total), done)
    except KeyboardInterrupt:
        raise SweepInterrupted(_records(points, results), total) from None
    return _records(points, results)


def _records(points: list[Point], results: Mapping[int, tuple[Any, str | None]]) -> list[dict[str, Any]]:
    return [{"params": p.params, "summary": results[p.index][0], "error": results[p.index][1]}
            for p in points if p.index in results]


def _run_pool(points: list[Point], options: Mapping[str, Any], workers: int,
              done: Callable[[int, Any, str | None], None]) -> None:
    ctx = _context()
    broken = _pool_pass(points, options, workers, ctx, done)
    for p in broken:  # a worker died under them: run each alone, so only the culprit fails
        if _pool_pass([p], options, 1, ctx, done):
            done(p.index, None, "the worker process running this point died")


def _context() -> Any:
    """fork when this process has one thread (fast, and a script needs no ``__main__`` guard);
    else forkserver, since a fork copies locks that other threads may be holding."""
    import multiprocessing  # here, not at import: ``import xenevtchn`` stays light

    if threading.active_count() == 1 or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["xenevtchn.sweeps"])
    return ctx


def _pool_pass(points: list[Point], options: Mapping[str, Any], workers: int, ctx: Any,
               done: Callable[[int, Any, str | None], None]) -> list[Point]:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    broken: list[Point] = []
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_quiet_worker)
    clean = False
    todo = iter(points)
    window = 4 * workers  # runs queued at once: a million-point grid is not a million futures

    def submit_more() -> None:
        for p in itertools.islice(todo, window - len(pending)):
            pending[pool.submit(_task, p.index, p.scenario, options)] = p

    pending: dict[Future[Any], Point] = {}
    try:
        submit_more()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                p = pending.pop(fut)
                try:
                    done(*fut.result())
                except BrokenProcessPool:
                    broken.append(p)
                except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
                    done(p.index, None, _error_text(exc))
            submit_more()
        clean = True
    finally:
        if not clean:  # Ctrl-C or a failure of ours: stop the runs still going
            _terminate(pool)
        pool.shutdown(wait=True, cancel_futures=True)
    return sorted(broken, key=lambda p: p.index)


def _terminate(pool: ProcessPoolExecutor) -> None:
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()


def _run_dask(points: list[Point], options: Mapping[str, Any], client: Any,
              done: Callable[[int, Any, str | None], None]) -> None:
    import uuid

    import distributed

    as_completed: Any = distributed.as_completed

    tag = uuid.uuid4().hex[:12]
    todo = iter(points)
    window = max(64, 4 * sum(client.nthreads().values()))  # tasks the scheduler holds at once
    by_key: dict[str, Point] = {}
    live: dict[str, Any] = {}

    def submit(p: Point) -> Any:
        fut = client.submit(_task, p.index, p.scenario, dict(options), key=f"xenevtchn-sweep-{tag}-{p.index}",
                            pure=False)
        by_key[fut.key] = p
        live[fut.key] = fut
        return fut

    try:
        ac = as_completed([submit(p) for p in itertools.islice(todo, window)], loop=client.loop)
        for fut in ac:
            p = by_key.pop(fut.key)
            live.pop(fut.key, None)
            try:
                done(*fut.result())
            except Exception as exc:  # noqa: BLE001 - e.g. the worker died (KilledWorker)
                done(p.index, None, _error_text(exc))
            fut.release()
            nxt = next(todo, None)
            if nxt is not None:
                ac.add(submit(nxt))
    finally:
        if live:
            client.cancel(list(live.values()))


# ---- the Python API -------------------------------------------------------------------------

def sweep(grid: Mapping[str, Any], scenario: str | Path | Mapping[str, Any] | Scenario | None = None,
          events: int | None = None, engine: str | None = "c", client: Any = None, *,
          workers: int | None = None, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run every point of ``grid``: one record per point, in grid order.

    ``grid``: parameter name -> list of values (``{"guests": [4, 16], "seed": range(1, 9)}``;
    names as ``xenevtchn sweep --param`` takes them). ``scenario``: ``None`` (built in), a
    TOML file's path, its tables as a dict, or a ``Scenario``. ``events``: every run's.
    ``engine``: ``"c"`` or ``"python"`` (``None``: the simulator's default). ``client``: a
    ``dask.distributed.Client`` to run on its cluster; else ``workers`` local processes
    (default: one per core). ``progress(done, total)`` is called as runs finish.
    A bad grid raises ``GridError`` (a ``ValueError``) before anything runs.
    """
    points = expand(grid, scenario, events)
    return run_points(points, engine=engine, client=client, workers=workers, progress=progress)


def sweep_frame(grid: Mapping[str, Any], scenario: str | Path | Mapping[str, Any] | Scenario | None = None,
                events: int | None = None, engine: str | None = "c", client: Any = None, *,
                workers: int | None = None, progress: Progress | None = None) -> Any:
    """``sweep()`` as a pandas DataFrame of flat rows (needs ``pip install 'xenevtchn[frames]'``)."""
    pd = _pandas()
    records = sweep(grid, scenario, events, engine, client, workers=workers, progress=progress)
    return _frame(pd, records)


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("sweep_frame() needs pandas: pip install 'xenevtchn[frames]'") from exc
    return pd


def _frame(pd: Any, records: list[dict[str, Any]]) -> Any:
    return pd.DataFrame(flat_rows(records), columns=columns(records))


# ---- rows and files -------------------------------------------------------------------------

def flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """One record as one flat row: parameters, the summary's numbers, then ``error``."""
    row: dict[str, Any] = {}
    for name, value in record["params"].items():
        row[name] = value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
    if record.get("summary") is not None:
        _flatten_into(row, "", record["summary"])
    row["error"] = record.get("error")
    return row


def _flatten_into(row: dict[str, Any], prefix: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten_into(row, f"{prefix}{k}" if not prefix else f"{prefix}.{k}", v)
    elif isinstance(value, (bool, int, float, str)) or value is None:
        row[prefix] = value
    # lists (by_domain: one entry per domain) stay in the .jsonl records only


def columns(records: list[dict[str, Any]]) -> list[str]:
    """Every column of the flat rows, in first-seen order, ``error`` last."""
    cols: dict[str, None] = {}
    for r in records:
        cols.update(dict.fromkeys(flatten(r)))
    cols.pop("error", None)
    return [*cols, "error"]


def flat_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [flatten(r) for r in records]


def check_output(path: str) -> str:
    """The output's format (``.csv``, ``.jsonl``, ``.parquet``); ``ValueError`` if it cannot be written."""
    p = Path(path)
    fmt = p.suffix.lower()
    if fmt not in FORMATS:
        raise ValueError(f"cannot tell the format of '{path}': name it .csv, .jsonl or .parquet")
    if fmt == ".parquet":
        try:
            _pandas()
        except ImportError:
            raise ValueError("writing .parquet needs pandas and pyarrow: "
                             "pip install 'xenevtchn[frames]' pyarrow (or write .csv/.jsonl)") from None
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            try:
                import fastparquet  # noqa: F401
            except ImportError:
                raise ValueError("writing .parquet needs pyarrow (or fastparquet): pip install pyarrow "
                                 "(or write .csv/.jsonl)") from None
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise ValueError(f"cannot write '{path}': it is a directory")
    if not folder.is_dir():
        raise ValueError(f"cannot write '{path}': no such directory '{folder}'")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write '{path}': the directory '{folder}' is not writable")
    return fmt


def write_records(path: str, records: list[dict[str, Any]]) -> None:
    """Write the records as ``path``'s format, to a temporary file renamed into place."""
    import tempfile

    fmt = check_output(path)
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        if fmt == ".parquet":
            with os.fdopen(fd, "wb") as b:
                _frame(_pandas(), records).to_parquet(b, index=False)
                b.flush()
                os.fsync(b.fileno())
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                if fmt == ".jsonl":
                    for r in records:
                        f.write(json.dumps(r) + "\n")
                else:
                    w = csv.DictWriter(f, fieldnames=columns(records), restval="", lineterminator="\n")
                    w.writeheader()
                    for row in flat_rows(records):
                        w.writerow({k: "" if v is None else v for k, v in row.items()})
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_csv(path: str) -> list[dict[str, str]]:
    """A sweep's ``.csv`` as rows of text (for tests and quick looks without pandas)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


__all__ = ["GridError", "SweepInterrupted", "columns", "flatten", "run_points", "sweep", "sweep_frame",
           "write_records"]
