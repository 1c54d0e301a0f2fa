#!/bin/sh
# Installs the Debian 12 packages rwkvd needs to build and test, if any is
# missing. Uses sudo when not run as root.
set -eu
# clang and libclang-rt-14-dev: the libFuzzer targets (tests/fuzz, suite fuzz).
PKGS="build-essential meson ninja-build pkg-config python3 libopenblas-dev libmicrohttpd-dev
libjansson-dev libuv1-dev libcurl4-openssl-dev check curl ca-certificates clang libclang-rt-14-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "installing:$missing" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi
