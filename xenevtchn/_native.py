"""The one owner of the cffi handle: ``ffi`` and ``lib`` of the compiled C core.

Everything else in the package imports them from here. When the package is imported from
a source tree (``csrc/`` beside it), the compiled module must have been built from exactly
those sources; a stale or missing build raises ``ImportError`` saying what to run, rather
than silently running old C code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_PKG = Path(__file__).resolve().parent
_SRC_TREE = _PKG.parent

try:
    from ._core import ffi, lib  # type: ignore[import-not-found,unused-ignore]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    hint = (
        f"the C core of xenevtchn is not built in {_PKG}. Install the package "
        "(pip install .) and import it from outside the source tree, or build it in place "
        "with pip install -e ."
    )
    if Path.cwd().resolve() == _SRC_TREE:
        hint += (" (This is the source tree because Python was started in the project "
                 "root: 'python -m' puts the current directory first. Use the installed "
                 "'xenevtchn' command, or run from another directory.)")
    raise ImportError(hint) from exc


def _source_build_id() -> str | None:
    """The fingerprint build.py would give the sources beside us, or None if none are."""
    csrc = _SRC_TREE / "csrc"
    builder = _SRC_TREE / "build.py"
    if not (csrc.is_dir() and builder.is_file()):
        return None
    h = hashlib.sha256()
    files = [*csrc.glob("*.c"), *csrc.glob("python/*.c"), *csrc.glob("engine/*.c"), *csrc.glob("*.h"),
             *csrc.glob("python/*.h"), *csrc.glob("engine/*.h"), builder]
    for path in sorted(files):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


BUILD_ID: str = ffi.string(lib.xe_build_id).decode()

_expected = _source_build_id()
if _expected is not None and _expected != BUILD_ID:
    raise ImportError(
        f"stale C core: {_PKG / '_core'} was built from other sources than "
        f"{_SRC_TREE / 'csrc'} (build {BUILD_ID}, sources {_expected}). "
        "Rebuild it with: pip install -e ."
    )

# The builtin do_upcall factory (csrc/python/fast_upcall.c) adds itself to the module.
if lib.xe_py_install_fast_upcall() != 0:  # pragma: no cover - only if CPython refuses
    raise ImportError("xenevtchn._core could not install make_fast_upcall")
from ._core import make_fast_upcall  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

# The hook runner of Hypervisor._after (csrc/python/run_hooks.c).
if lib.xe_py_install_run_hooks() != 0:  # pragma: no cover - only if CPython refuses
    raise ImportError("xenevtchn._core could not install run_hooks")
from ._core import make_hook_runner, run_hooks  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

# The builtin send, unmask, mask and event_channel_op fast paths (csrc/python/fast_paths.c).
if lib.xe_py_install_fast_paths() != 0:  # pragma: no cover - only if CPython refuses
    raise ImportError("xenevtchn._core could not install make_fast_path")
from ._core import make_fast_path  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

__all__ = ["ffi", "lib", "BUILD_ID", "make_fast_upcall", "make_fast_path", "make_hook_runner",
           "run_hooks"]
