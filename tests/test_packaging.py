"""Packaging: an sdist carries every C source and builds a wheel that works; a stale
compiled module in a source tree is refused, never silently used."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, **kw)


def _python_in(path: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with only ``path`` (first) and cffi importable.

    ``-S`` skips site-packages' .pth files, so an editable install of the project in the
    test venv cannot answer imports the copy under test should answer.
    """
    import _cffi_backend
    import cffi

    deps = {str(Path(_cffi_backend.__file__).parent), str(Path(cffi.__file__).parent.parent)}
    env = {"PYTHONPATH": os.pathsep.join([str(path), *sorted(deps)])}
    return _run([sys.executable, "-S", "-c", code], path, env=env)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """``python -m build --sdist`` run from the project root, as people type it.

    That command imports our build.py (the cffi builder) before the PyPA tool; build.py
    must hand over to the real tool.
    """
    out = tmp_path_factory.mktemp("dist")
    r = _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out)], ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = out.glob("xenevtchn-*.tar.gz")
    return path


@pytest.fixture(scope="module")
def wheel_dir(sdist, tmp_path_factory) -> Path:
    """A wheel built from the sdist alone, unpacked."""
    out = tmp_path_factory.mktemp("wheel")
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "-w", str(out), str(sdist)], out)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("xenevtchn-*.whl")
    unpacked = out / "unpacked"
    with zipfile.ZipFile(whl) as z:
        z.extractall(unpacked)
    return unpacked


def test_sdist_carries_builder_and_every_c_source(sdist):
    with tarfile.open(sdist) as t:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in t.getnames()}
    for required in ("build.py", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        assert required in names
    for src in sorted((ROOT / "csrc").iterdir()):
        if src.suffix in (".c", ".h"):
            assert f"csrc/{src.name}" in names, f"{src.name} missing from the sdist"
    assert not [n for n in names if n.endswith((".so", ".o"))]


def test_wheel_from_sdist_works(wheel_dir, tmp_path):
    assert list((wheel_dir / "xenevtchn").glob("_core*.so"))
    code = (
        "import xenevtchn as xe\n"
        "hv = xe.Hypervisor(); a = hv.create_domain(); b = hv.create_domain()\n"
        "p = a.alloc_unbound(b.domid); q = b.bind_interdomain(a.domid, p)\n"
        "a.shared_info.buffer[2048] = 0; b.send(q)\n"
        "assert a.shared_info.is_pending(p) and a.vcpus[0].upcall_pending == 1\n"
        "print('ok', xe.__file__)\n"
    )
    r = _python_in(wheel_dir, code)
    assert r.returncode == 0, r.stderr
    assert str(wheel_dir) in r.stdout


def _source_tree_with(wheel_dir: Path, dest: Path) -> Path:
    """A copy of the source tree whose xenevtchn/ holds the compiled module of the wheel."""
    for name in ("csrc", "xenevtchn"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "build.py", dest / "build.py")
    for so in (wheel_dir / "xenevtchn").glob("_core*.so"):
        shutil.copy(so, dest / "xenevtchn" / so.name)
    return dest


def test_matching_build_in_a_source_tree_imports(wheel_dir, tmp_path):
    tree = _source_tree_with(wheel_dir, tmp_path / "tree")
    r = _python_in(tree, "import xenevtchn; print(xenevtchn.__file__)")
    assert r.returncode == 0, r.stderr


def test_stale_build_in_a_source_tree_is_refused(wheel_dir, tmp_path):
    tree = _source_tree_with(wheel_dir, tmp_path / "tree")
    with open(tree / "csrc" / "event_2l.c", "a") as f:
        f.write("\n/* an edit made after the module was built */\n")
    r = _python_in(tree, "import xenevtchn")
    assert r.returncode != 0
    assert "stale C core" in r.stderr and "pip install -e ." in r.stderr


def test_missing_build_in_a_source_tree_says_what_to_do(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "xenevtchn", tree / "xenevtchn", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    r = _python_in(tree, "import xenevtchn")
    assert r.returncode != 0
    assert "not built" in r.stderr
