#!/usr/bin/env python3
"""Latency of test-time training on POST /generate (docs/API.md, "ttt").

Starts `rwkvd serve` on MODEL (2 threads), then sends one prompt (32 greedy
tokens) plain and with ttt of growing size (self-scoring, so no judge is
needed), three times each, and prints the median wall time of a request
and the ttt_tokens its usage reports.

usage: bench/ttt_latency.py RWKVD MODEL
"""
import json
import subprocess
import sys
import tempfile
import time
import urllib.request

rwkvd, model = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp()
p = subprocess.Popen([rwkvd, "serve", "--model", model, "--port", "0", "--threads", "2",
                      "--data-dir", tmp],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
port = int(p.stdout.readline().rsplit(":", 1)[1])
def post(body):
    req = urllib.request.Request("http://127.0.0.1:%d/generate" % port,
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=120) as r:
        out = json.loads(r.read())
    return time.time() - t, out
try:
    q = {"prompt": "User: What color is the sky?\n\nAssistant:", "max_tokens": 32,
         "temperature": 0, "seed": 1}

    def ttt(steps, k, n):
        return {"ttt": {"steps": steps, "k": k, "max_tokens": n, "judge": "self"}}
    for name, extra in (("plain", {}), ("ttt 1x4x32", ttt(1, 4, 32)),
                        ("ttt 4x4x32", ttt(4, 4, 32)), ("ttt 8x8x64", ttt(8, 8, 64))):
        ts = []
        for i in range(3):
            dt, out = post(dict(q, **extra))
            ts.append(dt)
        ts.sort()
        print("%-12s median %.3f s  ttt_tokens %s" % (name, ts[1], out["usage"].get("ttt_tokens")))
finally:
    p.terminate()
    p.wait()

