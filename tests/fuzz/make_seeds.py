#!/usr/bin/env python3
"""Regenerate the seed corpora of tests/fuzz/corpus/ and tests/fuzz/data/.

usage: make_seeds.py RWKVD [SOURCE_ROOT] [--text-only]

Needs NumPy (tools/gen_model.py and tools/make_pth.py use it) and a built
rwkvd (for a state file that carries the model's fingerprint). The seeds are
small, valid files: libFuzzer mutates them into the hostile ones.

  data/server-bf16.safetensors   L=1 C=64 V=256 bf16: the model fuzz-http
                                 serves and fuzz-state checks states against
  corpus/safetensors/            tiny L=1 C=64 V=16 models, f32 and bf16, and
                                 the f32 one as q8 (rwkvd convert --wtype q8)
  corpus/pth/                    the bf16 one as torch.save would write it
  corpus/rwkvcpp/                the f32 one as rwkv.cpp .bin, FP32 and FP16
  corpus/gguf/                   the f32 one as GGUF (tools/gguf_export.py) in
                                 F32, BF16, Q8_0 and Q4_0; a C=256 one with
                                 Q4_K, Q5_K and Q6_K matrices; a vocabulary
  corpus/state/                  state files for the server model: rwkvd's own
                                 (fingerprint, shifts), a bare bf16 one, and an
                                 RWKV-PEFT .pth
  corpus/jsonl, vocab, tokenize, http: hand-written (below)

Everything is deterministic (fixed seeds), so rerunning it changes nothing
but the state's "created" time.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

ROOT = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "--text-only" else os.path.join(os.path.dirname(__file__), "..", "..")
FUZZ = os.path.join(ROOT, "tests", "fuzz")
PY = sys.executable
GEN = [PY, os.path.join(ROOT, "tools", "gen_model.py"), "--embd", "64", "--dw", "8", "--da", "8",
       "--dv", "8", "--dg", "8", "--ffn", "64", "--layers", "1"]
MAKE_PTH = [PY, os.path.join(ROOT, "tools", "make_pth.py")]
ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def out(*parts):
    path = os.path.join(FUZZ, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def read_safetensors(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        arr = np.frombuffer(blob[8 + n + b:8 + n + e], dtype=ST_DTYPES[info["dtype"]])
        tensors.append((b, name, info["dtype"], info["shape"], arr))
    tensors.sort()
    return [t[1:] for t in tensors]


def write_safetensors(path, tensors, meta=None):
    header, blobs, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name, dtype, shape, arr in tensors:
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_rwkvcpp(src, dst, f16):
    """rwkv.cpp .bin (version 101): LoRA factors transposed into nn.Linear
    form, the six token-shift mixes fused into att.x_rwkvag [6][1][C]; with
    f16 the matrices (and LoRA factors) are FP16, everything else FP32."""
    tensors = read_safetensors(src)
    V, C = tensors[0][2]
    L = 1 + max(int(n.split(".")[1]) for n, *_ in tensors if n.startswith("blocks."))
    recs, mixes = [], {}
    for name, dtype, shape, arr in tensors:
        x = arr.astype(np.uint32) << 16 if dtype == "BF16" else arr
        x = x.view(np.float32) if dtype == "BF16" else x.astype(np.float32)
        x = x.reshape(shape)
        last = name.rsplit(".", 1)[-1]
        lora = last in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
        if lora:
            x = x.T
        if ".att.x_" in name:
            mixes[last[2]] = x.reshape(C)
            if len(mixes) < 6:
                continue
            x = np.stack([mixes[c] for c in "rwkvag"]).reshape(6, 1, C)
            name = name.rsplit(".", 1)[0] + ".x_rwkvag"
            mixes = {}
        big = x.ndim == 2 and (lora or min(x.shape) >= C)
        half = f16 and big
        data = x.astype(np.float16 if half else np.float32)
        recs.append(struct.pack("<III", x.ndim, len(name), 1 if half else 0) +
                    struct.pack(f"<{x.ndim}I", *reversed(x.shape)) + name.encode() +
                    data.tobytes())
    with open(dst, "wb") as f:
        f.write(struct.pack("<6I", 0x67676d66, 101, V, C, L, 1 if f16 else 0) + b"".join(recs))


def models():
    st = out("corpus", "safetensors", "tiny-f32.safetensors")
    run(GEN + ["--vocab", "16", "--dtype", "f32", "--seed", "1", "--out", st])
    bf = out("corpus", "safetensors", "tiny-bf16.safetensors")
    run(GEN + ["--vocab", "16", "--dtype", "bf16", "--seed", "2", "--out", bf])
    run(MAKE_PTH + [bf, out("corpus", "pth", "tiny-bf16.pth"), "--f32", "ln",
                    "--f16", r"att\.(k_k|r_k)$"])
    write_rwkvcpp(st, out("corpus", "rwkvcpp", "tiny-f32.bin"), False)
    write_rwkvcpp(st, out("corpus", "rwkvcpp", "tiny-f16.bin"), True)
    gguf_seeds(st)
    server = out("data", "server-bf16.safetensors")
    run(GEN + ["--vocab", "256", "--dtype", "bf16", "--seed", "3", "--out", server])
    return server


def gguf_seeds(st):
    gguf = [PY, os.path.join(ROOT, "tools", "gguf_export.py")]
    for t in ("f32", "bf16", "q8_0", "q4_0"):
        run(gguf + [st, out("corpus", "gguf", "tiny-%s.gguf" % t), "--type", t])
    with tempfile.TemporaryDirectory() as d:
        wide = os.path.join(d, "c256.safetensors")
        run(GEN[:2] + ["--embd", "256", "--dw", "8", "--da", "8", "--dv", "8", "--dg", "8",
                       "--ffn", "256", "--layers", "1", "--vocab", "16", "--dtype", "f32",
                       "--seed", "4", "--out", wide])
        run(gguf + [wide, out("corpus", "gguf", "c256-q4_k_m.gguf"), "--type", "q4_k_m"])
        voc = os.path.join(d, "vocab.txt")
        with open(voc, "w", encoding="utf-8") as f:
            toks = [bytes([b]) for b in range(256)] + [b"He", b"llo", b"\n\n", "你".encode()]
            for i, b in enumerate(toks):
                f.write("%d %r %d\n" % (i + 1, b, len(b)))
        run(gguf + ["--vocab-only", voc, out("corpus", "gguf", "vocab.gguf"), "--pad", "0"])


def states(rwkvd, server):
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "d.jsonl")
        with open(data, "w") as f:
            f.write('{"text": "fuzz seed"}\n')
        st = out("corpus", "state", "rwkvd.safetensors")
        run([rwkvd, "tune", "--model", server, "--data", data, "--out", st, "--steps", "1"])
    full = read_safetensors(st)
    ts = [(n, "BF16", s, (a.view(np.uint32) >> 16).astype(np.uint16))
          for n, dt, s, a in full if n.endswith("time_state")]
    bare = out("corpus", "state", "bare-bf16.safetensors")
    write_safetensors(bare, ts, {"method": "seed"})
    run(MAKE_PTH + [bare, out("corpus", "state", "peft.pth"), "--archive", "archive"])


TEXT = {
    "jsonl": {
        "text.jsonl": '{"text": "hello world"}\n\n{"text": "caf\\u00e9 \\ud83d\\ude00"}\n',
        "prompt.jsonl": '{"prompt": "Q: 1+1?", "completion": " 2"}\n',
        "chat.jsonl": '{"messages": [{"role": "system", "content": "be brief"}, '
                      '{"role": "user", "content": "hi"}, {"role": "assistant", '
                      '"content": "hello"}]}\n',
        "mc.jsonl": '{"prompt": "sky is", "choices": [" blue", " green"], "answer": 0}\n'
                    '{"prompt": "grass is", "choices": [" blue", " green"], "answer": " green"}\n',
    },
    "tokenize": {
        "ascii.txt": "User: hello\n\nAssistant: hi there",
        "utf8.txt": "caf\u00e9 \u4e2d\u6587 \U0001f600 \udcff\udce9",
    },
}


# fuzz-http inputs: first byte < 0x80 picks a route of fuzz_http.c's table
# (index = byte % count) and the rest is the body; 0x80 and above sends the
# rest as a raw request (see fuzz_http.c).
HTTP = {
    "generate.bin": (0, '{"prompt": "hi", "max_tokens": 3, "temperature": 0.7, "top_k": 5, '
                        '"stop": ["\\n"], "seed": 1, "logprobs": 2}'),
    "completions.bin": (1, '{"model": "server-bf16", "prompt": ["a", "b"], "max_tokens": 2, '
                           '"n": 2, "logit_bias": {"65": -100}, "stream": true}'),
    "chat.bin": (2, '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, '
                    '"logprobs": true, "top_logprobs": 1, "stream": true, '
                    '"stream_options": {"include_usage": true}}'),
    "tune.bin": (3, '{"dataset": [{"text": "abc abc"}, {"prompt": "a", "completion": "b"}], '
                    '"output_state": "s1", "steps": 2, "lr": 0.01, "seed": 1, "val_split": 0.5}'),
    "tune-hp.bin": (3, '{"training_file": "file-0", "method": "standard", "hyperparameters": '
                       '{"epochs": 1, "batch": 1, "warmup": 1, "lr_final": 0.001}}'),
    "ft.bin": (4, '{"model": "server-bf16", "training_file": "file-x", "suffix": "s", '
                  '"seed": 3, "hyperparameters": {"n_epochs": 1, "batch_size": 1, '
                  '"learning_rate_multiplier": 0.5}, "method": {"type": "supervised"}}'),
    "files.bin": (5, '--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune'
                     '\r\n--XyZ\r\nContent-Disposition: form-data; name="file"; '
                     'filename="d.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
                     '{"text": "abc"}\n\r\n--XyZ--\r\n'),
    "models.bin": (11, ""),
    "state-get.bin": (7, "/fz?x=%41"),
    "jobs-get.bin": (8, "?limit=2&after=tune-1"),
    "files-get.bin": (9, "/file-0/content"),
    "ft-events.bin": (10, "/ftjob-1/events?limit=1"),
    "state-delete.bin": (12, "fz"),
    "file-delete.bin": (13, "file-0"),
    "job-cancel.bin": (14, "tune-1/cancel"),
    "ft-cancel.bin": (15, "ftjob-1/cancel"),
    "metrics.bin": (16, ""),
}
RAW = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /states HTTP/1.1\r\nAuthorization: Bearer fuzz-key-0123\r\n\r\n",
    b"POST /generate HTTP/1.1\r\nX-Api-Key: fuzz-key-0123\r\nContent-Length: 14\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n{\"prompt\":\"a\"}",
    b"POST /generate HTTP/1.1\r\nAuthorization: Bearer fuzz-key-0123\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"prompt\":\"abc\"}\r\n0\r\n\r\n",
    b"GET /states/%41%00/file?x=1 HTTP/1.1\r\nAuthorization: Bearer fuzz-key-0123\r\n\r\n"
    b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer fuzz-key-0123\r\n\r\n",
]


def vocab_text():
    """A small World vocabulary: every byte (as the str or bytes literal the
    real file uses) plus a few longer tokens, in the real file's shape."""
    lines, i = [], 1
    for b in range(256):
        lit = repr(chr(b)) if b < 128 else repr(bytes([b]))
        lines.append(f"{i} {lit} 1")
        i += 1
    for tok in ["\n\n", "User", ": ", "Assistant", " hello", "caf\u00e9", "it's", '"q"',
                "\u4e2d\u6587", "\\x"]:
        lines.append(f"{i} {tok!r} {len(tok.encode())}")
        i += 1
    lines.append(f"{i} b'\\xe4\\xb8' 2")
    return "\n".join(lines) + "\n"


def text_seeds():
    with open(out("corpus", "vocab", "small.txt"), "w") as f:
        f.write(vocab_text())
    with open(out("data", "vocab-small.txt"), "w") as f:
        f.write(vocab_text())
    for target, files in TEXT.items():
        for name, s in files.items():
            with open(out("corpus", target, name), "wb") as f:
                f.write(s.encode("utf-8", "surrogateescape"))
    for name, (route, body) in HTTP.items():
        with open(out("corpus", "http", name), "wb") as f:
            f.write(bytes([route]) + body.encode())
    state = open(out("corpus", "state", "bare-bf16.safetensors"), "rb").read()
    with open(out("corpus", "http", "state-put.bin"), "wb") as f:
        f.write(bytes([6]) + state)
    for i, raw in enumerate(RAW):
        with open(out("corpus", "http", f"raw{i}.bin"), "wb") as f:
            f.write(b"\x80" + raw)


def main():
    if "--text-only" not in sys.argv:  # the hand-written seeds only
        server = models()
        run([sys.argv[1], "convert", "--model", out("corpus", "safetensors", "tiny-f32.safetensors"),
             "--out", out("corpus", "safetensors", "tiny-q8.safetensors"), "--wtype", "q8"])
        states(sys.argv[1], server)
    text_seeds()


if __name__ == "__main__":
    main()
