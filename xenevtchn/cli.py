"""The ``xenevtchn`` command line: ``demo``, ``simulate``, ``list``, ``sweep`` and ``bench``.

Every mistake on the command line or in a scenario file is one line on stderr,
``xenevtchn SUBCOMMAND: error: ...``, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import IO, TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from .atomic_file import AtomicOutput
from .progress import ProgressBar, wanted
from .scenario import GUESTS_LIMIT, MAX_EVENTS, MAX_GUESTS, Scenario, ScenarioError, default_scenario, load_scenario

if TYPE_CHECKING:
    from .trace import TraceFile

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument found after parsing: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (``prog: error: msg``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _count(lo: int, hi: int, what: str, why: str | None = None) -> Callable[[str], int]:
    """``why``: whose limit ``hi`` is, said when a value is above it."""
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if not lo <= value <= hi:
            because = f" ({why})" if why is not None and value > hi else ""
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}, not {value}{because}")
        return value

    parse.__name__ = what
    return parse


def _version_line() -> str:
    """``xenevtchn 0.1.0 (Python 3.12.1)``: what ``--version`` prints."""
    from . import __version__

    return f"xenevtchn {__version__} (Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xenevtchn",
        description="Xen event channels, simulated: a C11-atomics core over real shared_info pages.",
        epilog="Run 'xenevtchn COMMAND --help' for a command's options. With no command: demo.",
    )
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("demo", help="a short tour: dom0 and two guests raise and handle events",
                   description="Run a short deterministic tour of event channels and print it.")

    sim = sub.add_parser(
        "simulate", help="run a realistic scenario and print what happened",
        description="Run dom0 and guests with split-driver (net/blk) channels, per-vCPU timer VIRQs, "
                    "IPIs, host-device PIRQs and contended PV spinlocks (SCHEDOP_poll) on simulated "
                    "time, then print a summary of every event. Deterministic for a given seed.",
    )
    _scenario_options(sim)
    sim.add_argument("--events", type=_count(1, MAX_EVENTS, "--events"), metavar="N",
                     help="events to send in all (default 100000, or the scenario file's)")
    sim.add_argument("--json", action="store_true", help="print the summary as JSON")
    sim.add_argument("--trace", metavar="FILE",
                     help="write a Chrome/Perfetto trace-event JSON file, gzip-compressed if FILE ends "
                          "in .gz (open either in ui.perfetto.dev), streamed as the run goes; "
                          "'-' writes it to standard output (the summary then goes to stderr)")
    sim.add_argument("--plot", metavar="FILE.png|.pdf|.svg",
                     help="draw events per vCPU over time and upcall latency (needs matplotlib: "
                          "pip install 'xenevtchn[plot]')")
    sim.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on stderr (default: only when stderr is a terminal)")
    sim.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no notes on stderr")
    sim.add_argument("--engine", choices=("c", "python"), default=None,
                     help="run the event loop in C (default; tens of times faster) or in Python "
                          "(the readable reference). "
                          "Both give the same summary for the same scenario and seed")

    lst = sub.add_parser(
        "list", help="print every domain's port table at a point of a scenario",
        description="Run a scenario until N events have been sent, then print each domain's port "
                    "table like Xen's 'e' debug key: port, vCPU, type, remote end, pending, masked.",
    )
    _scenario_options(lst)
    lst.add_argument("--at", type=_count(0, MAX_EVENTS, "--at"), default=0, metavar="N",
                     help="stop after N events (default 0: right after boot)")
    lst.add_argument("--domain", type=_count(0, 0x7FEF, "--domain"), metavar="DOMID",
                     help="only this domain")
    lst.add_argument("--json", action="store_true", help="print the tables as JSON")

    _sweep_parser(sub)

    sub.add_parser("bench", help="the performance ratio table (see 'xenevtchn bench --help')",
                   description="Run the benchmarks and print the ratio table.", add_help=False)
    return parser


def _sweep_parser(sub: Any) -> None:
    sw = sub.add_parser(
        "sweep", help="run a grid of simulations, here or on a Dask cluster, into one table",
        description="Run one simulation per point of a parameter grid (the product of every --param) "
                    "in parallel, on this machine or on a Dask cluster, and write one row per run. "
                    "Rows come in grid order; a run that failed is a row with its error.",
        epilog="NAME: guests, vcpus (built-in scenario only), seed, events, abi, or a dotted scenario "
               "key: simulation.ipi_probability, devices.net.service_us, dom0.vcpus, guest[0].count, "
               "guest.vcpus (every [[guest]] table). VALUES: a,b,c or an integer range low..high. "
               "Exit status: 0, or 1 if any run failed, 2 for a bad command line, 130 after Ctrl-C "
               "(the runs finished so far are written).",
    )
    sw.add_argument("--scenario", metavar="FILE.toml", help="a scenario file (default: built in)")
    sw.add_argument("--param", action="append", required=True, metavar="NAME=VALUES",
                    help="a parameter and its values (repeat for more: the grid is their product)")
    sw.add_argument("--events", type=_count(1, MAX_EVENTS, "--events"), metavar="N",
                    help="events of every run (default: the scenario's)")
    sw.add_argument("--engine", choices=("c", "python"),
                    help="the simulation engine (default: the simulator's default)")
    sw.add_argument("--workers", type=_count(1, 4096, "--workers"), metavar="N",
                    help="local worker processes (default: the number of cores)")
    sw.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on this Dask cluster (tcp://HOST:PORT; needs 'xenevtchn[dask]')")
    sw.add_argument("--out", required=True, metavar="FILE.csv|.jsonl|.parquet",
                    help="where the rows go (written when the sweep ends, or at Ctrl-C)")
    sw.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress bar on stderr (default: only when stderr is a terminal)")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no notes on stderr")


def _scenario_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", metavar="FILE.toml", help="a scenario file (see docs; default: built in)")
    p.add_argument("--guests", type=_count(1, MAX_GUESTS, "--guests", GUESTS_LIMIT), metavar="N",
                   help="guests in the built-in scenario (default 4)")
    p.add_argument("--vcpus", type=_count(1, 32, "--vcpus"), metavar="N",
                   help="vCPUs per guest in the built-in scenario (default 2)")
    p.add_argument("--seed", type=_count(0, 2**63 - 1, "--seed"), metavar="S",
                   help="random seed (default 1, or the scenario file's)")
    p.add_argument("--abi", choices=("2l", "fifo"), default=None,
                   help="the event-channel ABI of every domain, dom0 included: 2-level (default; "
                        "4,096 ports on x86_64) or FIFO (131,072 ports, 16 priorities); with "
                        "--scenario it overrides the file's abi keys (Mini-OS guests stay 2-level)")


def _scenario(args: argparse.Namespace, events: int | None) -> Scenario:
    if args.scenario is not None:
        for opt in ("guests", "vcpus"):
            if getattr(args, opt) is not None:
                raise UsageError(f"--{opt} applies to the built-in scenario; set it in {args.scenario} instead")
        sc = load_scenario(args.scenario)
        if args.abi is not None:
            sc = sc.with_abi(args.abi)
    else:
        sc = default_scenario(guests=args.guests or 4, vcpus=args.vcpus or 2, abi=args.abi or "2l")
    return sc.with_overrides(events=events, seed=args.seed)


def _open_out(path: str, what: str, mode: str = "w") -> AtomicOutput:
    """A temporary file beside ``path``, renamed over it only once the output is whole."""
    try:
        return AtomicOutput(path, mode)
    except OSError as exc:
        raise UsageError(f"cannot write {what} '{path}': {exc.strerror or exc}") from None


def _commit(out: AtomicOutput | TraceFile, what: str) -> None:
    try:
        out.commit()
    except OSError as exc:
        raise UsageError(f"cannot write {what} '{out.path}': {exc.strerror or exc}") from None


# ---- output -----------------------------------------------------------------------------

_COLS = ("sent", "delivered", "coalesced", "masked")


def format_summary(s: dict[str, Any]) -> str:
    """The summary table that ``simulate`` prints."""
    sc, t = s["scenario"], s["totals"]
    lines = [
        f"xenevtchn simulate: {sc['domains']} domains (dom0 + {sc['guests']} guests), {sc['vcpus']} vCPUs, "
        f"{sc['channels']} channels; scenario {sc['source']}, seed {sc['seed']}",
        f"{t['sent']:,} events in {s['sim_time_us'] / 1000:,.3f} ms of simulated time; "
        f"{s['wall_s']:.2f} s wall, {s['events_per_s']:,} events/s ({s.get('engine', 'python')} engine)",
        "",
        f"{'':<22}{'sent':>10}{'delivered':>11}{'coalesced':>11}{'masked':>9}",
    ]
    lines.append(f"{'all events':<22}" + "".join(f"{t[c]:>{w},}" for c, w in zip(_COLS, (10, 11, 11, 9))))
    for kind, row in s["by_kind"].items():
        lines.append(f"  {kind:<20}" + "".join(f"{row[c]:>{w},}" for c, w in zip(_COLS, (10, 11, 11, 9))))
    name_w = max([22, *(len(d["name"]) + 1 for d in s["by_domain"])])  # whole names, aligned
    lines += ["", f"{'domain':<{name_w}}{'abi':>5}{'sent from':>10}{'received':>10}{'delivered':>11}{'coalesced':>11}"
                  f"{'masked':>9}{'upcalls':>9}{'kicks':>9}{'polls woken':>13}"]
    for d in s["by_domain"]:
        lines.append(
            f"{d['name']:<{name_w}}{d.get('abi', '2l'):>5}{d['sent_from']:>10,}{d['received']:>10,}{d['delivered']:>11,}"
            f"{d['coalesced']:>11,}{d['masked']:>9,}{d['upcalls']:>9,}{d['kicks']:>9,}{d['polls_woken']:>13,}"
        )
    lat, req = s["latency_us"], s["requests"]
    lines += [
        "",
        f"upcalls {t['upcalls']:,}, kicks {t['kicks']:,}; polls {t['polls']:,}, woken {t['polls_woken']:,}, "
        f"kicks taken by poll waiters {t['consumed_by_poll']:,}; still pending at the end {t['pending_at_end']:,}",
        f"raise -> handled latency (simulated): mean {lat['mean']:.2f} us, p50 {lat['p50']:.2f} us, "
        f"p90 {lat['p90']:.2f} us, p99 {lat['p99']:.2f} us, p99.9 {lat['p99.9']:.2f} us, "
        f"max {lat['max']:.2f} us; "
        f"{req['completed']:,} I/O requests, mean round trip {req['mean_us']:.1f} us",
    ]
    return "\n".join(lines)


def format_port_tables(tables: list[dict[str, Any]], at: int, now_us: float) -> str:
    lines = [f"port tables after {at:,} events ({now_us / 1000:,.3f} ms simulated)"]
    for d in tables:
        kind = "privileged" if d["privileged"] else d["kernel"]
        if d.get("type", "pv") != "pv":  # PV, the usual kind, is not named
            kind += f", {d['type'].upper()}"
        abi = "FIFO" if d.get("abi") == "fifo" else "2-level"
        lines += ["", f"{d['name']} (domid {d['domid']}, {kind}, {d['vcpus']} vCPUs, {d['layout']}, "
                      f"{abi}): {len(d['ports'])} ports",
                  f"{'port':>6} {'vcpu':>4}  {'type':<12}{'remote':<16}{'pending':>8}{'masked':>7}  what"]
        for p in d["ports"]:
            lines.append(f"{p['port']:>6} {p['vcpu']:>4}  {p['type']:<12}{p['remote']:<16}"
                         f"{int(p['pending']):>8}{int(p['masked']):>7}  {p['label']}")
    return "\n".join(lines)


# ---- commands -----------------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import Simulation
    from .trace import TraceFile, TraceRecorder, TraceWriteError

    sc = _scenario(args, args.events)
    plot_mod: Any = None
    if args.plot is not None:
        from . import plot

        plot_mod = plot
        try:
            plot_fmt = plot_mod.plot_format(args.plot)
        except (ImportError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    to_stdout = args.trace == "-"
    tracing = args.trace is not None
    trace_out: TraceFile | None = None
    if tracing and not to_stdout:
        try:
            trace_out = TraceFile(args.trace)
        except OSError as exc:
            raise UsageError(f"cannot write trace file '{args.trace}': {exc.strerror or exc}") from None
    try:
        plot_out = _open_out(args.plot, "plot file", "wb") if args.plot is not None else None
    except UsageError:
        if trace_out is not None:
            trace_out.discard()  # no stray temporary file beside the trace's path
        raise
    engine = "c" if args.engine is None else args.engine
    recorder: TraceRecorder | None = None
    if trace_out is not None:
        recorder = TraceRecorder(trace_out.stream)
    elif to_stdout:
        sys.stdout.flush()
        recorder = TraceRecorder(_TextOut(sys.stdout))
    try:
        sim = Simulation(sc, trace=recorder, record_timeline=plot_out is not None, engine=engine)
        bar = ProgressBar(sys.stderr, "events", "simulate") if wanted(sys.stderr, args.progress, args.quiet) else None
        interrupted = False
        try:
            sim.run(progress=bar)
        except KeyboardInterrupt:  # Ctrl-C: report what was done
            interrupted = True
        finally:
            if bar is not None:
                bar.close()
        if recorder is not None and not interrupted:
            recorder.close()
        summary = sim.summary()
        if interrupted:
            summary["interrupted"] = True
        report = sys.stderr if to_stdout else sys.stdout   # stdout holds the trace alone
        if args.json:
            json.dump(summary, report, indent=2)
            print(file=report)
        else:
            print(format_summary(summary), file=report)
        if interrupted:
            print(f"xenevtchn simulate: interrupted after {sim.sent:,} of {sim.limit:,} events "
                  "(the summary above is of those; no trace or plot file was written)", file=sys.stderr)
            return 130
        if recorder is not None:
            if trace_out is None:
                sys.stdout.flush()
            else:
                _commit(trace_out, "trace file")
                if not args.quiet:
                    print(f"trace: {recorder.count:,} trace events in {args.trace} "
                          "(open it in https://ui.perfetto.dev)", file=sys.stderr)
        if plot_out is not None:
            assert plot_mod is not None
            plot_mod.plot(sim, plot_out.file, fmt=plot_fmt)
            _commit(plot_out, "plot file")
            if not args.quiet:
                print(f"plot: {args.plot}", file=sys.stderr)
    except TraceWriteError as exc:  # the trace is streamed: a full disk shows during the run
        raise UsageError(f"cannot write trace file '{args.trace}': {exc.strerror or exc}") from None
    finally:
        for out in (trace_out, plot_out):
            if out is not None:
                out.discard()          # a no-op once committed
    return 0


class _TextOut:
    """A text stream (standard output) as the binary stream a ``TraceRecorder`` writes."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, data: bytes | memoryview) -> int:
        return self.out.write(bytes(data).decode("ascii"))


def cmd_list(args: argparse.Namespace) -> int:
    from .simulate import Simulation

    sc = _scenario(args, None)
    # HVM/PVH guests run on the Python engine only; the tables are the same on both.
    sim = Simulation(sc, engine="python") if any(g.type != "pv" for g in sc.guests) else Simulation(sc)
    if args.at:
        sim.run(events=args.at)
    tables = sim.port_tables()
    if args.domain is not None:
        tables = [t for t in tables if t["domid"] == args.domain]
        if not tables:
            raise UsageError(f"the scenario has no domain {args.domain} (domids 0..{len(sim.doms) - 1})")
    if args.json:
        json.dump({"at_events": sim.sent, "sim_time_us": sim.hv.now / 1000, "domains": tables},
                  sys.stdout, indent=2)
        print()
    else:
        print(format_port_tables(tables, sim.sent, sim.hv.now / 1000))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import sweeps as sw
    from .grid import GridError, expand, parse_params

    try:
        if args.scheduler is not None and args.workers is not None:
            raise UsageError("--workers is for local runs; with --scheduler the cluster's workers run them")
        sw.check_output(args.out)
        points = expand(parse_params(args.param), args.scenario, args.events)
        sw.engine_options(args.engine)
    except (GridError, ValueError, sw.EngineUnavailable) as exc:
        raise UsageError(str(exc)) from None
    client = _dask_client(args.scheduler) if args.scheduler is not None else None
    bar = ProgressBar(sys.stderr, "runs", "sweep") if wanted(sys.stderr, args.progress, args.quiet) else None
    interrupted = False
    try:
        records = sw.run_points(points, engine=args.engine, client=client, workers=args.workers, progress=bar)
    except sw.SweepInterrupted as exc:
        records, interrupted = exc.records, True
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
    try:
        sw.write_records(args.out, records)
    except OSError as exc:
        raise UsageError(f"cannot write '{args.out}': {exc.strerror or exc}") from None
    failed = sum(r["error"] is not None for r in records)
    if interrupted:
        print(f"xenevtchn sweep: interrupted: {len(records):,} of {len(points):,} runs written to "
              f"{args.out}", file=sys.stderr)
        return 130
    if not args.quiet:
        note = f", {failed:,} failed (see the error column)" if failed else ""
        print(f"sweep: {len(records):,} runs{note} in {args.out}", file=sys.stderr)
    return 1 if failed else 0


def _dask_client(address: str) -> Any:
    try:
        from distributed import Client
        from distributed.comm import get_address_host_port, parse_address
        from distributed.comm.registry import get_backend
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'xenevtchn[dask]'") from None
    try:  # before a Client exists: one that failed to start hangs at exit
        get_backend(parse_address(address)[0])
        get_address_host_port(address)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--scheduler wants tcp://HOST:PORT, not {address!r}: {exc}") from None
    try:
        return Client(address, timeout=15, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {' '.join(str(exc).split())}") from None


def cmd_bench(argv: list[str]) -> int:
    try:
        from . import bench
    except ImportError as exc:
        if argv and argv[0] in ("-h", "--help"):
            print("usage: xenevtchn bench [options]\n\nRuns the benchmarks and prints the ratio table "
                  "(xenevtchn.bench, which this installation lacks).")
            return 0
        raise UsageError(f"the benchmark module is not available in this installation ({exc})") from None
    return int(bench.main(argv) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # every argument after 'bench' is the bench module's
        return _guarded("bench", lambda: cmd_bench(argv[1:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, which names the subcommand
        sub = _subparsers(parser).get(args.command, parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in (None, "demo"):
        from .demo import run

        run(sys.stdout)
        return 0
    fn = {"simulate": cmd_simulate, "list": cmd_list, "sweep": cmd_sweep}[args.command]
    return _guarded(args.command, lambda: fn(args))


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _guarded(command: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except (UsageError, ScenarioError) as exc:
        print(f"xenevtchn {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. piped into head: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"xenevtchn {command}: interrupted", file=sys.stderr)
        return 130
