#!/bin/sh
# Builds the libFuzzer targets with clang in build-fuzz/ (ASan + UBSan) and
# runs each for SECONDS over its seed corpus; fails on any crash, sanitizer
# report, leak or timeout. See tests/fuzz/README.md.
#
# usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
#   SECONDS   per target (default 20); TARGET e.g. safetensors http (default all)
# Environment:
#   RWKVD_FUZZ_BUILD   build directory (default SOURCE/build-fuzz)
#   RWKVD_FUZZ_JOBS    ninja -j (default: ninja's own)
#   RWKVD_FUZZ_ARGS    extra libFuzzer arguments (e.g. -jobs=2 -workers=2)
# New inputs go to BUILD/corpus/TARGET, crashes to BUILD/artifacts/; the
# committed seeds in tests/fuzz/corpus/TARGET are only read, with the
# dictionary tests/fuzz/TARGET.dict where there is one.
# Exit 77 (skip) only when clang or its libFuzzer runtime is missing.
set -eu
SRC=$(cd "$(dirname "$0")/../.." && pwd)
SECS=${1:-20}
[ $# -gt 0 ] && shift
TARGETS=${*:-"safetensors pth rwkvcpp gguf state jsonl vocab hfjson tokenize http"}
BUILD=${RWKVD_FUZZ_BUILD:-$SRC/build-fuzz}

if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz: clang is not installed (scripts/deps.sh installs it); skipping" >&2
    exit 77
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
    > "$probe/p.c"
if ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>"$probe/err"; then
    cat "$probe/err" >&2
    echo "fuzz: clang cannot link libFuzzer (libclang-rt-14-dev missing?); skipping" >&2
    exit 77
fi

if [ ! -f "$BUILD/build.ninja" ]; then
    CC=clang meson setup "$BUILD" "$SRC" -Dfuzz=true -Dtests=disabled \
        --buildtype=debugoptimized >/dev/null
fi
exes=""
for t in $TARGETS; do
    exes="$exes tests/fuzz/fuzz-$t"
done
# shellcheck disable=SC2086
ninja -C "$BUILD" ${RWKVD_FUZZ_JOBS:+-j "$RWKVD_FUZZ_JOBS"} $exes

mkdir -p "$BUILD/artifacts"
tmp=$(mktemp -d "$BUILD/tmp.XXXXXX") # the http target's data directory
trap 'rm -rf "$probe" "$tmp"' EXIT
status=0
for t in $TARGETS; do
    work="$BUILD/corpus/$t"
    mkdir -p "$work"
    log="$BUILD/fuzz-$t.log"
    dict=""
    [ -f "$SRC/tests/fuzz/$t.dict" ] && dict="-dict=$SRC/tests/fuzz/$t.dict"
    # -error_exitcode=1: libFuzzer's default (77) would read as a skip.
    # shellcheck disable=SC2086
    if TMPDIR="$tmp" ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
        "$BUILD/tests/fuzz/fuzz-$t" -max_total_time="$SECS" -timeout=60 -rss_limit_mb=4096 \
        -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 \
        -artifact_prefix="$BUILD/artifacts/$t-" ${RWKVD_FUZZ_ARGS:-} $dict \
        "$work" "$SRC/tests/fuzz/corpus/$t" >"$log" 2>&1; then
        echo "fuzz-$t: ok ($SECS s) $(grep -E '^#[0-9]+' "$log" | tail -1)"
    else
        status=1
        echo "fuzz-$t: FAILED (log: $log)"
        grep -E 'ERROR|SUMMARY|Test unit written|abort|fuzz-' "$log" | head -20
    fi
done
exit $status
