#!/usr/bin/env python3
"""Evaluation over HTTP against a real daemon on the demo model: POST /eval
answers the document of `rwkvd eval` with the same metrics (checked against
the CLI on the same tasks and state, a kernel state included), reads only
the caller's states, gives a kernel tuning job's eval_task the read-out term
(its "end" loss equals POST /eval on the published state), and
refuses bad input with the field-error codes and explicit limits; POST
/eval/jobs runs as a job with progress events over SSE, a result on the job,
cancel, tenancy, and a clear failure after the server was killed mid-run.

usage: test_eval_http.py RWKVD SOURCE_ROOT
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import rwkvd_http  # noqa: E402

RWKVD, ROOT = sys.argv[1], sys.argv[2]
MODEL = os.path.join(ROOT, "models", "demo.safetensors")
ALICE, BOB = "key-alice-0001", "key-bob-0000001"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def start(tmp, *extra):
    return rwkvd_http.start(RWKVD, MODEL, tmp, "server",
                            ["--api-keys", os.path.join(tmp, "keys"), *extra])


def req(port, method, path, body=None, key=ALICE, raw=None):
    return rwkvd_http.request(port, method, path, body, raw=raw, key=key, timeout=120)


def events(port, job, key=ALICE):
    return rwkvd_http.events(port, job, key=key)


def wait_status(port, job, want, secs=60):
    return rwkvd_http.wait_job(port, job, want, timeout=secs, key=ALICE, or_none=True)


CAPS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
        ("Japan", "Tokyo"), ("Egypt", "Cairo")]
Q = "User: What is the capital of {}?\n\nAssistant:"
ROWS = [{"prompt": Q.format(a), "completion": f" The capital of {a} is {b}."} for a, b in CAPS]
CH = [{"prompt": Q.format(a) + " The capital of " + a + " is",
       "choices": [" " + b + ".", " a city where many people live."], "answer": 0}
      for a, b in CAPS]
TASKS = [
    {"name": "capitals", "kind": "generate", "max_tokens": 48, "stop": ["\n"], "shots": 1,
     "items": ROWS[3:], "train": ROWS[:3]},
    {"name": "caps-choice", "kind": "choice", "items": CH},
    {"name": "caps-loss", "kind": "loss", "items": ROWS},
]
COLL = {"max_tokens": 40, "stop": ["\n\n"],
        "items": [{"prompt": "User: Hello!\n\nAssistant:"},
                  {"prompt": "User: What do bees make?\n\nAssistant:"}]}


def task_dirs(tmp):
    """The same tasks as directories for the CLI."""
    dirs = []
    for t in TASKS:
        d = os.path.join(tmp, "tasks", t["name"])
        os.makedirs(d)
        json.dump({k: v for k, v in t.items() if k not in ("items", "train")},
                  open(os.path.join(d, "task.json"), "w"))
        for split, rows in (("test", t["items"]), ("train", t.get("train", []))):
            with open(os.path.join(d, split + ".jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        dirs.append(d)
    d = os.path.join(tmp, "tasks", "coll")
    os.makedirs(d)
    json.dump({"kind": "generate", "max_tokens": 40, "stop": ["\n\n"]},
              open(os.path.join(d, "task.json"), "w"))
    with open(os.path.join(d, "test.jsonl"), "w") as f:
        f.writelines(json.dumps(dict(r, completion="")) + "\n" for r in COLL["items"])
    return dirs, d


def main():
    tmp = tempfile.mkdtemp(prefix="rwkvd-eval-")
    with open(os.path.join(tmp, "keys"), "w") as f:
        f.write(f"{ALICE} alice\n{BOB} bob\n")
    st_file = os.path.join(tmp, "pirate.safetensors")
    subprocess.run([RWKVD, "tune", "--model", MODEL, "--data",
                    os.path.join(ROOT, "models", "demo-style.jsonl"), "--out", st_file,
                    "--steps", "2", "--lr", "0.05", "--val-split", "0", "--quiet",
                    "--threads", "1"], check=True, capture_output=True)
    srv, port = start(tmp)
    try:
        st, _ = req(port, "PUT", "/states/pirate", raw=open(st_file, "rb").read())
        check(st in (200, 201), f"PUT /states/pirate: {st}")

        # --- POST /eval: the CLI's document and numbers -------------------------
        body = {"tasks": TASKS, "states": ["pirate"], "base": True, "collateral": COLL}
        st, doc = req(port, "POST", "/eval", body)
        if check(st == 200, f"POST /eval: {st} {doc}"):
            check(doc["model"]["name"] and len(doc["model"]["fingerprint"]) == 16,
                  f"model block {doc['model']}")
            dirs, cdir = task_dirs(tmp)
            args = [RWKVD, "eval", "--model", MODEL, "--state", st_file, "--base",
                    "--collateral", cdir, "--threads", "1", "--quiet"]
            for d in dirs:
                args += ["--task", d]
            cli = json.loads(subprocess.run(args, check=True, capture_output=True).stdout)
            check(cli["model"]["fingerprint"] == doc["model"]["fingerprint"], "fingerprints")

            def norm(rs, label):
                return [(label.get(r["state"], r["state"]), r["task"], r["n"], r["shots"],
                         r["metrics"], r["tokens"]) for r in rs]
            a = norm(doc["results"], {})
            b = norm(cli["results"], {st_file: "pirate"})
            check(a == b, f"POST /eval and rwkvd eval differ:\n{a}\n{b}")
            kinds = {r["task"]: set(r["metrics"]) for r in doc["results"]}
            check(kinds.get("collateral") == {"collateral_kept"}, f"metric keys {kinds}")

        # a kernel state: PUT (on the thread pool) keeps its kernel part, and
        # POST /eval evaluates it with its read-out term, as the CLI does
        kfile = os.path.join(tmp, "kernel.safetensors")
        subprocess.run([RWKVD, "tune", "--model", MODEL, "--data",
                        os.path.join(ROOT, "models", "demo-style.jsonl"), "--out", kfile,
                        "--method", "kernel", "--kernel-m", "16", "--steps", "2", "--lr", "0.05",
                        "--val-split", "0", "--quiet", "--threads", "1"], check=True,
                       capture_output=True)
        # rwkvd tune --init with a kernel state of another kernel_m: refused
        p = subprocess.run([RWKVD, "tune", "--model", MODEL, "--data",
                            os.path.join(ROOT, "models", "demo-style.jsonl"), "--out",
                            os.path.join(tmp, "k8.safetensors"), "--init", kfile, "--method",
                            "kernel", "--kernel-m", "8", "--steps", "1", "--quiet",
                            "--threads", "1"], capture_output=True, text=True)
        check(p.returncode == 1 and "is a kernel state with --kernel-m 16" in p.stderr,
              f"tune --init kernel state, other kernel_m: {p.returncode} {p.stderr!r}")
        st, m = req(port, "PUT", "/states/kpirate", raw=open(kfile, "rb").read())
        check(st in (200, 201) and m.get("kernel_m") == 16, f"PUT a kernel state: {st} {m}")
        st, kdoc = req(port, "POST", "/eval", {"tasks": TASKS, "states": ["kpirate"]})
        if check(st == 200, f"POST /eval, kernel state: {st} {kdoc}"):
            dirs = [os.path.join(tmp, "tasks", t["name"]) for t in TASKS]
            if not os.path.isdir(dirs[0]):
                dirs, _ = task_dirs(tmp)
            args = [RWKVD, "eval", "--model", MODEL, "--state", kfile, "--threads", "1",
                    "--quiet"]
            for d in dirs:
                args += ["--task", d]
            kcli = json.loads(subprocess.run(args, check=True, capture_output=True).stdout)
            a = [(r["task"], r["metrics"], r["tokens"]) for r in kdoc["results"]]
            b = [(r["task"], r["metrics"], r["tokens"]) for r in kcli["results"]]
            check(a == b, f"kernel state: POST /eval and rwkvd eval differ:\n{a}\n{b}")

        # tenancy: bob has no state "pirate"
        st, e = req(port, "POST", "/eval", {"tasks": TASKS[2:], "states": ["pirate"]}, key=BOB)
        check(st == 404 and e["error"]["code"] == "state_not_found",
              f"another tenant's state: {st} {e}")

        # bad input: field errors with the field named
        bad = [
            ({"tasks": {}}, 400, "invalid_type", "tasks"),
            ({"tasks": [dict(TASKS[2], kind="mc")]}, 400, "invalid_value", "tasks[0]"),
            ({"tasks": [dict(TASKS[1], items=[CH[0], {"prompt": "x", "choices": ["a"],
                                                      "answer": 0}])]},
             400, "invalid_value", "tasks[0].items[1]"),
            ({"tasks": TASKS[2:], "shots": 2.0}, 400, "invalid_type", "shots"),
            ({"tasks": TASKS[2:], "states": ["Bad Id"]}, 400, "invalid_value", "states"),
            ({"tasks": TASKS[2:], "nonsense": 1}, 400, "unknown_parameter", "nonsense"),
            ({"tasks": [dict(TASKS[2], items=ROWS * 11)]}, 400, "out_of_range", "tasks"),
            ({"tasks": [dict(TASKS[0], max_tokens=1000)]}, 400, "out_of_range",
             "tasks[0].max_tokens"),
            ({"tasks": [dict(TASKS[0], max_tokens=256, train=[],
                             items=[dict(r, prompt="x" * 1000 + r["prompt"]) for r in ROWS * 10])],
              "shots": 0, "states": ["pirate"], "base": True},
             400, "out_of_range", "tasks"),
            ({"tasks": [dict(TASKS[0], shots=5)]}, 400, "invalid_value", "tasks[0].train"),
            ({}, 400, "invalid_value", "tasks"),
        ]
        for b, want_st, code, param in bad:
            st, e = req(port, "POST", "/eval", b)
            err = (e or {}).get("error", {})
            check(st == want_st and err.get("code") == code and err.get("param") == param,
                  f"bad body {json.dumps(b)[:80]}: {st} {err}")
        st, e = req(port, "POST", "/eval", raw=b"{not json")
        check(st == 400 and e["error"]["code"] == "invalid_json", f"bad JSON: {st} {e}")

        # --- POST /eval/jobs: progress over SSE, result on the job ---------------
        st, j = req(port, "POST", "/eval/jobs", body)
        if check(st == 202 and j["object"] == "eval.job", f"POST /eval/jobs: {st} {j}"):
            evs = events(port, j["id"])
            kinds = [e for e, _ in evs]
            check("progress" in kinds, f"no progress events: {kinds}")
            last = evs[-1][1] if evs else {}
            check(last.get("status") == "succeeded" and "result" in last,
                  f"last event {last}")
            prog = [d for e, d in evs if e == "progress"]
            check(prog and prog[-1]["done"] == prog[-1]["total"] and prog[-1]["total"] > 0,
                  f"progress events {prog[-3:]}")
            st, jj = req(port, "GET", f"/jobs/{j['id']}")
            check(st == 200 and jj["result"] and
                  [r["metrics"] for r in jj["result"]["results"]] ==
                  [r["metrics"] for r in doc["results"]],
                  "the job's result differs from POST /eval")
            st, _ = req(port, "GET", f"/jobs/{j['id']}", key=BOB)
            check(st == 404, f"bob sees alice's job: {st}")
            st, _ = req(port, "GET", f"/v1/fine_tuning/jobs/{j['id']}")
            check(st == 404, f"an evaluation job on the fine-tuning route: {st}")
            st, lst = req(port, "GET", "/jobs")
            check(any(x["id"] == j["id"] for x in lst["data"]), "the job is not in GET /jobs")

        # a job with another tenant's state fails, saying why
        st, j = req(port, "POST", "/eval/jobs", {"tasks": TASKS[2:], "states": ["pirate"]},
                    key=BOB)
        if check(st == 202, f"bob's job: {st}"):
            t = time.monotonic() + 30
            jj = None
            while time.monotonic() < t:
                _, jj = req(port, "GET", f"/jobs/{j['id']}", key=BOB)
                if jj["status"] in ("failed", "succeeded"):
                    break
                time.sleep(0.05)
            check(jj["status"] == "failed" and jj["error"]["code"] == "state_not_found",
                  f"bob's job with alice's state: {jj}")

        # cancel a long job while it runs
        long_body = {"tasks": [{"name": "long", "kind": "generate", "max_tokens": 400,
                                "stop": ["\x01"], "items": ROWS * 40}], "states": ["pirate"],
                     "base": True}
        st, j = req(port, "POST", "/eval/jobs", long_body)
        if check(st == 202, f"long job: {st} {j}"):
            check(wait_status(port, j["id"], {"running"}) is not None, "the long job never ran")
            st, c = req(port, "POST", f"/jobs/{j['id']}/cancel")
            jj = wait_status(port, j["id"], {"cancelled", "succeeded", "failed"})
            check(jj and jj["status"] == "cancelled" and
                  jj["progress"]["done"] < jj["progress"]["total"], f"cancel: {jj}")

        # a tuning job with an eval_task: its results on the starting and the tuned state
        tune = {"output_state": "pirate2", "steps": 1, "lr": 0.05, "val_split": 0,
                "dataset": [json.loads(l) for l in
                            open(os.path.join(ROOT, "models", "demo-style.jsonl"))][:4],
                "eval_task": {"name": "caps-choice", "kind": "choice", "items": CH[:3]}}
        st, j = req(port, "POST", "/tune", tune)
        if check(st == 202, f"POST /tune with eval_task: {st} {j}"):
            evs = events(port, j["id"])
            et = [d for e, d in evs if e == "eval" and "eval_task" in d]
            _, jj = req(port, "GET", f"/jobs/{j['id']}")
            res = jj.get("eval_task") or []
            check(jj["status"] == "succeeded" and et and res == et[0]["eval_task"] and
                  [(r["state"], r["task"]) for r in res] == [("start", "caps-choice"),
                                                              ("end", "caps-choice")] and
                  set(res[1]["metrics"]) == {"acc_raw", "acc_norm", "loss"},
                  f"eval_task results: {jj.get('status')} {res} {et}")
        # the same with method kernel: eval_task's "end" is the published kernel
        # state with its read-out term, so POST /eval on it gives the same loss
        ltask = {"name": "caps-loss", "kind": "loss", "items": ROWS[:3]}
        ktune = dict(tune, output_state="kpirate2", method="kernel", kernel_m=16, steps=2,
                     eval_task=ltask)
        st, j = req(port, "POST", "/tune", ktune)
        if check(st == 202, f"POST /tune method kernel with eval_task: {st} {j}"):
            events(port, j["id"])
            _, jj = req(port, "GET", f"/jobs/{j['id']}")
            res = jj.get("eval_task") or []
            st, kd = req(port, "POST", "/eval", {"tasks": [ltask], "states": ["kpirate2"]})
            if check(jj["status"] == "succeeded" and len(res) == 2 and st == 200,
                     f"kernel tuning job: {jj.get('status')} {res} {st} {kd}"):
                a, b = res[1]["metrics"]["loss"], kd["results"][0]["metrics"]["loss"]
                check(abs(a - b) <= 1e-6 * max(1.0, abs(b)) and
                      res[0]["metrics"]["loss"] != a,
                      f"kernel eval_task loss {res}, POST /eval on the result {b}")
                # a kernel job from that kernel state starts where it ended: its
                # eval_task "start" is the state's loss (P and features kept)
                more = dict(ktune, output_state="kpirate3", init_state="kpirate2", lr=1e-7,
                            kernel_seed=5, steps=1)
                st, j2 = req(port, "POST", "/tune", more)
                if check(st == 202, f"POST /tune from a kernel state: {st} {j2}"):
                    events(port, j2["id"])
                    _, jj2 = req(port, "GET", f"/jobs/{j2['id']}")
                    r2 = jj2.get("eval_task") or []
                    check(jj2["status"] == "succeeded" and len(r2) == 2 and
                          abs(r2[0]["metrics"]["loss"] - b) <= 1e-6 * max(1.0, abs(b)),
                          f"from a kernel state: {jj2.get('status')} {r2}, state's loss {b}")
                # ... and one asking for another kernel_m fails clearly
                st, j3 = req(port, "POST", "/tune", dict(more, output_state="kpirate4",
                                                         kernel_m=8))
                if check(st == 202, f"POST /tune kernel_m 8 from a kernel_m 16 state: {st}"):
                    events(port, j3["id"])
                    _, jj3 = req(port, "GET", f"/jobs/{j3['id']}")
                    err = jj3.get("error") or {}
                    check(jj3["status"] == "failed" and err.get("code") == "init_state_mismatch"
                          and "kernel_m 16" in err.get("message", ""),
                          f"kernel_m mismatch: {jj3.get('status')} {err}")
        bad_tune = dict(tune, eval_task={"kind": "choice", "items": [{"prompt": "x"}]})
        st, e = req(port, "POST", "/tune", bad_tune)
        check(st == 400 and e["error"]["param"] == "eval_task.items[0]",
              f"a bad eval_task: {st} {e}")

        # killed mid-run: after the restart the job is failed, clearly
        st, j = req(port, "POST", "/eval/jobs", long_body)
        # an item done: the record on disk says "running" by then
        t = time.monotonic() + 60
        while time.monotonic() < t:
            _, jj = req(port, "GET", f"/jobs/{j['id']}")
            if jj["progress"]["done"] > 0:
                break
            time.sleep(0.05)
        check(jj["progress"]["done"] > 0, f"second long job never ran: {jj}")
        srv.send_signal(signal.SIGKILL)
        srv.wait()
        srv, port = start(tmp, "--request-timeout", "1")
        st, jj = req(port, "GET", f"/jobs/{j['id']}")
        check(st == 200 and jj["status"] == "failed" and
              jj["error"]["code"] == "interrupted" and "submit it again" in
              jj["error"]["message"], f"after kill -9: {st} {jj}")
        # the finished jobs keep their results across the restart
        st, lst = req(port, "GET", "/jobs")
        done = [x for x in lst["data"] if x.get("kind") == "eval" and x["status"] == "succeeded"]
        check(done and done[0]["result"] and done[0]["result"]["results"],
              "a succeeded job lost its result across the restart")
        # POST /eval stops at --request-timeout (1 s here)
        slow = {"tasks": [{"kind": "generate", "max_tokens": 256, "stop": ["\x01"],
                           "items": [{"prompt": "x%d" % i, "completion": ""} for i in range(60)]}]}
        st, e = req(port, "POST", "/eval", slow)
        check(st == 504 and e["error"]["code"] == "deadline_exceeded", f"deadline: {st} {e}")
    finally:
        rwkvd_http.stop([srv])
    for f in failures:
        print("FAIL:", f)
    if failures:
        print(open(os.path.join(tmp, "server.log")).read()[-3000:])
    print("ok" if not failures else f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


main()
