#!/usr/bin/env python3
"""The rl tuning method end to end, with a real judge.

A second rwkvd (the bundled demo model) is the judge of the server under
test. An rl job with a local checker (a regex that rewards answers starting
with "Arr") raises its mean score within a few steps; an rl job scored by
the judge is killed (-9) after a few steps and, after a restart, gets the
answers of the steps it runs again from its cache file, not from the judge
(counted in the restarted server's /metrics); bad hyperparameters and data are 400s with
OpenAI-style errors; a server without a judge refuses prompts that have no
checker; a judge that cannot be reached fails the job and the request.
Test-time training (ttt) on /generate and chat: with the judge and with
self-scoring, its 400s, the per-tenant sample budget (429), and the judge budget
that ttt shares with best_of and rl jobs (429 once spent; a request refused after
best_of reserved its calls gives them back).

usage: test_rl.py RWKVD DEMO_MODEL
"""
import json
import os
import signal
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from rwkvd_http import (events, finish, get_json, metric, post, start,  # noqa: E402
                        wait_job)

PROMPTS = ["User: What is the capital of France?\n\nAssistant:",
           "User: What color is the sky?\n\nAssistant:",
           "User: How many days are in a week?\n\nAssistant:",
           "User: What do bees make?\n\nAssistant:",
           "User: Where do owls live?\n\nAssistant:",
           "User: Hello!\n\nAssistant:"]
RL = {"method": "rl", "rl_k": 6, "rl_max_tokens": 6, "rl_temperature": 1.5, "lr": 2,
      "warmup": 0, "batch": 2}


def main():
    rwkvd, model = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="rwkvd-rl-")
    procs = []
    ok = False
    try:
        judge, jp = start(rwkvd, model, tmp, "judge", ["--ttt-samples-per-min", "12"])
        procs.append(judge)
        args = ["--judge-url", "http://127.0.0.1:%d/v1" % jp, "--judge-model", "demo"]
        srv, sp = start(rwkvd, model, tmp, "server", args)
        procs.append(srv)

        # --- a local checker: the mean score goes up ----------------------------
        data = [{"prompt": p, "regex": "^Arr"} for p in PROMPTS]
        st, j = post(sp, "/tune", dict(RL, output_state="arr", steps=8, dataset=data))
        assert st == 202, j
        assert j["hyperparameters"]["rl_k"] == 6, j
        j = wait_job(sp, j["id"])
        assert j["status"] == "succeeded", j
        scores = [d["score"] for e, d in events(sp, j["id"]) if e == "step"]
        assert len(scores) == 8, scores
        first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
        assert last > first + 0.3, scores
        print("rl checker: mean score %.3f -> %.3f over 8 steps" % (first, last))

        # --- the judge; kill -9 and resume: the cache answers -------------------
        data = [{"prompt": p} for p in PROMPTS]
        st, j = post(sp, "/tune", dict(RL, output_state="judged", steps=400, rl_k=4,
                                       checkpoint_every=2, dataset=data))
        assert st == 202, j
        jid = j["id"]
        t0 = time.time()
        killed_at = 0
        while killed_at < 3:
            assert time.time() - t0 < 60, "the job does not train"
            time.sleep(0.02)
            killed_at = get_json(sp, "/jobs/" + jid)["step"]
        cache = os.path.join(tmp, "server", "jobs", jid + ".judge-cache.jsonl")
        assert os.path.exists(cache), os.listdir(os.path.join(tmp, "server", "jobs"))
        srv.send_signal(signal.SIGKILL)
        srv.wait()
        procs.remove(srv)
        asked = metric(jp, "rwkvd_sequences_started_total")
        srv, sp = start(rwkvd, model, tmp, "server", args)
        procs.append(srv)
        t0 = time.time()
        while get_json(sp, "/jobs/" + jid)["step"] < killed_at:
            assert time.time() - t0 < 60, "the job does not resume"
            time.sleep(0.02)
        j = get_json(sp, "/jobs/" + jid)
        ck = j["resumed_from_step"]
        assert ck >= 2, j
        # every sample of the steps after the checkpoint up to the kill: 2 x 4
        cached = metric(sp, "rwkvd_rl_judge_cached_total")
        assert cached >= 8 * (killed_at - ck), (cached, ck)
        print("rl judge: resumed at step %d, %d answers from the cache, judge asked %d "
              "times before the kill" % (ck, cached, asked))
        st, j = post(sp, "/jobs/%s/cancel" % jid, {})
        assert st == 200, j
        assert wait_job(sp, jid)["status"] == "cancelled"
        t0 = time.time()
        while os.path.exists(cache):
            assert time.time() - t0 < 10, "the cache file outlives its job"
            time.sleep(0.05)

        # --- errors -------------------------------------------------------------
        one = [{"prompt": PROMPTS[0], "answer": "Arr!"}]
        for bad, code, param in (({"rl_k": 1}, "out_of_range", "rl_k"),
                                 ({"rl_k": 65}, "out_of_range", "rl_k"),
                                 ({"rl_temperature": 0}, "out_of_range", "rl_temperature"),
                                 ({"rl_max_tokens": 0}, "out_of_range", "rl_max_tokens"),
                                 ({"rl_kl": -1}, "out_of_range", "rl_kl"),
                                 ({"rl_k": "four"}, "invalid_type", "rl_k")):
            st, e = post(sp, "/tune", dict(method="rl", output_state="x", dataset=one, **bad))
            assert st == 400 and e["error"]["code"] == code, (bad, e)
            assert e["error"]["param"] == param and e["error"]["message"], (bad, e)
        for rows, words in (([{"prompt": "x", "regex": "(("}], "regular expression"),
                            ([{"prompt": "x", "answer": "a", "regex": "a"}], "at most one"),
                            ([{"prompt": "x", "completion": "y"}], "unexpected key"),
                            ([{"prompt": ""}], "non-empty string \"prompt\"")):
            st, e = post(sp, "/tune", {"method": "rl", "output_state": "x", "dataset": rows})
            assert st == 400 and e["error"]["code"] == "invalid_dataset", e
            assert words in e["error"]["message"], (words, e)
        st, e = post(jp, "/tune", {"method": "rl", "output_state": "x", "dataset": data})
        assert st == 400 and e["error"]["code"] == "judge_not_configured", e
        st, j = post(jp, "/tune", dict(RL, output_state="checked", steps=1, dataset=one))
        assert st == 202, j
        assert wait_job(jp, j["id"])["status"] == "succeeded"
        # --- test-time training on /generate and the OpenAI routes ------------
        q = {"prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0, "seed": 1}
        st, a = post(sp, "/generate", q)
        assert st == 200 and "ttt_steps" not in a["usage"], a
        for judge_kind in ("default", "self"):
            st, b = post(sp, "/generate", dict(q, ttt={"steps": 2, "k": 3, "max_tokens": 6,
                                                       "lr": 1, "judge": judge_kind}))
            assert st == 200, b
            u = b["usage"]
            assert u["ttt_steps"] == 2 and u["ttt_tokens"] > 12, u
            assert u["completion_tokens"] == b["choices"][0]["tokens"], u
        calls = metric(sp, "rwkvd_judge_calls_total")
        assert calls >= 6, calls  # the "default" run asked the judge 2 x 3 times
        st, c = post(sp, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4,
            "ttt": {"steps": 1, "k": 2, "max_tokens": 4, "judge": "self"}})
        assert st == 200 and c["usage"]["ttt_steps"] == 1, c
        for bad, code, param in (({"steps": 9}, "out_of_range", "ttt.steps"),
                                 ({"k": 1}, "out_of_range", "ttt.k"),
                                 ({"k": 9}, "out_of_range", "ttt.k"),
                                 ({"max_tokens": 65}, "out_of_range", "ttt.max_tokens"),
                                 ({"lr": 0}, "out_of_range", "ttt.lr"),
                                 ({"steps": 1.5}, "invalid_type", "ttt.steps"),
                                 ({"judge": "other"}, "invalid_value", "ttt.judge"),
                                 ({"bogus": 1}, "invalid_value", "ttt")):
            st, e = post(sp, "/generate", dict(q, ttt=bad))
            assert st == 400 and e["error"]["code"] == code, (bad, e)
            assert e["error"]["param"] == param, (bad, e)
        st, e = post(sp, "/generate", dict(q, ttt={"steps": 1}, best_of=2))
        assert st == 400 and e["error"]["code"] == "unsupported", e
        # the budget: 12 samples a minute on the judge's server
        st, b = post(jp, "/generate", dict(q, ttt={"steps": 2, "k": 4, "max_tokens": 4}))
        assert st == 200 and b["usage"]["ttt_steps"] == 2, b
        st, e = post(jp, "/generate", dict(q, ttt={"steps": 2, "k": 3, "max_tokens": 4}))
        assert st == 429 and e["error"]["code"] == "ttt_budget_exceeded", e
        assert e["error"]["type"] == "rate_limit_error", e
        st, b = post(jp, "/generate", dict(q, ttt={"steps": 2, "k": 2, "max_tokens": 4}))
        assert st == 200, b  # exactly what is left
        print("ttt: %d tokens for 2 steps of 3 samples" % u["ttt_tokens"])
        # a judge that cannot be reached fails the job, and the ttt request (502)
        dead, dp = start(rwkvd, model, tmp, "dead", [
            "--judge-url", "http://127.0.0.1:1/v1", "--judge-model", "m",
            "--judge-retries", "0", "--judge-connect-timeout-ms", "200",
            "--judge-calls-per-min", "5"])
        procs.append(dead)
        # a request refused after best_of reserved its judge calls gives them back:
        # the next one still gets all 5 of the minute (and is refused for its ttt)
        for t in ({"bogus": 1}, {"steps": 1}, {"steps": 1}):
            st, e = post(dp, "/generate", dict(q, best_of=5, return_scores=True, ttt=t))
            assert st == 400 and e["error"]["param"] == "ttt", e
        st, j = post(dp, "/tune", dict(RL, output_state="dead", steps=2, dataset=data[:1]))
        assert st == 202, j
        j = wait_job(dp, j["id"])
        assert j["status"] == "failed" and j["error"]["code"] == "judge_failed", j
        assert "judge" in j["error"]["message"], j
        st, e = post(dp, "/generate", dict(q, ttt={"steps": 1, "k": 2, "max_tokens": 4}))
        assert st == 502 and e["error"]["code"] == "judge_failed", e
        assert metric(dp, "rwkvd_rl_judge_failures_total") == 1
        # one judge budget: the rl job's and ttt's calls (at least one each) left less
        # than 4 of the 5 a minute, so ttt and best_of with the judge are refused;
        # self-scored ttt does not draw on it
        spend = {"steps": 2, "k": 2, "max_tokens": 2}
        st, e = post(dp, "/generate", dict(q, ttt=spend))
        assert st == 429 and e["error"]["code"] == "judge_budget_exceeded", e
        assert e["error"]["param"] == "ttt" and "ttt (steps x k) needs 4 judge calls" in \
            e["error"]["message"], e
        assert e["error"]["type"] == "rate_limit_error", e
        st, e = post(dp, "/generate", dict(q, best_of=4, return_scores=True))
        assert st == 429 and e["error"]["code"] == "judge_budget_exceeded", e
        st, b = post(dp, "/generate", dict(q, ttt=dict(spend, judge="self")))
        assert st == 200 and b["usage"]["ttt_steps"] == 2, b
        ok = True
    finally:
        status = finish(procs, tmp, ("judge", "server", "dead"), ok, "test_rl")
    return status


if __name__ == "__main__":
    sys.exit(main())
