#!/usr/bin/env bash
# Every C and C++ file of the project, compiled with warnings as errors by each compiler
# named (default: gcc and clang), as CI does. A user's `pip install .` never uses these
# flags: they are for CI and for developers.
#
#   tools/strict-c.sh              # gcc and clang
#   tools/strict-c.sh clang        # one compiler
#
# What is compiled, with -std=c11 -O2 -Wall -Wextra -Werror plus the errors GCC 14 turns on
# by default (implicit declarations, incompatible pointer types, int conversion, return
# mismatch; a compiler that lacks -Wreturn-mismatch gets -Werror=return-type, which is
# where older GCC and clang report the same mistake):
#   - the core, csrc/*.c, and the builtin csrc/python/*.c (against this Python's headers);
#   - the source cffi generates from build.py (the file whose undeclared call broke
#     GCC 14 and clang 16): the GCC 14 errors and -Wall; cffi's own generated helpers
#     are not ours to make -Wextra clean, so -Wextra stays off for that one file;
#   - the C programs: examples/embed.c, tests/c/stress_*.c (C), tests/c/embed_cpp.cpp
#     (C++17, with the matching C++ compiler).
# Objects go to build/strict-c/<compiler>/ and are thrown away.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
compilers=("$@")
[ ${#compilers[@]} -gt 0 ] || compilers=(gcc clang)

# A flag the compiler knows, or its fallback.
flag_or() {
    local cc="$1" want="$2" fallback="$3"
    if echo 'int x;' | "$cc" -Werror "$want" -x c -c - -o /dev/null 2>/dev/null; then
        echo "$want"
    else
        echo "$fallback"
    fi
}

PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
OUTROOT="$ROOT/build/strict-c"
GEN="$OUTROOT/_core_generated.c"
mkdir -p "$OUTROOT"
# The cffi-generated source, exactly as build.py asks cffi to write it.
(cd "$ROOT" && "$PY" -c '
import sys
sys.path.insert(0, ".")
import importlib.util
spec = importlib.util.spec_from_file_location("xenevtchn_build", "build.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
m.make_builder().emit_c_code(sys.argv[1])
' "$GEN")

for cc in "${compilers[@]}"; do
    command -v "$cc" >/dev/null || { echo "strict-c: no '$cc' on PATH (apt-get install $cc)" >&2; exit 1; }
    case "$cc" in
        gcc*) cxx="${cc/gcc/g++}" ;;
        clang*) cxx="${cc/clang/clang++}" ;;
        *) cxx="" ;;
    esac
    out="$OUTROOT/$cc"
    rm -rf "$out" && mkdir -p "$out"
    gcc14=(-Werror=implicit-function-declaration -Werror=incompatible-pointer-types
           -Werror=int-conversion "$(flag_or "$cc" -Werror=return-mismatch -Werror=return-type)")
    strict=(-std=c11 -O2 -Wall -Wextra -Werror "${gcc14[@]}")
    echo "== strict-c: $("$cc" --version | head -1)"
    for src in "$ROOT"/csrc/*.c; do
        "$cc" "${strict[@]}" -fPIC -I"$ROOT/csrc" -c "$src" -o "$out/$(basename "$src").o"
    done
    for src in "$ROOT"/csrc/python/*.c; do
        "$cc" "${strict[@]}" -fPIC -I"$ROOT/csrc" -I"$PYINC" -c "$src" -o "$out/py_$(basename "$src").o"
    done
    "$cc" -std=c11 -O2 -Wall -Werror "${gcc14[@]}" -fPIC -I"$ROOT/csrc" -I"$PYINC" \
        -c "$GEN" -o "$out/_core_generated.o"
    for src in "$ROOT"/examples/embed.c "$ROOT"/tests/c/stress_*.c; do
        "$cc" "${strict[@]}" -pthread -I"$ROOT/csrc" -I"$ROOT/tests/c" -c "$src" \
            -o "$out/prog_$(basename "$src").o"
    done
    if [ -n "$cxx" ] && command -v "$cxx" >/dev/null; then
        for src in "$ROOT"/tests/c/*.cpp; do
            "$cxx" -std=c++17 -O2 -Wall -Wextra -Werror -I"$ROOT/csrc" -c "$src" \
                -o "$out/cxx_$(basename "$src").o"
        done
    else
        echo "strict-c: no C++ compiler for $cc ('$cxx'): install it" >&2
        exit 1
    fi
    echo "   ok: $(ls "$out" | wc -l) files, no warnings"
done
rm -rf "$OUTROOT"
