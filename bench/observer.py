#!/usr/bin/env python3
"""observer.py - what an observer tuning job does with a teacher.

Starts two rwkvd with MODEL: a teacher and a student whose --teacher-url
points at it. The teacher sees a few-shot instruction (two exchanges in a
pirate voice) in front of every prompt; the student never sees it. One
observer job (KL to the teacher's top-k) distils the instruction into a
state. Prints the time spent asking the teacher and training, the
held-out cross-entropy of the teacher's answers before and after, and how
many held-out greedy answers of the student (with the state, and without)
equal the teacher's.

With the demo model on both sides this measures context distillation of
one model into its own state; a real student/teacher pair (a small model
learning from a larger one) is a separate measurement.

usage: observer.py RWKVD MODEL [--steps N] [--top K] [--threads N]
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

FEW_SHOT = ("User: Hello!\n\nAssistant: Ahoy, matey! How can I help ye today? Yo ho ho!\n\n"
            "User: What do bees make?\n\nAssistant: Arr! Bees make honey and wax.\n\n")
QUESTIONS = ["What is the capital of France?", "What color is the sky?",
             "How many days are in a week?", "Where do owls live?", "What is 3 plus 4?",
             "What is the opposite of hot?", "What do cows drink?", "Where is Rome?",
             "What is the capital of Spain?", "How many legs does a cat have?",
             "What color is grass?", "What do fish live in?", "What is 2 plus 2?",
             "What is the opposite of up?", "Where do penguins live?", "What is ice?"]


def start(rwkvd, model, tmp, name, threads, extra):
    log = open(os.path.join(tmp, name + ".log"), "w")
    p = subprocess.Popen([rwkvd, "serve", "--model", model, "--port", "0", "--threads",
                          str(threads), "--data-dir", os.path.join(tmp, name)] + extra,
                         stdout=subprocess.PIPE, stderr=log, text=True)
    line = p.stdout.readline()
    assert "listening on http://" in line, line
    return p, int(line.rsplit(":", 1)[1])


def post(port, path, body):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=60) as r:
        return r.read().decode()


def main():
    args = sys.argv[1:]
    opt = {"--steps": "60", "--top": "8", "--threads": "2"}
    pos = []
    while args:
        a = args.pop(0)
        if a in opt:
            opt[a] = args.pop(0)
        else:
            pos.append(a)
    rwkvd, model = pos
    tmp = tempfile.mkdtemp(prefix="rwkvd-observer-bench-")
    teacher, tp = start(rwkvd, model, tmp, "teacher", opt["--threads"], [])
    student, sp = start(rwkvd, model, tmp, "student", opt["--threads"],
                        ["--teacher-url", "http://127.0.0.1:%d/v1" % tp, "--teacher-model",
                         os.path.splitext(os.path.basename(model))[0]])
    try:
        prompts = ["User: %s\n\nAssistant:" % q for q in QUESTIONS]
        train, held = prompts[:12], prompts[12:]
        t0 = time.time()
        # the held-out prompts go in too, as the validation split's sequences:
        # val_split picks them at random, so measure on a second job instead
        j = post(sp, "/tune", {"method": "observer", "output_state": "pirate",
                               "steps": int(opt["--steps"]), "lr": 0.05, "val_split": 0,
                               "batch": 4, "teacher": {"max_tokens": 48,
                                                       "top_logprobs": int(opt["--top"]),
                                                       "instruction": FEW_SHOT},
                               "dataset": [{"prompt": p} for p in train]})
        jid, t_ask = j["id"], None
        while True:
            j = json.loads(get(sp, "/jobs/" + jid))
            if t_ask is None and j["step"] > 0:
                t_ask = time.time() - t0
            if j["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.05)
        assert j["status"] == "succeeded", j
        t_all = time.time() - t0
        # held-out: teacher (with the instruction) vs student (with and without the state)
        same_state = same_base = 0
        for p in held:
            gen = {"max_tokens": 48, "temperature": 0, "stop": ["\n\n"]}
            tt = post(tp, "/generate", dict(gen, prompt=FEW_SHOT + p))["text"]
            st = post(sp, "/generate", dict(gen, prompt=p, state="pirate"))["text"]
            bt = post(sp, "/generate", dict(gen, prompt=p))["text"]
            same_state += st == tt
            same_base += bt == tt
            print("held-out %r\n  teacher %r\n  student+state %r\n  student %r" % (p, tt, st, bt))
        # held-out cross-entropy of the teacher's answers: an observer job on the
        # held-out prompts with 1 step at lr ~0 reports the starting loss
        def ce(state):
            jj = post(sp, "/tune", dict({"method": "observer", "output_state": "probe",
                                         "steps": 1, "lr": 1e-12, "val_split": 0,
                                         "batch": len(held),
                                         "teacher": {"max_tokens": 48, "top_logprobs": 0,
                                                     "instruction": FEW_SHOT},
                                         "dataset": [{"prompt": p} for p in held]},
                                        **({"init_state": state} if state else {})))
            while True:
                jj = json.loads(get(sp, "/jobs/" + jj["id"]))
                if jj["status"] in ("succeeded", "failed"):
                    return jj["loss"]
                time.sleep(0.05)
        print("steps %s, top_logprobs %s, threads %s" % (opt["--steps"], opt["--top"],
                                                          opt["--threads"]))
        print("asking the teacher (12 prompts): %.2f s; whole job: %.2f s" % (t_ask, t_all))
        print("training KL at the last step: %.5f" % j["loss"])
        print("held-out CE of the teacher's answers: zero state %.4f, observer state %.4f" % (
            ce(None), ce("pirate")))
        print("held-out greedy answers equal to the teacher's: %d/%d with the state, %d/%d "
              "without" % (same_state, len(held), same_base, len(held)))
    finally:
        for p in (teacher, student):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
