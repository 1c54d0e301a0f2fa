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
            elif n7 != 3 or nices.get(srv.pid) != 0:
                failures.append(f"--compute-nice 7: thread nice values {sorted(nices.values())}, "
                                "want three compute threads at 7 and the main thread at 0")
        finally:
            srv.terminate()
            srv.wait(timeout=60)

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
    print("../shared/fixtures absent: shared-fixture checks skipped")

for f in failures:
    print("FAIL:", f)
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
