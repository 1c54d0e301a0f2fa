#!/usr/bin/env python3
"""Streaming soak with state churn against a real `rwkvd serve`.

Starts the server (port 0, its own data dir), then for --seconds runs:
  * --clients streaming clients looping over /generate, /v1/completions and
    /v1/chat/completions; half of them name the state `churn`;
  * --droppers of them read the first bytes of each stream and hang up;
  * --logprob-clients non-streaming chat requests with logprobs;
  * a churn client that PUTs state `churn` every --put-every s and DELETEs it
    every --delete-every s;
  * a probe that asks /health every 0.25 s and records its latency;
  * a sampler of the server's RSS and open file descriptors.
At the end the server gets SIGTERM and must exit 0 with no sanitizer report
in its log. Fails (exit 1) on any error: a 5xx, a body that is not JSON where
JSON is due, a stream without its end marker, a connection the server broke,
/health slower than --health-max-s, or FDs/RSS that grow.

Expected, not errors: 404 for the state while it is deleted, 429 when the
queue is full, 503 while draining.

Used by the `stress` test suite (short, also under the asan and tsan setups)
and as the 30-minute soak benchmark:
    python3 bench/soak.py build/server/rwkvd --model models/demo.safetensors --seconds 1800
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "WARNING: ThreadSanitizer",
                   "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")


def model_shape(path):
    """n_layer and n_embd from a safetensors model's tensor names and shapes."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    layers = {int(k.split(".")[1]) for k in hdr if k.startswith("blocks.")}
    c = hdr["emb.weight"]["shape"][1]
    return len(layers), c


def state_file(n_layer, c, seed):
    """A state file as a community tool writes it: time_state per layer, no
    fingerprint (the server checks the shapes and stamps its own)."""
    rng = random.Random(seed)
    h = c // 64
    tensors, blobs, off = {}, [], 0
    for i in range(n_layer):
        vals = [rng.uniform(-0.5, 0.5) for _ in range(h * 64 * 64)]
        blob = struct.pack("<%df" % len(vals), *vals)
        tensors["blocks.%d.att.time_state" % i] = {
            "dtype": "F32", "shape": [h, 64, 64], "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    hdr = json.dumps(tensors).encode()
    hdr += b" " * (-len(hdr) % 8)
    return struct.pack("<Q", len(hdr)) + hdr + b"".join(blobs)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.errors = []
        self.health = []

    def count(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def error(self, what):
        with self.lock:
            self.errors.append(what)


def conn(port, timeout=60):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def check_error_body(st, route, status, body):
    try:
        e = json.loads(body)["error"]
        assert isinstance(e["message"], str) and "type" in e
    except Exception:
        st.error("%s: %d with a body that is not an OpenAI error: %r" % (route, status, body[:200]))


def one_request(st, port, kind, use_state, mode, rng, stop):
    max_tokens = rng.randint(4, 24)
    if kind == "generate":
        route = "/generate"
        body = {"prompt": "Hello there, how are", "max_tokens": max_tokens, "temperature": 1.0}
    elif kind == "completions":
        route = "/v1/completions"
        body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0.8}
    else:
        route = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": "Hi! How are you?"}],
                "max_tokens": max_tokens, "temperature": 0.9}
    stream = mode != "logprobs"
    if mode == "logprobs":
        route = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": "Tell me a story."}],
                "max_tokens": max_tokens, "logprobs": True, "top_logprobs": 5, "n": 2}
    if use_state:
        body["state"] = "churn"
    body["stream"] = stream
    c = conn(port)
    try:
        c.request("POST", route, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            data = r.read()
            if r.status in (404, 429, 503) or (r.status == 422 and use_state):
                st.count("expected_%d" % r.status)
            else:
                st.error("%s: status %d: %r" % (route, r.status, data[:200]))
            check_error_body(st, route, r.status, data)
            return
        if not stream:
            data = r.read()
            try:
                o = json.loads(data)
                assert len(o["choices"]) == 2 and o["choices"][0]["logprobs"] is not None
            except Exception as ex:
                st.error("%s: bad body (%s): %r" % (route, ex, data[:200]))
            st.count("ok")
            return
        if mode == "drop":
            r.read(rng.randint(1, 200))
            st.count("dropped")
            return  # the finally closes the socket mid-stream
        data = r.read()
        text = data.decode("utf-8", "replace")
        if kind == "generate":
            ok = '"done":true' in text.replace(" ", "") or "[DONE]" in text
        else:
            ok = "data: [DONE]" in text
        if not ok:
            st.error("%s: stream without its end: %r" % (route, text[-300:]))
        else:
            st.count("ok")
    except (ConnectionError, socket.timeout, http.client.HTTPException) as ex:
        if not stop.is_set():
            st.error("%s: %s" % (route, ex))
    finally:
        c.close()


def client(st, port, idx, args, stop):
    rng = random.Random(1000 + idx)
    kinds = ["generate", "completions", "chat"]
    if idx < args.logprob_clients:
        mode = "logprobs"
    elif idx < args.logprob_clients + args.droppers:
        mode = "drop"
    else:
        mode = "stream"
    n = 0
    while not stop.is_set():
        one_request(st, port, kinds[n % 3], idx % 2 == 0, mode, rng, stop)
        n += 1


def churner(st, port, args, stop):
    n_layer, c = model_shape(args.model)
    files = [state_file(n_layer, c, s) for s in range(3)]
    t_del = time.monotonic() + args.delete_every
    k = 0
    while not stop.is_set():
        cn = conn(port)
        try:
            if time.monotonic() >= t_del:
                cn.request("DELETE", "/states/churn")
                t_del = time.monotonic() + args.delete_every
                want = (200, 204, 404)
            else:
                cn.request("PUT", "/states/churn", files[k % 3],
                           {"Content-Type": "application/octet-stream"})
                k += 1
                want = (200, 201)
            r = cn.getresponse()
            data = r.read()
            if r.status not in want:
                st.error("state churn: %d %r" % (r.status, data[:200]))
            st.count("churn")
        except (ConnectionError, socket.timeout, http.client.HTTPException) as ex:
            if not stop.is_set():
                st.error("state churn: %s" % ex)
        finally:
            cn.close()
        stop.wait(args.put_every)


def prober(st, port, args, stop):
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            cn = conn(port, timeout=30)
            cn.request("GET", "/health")
            r = cn.getresponse()
            r.read()
            cn.close()
            dt = time.monotonic() - t0
            with st.lock:
                st.health.append(dt)
            if r.status != 200:
                st.error("/health: %d" % r.status)
        except (ConnectionError, socket.timeout, http.client.HTTPException) as ex:
            st.error("/health: %s" % ex)
        stop.wait(0.25)


def proc_sample(pid):
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rwkvd")
    ap.add_argument("--model", required=True)
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("RWKVD_STRESS_SECONDS", "60")),
                    help="length of the run (default: $RWKVD_STRESS_SECONDS or 60)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--droppers", type=int, default=6)
    ap.add_argument("--logprob-clients", type=int, default=4)
    ap.add_argument("--put-every", type=float, default=0.3)
    ap.add_argument("--delete-every", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--health-max-s", type=float, default=2.0,
                    help="largest /health latency allowed (p99 is reported)")
    ap.add_argument("--rss-growth-max", type=float,
                    default=float(os.environ.get("RWKVD_SOAK_RSS_GROWTH_MAX", "0.25")),
                    help="RSS may grow by this fraction between the first quarter and the end; "
                         "a negative value turns the check off (sanitizer builds, whose "
                         "allocators hold freed memory back)")
    ap.add_argument("--json", help="write the report here as JSON")
    ap.add_argument("--keep-log", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="rwkvd-soak-")
    log_path = os.path.join(tmp, "server.log")
    log = open(log_path, "w")
    srv = subprocess.Popen(
        [args.rwkvd, "serve", "--model", args.model, "--port", "0", "--threads",
         str(args.threads), "--data-dir", os.path.join(tmp, "data"), "--max-seqs", "64",
         "--max-queue", "512", "--conn-limit", "1024"],
        stdout=subprocess.PIPE, stderr=log, text=True)
    line = srv.stdout.readline()
    if "listening on http://" not in line:
        srv.kill()
        print(open(log_path).read()[-4000:], file=sys.stderr)
        sys.exit("server did not start: %r" % line)
    port = int(line.rsplit(":", 1)[1])

    st = Stats()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(st, port, i, args, stop), daemon=True)
               for i in range(args.clients)]
    threads.append(threading.Thread(target=churner, args=(st, port, args, stop), daemon=True))
    threads.append(threading.Thread(target=prober, args=(st, port, args, stop), daemon=True))
    fd_idle0 = proc_sample(srv.pid)[1]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    samples = []
    while time.monotonic() - t0 < args.seconds and srv.poll() is None:
        samples.append((time.monotonic() - t0,) + proc_sample(srv.pid))
        time.sleep(min(5.0, max(0.5, args.seconds / 40)))
    died = srv.poll() is not None
    if not died:
        samples.append((time.monotonic() - t0,) + proc_sample(srv.pid))
    stop.set()
    for t in threads:
        t.join(timeout=90)
    fd_idle1 = None
    if not died:
        time.sleep(1.0)  # let the server see the last hang-ups
        fd_idle1 = proc_sample(srv.pid)[1]
        srv.send_signal(signal.SIGTERM)
    try:
        rc = srv.wait(timeout=120)
    except subprocess.TimeoutExpired:
        srv.kill()
        rc = "no exit within 120 s of SIGTERM"
    log.close()
    text = open(log_path, errors="replace").read()

    problems = list(st.errors)
    if died:
        problems.append("the server died during the run (exit %s)" % rc)
    elif rc != 0:
        problems.append("the server exited with %s after SIGTERM" % rc)
    marks = [m for m in SANITIZER_MARKS if m in text]
    if marks:
        problems.append("sanitizer reports in the server log: %s" % ", ".join(marks))
    if fd_idle1 is not None and fd_idle1 > fd_idle0:
        problems.append("open FDs when idle grew from %d to %d" % (fd_idle0, fd_idle1))
    hmax = max(st.health) if st.health else float("inf")
    if hmax > args.health_max_s:
        problems.append("/health took %.2f s (limit %.1f s)" % (hmax, args.health_max_s))
    if len(samples) >= 4 and args.rss_growth_max >= 0:
        q = samples[len(samples) // 4]
        end = samples[-1]
        if end[1] > q[1] * (1 + args.rss_growth_max):
            problems.append("RSS grew from %.1f to %.1f MiB" % (q[1] / 2**20, end[1] / 2**20))
    report = {
        "seconds": round(time.monotonic() - t0, 1), "clients": args.clients,
        "counts": st.counts, "errors": len(st.errors),
        "health_p50_ms": round(pct(st.health, 50) * 1000, 1),
        "health_p99_ms": round(pct(st.health, 99) * 1000, 1),
        "health_max_ms": round(hmax * 1000, 1), "health_probes": len(st.health),
        "rss_mib": [round(s[1] / 2**20, 1) for s in samples],
        "fds": [s[2] for s in samples], "fds_idle": [fd_idle0, fd_idle1], "server_exit": rc, "problems": problems[:50],
    }
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if problems:
        print("FAIL: %d problems; server log tail:\n%s" % (len(problems), text[-6000:]),
              file=sys.stderr)
        sys.exit(1)
    if not args.keep_log:
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
