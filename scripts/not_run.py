#!/usr/bin/env python3
"""Print one line naming every test suite, or part of one, that did not run
in the last `meson test`, and why; scripts/test.sh ends with it.

Usage: not_run.py [--note "WHAT: WHY"]... TESTLOG.json...

Several logs may be given (the plain build, then build-asan and build-tsan);
tests of a log under a directory other than build/ are named with it, as
"test-http [build-asan]". A --note adds a whole run that was left out.

A test that skips (exit 77, meson's SKIP) and a test that passes while
leaving a part out both print the reason on a line of their own, to stdout
or stderr, starting with "SKIP" ("SKIP: why", "SKIP suite NAME: why", "SKIP
part NAME: why"). Tests sharing a reason are listed together."""
import json
import re
import sys

SKIP_LINE = re.compile(r"^SKIP(?: (suite|part) ([^:]+))?: *(.*)$")


def main():
    args, notes = sys.argv[1:], []
    while len(args) >= 2 and args[0] == "--note":
        notes.append(args[1])
        args = args[2:]
    if not args:
        print(__doc__)
        return 2
    records = []
    for path in args:
        label = path.split("/meson-logs/")[0].rstrip("/").split("/")[-1]
        try:
            with open(path, encoding="utf-8") as f:
                recs = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError) as e:
            # a run that did not start or finish (its build failed, say)
            notes.append(f"every test of {label}: no log ({e.__class__.__name__}: {path})")
            continue
        for rec in recs:
            if label != "build":
                rec["name"] = rec.get("name", "?").split(" / ")[-1] + f" [{label}]"
        records += recs
    by_reason = {}  # reason -> [what], in first-seen order
    for note in notes:
        what, _, why = note.partition(": ")
        by_reason.setdefault(why or "left out", []).append(what)
    for rec in records:
        name = rec.get("name", "?").split(" / ")[-1]
        out = (rec.get("stdout") or "") + "\n" + (rec.get("stderr") or "")
        found = False
        for line in out.splitlines():
            m = SKIP_LINE.match(line.strip())
            if not m:
                continue
            found = True
            what = f"{name} ({m.group(1)} {m.group(2).strip()})" if m.group(1) else name
            by_reason.setdefault(m.group(3).strip() or "no reason given", []).append(what)
        if rec.get("result") == "SKIP" and not found:
            last = [ln.strip() for ln in out.splitlines() if ln.strip()]
            by_reason.setdefault(last[-1] if last else "exit 77, no reason printed",
                                 []).append(name)
        if rec.get("result") == "TIMEOUT":
            by_reason.setdefault("timed out", []).append(name)
    if not by_reason:
        print(f"not run: nothing; all {len(records)} test(s) ran in full")
        return 0
    parts = [f"{', '.join(dict.fromkeys(whats))}: {reason}" for reason, whats in by_reason.items()]
    print("not run: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
