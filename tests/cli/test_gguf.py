#!/usr/bin/env python3
"""test_gguf.py - GGUF models and vocabularies (suite `cli`).

usage: test_gguf.py RWKVD SOURCE_ROOT

Writes GGUF files at test time from the demo model with tools/gguf_export.py
(llama.cpp's rwkv7 names and layout) and checks, through the rwkvd binary:
  * F32 and BF16 files give exactly the logits of the safetensors model
    (BF16: the file itself; F32: its f32 conversion);
  * a Q8_0 file gives exactly the logits of `rwkvd convert --dtype q8`;
  * Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K: every tensor loaded with --dtype f32 (rwkvd convert)
    equals, element for element, the NumPy reference dequantizer's values,
    and the logits (requantized to 8 bits) stay within the bounds in
    core/FORMAT.md with the same most likely token;
  * the World vocabulary from a GGUF file's metadata tokenizes the fixture
    strings exactly as rwkv_vocab_v20230424.txt does (skipped without
    ../shared/fixtures), and a World-vocabulary model generates with it;
  * `rwkvd generate` and `rwkvd serve` run a GGUF model;
  * malformed files are refused with the right message.
Exit 0 = pass, 1 = fail, 77 = skip (no numpy). Takes a few seconds.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

RWKVD, ROOT = (sys.argv[1:3] + [None, None])[:2]
FAILS = []
PROMPT = "User: What is the capital of Italy?\n\nAssistant:"
TOKENS = ",".join(str(b) for b in PROMPT.encode())
# Largest logit difference from the unquantized model on PROMPT (the demo
# model, large matrices quantized, requantized to 8 bits at load);
# core/FORMAT.md lists the measured values.
BOUNDS = {"q8_0": 0.25, "q6_k": 0.5, "q5_k": 0.8, "q5_1": 0.8, "q5_0": 0.8, "q4_k": 1.5,
          "q4_1": 1.5, "q4_0": 1.5}


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg, flush=True)
    return cond


def run(*args, timeout=120):
    return subprocess.run([RWKVD, *args], capture_output=True, timeout=timeout)


def logits(model, tokens=TOKENS):
    p = run("logits", "--model", model, "--tokens", tokens)
    check(p.returncode == 0, "logits %s: %s" % (model, p.stderr.decode(errors="replace")))
    return p.stdout


def numpy_python():
    for py in (sys.executable, "/usr/bin/python3"):
        if py and os.path.exists(py) and subprocess.run(
                [py, "-c", "import numpy"], capture_output=True).returncode == 0:
            return py
    return None


def main():
    global np, gx
    py = numpy_python()
    if not py:
        print("SKIP: numpy is not installed (tools/gguf_export.py needs it)")
        return 77
    if py != sys.executable:  # rerun under the interpreter that has numpy
        return subprocess.run([py, __file__, *sys.argv[1:]]).returncode
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import gguf_export as gx

    demo = os.path.join(ROOT, "models", "demo.safetensors")
    tmp = tempfile.mkdtemp(prefix="rwkvd-gguf-")
    try:
        exact(tmp, demo)
        quantized(tmp, demo)
        vocab(tmp)
        commands(tmp)
        malformed(tmp, demo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILS:
        print("%d failure(s)" % len(FAILS))
        return 1
    print("all GGUF checks passed")
    return 0


def export(tmp, src, t, **kw):
    out = os.path.join(tmp, "m-%s.gguf" % t)
    gx.export(src, out, t, kw.get("vocab"))
    return out


def exact(tmp, demo):
    base = logits(demo)
    check(logits(export(tmp, demo, "bf16")) == base, "bf16 GGUF: logits differ from safetensors")
    f32 = os.path.join(tmp, "f32.safetensors")
    check(run("convert", "--model", demo, "--out", f32, "--dtype", "f32").returncode == 0,
          "convert f32")
    check(logits(export(tmp, demo, "f32")) == logits(f32), "f32 GGUF: logits differ")
    q8 = os.path.join(tmp, "q8.safetensors")
    check(run("convert", "--model", demo, "--out", q8, "--dtype", "q8").returncode == 0,
          "convert q8")
    check(logits(export(tmp, demo, "q8_0")) == logits(q8),
          "q8_0 GGUF: logits differ from --dtype q8")
    print("ok   bf16 / f32 / q8_0 logits bit-identical")


# llama.cpp names of the large matrices -> official names, for the comparison
def official(name):
    g = {"token_embd.weight": "emb.weight", "output.weight": "head.weight"}
    if name in g:
        return g[name]
    if not name.startswith("blk."):
        return None
    _, i, rest = name.split(".", 2)
    m = {"time_mix_receptance.weight": "att.receptance.weight",
         "time_mix_key.weight": "att.key.weight", "time_mix_value.weight": "att.value.weight",
         "time_mix_output.weight": "att.output.weight",
         "channel_mix_key.weight": "ffn.key.weight",
         "channel_mix_value.weight": "ffn.value.weight"}
    return "blocks.%s.%s" % (i, m[rest]) if rest in m else None


def quantized(tmp, demo):
    base = np.array(json.loads(logits(demo)))
    for t in ("q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q8_0"):
        g = export(tmp, demo, t)
        kv, tensors = gx.read_gguf(g)
        conv = os.path.join(tmp, "deq-%s.safetensors" % t)
        p = run("convert", "--model", g, "--out", conv, "--dtype", "f32")
        if not check(p.returncode == 0, "convert %s: %s" % (t, p.stderr)):
            continue
        held = {k: gx.to_f32(dt, v) for k, (dt, v) in gx.read_safetensors(conv).items()}
        n = 0
        for name, (gt, shape, raw) in tensors.items():
            key = official(name)
            if key is None:
                continue
            ref = gx.dequant(gt, raw, int(np.prod(shape))).reshape(shape)
            bad = int((held[key] != ref).sum())
            check(bad == 0, "%s: %s: %d elements differ from the NumPy dequantizer" %
                  (t, name, bad))
            n += ref.size
        got = np.array(json.loads(logits(g)))
        d = float(np.abs(got - base).max())
        check(d <= BOUNDS[t], "%s: logits differ by %.3f (bound %.2f)" % (t, d, BOUNDS[t]))
        check(got.argmax() == base.argmax(), "%s: another most likely token" % t)
        print("ok   %-5s %d values as the reference dequantizes them; logits within %.3f" %
              (t, n, d))


def vocab(tmp):
    fx = os.path.join(ROOT, "..", "shared", "fixtures")
    vf = os.path.join(fx, "tokenizer", "rwkv_vocab_v20230424.txt")
    if not os.path.exists(vf):
        print("skip vocabulary checks: ../shared/fixtures is missing")
        return
    vg = os.path.join(tmp, "vocab.gguf")
    w = gx.Writer()
    w.add("general.architecture", 8, "rwkv7")
    gx.add_vocab(w, vf, 65536)
    w.write(vg)
    with open(os.path.join(fx, "tokenizer", "world_tokenizer_cases.json"), encoding="utf-8") as f:
        texts = [c["text"] for c in json.load(f)]
    texts += ["Hello, world!\n\n", "a\\b 'q' \"dq\" \t\r\n", "\u00e9\u4f60\u597d\U0001f600",
              "User: What is the capital of Italy?\n\nAssistant:", "x\x01\x7f~"]
    for t in texts:
        a = run("tokenize", "--vocab", vf, "--text", t)
        b = run("tokenize", "--vocab", vg, "--text", t)
        check(a.returncode == 0 and a.stdout == b.stdout,
              "tokenize %r: file %s vs GGUF %s %s" % (t, a.stdout, b.stdout, b.stderr))
    print("ok   World vocabulary from GGUF metadata: %d strings tokenized alike" % len(texts))

    # A World-vocabulary model: the tiny fixture with V padded to 65536.
    tiny = os.path.join(fx, "models", "tiny-rwkv7-834K.safetensors")
    st = gx.read_safetensors(tiny)
    wide = os.path.join(tmp, "tiny-world.safetensors")
    hdr, chunks, off = {}, [], 0
    for k, (dt, v) in st.items():
        v = gx.to_f32(dt, v)
        if k in ("emb.weight", "head.weight"):
            v = np.resize(v, (65536, v.shape[1]))
        b = np.ascontiguousarray(v, np.float32).tobytes()
        hdr[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(wide, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
    g = os.path.join(tmp, "tiny-world.gguf")
    gx.export(wide, g, "bf16", vf)
    p = run("generate", "--model", g, "--prompt", "Hello", "--max-tokens", "4",
            "--temperature", "0")
    err = p.stderr.decode(errors="replace")
    check(p.returncode == 0 and "vocabulary from the GGUF metadata" in err,
          "generate with the GGUF vocabulary: rc %d %s" % (p.returncode, err))
    print("ok   World model generates with its GGUF vocabulary")
    # The demo (V 256) with a 65,536-token vocabulary is inconsistent.
    bad = os.path.join(tmp, "demo-world.gguf")
    gx.export(os.path.join(ROOT, "models", "demo.safetensors"), bad, "bf16", vf)
    must_fail(bad, "vocabulary longer than V", "tokenizer.ggml.tokens holds 65530 tokens")


def commands(tmp):
    g = os.path.join(tmp, "m-q8_0.gguf")
    p = run("generate", "--model", g, "--prompt", PROMPT, "--max-tokens", "60",
            "--temperature", "0", "--stop", "\n\n")
    check(p.returncode == 0 and b"Rome" in p.stdout, "generate: %r %r" % (p.stdout, p.stderr))
    srv = subprocess.Popen([RWKVD, "serve", "--model", g, "--port", "0", "--threads", "1",
                            "--data-dir", os.path.join(tmp, "data")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line, deadline = "", time.time() + 60
        while "listening" not in line and time.time() < deadline:
            line = srv.stdout.readline()
            if not line and srv.poll() is not None:
                break
        if check("listening" in line, "serve a GGUF model: did not start"):
            port = int(line.rsplit(":", 1)[1])
            req = urllib.request.Request(
                "http://127.0.0.1:%d/generate" % port,
                data=json.dumps({"prompt": PROMPT, "max_tokens": 60, "temperature": 0,
                                 "stop": ["\n\n"]}).encode(),
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                text = json.load(r).get("text", "")
            check("Rome" in text, "serve a GGUF model: %r" % text)
    finally:
        if srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
        try:
            srv.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.communicate()
    print("ok   generate and serve a GGUF model")


def must_fail(path, what, *subs):
    p = run("logits", "--model", path, "--tokens", "1,2")
    err = p.stderr.decode(errors="replace")
    ok = check(p.returncode != 0 and not p.stdout.strip(), "%s: loaded (rc %d)" %
               (what, p.returncode))
    for s in subs:
        ok &= check(s in err, "%s: message %r lacks %r" % (what, err.strip(), s))
    if ok:
        print("ok   %-30s %s" % (what, err.strip().splitlines()[-1][:140]))


def malformed(tmp, demo):
    good = os.path.join(tmp, "m-bf16.gguf")
    with open(good, "rb") as f:
        raw = f.read()
    n = [0]

    def put(data):
        n[0] += 1
        p = os.path.join(tmp, "bad%d.gguf" % n[0])
        with open(p, "wb") as f:
            f.write(data)
        return p

    def writer(edit):
        """The demo's GGUF with `edit` applied to the writer first."""
        w = gx.build(demo, "bf16", None)
        edit(w)
        out = os.path.join(tmp, "bad%d.gguf" % (n[0] + 1))
        n[0] += 1
        w.write(out)
        return out

    must_fail(put(raw[:4] + struct.pack("<I", 7) + raw[8:]), "version 7",
              "GGUF version 7 is not supported")
    must_fail(put(raw[:5000]), "truncated metadata", "runs past the end of the file")
    must_fail(put(raw[:len(raw) - 100]), "truncated data", "run past the end of the file")
    must_fail(put(raw[:24] + struct.pack("<Q", 1 << 40) + raw[32:]), "huge key length",
              "exceeds the limit")

    def set_tensor(name, **kw):
        def edit(w):
            for i, (tn, gt, shape, data) in enumerate(w.tensors):
                if tn == name:
                    w.tensors[i] = (tn, kw.get("gt", gt), kw.get("shape", shape), data)
        return edit

    must_fail(writer(set_tensor("blk.2.time_mix_key.weight", gt=10)), "Q2_K tensor",
              "tensor blk.2.time_mix_key.weight: type Q2_K = 10 is not supported")
    must_fail(writer(set_tensor("blk.0.time_mix_w0.weight", shape=[1 << 40, 1 << 40])),
              "dimension overflow", "blk.0.time_mix_w0.weight", "overflows")
    must_fail(writer(set_tensor("blk.1.time_mix_w1.weight", shape=[256, 32])), "wrong shape",
              "blk.1.time_mix_w1.weight", "expected shape [32, 256]")

    def kv_set(key, vtype, value):
        def edit(w):
            w.kv = [(k, t, v) for k, t, v in w.kv if k != key] + [(key, vtype, value)]
        return edit

    must_fail(writer(kv_set("general.architecture", 8, "llama")), "another architecture",
              "GGUF architecture 'llama' is not RWKV-7")
    must_fail(writer(kv_set("rwkv7.block_count", 4, 7)), "block_count disagrees",
              "rwkv7.block_count is 7, but the tensors give 6")
    # llama.cpp takes a byte-level model's vocabulary size from this key only.
    check(("rwkv7.vocab_size", 4, 256) in gx.build(demo, "bf16", None).kv,
          "exporter: a byte-level file lacks rwkv7.vocab_size = 256")
    must_fail(writer(kv_set("rwkv7.vocab_size", 4, 300)), "vocab_size disagrees",
              "rwkv7.vocab_size is 300, but the tensors give 256")
    must_fail(writer(kv_set("general.alignment", 4, 48)), "alignment 48",
              "general.alignment must be a u32 power of two")
    must_fail(writer(lambda w: w.kv.append(("x.nested", 9, (9, [(4, [1])])))), "nested array",
              "arrays of arrays are not supported")
    must_fail(writer(lambda w: w.kv.append(w.kv[0])), "duplicate key",
              "general.architecture appears twice")
    must_fail(writer(lambda w: w.tensors.pop(5)), "missing tensor", "missing tensor")
    must_fail(writer(kv_set("rwkv7.attention.layer_norm_epsilon", 6, 1e-6)), "epsilon 1e-6",
              "is not RWKV-7's 1e-5")

    # Tensor offsets: misaligned, overlapping (rewrite the offsets in place).
    def offsets(raw_file, fn):
        b = bytearray(open(raw_file, "rb").read())
        pos = offset_positions(b)
        fn(b, pos)
        return put(bytes(b))

    def shift(b, pos):
        p = pos[3]
        struct.pack_into("<Q", b, p, struct.unpack_from("<Q", b, p)[0] + 2)

    def overlap(b, pos):
        struct.pack_into("<Q", b, pos[4], struct.unpack_from("<Q", b, pos[3])[0])

    must_fail(offsets(good, shift), "misaligned offset", "is not a multiple of the alignment")
    must_fail(offsets(good, overlap), "overlapping tensors", "overlaps tensor")


def offset_positions(b):
    """Byte positions of every tensor info's offset field in a GGUF buffer."""
    pos = 24
    n_t, n_kv = struct.unpack_from("<QQ", b, 8)

    def skip_val(t):
        nonlocal pos
        if t == 8:
            pos += 8 + struct.unpack_from("<Q", b, pos)[0]
        elif t == 9:
            et, n = struct.unpack_from("<IQ", b, pos)
            pos += 12
            for _ in range(n):
                skip_val(et)
        else:
            pos += {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}[t]
    for _ in range(n_kv):
        pos += 8 + struct.unpack_from("<Q", b, pos)[0]
        t = struct.unpack_from("<I", b, pos)[0]
        pos += 4
        skip_val(t)
    out = []
    for _ in range(n_t):
        pos += 8 + struct.unpack_from("<Q", b, pos)[0]
        nd = struct.unpack_from("<I", b, pos)[0]
        pos += 4 + 8 * nd + 4
        out.append(pos)
        pos += 8
    return out


if __name__ == "__main__":
    sys.exit(main())
