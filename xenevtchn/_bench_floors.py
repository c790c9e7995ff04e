"""The floors the benchmarks compare against, compiled on first use into a cache directory.

Two C functions, built with cffi in API mode exactly as the core is (``-O2``, the same
compiler), but into their own module outside the package:

* ``xe_floor_identity(int64_t) -> int64_t``: a bare one-argument cffi call from Python
  (the cost of crossing into C and back, GIL release included, with no work but one
  increment of a call counter, ``xe_floor_calls(reset)``, so a benchmark can check that
  every timed call happened);
* ``xe_floor_fetch_or_jobs``: two jobs of that loop on one thread or on two at once (how
  well this machine runs two threads at the moment, with no Python involved);
* ``xe_floor_fetch_or(words, ports, n)``: one ``atomic_fetch_or`` per port on the 64-bit
  pending words, the least any 2-level send must do per event. It is called from Python
  on a whole batch, so the call overhead is amortised over the batch as it is for
  ``send_many``; ``xe_floor_fetch_or_timed`` runs the same loop ``iters`` times and times
  it in C with ``clock_gettime`` (a cross-check with no Python in the timed region).

The module is cached under ``$XDG_CACHE_HOME/xenevtchn/bench-floors/<hash>`` (or
``~/.cache/...``), folders created mode 0700 and refused if another user owns them, keyed
on the source, the Python version and cffi's version; it is never written into the
package nor under a shared temp folder, whose names other users could take first. Building needs a C compiler, as building
xenevtchn itself does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

MODULE = "_xenevtchn_bench_floors"

CDEF = """
int64_t xe_floor_identity(int64_t x);
int64_t xe_floor_calls(int reset);
void xe_floor_fetch_or(uint64_t *words, const uint32_t *ports, size_t n);
double xe_floor_fetch_or_timed(uint64_t *words, const uint32_t *ports, size_t n, size_t iters);
void xe_floor_fetch_or_jobs(uint64_t *words1, uint64_t *words2, const uint32_t *ports, size_t n,
                            size_t iters, int threads);
"""

SOURCE = r"""
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stddef.h>
#include <time.h>

static int64_t identity_calls;   /* the benchmarks call it from one thread at a time */

int64_t xe_floor_identity(int64_t x)
{
    identity_calls++;
    return x;
}

/* The calls to xe_floor_identity since the last reset; reset != 0 zeroes the count. */
int64_t xe_floor_calls(int reset)
{
    int64_t n = identity_calls;
    if (reset)
        identity_calls = 0;
    return n;
}

void xe_floor_fetch_or(uint64_t *words, const uint32_t *ports, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t p = ports[i];
        atomic_fetch_or((_Atomic uint64_t *)&words[p / 64], UINT64_C(1) << (p % 64));
    }
}

/* ns per event of iters passes of xe_floor_fetch_or over the same ports. */
double xe_floor_fetch_or_timed(uint64_t *words, const uint32_t *ports, size_t n, size_t iters)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (size_t k = 0; k < iters; k++)
        xe_floor_fetch_or(words, ports, n);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    return n && iters ? ns / ((double)n * (double)iters) : 0.0;
}

/* Two jobs of iters passes of the loop, each on its own words: both on the calling
 * thread (threads == 1), or the second on a new thread at the same time (threads == 2).
 * How well this machine runs two threads at once, right now, with no Python at all. */
struct job { uint64_t *words; const uint32_t *ports; size_t n, iters; };

static void *run_job(void *arg)
{
    struct job *j = arg;
    for (size_t k = 0; k < j->iters; k++)
        xe_floor_fetch_or(j->words, j->ports, j->n);
    return NULL;
}

void xe_floor_fetch_or_jobs(uint64_t *words1, uint64_t *words2, const uint32_t *ports, size_t n,
                            size_t iters, int threads)
{
    struct job a = {words1, ports, n, iters}, b = {words2, ports, n, iters};
    pthread_t t;
    if (threads > 1 && pthread_create(&t, NULL, run_job, &b) == 0) {
        run_job(&a);
        pthread_join(t, NULL);
        return;
    }
    run_job(&a);
    run_job(&b);
}
"""

_loaded: tuple[Any, Any] | None = None


def _key() -> str:
    import cffi

    h = hashlib.sha256()
    for part in (CDEF, SOURCE, sys.version, cffi.__version__, sys.platform):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _cache_roots() -> list[Path]:
    """The per-user cache (``$XDG_CACHE_HOME`` or ``~/.cache``), never a shared folder."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return [base / "xenevtchn" / "bench-floors"]


def private_dir(path: Path) -> Path:
    """``path`` and its parent ``xenevtchn`` folder, created mode 0700 and checked private.

    A compiled module is loaded from here, so a folder another user could write into is
    refused (OSError) rather than trusted.
    """
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    for d in (path.parent, path):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise OSError(f"{d} is not a folder of this user's: not used for compiled code")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(d, 0o700)
    return path


def _import_from(path: Path) -> tuple[Any, Any]:
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a broken cache entry
        raise ImportError(f"cannot load the benchmark floors from {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def _can_compile() -> bool:
    """cffi compiles through setuptools, or through distutils before Python 3.12."""
    if importlib.util.find_spec("setuptools") is not None:
        return True
    return sys.version_info < (3, 12) and importlib.util.find_spec("distutils") is not None


def _find_built(d: Path) -> Path | None:
    for p in sorted(d.glob(MODULE + "*.so")) + sorted(d.glob(MODULE + "*.pyd")):
        return p
    return None


def _build_into(root: Path) -> Path:
    """Compile in a private directory beside the cache entry, then move it into place."""
    from cffi import FFI

    target = root / _key()
    private_dir(root)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE, extra_compile_args=["-std=c11", "-O2", "-pthread"],
                   extra_link_args=["-pthread"])
    ffi.compile(tmpdir=str(work), verbose=False)
    try:
        os.rename(work, target)  # atomic; another process may have won the race
    except OSError:
        pass
    built = _find_built(target) or _find_built(work)
    if built is None:  # pragma: no cover - the compiler produced nothing we recognise
        raise ImportError(f"building the benchmark floors in {work} produced no module")
    return built


def load() -> tuple[Any, Any]:
    """``(ffi, lib)`` of the floor module, building it on first use."""
    global _loaded
    if _loaded is not None:
        return _loaded
    errors: list[str] = []
    for root in _cache_roots():
        try:
            private_dir(root)
            cached = _find_built(root / _key()) if (root / _key()).is_dir() else None
            if cached is None and not _can_compile():
                raise ImportError("the benchmark floors are compiled with cffi, which needs "
                                  "setuptools (Python 3.12 has no distutils): pip install setuptools")
            path = cached or _build_into(root)
            _loaded = _import_from(path)
            return _loaded
        except (OSError, ImportError) as exc:
            errors.append(f"{root}: {exc}")
        except Exception as exc:  # distutils/setuptools compile errors have many types
            errors.append(f"{root}: {type(exc).__name__}: {exc}")
    raise ImportError("could not build the benchmark floors (a C compiler is needed): "
                      + "; ".join(errors))
