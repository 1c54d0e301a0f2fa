#!/bin/sh
# eval/run.sh - the baseline table of docs/EVALUATION.md (eval/run.py does the
# work; see `eval/run.sh --help`). `eval/run.sh --ci` is the quick check that
# the test suites run: it fails when tuning does not learn.
here=$(dirname "$0")
exec python3 "$here/run.py" "$@"
