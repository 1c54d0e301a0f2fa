#!/usr/bin/env python3
"""End-to-end checks of the rwkvd command line: the conformance commands print
exactly one JSON array that matches the reference outputs, `convert` round-trips,
every subcommand answers --help, and bad arguments fail with exit code 2.

Usage: test_cli.py RWKVD SOURCE_ROOT. Exit 77 (skip) parts need ../shared."""
import json
import os
import struct
import subprocess
import sys
import tempfile

RWKVD, ROOT = sys.argv[1], sys.argv[2]
SHARED = os.environ.get("RK_SHARED_DIR", os.path.join(ROOT, "..", "shared"))
DATA = os.path.join(ROOT, "tests", "data")
failures = []


def run(*args, ok=True):
    p = subprocess.run([RWKVD, *args], capture_output=True, text=True, timeout=300)
    if ok and p.returncode != 0:
        failures.append(f"{args}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def read_f32(path):
    with open(path, "rb") as f:
        b = f.read()
    return list(struct.unpack(f"<{len(b) // 4}f", b))


def check_close(got, want, atol, what):
    if len(got) != len(want):
        failures.append(f"{what}: length {len(got)} != {len(want)}")
        return
    worst = max(abs(a - b) for a, b in zip(got, want))
    if worst > atol:
        failures.append(f"{what}: max |diff| {worst:.3g} > {atol}")


# --help everywhere, usage errors are exit 2
for cmd in ["serve", "generate", "tune", "eval", "bench", "convert", "logits", "tokenize"]:
    p = run(cmd, "--help")
    if "usage" not in p.stdout.lower():
        failures.append(f"{cmd} --help prints no usage")
p = run("logits", "--model", os.path.join(DATA, "rand-mh.safetensors"), "--tokens", "1,x", ok=False)
if p.returncode != 2:
    failures.append(f"logits with a bad token list: exit {p.returncode}, want 2")
p = run("tune", "--model", "m", "--data", "d", "--out", "o", "--method", "kernel9", ok=False)
if p.returncode != 2 or "unknown method 'kernel9' (known: standard, kernel, dbp, observer, rl)" not in p.stderr:
    failures.append(f"tune --method kernel9: exit {p.returncode}, {p.stderr!r}")
p = run("tune", "--model", "m", "--data", "d", "--out", "o", "--method", "observer", ok=False)
if p.returncode != 2 or "runs as a server job" not in p.stderr:
    failures.append(f"tune --method observer: exit {p.returncode}, {p.stderr!r}")
# The judge's and the teacher's settings come from one table of rows: each
# row is a flag and a variable per client, with the client's own default.
env = dict(os.environ, RWKVD_TEACHER_TIMEOUT_MS="1234", RWKVD_JUDGE_RETRIES="7")
p = subprocess.run([RWKVD, "serve", "--model", "m", "--judge-max-response-bytes", "2M",
                    "--teacher-retries=0", "--teacher-url", "http://t/v1", "--teacher-model", "t",
                    "--print-config"], capture_output=True, text=True, env=env, timeout=60)
conf = dict(l.split(None, 1) for l in p.stdout.splitlines()[1:] if l.strip())
want = {"judge-timeout-ms": "30000", "teacher-timeout-ms": "1234", "judge-retries": "7",
        "teacher-retries": "0", "judge-max-response-bytes": "2097152",
        "teacher-max-response-bytes": "4194304", "judge-url": "(unset)",
        "teacher-url": "http://t/v1", "teacher-model": "t"}
for k, v in want.items():
    if conf.get(k) != v:
        failures.append(f"serve --print-config: {k} = {conf.get(k)!r}, want {v!r}")
for bad, msg in ((["--judge-retries", "11"], "invalid value '11' for --judge-retries (range 0..10)"),
                 (["--teacher-connect-timeout-ms", "0"], "--teacher-connect-timeout-ms (range 1..600000)"),
                 (["--teacher-url", "http://t/v1"], "--teacher-url needs --teacher-model"),
                 (["--judge-urls", "x"], "unknown option '--judge-urls'")):
    p = run("serve", "--model", "m", *bad, ok=False)
    if p.returncode == 0 or msg not in p.stderr:
        failures.append(f"serve {bad}: exit {p.returncode}, {p.stderr!r}")
p = run("tune", "--model", "m", "--data", "d", "--out", "o", "--decay", "step", ok=False)
if p.returncode != 2 or "--decay (cosine|linear|constant)" not in p.stderr:
    failures.append(f"tune --decay step: exit {p.returncode}, {p.stderr!r}")
p = run("tune", "--help")
for opt in ["--method", "--steps", "--weight-decay", "--tune-shift", "--checkpoint-every"]:
    if opt not in p.stdout:
        failures.append(f"tune --help does not list {opt}")
p = run("nosuchcommand", ok=False)
if p.returncode != 2:
    failures.append("unknown command must exit 2")
p = run("logits", "--model", "/nonexistent.safetensors", "--tokens", "1", ok=False)
if p.returncode != 1 or "/nonexistent.safetensors" not in p.stderr:
    failures.append("a missing model must exit 1 naming the file")

# logits on the multi-head random fixture = NumPy reference (last row of logits-all)
toks = open(os.path.join(DATA, "rand-mh.tokens.txt")).read().strip()
p = run("logits", "--model", os.path.join(DATA, "rand-mh.safetensors"), "--tokens", toks)
got = json.loads(p.stdout)
allv = read_f32(os.path.join(DATA, "rand-mh.logits-all.f32"))
V = len(got)
check_close(got, allv[-V:], 2e-4, "rwkvd logits vs NumPy reference (rand-mh)")
p = run("logits", "--reference", "--model", os.path.join(DATA, "rand-mh.safetensors"), "--tokens", toks)
check_close(json.loads(p.stdout), allv[-V:], 2e-4, "rwkvd logits --reference (rand-mh)")

# convert: f32 round trip is exact; bf16 stays close
with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "conv.safetensors")
    run("convert", "--model", os.path.join(DATA, "rand-mh.safetensors"), "--out", out, "--dtype", "f32")
    p = run("logits", "--model", out, "--tokens", toks)
    check_close(json.loads(p.stdout), got, 0.0, "logits after f32 convert round trip")
    run("convert", "--model", os.path.join(DATA, "rand-mh.safetensors"), "--out", out, "--dtype", "bf16")
    p = run("logits", "--model", out, "--tokens", toks)
    check_close(json.loads(p.stdout), got, 0.5, "logits after bf16 convert")

# serve --compute-nice: the compute helper threads run at that nice value and
# the HTTP loop keeps its own (Linux only: read from /proc)
if sys.platform.startswith("linux"):
    import time
    with tempfile.TemporaryDirectory() as d:
        srv = subprocess.Popen([RWKVD, "serve", "--model", os.path.join(DATA, "rand-mh.safetensors"),
                                "--port", "0", "--threads", "3", "--compute-nice", "7",
                                "--data-dir", os.path.join(d, "data")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = ""
            deadline = time.time() + 60
            while "listening" not in line and time.time() < deadline:
                line = srv.stdout.readline() or line
                if srv.poll() is not None:
                    break
            nices = {}
            time.sleep(0.5)  # the engine thread lowers its priority when it starts
            for tid in os.listdir(f"/proc/{srv.pid}/task"):
                with open(f"/proc/{srv.pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                nices[int(tid)] = int(fields[16])  # field 19 of stat: nice
            n7 = sum(1 for v in nices.values() if v == 7)
            if "listening" not in line:
                failures.append("serve --compute-nice 7 did not start")
            elif n7 != 3 or nices.get(srv.pid) != os.nice(0):
                # the main thread keeps the nice value it inherited (the test
                # itself may run under `nice`)
                failures.append(f"--compute-nice 7: thread nice values {sorted(nices.values())}, "
                                f"want three compute threads at 7 and the main thread at "
                                f"{os.nice(0)}")
        finally:
            srv.terminate()
            srv.wait(timeout=60)

# --- a clean first run (issue 13) -------------------------------------------
import signal
import time

RANDMH = os.path.join(DATA, "rand-mh.safetensors")
DEMO = os.path.join(ROOT, "models", "demo.safetensors")


def start_serve(*args, env=None):
    """rwkvd serve --port 0 ...; returns (process, port) or (process, None)."""
    srv = subprocess.Popen([RWKVD, "serve", "--model", RANDMH, "--port", "0", "--threads", "1",
                            *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
    line, deadline = "", time.time() + 60
    while "listening" not in line and time.time() < deadline:
        line = srv.stdout.readline()
        if not line and srv.poll() is not None:
            return srv, None
    return srv, int(line.rsplit(":", 1)[1]) if "listening" in line else None


def stop(srv, sig=signal.SIGTERM):
    if srv.poll() is None:
        srv.send_signal(sig)
    try:
        srv.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.communicate()


def with_vocab(v, dst):
    """rand-mh with V = v (emb and head rows repeated or cut)."""
    with open(RANDMH, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    hdr, data = json.loads(b[8:8 + n]), b[8 + n:]
    out_hdr, chunks, off = {"__metadata__": hdr.get("__metadata__", {})}, [], 0
    for k, t in sorted(((k, t) for k, t in hdr.items() if k != "__metadata__"),
                       key=lambda kt: kt[1]["data_offsets"][0]):
        raw = data[t["data_offsets"][0]:t["data_offsets"][1]]
        shape = list(t["shape"])
        if k in ("emb.weight", "head.weight"):
            row = shape[1] * 4
            rows = [raw[(i % shape[0]) * row:(i % shape[0] + 1) * row] for i in range(v)]
            raw, shape = b"".join(rows), [v, shape[1]]
        out_hdr[k] = {"dtype": t["dtype"], "shape": shape, "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    h = json.dumps(out_hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))


with tempfile.TemporaryDirectory() as d:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("RWKVD_BLAS_AUTO", None)
    data = os.path.join(d, "data")
    srv, port = start_serve("--data-dir", data, env=env)
    try:
        if port is None:
            failures.append("serve --port 0 did not start")
        else:
            # The process is called rwkvd (not "exe") after the OpenBLAS re-exec,
            # so ps, pidof and pkill find it; argv[0] is kept.
            with open(f"/proc/{srv.pid}/comm") as f:
                comm = f.read().strip()
            if comm != "rwkvd":
                failures.append(f"the server's process name is {comm!r}, want 'rwkvd'")
            ps = subprocess.run(["ps", "-o", "comm=", "-p", str(srv.pid)], capture_output=True,
                                text=True)
            if ps.returncode == 0 and ps.stdout.strip() != "rwkvd":
                failures.append(f"ps shows the server as {ps.stdout.strip()!r}")
            with open(f"/proc/{srv.pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0].decode()
            if argv0 != RWKVD:
                failures.append(f"argv[0] after the re-exec is {argv0!r}, want {RWKVD!r}")

            # One server per data dir: a second one stops at once, naming the pid.
            t0 = time.time()
            p = subprocess.run([RWKVD, "serve", "--model", RANDMH, "--port", "0",
                                "--data-dir", data], capture_output=True, text=True, timeout=60)
            if p.returncode == 0 or f"pid {srv.pid}" not in p.stderr or "in use" not in p.stderr:
                failures.append(f"a second serve on the same data dir: exit {p.returncode}, "
                                f"stderr {p.stderr.strip()!r}; want a failure naming pid {srv.pid}")
            if "configuration" in p.stderr:
                failures.append("the data-dir error comes after the configuration dump")
            # A port in use is found before the model loads, as the first line.
            p = subprocess.run([RWKVD, "serve", "--model", RANDMH, "--port", str(port),
                                "--data-dir", os.path.join(d, "other")], capture_output=True,
                               text=True, timeout=60)
            first = (p.stderr.strip().splitlines() or [""])[0]
            if p.returncode == 0 or "in use" not in first or str(port) not in first:
                failures.append(f"serve on a port in use: exit {p.returncode}, first line "
                                f"{first!r}")
            # rwkvd tune must not write into the store of a running server.
            jl = os.path.join(d, "t.jsonl")
            with open(jl, "w") as f:
                f.write('{"text": "hello there, general kenobi"}\n')
            p = subprocess.run([RWKVD, "tune", "--model", RANDMH, "--data", jl, "--steps", "1",
                                "--out", os.path.join(data, "x.safetensors")],
                               capture_output=True, text=True, timeout=120)
            if p.returncode == 0 or f"pid {srv.pid}" not in p.stderr:
                failures.append(f"tune --out into a served data dir: exit {p.returncode}, "
                                f"{p.stderr.strip()!r}")
    finally:
        stop(srv, signal.SIGKILL)
    # kill -9 leaves the lock file but not the lock: a new server starts.
    srv, port = start_serve("--data-dir", data, env=env)
    if port is None:
        failures.append("serve after kill -9 of the previous one did not start: "
                        + srv.communicate()[1][-300:])
    stop(srv)

    # Fatal start-up errors come first, before any configuration dump.
    p = run("serve", "--model", os.path.join(d, "missing.safetensors"), "--port", "0",
            "--data-dir", data, ok=False)
    first = (p.stderr.strip().splitlines() or [""])[0]
    if p.returncode == 0 or "missing.safetensors" not in first or "No such file" not in first:
        failures.append(f"serve with a missing model: first line {first!r}")
    # A key file that cannot be opened: the reason (strerror) and the uid.
    p = run("serve", "--model", RANDMH, "--port", "0", "--data-dir", data, "--api-keys",
            os.path.join(d, "nokeys"), ok=False)
    if p.returncode == 0 or "No such file or directory" not in p.stderr or "uid" not in p.stderr:
        failures.append(f"missing key file: {p.stderr.strip()!r}")
    if os.getuid() != 0:
        keys = os.path.join(d, "keys")
        with open(keys, "w") as f:
            f.write("0123456789abcdef default\n")
        os.chmod(keys, 0)
        p = run("serve", "--model", RANDMH, "--port", "0", "--data-dir", data, "--api-keys",
                keys, ok=False)
        if "Permission denied" not in p.stderr or "chmod" not in p.stderr:
            failures.append(f"unreadable key file: {p.stderr.strip()!r}")

    # rwkvd tune into a log file: plain lines, no cursor control.
    jl = os.path.join(d, "t.jsonl")
    with open(jl, "w") as f:
        for i in range(4):
            f.write(json.dumps({"text": f"example number {i} of a tiny dataset"}) + "\n")
    p = run("tune", "--model", RANDMH, "--data", jl, "--steps", "3", "--val-split", "0",
            "--threads", "1", "--out", os.path.join(d, "tuned.safetensors"))
    if "\r" in p.stderr or "\033" in p.stderr:
        failures.append(f"tune writes terminal control codes into a non-terminal: {p.stderr!r}")
    if "step 3/3" not in p.stderr:
        failures.append(f"tune without a terminal prints no progress lines: {p.stderr!r}")

    # A community state file (time_state tensors only, no fingerprint) works
    # with --state as it does with PUT /states.
    H, N = 192 // 64, 64
    hdr, off = {}, 0
    for i in range(2):
        n = H * N * N * 4
        hdr[f"blocks.{i}.att.time_state"] = {"dtype": "F32", "shape": [H, N, N],
                                             "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    community = os.path.join(d, "community.safetensors")
    with open(community, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + struct.pack(f"<{off // 4}f",
                                                             *([0.01] * (off // 4))))
    v256 = os.path.join(d, "v256.safetensors")
    with_vocab(256, v256)
    p = run("generate", "--model", v256, "--prompt", "hi", "--max-tokens", "2",
            "--temperature", "0", "--state", community)
    if p.returncode != 0:
        failures.append(f"generate --state with a community state file: {p.stderr.strip()!r}")
    p = run("eval", "--model", v256, "--data", jl, "--state", community)
    if p.returncode != 0:
        failures.append(f"eval --state with a community state file: {p.stderr.strip()!r}")
    # The byte tokenizer: 256..65535 tokens without --vocab, else refused with the reason.
    for v, ok in [(100, False), (1000, True), (4096, True), (65536, False)]:
        path = os.path.join(d, f"v{v}.safetensors")
        with_vocab(v, path)
        p = run("generate", "--model", path, "--prompt", "hi", "--max-tokens", "2",
                "--temperature", "0", ok=False)
        if (p.returncode == 0) != ok:
            failures.append(f"generate on a model with V={v} without --vocab: exit "
                            f"{p.returncode}: {p.stderr.strip()!r}")
        if not ok and "--vocab" not in p.stderr:
            failures.append(f"V={v} refused without saying why: {p.stderr.strip()!r}")
        if ok and "byte tokenizer" not in p.stderr:
            failures.append(f"V={v}: no warning about the byte tokenizer: {p.stderr.strip()!r}")
        if not ok:  # serve follows the same rule
            p = run("serve", "--model", path, "--port", "0", "--data-dir",
                    os.path.join(d, f"data{v}"), ok=False)
            if p.returncode == 0 or "--vocab" not in p.stderr:
                failures.append(f"serve V={v}: {p.stderr.strip()!r}")

# bench --json prints one object with every documented field; --tune adds
# the tuning fields (forward + backward against prefill in the same run)
p = run("bench", "--model", os.path.join(DATA, "rand-mh.safetensors"), "--json", "--tune",
        "--threads", "2", "--prompt-tokens", "24", "--decode-tokens", "4", "--batch", "1,4")
try:
    b = json.loads(p.stdout)
    for k in ["prefill_tok_s", "decode_tok_s", "peak_rss_mb", "adapter_swap_vs_step",
              "tune_tok_s", "tune_prefill_tok_s", "tune_vs_prefill", "tune_peak_rss_mb"]:
        if not (isinstance(b.get(k), (int, float)) and b[k] > 0):
            failures.append(f"bench --json: {k} missing or not positive: {b.get(k)}")
    if sorted(b.get("batched_tok_s", {})) != ["1", "4"]:
        failures.append(f"bench --json: batched_tok_s keys {b.get('batched_tok_s')}")
    ratio = b["tune_prefill_tok_s"] and b["tune_tok_s"] / b["tune_prefill_tok_s"]
    if abs(ratio - b["tune_vs_prefill"]) > 0.01:
        failures.append(f"bench --json: tune_vs_prefill {b['tune_vs_prefill']} != {ratio:.3f}")
except (ValueError, KeyError, TypeError) as e:
    failures.append(f"bench --json --tune: {e}: {p.stdout[:200]}")

# the shared fixtures: the tiny model and the World tokenizer case
tiny = os.path.join(SHARED, "fixtures", "models")
if os.path.isdir(tiny):
    want = read_f32(os.path.join(tiny, "tiny-rwkv7-834K.expected-logits.f32"))
    for name in ["tiny-rwkv7-834K-FP32.bin", "tiny-rwkv7-834K-FP16.bin", "tiny-rwkv7-834K.safetensors"]:
        p = run("logits", "--model", os.path.join(tiny, name), "--tokens", "34,105,110")
        check_close(json.loads(p.stdout), want, 1e-4, f"rwkvd logits {name}")
    vocab = os.path.join(SHARED, "fixtures", "tokenizer", "rwkv_vocab_v20230424.txt")
    cases = json.load(open(os.path.join(SHARED, "fixtures", "tokenizer", "world_tokenizer_cases.json")))
    for case in cases:
        p = run("tokenize", "--vocab", vocab, "--text", case["text"])
        if json.loads(p.stdout) != case["tokens"]:
            failures.append(f"tokenize {case['text']!r}: {p.stdout.strip()} != {case['tokens']}")
    p = run("generate", "--model", os.path.join(tiny, "tiny-rwkv7-834K.safetensors"),
            "--prompt", "The", "--max-tokens", "8", "--temperature", "0")
    p2 = run("generate", "--model", os.path.join(tiny, "tiny-rwkv7-834K.safetensors"),
             "--prompt", "The", "--max-tokens", "8", "--temperature", "0")
    if p.stdout != p2.stdout:
        failures.append("greedy generate is not deterministic")
    p3 = run("generate", "--model", os.path.join(tiny, "tiny-rwkv7-834K.safetensors"),
             "--prompt", "The", "--max-tokens", "40", "--temperature", "0.9", "--seed", "5")
    p4 = run("generate", "--model", os.path.join(tiny, "tiny-rwkv7-834K.safetensors"),
             "--prompt", "The", "--max-tokens", "40", "--temperature", "0.9", "--seed", "5")
    if p3.stdout != p4.stdout:
        failures.append("seeded sampling is not deterministic")
else:
    print("SKIP part shared-fixture checks: ../shared/fixtures is not present")

for f in failures:
    print("FAIL:", f)
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
