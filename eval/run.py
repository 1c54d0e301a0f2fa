#!/usr/bin/env python3
"""The baseline table of rwkvd's evaluation (docs/EVALUATION.md).

For each model and each task of eval/tasks/: zero-shot and few-shot (the
task's K) on the test split; standard state tuning (`rwkvd tune`) with the
learning rate and steps picked on the validation split from a small grid;
then three seeds of the picked setting, and three of the same setting with
collateral protection (kl_weight), evaluated on the test split with the
collateral set. Results go to a JSON file under eval/results/ and, as a
Markdown table, into docs/EVALUATION.md between the markers
<!-- baseline-table:begin --> and <!-- baseline-table:end -->.

    eval/run.sh                          # default models (see --model)
    eval/run.sh --model A.safetensors --model B.safetensors
    eval/run.sh --ci                     # the quick check that fails on a broken tuner

Only the Python standard library and the rwkvd binary are used.
"""
import argparse
import concurrent.futures as cf
import datetime
import json
import math
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK_BEGIN = "<!-- baseline-table:begin -->"
MARK_END = "<!-- baseline-table:end -->"
DEFAULT_GRID = "1:20,1:40,0.3:40"   # lr:steps, picked on the validation split
DEFAULT_KL = 0.5


class Failure(Exception):
    pass


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_cmd(argv, what):
    t0 = time.monotonic()
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        tail = p.stderr.strip().splitlines()[-3:]
        raise Failure(f"{what}: exit {p.returncode}: {' | '.join(tail)}\n  command: "
                      + " ".join(shlex.quote(a) for a in argv))
    return p.stdout, dt


def load_task(d):
    with open(os.path.join(d, "task.json"), encoding="utf-8") as f:
        return json.load(f)


def main_metric(kind):
    return {"generate": "exact_match", "choice": "acc_norm", "loss": "loss"}[kind]


def select_key(kind, m):
    """Larger is better: the task metric first, the loss to break ties."""
    if kind == "loss":
        return (-m["loss"],)
    return (m[main_metric(kind)], -m["loss"])


class Runner:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="rwkvd-eval-")

    # --- the two rwkvd commands ---------------------------------------------

    def tune(self, model, train, out, lr, steps, seed, kl=0.0, method="standard"):
        argv = [self.a.rwkvd, "tune", "--model", model, "--data", train, "--out", out,
                "--steps", str(steps), "--lr", str(lr), "--seed", str(seed), "--batch", "4",
                "--val-split", "0", "--threads", str(self.a.threads), "--quiet"]
        if kl > 0:
            argv += ["--kl-weight", str(kl)]
        if method != "standard":
            argv += ["--method", method]
        stdout, dt = run_cmd(argv, f"tune {os.path.basename(out)}")
        res = json.loads(stdout.strip().splitlines()[-1])
        return {"seconds": dt, "tokens": res.get("tokens"), "train_loss": res.get("loss"),
                "kl": res.get("kl"), "lr": lr, "steps": steps, "seed": seed, "kl_weight": kl,
                "method": method}

    def evaluate(self, model, task_dir, split, shots, states=(), collateral=False, limit=None):
        argv = [self.a.rwkvd, "eval", "--model", model, "--task", task_dir, "--split", split,
                "--shots", str(shots), "--threads", str(self.a.threads), "--quiet"]
        for s in states:
            argv += ["--state", s]
        if collateral:
            argv += ["--collateral", os.path.join(ROOT, "eval", "collateral")]
        if limit:
            argv += ["--limit", str(limit)]
        stdout, dt = run_cmd(argv, f"eval {os.path.basename(task_dir)} {split}")
        doc = json.loads(stdout)
        by_state = {}
        for r in doc["results"]:
            ent = by_state.setdefault(r["state"], {})
            if r["task"] == "collateral":
                ent["collateral_kept"] = r["metrics"]["collateral_kept"]
            else:
                ent.update(r["metrics"])
                ent["n"] = r["n"]
                ent["eval_seconds"] = r["seconds"]
        return by_state, dt

    # --- one (model, task) ----------------------------------------------------

    def train_file(self, task_dir, name, end=""):
        """The train split as `rwkvd tune` data: a choice item trains on its right answer; a
        generate item's completion gets `end` (the task's first stop string) so that the state
        also learns where an answer ends (the split itself holds nothing after the answer)."""
        path = os.path.join(self.tmp, f"{name}.train.jsonl")
        with open(os.path.join(task_dir, "train.jsonl"), encoding="utf-8") as f, \
                open(path, "w", encoding="utf-8") as g:
            for line in f:
                if not line.strip():
                    continue
                x = json.loads(line)
                if "choices" in x:
                    x = {"prompt": x["prompt"], "completion": x["choices"][x["answer"]]}
                elif end:
                    x = {"prompt": x["prompt"], "completion": x["completion"] + end}
                g.write(json.dumps(x) + "\n")
        return path

    def task(self, model, mname, task_dir):
        a = self.a
        t = load_task(task_dir)
        name, kind = t["name"], t["kind"]
        K = t.get("shots", 0)
        tag = f"{mname}/{name}"
        rec = {"model": mname, "task": name, "kind": kind, "metric": main_metric(kind),
               "shots": K}
        t0 = time.monotonic()
        if not a.ci:
            log(f"{tag}: zero-shot and {K}-shot")
            zs, _ = self.evaluate(model, task_dir, "test", 0, limit=a.limit)
            rec["zero_shot"] = zs["base"]
        if K > 0 and not a.ci:
            fs, _ = self.evaluate(model, task_dir, "test", K, limit=a.limit)
            rec["few_shot"] = fs["base"]
        end = ""
        if kind == "generate" and a.train_stop and t.get("stop"):
            stops = t["stop"] if isinstance(t["stop"], list) else [t["stop"]]
            end = stops[0]
        rec["train_end"] = end
        train = self.train_file(task_dir, f"{mname}-{name}", end)
        zs_val, _ = self.evaluate(model, task_dir, "val", 0, limit=a.limit)
        rec["val_zero_shot"] = zs_val["base"]
        # each tuning method: its grid on the validation split with seed 0, then the picked
        # setting with the other seeds; the KL arm reuses standard's pick
        picks = {}
        for method in [m for m in a.methods if m != "kl"]:
            grid = []
            for lr, steps in a.grid:
                st = os.path.join(self.tmp, f"{mname}-{name}-{method}-lr{lr}-s{steps}-seed0.st")
                log(f"{tag}: {method} lr {lr}, {steps} steps")
                grid.append((st, self.tune(model, train, st, lr, steps, 0, method=method)))
            val, _ = self.evaluate(model, task_dir, "val", 0, [g[0] for g in grid], limit=a.limit)
            best = max(range(len(grid)), key=lambda i: select_key(kind, val[grid[i][0]]))
            picks[method] = (a.grid[best], grid[best])
            key = "grid" if method == "standard" else f"grid_{method}"
            rec[key] = [dict(g[1], val=val[g[0]]) for g in grid]
            log(f"{tag}: {method}: picked lr {a.grid[best][0]}, {a.grid[best][1]} steps")
            if method == "standard":
                rec["picked"] = {"lr": a.grid[best][0], "steps": a.grid[best][1]}
                if a.ci:
                    rec["val_tuned"] = val[grid[best][0]]
                    rec["seconds"] = time.monotonic() - t0
                    return rec
            else:
                rec.setdefault("picked_methods", {})[method] = {"lr": a.grid[best][0],
                                                                 "steps": a.grid[best][1]}
        arms = [m for m in a.methods]
        runs = {arm: [] for arm in arms}
        states = {arm: [] for arm in arms}
        for seed in range(a.seeds):
            for arm in arms:
                method = "standard" if arm == "kl" else arm
                (lr, steps), (st0, info0) = picks[method]
                if arm != "kl" and seed == 0:
                    st, info = st0, info0
                else:
                    st = os.path.join(self.tmp, f"{mname}-{name}-{arm}-seed{seed}.st")
                    log(f"{tag}: {arm} seed {seed}")
                    info = self.tune(model, train, st, lr, steps, seed,
                                     a.kl if arm == "kl" else 0.0, method)
                runs[arm].append(info)
                states[arm].append(st)
        allst = [st for arm in arms for st in states[arm]]
        test, _ = self.evaluate(model, task_dir, "test", 0, allst, collateral=True, limit=a.limit)
        for arm in runs:
            for info, st in zip(runs[arm], states[arm]):
                info["test"] = test[st]
            rec[arm] = runs[arm]
        rec["kl_weight"] = a.kl
        rec["seconds"] = time.monotonic() - t0
        log(f"{tag}: done in {rec['seconds']:.0f} s")
        return rec


# --- the table ------------------------------------------------------------------

def mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def fmt(x, metric):
    if x is None:
        return "–"
    return f"{x:.3f}" if metric == "loss" else f"{100 * x:.1f}%"


def fmt_ms(xs, metric):
    m, sd = mean_sd(xs)
    if m is None:
        return "–"
    if metric == "loss":
        return f"{m:.3f} ± {sd:.3f}"
    return f"{100 * m:.1f} ± {100 * sd:.1f}%"


def table(doc):
    out = []
    for mname in doc["models"]:
        recs = [r for r in doc["results"] if r["model"] == mname]
        out.append(f"**{mname}** (`{doc['model_paths'][mname]}`)\n")
        out.append("| task | metric | method | test | loss (nats/token) | tuning s | "
                   "tuning tokens | collateral kept |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in recs:
            met = r["metric"]
            label = {"exact_match": "exact match", "acc_norm": "acc (norm)",
                     "loss": "loss"}[met]
            zs = r["zero_shot"]
            out.append(f"| {r['task']} | {label} | zero-shot | {fmt(zs.get(met), met)} | "
                       f"{zs['loss']:.3f} | | | |")
            if "few_shot" in r:
                fs = r["few_shot"]
                out.append(f"| | | {r['shots']}-shot | {fmt(fs.get(met), met)} | "
                           f"{fs['loss']:.3f} | | | |")
            p = r["picked"]
            pm = r.get("picked_methods", {})
            arms = [("standard", f"standard (lr {p['lr']}, {p['steps']} steps)"),
                    ("kl", f"standard + KL λ {r.get('kl_weight')}")]
            arms += [(m, f"{m} (lr {q['lr']}, {q['steps']} steps)") for m, q in pm.items()]
            for arm, label2 in arms:
                runs = r.get(arm) or []
                if not runs:
                    continue
                vals = [x["test"].get(met) for x in runs]
                losses = [x["test"]["loss"] for x in runs]
                secs = [x["seconds"] for x in runs]
                toks = [x["tokens"] for x in runs]
                kept = [x["test"].get("collateral_kept") for x in runs]
                ml, sl = mean_sd(losses)
                ms, _ = mean_sd(secs)
                mt, _ = mean_sd(toks)
                out.append(f"| | | {label2} | {fmt_ms(vals, 'loss' if met == 'loss' else met)} | "
                           f"{ml:.3f} ± {sl:.3f} | {ms:.1f} | {mt:.0f} | "
                           f"{fmt_ms(kept, 'frac')} |")
        out.append("")
    return "\n".join(out)


def write_doc(path, doc, cmdline):
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if MARK_BEGIN not in text or MARK_END not in text:
        raise Failure(f"{path}: the markers {MARK_BEGIN} and {MARK_END} are missing")
    m = doc["machine"]
    cpu = ""
    if doc.get("cpu_seconds"):
        cpu = (f", {doc['cpu_seconds'] / 60:.1f} CPU-minutes in the rwkvd commands "
               f"({doc['cpu_seconds'] / 60 / max(1, m['cores']):.1f} minutes on "
               f"{m['cores']} idle cores)")
    head = (f"Command: `{cmdline}`  \n"
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['system']}; date {doc['date']}; "
            f"{doc['wall_seconds'] / 60:.1f} minutes in all ({doc['workers']} jobs at once, "
            f"{doc['threads']} thread each){cpu}.  \n"
            f"Grid (lr:steps, batch 4, picked on the validation split with seed 0): "
            f"`{doc['grid']}`; {doc['seeds']} seeds (the grid's seed-0 state is seed 0); "
            f"KL weight {doc['kl_weight']}. Test results are mean ± standard deviation over "
            f"the seeds; raw numbers: `{doc['json']}`.\n")
    extra = list(doc.get("notes", []))
    if not doc.get("complete", True):
        extra.append("this run was stopped before it ended: the table holds the (model, task) "
                     "pairs it finished, and the time is up to that point.")
    notes = "".join(f"\n*Note:* {n}\n" for n in extra)
    block = f"{MARK_BEGIN}\n{head}{notes}\n{table(doc)}\n{MARK_END}"
    a, b = text.index(MARK_BEGIN), text.index(MARK_END) + len(MARK_END)
    text = text[:a] + block + text[b:]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --- CI mode ----------------------------------------------------------------------

def ci_check(rec):
    """The tuner must learn: lower validation loss, and a clearly better metric."""
    z, t = rec["val_zero_shot"], rec["val_tuned"]
    problems = []
    if not t["loss"] < 0.5 * z["loss"]:
        problems.append(f"validation loss {z['loss']:.3f} -> {t['loss']:.3f} "
                        "(want below half)")
    met = rec["metric"]
    if met == "loss":
        pass  # the loss is the metric
    elif not t[met] >= z[met] + 0.25:
        problems.append(f"{met} {z[met]:.3f} -> {t[met]:.3f} (want +0.25)")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append",
                    help="a model file (repeatable; default: models/student.safetensors and "
                         "models/teacher.safetensors where present, else models/demo.safetensors)")
    ap.add_argument("--task", action="append", help="task names (default: all of eval/tasks)")
    ap.add_argument("--rwkvd", default=os.path.join(ROOT, "build", "server", "rwkvd"))
    ap.add_argument("--grid", default=DEFAULT_GRID, help=f"lr:steps,... (default {DEFAULT_GRID})")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--kl", type=float, default=DEFAULT_KL, help="kl_weight of the KL rows")
    ap.add_argument("--methods", default="standard,kl",
                    help="rows to tune: standard, kl (standard + KL, at standard's pick), kernel, "
                         "dbp (each with its own pick on the validation split); default standard,kl")
    ap.add_argument("--workers", type=int, default=2, help="(model, task) jobs at once")
    ap.add_argument("--threads", type=int, default=1, help="threads of each rwkvd command")
    ap.add_argument("--limit", type=int, help="first N items of each split (a quick look)")
    ap.add_argument("--json", help="raw results (default eval/results/baseline-DATE.json)")
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "EVALUATION.md"))
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/EVALUATION.md")
    ap.add_argument("--ci", action="store_true",
                    help="quick check on the demo model: 20 steps of tuning must at least halve "
                         "the persona task's validation loss (exit 1 otherwise)")
    ap.add_argument("--no-train-stop", dest="train_stop", action="store_false",
                    help="train generate tasks on the bare completion (default: completion + the "
                         "task's first stop string, so the state learns to end its answer)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="write the table of an earlier run's raw results into --doc and exit")
    ap.add_argument("--command", help="with --from-json: the command shown above the table")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json, encoding="utf-8") as f:
            doc = json.load(f)
        cmd = a.command or doc.get("command") or "eval/run.sh"
        try:
            write_doc(a.doc, doc, cmd)
        except Failure as e:
            print(f"run.py: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        a.grid = [(float(lr) if "." in lr else int(lr), int(st))
                  for lr, st in (g.split(":") for g in a.grid.split(","))]
    except ValueError:
        ap.error(f"--grid: want lr:steps,... (got {a.grid!r})")
    if not os.access(a.rwkvd, os.X_OK):
        print(f"run.py: {a.rwkvd} is not an executable rwkvd (build it first: ninja -C build)",
              file=sys.stderr)
        return 2
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in ("standard", "kl", "kernel", "dbp")]
    if bad or "standard" not in a.methods:
        ap.error(f"--methods: standard and any of kl, kernel, dbp (got {','.join(a.methods)})")
    notes = []
    if a.ci:
        a.model = a.model or [os.path.join(ROOT, "models", "demo.safetensors")]
        a.task = a.task or ["persona"]
        a.grid = [(1, 20)]
        a.seeds, a.no_doc, a.limit = 1, True, None
        a.methods = ["standard"]
    if not a.model:
        cand = [os.path.join(ROOT, "models", f"{n}.safetensors") for n in ("student", "teacher")]
        a.model = [c for c in cand if os.path.exists(c)]
        if not a.model:
            a.model = [os.path.join(ROOT, "models", "demo.safetensors")]
            notes.append("models/student.safetensors and models/teacher.safetensors are not in "
                         "this checkout, so the default run used the demo model, which has "
                         "little in-context ability.")
    tasks_root = os.path.join(ROOT, "eval", "tasks")
    names = a.task or sorted(os.listdir(tasks_root))
    for n in names:
        if not os.path.exists(os.path.join(tasks_root, n, "task.json")):
            print(f"run.py: no task {n!r} under eval/tasks", file=sys.stderr)
            return 2
    mnames = {}
    for m in a.model:
        if not os.path.exists(m):
            print(f"run.py: no model file {m}", file=sys.stderr)
            return 2
        base = os.path.splitext(os.path.basename(m))[0]
        mnames[m] = base if base not in mnames.values() else f"{base}{len(mnames)}"
    r = Runner(a)
    t0 = time.monotonic()
    jobs = [(m, mnames[m], os.path.join(tasks_root, n)) for m in a.model for n in names]
    cmdline = "eval/run.sh " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    jpath = a.json or os.path.join(
        ROOT, "eval", "results",
        "baseline-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M") + ".json")
    doc = {"models": list(mnames.values()),
           "model_paths": {v: os.path.relpath(k, ROOT) if k.startswith(ROOT) else k
                           for k, v in mnames.items()},
           "grid": ",".join(f"{lr}:{st}" for lr, st in a.grid), "seeds": a.seeds,
           "kl_weight": a.kl, "methods": a.methods, "workers": a.workers, "threads": a.threads, "limit": a.limit,
           "notes": notes, "command": cmdline.strip(),
           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                       "system": f"{platform.system()} {platform.release()}"},
           "json": os.path.relpath(jpath, ROOT), "results": [], "errors": []}

    def save(final):
        doc["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        doc["wall_seconds"] = time.monotonic() - t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        doc["cpu_seconds"] = ru.ru_utime + ru.ru_stime  # the rwkvd commands that have ended
        doc["complete"] = final
        order = {(mnames[m], os.path.basename(d)): i for i, (m, _, d) in enumerate(jobs)}
        doc["results"].sort(key=lambda x: order.get((x["model"], x["task"]), 0))
        if a.ci:
            return
        os.makedirs(os.path.dirname(jpath), exist_ok=True)
        with open(jpath + ".tmp", "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        os.replace(jpath + ".tmp", jpath)

    with cf.ThreadPoolExecutor(max_workers=max(1, a.workers)) as ex:
        futs = {ex.submit(r.task, *j): j for j in jobs}
        for f in cf.as_completed(futs):
            try:
                doc["results"].append(f.result())
            except Failure as e:
                print(f"run.py: {e}", file=sys.stderr)
                doc["errors"].append(str(e))
            save(False)
    save(True)
    results = doc["results"]
    wall = doc["wall_seconds"]
    if doc["errors"]:
        print(f"run.py: {len(doc['errors'])} of {len(jobs)} (model, task) runs failed",
              file=sys.stderr)
        return 1
    if a.ci:
        bad = []
        for rec in results:
            z, t = rec["val_zero_shot"], rec["val_tuned"]
            log(f"ci: {rec['task']}: validation {rec['metric']} "
                f"{z[rec['metric']]:.3f} -> {t[rec['metric']]:.3f}, loss {z['loss']:.3f} -> "
                f"{t['loss']:.3f}")
            bad += [f"{rec['task']}: {p}" for p in ci_check(rec)]
        for b in bad:
            print(f"run.py --ci: the tuner did not learn: {b}", file=sys.stderr)
        log(f"ci: {'FAILED' if bad else 'ok'} in {wall:.1f} s")
        return 1 if bad else 0
    log(f"raw results: {jpath}; {wall / 60:.1f} minutes")
    if not a.no_doc:
        try:
            write_doc(a.doc, doc, cmdline.strip())
        except Failure as e:
            print(f"run.py: {e}", file=sys.stderr)
            return 1
        log(f"table written into {a.doc}")
    else:
        print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
