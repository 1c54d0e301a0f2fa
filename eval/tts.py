#!/usr/bin/env python3
"""Rows of docs/EVALUATION.md for learning from a larger model: the observer method and
best-of-K with a judge (test-time scaling).

For each task (generate tasks of eval/tasks/):
  * expert states: the student and the teacher are each state-tuned on the gold train split
    (`rwkvd tune`, the learning rate and steps given by --student-pick / --teacher-pick,
    normally the baseline table's picks on the validation split), seed 0;
  * a teacher server (`rwkvd serve`, the teacher model, the teacher's expert state uploaded)
    and a student server whose observer jobs ask that teacher (`--teacher-url`);
  * observer rows: `POST /tune` with method observer on the train prompts alone (the
    teacher writes the answers), once with the teacher's top-k log-probabilities (KL) and
    once with its text only (cross-entropy: standard tuning on the teacher's answers), at the
    student's pick, for each seed; evaluated with `rwkvd eval` on the test split;
  * rl rows: `POST /tune` with method rl from the student's expert state on the train
    prompts, scored by a checker (the gold answer, as a regular expression) or by the
    teacher server as judge (no gold answers), one setting (--rl-steps, --rl-lr, --rl-k);
  * best-of-K rows: the student with its expert state answers each test prompt with
    `best_of` K candidates (temperature --bo-temperature) scored by the teacher server as
    judge (`yes_logprob`) or by the student itself (`self`); exact match of the returned
    answer, candidate tokens, judge tokens and wall time, for K in --k.

    eval/tts.py --student models/student.safetensors --teacher models/teacher.safetensors \\
        --task arith_steps --student-pick 1:30 --teacher-pick 1:30 --json OUT.json

Only the Python standard library and the rwkvd binary are used.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def http(port, method, path, body=None, raw=None, timeout=600):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/octet-stream" if raw is not None
                                          else "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            b = r.read()
            return r.status, (json.loads(b) if b[:1] in (b"{", b"[") else b)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Server:
    def __init__(self, rwkvd, model, tmp, name, extra=()):
        self.log = open(os.path.join(tmp, name + ".log"), "a")
        self.p = subprocess.Popen([rwkvd, "serve", "--model", model, "--port", "0", "--threads", "1",
                                   "--data-dir", os.path.join(tmp, name), "--max-best-of", "16"]
                                  + list(extra), stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.p.stdout.readline()
        if "listening on http://" not in line:
            raise SystemExit(f"tts.py: {name} server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        st, models = http(self.port, "GET", "/v1/models")
        self.model_id = models["data"][0]["id"]

    def put_state(self, sid, path):
        with open(path, "rb") as f:
            st, j = http(self.port, "PUT", f"/states/{sid}", raw=f.read())
        if st not in (200, 201):
            raise SystemExit(f"tts.py: PUT /states/{sid}: {st} {j}")

    def stop(self):
        self.p.terminate()
        self.p.wait()


def run(argv):
    t0 = time.monotonic()
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise SystemExit(f"tts.py: {' '.join(argv[:2])}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout, time.monotonic() - t0


def read_split(task_dir, split):
    with open(os.path.join(task_dir, f"{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def evaluate(a, model, task_dir, states):
    argv = [a.rwkvd, "eval", "--model", model, "--task", task_dir, "--split", "test", "--shots", "0",
            "--threads", "1", "--quiet", "--collateral", os.path.join(ROOT, "eval", "collateral")]
    for s in states:
        argv += ["--state", s]
    out, _ = run(argv)
    res = {}
    for r in json.loads(out)["results"]:
        ent = res.setdefault(r["state"], {})
        if r["task"] == "collateral":
            ent["collateral_kept"] = r["metrics"]["collateral_kept"]
        else:
            ent.update(r["metrics"])
    return res


def wait_job(port, jid, timeout=3600):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st, j = http(port, "GET", f"/jobs/{jid}")
        if j.get("status") in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(0.5)
    raise SystemExit(f"tts.py: job {jid} did not end")


def ere_escape(s):
    return "".join("\\" + c if c in ".[]()*+?{}|^$\\" else c for c in s)


def strip_ws(s):
    return s.strip(" \t\n\v\f\r")


def job_arm(a, student, task, task_dir, tmp, arm, body, extra=None):
    """One arm's runs: for each seed a tuning job (`POST /tune` with body, the seed and an
    output state named after the arm and seed) on the student's server, its state fetched
    and then all of them evaluated on the test split. Returns the runs, each with its seed,
    seconds (job wall time), test metrics and the extra fields."""
    runs = []
    for seed in range(a.seeds):
        log(f"{task}: {arm} seed {seed}")
        sid = f"{arm.replace('_', '-')}-{seed}"
        t1 = time.monotonic()
        st, j = http(student.port, "POST", "/tune", dict(body, output_state=sid, seed=seed))
        if st != 202:
            raise SystemExit(f"tts.py: POST /tune ({arm}): {st} {j}")
        j = wait_job(student.port, j["id"])
        if j["status"] != "succeeded":
            raise SystemExit(f"tts.py: {body['method']} job {j['id']} {j['status']}: "
                             f"{j.get('error')}")
        dt = time.monotonic() - t1
        st, blob = http(student.port, "GET", f"/states/{sid}/file")
        if st != 200:
            raise SystemExit(f"tts.py: GET /states/{sid}/file: {st} {blob}")
        path = os.path.join(tmp, f"{task}.{sid}.st")
        with open(path, "wb") as f:
            f.write(blob)
        runs.append(dict({"seed": seed, "seconds": dt, "state": path}, **(extra or {})))
    ev = evaluate(a, a.student, task_dir, [r["state"] for r in runs])
    for r in runs:
        r["test"] = ev.pop(r["state"])
        del r["state"]
    return runs


def task_rows(a, tmp, task):
    task_dir = os.path.join(ROOT, "eval", "tasks", task)
    meta = json.load(open(os.path.join(task_dir, "task.json")))
    if meta["kind"] != "generate":
        raise SystemExit(f"tts.py: {task} is not a generate task")
    stop = meta.get("stop", ["\n"])
    stop = stop if isinstance(stop, list) else [stop]
    max_tokens = meta.get("max_tokens", 64)
    train = read_split(task_dir, "train")
    gold = os.path.join(tmp, f"{task}.gold.jsonl")
    with open(gold, "w") as f:
        for x in train:
            f.write(json.dumps({"prompt": x["prompt"], "completion": x["completion"] + stop[0]}) + "\n")
    rec = {"task": task, "n_train": len(train)}
    experts = {}
    for who, model, (lr, steps) in (("student", a.student, a.student_pick), ("teacher", a.teacher, a.teacher_pick)):
        st = os.path.join(tmp, f"{task}.{who}.expert.st")
        log(f"{task}: {who} expert state (lr {lr}, {steps} steps)")
        _, dt = run([a.rwkvd, "tune", "--model", model, "--data", gold, "--out", st, "--steps", str(steps),
                     "--lr", str(lr), "--seed", "0", "--batch", "4", "--val-split", "0", "--threads", "1",
                     "--quiet"])
        experts[who] = st
        ev = evaluate(a, model, task_dir, [st])
        rec[f"{who}_standard"] = {"test": ev[st], "seconds": dt, "lr": lr, "steps": steps}
        rec[f"{who}_zero_shot"] = {"test": evaluate(a, model, task_dir, [])["base"]}
    teacher = Server(a.rwkvd, a.teacher, tmp, f"teacher-{task}")
    student = None
    try:
        teacher.put_state("expert", experts["teacher"])
        turl = f"http://127.0.0.1:{teacher.port}/v1"
        student = Server(a.rwkvd, a.student, tmp, f"student-{task}",
                         ["--teacher-url", turl, "--teacher-model", f"{teacher.model_id}:expert",
                          "--judge-url", turl, "--judge-model", f"{teacher.model_id}:expert",
                          "--judge-calls-per-min", "1000000"])
        student.put_state("expert", experts["student"])
        lr, steps = a.student_pick
        prompts = [{"prompt": x["prompt"]} for x in train]
        for arm, k in (("observer_kl", a.top_k), ("observer_text", 0)):
            tcfg = {"max_tokens": max_tokens, "stop": stop[:4]}
            if k:
                tcfg["top_logprobs"] = k
            rec[arm] = job_arm(a, student, task, task_dir, tmp, arm, {
                "method": "observer", "steps": steps, "lr": lr, "batch": 4, "val_split": 0,
                "teacher": tcfg, "dataset": prompts})
        # rl from the student's expert state: a checker (the gold answer as a regex) or the
        # teacher as judge (no gold answers), one untuned setting
        for arm in ("rl_checker", "rl_judge"):
            data = []
            for x in train:
                d = {"prompt": x["prompt"]}
                if arm == "rl_checker":
                    d["regex"] = "^" + ere_escape(strip_ws(x["completion"])) + "(\n|$)"
                data.append(d)
            rec[arm] = job_arm(a, student, task, task_dir, tmp, arm, {
                "method": "rl", "init_state": "expert", "steps": a.rl_steps, "lr": a.rl_lr,
                "batch": 4, "rl_k": a.rl_k, "rl_max_tokens": min(max_tokens, 1024),
                "rl_temperature": 1.0, "dataset": data},
                {"steps": a.rl_steps, "lr": a.rl_lr, "k": a.rl_k})
        # best-of-K on the test split with the student's expert state
        test = read_split(task_dir, "test")
        for judge in ("teacher", "self"):
            for K in a.k:
                log(f"{task}: best-of-{K}, judge {judge}")
                ok, toks, jtoks = 0, 0, 0
                t1 = time.monotonic()
                for i, x in enumerate(test):
                    body = {"prompt": x["prompt"], "state": "expert", "max_tokens": max_tokens,
                            "stop": stop, "temperature": 0 if K == 1 else a.bo_temperature,
                            "seed": 1000 + i, "best_of": K, "return_scores": True,
                            "judge": "self" if judge == "self" else "default"}
                    st, j = http(student.port, "POST", "/generate", body)
                    if st != 200:
                        raise SystemExit(f"tts.py: /generate best_of {K}: {st} {j}")
                    text = j["choices"][0]["text"] if "choices" in j else j.get("text", "")
                    ok += strip_ws(text) == strip_ws(x["completion"])
                    u = j.get("usage", {})
                    toks += u.get("completion_tokens", 0)
                    jtoks += (j.get("best_of") or {}).get("judge_tokens", 0)
                rec.setdefault("best_of", []).append({
                    "judge": judge, "k": K, "exact_match": ok / len(test), "n": len(test),
                    "candidate_tokens": toks, "judge_tokens": jtoks, "seconds": time.monotonic() - t1})
    finally:
        if student:
            student.stop()
        teacher.stop()
    return rec


def ms(xs, pct=True):
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * sd:.1f}%" if pct else f"{m:.3f} ± {sd:.3f}"


def table(doc):
    """Markdown rows of a run's JSON (the form docs/EVALUATION.md shows)."""
    out = ["| task | model and method | test exact match | loss (nats/token) | seconds | "
           "tokens (candidates / judge) | collateral kept |", "|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        t = r["task"]
        for who in ("teacher", "student"):
            z = r[f"{who}_zero_shot"]["test"]
            out.append(f"| {t} | {who}, zero-shot | {100 * z['exact_match']:.1f}% | {z['loss']:.3f} | | | |")
            e = r[f"{who}_standard"]
            out.append(f"| | {who} + standard on gold (lr {e['lr']}, {e['steps']} steps, seed 0) | "
                       f"{100 * e['test']['exact_match']:.1f}% | {e['test']['loss']:.3f} | "
                       f"{e['seconds']:.1f} | | {100 * e['test']['collateral_kept']:.1f}% |")
        for arm, label in (("observer_kl", "student + observer, KL to the teacher's top-k"),
                           ("observer_text", "student + observer, text only (standard on the teacher's answers)"),
                           ("rl_checker", "student + standard, then rl with a checker"),
                           ("rl_judge", "student + standard, then rl with the teacher as judge")):
            runs = r.get(arm)
            if not runs:
                continue
            out.append(f"| | {label} ({len(runs)} seeds) | {ms([x['test']['exact_match'] for x in runs])} | "
                       f"{ms([x['test']['loss'] for x in runs], False)} | "
                       f"{sum(x['seconds'] for x in runs) / len(runs):.1f} | | "
                       f"{ms([x['test']['collateral_kept'] for x in runs])} |")
        for b in r.get("best_of", []):
            j = "the teacher as judge" if b["judge"] == "teacher" else "its own score"
            out.append(f"| | student + standard, best of {b['k']} ({j}) | {100 * b['exact_match']:.1f}% | | "
                       f"{b['seconds']:.1f} | {b['candidate_tokens']} / {b['judge_tokens']} | |")
    return "\n".join(out)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(json.load(open(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default=os.path.join(ROOT, "models", "student.safetensors"))
    ap.add_argument("--teacher", default=os.path.join(ROOT, "models", "teacher.safetensors"))
    ap.add_argument("--task", action="append", required=True)
    ap.add_argument("--student-pick", default="1:30", help="lr:steps of the student's tuning")
    ap.add_argument("--teacher-pick", default="1:30", help="lr:steps of the teacher's expert state")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=8, help="top_logprobs of the KL observer rows")
    ap.add_argument("--k", default="1,4,16", help="best_of values")
    ap.add_argument("--bo-temperature", type=float, default=0.7)
    ap.add_argument("--rl-steps", type=int, default=10)
    ap.add_argument("--rl-lr", type=float, default=0.05)
    ap.add_argument("--rl-k", type=int, default=4)
    ap.add_argument("--rwkvd", default=os.path.join(ROOT, "build", "server", "rwkvd"))
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    pick = lambda s: (float(s.split(":")[0]), int(s.split(":")[1]))
    a.student_pick, a.teacher_pick = pick(a.student_pick), pick(a.teacher_pick)
    a.k = [int(x) for x in a.k.split(",")]
    tmp = tempfile.mkdtemp(prefix="rwkvd-tts-")
    t0 = time.monotonic()
    doc = {"command": "eval/tts.py " + " ".join(sys.argv[1:]), "student": a.student, "teacher": a.teacher,
           "results": []}
    try:
        for t in a.task:
            doc["results"].append(task_rows(a, tmp, t))
            doc["wall_seconds"] = time.monotonic() - t0
            with open(a.json + ".tmp", "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(a.json + ".tmp", a.json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"done in {(time.monotonic() - t0) / 60:.1f} min: {a.json}")


if __name__ == "__main__":
    main()
