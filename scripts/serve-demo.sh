#!/bin/sh
# Builds rwkvd (installing missing Debian 12 build packages first) and serves
# the bundled demo model:
#
#   ./scripts/serve-demo.sh                      # http://127.0.0.1:8080
#   RWKVD_PORT=9000 ./scripts/serve-demo.sh      # another port
#   ./scripts/serve-demo.sh --threads 4          # extra arguments go to `rwkvd serve`
#
# Environment (each has the same name `rwkvd serve` reads; the flags set here
# come from them, and flags given on this command line win):
#   RWKVD_MODEL     model file            (default models/demo.safetensors)
#   RWKVD_HOST      address to bind       (default 127.0.0.1)
#   RWKVD_PORT      port, 0 = any free    (default 8080)
#   RWKVD_DATA_DIR  state store directory (default ./data)
#   BUILD_DIR       meson build directory (default build)
# Every other RWKVD_* variable (see deploy/ENVIRONMENT.md) reaches the server
# unchanged. Set SKIP_DEPS=1 to skip the package check.
set -eu
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
MODEL=${RWKVD_MODEL:-models/demo.safetensors}
HOST=${RWKVD_HOST:-127.0.0.1}
PORT=${RWKVD_PORT:-8080}
DATA_DIR=${RWKVD_DATA_DIR:-./data}

[ "${SKIP_DEPS:-0}" = 1 ] || ./scripts/deps.sh
[ -f "$BUILD_DIR/build.ninja" ] || meson setup "$BUILD_DIR" --buildtype=debugoptimized
ninja -C "$BUILD_DIR" server/rwkvd

if [ ! -f "$MODEL" ]; then
    echo "serve-demo: model file '$MODEL' not found (set RWKVD_MODEL)" >&2
    exit 1
fi
mkdir -p "$DATA_DIR"
echo "serve-demo: serving $MODEL on http://$HOST:$PORT (data in $DATA_DIR); Ctrl-C stops" >&2
echo "serve-demo: web UI at http://$HOST:$PORT/ (open it in a browser)" >&2
exec "$BUILD_DIR/server/rwkvd" serve --model "$MODEL" --host "$HOST" --port "$PORT" \
    --data-dir "$DATA_DIR" "$@"
