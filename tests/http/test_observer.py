#!/usr/bin/env python3
"""The observer tuning method end to end, with a real teacher.

A second rwkvd (the bundled demo model) is the teacher of the server under
test (the same demo model as the student). The teacher sees a few-shot
instruction in the pirate voice that the student never sees, so the
student's state must learn the teacher's behaviour: an observer job with
top-k logprobs (KL loss) runs end to end and lowers its loss; a job killed
after a checkpoint resumes after a restart without asking the teacher again
(the job's cache file; counted with both servers' /metrics); a text-only
job (chat endpoint, cross-entropy) succeeds. A small fake endpoint
(http.server in this process) serves only the fault cases: 500 then
success (retried), garbage, tokens the student cannot map, logprobs above
0, timeouts. A failed job fails alone: the server keeps serving. The key
never appears in job records, errors or the log.

usage: test_observer.py RWKVD DEMO_MODEL
"""
import json
import os
import signal
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from rwkvd_http import (FakeHandler, events, finish, get_json, get_text, metric,  # noqa: E402
                        post, start, start_fake, wait_job)

KEY = "sk-teacher-key-0123456789-never-shown"
FEW_SHOT = ("User: Hello!\n\nAssistant: Ahoy, matey! How can I help ye today? Yo ho ho!\n\n"
            "User: What do bees make?\n\nAssistant: Arr! Bees make honey and wax.\n\n")
PROMPTS = ["User: What is the capital of France?\n\nAssistant:",
           "User: What color is the sky?\n\nAssistant:",
           "User: How many days are in a week?\n\nAssistant:",
           "User: Where do owls live?\n\nAssistant:"]


# --- the fake endpoint (fault cases only) ------------------------------------

HITS = {}
BODIES = {}
LOCK = threading.Lock()


def completion(tokens, lps=None, tops=None):
    lp = {"tokens": tokens, "token_logprobs": lps or [-0.1] * len(tokens),
          "top_logprobs": tops or [{t: -0.1} for t in tokens],
          "text_offset": list(range(len(tokens)))}
    return {"choices": [{"index": 0, "text": "".join(tokens), "logprobs": lp,
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens)}}


class Fake(FakeHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = self.path.split("/")[1]
        with LOCK:
            HITS[kind] = HITS.get(kind, 0) + 1
            k = HITS[kind]
            BODIES[kind] = body
        assert self.path.endswith("/v1/completions"), self.path
        good = completion([" ", "A", "r", "r", "!"],
                          tops=[{" ": -0.01, "x": -5.0}] + [{t: -0.2, "q": -3.0} for t in "Arr!"])
        if kind == "flaky":  # the first request gets a 500, the rest the answer
            return self.reply(500, {"error": {"message": "try again"}}) if k == 1 \
                else self.reply(200, good)
        if kind == "stop":  # an answer that ended at the job's stop string
            ans = completion([" ", "A", "r", "r"])
            ans["choices"][0]["finish_reason"] = "stop"
            return self.reply(200, ans)
        if kind == "garbage":
            return self.reply(200, raw=b"this is not json{")
        if kind == "vocab":  # a teacher of another tokenizer: multi-byte tokens
            return self.reply(200, completion([" Hello", " world"]))
        if kind == "badlp":  # a log-probability above 0
            return self.reply(200, completion([" ", "A"], tops=[{" ": 0.5}, {"A": -0.1}]))
        if kind == "timeout":
            time.sleep(3.0)
            return self.reply(200, good)
        return self.reply(404, {"error": {"message": "no such path"}})


def main():
    rwkvd, model = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="rwkvd-observer-")
    fake = start_fake(Fake)
    furl = fake.url

    keyfile = os.path.join(tmp, "teacher-key")
    with open(keyfile, "w") as f:
        f.write(KEY + "\n")
    procs = []
    ok = False
    try:
        teacher, tp = start(rwkvd, model, tmp, "teacher", [])
        procs.append(teacher)
        student_args = [
            "--teacher-url", "http://127.0.0.1:%d/v1" % tp, "--teacher-model", "demo",
            "--teacher-key-file", keyfile, "--teacher-retries", "2",
            "--teacher-allowed-urls", ",".join(furl(k) for k in (
                "flaky", "garbage", "vocab", "badlp", "stop"))]
        student, sp = start(rwkvd, model, tmp, "student", student_args)
        procs.append(student)
        # A server without a teacher of its own, a short teacher timeout and
        # one allowed URL.
        strict, xp = start(rwkvd, model, tmp, "strict", [
            "--teacher-timeout-ms", "1000", "--teacher-allowed-urls", furl("timeout")])
        procs.append(strict)
        data = [{"prompt": p} for p in PROMPTS]
        teacher_cfg = {"max_tokens": 32, "top_logprobs": 8, "instruction": FEW_SHOT}

        # --- KL to the teacher's top-8: the loss goes down ------------------
        seqs0 = metric(tp, "rwkvd_sequences_started_total")
        st, j = post(sp, "/tune", {"method": "observer", "output_state": "pirate",
                                   "steps": 30, "lr": 0.05, "val_split": 0, "batch": 4,
                                   "warmup": 0, "teacher": teacher_cfg, "dataset": data})
        assert st == 202, j
        assert j["hyperparameters"]["teacher"]["top_logprobs"] == 8, j
        j = wait_job(sp, j["id"])
        assert j["status"] == "succeeded", j
        evs = events(sp, j["id"])
        notes = [d.get("message", "") for e, d in evs if e == "status"]
        assert "asking teacher: 0/4" in notes and any(n.startswith("asking teacher: 4/4")
                                                      for n in notes), notes
        losses = [d["loss"] for e, d in evs if e == "step"]
        assert len(losses) == 30, losses
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        assert first > 0.01 and last < 0.5 * first, (first, last)
        assert metric(sp, "rwkvd_teacher_answers_total") == 4
        assert metric(tp, "rwkvd_sequences_started_total") - seqs0 == 4
        print("observer KL: loss %.4f -> %.4f over 30 steps" % (first, last))

        # --- resume after a kill: the cache file answers ----------------------
        st, j = post(sp, "/tune", {"method": "observer", "output_state": "pirate2",
                                   "steps": 400, "lr": 0.05, "val_split": 0,
                                   "checkpoint_every": 2, "teacher": teacher_cfg,
                                   "dataset": data})
        assert st == 202, j
        jid = j["id"]
        t0 = time.time()
        while get_json(sp, "/jobs/" + jid)["step"] < 4:
            assert time.time() - t0 < 60, "the job does not train"
            time.sleep(0.05)
        cache = os.path.join(tmp, "student", "jobs", jid + ".teacher-cache.jsonl")
        assert os.path.exists(cache), os.listdir(os.path.join(tmp, "student", "jobs"))
        student.send_signal(signal.SIGKILL)
        student.wait()
        procs.remove(student)
        # one JSON line per answer, appended; a record torn by the kill is
        # ignored on resume (here: one written after it, without its newline)
        with open(cache) as f:
            recs = [json.loads(line) for line in f.read().splitlines()]
        assert len(recs) == 4 and all(sorted(r) == ["answer", "key"] for r in recs), recs
        with open(cache, "a") as f:
            f.write('{"key": "http://127.0.0.1:1/v1 {\\"model\\"')
        seqs1 = metric(tp, "rwkvd_sequences_started_total")
        student, sp = start(rwkvd, model, tmp, "student", student_args)
        procs.append(student)
        t0 = time.time()
        while get_json(sp, "/jobs/" + jid)["step"] < 8:
            assert time.time() - t0 < 60, "the job does not resume"
            time.sleep(0.05)
        assert metric(sp, "rwkvd_teacher_answers_total") == 0
        assert metric(sp, "rwkvd_teacher_cached_total") == 4
        assert metric(tp, "rwkvd_sequences_started_total") == seqs1
        with open(cache) as f:
            text = f.read()
        assert text.count("\n") == 4 and text.endswith("\n"), text[-200:]  # the torn end cut off
        j = get_json(sp, "/jobs/" + jid)
        assert j["resumed_from_step"] >= 2, j
        st, j = post(sp, "/jobs/%s/cancel" % jid, {})
        assert st == 200, j
        assert wait_job(sp, jid)["status"] == "cancelled"
        t0 = time.time()
        while os.path.exists(cache):  # removed right after the final status
            assert time.time() - t0 < 10, "the cache file outlives its job"
            time.sleep(0.05)

        # --- text only through the chat endpoint: cross-entropy ----------------
        st, j = post(sp, "/tune", {"method": "observer", "output_state": "textonly",
                                   "steps": 4, "lr": 0.05, "val_split": 0,
                                   "teacher": {"endpoint": "chat", "max_tokens": 16},
                                   "dataset": [{"prompt": "What is 3 plus 4?",
                                                "completion": " ignored"}]})
        assert st == 202, j
        assert wait_job(sp, j["id"])["status"] == "succeeded"

        # --- submit-time errors -------------------------------------------------
        st, e = post(sp, "/tune", {"method": "observer", "output_state": "x",
                                   "teacher": {"url": "http://127.0.0.1:1/v1"}, "dataset": data})
        assert st == 403 and e["error"]["code"] == "teacher_url_not_allowed", e
        st, e = post(sp, "/tune", {"output_state": "x", "teacher": {}, "dataset": data})
        assert st == 400 and e["error"]["param"] == "teacher", e
        st, e = post(sp, "/tune", {"method": "observer", "output_state": "x",
                                   "dataset": [{"text": "no prompt here"}]})
        assert st == 400 and e["error"]["code"] == "invalid_dataset", e
        st, e = post(sp, "/tune", {"method": "observer", "output_state": "x",
                                   "teacher": {"top_logprobs": 21}, "dataset": data})
        assert st == 400 and e["error"]["code"] == "out_of_range", e
        st, e = post(sp, "/tune", {"method": "observer", "output_state": "x",
                                   "teacher": {"endpoint": "responses"}, "dataset": data})
        assert st == 400 and e["error"]["code"] == "invalid_value", e

        # --- the fake teacher's faults -------------------------------------------
        def fake_job(kind, top=2, port=None):
            port = port or sp
            st, j = post(port, "/tune", {"method": "observer", "output_state": "f-" + kind,
                                       "steps": 2, "val_split": 0,
                                       "teacher": {"url": furl(kind), "model": "m",
                                                   "max_tokens": 8, "top_logprobs": top},
                                       "dataset": data[:1]})
            assert st == 202, j
            return wait_job(port, j["id"])

        # teacher.stop goes with every teacher request and into the job record
        st, j = post(sp, "/tune", {"method": "observer", "output_state": "f-stop", "steps": 2,
                                   "val_split": 0, "dataset": data[:1],
                                   "teacher": {"url": furl("stop"), "model": "m", "max_tokens": 8,
                                               "top_logprobs": 2, "stop": "\n"}})
        assert st == 202 and j["hyperparameters"]["teacher"]["stop"] == ["\n"], j
        j = wait_job(sp, j["id"])
        assert j["status"] == "succeeded", j
        assert json.loads(BODIES["stop"])["stop"] == ["\n"], BODIES["stop"]
        # the four answer bytes and the stop string the answer ended at
        assert j["dataset"]["targets"] == 5, j["dataset"]
        for bad in ("", ["a", "b", "c", "d", "e"], 5, ["x" * 65]):
            st, e = post(sp, "/tune", {"method": "observer", "output_state": "x", "dataset": data,
                                       "teacher": {"stop": bad}})
            assert st == 400 and e["error"]["param"] == "teacher.stop", (bad, e)

        j = fake_job("flaky")
        assert j["status"] == "succeeded" and HITS["flaky"] == 2, (j, HITS)
        for kind, code, words in (("garbage", "teacher_failed", "not JSON"),
                                  ("vocab", "teacher_failed", "not one token"),
                                  ("badlp", "teacher_failed", "not a log-probability"),
                                  ("timeout", "teacher_timeout", "no answer within 1000 ms")):
            j = fake_job(kind, port=xp if kind == "timeout" else sp)
            assert j["status"] == "failed", j
            err = j["error"]
            assert err["code"] == code and words in err["message"], (kind, err)
            assert err["message"].startswith("prompt 1: teacher") or kind in ("vocab", "badlp"), err
        assert HITS["timeout"] == 1, HITS  # the client does not retry a timeout
        st, e = post(xp, "/tune", {"method": "observer", "output_state": "x", "dataset": data})
        assert st == 400 and e["error"]["code"] == "teacher_not_configured", e
        # nothing else is affected
        st, r = post(sp, "/generate", {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0})
        assert st == 200 and r["text"], r

        # --- the key stays secret --------------------------------------------------
        every = get_text(sp, "/jobs") + open(os.path.join(tmp, "student.log")).read()
        for root, _, files in os.walk(os.path.join(tmp, "student")):
            for f in files:
                every += open(os.path.join(root, f), "rb").read().decode("latin-1")
        assert KEY not in every
        ok = True
    finally:
        status = finish(procs, tmp, ("teacher", "student", "strict"), ok, "test_observer")
        fake.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
