#!/usr/bin/env python3
"""best_of with a real judge, and the judge client's failure cases.

A second rwkvd (the bundled demo model) serves as the judge of the server
under test: best_of on /generate, /v1/completions and /v1/chat/completions
works end to end, every candidate is judged once, scores are ranked and
usage counts every candidate. The model's own scoring ("judge": "self") is
checked against the logprobs it returns. A small fake endpoint (http.server
in this process) serves only the fault cases: 500s then success (retried),
429 (retried, then 502), 401 (not retried; the key never shown), timeouts,
answers slower than the request's deadline, malformed JSON, wrong shapes,
missing logprobs, answers over the size limit; and the per-request URL
allowlist, the per-tenant budget and that nothing else is affected.

usage: test_teacher.py RWKVD DEMO_MODEL
"""
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from rwkvd_http import FakeHandler, metric, post, start, start_fake, stop  # noqa: E402

KEY = "sk-judge-key-0123456789-never-shown"


# --- the fake endpoint (fault cases only) ------------------------------------

HITS = {}      # path kind -> number of requests
AUTH = {}      # path kind -> Authorization headers seen
MODELS = {}    # path kind -> model names asked for
LOCK = threading.Lock()


def candidate_of(body):
    m = re.search(r"Answer:\n<<<\n(.*)\n>>>", body["messages"][0]["content"], re.S)
    return m.group(1) if m else ""


class Fake(FakeHandler):
    def good(self, body):
        text = candidate_of(body)
        if "number only" in body["messages"][0]["content"]:
            return {"choices": [{"index": 0, "message": {"role": "assistant",
                                                         "content": "Score: %d.5" % len(text)},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
        lp = -0.01 * len(text)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": " Yes"},
                             "finish_reason": "stop",
                             "logprobs": {"content": [
                                 {"token": " Yes", "logprob": lp,
                                  "top_logprobs": [{"token": " Yes", "logprob": lp},
                                                   {"token": " No", "logprob": -5.0}]}]}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1}}

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        body = json.loads(raw)
        kind = self.path.split("/")[1]
        with LOCK:
            HITS[kind] = HITS.get(kind, 0) + 1
            AUTH.setdefault(kind, []).append(self.headers.get("Authorization"))
            MODELS.setdefault(kind, []).append(body.get("model"))
        assert self.path.endswith("/v1/chat/completions"), self.path
        if kind == "ok":
            return self.reply(200, self.good(body))
        if kind == "flaky":  # the first two requests get a 500, the rest the answer
            with LOCK:
                k = HITS[kind]
            if k <= 2:
                return self.reply(500, {"error": {"message": "try again"}})
            return self.reply(200, self.good(body))
        if kind == "e429":
            return self.reply(429, {"error": {"message": "slow down"}}, headers=[("Retry-After", "0")])
        if kind == "e401":
            # Echo what was sent: the server must not show it to its client.
            return self.reply(401, {"error": {"message": "bad key " + str(self.headers.get("Authorization"))}})
        if kind == "garbage":
            return self.reply(200, raw=b"this is not json{")
        if kind == "shape":
            return self.reply(200, {"choices": [{"message": {"content": 5}}]})
        if kind == "nologprobs":
            return self.reply(200, {"choices": [{"message": {"content": "Yes"}}]})
        if kind == "big":
            return self.reply(200, raw=b'{"pad":"' + b"x" * 20000 + b'"}')
        if kind in ("timeout", "slow"):
            time.sleep(8.0)
            return self.reply(200, self.good(body))
        return self.reply(404, {"error": {"message": "no such path"}})


def main():
    rwkvd, model = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="rwkvd-teacher-")
    fake = start_fake(Fake)
    furl = fake.url

    keyfile = os.path.join(tmp, "judge-key")
    with open(keyfile, "w") as f:
        f.write(KEY + "\n")
    procs = []
    ok = False
    try:
        judge, jp = start(rwkvd, model, tmp, "judge")
        procs.append(judge)
        main_srv, mp = start(rwkvd, model, tmp, "main", [
            "--judge-url", "http://127.0.0.1:%d/v1" % jp, "--judge-model", "demo",
            "--judge-allowed-urls", ",".join(furl(k) for k in (
                "ok", "flaky", "e429", "garbage", "shape", "nologprobs", "big")),
            "--judge-retries", "2",
            "--judge-max-response-bytes", "4096", "--max-best-of", "6"])
        procs.append(main_srv)
        # A server whose own judge needs a key and answers 401, with a
        # small budget and a short request deadline.
        strict, sp = start(rwkvd, model, tmp, "strict", [
            "--judge-url", furl("e401"), "--judge-model", "m", "--judge-key-file", keyfile,
            "--judge-allowed-urls", ",".join(furl(k) for k in ("ok", "slow", "timeout")),
            "--judge-timeout-ms", "1500", "--judge-calls-per-min", "9", "--request-timeout", "3"])
        procs.append(strict)
        prompt = "User: What is the capital of France?\n\nAssistant:"

        # --- a real judge: /generate, best_of 4, all returned ---------------
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 40, "stop": ["\n\n"],
                                      "best_of": 4, "n": 4, "return_scores": True, "seed": 3,
                                      "candidate_temperatures": [0, 1.5, 2, 2]})
        assert st == 200, r
        ch = r["choices"]
        assert len(ch) == 4 and sorted(c["candidate"] for c in ch) == [0, 1, 2, 3], ch
        assert [c["score"] for c in ch] == sorted(r["best_of"]["scores"], reverse=True), r
        assert r["usage"]["completion_tokens"] == sum(c["tokens"] for c in ch), r
        assert max(r["best_of"]["scores"]) > -100, r  # "Y" among the judge's alternatives
        print("judge: scores", r["best_of"]["scores"])
        # --- the best 2 of 4 --------------------------------------------------
        before = metric(jp, 'rwkvd_http_requests_total{route="/v1/chat/completions",code="200"}')
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 8, "best_of": 4, "n": 2,
                                      "return_scores": True, "seed": 5,
                                      "candidate_temperatures": [0, 1.5, 1.5, 2]})
        assert st == 200, r
        after = metric(jp, 'rwkvd_http_requests_total{route="/v1/chat/completions",code="200"}')
        assert after - before == 4, (before, after)  # one judge call per candidate
        bo = r["best_of"]
        assert bo["candidates"] == 4 and bo["scorer"] == "judge_yes_logprob", bo
        assert len(bo["scores"]) == 4 and all(-100 <= s <= 0 for s in bo["scores"]), bo
        assert bo["judge_tokens"] > 0, bo
        ch = r["choices"]
        assert len(ch) == 2 and ch[0]["score"] >= ch[1]["score"], ch
        assert ch[0]["score"] == max(bo["scores"]), (ch, bo)
        assert sorted({c["candidate"] for c in ch}) == sorted(c["candidate"] for c in ch)
        for c in ch:
            assert bo["scores"][c["candidate"]] == c["score"]
        # every candidate's tokens are counted (max_tokens 8, no stop)
        assert r["usage"]["completion_tokens"] == 4 * 8, r["usage"]
        assert r["text"] == ch[0]["text"]

        # --- the OpenAI routes with the real judge -------------------------
        st, r = post(mp, "/v1/chat/completions", {
            "model": "demo", "messages": [{"role": "user", "content": "What do bees make?"}],
            "max_tokens": 12, "best_of": 3, "temperature": 1.2, "return_scores": True})
        assert st == 200 and len(r["choices"]) == 1 and r["best_of"]["candidates"] == 3, r
        st, r = post(mp, "/v1/completions", {"model": "demo", "prompt": prompt, "max_tokens": 6,
                                             "best_of": 3, "temperature": 1.0})
        assert st == 200 and len(r["choices"]) == 1 and "best_of" not in r, r
        assert r["usage"]["completion_tokens"] == 18, r["usage"]

        # --- the model's own score: the mean log-probability ---------------
        st, r = post(mp, "/v1/completions", {"model": "demo", "prompt": prompt, "max_tokens": 6,
                                             "best_of": 3, "n": 3, "judge": "self",
                                             "temperature": 1.5, "logprobs": 0,
                                             "return_scores": True, "seed": 11})
        assert st == 200 and r["best_of"]["scorer"] == "self", r
        prev = None
        for c in r["choices"]:
            lps = c["logprobs"]["token_logprobs"]
            mean = sum(lps) / len(lps)
            assert abs(mean - c["score"]) < 1e-3, (mean, c["score"])
            assert prev is None or prev >= c["score"]
            prev = c["score"]

        # --- a temperature per candidate: 0 is the greedy answer -------------
        st, g = post(mp, "/generate", {"prompt": prompt, "max_tokens": 12, "temperature": 0})
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 12, "best_of": 3, "n": 3,
                                      "judge": "self", "candidate_temperatures": [2, 0, 2],
                                      "return_scores": True, "seed": 9})
        assert st == 200, r
        greedy = [c for c in r["choices"] if c["candidate"] == 1][0]
        assert greedy["text"] == g["text"], (greedy, g)

        # --- scoring by a number; per-request URL from the allowlist --------
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 5, "best_of": 2,
                                      "return_scores": True, "temperature": 1.5,
                                      "judge": {"url": furl("ok"), "scoring": "number"}})
        assert st == 200, r
        for c in r["choices"]:
            assert c["score"] == len(c["text"]) + 0.5, c
        assert AUTH["ok"][-1] is None  # a request-chosen URL never gets the key
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 5, "best_of": 2,
                                      "return_scores": True, "temperature": 1.5,
                                      "judge": {"url": furl("ok")}})
        assert st == 200, r
        for c in r["choices"]:
            assert abs(c["score"] + 0.01 * len(c["text"])) < 1e-9, c

        # --- retries: 500, 500, then the answer -----------------------------
        HITS.clear()
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 4, "best_of": 2,
                                      "temperature": 0, "judge": {"url": furl("flaky")}})
        assert st == 200, r
        assert HITS["flaky"] == 4, HITS  # 2 answers and 2 retries
        # 429 is retried, then given up on
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 4, "best_of": 2,
                                      "judge": {"url": furl("e429")}})
        assert st == 502 and r["error"]["code"] == "judge_failed", r
        assert "HTTP 429 after 3 attempt" in r["error"]["message"], r
        assert HITS["e429"] == 6, HITS

        # --- malformed answers: a clear 502 naming the judge and the reason --
        for kind, what in (("garbage", "not JSON"), ("shape", "message.content"),
                           ("nologprobs", "logprobs.content is not an array"),
                           ("big", "larger than 4096 bytes")):
            st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 4, "best_of": 2,
                                          "judge": {"url": furl(kind)}})
            assert st == 502, (kind, st, r)
            msg = r["error"]["message"]
            assert msg.startswith("judge: ") and what in msg, (kind, msg)

        # --- 401: not retried, the key never shown --------------------------
        HITS.clear()
        st, r = post(sp, "/generate", {"prompt": prompt, "max_tokens": 4, "best_of": 2})
        assert st == 502 and "HTTP 401 after 1 attempt" in r["error"]["message"], r
        assert HITS["e401"] == 2, HITS
        assert AUTH["e401"][-1] == "Bearer " + KEY  # the configured URL gets the key
        assert KEY not in json.dumps(r)
        assert "bad key Bearer [key]" in r["error"]["message"], r  # the judge's reason, key hidden
        # --- a judge slower than its timeout (1500 ms): 504 -----------------
        t0 = time.monotonic()
        st, r = post(sp, "/generate", {"prompt": prompt, "max_tokens": 2, "best_of": 2,
                                      "judge": {"url": furl("timeout")}})
        assert st == 504 and r["error"]["code"] == "judge_timeout", r
        assert "1500 ms" in r["error"]["message"], r
        assert time.monotonic() - t0 < 6  # the fake answers after 8 s
        # --- slower than the request's deadline (3 s): 504 ------------------
        t0 = time.monotonic()
        st, r = post(sp, "/generate", {"prompt": prompt, "max_tokens": 2, "best_of": 2,
                                      "judge": {"url": furl("slow")}})
        assert st == 504, r
        assert time.monotonic() - t0 < 6
        # --- judge.model: the configured URL, with its key, another model ---
        st, r = post(sp, "/generate", {"prompt": prompt, "max_tokens": 2, "best_of": 2,
                                      "judge": {"model": "other-model"}})
        assert st == 502, r
        assert MODELS["e401"][-1] == "other-model" and AUTH["e401"][-1] == "Bearer " + KEY
        # --- the per-tenant budget: 9 calls a minute, 8 used already --------
        st, r = post(sp, "/generate", {"prompt": prompt, "max_tokens": 2, "best_of": 2,
                                      "judge": {"url": furl("ok")}})
        assert st == 429 and r["error"]["code"] == "judge_budget_exceeded", r
        st, r = post(sp, "/generate", {"prompt": prompt, "max_tokens": 2, "best_of": 2,
                                      "judge": "self"})
        assert st == 200, r  # the model's own score costs no judge calls

        calls_before = metric(mp, "rwkvd_judge_calls_total")
        # --- refusals ---------------------------------------------------------
        cases = [
            (mp, {"prompt": prompt, "best_of": 3, "stream": True}, 400, "unsupported"),
            (mp, {"prompt": prompt, "best_of": 7}, 400, None),
            (mp, {"prompt": prompt, "best_of": 2, "n": 3}, 400, None),
            (mp, {"prompt": prompt, "best_of": 2, "judge": {"url": "http://10.0.0.1/v1"}}, 403,
             "judge_url_not_allowed"),
            (mp, {"prompt": prompt, "best_of": 2, "judge": {"scoring": "vibes"}}, 400, None),
            (mp, {"prompt": prompt, "best_of": 2, "judge": {"prompt": "x"}}, 400, None),
            (mp, {"prompt": prompt, "best_of": 2, "candidate_temperatures": [1]}, 400, None),
            (mp, {"prompt": prompt, "best_of": 2, "candidate_temperatures": [1, 3]}, 400, None),
            (mp, {"prompt": prompt, "judge": "self"}, 400, None),
            (mp, {"prompt": prompt, "n": 2, "best_of": 2, "judge": "self"}, 400, None),
        ]
        for port, body, code, ecode in cases:
            st, r = post(port, "/generate", body)
            assert st == code, (body, st, r)
            assert ecode is None or r["error"]["code"] == ecode, (body, r)

        # --- n without best_of stays a plain request, streaming included -----
        req = urllib.request.Request("http://127.0.0.1:%d/v1/completions" % mp, data=json.dumps(
            {"prompt": prompt, "max_tokens": 4, "n": 2, "stream": True}).encode())
        with urllib.request.urlopen(req, timeout=60) as resp:
            sse = resp.read().decode()
        assert resp.status == 200 and sse.count('"finish_reason":"length"') == 2, sse
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 4, "n": 2, "best_of": 2})
        assert st == 200 and len(r["choices"]) == 2 and "best_of" not in r, r
        assert metric(mp, "rwkvd_judge_calls_total") == calls_before, "n alone called the judge"

        # --- nothing else is affected ----------------------------------------
        st, r = post(mp, "/generate", {"prompt": prompt, "max_tokens": 40, "temperature": 0,
                                      "stop": ["\n\n"]})
        assert st == 200 and "Paris" in r["text"], r
        assert metric(mp, "rwkvd_judge_failures_total") >= 5
        for name in ("main", "strict", "judge"):
            assert KEY not in open(os.path.join(tmp, name + ".log")).read(), name
        print("ok")
        ok = True
    finally:
        stop(procs)
        fake.shutdown()
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)  # kept (with the servers' logs) on failure


if __name__ == "__main__":
    main()
