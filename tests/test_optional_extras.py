"""The package imports and runs its main job with none of the optional extras installed
(SimPy, Dask, pandas, pyarrow, matplotlib, atheris): a plain ``pip install xenevtchn``.
Each child blocks the extras' top-level modules (``sys.modules[name] = None`` makes an
import fail as if the package were absent) before importing us."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXTRAS = ("simpy", "dask", "distributed", "pandas", "pyarrow", "matplotlib", "atheris")
HERE = Path(__file__).resolve().parent


def _child(body: str) -> subprocess.CompletedProcess[str]:
    code = (f"import sys\nfor m in {EXTRAS!r}:\n    sys.modules[m] = None\n" + body)
    return subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=HERE)   # -P, cwd: the installed package, not the tree


def test_import_and_a_simulation_without_extras():
    r = _child("import xenevtchn as xe\n"
               "from xenevtchn import *\n"
               "assert 'SimPyAdapter' not in xe.__all__\n"
               "s = xe.Simulation(xe.default_scenario(events=2000)).run()\n"
               "print(s['events'] if isinstance(s, dict) else 'ok')\n")
    assert r.returncode == 0, r.stderr[-3000:]


def test_the_simpy_adapter_names_its_extra_when_simpy_is_absent():
    r = _child("import xenevtchn as xe\n"
               "try:\n"
               "    xe.SimPyAdapter\n"
               "except ImportError as e:\n"
               "    print(e)\n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "xenevtchn[simpy]" in r.stdout


def test_the_simpy_adapter_is_exported_when_simpy_is_there():
    import xenevtchn as xe
    from xenevtchn.simpy_adapter import SimPyAdapter

    assert xe.SimPyAdapter is SimPyAdapter
    assert "SimPyAdapter" in xe.__all__
