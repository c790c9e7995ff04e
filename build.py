"""cffi builder for ``xenevtchn._core`` (out-of-line API mode).

setuptools runs this through ``setup.py``'s ``cffi_modules``; nobody needs to run it by
hand. The cdef is csrc/xen_abi.h + csrc/xenevtchn.h with their preprocessor lines
dropped, so the headers the C compiler sees are the ones cffi sees.

Running ``python -m build`` in the project root imports this file instead of the PyPA
``build`` tool (the current directory comes first on ``sys.path``); when that happens we
hand over to the real tool, or say clearly how to build a wheel.

``XENEVTCHN_SANITIZE`` (opt-in, e.g. ``address,undefined``) builds the C core with those
sanitizers: ``-fsanitize=...``, ``-fno-sanitize-recover=all`` (every report is fatal),
``-fno-omit-frame-pointer`` and ``-g`` on compile and link. Unset or empty, nothing
changes. ``tools/sanitize.sh`` uses it; see docs/readme-reliability.md.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
# Every header the cdef is made of; the generated source includes each of them too, so
# nothing it calls is undeclared (an error under GCC 14 and clang 16+).
CDEF_HEADERS = ("xen_abi.h", "xenevtchn.h", "python/fast_upcall.h", "engine/sim_engine.h")
# Every C file except the standalone examples/tests is part of the module: the core
# (csrc/*.c, also csrc/libxenevtchn.a), the files written against CPython's API
# (csrc/python/*.c: the builtin send, unmask, mask, event_channel_op and do_upcall, and the
# hook runner) and the scenario engine (csrc/engine/*.c, which needs libm; C programs that
# link the core alone do not).
SOURCES = sorted([*CSRC.glob("*.c"), *CSRC.glob("python/*.c"), *CSRC.glob("engine/*.c")])
HEADERS = sorted([*CSRC.glob("*.h"), *CSRC.glob("python/*.h"), *CSRC.glob("engine/*.h")])
SANITIZE_ENV = "XENEVTCHN_SANITIZE"
SANITIZERS = {"address", "undefined", "leak", "thread"}


def sanitize_flags() -> list[str]:
    """Compile and link flags asked for by ``XENEVTCHN_SANITIZE`` (none when unset).

    The build id (below) stays a fingerprint of the sources alone: a sanitized build of
    the same sources is the same code, so the stale-build check still holds for it.
    """
    value = os.environ.get(SANITIZE_ENV, "").strip()
    if not value:
        return []
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = sorted(set(names) - SANITIZERS)
    if unknown:
        raise SystemExit(f"{SANITIZE_ENV}={value!r}: unknown sanitizer(s) {unknown}; "
                         f"choose from {sorted(SANITIZERS)}")
    return [f"-fsanitize={','.join(names)}", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer", "-g"]


def build_id() -> str:
    """A fingerprint of everything that goes into the compiled module."""
    h = hashlib.sha256()
    for path in sorted([*SOURCES, *HEADERS, Path(__file__).resolve()]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cdef_text() -> str:
    lines: list[str] = []
    for name in CDEF_HEADERS:
        cplusplus = False  # inside #ifdef __cplusplus (the extern "C" guard): not C
        for line in (CSRC / name).read_text().splitlines():
            stripped = line.strip()
            if stripped == "#ifdef __cplusplus":
                cplusplus = True
            elif cplusplus and stripped == "#endif":
                cplusplus = False
            elif not cplusplus and not stripped.startswith("#"):
                lines.append(line)
    lines.append("extern const char xe_build_id[];")
    return "\n".join(lines)


def make_builder():
    from cffi import FFI

    ffibuilder = FFI()
    ffibuilder.cdef(cdef_text())
    ffibuilder.set_source(
        "xenevtchn._core",
        "".join(f'#include "{name}"\n' for name in CDEF_HEADERS)
        + f'const char xe_build_id[] = "{build_id()}";\n',
        sources=[str(p.relative_to(HERE)) for p in SOURCES],
        include_dirs=[str(CSRC.relative_to(HERE))],
        depends=[str(p.relative_to(HERE)) for p in HEADERS],
        extra_compile_args=["-std=c11", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra",
                            "-Wno-unused-parameter", *sanitize_flags()],
        extra_link_args=sanitize_flags(),
        libraries=["m"],  # the C scenario engine's log()
    )
    return ffibuilder


def _run_pypa_build() -> None:
    """``python -m build`` landed here: run the real ``build`` package instead."""
    import importlib
    import runpy

    here = {str(HERE), "", "."}
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) not in here and p not in here]
    sys.modules.pop("build", None)
    try:
        importlib.import_module("build")
    except ImportError:
        sys.exit(
            "'python -m build' in the xenevtchn source tree found this project's build.py "
            "(the cffi builder), and the PyPA 'build' package is not installed.\n"
            "Build a wheel with:  python -m pip wheel . --no-deps -w dist\n"
            "or install 'build' (pip install build) and run 'python -m build' again."
        )
    runpy.run_module("build", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if __spec__ is not None and __spec__.name == "build":
        _run_pypa_build()
    else:
        # 'python build.py': compile the module in place, for a quick look.
        make_builder().compile(tmpdir=str(HERE / "build"), verbose=True)
else:
    ffibuilder = make_builder()
