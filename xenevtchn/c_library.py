"""Where the installed package keeps the C core for C and C++ programs.

The build that compiles ``xenevtchn._core`` also archives the same core objects into
``lib/libxenevtchn.a`` and ships the public headers in ``include/`` and a pkg-config file
in ``lib/pkgconfig/``, all inside the package folder::

    g++ -std=c++17 prog.cpp -I"$(python -c 'import xenevtchn; print(xenevtchn.get_include())')" \\
        "$(python -c 'import xenevtchn; print(xenevtchn.get_library())')"
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _existing(path: Path, what: str) -> str:
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found at {path}: this copy of xenevtchn was not built by its "
            "setup.py (reinstall it, e.g. pip install -e .)")
    return str(path)


def get_include() -> str:
    """The folder holding ``xenevtchn.h`` (and ``xen_abi.h``): pass it as ``-I``."""
    return _existing(_HERE / "include", "the C headers")


def get_library() -> str:
    """The path of the static library ``libxenevtchn.a``, built with the extension."""
    return _existing(_HERE / "lib" / "libxenevtchn.a", "libxenevtchn.a")


def get_pkgconfig_dir() -> str:
    """The folder holding ``xenevtchn.pc``: put it on ``PKG_CONFIG_PATH``."""
    return _existing(_HERE / "lib" / "pkgconfig", "xenevtchn.pc's folder")
