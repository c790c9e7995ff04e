"""The C scenario engine compiles warning-free (-Wall -Wextra -Werror) with every C compiler
on this machine (gcc, clang), and exports nothing but xe_sim_* functions."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "csrc" / "engine" / "sim_engine.c"
COMPILERS = [c for c in ("gcc", "clang", "cc") if shutil.which(c)][:2] or ["cc"]


@pytest.mark.parametrize("compiler", COMPILERS)
def test_the_engine_compiles_without_warnings(compiler, tmp_path):
    obj = tmp_path / "sim_engine.o"
    cmd = [compiler, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
           f"-I{ROOT / 'csrc'}", "-c", str(ENGINE), "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    nm = shutil.which("nm")
    assert nm, "nm (binutils) is needed to list the exported symbols"
    syms = subprocess.run([nm, "-g", "--defined-only", str(obj)], capture_output=True, text=True,
                          timeout=60).stdout.split()
    exported = [s for i, s in enumerate(syms) if i >= 2 and syms[i - 1] in ("T", "D", "R", "B")]
    assert exported and all(s.startswith("xe_sim_") for s in exported), exported
