"""Scenarios for ``xenevtchn simulate`` / ``xenevtchn list``: the default one, or a TOML file.

A scenario names the domains (dom0 and groups of guests), the split-driver devices each
guest has (a front/back interdomain channel pair to dom0 per device, served by a
simulated host device behind a PIRQ of dom0), and the rates of the other event sources
(the per-vCPU timer VIRQ, reschedule IPIs, contended PV spinlocks that wait in
SCHEDOP_poll). Every key is checked; a mistake raises ``ScenarioError`` naming the key.

A file looks like this (every key optional except at least one ``[[guest]]``)::

    [simulation]
    events = 50000           # events to send (each send / VIRQ / PIRQ is one)
    seed = 7
    timer_hz = 1000          # VIRQ_TIMER rate per vCPU
    ipi_probability = 0.25   # after handling I/O, a reschedule IPI to another vCPU
    lock_probability = 0.02  # before a request, the queue lock is contended

    [dom0]
    vcpus = 2

    [devices.nvme]           # a device of your own (net and blk are built in)
    service_us = [20, 80]    # the host device's service time, uniform in this range
    think_us = [5, 40]       # the frontend's pause before its next request
    depth = 2                # requests each frontend keeps in flight
    napi = false             # true: the frontend masks its port and polls (netfront)

    [[guest]]
    name = "web"
    count = 3
    vcpus = 2
    devices = ["net", "blk"]
    kernel = "linux"         # or "minios"
    layout = "x86_64"        # or "x86_32"
    type = "pv"              # or "hvm" / "pvh": upcalls through per-vCPU vectors (Python engine)
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .constants import (
    DOMAIN_TYPES,
    EVTCHN_2L_NR_CHANNELS,
    EVTCHN_2L_NR_CHANNELS_X86_32,
    NR_PIRQS,
    XEN_LEGACY_MAX_VCPUS,
)

MAX_GUESTS = 1000
MAX_EVENTS = 10**9
FIRST_AUTO_PIRQ = 16
KERNELS = ("linux", "minios")
LAYOUTS = ("x86_64", "x86_32")
MAX_NESTING = 16  # a real scenario nests tables and arrays 3 deep


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the file and the key."""


@dataclass(frozen=True)
class DeviceSpec:
    """One kind of split-driver device: its host device's timing and its frontend's habits."""

    name: str
    service_us: tuple[float, float]
    think_us: tuple[float, float]
    depth: int
    pirq: int
    napi: bool


@dataclass(frozen=True)
class GuestSpec:
    """``count`` identical guests."""

    name: str
    count: int
    vcpus: int
    devices: tuple[str, ...]
    kernel: str = "linux"
    layout: str = "x86_64"
    type: str = "pv"


@dataclass(frozen=True)
class Scenario:
    """Everything a simulation run needs; ``default_scenario()`` or ``load_scenario()``."""

    guests: tuple[GuestSpec, ...]
    devices: dict[str, DeviceSpec]
    events: int = 100_000
    seed: int = 1
    timer_hz: int = 1000
    ipi_probability: float = 0.25
    lock_probability: float = 0.02
    dom0_vcpus: int = 2
    dom0_layout: str = "x86_64"
    source: str = "default"

    @property
    def nr_guests(self) -> int:
        return sum(g.count for g in self.guests)

    def with_overrides(self, *, events: int | None = None, seed: int | None = None) -> Scenario:
        """A copy with the command line's ``--events`` / ``--seed`` applied."""
        return replace(self, events=self.events if events is None else events,
                       seed=self.seed if seed is None else seed)


BUILTIN_DEVICES = {
    # netfront/netback: short host service times; the frontend masks its port and
    # polls its ring (NAPI), so responses that arrive meanwhile are masked events.
    "net": DeviceSpec("net", service_us=(5.0, 20.0), think_us=(2.0, 30.0), depth=4, pirq=16, napi=True),
    # blkfront/blkback: slower host device, fewer requests in flight.
    "blk": DeviceSpec("blk", service_us=(50.0, 200.0), think_us=(10.0, 100.0), depth=2, pirq=17, napi=False),
}
_GENERIC = DeviceSpec("", service_us=(10.0, 50.0), think_us=(10.0, 50.0), depth=1, pirq=-1, napi=False)


def default_scenario(guests: int = 4, vcpus: int = 2, events: int = 100_000, seed: int = 1) -> Scenario:
    """dom0 (2 vCPUs) and ``guests`` Linux guests of ``vcpus`` vCPUs, each with net and blk."""
    g = GuestSpec("guest", count=guests, vcpus=vcpus, devices=("net", "blk"))
    sc = Scenario(guests=(g,), devices=dict(BUILTIN_DEVICES), events=events, seed=seed)
    check_limits(sc, "default scenario")
    return sc


# ---- loading ----------------------------------------------------------------------------

_TOP_KEYS = ("simulation", "dom0", "devices", "guest")
_SIM_KEYS = ("events", "seed", "timer_hz", "ipi_probability", "lock_probability")
_DOM0_KEYS = ("vcpus", "layout")
_DEVICE_KEYS = ("service_us", "think_us", "depth", "pirq", "napi")
_GUEST_KEYS = ("name", "count", "vcpus", "devices", "kernel", "layout", "type")


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.where}: {key}: {msg}")

    def table(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {_tname(value)}")
        for k in value:
            if k not in allowed:
                near = difflib.get_close_matches(k, allowed, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else f" (known keys: {', '.join(allowed)})"
                full = f"{key}.{k}" if key else k
                raise ScenarioError(f"{self.where}: unknown key '{full}'{hint}")
        return value

    def int(self, value: Any, key: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {_tname(value)}")
        if not lo <= value <= hi:
            raise self.fail(key, f"must be in {lo}..{hi}, not {value}")
        return value

    def prob(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, not {_tname(value)}")
        if not 0.0 <= value <= 1.0:
            raise self.fail(key, f"must be in 0..1, not {value}")
        return float(value)

    def range_us(self, value: Any, key: str) -> tuple[float, float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value, value]
        if (not isinstance(value, list) or len(value) != 2
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value)):
            raise self.fail(key, f"must be [low, high] in microseconds, not {value!r}")
        lo, hi = float(value[0]), float(value[1])
        if not 0.0 < lo <= hi <= 1e9:
            raise self.fail(key, f"must satisfy 0 < low <= high <= 1e9, not {value!r}")
        return lo, hi

    def bool(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_tname(value)}")
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return str(value)

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value or not value.replace("-", "").replace("_", "").isalnum():
            raise self.fail(key, f"must be a non-empty name of letters, digits, '-' and '_', not {value!r}")
        return value


def _tname(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a TOML scenario; ``ScenarioError`` (a ``ValueError``) on any mistake."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario file '{path}': {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ScenarioError(f"{path}: arrays or tables nested too deeply "
                            f"(a scenario needs at most {MAX_NESTING} levels)") from None
    return parse_scenario(data, str(path))


def _check_nesting(data: Any, where: str) -> None:
    """Refuse values nested deeper than ``MAX_NESTING``, without recursion."""
    todo = [(data, 0)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_NESTING:
            raise ScenarioError(f"{where}: arrays or tables nested too deeply "
                                f"(a scenario needs at most {MAX_NESTING} levels)")
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)


def parse_scenario(data: dict[str, Any], where: str = "scenario") -> Scenario:
    """Check a scenario given as the dict a TOML file parses to."""
    _check_nesting(data, where)
    c = _Checker(where)
    c.table(data, "", _TOP_KEYS)
    kw: dict[str, Any] = {}

    sim = c.table(data.get("simulation", {}), "simulation", _SIM_KEYS)
    if "events" in sim:
        kw["events"] = c.int(sim["events"], "simulation.events", 1, MAX_EVENTS)
    if "seed" in sim:
        kw["seed"] = c.int(sim["seed"], "simulation.seed", 0, 2**63 - 1)
    if "timer_hz" in sim:
        kw["timer_hz"] = c.int(sim["timer_hz"], "simulation.timer_hz", 1, 1_000_000)
    for k in ("ipi_probability", "lock_probability"):
        if k in sim:
            kw[k] = c.prob(sim[k], f"simulation.{k}")

    dom0 = c.table(data.get("dom0", {}), "dom0", _DOM0_KEYS)
    if "vcpus" in dom0:
        kw["dom0_vcpus"] = c.int(dom0["vcpus"], "dom0.vcpus", 1, XEN_LEGACY_MAX_VCPUS)
    if "layout" in dom0:
        kw["dom0_layout"] = c.choice(dom0["layout"], "dom0.layout", LAYOUTS)

    devices = dict(BUILTIN_DEVICES)
    devtab = data.get("devices", {})
    if not isinstance(devtab, dict):
        raise c.fail("devices", f"must be a table of device tables, not {_tname(devtab)}")
    for name, spec in devtab.items():
        key = f"devices.{name}"
        c.name(name, key)
        c.table(spec, key, _DEVICE_KEYS)
        base = devices.get(name, replace(_GENERIC, name=name))
        upd: dict[str, Any] = {}
        if "service_us" in spec:
            upd["service_us"] = c.range_us(spec["service_us"], f"{key}.service_us")
        if "think_us" in spec:
            upd["think_us"] = c.range_us(spec["think_us"], f"{key}.think_us")
        if "depth" in spec:
            upd["depth"] = c.int(spec["depth"], f"{key}.depth", 1, 64)
        if "pirq" in spec:
            upd["pirq"] = c.int(spec["pirq"], f"{key}.pirq", 1, NR_PIRQS - 1)  # PIRQ 0 is never bindable
        if "napi" in spec:
            upd["napi"] = c.bool(spec["napi"], f"{key}.napi")
        devices[name] = replace(base, **upd)

    guests_raw = data.get("guest")
    if guests_raw is None:
        raise ScenarioError(f"{where}: no guests: add at least one [[guest]] table")
    if not isinstance(guests_raw, list):
        raise c.fail("guest", "must be an array of tables ([[guest]])")
    guests = []
    for i, g in enumerate(guests_raw):
        key = f"guest[{i}]"
        c.table(g, key, _GUEST_KEYS)
        name = c.name(g.get("name", f"guest{i}"), f"{key}.name")
        devs = g.get("devices", ["net", "blk"])
        if not isinstance(devs, list) or not all(isinstance(x, str) for x in devs):
            raise c.fail(f"{key}.devices", f"must be an array of device names, not {devs!r}")
        for d in devs:
            if d not in devices:
                near = difflib.get_close_matches(d, list(devices), n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                raise c.fail(f"{key}.devices", f"unknown device '{d}'{hint}; define it in [devices.{d}]")
        guests.append(GuestSpec(
            name=name,
            count=c.int(g.get("count", 1), f"{key}.count", 1, MAX_GUESTS),
            vcpus=c.int(g.get("vcpus", 1), f"{key}.vcpus", 1, XEN_LEGACY_MAX_VCPUS),
            devices=tuple(devs),
            kernel=c.choice(g.get("kernel", "linux"), f"{key}.kernel", KERNELS),
            layout=c.choice(g.get("layout", "x86_64"), f"{key}.layout", LAYOUTS),
            type=c.choice(g.get("type", "pv"), f"{key}.type", DOMAIN_TYPES),
        ))
    if not guests:
        raise ScenarioError(f"{where}: no guests: add at least one [[guest]] table")

    # Devices without a PIRQ of their own get the next free one from 16 up.
    used = {d.pirq for d in devices.values() if d.pirq >= 0}
    nxt = FIRST_AUTO_PIRQ
    for name in sorted(devices):
        if devices[name].pirq < 0:
            while nxt in used:
                nxt += 1
            devices[name] = replace(devices[name], pirq=nxt)
            used.add(nxt)
    in_use = {n: d for n, d in devices.items() if any(n in g.devices for g in guests)}
    seen: dict[int, str] = {}
    for name, d in sorted(in_use.items()):
        if d.pirq in seen:
            raise c.fail(f"devices.{name}.pirq", f"PIRQ {d.pirq} is also used by device '{seen[d.pirq]}'")
        seen[d.pirq] = name
    sc = Scenario(guests=tuple(guests), devices=in_use, source=where, **kw)
    check_limits(sc, where)
    return sc


def _nr_ports(layout: str) -> int:
    return EVTCHN_2L_NR_CHANNELS if layout == "x86_64" else EVTCHN_2L_NR_CHANNELS_X86_32


def check_limits(sc: Scenario, where: str) -> None:
    """Refuse scenarios that would run out of domids or event-channel ports."""
    if not 1 <= sc.nr_guests <= MAX_GUESTS:
        raise ScenarioError(f"{where}: {sc.nr_guests} guests in all; the simulator takes 1..{MAX_GUESTS}")
    per_vcpu = 3  # VIRQ_TIMER, a reschedule IPI and a spinlock-kicker IPI per vCPU
    for i, g in enumerate(sc.guests):
        need = len(g.devices) + per_vcpu * g.vcpus
        have = _nr_ports(g.layout) - 1
        if need > have:
            raise ScenarioError(f"{where}: guest[{i}] needs {need} ports; the {g.layout} 2-level ABI has {have}")
    need = sum(len(g.devices) * g.count for g in sc.guests) + per_vcpu * sc.dom0_vcpus + len(sc.devices)
    have = _nr_ports(sc.dom0_layout) - 1
    if need > have:
        raise ScenarioError(
            f"{where}: dom0 would need {need} ports for its backends; the {sc.dom0_layout} 2-level ABI "
            f"has {have} (fewer guests or devices)"
        )
