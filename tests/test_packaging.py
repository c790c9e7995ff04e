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


def test_sdist_ships_what_its_readme_shows_and_no_half_test_suite(sdist):
    """No tests at all (they need the repository's fixtures, corpora and C programs: a
    partial copy only gives collection errors); the examples and docs the README names."""
    with tarfile.open(sdist) as t:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in t.getnames()}
    assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "tools", "build")]
    readme = (ROOT / "README.md").read_text()
    for folder in ("examples", "docs"):
        for f in sorted((ROOT / folder).iterdir()):
            rel = f"{folder}/{f.name}"
            if f.is_file():
                assert rel in names, f"{rel} missing from the sdist"
    for linked in ("docs/semantics.md", "examples/embed.c", "examples/scenario.toml",
                   "examples/simpy_vcpus.py", "csrc/Makefile"):
        assert linked in readme, linked
        assert linked in names, f"{linked} (named in the README) missing from the sdist"


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


CPP_PROGRAM = ROOT / "tests" / "c" / "embed_cpp.cpp"
CPP_OUTPUT = [
    "shinfo 3136 bytes",
    "flags 3 0 1",                # newly pending + kick, coalesced, newly pending
    "pending 5=1 70=1 6=0 upcall_pending=1",
    "pending_sel 3",              # ports 5 and 70: words 0 and 1
]


def _installed_c_paths(wheel_dir: Path) -> tuple[str, str, str]:
    r = _python_in(wheel_dir, "import xenevtchn as xe\n"
                              "print(xe.get_include()); print(xe.get_library()); print(xe.get_pkgconfig_dir())")
    assert r.returncode == 0, r.stderr
    include, library, pcdir = r.stdout.split("\n")[:3]
    for p in (include, library, pcdir):
        assert Path(p).resolve().is_relative_to(wheel_dir.resolve()), p  # the installed copy
    return include, library, pcdir


def test_wheel_ships_the_header_library_and_pkgconfig_file(wheel_dir):
    include, library, pcdir = _installed_c_paths(wheel_dir)
    header = (Path(include) / "xenevtchn.h").read_text()
    assert 'extern "C"' in header
    assert (Path(include) / "xen_abi.h").is_file()
    assert Path(library).name == "libxenevtchn.a" and Path(library).stat().st_size > 0
    assert (Path(pcdir) / "xenevtchn.pc").is_file()
    # Every exported symbol of the library carries the xe_ prefix; the core is all there.
    nm = _run([shutil.which("nm") or "nm", "-g", "--defined-only", library], wheel_dir).stdout.split()
    exported = {s for i, s in enumerate(nm) if i >= 2 and nm[i - 1] in ("T", "D", "R", "B")}
    assert {"xe_shinfo_init", "xe_evtchn_send", "xe_2l_set_pending"} <= exported
    assert all(s.startswith("xe_") for s in exported), sorted(exported)


def test_a_cplusplus17_program_builds_against_the_installed_package(wheel_dir, tmp_path):
    gxx = os.environ.get("CXX") or shutil.which("g++")
    assert gxx, "no g++: the C++ test needs the system's g++"
    include, library, _ = _installed_c_paths(wheel_dir)
    exe = tmp_path / "embed_cpp"
    r = _run([gxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{include}", str(CPP_PROGRAM),
              library, "-o", str(exe)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([str(exe)], tmp_path)
    assert r.returncode == 0 and r.stdout.splitlines() == CPP_OUTPUT, r.stdout + r.stderr


def test_pkg_config_finds_the_installed_package(wheel_dir, tmp_path):
    pkgconf = shutil.which("pkg-config")
    assert pkgconf, "no pkg-config: the test needs the system's pkg-config"
    gxx = os.environ.get("CXX") or shutil.which("g++")
    assert gxx
    _, _, pcdir = _installed_c_paths(wheel_dir)
    r = _run([pkgconf, "--cflags", "--libs", "xenevtchn"], tmp_path,
             env={**os.environ, "PKG_CONFIG_PATH": pcdir})
    assert r.returncode == 0, r.stderr
    flags = r.stdout.split()
    exe = tmp_path / "embed_cpp"
    r = _run([gxx, "-std=c++17", str(CPP_PROGRAM), *flags, "-o", str(exe)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _run([str(exe)], tmp_path).stdout.splitlines() == CPP_OUTPUT
