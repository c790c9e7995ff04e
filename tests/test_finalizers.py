"""Finalizers, ``__del__`` and weakref callbacks never wait on a lock.

The cycle collector may run them inside any allocation, including one made while
ordinary code holds a lock: a finalizer that takes that lock makes the thread wait on
itself (the hang that Python 3.12 and 3.13 showed in ``_Slot.take``). These tests run the
collector as often as it can run while domains are made and dropped, and check the source
of every finalizer for locks.
"""

from __future__ import annotations

import ast
import gc
import threading
from pathlib import Path

import pytest

import xenevtchn as xe
from xenevtchn.domain import _Slot

PKG = Path(xe.__file__).resolve().parent


@pytest.fixture
def collector_everywhere():
    old = gc.get_threshold()
    gc.set_threshold(1, 1, 1)  # a collection at nearly every allocation
    try:
        yield
    finally:
        gc.set_threshold(*old)


@pytest.mark.timeout(120)
def test_slots_come_back_while_the_collector_runs_inside_take(collector_everywhere):
    gc.collect()
    free_before = len(_Slot._free)
    for _ in range(300):
        hv = xe.Hypervisor()
        doms = [hv.create_domain(vcpus=2) for _ in range(3)]
        doms[0].send(doms[0].bind_ipi(0))
        del hv, doms  # cycles: only the collector frees them, inside later take() calls
    gc.collect()
    assert len(_Slot._free) == free_before
    # and the slots still work: a new domain's fast path reaches its own C struct
    hv = xe.Hypervisor()
    d = hv.create_domain()
    p = d.bind_ipi(0)
    d.send(p)
    assert d.shared_info.is_pending(p)


class _CollectingLib:
    """``lib`` for domain.py, but the first ``xe_slot_set`` inside ``take`` runs a full
    collection first: the cycle collector at the worst allocation, every time."""

    def __init__(self, real):
        self._real = real
        self.collections = 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def xe_slot_set(self, n, cdom):
        if cdom != self._real_null and self.collections < 50:
            self.collections += 1
            gc.collect()
        return self._real.xe_slot_set(n, cdom)


@pytest.mark.timeout(60)
def test_a_collection_inside_take_returns_other_slots_without_waiting(monkeypatch):
    import xenevtchn.domain as domain_mod

    fake = _CollectingLib(domain_mod.lib)
    fake._real_null = domain_mod.ffi.NULL
    monkeypatch.setattr(domain_mod, "lib", fake)
    gc.collect()
    free_before = len(_Slot._free)
    for _ in range(20):
        hv = xe.Hypervisor()
        hv.create_domain()
        del hv  # a cycle holding a slot: the collection inside the next take() frees it
    assert fake.collections > 0
    monkeypatch.undo()
    gc.collect()
    assert len(_Slot._free) == free_before


@pytest.mark.timeout(120)
def test_threads_making_and_dropping_domains_with_the_collector_everywhere(collector_everywhere):
    gc.collect()
    free_before = len(_Slot._free)
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(150):
                hv = xe.Hypervisor()
                hv.create_domain()
                xe.XenEvtchn(hv.create_domain())  # its fd finalizer runs in the collector too
                del hv
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=churn) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(100)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    assert not errors, errors
    gc.collect()
    assert len(_Slot._free) == free_before


def _finalizer_bodies() -> list[tuple[str, ast.AST]]:
    """Every ``__del__`` method and every function handed to ``weakref.finalize``."""
    found: list[tuple[str, ast.AST]] = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        functions = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__del__":
                found.append((f"{path.name}:{node.lineno} __del__", node))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "finalize" and len(node.args) >= 2):
                cb = node.args[1]
                name = None  # ours: a plain name or a method of self/cls; else a library's
                if isinstance(cb, ast.Name):
                    name = cb.id
                elif (isinstance(cb, ast.Attribute) and isinstance(cb.value, ast.Name)
                      and cb.value.id in ("self", "cls")):
                    name = cb.attr
                if name in functions:
                    found.append((f"{path.name}:{node.lineno} finalize -> {name}", functions[name]))
                else:  # a builtin such as os.close: nothing of ours runs
                    found.append((f"{path.name}:{node.lineno} finalize -> {ast.unparse(cb)}", cb))
    return found


def test_no_finalizer_takes_a_lock():
    bodies = _finalizer_bodies()
    names = [n for n, _ in bodies]
    # the audit list (README, issue 13): a new finalizer must be looked at, and added here
    assert any("_give_back" in n for n in names), names
    assert any("handle.py" in n and "os.close" in n for n in names), names
    assert any(n.startswith("shared_info.py") for n in names), names
    assert any(n.startswith("memory.py") for n in names), names
    assert any(n.startswith("xenevtchn_handle.py") for n in names), names
    for name, node in bodies:
        for sub in ast.walk(node):
            if isinstance(sub, ast.With):
                text = " ".join(ast.unparse(item.context_expr) for item in sub.items)
                assert "lock" not in text.lower(), f"{name} enters {text}"
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                assert sub.func.attr not in ("acquire", "wait", "join", "get", "put"), \
                    f"{name} calls .{sub.func.attr}() and may block"
