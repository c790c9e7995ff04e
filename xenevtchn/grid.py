"""The parameter grid of ``xenevtchn sweep``: ``NAME=VALUES`` checked and expanded to scenarios.

A grid maps parameter names to lists of values; its points are the product of the lists,
in order (the last name varies fastest). A name is one of the built-in knobs

* ``guests``, ``vcpus``: the built-in scenario's size (as ``simulate --guests/--vcpus``),
* ``seed``, ``events``: any scenario's (as ``simulate --seed/--events``),
* ``abi``: ``2l`` or ``fifo`` for every domain (Mini-OS guests stay 2-level: no FIFO there),

or a dotted key of the scenario's TOML tables (``simulation.ipi_probability``,
``devices.net.service_us``, ``dom0.vcpus``, ``guest[0].count``; ``guest.vcpus`` sets every
``[[guest]]`` table). Every point is built into a checked ``Scenario`` up front, by the same
code that reads scenario files, so a bad name or value is refused before anything runs.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .constants import XEN_LEGACY_MAX_VCPUS
from .scenario import GUESTS_LIMIT, MAX_EVENTS, MAX_GUESTS, Scenario, ScenarioError, default_scenario, load_scenario, parse_scenario

# The limits ``xenevtchn simulate`` puts on the same options.
INT_KNOBS: dict[str, tuple[int, int]] = {
    "guests": (1, MAX_GUESTS),
    "vcpus": (1, XEN_LEGACY_MAX_VCPUS),
    "seed": (0, 2**63 - 1),
    "events": (1, MAX_EVENTS),
}
ABIS = ("2l", "fifo")
KNOBS = (*INT_KNOBS, "abi")
BUILTIN_ONLY = ("guests", "vcpus")
MAX_POINTS = 1_000_000
MAX_TEXT = 10_000  # longer VALUES text is refused (a command line, not a data file)

_RANGE = re.compile(r"\s*([+-]?\d[\d_]*)\s*\.\.\s*([+-]?\d[\d_]*)\s*")
_COMPONENT = re.compile(r"([A-Za-z0-9_-]+)((?:\[\d{1,6}\])*)")


class GridError(ValueError):
    """A grid that cannot run: a bad name, value or combination; the message is one line."""


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its place in the grid, its parameters, and its checked scenario."""

    index: int
    params: dict[str, Any]
    scenario: Scenario


def fifo_supported() -> bool:
    """Whether this installation's scenarios can have FIFO domains."""
    return "abi" in inspect.signature(default_scenario).parameters


# ---- the command line's NAME=VALUES ------------------------------------------------------

def parse_params(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["guests=4,16", "seed=1..3"]`` -> ``{"guests": [4, 16], "seed": [1, 2, 3]}``."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise GridError(f"--param wants NAME=VALUES, not {_short(spec)}")
        check_name(name)
        if name in grid:
            raise GridError(f"--param {name} is given twice: put all its values in one list")
        grid[name] = parse_values(name, text)
    return grid


def parse_values(name: str, text: str) -> list[Any]:
    """A comma list (``4,16,64``, ``2l,fifo``, ``[5,20],[10,40]``) or an integer range ``a..b``."""
    if len(text) > MAX_TEXT:
        raise GridError(f"{name}: the values are longer than {MAX_TEXT:,} characters")
    m = _RANGE.fullmatch(text)
    if m:
        lo, hi = int(m.group(1).replace("_", "")), int(m.group(2).replace("_", ""))
        if lo > hi:
            raise GridError(f"{name}: the range {lo}..{hi} is empty (write it low..high)")
        if hi - lo >= MAX_POINTS:
            raise GridError(f"{name}: the range {lo}..{hi} has more than {MAX_POINTS:,} values")
        if name == "abi":
            raise GridError("abi takes names (2l,fifo), not a range")
        return list(range(lo, hi + 1))
    items = _split(name, text)
    if name in INT_KNOBS:
        return [_int(name, s) for s in items]
    if name == "abi":
        return [s.strip() for s in items]
    return [_literal(s) for s in items]


def _split(name: str, text: str) -> list[str]:
    """Split at commas outside brackets and quotes."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                raise GridError(f"{name}: unbalanced '{ch}' in {_short(text)}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if quote or depth:
        raise GridError(f"{name}: unclosed {'quote' if quote else 'bracket'} in {_short(text)}")
    items.append(text[start:])
    if any(not s.strip() for s in items):
        raise GridError(f"{name}: empty value in {_short(text)} (write a,b,c or low..high)")
    return items


def _int(name: str, text: str) -> int:
    try:
        return int(text.strip().replace("_", ""), 10)
    except ValueError:
        raise GridError(f"{name}: must be a whole number, not {_short(text.strip())}") from None


def _literal(text: str) -> Any:
    """A TOML value (``0.3``, ``true``, ``[5, 20]``, ``"x"``), or else the bare word as a string."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


# ---- names ------------------------------------------------------------------------------

def check_name(name: str) -> list[str | int]:
    """A knob name (``[]``) or a dotted key's path (``["guest", 0, "vcpus"]``)."""
    if name in KNOBS:
        return []
    if not isinstance(name, str) or "." not in name:
        raise GridError(f"unknown parameter {_short(str(name))}: use one of {', '.join(KNOBS)} "
                        "or a dotted scenario key such as simulation.ipi_probability")
    path: list[str | int] = []
    for part in name.split("."):
        m = _COMPONENT.fullmatch(part)
        if not m:
            raise GridError(f"bad parameter name {_short(name)}: a dotted key is table.key "
                            "(letters, digits, '-', '_', and [N] for a [[guest]] table)")
        path.append(m.group(1))
        path += [int(i) for i in re.findall(r"\d+", m.group(2))]
    if not isinstance(path[-1], str):
        raise GridError(f"bad parameter name {_short(name)}: it must end with a key, not an index")
    return path


# ---- expanding a grid into checked scenarios ---------------------------------------------

def expand(grid: Mapping[str, Any], scenario: str | Path | Mapping[str, Any] | Scenario | None = None,
           events: int | None = None) -> list[Point]:
    """Every point of ``grid`` as a checked scenario, in grid order; ``GridError`` on any mistake.

    ``grid``: name -> list of values (or the command line's text, ``"1..8"``).
    ``scenario``: ``None`` (built in), a TOML file's path, its tables as a dict, or a
    ``Scenario`` (which takes only ``seed`` and ``events``). ``events``: every run's events.
    """
    if not isinstance(grid, Mapping) or not grid:
        raise GridError("the grid is empty: give at least one parameter and its values")
    values: dict[str, list[Any]] = {}
    paths: dict[str, list[str | int]] = {}
    for name, vals in grid.items():
        if not isinstance(name, str):
            raise GridError(f"parameter names are strings, not {name!r}")
        paths[name] = check_name(name)
        if isinstance(vals, str):
            vals = parse_values(name, vals)
        elif isinstance(vals, (Sequence, range)) and not isinstance(vals, (bytes, bytearray)):
            vals = list(vals)
        else:
            raise GridError(f"{name}: the values must be a list, not {type(vals).__name__}")
        if not vals:
            raise GridError(f"{name}: no values")
        for v in vals:
            _check_knob_value(name, v)
        values[name] = vals
    if events is not None:
        _check_knob_value("--events", events, "events")
        if "events" in values:
            raise GridError("events is both a parameter and --events: give one of them")
    total = math.prod(len(v) for v in values.values())
    if total > MAX_POINTS:
        raise GridError(f"the grid has {total:,} points; a sweep takes at most {MAX_POINTS:,}")

    base = _Base(scenario, values)
    for name, vals in values.items():  # each value on its own first: the error names it
        if paths[name]:
            for v in vals:
                base.build({name: v}, paths, events)
    names = list(values)
    points = []
    for i, combo in enumerate(itertools.product(*values.values())):
        params = dict(zip(names, combo))
        points.append(Point(i, params, base.build(params, paths, events)))
    return points


def _check_knob_value(name: str, v: Any, knob: str | None = None) -> None:
    knob = knob or name
    if knob in INT_KNOBS:
        lo, hi = INT_KNOBS[knob]
        if isinstance(v, bool) or not isinstance(v, int):
            raise GridError(f"{name}: must be a whole number, not {v!r}")
        if not lo <= v <= hi:
            because = f" ({GUESTS_LIMIT})" if knob == "guests" and v > hi else ""
            raise GridError(f"{name}: must be in {lo}..{hi}, not {v}{because}")
    elif knob == "abi":
        if v not in ABIS:
            raise GridError(f"abi: must be one of {', '.join(ABIS)}, not {v!r}")
        if v != "2l" and not fifo_supported():
            raise GridError(f"abi={v}: this installation's scenarios are 2-level only")


class _Base:
    """The scenario every point starts from, and how a point's parameters apply to it."""

    def __init__(self, scenario: str | Path | Mapping[str, Any] | Scenario | None,
                 values: dict[str, list[Any]]) -> None:
        self.where = "default"
        self.data: dict[str, Any] | None = None
        self.fixed: Scenario | None = None
        dotted = [n for n in values if n not in KNOBS]
        if scenario is not None:
            for n in BUILTIN_ONLY:
                if n in values:
                    raise GridError(f"{n} applies to the built-in scenario; sweep the scenario's own "
                                    f"keys instead (e.g. guest[0].count, guest.vcpus)")
        if isinstance(scenario, Scenario):
            if dotted or "abi" in values:
                bad = (dotted or ["abi"])[0]
                raise GridError(f"{bad}: a Scenario object takes only seed and events; give the "
                                "scenario as a TOML file or dict to sweep its keys")
            self.fixed, self.where = scenario, scenario.source
        elif isinstance(scenario, (str, Path)):
            self.where = str(scenario)
            try:
                self.fixed = load_scenario(scenario)  # the file's own mistakes, named as simulate names them
                self.data = tomllib.loads(Path(scenario).read_text("utf-8"))
            except ScenarioError as exc:
                raise GridError(str(exc)) from None
        elif isinstance(scenario, Mapping):
            self.where = "scenario"
            self.data = copy.deepcopy(dict(scenario))
            try:
                self.fixed = parse_scenario(copy.deepcopy(self.data), self.where)
            except (ScenarioError, RecursionError) as exc:
                raise GridError(str(exc) if isinstance(exc, ScenarioError) else "scenario: nested too deeply") from None
        elif scenario is not None:
            raise GridError(f"scenario must be a path, a dict or a Scenario, not {type(scenario).__name__}")
        self.dotted = bool(dotted)
        self.fifo = fifo_supported()
        self.used_devices = set(self.fixed.devices) if self.fixed is not None else set(default_scenario().devices)

    def build(self, params: dict[str, Any], paths: dict[str, list[str | int]], events: int | None) -> Scenario:
        try:
            sc = self._build(params, paths)
            ev = params.get("events", events)
            seed = params.get("seed")
            return sc.with_overrides(events=ev, seed=seed)
        except ScenarioError as exc:
            raise GridError(f"{_describe(params)}: {exc}") from None
        except RecursionError:
            raise GridError(f"{_describe(params)}: a value is nested too deeply") from None

    def _build(self, params: dict[str, Any], paths: dict[str, list[str | int]]) -> Scenario:
        abi = params.get("abi")
        abi_kw = {"abi": abi} if abi is not None and self.fifo else {}
        if self.data is None and self.fixed is None:  # built in
            guests, vcpus = params.get("guests", 4), params.get("vcpus", 2)
            if not self.dotted:  # exactly what ``simulate --guests --vcpus [--abi]`` runs
                return default_scenario(guests=guests, vcpus=vcpus, **abi_kw)
            data = builtin_data(guests, vcpus)
        elif self.data is None or (not self.dotted and not abi_kw):
            assert self.fixed is not None
            return self.fixed
        else:
            data = copy.deepcopy(self.data)
        if abi_kw:
            data.setdefault("dom0", {})
            if isinstance(data["dom0"], dict):
                data["dom0"]["abi"] = abi
            for g in data.get("guest", []) if isinstance(data.get("guest"), list) else []:
                if isinstance(g, dict) and g.get("kernel", "linux") == "linux":
                    g["abi"] = abi  # Mini-OS has no FIFO ABI: it stays 2-level
        for name, value in params.items():
            if paths.get(name):
                self._set(data, name, paths[name], value)
        return parse_scenario(data, self.where)

    def _set(self, data: dict[str, Any], name: str, path: list[str | int], value: Any) -> None:
        if path[0] == "devices" and len(path) >= 2 and path[1] not in self.used_devices:
            raise GridError(f"{name}: no guest of the scenario uses a device '{path[1]}' "
                            f"(its devices: {', '.join(sorted(self.used_devices)) or 'none'})")
        nodes: list[Any] = [data]
        for depth, comp in enumerate(path[:-1]):
            where = _join(path[:depth + 1])
            nxt: list[Any] = []
            for node in nodes:
                if isinstance(comp, int):
                    if not isinstance(node, list) or comp >= len(node):
                        n = len(node) if isinstance(node, list) else 0
                        raise GridError(f"{name}: the scenario has no {where} (it has {n} of them)")
                    nxt.append(node[comp])
                elif isinstance(node, list):  # guest.vcpus: every [[guest]] table
                    nxt += [x.setdefault(comp, {}) if isinstance(x, dict) else x for x in node]
                elif isinstance(node, dict):
                    nxt.append(node.setdefault(comp, {}))
                else:
                    raise GridError(f"{name}: {_join(path[:depth])} is not a table")
            nodes = nxt
        last = path[-1]
        for node in nodes:
            targets = node if isinstance(node, list) else [node]
            for t in targets:
                if not isinstance(t, dict):
                    raise GridError(f"{name}: {_join(path[:-1])} is not a table")
                t[last] = copy.deepcopy(value)


def builtin_data(guests: int = 4, vcpus: int = 2) -> dict[str, Any]:
    """The built-in scenario as the tables of a scenario file (what dotted keys edit)."""
    return {"guest": [{"name": "guest", "count": guests, "vcpus": vcpus, "devices": ["net", "blk"]}]}


def _join(path: Sequence[str | int]) -> str:
    out = ""
    for c in path:
        out += f"[{c}]" if isinstance(c, int) else (f".{c}" if out else c)
    return out


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)
