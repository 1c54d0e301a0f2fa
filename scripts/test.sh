#!/bin/sh
# Installs missing build dependencies, builds rwkvd in build/ and runs every
# test suite. Tests that need ../shared/fixtures skip (exit 77) without it.
# Extra arguments go to `meson test` (e.g. --suite unit).
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
[ -d build ] || meson setup build --buildtype=debugoptimized
ninja -C build
meson test -C build --print-errorlogs --num-processes 2 "$@"
