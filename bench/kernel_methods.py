#!/usr/bin/env python3
"""Compare the tuning methods standard, kernel and dbp (docs/TUNING.md) on one
model and one task: for each method and seed, `rwkvd tune --log` records the
training loss of every step and the validation loss every --eval-every steps
(and at the start); this prints a Markdown table of

  * the validation loss at the last step (mean ± sd over the seeds) and at
    equal seconds (the seconds standard's run of the same seed took),
  * the steps and seconds each method needs to reach the target validation
    loss, per seed: the final validation loss of the first method's run
    (standard) with the same seed, so the same validation items; standard
    reaches it by definition, and the question is whether the others do and
    how much sooner or later,
  * the same for the training loss (an exponential moving average, 0.8).

Seconds are tuning seconds: the wall time of `rwkvd tune` since its start
less the time its validations took, so that how often one validates does not
move the curves.

Usage:
    bench/kernel_methods.py --rwkvd build/server/rwkvd --model models/demo.safetensors \\
        --data models/demo-style.jsonl [--task pirate|shout] [--steps 60] [--seeds 0,1,2]
    bench/kernel_methods.py --model M.safetensors --task-dir eval/tasks/facts \\
        --picks eval/results/student-run1-20261205.json --picks-model student \\
        --warmup 10 --threads 1 --out docs/curves

--task shout rewrites each completion of the data file in capitals with " OVER." at
its end (a style the demo model has not seen); pirate uses the file as it is.

--task-dir takes a task of the evaluation suite (eval/tasks/NAME, docs/EVALUATION.md)
instead of --data: its train split becomes tuning data as eval/run.py makes it (a choice
item trains on its right answer, a generate item's completion gets the task's first stop
string), and its val split is appended and held out: --val-split becomes the val split's
share, so the runs train on as many items as eval/run.py's and validate on as many as the
val split holds; which items are held out is drawn with the seed, the same for every
method of one seed.

Each method may have its own learning rate and steps: --setting METHOD=LR:STEPS
(repeatable), or --picks FILE with an eval/run.py result file, whose picks on the
validation split for --picks-model and the task are used; --lr and --steps are the
default for the others.

--out DIR writes the curves: DIR/LABEL/METHOD-SEED.csv per run (step, seconds,
train_loss, train_loss_ema, val_loss; val_loss empty where no validation ran),
DIR/LABEL.json (the settings, every run's points, the curves averaged over the
seeds and the table) and DIR/LABEL.svg (validation and training loss against steps
and against seconds, one colour per method, means over the seeds). LABEL is --label,
else the task's name.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile

EMA_K = 0.8


class Failure(Exception):
    pass


# --- data ----------------------------------------------------------------------

def shout(path, out):
    with open(path) as f, open(out, "w") as g:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            c = r["completion"].rstrip("\n")
            r["completion"] = " " + c.strip().upper() + " OVER.\n\n"
            g.write(json.dumps(r) + "\n")


def task_item(x, end):
    """One split item as tuning data, as eval/run.py's train_file makes it."""
    if "choices" in x:
        ans = x["answer"]
        if isinstance(ans, str):
            if ans not in x["choices"]:
                raise Failure(f"answer {ans!r} is not one of the choices")
            ans = x["choices"].index(ans)
        return {"prompt": x["prompt"], "completion": x["choices"][ans]}
    if end:
        return {"prompt": x["prompt"], "completion": x["completion"] + end}
    return x


def task_data(task_dir, out):
    """Train split then val split of a task directory into out; returns (task.json, the
    number of train items, the number of val items)."""
    try:
        with open(os.path.join(task_dir, "task.json"), encoding="utf-8") as f:
            task = json.load(f)
    except (OSError, ValueError) as e:
        raise Failure(f"{task_dir}: task.json: {e}")
    task.setdefault("name", os.path.basename(os.path.normpath(task_dir)))
    end = ""
    if task.get("kind") == "generate" and task.get("stop"):
        end = task["stop"] if isinstance(task["stop"], str) else task["stop"][0]
    counts = []
    with open(out, "w", encoding="utf-8") as g:
        for split in ("train", "val"):
            path = os.path.join(task_dir, f"{split}.jsonl")
            n = 0
            try:
                with open(path, encoding="utf-8") as f:
                    for i, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            g.write(json.dumps(task_item(json.loads(line), end)) + "\n")
                        except (ValueError, KeyError, TypeError, IndexError, Failure) as e:
                            raise Failure(f"{path}: line {i}: {e}")
                        n += 1
            except OSError as e:
                raise Failure(f"{path}: {e}")
            if n == 0:
                raise Failure(f"{path}: no items")
            counts.append(n)
    return task, counts[0], counts[1]


# --- settings ------------------------------------------------------------------

def parse_setting(s):
    try:
        m, v = s.split("=", 1)
        lr, steps = v.split(":", 1)
        lr, steps = float(lr), int(steps)
    except ValueError:
        raise Failure(f"--setting {s!r}: expected METHOD=LR:STEPS, e.g. kernel=0.3:30")
    if not (lr > 0 and steps >= 1):
        raise Failure(f"--setting {s!r}: the learning rate must be > 0 and steps >= 1")
    return m, (lr, steps)


def read_picks(path, model, task):
    """{method: (lr, steps)} of an eval/run.py result file for one model and task."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise Failure(f"--picks {path}: {e}")
    for r in doc.get("results", []):
        if r.get("model") == model and r.get("task") == task:
            out = {}
            if "picked" in r:
                out["standard"] = (float(r["picked"]["lr"]), int(r["picked"]["steps"]))
            for m, p in r.get("picked_methods", {}).items():
                out[m] = (float(p["lr"]), int(p["steps"]))
            return out
    raise Failure(f"--picks {path}: no result for model {model!r} and task {task!r}")


# --- runs and their logs -------------------------------------------------------

def run(a, data, method, seed, setting, tmp):
    lr, steps = setting
    base = os.path.join(tmp, f"{method}-{seed}")
    cmd = [a.rwkvd, "tune", "--model", a.model, "--data", data,
           "--out", base + ".safetensors", "--method", method,
           "--steps", str(steps), "--batch", str(a.batch), "--lr", str(lr),
           "--warmup", str(a.warmup), "--val-split", str(a.val_split),
           "--eval-every", str(a.eval_every), "--seed", str(seed), "--kernel-seed", str(seed),
           "--kernel-m", str(a.kernel_m), "--threads", str(a.threads),
           "--log", base + ".jsonl", "--quiet"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise Failure(f"{method} seed {seed}: exit {p.returncode}: "
                      + " | ".join(p.stderr.strip().splitlines()[-3:]) + "\n  command: "
                      + " ".join(shlex.quote(x) for x in cmd))
    with open(base + ".result.json", "w") as f:
        f.write(p.stdout.strip().splitlines()[-1] + "\n")
    os.remove(base + ".safetensors")
    return read_log(base)


def read_log(base):
    """The points of one run from BASE.jsonl (and BASE.result.json where present):
    {"train": [(step, seconds, loss)], "val": [(step, seconds, val_loss)]}, seconds being
    tuning seconds (validation time taken out); val starts with (0, 0, the starting
    state's loss) when the result line is there."""
    train, val = [], []
    val_time = 0.0
    last_elapsed = 0.0
    with open(base + ".jsonl") as f:
        for line in f:
            r = json.loads(line)
            if "val_loss" in r:
                val.append((r["step"], last_elapsed - val_time, r["val_loss"]))
                val_time += r["elapsed_s"] - last_elapsed
            else:
                train.append((r["step"], r["elapsed_s"] - val_time, r["loss"]))
            last_elapsed = r["elapsed_s"]
    if os.path.exists(base + ".result.json"):
        with open(base + ".result.json") as f:
            res = json.load(f)
        if res.get("val_loss_init") is not None:
            val.insert(0, (0, 0.0, res["val_loss_init"]))
    return {"train": train, "val": val}


def ema(train, k=EMA_K):
    out, m = [], None
    for step, t, v in train:
        m = v if m is None else k * m + (1 - k) * v
        out.append((step, t, m))
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


def mean_curve(runs):
    """Points averaged over runs, at the steps every run has: (step, mean seconds, mean
    value)."""
    if not runs:
        return []
    common = set(p[0] for p in runs[0])
    for r in runs[1:]:
        common &= set(p[0] for p in r)
    by = [{p[0]: p for p in r} for r in runs]
    return [(s, statistics.fmean(b[s][1] for b in by), statistics.fmean(b[s][2] for b in by))
            for s in sorted(common)]


def mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(x, f="{:.4f}"):
    return "–" if x is None else f.format(x)


# --- the SVG -------------------------------------------------------------------

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def nice_ticks(lo, hi, log):
    """Axis ticks: 1-2-5 steps on a log axis, about five round steps on a linear one."""
    if log:
        for mants in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8),
                      tuple(i / 10 for i in range(10, 100))):
            ticks = []
            e = math.floor(math.log10(lo))
            while 10 ** e <= hi * 1.0001:
                for m in mants:
                    v = round(m * 10 ** e, 12)
                    if lo * 0.9999 <= v <= hi * 1.0001:
                        ticks.append(v)
                e += 1
            if len(ticks) >= 4:
                return ticks
        return ticks if len(ticks) >= 2 else [lo, hi]
    span = hi - lo if hi > lo else 1.0
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    v = math.ceil(lo / step) * step
    ticks = []
    while v <= hi + 1e-9 * span:
        ticks.append(round(v, 10))
        v += step
    return ticks


def tick_label(v):
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.0e}"


def svg_panel(x0, y0, w, h, series, xlabel, xmax, ylo, yhi, target):
    """One panel: axes, ticks, a dotted target line, then each series as a polyline.
    series: [(colour, width, dashed, [(x, y)], markers)]. The y axis is logarithmic."""
    ly = lambda v: math.log(v)
    sx = lambda x: x0 + w * x / xmax
    sy = lambda v: y0 + h - h * (ly(v) - ly(ylo)) / (ly(yhi) - ly(ylo))
    o = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>']
    for t in nice_ticks(ylo, yhi, True):
        y = sy(t)
        o.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{tick_label(t)}</text>')
    for t in nice_ticks(0, xmax, False):
        x = sx(t)
        o.append(f'<line x1="{x:.1f}" y1="{y0 + h}" x2="{x:.1f}" y2="{y0 + h + 4}" '
                 f'stroke="#444"/>')
        o.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle">'
                 f'{tick_label(t)}</text>')
    o.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 32}" text-anchor="middle">{xlabel}</text>')
    if target is not None and ylo <= target <= yhi:
        y = sy(target)
        o.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#000" '
                 f'stroke-dasharray="1,3"/>')
    for colour, width, dashed, pts, markers in series:
        pts = [(x, v) for x, v in pts if v > 0]
        if not pts:
            continue
        d = " ".join(f"{sx(x):.1f},{sy(min(max(v, ylo), yhi)):.1f}" for x, v in pts)
        style = 'stroke-width="1.2" stroke-dasharray="4,3" opacity="0.7"' if dashed \
            else f'stroke-width="{width:.1f}"'
        o.append(f'<polyline points="{d}" fill="none" stroke="{colour}" {style}/>')
        if markers:
            for x, v in pts:
                o.append(f'<circle cx="{sx(x):.1f}" cy="{sy(min(max(v, ylo), yhi)):.1f}" '
                         f'r="{0.5 + width:.1f}" fill="{colour}"/>')
    return o


def write_svg(path, title, subtitle, curves, target):
    """curves: {method: {"val": [(step, s, v)], "train_ema": [(step, s, v)]}}, means over
    the seeds. Two panels: loss against steps, loss against tuning seconds."""
    W, H = 820, 340
    pw, ph, top = 330, 220, 58
    vals = [p[2] for c in curves.values() for k in ("val", "train_ema") for p in c[k]
            if p[2] > 0]
    ylo, yhi = min(vals) * 0.95, max(vals) * 1.05
    smax = max(p[0] for c in curves.values() for k in ("val", "train_ema") for p in c[k])
    tmax = max(p[1] for c in curves.values() for k in ("val", "train_ema") for p in c[k])
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{esc(title)}</text>',
         f'<text x="{W / 2}" y="34" text-anchor="middle" fill="#555">{esc(subtitle)}</text>',
         f'<text transform="translate(14,{top + ph / 2}) rotate(-90)" text-anchor="middle">'
         f'loss (nats/token, log scale)</text>']
    for i, (xi, xlabel, xmax) in enumerate(((0, "optimizer step", smax),
                                            (1, "tuning seconds", tmax))):
        series = []
        for j, (m, c) in enumerate(curves.items()):
            col = COLOURS[j % len(COLOURS)]
            # later methods are drawn thinner, so that a line under another stays visible
            width = max(1.0, 2.8 - 0.7 * j)
            series.append((col, width, True, [(p[xi], p[2]) for p in c["train_ema"]], False))
            series.append((col, width, False, [(p[xi], p[2]) for p in c["val"]], True))
        o += svg_panel(60 + i * (pw + 70), top, pw, ph, series, xlabel, xmax or 1, ylo, yhi,
                       target)
    ly = top + ph + 48
    x = 60
    for j, m in enumerate(curves):
        col = COLOURS[j % len(COLOURS)]
        o.append(f'<line x1="{x}" y1="{ly}" x2="{x + 22}" y2="{ly}" stroke="{col}" '
                 f'stroke-width="{max(1.0, 2.8 - 0.7 * j):.1f}"/>')
        o.append(f'<text x="{x + 26}" y="{ly + 4}">{esc(m)}</text>')
        x += 40 + 7 * len(m)
    o.append(f'<text x="{x + 10}" y="{ly + 4}" fill="#555">solid with dots: validation loss; '
             f'dashed: training loss (EMA {EMA_K}); dotted: target</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- main ----------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rwkvd", default="build/server/rwkvd")
    ap.add_argument("--model", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="tuning data (JSONL), a validation part is held out")
    src.add_argument("--task-dir", help="a task of the evaluation suite, eval/tasks/NAME")
    ap.add_argument("--task", choices=["pirate", "shout"], default="pirate",
                    help="with --data: pirate uses it as it is, shout rewrites the answers")
    ap.add_argument("--methods", default="standard,kernel,dbp",
                    help="the first is the reference whose final validation loss is the target")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--setting", action="append", default=[], metavar="METHOD=LR:STEPS",
                    help="learning rate and steps of one method (repeatable)")
    ap.add_argument("--picks", metavar="FILE",
                    help="with --task-dir: each method's lr and steps as picked in this "
                         "eval/run.py result file (--setting overrides)")
    ap.add_argument("--picks-model", help="the model's name in the --picks file")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--kernel-m", type=int, default=256)
    ap.add_argument("--val-split", type=float, default=0.25,
                    help="with --data: the held-out fraction (with --task-dir: the val split)")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the curves (CSV per run, JSON, SVG) into this directory")
    ap.add_argument("--label", help="name of the curves under --out (default: the task's name)")
    ap.add_argument("--from-logs", help="analyse the <method>-<seed>.jsonl logs in this "
                    "directory (of an earlier or unfinished run) instead of running")
    ap.add_argument("--keep-logs", help="copy the logs into this directory")
    a = ap.parse_args()
    try:
        return bench(a)
    except Failure as e:
        print(f"kernel_methods: {e}", file=sys.stderr)
        return 1


def bench(a):
    methods = a.methods.split(",")
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        raise Failure(f"--seeds {a.seeds!r}: expected integers separated by commas")
    if a.eval_every < 1:
        raise Failure("--eval-every must be >= 1 (the curves need validations)")
    if a.picks and not a.task_dir:
        raise Failure("--picks needs --task-dir (the task's name selects the picks)")
    if a.picks and not a.picks_model:
        raise Failure("--picks needs --picks-model (the model's name in that file)")
    settings = {m: (a.lr, a.steps) for m in methods}
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        task_info = None
        data = a.data
        label = a.label
        if a.task_dir:
            data = os.path.join(tmp, "data.jsonl")
            task, n_train, n_val = task_data(a.task_dir, data)
            a.val_split = n_val / (n_train + n_val)
            task_info = {"dir": a.task_dir, "name": task["name"], "kind": task.get("kind"),
                         "train_items": n_train, "val_items": n_val}
            label = label or task["name"]
            if a.picks:
                picks = read_picks(a.picks, a.picks_model, task["name"])
                for m in methods:
                    if m in picks:
                        settings[m] = picks[m]
        elif a.task == "shout":
            data = os.path.join(tmp, "shout.jsonl")
            shout(a.data, data)
        label = label or a.task
        for s in a.setting:
            m, v = parse_setting(s)
            if m not in settings:
                raise Failure(f"--setting {s!r}: {m} is not one of --methods {a.methods}")
            settings[m] = v
        if a.from_logs:
            res = {}
            for m in methods:
                res[m] = {}
                for s in seeds:
                    base = os.path.join(a.from_logs, f"{m}-{s}")
                    if os.path.exists(base + ".jsonl"):
                        r = read_log(base)
                        if r["val"] and r["val"][-1][0] == settings[m][1]:
                            res[m][s] = r
        else:
            # seeds outer, methods inner: a change in the machine's load during the runs
            # then falls on every method alike
            res = {m: {} for m in methods}
            for s in seeds:
                for m in methods:
                    res[m][s] = run(a, data, m, s, settings[m], tmp)
            if a.keep_logs:
                os.makedirs(a.keep_logs, exist_ok=True)
                for f in os.listdir(tmp):
                    if f.split("-")[0] in methods and f.endswith((".jsonl", ".result.json")):
                        with open(os.path.join(tmp, f)) as x, \
                                open(os.path.join(a.keep_logs, f), "w") as y:
                            y.write(x.read())
    ref = methods[0]
    for m in methods:
        for s, r in res[m].items():
            if not r["val"] or not r["train"]:
                raise Failure(f"{m} seed {s}: the log has no validation or no steps")
    # per seed: the target is the reference's final validation loss of the same seed
    tgt_val = {s: r["val"][-1][2] for s, r in res[ref].items()}
    tgt_tr = {s: ema(r["train"])[-1][2] for s, r in res[ref].items()}
    t_ref = {s: r["train"][-1][1] for s, r in res[ref].items()}
    rows = []
    for m in methods:
        row = {"method": m, "lr": settings[m][0], "steps": settings[m][1], "seeds": {}}
        for s, r in res[m].items():
            tr = ema(r["train"])
            rv = first_reach(r["val"], tgt_val[s]) if s in tgt_val else None
            rt = first_reach(tr, tgt_tr[s]) if s in tgt_tr else None
            row["seeds"][s] = {
                "val_final": r["val"][-1][2],
                "val_at_ref_seconds": at_seconds(r["val"], t_ref[s]) if s in t_ref else None,
                "steps_to_target_val": rv[0] if rv else None,
                "seconds_to_target_val": rv[1] if rv else None,
                "steps_to_target_train": rt[0] if rt else None,
                "seconds_to_target_train": rt[1] if rt else None,
                "s_per_step": r["train"][-1][1] / r["train"][-1][0],
            }
        rows.append(row)
    mean_tgt = statistics.fmean(tgt_val.values()) if tgt_val else None
    curves = {}
    for m in methods:
        rs = list(res[m].values())
        curves[m] = {"val": mean_curve([r["val"] for r in rs]),
                     "train_ema": mean_curve([ema(r["train"]) for r in rs])}
        mr = first_reach(curves[m]["val"], mean_tgt) if mean_tgt is not None else None
        next(r for r in rows if r["method"] == m)["mean_curve_to_target_val"] = \
            {"step": mr[0], "seconds": mr[1]} if mr else None

    desc = (f"model {a.model}, " + (f"task {task_info['name']} ({a.task_dir}; "
            f"{task_info['train_items']} train items, {task_info['val_items']} held out)"
            if task_info else f"data {a.data}, task {a.task} ({a.val_split:g} held out)")
            + f", batch {a.batch}, warmup {a.warmup}, kernel_m {a.kernel_m}, "
            f"validation every {a.eval_every} steps, seeds {a.seeds}")
    print(desc)
    print("load average (1, 5, 15 min) at the start %.2f %.2f %.2f, at the end %.2f %.2f %.2f"
          % (load_start + os.getloadavg()))
    print("settings: " + ", ".join(f"{m} lr {settings[m][0]:g}, {settings[m][1]} steps"
                                   for m in methods))
    print(f"targets: {ref}'s final validation loss per seed "
          + ", ".join(f"{s}: {v:.4f}" for s, v in tgt_val.items())
          + f" (mean {fmt(mean_tgt)}); equal seconds = {ref}'s tuning seconds per seed "
          + ", ".join(f"{s}: {v:.1f}" for s, v in t_ref.items()))
    print()
    print("| method | lr, steps | final val loss | val loss at the reference's seconds | "
          "steps to target val (per seed) | seconds to target val (per seed) | reached | "
          "steps to target train (EMA) | mean curve: step, s to mean target | s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    per_seed = lambda row, k, f: ", ".join(fmt(v[k], f) for v in row["seeds"].values())
    for row in rows:
        sd = row["seeds"].values()
        mv, sv = mean_sd([v["val_final"] for v in sd])
        mr = row["mean_curve_to_target_val"]
        print("| " + " | ".join([
            row["method"], f"{row['lr']:g}, {row['steps']}",
            f"{fmt(mv)} ± {fmt(sv)}" if mv is not None else "–",
            fmt(mean_sd([v["val_at_ref_seconds"] for v in sd])[0]),
            per_seed(row, "steps_to_target_val", "{:.0f}"),
            per_seed(row, "seconds_to_target_val", "{:.1f}"),
            f"{sum(v['steps_to_target_val'] is not None for v in sd)}/{len(sd)}",
            per_seed(row, "steps_to_target_train", "{:.0f}"),
            f"{mr['step']}, {mr['seconds']:.1f}" if mr else "–",
            fmt(mean_sd([v["s_per_step"] for v in sd])[0], "{:.3f}")]) + " |")

    if a.out:
        write_out(a, label, desc, methods, settings, seeds, res, rows, curves, mean_tgt,
                  task_info, started, load_start)
    return 0


def compact_json(doc):
    """JSON with one line per top-level key, and per method under the curves' keys."""
    out = []
    for k, v in doc.items():
        if k in ("mean_curves", "runs", "table"):
            inner = v.items() if isinstance(v, dict) else enumerate(v)
            body = ",\n".join((f"  {json.dumps(ik)}: " if isinstance(v, dict) else "  ")
                               + json.dumps(iv) for ik, iv in inner)
            open_, close = ("{", "}") if isinstance(v, dict) else ("[", "]")
            out.append(f" {json.dumps(k)}: {open_}\n{body}\n {close}")
        else:
            out.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(out) + "\n}\n"


def write_out(a, label, desc, methods, settings, seeds, res, rows, curves, mean_tgt, task_info,
              started, load_start):
    os.makedirs(os.path.join(a.out, label), exist_ok=True)
    for m in methods:
        for s, r in res[m].items():
            val = {p[0]: p[2] for p in r["val"]}
            tr = ema(r["train"])
            with open(os.path.join(a.out, label, f"{m}-{s}.csv"), "w") as f:
                f.write("step,seconds,train_loss,train_loss_ema,val_loss\n")
                if 0 in val:
                    f.write(f"0,0,,,{val[0]:.6g}\n")
                for (step, t, v), (_, _, e) in zip(r["train"], tr):
                    f.write(f"{step},{t:.4f},{v:.6g},{e:.6g},"
                            + (f"{val[step]:.6g}" if step in val else "") + "\n")
    r6 = lambda pts: [[p[0], round(p[1], 4), round(p[2], 6)] for p in pts]
    doc = {
        "label": label,
        "description": desc,
        "command": " ".join(shlex.quote(x) for x in sys.argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"system": f"{platform.system()} {platform.release()}",
                    "cpus": os.cpu_count(), "threads": a.threads,
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "model": a.model,
        "task": task_info,
        "data": a.data,
        "methods": methods,
        "settings": {m: {"lr": settings[m][0], "steps": settings[m][1]} for m in methods},
        "batch": a.batch, "warmup": a.warmup, "kernel_m": a.kernel_m,
        "eval_every": a.eval_every, "val_split": a.val_split, "seeds": seeds,
        "seconds": "tuning seconds: wall time of rwkvd tune less its validations",
        "target_val_mean": mean_tgt,
        "table": rows,
        "mean_curves": {m: {"val": r6(c["val"]), "train_ema": r6(c["train_ema"])}
                        for m, c in curves.items()},
        "runs": {m: {str(s): {"val": r6(r["val"]), "train": r6(r["train"])}
                     for s, r in res[m].items()} for m in methods},
    }
    with open(os.path.join(a.out, label + ".json"), "w") as f:
        f.write(compact_json(doc))
    model = os.path.splitext(os.path.basename(a.model))[0]
    sub = (", ".join(f"{m} lr {settings[m][0]:g}" for m in methods)
           + f"; batch {a.batch}; mean of {len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    write_svg(os.path.join(a.out, label + ".svg"), f"{model}: {label}", sub, curves, mean_tgt)


if __name__ == "__main__":
    sys.exit(main())
