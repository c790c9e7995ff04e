"""Typing users can rely on: ``mypy --strict`` on the package, on a user's script and on
every Python block of the README, and the public names all in ``__all__``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import xenevtchn as xe

ROOT = Path(__file__).resolve().parents[1]
USER_SCRIPT = ROOT / "tests" / "typing" / "user_script.py"


def test_every_public_name_is_exported():
    for name in ("Hypervisor", "Domain", "Vcpu", "EvtchnError", "EvtchnStatus", "XenEvtchn",
                 "LinuxGuest", "MiniOSGuest", "SharedInfo", "SharedPage", "GuestMemory",
                 "SimPyAdapter", "Simulation", "Scenario", "GuestSpec", "DeviceSpec",
                 "ScenarioError", "load_scenario", "parse_scenario", "default_scenario",
                 "get_include", "get_library", "get_pkgconfig_dir", "EVTCHNOP_send",
                 "DOMID_SELF", "__version__"):
        assert name in xe.__all__, name
        assert hasattr(xe, name), name
    assert len(set(xe.__all__)) == len(xe.__all__)
    assert all(hasattr(xe, name) for name in xe.__all__)


def test_version_is_the_distribution_version():
    from importlib.metadata import version

    assert xe.__version__ == version("xenevtchn")
    r = subprocess.run([sys.executable, "-m", "xenevtchn", "--version"], capture_output=True,
                       text=True, timeout=60, cwd=USER_SCRIPT.parent)  # not the source root
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"xenevtchn {xe.__version__} (Python ")


def test_user_script_runs():
    r = subprocess.run([sys.executable, str(USER_SCRIPT)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("[")


@pytest.mark.timeout(600)
def test_mypy_strict_on_the_package_the_user_script_and_the_readme(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README has Python examples"
    files = []
    for i, code in enumerate(blocks):
        f = tmp_path / f"readme_block_{i}.py"
        f.write_text(code)
        files.append(str(f))
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--config-file", str(ROOT / "pyproject.toml"),
         str(ROOT / "xenevtchn"), str(USER_SCRIPT), *files],
        cwd=ROOT, capture_output=True, text=True, timeout=560)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout
