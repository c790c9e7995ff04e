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
    abi = "2l"               # or "fifo": dom0's event-channel ABI (FIFO: 131,072 ports)

    [devices.nvme]           # a device of your own (net and blk are built in)
    service_us = [20, 80]    # the host device's service time, uniform in this range
    think_us = [5, 40]       # the frontend's pause before its next request
    depth = 2                # requests each frontend keeps in flight
    napi = false             # true: the frontend masks its port and polls (netfront)
    priority = 3             # FIFO priority of its channels, 0 (highest) .. 15; needs
                             # abi = "fifo" in every domain that has one of them

    [[guest]]
    name = "web"
    count = 3
    vcpus = 2
    devices = ["net", "blk"]
    kernel = "linux"         # or "minios"
    layout = "x86_64"        # or "x86_32"
    abi = "2l"               # or "fifo" (Linux only: Mini-OS has no FIFO ABI)
    type = "pv"              # or "hvm" / "pvh": upcalls through per-vCPU vectors (Python engine)

A FIFO domain boots as Linux does (``events_fifo.c``): a control block per vCPU
(``EVTCHNOP_init_control``) and event-array pages (``EVTCHNOP_expand_array``) as its
ports need them; its VIRQ_TIMER ports get the highest priority (Linux's
``xen_setup_timer``), a device's ``priority`` goes to its channels with
``EVTCHNOP_set_priority``.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .constants import (
    DOMAIN_TYPES,
    DOMID_FIRST_RESERVED,
    EVTCHN_2L_NR_CHANNELS,
    EVTCHN_2L_NR_CHANNELS_X86_32,
    EVTCHN_FIFO_NR_CHANNELS,
    EVTCHN_FIFO_PRIORITY_MIN,
    NR_PIRQS,
    XEN_LEGACY_MAX_VCPUS,
)

# Xen's limit, not ours: domids 0..0x7FEF are domains' (DOMID_FIRST_RESERVED = 0x7FF0 is
# DOMID_SELF), and dom0 has domid 0, so a scenario holds at most 0x7FEF guests.
MAX_GUESTS = DOMID_FIRST_RESERVED - 1
GUESTS_LIMIT = (f"Xen has {MAX_GUESTS:,} domain ids for guests: domids end below "
                f"DOMID_FIRST_RESERVED (0x{DOMID_FIRST_RESERVED:X}) and dom0 is domid 0")
MAX_EVENTS = 10**9
FIRST_AUTO_PIRQ = 16
KERNELS = ("linux", "minios")
LAYOUTS = ("x86_64", "x86_32")
ABIS = ("2l", "fifo")
PORTS_PER_VCPU = 3  # VIRQ_TIMER, a reschedule IPI and a spinlock-kicker IPI per vCPU
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
    priority: int | None = None  # FIFO priority of its channels (None: Xen's default, 7)


@dataclass(frozen=True)
class GuestSpec:
    """``count`` identical guests."""

    name: str
    count: int
    vcpus: int
    devices: tuple[str, ...]
    kernel: str = "linux"
    layout: str = "x86_64"
    abi: str = "2l"
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
    dom0_abi: str = "2l"
    source: str = "default"

    @property
    def nr_guests(self) -> int:
        return sum(g.count for g in self.guests)

    def with_overrides(self, *, events: int | None = None, seed: int | None = None) -> Scenario:
        """A copy with the command line's ``--events`` / ``--seed`` applied."""
        return replace(self, events=self.events if events is None else events,
                       seed=self.seed if seed is None else seed)

    def with_abi(self, abi: str) -> Scenario:
        """A copy with every domain, dom0 included, on ``abi`` (``--abi``), checked again.
        Mini-OS guests stay 2-level: Mini-OS has no FIFO ABI."""
        if abi not in ABIS:
            raise ScenarioError(f"abi must be one of {', '.join(ABIS)}, not {abi!r}")
        guests = tuple(replace(g, abi=abi) if g.kernel == "linux" else g for g in self.guests)
        sc = replace(self, dom0_abi=abi, guests=guests)
        check_abis(sc, self.source, fix="--abi")
        check_limits(sc, self.source)
        return sc


BUILTIN_DEVICES = {
    # netfront/netback: short host service times; the frontend masks its port and
    # polls its ring (NAPI), so responses that arrive meanwhile are masked events.
    "net": DeviceSpec("net", service_us=(5.0, 20.0), think_us=(2.0, 30.0), depth=4, pirq=16, napi=True),
    # blkfront/blkback: slower host device, fewer requests in flight.
    "blk": DeviceSpec("blk", service_us=(50.0, 200.0), think_us=(10.0, 100.0), depth=2, pirq=17, napi=False),
}
_GENERIC = DeviceSpec("", service_us=(10.0, 50.0), think_us=(10.0, 50.0), depth=1, pirq=-1, napi=False)


def default_scenario(guests: int = 4, vcpus: int = 2, events: int = 100_000, seed: int = 1,
                     abi: str = "2l") -> Scenario:
    """dom0 (2 vCPUs) and ``guests`` Linux guests of ``vcpus`` vCPUs, each with net and blk,
    every domain on the event-channel ABI ``abi`` (``"2l"`` or ``"fifo"``)."""
    if abi not in ABIS:
        raise ScenarioError(f"abi must be one of {', '.join(ABIS)}, not {abi!r}")
    g = GuestSpec("guest", count=guests, vcpus=vcpus, devices=("net", "blk"), abi=abi)
    sc = Scenario(guests=(g,), devices=dict(BUILTIN_DEVICES), events=events, seed=seed, dom0_abi=abi)
    check_limits(sc, "default scenario", fix="--abi")
    return sc


# ---- loading ----------------------------------------------------------------------------

_TOP_KEYS = ("simulation", "dom0", "devices", "guest")
_SIM_KEYS = ("events", "seed", "timer_hz", "ipi_probability", "lock_probability")
_DOM0_KEYS = ("vcpus", "layout", "abi")
_DEVICE_KEYS = ("service_us", "think_us", "depth", "pirq", "napi", "priority")
_GUEST_KEYS = ("name", "count", "vcpus", "devices", "kernel", "layout", "abi", "type")


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

    def int(self, value: Any, key: str, lo: int, hi: int, why: str | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {_tname(value)}")
        if not lo <= value <= hi:
            because = f" ({why})" if why is not None and value > hi else ""
            raise self.fail(key, f"must be in {lo}..{hi}, not {value}{because}")
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
    if "abi" in dom0:
        kw["dom0_abi"] = c.choice(dom0["abi"], "dom0.abi", ABIS)

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
        if "priority" in spec:
            upd["priority"] = c.int(spec["priority"], f"{key}.priority", 0, EVTCHN_FIFO_PRIORITY_MIN)
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
            count=c.int(g.get("count", 1), f"{key}.count", 1, MAX_GUESTS, GUESTS_LIMIT),
            vcpus=c.int(g.get("vcpus", 1), f"{key}.vcpus", 1, XEN_LEGACY_MAX_VCPUS),
            devices=tuple(devs),
            kernel=c.choice(g.get("kernel", "linux"), f"{key}.kernel", KERNELS),
            layout=c.choice(g.get("layout", "x86_64"), f"{key}.layout", LAYOUTS),
            abi=c.choice(g.get("abi", "2l"), f"{key}.abi", ABIS),
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
    check_abis(sc, where)
    check_limits(sc, where)
    return sc


def _nr_ports(layout: str, abi: str = "2l") -> int:
    """Event channels of the ABI, port 0 included (never bound)."""
    if abi == "fifo":
        return EVTCHN_FIFO_NR_CHANNELS
    return EVTCHN_2L_NR_CHANNELS if layout == "x86_64" else EVTCHN_2L_NR_CHANNELS_X86_32


def _abi_name(layout: str, abi: str) -> str:
    return "FIFO ABI" if abi == "fifo" else f"{layout} 2-level ABI"


def check_abis(sc: Scenario, where: str, fix: str = "abi") -> None:
    """Refuse FIFO where the guest has none (Mini-OS) and priorities on 2-level channels."""
    for i, g in enumerate(sc.guests):
        if g.abi == "fifo" and g.kernel != "linux":
            raise ScenarioError(f"{where}: guest[{i}]: a {g.kernel} guest has no FIFO ABI "
                                f"(only Linux guests can use abi = \"fifo\")")
    for name, dev in sorted(sc.devices.items()):
        if dev.priority is None:
            continue
        two_level = ["dom0"] if sc.dom0_abi != "fifo" else []
        two_level += [f"guest[{i}]" for i, g in enumerate(sc.guests) if name in g.devices and g.abi != "fifo"]
        if two_level:
            how = "--abi fifo" if fix == "--abi" else "abi = \"fifo\" in each"
            raise ScenarioError(
                f"{where}: devices.{name}.priority: FIFO priorities need every domain with a channel "
                f"of the device on the FIFO ABI; {', '.join(two_level)} "
                f"{'is' if len(two_level) == 1 else 'are'} 2-level (use {how}, or drop the priority)")


def dom0_ports_needed(sc: Scenario) -> int:
    """The event channels dom0 binds: a backend per guest device, a PIRQ per host device,
    and its own per-vCPU ports."""
    return sum(len(g.devices) * g.count for g in sc.guests) + PORTS_PER_VCPU * sc.dom0_vcpus + len(sc.devices)


def check_limits(sc: Scenario, where: str, fix: str = "abi") -> None:
    """Refuse scenarios that would run out of domids or event-channel ports, before any
    domain is built. ``fix``: how the user switches ABI (``--abi`` on the command line,
    ``abi`` keys in a file)."""
    if not 1 <= sc.nr_guests <= MAX_GUESTS:
        raise ScenarioError(f"{where}: {sc.nr_guests:,} guests in all; at most {MAX_GUESTS:,}: {GUESTS_LIMIT}")
    for i, g in enumerate(sc.guests):
        need = len(g.devices) + PORTS_PER_VCPU * g.vcpus
        have = _nr_ports(g.layout, g.abi) - 1
        if need > have:
            raise ScenarioError(f"{where}: guest[{i}] needs {need} ports; the {_abi_name(g.layout, g.abi)} "
                                f"has {have}")
    need = dom0_ports_needed(sc)
    have = _nr_ports(sc.dom0_layout, sc.dom0_abi) - 1
    if need > have:
        if sc.dom0_abi == "fifo":
            hint = "fewer guests or devices"
        elif fix == "--abi":
            hint = "run it with --abi fifo (FIFO: 131,071 ports) or fewer guests"
        else:
            hint = 'set abi = "fifo" in [dom0] (or run it with --abi fifo; FIFO: 131,071 ports) or fewer guests'
        raise ScenarioError(
            f"{where}: dom0 would need {need:,} event-channel ports (a backend per guest device, a "
            f"PIRQ per host device, {PORTS_PER_VCPU} per vCPU); the {_abi_name(sc.dom0_layout, sc.dom0_abi)} "
            f"has {have:,} (ports 1..{have:,}): {hint}"
        )
