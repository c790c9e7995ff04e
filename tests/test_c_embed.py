"""Embedding from C: the core builds as a static library with plain cc and ar, and
examples/embed.c (a C program with no Python) raises, scans, masks and polls with it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
EXAMPLE = ROOT / "examples" / "embed.c"
FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]


def _tool(env: str, name: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    assert path, f"no {name}: embedding from C needs the system's {name}"
    return path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def test_static_library_and_the_c_example(tmp_path):
    cc, ar = _tool("CC", "cc"), _tool("AR", "ar")
    objs = []
    for src in sorted(CSRC.glob("*.c")):
        obj = tmp_path / (src.stem + ".o")
        _run([cc, *FLAGS, "-fPIC", f"-I{CSRC}", "-c", str(src), "-o", str(obj)], tmp_path)
        objs.append(str(obj))
    lib = tmp_path / "libxenevtchn.a"
    _run([ar, "rcs", str(lib), *objs], tmp_path)
    exe = tmp_path / "embed"
    # Only the public header's directory is on the include path, and no Python at all.
    _run([cc, *FLAGS, f"-I{CSRC}", str(EXAMPLE), f"-L{tmp_path}", "-lxenevtchn", "-o", str(exe)], tmp_path)
    out = _run([str(exe)], tmp_path).stdout.splitlines()
    assert out == [
        "shared_info is 3136 bytes; d1 has ports 1 (interdomain), 2 (ipi), 3 (virq)",
        "send dom0:1 -> d1:1: kicked vCPUs 0x1, upcall_pending 1",
        "second send coalesced (no kick)",
        "kicked after IPI and timer: 0x2",
        "d1 vCPU0 upcall handled: 3 1",
        "d1 vCPU1 upcall handled: 2",
        "masked send: pending 1, masked 1, upcall_pending 0",
        "after unmask, d1 vCPU0 handled: 1",
        "poll on d1:2 woken: vCPUs 0x2, still polling 0",
        "1000 sends in a batch, handled: 1",
        "ok",
    ]
    # Every exported symbol of the library carries the xe_ prefix.
    syms = _run([_tool("NM", "nm"), "-g", "--defined-only", str(lib)], tmp_path).stdout.split()
    exported = [s for i, s in enumerate(syms) if i >= 2 and syms[i - 1] in ("T", "D", "R", "B")]
    assert exported and all(s.startswith("xe_") for s in exported), exported
