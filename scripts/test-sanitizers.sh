#!/bin/sh
# Builds rwkvd with AddressSanitizer+UBSan (build-asan) and ThreadSanitizer
# (build-tsan) and runs the meson test setups asan and tsan there: the http
# and stress suites under both, the unit suite under asan too, two minutes
# of stress tests in each. Called by ./scripts/test.sh; extra arguments go to
# `meson test`.
set -eu
cd "$(dirname "$0")/.."
rc=0
for san in asan tsan; do
    case $san in
        asan) opts="-Db_sanitize=address,undefined -Db_lundef=false" ;;
        tsan) opts="-Db_sanitize=thread" ;;
    esac
    # shellcheck disable=SC2086
    [ -d build-$san ] || meson setup build-$san --buildtype=debugoptimized $opts >/dev/null
    ninja -C build-$san
    meson test -C build-$san --setup $san --print-errorlogs --num-processes 2 "$@" || rc=1
done
exit $rc
