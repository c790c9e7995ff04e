#!/usr/bin/env bash
# Run the whole test suite against a C core built with AddressSanitizer and
# UndefinedBehaviorSanitizer, and the C stress test under ASan+UBSan and ThreadSanitizer.
#
#   tools/sanitize.sh                 # from anywhere; exits non-zero on any report
#   tools/sanitize.sh -k threads      # extra arguments go to the main pytest run
#
# What it does, in order:
#   1. copies the package sources (no build/ dir, no compiled module) to $OUT/src and
#      installs them, with XENEVTCHN_SANITIZE=address,undefined (see build.py), into a
#      venv of their own at $OUT/venv: the developer's editable build is never touched;
#   2. checks that the installed _core module really links libasan and libubsan;
#   3. runs pytest on tests/ with that venv, libasan preloaded (CPython itself is not
#      instrumented, so the runtime must come first), PYTHONMALLOC=malloc (every Python
#      allocation goes through ASan's allocator, so overruns into Python objects are
#      caught), every report fatal, ASan's also written under $OUT/logs;
#      (the hypothesis differential test runs 15 examples instead of 50: its cost is the
#      pure-Python reference model, not the C calls; XENEVTCHN_DIFF_EXAMPLES overrides);
#      the C stress tests (tests/test_stress_{c,fifo,hooks}.py) run in a second pytest
#      without the preload: they build their own binaries, some with -fsanitize=thread,
#      and the TSan runtime cannot share a process with ASan's;
#   4. builds tests/c/stress_2l.c and tests/c/stress_fifo.c with
#      -fsanitize=address,undefined and runs each on both layouts (the data paths under
#      real threads, checked by ASan/UBSan);
#   5. fails if any sanitizer wrote a report anywhere (ASan's log files catch those of
#      subprocesses too; a child's UBSan report makes that child exit 1, which its test
#      sees) or printed one.
#
# Tests that start processes or compile C: every child inherits LD_PRELOAD, ASAN_OPTIONS
# and UBSAN_OPTIONS (log_path included), so a report in a child interpreter (the spawned
# senders of test_processes.py, test_shared_info_buffers.py's children) fails the run even
# if the test itself would not notice. test_packaging.py builds and imports a plain wheel
# (XENEVTCHN_SANITIZE is only set for our own install), in a child whose environment it
# strips, which is fine: that wheel needs no sanitizer runtime. The C programs that tests
# compile run with libasan preloaded, which a plain binary tolerates; only the TSan one
# cannot, hence step 3's second pytest.
#
# ASAN_OPTIONS has detect_leaks=0: CPython does not free everything at exit and a leak
# report on the interpreter would drown ours. Our C core allocates nothing (cffi and
# Python own every buffer), so there is nothing of ours for LeakSanitizer to find.
#
# Environment: XENEVTCHN_SANITIZE_DIR (default <repo>/build/sanitize, git-ignored),
# PYTHON (default python3), CC (default gcc: its libasan is the one preloaded).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${XENEVTCHN_SANITIZE_DIR:-$ROOT/build/sanitize}"
PY="${PYTHON:-python3}"
export CC="${CC:-gcc}"
SAN="address,undefined"

step() { printf '\n== sanitize: %s\n' "$*"; }

step "sources -> $OUT/src"
rm -rf "$OUT/src" "$OUT/logs" "$OUT/stress"
mkdir -p "$OUT/src" "$OUT/logs" "$OUT/stress"
for f in build.py setup.py pyproject.toml MANIFEST.in README.md LICENSE csrc xenevtchn; do
    cp -R "$ROOT/$f" "$OUT/src/"
done
find "$OUT/src" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +

step "venv $OUT/venv, C core built with -fsanitize=$SAN"
[ -x "$OUT/venv/bin/python" ] || "$PY" -m venv "$OUT/venv"
"$OUT/venv/bin/pip" uninstall -q -y xenevtchn 2>/dev/null || true   # always a fresh build
XENEVTCHN_SANITIZE="$SAN" "$OUT/venv/bin/pip" install -q "$OUT/src[test]"

core="$(ls "$OUT"/venv/lib/python3*/site-packages/xenevtchn/_core*.so)"
needed="$(readelf -d "$core")"
for lib in libasan libubsan; do
    if ! grep -q "$lib" <<<"$needed"; then
        echo "sanitize: $core does not link $lib: the sanitizer build did not happen" >&2
        exit 1
    fi
done
echo "ok: $core links libasan and libubsan"

LIBASAN="$("$CC" -print-file-name=libasan.so)"
[ -f "$LIBASAN" ] || { echo "sanitize: $CC has no libasan.so ($LIBASAN)" >&2; exit 1; }
# C++ extensions the tests import (matplotlib's) throw exceptions: ASan intercepts
# __cxa_throw and needs libstdc++ loaded when it starts, so preload that too.
LIBSTDCXX="$("$CC" -print-file-name=libstdc++.so)"
PRELOAD="$LIBASAN"
[ -f "$LIBSTDCXX" ] && PRELOAD="$LIBASAN:$(readlink -f "$LIBSTDCXX")"
ASAN_OPTS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1"
ASAN_OPTS="$ASAN_OPTS:check_initialization_order=1:strict_init_order=1"
UBSAN_OPTS="halt_on_error=1:print_stacktrace=1"

status=0
step "pytest tests/ (libasan preloaded, PYTHONMALLOC=malloc)"
(
    cd "$ROOT"
    export LD_PRELOAD="$PRELOAD" PYTHONMALLOC=malloc
    export ASAN_OPTIONS="$ASAN_OPTS:log_path=$OUT/logs/asan"
    export UBSAN_OPTIONS="$UBSAN_OPTS"
    # the hypothesis differential test: fewer examples than the plain run (its C calls are
    # the same in every example; its Python reference model is what costs the time)
    export XENEVTCHN_DIFF_EXAMPLES="${XENEVTCHN_DIFF_EXAMPLES:-15}"
    # --capture=sys: a report printed by the C core goes to the real stderr, not into a
    # capture file that dies with the process
    "$OUT/venv/bin/pytest" tests -q -p no:cacheprovider --capture=sys \
        --ignore=tests/test_stress_c.py --ignore=tests/test_stress_fifo.py \
        --ignore=tests/test_stress_hooks.py --ignore=tests/test_stress_minios.py "$@" 2>&1
) | tee "$OUT/pytest.log" || status=$?

step "pytest tests/test_stress_{c,fifo,hooks,minios}.py (plain and -fsanitize=thread builds of the C stress tests)"
(
    cd "$ROOT"
    "$OUT/venv/bin/pytest" tests/test_stress_c.py tests/test_stress_fifo.py tests/test_stress_hooks.py \
        tests/test_stress_minios.py \
        -q -p no:cacheprovider -rs 2>&1
) | tee "$OUT/stress/pytest.log" || status=$?
if grep -qi "skipped" "$OUT/stress/pytest.log"; then
    echo "sanitize: the ThreadSanitizer stress test was skipped (no TSan runtime?)" >&2
    status=1
fi

for prog in stress_2l stress_fifo stress_minios; do
    step "tests/c/$prog.c built with -fsanitize=$SAN"
    "$CC" -std=c11 -pthread -O1 -g -fno-omit-frame-pointer -fsanitize="$SAN" -fno-sanitize-recover=all \
        -Wall -Wextra -I"$ROOT/csrc" "$ROOT"/csrc/*.c "$ROOT/tests/c/$prog.c" -o "$OUT/stress/$prog"
    work=1                                   # seconds; stress_minios counts calls instead
    [ "$prog" = stress_minios ] && work=50000
    for layout in x86_64 x86_32; do
        ASAN_OPTIONS="$ASAN_OPTS:log_path=$OUT/logs/asan" UBSAN_OPTIONS="$UBSAN_OPTS" \
            "$OUT/stress/$prog" "$work" "$layout" 5 >> "$OUT/stress/run.log" 2>&1 || status=$?
        tail -1 "$OUT/stress/run.log"
    done
done

# ASan writes its reports to $OUT/logs (log_path); UBSan, in a build with ASan, ignores
# log_path and always prints to stderr: look for both kinds in everything printed.
if grep -E -n "runtime error:|ERROR: AddressSanitizer|WARNING: ThreadSanitizer" \
        "$OUT/pytest.log" "$OUT/stress/pytest.log" "$OUT/stress/run.log"; then
    echo "sanitize: a sanitizer report was printed (above)" >&2
    status=1
fi
reports="$(find "$OUT/logs" -type f | sort)"
if [ -n "$reports" ]; then
    step "sanitizer reports"
    for r in $reports; do
        echo "--- $r"
        head -c 20000 "$r"
    done
    status=1
fi

if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED (exit $status)" >&2
    exit "$status"
fi
echo "sanitize: no ASan/UBSan/TSan report; every test passed"
