#!/usr/bin/env python3
"""bestof.py - what best_of costs: request latency for K candidates.

Starts rwkvd with MODEL (and, with --judge, a second rwkvd with the same
model as its judge), then for each K sends ROUNDS requests one after the
other (max_tokens tokens each, no stop, temperature 1, distinct seeds) and
prints the median latency and its ratio to K=1. The K candidates of one
request run as one batch in the engine, so K=4 should cost far less than
four requests; judge scoring adds the judge's K calls, made at once.

usage: bestof.py RWKVD MODEL [--rounds N] [--max-tokens N] [--threads N] [--judge]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def start(rwkvd, model, tmp, name, threads, extra):
    log = open(os.path.join(tmp, name + ".log"), "w")
    p = subprocess.Popen([rwkvd, "serve", "--model", model, "--port", "0", "--threads",
                          str(threads), "--data-dir", os.path.join(tmp, name),
                          "--max-best-of", "16"] + extra,
                         stdout=subprocess.PIPE, stderr=log, text=True)
    line = p.stdout.readline()
    assert "listening on http://" in line, line
    return p, int(line.rsplit(":", 1)[1])


def post(port, body):
    req = urllib.request.Request("http://127.0.0.1:%d/generate" % port,
                                 data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rwkvd, model = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    opt = lambda k, d: int(args[args.index(k) + 1]) if k in args else d
    rounds, max_tokens, threads = opt("--rounds", 8), opt("--max-tokens", 64), opt("--threads", 2)
    judge = "--judge" in args
    tmp = tempfile.mkdtemp(prefix="rwkvd-bestof-")
    procs = []
    try:
        extra = []
        if judge:
            jp_proc, jp = start(rwkvd, model, tmp, "judge", threads, [])
            procs.append(jp_proc)
            name = os.path.splitext(os.path.basename(model))[0]
            extra = ["--judge-url", "http://127.0.0.1:%d/v1" % jp, "--judge-model", name]
        srv, port = start(rwkvd, model, tmp, "main", threads, extra)
        procs.append(srv)
        prompt = "User: Tell me about the sea.\n\nAssistant:"
        post(port, {"prompt": prompt, "max_tokens": 4})  # warm-up
        print("| K | scorer | median ms | vs K=1 | tokens per request |")
        print("|---|---|---|---|---|")
        base = None
        for k in (1, 2, 4, 8):
            scorers = ["self"] + (["judge"] if judge and k > 1 else [])
            for sc in scorers:
                times = []
                for i in range(rounds):
                    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0,
                            "seed": 1000 * k + i, "best_of": k}
                    if k > 1:
                        body["judge"] = "self" if sc == "self" else "default"
                    t0 = time.perf_counter()
                    r = post(port, body)
                    times.append((time.perf_counter() - t0) * 1000)
                    toks = r["usage"]["completion_tokens"]
                med = statistics.median(times)
                if base is None:
                    base = med
                print("| %d | %s | %.0f | %.2f | %d |" % (k, sc if k > 1 else "none", med,
                                                         med / base, toks))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


if __name__ == "__main__":
    main()
