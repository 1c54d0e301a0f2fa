#!/usr/bin/env python3
"""End-to-end checks of `rwkvd eval` with tasks (docs/EVALUATION.md) on the
bundled demo model: the JSON document and its metrics per kind, exact match
against `rwkvd generate` cut at the stop string by this script, several
states with --base and collateral, --out, few-shot determinism, the progress
line, and exit status 2 for usage errors and 1 (one line) for bad tasks.

Usage: test_eval_cli.py RWKVD SOURCE_ROOT."""
import json
import os
import re
import subprocess
import sys
import tempfile

RWKVD, ROOT = sys.argv[1], sys.argv[2]
MODEL = os.path.join(ROOT, "models", "demo.safetensors")
failures = []


def run(*args, ok=True):
    p = subprocess.run([RWKVD, *args], capture_output=True, text=True, timeout=300)
    if ok and p.returncode != 0:
        failures.append(f"{args}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def write_task(d, task, splits):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "task.json"), "w") as f:
        json.dump(task, f)
    for name, rows in splits.items():
        with open(os.path.join(d, name + ".jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


CAPS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
        ("Japan", "Tokyo"), ("Egypt", "Cairo")]
Q = "User: What is the capital of {}?\n\nAssistant:"

with tempfile.TemporaryDirectory() as tmp:
    gen, ch, ls, coll = (os.path.join(tmp, n) for n in ("gen", "ch", "ls", "coll"))
    rows = [{"prompt": Q.format(a), "completion": f" The capital of {a} is {b}."} for a, b in CAPS]
    write_task(gen, {"name": "capitals", "kind": "generate", "max_tokens": 48, "stop": ["\n"],
                     "shots": 0, "shot_separator": "\n\n"},
               {"train": rows[:4], "val": rows[4:], "test": rows[3:]})
    write_task(ch, {"name": "caps-choice", "kind": "choice"},
               {"test": [{"prompt": Q.format(a) + " The capital of " + a + " is",
                          "choices": [" " + b + ".", " a city where many people live."],
                          "answer": 0} for a, b in CAPS]})
    write_task(ls, {"name": "caps-loss", "kind": "loss"}, {"test": rows})
    write_task(coll, {"name": "collateral", "kind": "generate", "max_tokens": 40,
                      "stop": ["\n\n"]},
               {"test": [{"prompt": "User: Hello!\n\nAssistant:", "completion": ""},
                         {"prompt": "User: What do bees make?\n\nAssistant:", "completion": ""}]})

    # the base model on three kinds
    p = run("eval", "--model", MODEL, "--task", gen, "--task", ch, "--task", ls, "--threads", "1")
    doc = json.loads(p.stdout) if p.returncode == 0 else {}
    if doc:
        if doc["model"]["path"] != MODEL or not re.fullmatch(r"[0-9a-f]{16}",
                                                             doc["model"]["fingerprint"]):
            failures.append(f"model block: {doc['model']}")
        if doc["split"] != "test" or doc["shots"] is not None:
            failures.append(f"split/shots: {doc['split']} {doc['shots']}")
        res = {r["task"]: r for r in doc["results"]}
        want = {"capitals": {"exact_match", "loss"}, "caps-choice": {"acc_raw", "acc_norm", "loss"},
                "caps-loss": {"loss", "nats_per_byte"}}
        for t, keys in want.items():
            r = res.get(t)
            if not r or set(r["metrics"]) != keys or r["state"] != "base":
                failures.append(f"{t}: {r}")
                continue
            if r["tokens"] <= 0 or r["seconds"] < 0:
                failures.append(f"{t}: tokens/seconds {r['tokens']} {r['seconds']}")
        if res.get("capitals", {}).get("n") != 3 or res.get("caps-choice", {}).get("n") != 6:
            failures.append("item counts of the test splits")
        # exact match, computed here from `rwkvd generate` (greedy) cut at "\n"
        hits = 0
        for r in rows[3:]:
            g = run("generate", "--model", MODEL, "--prompt", r["prompt"], "--temperature", "0",
                    "--max-tokens", "48", "--threads", "1")
            out = g.stdout[:-1] if g.stdout.endswith("\n") else g.stdout
            out = out.split("\n")[0]
            hits += out.strip() == r["completion"].strip()
        em = res.get("capitals", {}).get("metrics", {}).get("exact_match")
        if em is None or abs(em - hits / 3) > 1e-9:
            failures.append(f"exact_match {em}, generate says {hits}/3")
        lm = res.get("caps-loss", {}).get("metrics", {})
        if not (lm.get("loss", 0) > 0 and abs(lm["loss"] - lm["nats_per_byte"]) < 1e-6):
            failures.append(f"byte model: loss per token = per byte: {lm}")
    if "items" not in p.stderr or "task" not in p.stderr:
        failures.append(f"no progress line on stderr: {p.stderr!r}")

    # a tuned state, the base model too, collateral; --out
    st = os.path.join(tmp, "pirate.safetensors")
    run("tune", "--model", MODEL, "--data", os.path.join(ROOT, "models", "demo-style.jsonl"),
        "--out", st, "--steps", "6", "--lr", "0.05", "--val-split", "0", "--quiet", "--threads", "1")
    outf = os.path.join(tmp, "r.json")
    p = run("eval", "--model", MODEL, "--task", ls, "--state", st, "--base", "--collateral", coll,
            "--out", outf, "--quiet")
    if p.stdout.strip():
        failures.append("--out also printed to stdout")
    if p.stderr.strip():
        failures.append(f"--quiet printed progress: {p.stderr!r}")
    if os.path.exists(outf):
        rs = json.load(open(outf))["results"]
        got = [(r["state"], r["task"]) for r in rs]
        if got != [("base", "caps-loss"), ("base", "collateral"), (st, "caps-loss"),
                   (st, "collateral")]:
            failures.append(f"results order: {got}")
        else:
            if rs[1]["metrics"] != {"collateral_kept": 1.0}:
                failures.append(f"base collateral: {rs[1]['metrics']}")
            if not rs[3]["metrics"]["collateral_kept"] < 1.0:
                failures.append(f"the pirate state kept every base answer: {rs[3]}")
            if rs[0]["metrics"] == rs[2]["metrics"]:
                failures.append("the state did not change the loss")
    else:
        failures.append("--out wrote nothing")

    # few-shot: the same seed gives the same numbers, the prompt grows
    a = run("eval", "--model", MODEL, "--task", gen, "--shots", "2", "--shot-seed", "5", "--quiet")
    b = run("eval", "--model", MODEL, "--task", gen, "--shots", "2", "--shot-seed", "5", "--quiet")
    if a.returncode == 0 and b.returncode == 0:
        ma, mb = json.loads(a.stdout), json.loads(b.stdout)
        if ma["shots"] != 2 or ma["results"][0]["shots"] != 2:
            failures.append(f"shots not reported: {ma}")
        if ma["results"][0]["metrics"] != mb["results"][0]["metrics"]:
            failures.append("few-shot results differ between two runs with one seed")
    p = run("eval", "--model", MODEL, "--task", gen, "--split", "train", "--shots", "4", ok=False)
    if p.returncode != 1 or "shots" not in p.stderr:
        failures.append(f"4 shots from 4 train items on the train split: {p.returncode} "
                        f"{p.stderr!r}")

    # usage errors: 2
    for args in [["--task", gen, "--split", "dev"], ["--task", gen, "--shots", "-1"],
                 ["--task", gen, "--limit", "0"], [], ["--task", gen, "--base"],
                 ["--task", gen, "stray"]]:
        p = run("eval", "--model", MODEL, *args, ok=False)
        if p.returncode != 2:
            failures.append(f"eval {args}: exit {p.returncode}, want 2")
    # other errors: 1 and one line naming the problem
    bad = os.path.join(tmp, "bad")
    write_task(bad, {"kind": "choice"}, {"test": [{"prompt": "x", "choices": ["a", "b"],
                                                   "answer": 0}, {"prompt": "y", "choices": ["a"],
                                                                  "answer": 0}]})
    p = run("eval", "--model", MODEL, "--task", bad, ok=False)
    if p.returncode != 1 or "line 2" not in p.stderr or p.stderr.count("\n") != 1:
        failures.append(f"a bad item: {p.returncode} {p.stderr!r}")
    write_task(bad, {"kind": "mc"}, {})
    p = run("eval", "--model", MODEL, "--task", bad, ok=False)
    if p.returncode != 1 or "kind" not in p.stderr:
        failures.append(f"a bad kind: {p.returncode} {p.stderr!r}")
    p = run("eval", "--model", MODEL, "--task", os.path.join(tmp, "none"), ok=False)
    if p.returncode != 1 or "task.json" not in p.stderr:
        failures.append(f"a missing task: {p.returncode} {p.stderr!r}")
    p = run("eval", "--model", MODEL, "--task", gen, "--collateral", ch, ok=False)
    if p.returncode != 1 or "generate" not in p.stderr:
        failures.append(f"a choice task as collateral: {p.returncode} {p.stderr!r}")

for f in failures:
    print("FAIL:", f)
print("ok" if not failures else f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
