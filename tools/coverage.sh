#!/usr/bin/env bash
# Coverage of the whole suite: the Python package (pytest-cov, line and branch) and the C
# core (gcov), from one run of tests/ and benchmarks/.
#
#   tools/coverage.sh                 # from anywhere; extra arguments go to pytest
#   tools/coverage.sh tests/test_snapshot.py     # ... e.g. one file
#
# What it does:
#   1. copies the package sources to $OUT/src and installs them into a venv of their own
#      ($OUT/venv) with the C core compiled and linked with --coverage (CFLAGS/LDFLAGS),
#      built in place (pip --no-build-isolation), so the .gcno files stay in
#      $OUT/src/build; the developer's editable build is never touched;
#   2. runs pytest with coverage (line and branch) of that install: a terminal report
#      with the missing lines, $OUT/coverage.xml and $OUT/html/;
#   3. runs gcov over csrc/*.c with the objects' .gcda counts: a per-file summary in
#      $OUT/gcov.txt and annotated sources (*.c.gcov) in $OUT/gcov/.
# No threshold: the numbers are reported, and what is not covered is read, not gamed.
# Exit status: pytest's (a failing test fails the run), else 0.
#
# Environment: XENEVTCHN_COVERAGE_DIR (default <repo>/build/coverage, git-ignored),
# PYTHON (default python3), GCOV (default gcov; it must match the compiler, e.g. gcov-12).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${XENEVTCHN_COVERAGE_DIR:-$ROOT/build/coverage}"
PY="${PYTHON:-python3}"
GCOV="${GCOV:-gcov}"

step() { printf '\n== coverage: %s\n' "$*"; }

step "sources -> $OUT/src"
rm -rf "$OUT/src" "$OUT/gcov" "$OUT/html" "$OUT/coverage.xml" "$OUT/gcov.txt"
mkdir -p "$OUT/src" "$OUT/gcov"
for f in build.py setup.py pyproject.toml MANIFEST.in README.md LICENSE csrc xenevtchn; do
    cp -R "$ROOT/$f" "$OUT/src/"
done
find "$OUT/src" \( -name '*.so' -o -name '__pycache__' -o -name '*.gcda' -o -name '*.gcno' \) \
    -prune -exec rm -rf {} +

step "venv $OUT/venv, C core built with --coverage"
[ -x "$OUT/venv/bin/python" ] || "$PY" -m venv "$OUT/venv"
"$OUT/venv/bin/pip" install -q --upgrade pip
"$OUT/venv/bin/pip" install -q "setuptools>=77,<86" "cffi>=1.15" wheel
"$OUT/venv/bin/pip" uninstall -q -y xenevtchn 2>/dev/null || true   # always a fresh build
CFLAGS="--coverage" LDFLAGS="--coverage" \
    "$OUT/venv/bin/pip" install -q --no-build-isolation "$OUT/src[test]"
objdir="$(dirname "$(find "$OUT/src/build" -name 'evtchn.gcno' | head -n 1)")"
[ -d "$objdir" ] || { echo "coverage: no .gcno files under $OUT/src/build: the build ignored CFLAGS" >&2; exit 1; }

step "pytest --cov (the installed xenevtchn; tests/ and benchmarks/)"
# source_pkgs, not --cov=xenevtchn: from the project root that would name the source
# folder, which this run does not import.
cat > "$OUT/coveragerc" <<RC
[run]
source_pkgs = xenevtchn
data_file = $OUT/.coverage
branch = True
[report]
show_missing = True
skip_covered = True
RC
status=0
(
    cd "$ROOT"
    # The README's C++ example links the installed static library with plain g++: its
    # objects carry gcov's references here, so that one test cannot link in this build.
    "$OUT/venv/bin/pytest" -q -p no:cacheprovider --cov --cov-config="$OUT/coveragerc" \
        --cov-report=term --cov-report="xml:$OUT/coverage.xml" --cov-report="html:$OUT/html" \
        --deselect tests/test_readme.py::test_readme_cplusplus_section_builds_and_runs "$@"
) || status=$?

step "gcov csrc/*.c"
(
    cd "$OUT/src"          # the objects name their sources relative to the build folder
    for c in csrc/*.c; do
        "$GCOV" -o "$objdir" "$c" 2>/dev/null | grep -A1 "^File '.*csrc/" || true
    done
    mv ./*.gcov "$OUT/gcov/" 2>/dev/null || true
) | awk '/^File/ {f=$2} /^Lines executed/ {print f, $0}' | tr -d "'" \
  | sed "s#$OUT/src/##" | tee "$OUT/gcov.txt"
exit "$status"
