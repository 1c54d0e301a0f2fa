#!/bin/sh
# Installs what the tests need (missing Debian build packages; with Node, the
# npm packages of tests/openai and tests/quickstart), builds rwkvd in build/
# and runs every test suite. Ends with one line naming every suite or part
# that did not run, and why (tests that need ../shared/fixtures skip
# without it), then the sanitizer runs (scripts/test-sanitizers.sh). Extra
# arguments go to `meson test` (e.g. --suite unit) and leave those out.
# NPM_OFFLINE=1 skips the npm step (the Node suites then say they skipped).
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh

# npm packages, pinned by each package-lock.json (openai 6.x for Node 20).
# `npm ci` runs only when the lock file changed since the last install, so a
# second run costs nothing; a failure (offline) is reported, not fatal: the
# suites that need the packages skip and the summary says so.
npm_install() {
    dir=$1
    stamp=$dir/node_modules/.rwkvd-installed-lock
    [ -f "$dir/package-lock.json" ] || return 0
    if [ -f "$stamp" ] && cmp -s "$dir/package-lock.json" "$stamp"; then
        return 0
    fi
    echo "test.sh: npm ci --prefix $dir" >&2
    if npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2; then
        cp "$dir/package-lock.json" "$stamp"
    else
        echo "test.sh: warning: npm ci --prefix $dir failed; its suites will skip" >&2
    fi
}
if [ "${NPM_OFFLINE:-0}" != 1 ] && command -v node >/dev/null 2>&1 &&
    command -v npm >/dev/null 2>&1; then
    npm_install tests/openai
    npm_install tests/quickstart
fi

[ -d build ] || meson setup build --buildtype=debugoptimized
ninja -C build
status=0
meson test -C build --print-errorlogs --num-processes 2 "$@" || status=$?

# The unit, http and stress suites again under AddressSanitizer+UBSan and
# ThreadSanitizer (build-asan, build-tsan; minutes-long stress runs). Left
# out when arguments filter the run or with RWKVD_SANITIZERS=0; the summary
# line says so.
note=""
if [ $# -gt 0 ]; then
    note="asan and tsan runs: arguments were given to meson test"
elif [ "${RWKVD_SANITIZERS:-1}" = 0 ]; then
    note="asan and tsan runs: RWKVD_SANITIZERS=0"
else
    ./scripts/test-sanitizers.sh || status=1
fi
if [ -n "$note" ]; then
    python3 scripts/not_run.py --note "$note" build/meson-logs/testlog.json || true
else
    python3 scripts/not_run.py build/meson-logs/testlog.json \
        build-asan/meson-logs/testlog-asan.json build-tsan/meson-logs/testlog-tsan.json || true
fi
exit "$status"
