#!/usr/bin/env python3
"""Compare the tuning methods standard, kernel and dbp (docs/TUNING.md) on one
model and one task: for each method and seed, `rwkvd tune --log` records the
training loss of every step and the validation loss every --eval-every steps
with the elapsed seconds; this prints a Markdown table of

  * the validation loss at equal steps (the last step) and at equal seconds
    (the time standard's runs took, median over seeds),
  * the steps and seconds each method needs to reach the target validation
    loss: standard's final validation loss (median over seeds), so standard
    reaches it by definition, and the question is whether the others do and
    how much sooner or later,
  * the same for the training loss (an exponential moving average, 0.8).

Usage:
    bench/kernel_methods.py --rwkvd build/server/rwkvd --model models/demo.safetensors \\
        --data models/demo-style.jsonl [--task pirate|shout] [--steps 60] [--seeds 0,1,2]

--task shout rewrites each completion of the data file in capitals with " OVER." at
its end (a style the demo model has not seen); pirate uses the file as it is.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def shout(path, out):
    with open(path) as f, open(out, "w") as g:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            c = r["completion"].rstrip("\n")
            r["completion"] = " " + c.strip().upper() + " OVER.\n\n"
            g.write(json.dumps(r) + "\n")


def run(a, data, method, seed, tmp):
    log = os.path.join(tmp, f"{method}-{seed}.jsonl")
    cmd = [a.rwkvd, "tune", "--model", a.model, "--data", data,
           "--out", os.path.join(tmp, f"{method}-{seed}.safetensors"), "--method", method,
           "--steps", str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr),
           "--warmup", "5", "--val-split", str(a.val_split), "--eval-every", str(a.eval_every),
           "--seed", str(seed), "--kernel-seed", str(seed), "--kernel-m", str(a.kernel_m),
           "--threads", str(a.threads), "--log", log, "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return read_log(log)


def read_log(log):
    steps, vals = [], []
    with open(log) as f:
        for line in f:
            r = json.loads(line)
            (vals if "val_loss" in r else steps).append(r)
    return steps, vals


def ema(steps, k=0.8):
    out, m = [], None
    for r in steps:
        m = r["loss"] if m is None else k * m + (1 - k) * r["loss"]
        out.append((r["step"], r["elapsed_s"], m))
    return out


def first_reach(points, target):
    """(step, seconds) of the first point with value <= target, else None."""
    for step, t, v in points:
        if v <= target:
            return step, t
    return None


def at_seconds(points, t):
    """The last value recorded at or before t seconds."""
    best = None
    for _, s, v in points:
        if s <= t:
            best = v
    return best


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, f="{:.4f}"):
    return "–" if x is None else f.format(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rwkvd", default="build/server/rwkvd")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--task", choices=["pirate", "shout"], default="pirate")
    ap.add_argument("--methods", default="standard,kernel,dbp")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--kernel-m", type=int, default=256)
    ap.add_argument("--val-split", type=float, default=0.25)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--from-logs", help="analyse the <method>-<seed>.jsonl logs in this "
                    "directory (of an earlier or unfinished run) instead of running")
    ap.add_argument("--keep-logs", help="copy the logs into this directory")
    a = ap.parse_args()
    methods = a.methods.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.from_logs:
        res = {m: [read_log(os.path.join(a.from_logs, f"{m}-{s}.jsonl")) for s in seeds
                   if os.path.exists(os.path.join(a.from_logs, f"{m}-{s}.jsonl"))]
               for m in methods}
        res = {m: [r for r in v if r[1] and r[1][-1]["step"] == a.steps] for m, v in res.items()}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = a.data
            if a.task == "shout":
                data = os.path.join(tmp, "shout.jsonl")
                shout(a.data, data)
            res = {m: [run(a, data, m, s, tmp) for s in seeds] for m in methods}
            if a.keep_logs:
                os.makedirs(a.keep_logs, exist_ok=True)
                for f in os.listdir(tmp):
                    if f.endswith(".jsonl"):
                        with open(os.path.join(tmp, f)) as x, \
                                open(os.path.join(a.keep_logs, f), "w") as y:
                            y.write(x.read())
    # val points: (step, seconds, val_loss), with step 0 = the start
    val = {m: [[(r["step"], r["elapsed_s"], r["val_loss"]) for r in v] for _, v in res[m]]
           for m in methods}
    tr = {m: [ema(st) for st, _ in res[m]] for m in methods}
    ref = methods[0]
    tgt_val = med([pts[-1][2] for pts in val[ref]])
    tgt_tr = med([pts[-1][2] for pts in tr[ref]])
    t_ref = med([pts[-1][1] for pts in tr[ref]])
    print(f"model {a.model}, task {a.task}, {a.steps} steps of batch {a.batch}, lr {a.lr}, "
          f"kernel_m {a.kernel_m}; seeds per method: "
          + ", ".join(f"{m} {len(res[m])}" for m in methods) + "; medians over seeds")
    print(f"target validation loss {tgt_val:.4f}, target training loss (EMA 0.8) {tgt_tr:.4f} "
          f"(the final values of {ref}); equal seconds = {t_ref:.1f} s")
    print()
    print("| method | val loss at step %d | val loss at %.0f s | steps to target val | "
          "seconds to target val | reached (seeds) | steps to target train | "
          "seconds to target train | s/step |" % (a.steps, t_ref))
    print("|---|---|---|---|---|---|---|---|---|")
    for m in methods:
        rv = [first_reach(p, tgt_val) for p in val[m]]
        rt = [first_reach(p, tgt_tr) for p in tr[m]]
        row = [m, fmt(med([p[-1][2] for p in val[m]])),
               fmt(med([at_seconds(p, t_ref) for p in val[m]])),
               fmt(med([r[0] if r else None for r in rv]), "{:.0f}"),
               fmt(med([r[1] if r else None for r in rv]), "{:.1f}"),
               f"{sum(r is not None for r in rv)}/{len(rv)}",
               fmt(med([r[0] if r else None for r in rt]), "{:.0f}"),
               fmt(med([r[1] if r else None for r in rt]), "{:.1f}"),
               fmt(med([p[-1][1] / p[-1][0] for p in tr[m]]), "{:.3f}")]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
