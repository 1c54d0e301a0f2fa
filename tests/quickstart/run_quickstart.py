#!/usr/bin/env python3
"""Runs the README's quick-start walk-through verbatim against a real server.

usage: run_quickstart.py RWKVD SOURCE_ROOT

The walk-through is every fenced block in README.md that follows a marker
comment `<!-- quickstart: NAME -->`. The `sh` blocks run in order in one bash
process (so shell variables carry from block to block) from the source root;
the only change made to them is the port: `127.0.0.1:8080` becomes the port of
the server this test starts (`rwkvd serve --port 0` on the demo model, with a
fresh data directory). The `js` blocks run with Node and the openai package
of tests/openai when it is installed.

Checks: every block exits 0; no JSON answer is an error object; the base
generation (block `base`) and the one with the tuned state (block `tuned`)
both produce text and the texts differ; the tuning job (block `tune`) gets an
id, its status (block `job`) is known, and its event stream (block `events`)
ends with the job succeeded.

Exit 77 (skipped) while a piece it needs is missing: the demo model, the
marked blocks in README.md, or the /tune route of the server.
"""
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SKIP = 77
BLOCK_RE = re.compile(r"<!-- quickstart: ([A-Za-z0-9_-]+) -->\s*\n```(\w+)[^\n]*\n(.*?)^```",
                      re.S | re.M)
WALK_TIMEOUT_S = 150


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(SKIP)


def fail(why, out=None):
    print(f"FAIL: {why}")
    if out is not None:
        print("---- output ----")
        print(out)
    sys.exit(1)


def extract_blocks(readme_text):
    """[(name, language, body)] in README order."""
    return [(m.group(1), m.group(2), m.group(3)) for m in BLOCK_RE.finditer(readme_text)]


def with_port(body, port):
    return body.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace(
        "localhost:8080", f"localhost:{port}")


def start_server(rwkvd, root, tmp):
    log = open(os.path.join(tmp, "server.log"), "w")
    cmd = [rwkvd, "serve", "--model", os.path.join(root, "models", "demo.safetensors"),
           "--host", "127.0.0.1", "--port", "0", "--data-dir", os.path.join(tmp, "data"),
           "--threads", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKVD_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, cwd=tmp)
    deadline = time.time() + 60
    line = b""
    while time.time() < deadline and not line.endswith(b"\n"):
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            ch = proc.stdout.read1(256) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
            if not ch:
                break
            line += ch
        elif proc.poll() is not None:
            break
    m = re.search(rb"listening on http://[^:]+:(\d+)", line)
    if not m:
        proc.kill()
        proc.wait()
        log.close()
        fail("the server did not print its port", open(os.path.join(tmp, "server.log")).read())
    return proc, int(m.group(1)), log


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_status(port, method, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def json_values(text):
    """Every JSON object in `text`: whole text, one per line, or SSE data lines."""
    out = []
    try:
        v = json.loads(text)
        return [v] if isinstance(v, dict) else []
    except ValueError:
        pass
    dec = json.JSONDecoder()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        if not line.startswith("{"):
            continue
        try:
            v, _ = dec.raw_decode(line)
        except ValueError:
            continue
        if isinstance(v, dict):
            out.append(v)
    return out


def gen_text(v):
    if isinstance(v.get("text"), str):
        return v["text"]
    ch = v.get("choices") or []
    if ch and isinstance(ch[0], dict):
        return ch[0].get("text") or (ch[0].get("message") or {}).get("content")
    return None


def run_walkthrough(root, blocks, port):
    """Runs the sh blocks in one bash; returns ({name: stdout}, failed_name)."""
    script = ["set -eu -o pipefail"]
    for name, lang, body in blocks:
        if lang not in ("sh", "bash", "shell"):
            continue
        script.append(f"printf '\\n@@quickstart-step {name}@@\\n'")
        script.append(with_port(body, port))
    script.append("printf '\\n@@quickstart-step @end@@\\n'")
    p = subprocess.run(["bash", "-c", "\n".join(script)], cwd=root, capture_output=True,
                       text=True, timeout=WALK_TIMEOUT_S)
    steps, cur = {}, None
    order = []
    for line in p.stdout.split("\n"):
        m = re.fullmatch(r"@@quickstart-step (\S+)@@", line)
        if m:
            cur = m.group(1)
            order.append(cur)
            steps[cur] = []
            continue
        if cur is not None:
            steps[cur].append(line)
    steps = {k: "\n".join(v).strip() for k, v in steps.items()}
    if p.returncode != 0 or not order or order[-1] != "@end":
        last = order[-1] if order else "(none)"
        fail(f"walk-through block '{last}' failed (exit {p.returncode})",
             steps.get(last, "") + "\n---- stderr ----\n" + p.stderr)
    for name, out in steps.items():
        print(f"---- {name} ----\n{out[:1500]}")
    return steps


def run_js(root, blocks, port, tmp):
    js = [(n, b) for n, lang, b in blocks if lang in ("js", "javascript", "mjs")]
    if not js:
        return
    mods = os.path.join(root, "tests", "openai", "node_modules")
    if not shutil.which("node") or not os.path.isdir(os.path.join(mods, "openai")):
        print("SKIP part README OpenAI block: needs node and the openai npm package "
              "(./scripts/test.sh installs it: npm ci --prefix tests/openai)")
        return
    d = os.path.join(tmp, "js")
    os.makedirs(d, exist_ok=True)
    os.symlink(mods, os.path.join(d, "node_modules"))
    for name, body in js:
        path = os.path.join(d, f"{name}.mjs")
        with open(path, "w") as f:
            f.write(with_port(body, port))
        p = subprocess.run(["node", path], cwd=root, capture_output=True, text=True, timeout=120)
        print(f"---- {name} (node) ----\n{p.stdout[:1500]}")
        if p.returncode != 0:
            fail(f"OpenAI client block '{name}' failed (exit {p.returncode})",
                 p.stdout + "\n---- stderr ----\n" + p.stderr)
        if not p.stdout.strip():
            fail(f"OpenAI client block '{name}' printed nothing")


def check(steps):
    for name, out in steps.items():
        for v in json_values(out):
            if "error" in v and v["error"]:
                fail(f"block '{name}' got an error answer", out)
    for need in ("base", "tune", "tuned"):
        if need not in steps:
            fail(f"README has no quickstart block '{need}'")
    base = [t for t in map(gen_text, json_values(steps["base"])) if t]
    tuned = [t for t in map(gen_text, json_values(steps["tuned"])) if t]
    if not base or not tuned:
        fail("a generation block printed no text", steps["base"] + "\n----\n" + steps["tuned"])
    if base[0] == tuned[0]:
        fail(f"the tuned state did not change the output: {base[0]!r}")
    print(f"base:  {base[0]!r}\ntuned: {tuned[0]!r}")
    ids = [v.get("id") for v in json_values(steps["tune"]) if v.get("id")]
    if not ids and not re.search(r"\S", steps["tune"]):
        fail("the tuning block printed no job", steps["tune"])
    if "job" in steps:
        st = [v.get("status") for v in json_values(steps["job"]) if v.get("status")]
        if not st:
            fail("GET /jobs/{id} printed no status", steps["job"])
        if any(s in ("failed", "cancelled") for s in st):
            fail(f"the job is {st[-1]}", steps["job"])
    if "events" in steps:
        evs = json_values(steps["events"])
        if not evs:
            fail("the job's event stream printed nothing", steps["events"])
        st = [v.get("status") for v in evs if v.get("status")]
        if not st or st[-1] != "succeeded":
            fail(f"the event stream did not end with the job succeeded ({st[-1:]})",
                 steps["events"])


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    rwkvd, root = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    if not os.path.isfile(os.path.join(root, "models", "demo.safetensors")):
        skip("models/demo.safetensors is missing")
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        blocks = extract_blocks(f.read())
    if not any(n == "tune" for n, _, _ in blocks):
        skip("README.md has no marked quick-start blocks yet")
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="rwkvd-quickstart-")
    proc = log = None
    code = 1
    try:
        proc, port, log = start_server(rwkvd, root, tmp)
        if http_status(port, "POST", "/tune", {}) == 404:
            skip("the server has no POST /tune route yet")
        steps = run_walkthrough(root, blocks, port)
        check(steps)
        run_js(root, blocks, port, tmp)
        code = 0
    except subprocess.TimeoutExpired as e:
        print(f"FAIL: timed out: {e}")
    except SystemExit as e:
        code = e.code
    finally:
        if proc:
            stop_server(proc)
        if log:
            log.close()
            if code not in (0, SKIP):
                with open(os.path.join(tmp, "server.log")) as f:
                    print("---- server log (tail) ----\n" + f.read()[-4000:])
        shutil.rmtree(tmp, ignore_errors=True)
    if code == 0:
        print(f"quickstart passed in {time.time() - t0:.1f}s")
    return code

if __name__ == "__main__":
    sys.exit(main())
