#!/usr/bin/env python3
"""gguf_export.py - write a GGUF file (llama.cpp's rwkv7 layout) from an
RWKV-7 safetensors model with official names, and read one back.

usage:
  gguf_export.py MODEL.safetensors OUT.gguf [--type T] [--vocab VOCAB.txt]
  gguf_export.py --vocab-only VOCAB.txt OUT.gguf [--pad N]
  gguf_export.py --dequant FILE.gguf OUT.npz

--type (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k;
default: as stored)
sets the element type of the large matrices; q4_k_m mixes them (Q6_K for
head and ffn.value, Q5_K for att.value, Q4_K for the rest) (emb, head, att.receptance/key/
value/output, ffn.key/value); the LoRA factors keep their stored type (F32,
F16 or BF16, or the --type for f32/f16/bf16) and every vector is F32, as
llama.cpp keeps 1-D tensors. Names and layout follow llama.cpp's converter
for the rwkv7 architecture: blk.N.time_mix_* / channel_mix_*, LoRA factors
in nn.Linear form, vectors as [C], r_k flattened, the six token-shift mixes
fused into time_mix_lerp_fused [6, 1, 1, C] (order r w k v a g), layer 0's
unused v0/v1/v2 written as copies of a0/a1/a2. --vocab adds the World
vocabulary (tokenizer.ggml.model "rwkv", escaped token text, padded to the
model's V); without it the file says "none" (a byte-level model).
--vocab-only writes just the vocabulary metadata (no tensors). --dequant
dequantizes every tensor of a GGUF file with the NumPy reference below and
saves them (llama.cpp names, row-major shapes) for the tests.

The quantizers follow ggml's reference formulas for Q8_0, Q4_0, Q4_1, Q5_0
and Q5_1;
for Q4_K, Q5_K and Q6_K they compute the block scales and minimums directly
(range / levels, then 6- or 8-bit super-block scales) without ggml's
iterative scale search, so the values are valid but not byte-identical to
llama-quantize's. This script was written from the format description and
checked only against rwkvd's own loader: llama.cpp is not part of the tests.
NumPy only.
"""
import argparse
import json
import struct
import sys

import numpy as np

# ggml type numbers, (values, bytes) per block, llama.cpp's general.file_type
GGML = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
        "q4_k": 12, "q5_k": 13, "q6_k": 14, "bf16": 30}
BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22),
         7: (32, 24), 8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210)}
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q8_0": 7,
             "q4_k": 15, "q5_k": 17, "q6_k": 18, "bf16": 32, "q4_k_m": 15}
ALIGN = 32


# --- reading safetensors ---

def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    hdr = json.loads(buf[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = buf[base + a:base + b]
        dt = t["dtype"]
        if dt == "F32":
            v = np.frombuffer(raw, "<f4")
        elif dt == "F16":
            v = np.frombuffer(raw, "<f2")
        elif dt == "BF16":
            v = np.frombuffer(raw, "<u2")
        else:
            sys.exit("%s: dtype %s not supported" % (name, dt))
        out[name] = (dt, v.reshape(t["shape"]))
    return out


def to_f32(dt, v):
    if dt == "BF16":
        return (v.astype(np.uint32) << 16).view(np.float32)
    return v.astype(np.float32)


def f32_to_bf16(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


# --- quantizers (rows of ne0 values; blocks along the row) ---

def round_away(x):
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def q8_0(x):
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    dh = d.astype(np.float16)
    with np.errstate(divide="ignore"):
        idv = np.where(dh.astype(np.float32) != 0, np.float32(1) / d, np.float32(0))
    q = np.clip(round_away((b * idv[:, None]).astype(np.float32)), -127, 127).astype(np.int8)
    out = np.zeros((b.shape[0], 34), np.uint8)
    out[:, 0:2] = dh.view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def q4_0(x):
    b = x.reshape(-1, 32).astype(np.float32)
    i = np.abs(b).argmax(axis=1)
    mx = b[np.arange(b.shape[0]), i]
    d = (mx / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.minimum(15, np.trunc(b * idv[:, None] + np.float32(8.5))).astype(np.uint8)
    out = np.zeros((b.shape[0], 18), np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


def q4_1(x):
    b = x.reshape(-1, 32).astype(np.float32)
    mn, mx = b.min(axis=1), b.max(axis=1)
    d = ((mx - mn) / np.float32(15)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.minimum(15, np.trunc((b - mn[:, None]) * idv[:, None] + np.float32(0.5)))
    q = q.astype(np.uint8)
    out = np.zeros((b.shape[0], 20), np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = mn.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 4:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


def q5(x, one):
    """Q5_0 (ggml's reference: signed, d = max / -16) or Q5_1 (d = range / 31, min)."""
    b = x.reshape(-1, 32).astype(np.float32)
    if one:
        mn, mx = b.min(axis=1), b.max(axis=1)
        d = ((mx - mn) / np.float32(31)).astype(np.float32)
        src, add = b - mn[:, None], np.float32(0.5)
    else:
        i = np.abs(b).argmax(axis=1)
        d = (b[np.arange(b.shape[0]), i] / np.float32(-16)).astype(np.float32)
        src, add = b, np.float32(16.5)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.minimum(31, np.trunc((src * idv[:, None]).astype(np.float32) + add)).astype(np.uint32)
    qh = ((q[:, :16] >> 4) << np.arange(16, dtype=np.uint32)).sum(axis=1) | \
         ((q[:, 16:] >> 4) << np.arange(16, 32, dtype=np.uint32)).sum(axis=1)
    qs = ((q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)).astype(np.uint8)
    parts = [d.astype(np.float16).view(np.uint8).reshape(-1, 2)]
    if one:
        parts.append(mn.astype(np.float16).view(np.uint8).reshape(-1, 2))
    parts += [qh.astype("<u4").view(np.uint8).reshape(-1, 4), qs]
    return np.concatenate(parts, axis=1).tobytes()


def pack_scales_k4(ls, lm):
    """8 six-bit scales and mins per super-block -> 12 bytes (ggml's K-quant packing)."""
    s = np.zeros((ls.shape[0], 12), np.uint8)
    for j in range(8):
        if j < 4:
            s[:, j] = ls[:, j]
            s[:, j + 4] = lm[:, j]
        else:
            s[:, j + 4] = (ls[:, j] & 0xF) | ((lm[:, j] & 0xF) << 4)
            s[:, j - 4] |= (ls[:, j] >> 4) << 6
            s[:, j] |= (lm[:, j] >> 4) << 6
    return s


def qk_minmax(x, levels):
    """Q4_K (levels 15) / Q5_K (31): per sub-block of 32 a scale and a min."""
    b = x.reshape(-1, 8, 32).astype(np.float32)
    mn = np.minimum(b.min(axis=2), 0).astype(np.float32)
    mx = b.max(axis=2)
    scale = ((mx - mn) / np.float32(levels)).astype(np.float32)
    mins = (-mn).astype(np.float32)
    ms, mm = scale.max(axis=1), mins.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_s = np.where(ms > 0, np.float32(63) / ms, 0).astype(np.float32)
        inv_m = np.where(mm > 0, np.float32(63) / mm, 0).astype(np.float32)
    ls = np.minimum(63, np.rint(inv_s[:, None] * scale)).astype(np.uint8)
    lm = np.minimum(63, np.rint(inv_m[:, None] * mins)).astype(np.uint8)
    d = (ms / np.float32(63)).astype(np.float16)
    dmin = (mm / np.float32(63)).astype(np.float16)
    dd = (d.astype(np.float32)[:, None] * ls).astype(np.float32)
    dm = (dmin.astype(np.float32)[:, None] * lm).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.where(dd[:, :, None] > 0, np.rint((b + dm[:, :, None]) / dd[:, :, None]), 0)
    L = np.clip(L, 0, levels).astype(np.uint8).reshape(-1, 256)
    return d, dmin, pack_scales_k4(ls, lm), L


def q4_k(x):
    d, dmin, sc, L = qk_minmax(x, 15)
    qs = np.zeros((L.shape[0], 128), np.uint8)
    for j in range(4):
        qs[:, 32 * j:32 * j + 32] = L[:, 64 * j:64 * j + 32] | (L[:, 64 * j + 32:64 * j + 64] << 4)
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                          sc, qs], axis=1)
    return out.tobytes()


def q5_k(x):
    d, dmin, sc, L = qk_minmax(x, 31)
    qs = np.zeros((L.shape[0], 128), np.uint8)
    qh = np.zeros((L.shape[0], 32), np.uint8)
    for j in range(4):
        lo, hi = L[:, 64 * j:64 * j + 32], L[:, 64 * j + 32:64 * j + 64]
        qs[:, 32 * j:32 * j + 32] = (lo & 0xF) | ((hi & 0xF) << 4)
        qh |= ((lo >> 4) << (2 * j)) | ((hi >> 4) << (2 * j + 1))
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                          sc, qh, qs], axis=1)
    return out.tobytes()


def q6_k(x):
    b = x.reshape(-1, 16, 16).astype(np.float32)
    i = np.abs(b).argmax(axis=2)
    mx = np.take_along_axis(b, i[:, :, None], axis=2)[:, :, 0]
    scale = (mx / np.float32(-32)).astype(np.float32)
    j = np.abs(scale).argmax(axis=1)
    ms = scale[np.arange(scale.shape[0]), j]
    with np.errstate(divide="ignore"):
        iscale = np.where(ms != 0, np.float32(-128) / ms, 0).astype(np.float32)
    d = np.where(iscale != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0)
    d = d.astype(np.float16)
    sc = np.clip(np.rint(iscale[:, None] * scale), -128, 127).astype(np.int8)
    dd = (d.astype(np.float32)[:, None] * sc).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.where(dd[:, :, None] != 0, np.rint(b / dd[:, :, None]), 0)
    L = (np.clip(L, -32, 31) + 32).astype(np.uint8).reshape(-1, 256)
    ql = np.zeros((L.shape[0], 128), np.uint8)
    qh = np.zeros((L.shape[0], 64), np.uint8)
    for h in range(2):
        q1, q2, q3, q4 = (L[:, 128 * h + 32 * k:128 * h + 32 * k + 32] for k in range(4))
        ql[:, 64 * h:64 * h + 32] = (q1 & 0xF) | ((q3 & 0xF) << 4)
        ql[:, 64 * h + 32:64 * h + 64] = (q2 & 0xF) | ((q4 & 0xF) << 4)
        qh[:, 32 * h:32 * h + 32] = ((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) |
                                     ((q4 >> 4) << 6))
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    return out.tobytes()


QUANT = {2: q4_0, 3: q4_1, 6: lambda x: q5(x, False), 7: lambda x: q5(x, True), 8: q8_0,
         12: q4_k, 13: q5_k, 14: q6_k}


# --- reference dequantizers (ggml's dequantize_row_*, in float32) ---

def f16_at(raw, col):
    return raw[:, col:col + 2].copy().view(np.float16).astype(np.float32)[:, 0]


def scale_min_k4(sc):
    s = np.zeros((sc.shape[0], 8), np.float32)
    m = np.zeros((sc.shape[0], 8), np.float32)
    for j in range(8):
        if j < 4:
            s[:, j], m[:, j] = sc[:, j] & 63, sc[:, j + 4] & 63
        else:
            s[:, j] = (sc[:, j + 4] & 0xF) | ((sc[:, j - 4] >> 6) << 4)
            m[:, j] = (sc[:, j + 4] >> 4) | ((sc[:, j] >> 6) << 4)
    return s, m


def dequant(t, raw, n):
    if t == 0:
        return np.frombuffer(raw, "<f4").astype(np.float32)
    if t == 1:
        return np.frombuffer(raw, "<f2").astype(np.float32)
    if t == 30:
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    blk, size = BLOCK[t]
    r = np.frombuffer(raw, np.uint8).reshape(-1, size)
    f32 = np.float32
    if t == 8:
        d = f16_at(r, 0)
        return (d[:, None] * r[:, 2:].view(np.int8).astype(f32)).astype(f32).reshape(-1)
    if t == 2:
        d = f16_at(r, 0)
        q = np.concatenate([r[:, 2:] & 0xF, r[:, 2:] >> 4], axis=1).astype(f32) - f32(8)
        return (d[:, None] * q).astype(f32).reshape(-1)
    if t == 3:
        d, m = f16_at(r, 0), f16_at(r, 2)
        q = np.concatenate([r[:, 4:] & 0xF, r[:, 4:] >> 4], axis=1).astype(f32)
        return ((d[:, None] * q).astype(f32) + m[:, None]).astype(f32).reshape(-1)
    if t in (6, 7):
        one = t == 7
        d = f16_at(r, 0)
        h = 4 if one else 2
        qh = r[:, h:h + 4].copy().view("<u4")[:, 0]
        qs = r[:, h + 4:]
        bit = lambda k: (((qh[:, None] >> np.arange(k, k + 16)) & 1) << 4).astype(np.int32)
        lo = (qs & 0xF).astype(np.int32) | bit(0)
        hi = (qs >> 4).astype(np.int32) | bit(16)
        q = np.concatenate([lo, hi], axis=1)
        if one:
            m = f16_at(r, 2)
            return ((d[:, None] * q.astype(f32)).astype(f32) + m[:, None]).astype(f32).reshape(-1)
        return (d[:, None] * (q - 16).astype(f32)).astype(f32).reshape(-1)
    if t in (12, 13):
        d, dmin = f16_at(r, 0), f16_at(r, 2)
        s, m = scale_min_k4(r[:, 4:16])
        qh = r[:, 16:48] if t == 13 else None
        qs = r[:, 48:176] if t == 13 else r[:, 16:144]
        y = np.zeros((r.shape[0], 256), f32)
        for j in range(4):
            q = qs[:, 32 * j:32 * j + 32]
            lo, hi = (q & 0xF).astype(f32), (q >> 4).astype(f32)
            if qh is not None:
                lo = lo + ((qh >> (2 * j)) & 1).astype(f32) * 16
                hi = hi + ((qh >> (2 * j + 1)) & 1).astype(f32) * 16
            for k, v in ((2 * j, lo), (2 * j + 1, hi)):
                dk = (d * s[:, k]).astype(f32)
                mk = (dmin * m[:, k]).astype(f32)
                y[:, 32 * k:32 * k + 32] = (dk[:, None] * v).astype(f32) - mk[:, None]
        return y.reshape(-1)
    if t == 14:
        ql, qh, sc = r[:, :128], r[:, 128:192], r[:, 192:208].view(np.int8).astype(f32)
        d = f16_at(r, 208)
        y = np.zeros((r.shape[0], 256), f32)
        for h in range(2):
            a, b2 = ql[:, 64 * h:64 * h + 32], ql[:, 64 * h + 32:64 * h + 64]
            hh = qh[:, 32 * h:32 * h + 32]
            qs = [(a & 0xF) | ((hh & 3) << 4), (b2 & 0xF) | (((hh >> 2) & 3) << 4),
                  (a >> 4) | (((hh >> 4) & 3) << 4), (b2 >> 4) | (((hh >> 6) & 3) << 4)]
            for k in range(4):
                for half in range(2):
                    sub = 8 * h + 2 * k + half
                    ds = (d * sc[:, sub]).astype(f32)
                    q = qs[k][:, 16 * half:16 * half + 16].astype(np.int32) - 32
                    y[:, 128 * h + 32 * k + 16 * half:128 * h + 32 * k + 16 * half + 16] = \
                        (ds[:, None] * q.astype(f32)).astype(f32)
        return y.reshape(-1)
    raise ValueError("type %d" % t)


# --- writing GGUF ---

class Writer:
    def __init__(self):
        self.kv = []
        self.tensors = []

    def add(self, key, vtype, value):
        self.kv.append((key, vtype, value))

    def tensor(self, name, ggml_type, shape, data):
        self.tensors.append((name, ggml_type, shape, data))

    @staticmethod
    def string(s):
        b = s if isinstance(s, bytes) else s.encode()
        return struct.pack("<Q", len(b)) + b

    def value(self, vtype, v):
        if vtype == 8:
            return self.string(v)
        if vtype == 9:
            et, items = v
            return struct.pack("<IQ", et, len(items)) + b"".join(self.value(et, x) for x in items)
        fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B",
               10: "<Q", 11: "<q", 12: "<d"}[vtype]
        return struct.pack(fmt, v)

    def write(self, path):
        out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv)))
        for k, t, v in self.kv:
            out += self.string(k) + struct.pack("<I", t) + self.value(t, v)
        off = 0
        for name, gt, shape, data in self.tensors:
            ne = list(reversed(shape))
            out += self.string(name) + struct.pack("<I", len(ne))
            out += b"".join(struct.pack("<Q", d) for d in ne)
            out += struct.pack("<IQ", gt, off)
            off += (len(data) + ALIGN - 1) // ALIGN * ALIGN
        out += b"\0" * ((-len(out)) % ALIGN)
        for _, _, _, data in self.tensors:
            out += data + b"\0" * ((-len(data)) % ALIGN)
        with open(path, "wb") as f:
            f.write(out)


def vocab_tokens(path, V):
    """llama.cpp's token list for a World vocabulary file: '<s>', the tokens
    in file order as the escaped text of their bytes, then padding."""
    import ast
    toks, types = ["<s>".encode()], [3]
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(" ")
            tok = ast.literal_eval(" ".join(parts[1:-1]))
            b = tok.encode() if isinstance(tok, str) else tok
            assert len(b) == int(parts[-1])
            toks.append(repr(b)[2:-1].encode())
            types.append(1)
    for i in range(len(toks), V):
        toks.append(("[PAD%d]" % i).encode())
        types.append(5)
    return toks, types


def add_vocab(w, vocab, V):
    if not vocab:
        w.add("tokenizer.ggml.model", 8, "none")
        return
    toks, types = vocab_tokens(vocab, V)
    w.add("tokenizer.ggml.model", 8, "rwkv")
    w.add("tokenizer.ggml.tokens", 9, (8, toks))
    w.add("tokenizer.ggml.token_type", 9, (5, types))
    w.add("tokenizer.ggml.bos_token_id", 4, 0)
    w.add("tokenizer.ggml.eos_token_id", 4, 0)
    w.add("tokenizer.ggml.eot_token_id", 4, 261)


BIG = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
       "ffn.key.weight", "ffn.value.weight")
LORA = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")


def export(src, dst, qtype, vocab):
    build(src, qtype, vocab).write(dst)


def build(src, qtype, vocab):
    """The GGUF file's metadata and tensors for a safetensors model, unwritten."""
    st = read_safetensors(src)
    f = {k: to_f32(dt, v) for k, (dt, v) in st.items()}
    V, C = f["emb.weight"].shape
    L = 1 + max(int(k.split(".")[1]) for k in f if k.startswith("blocks."))
    F = f["blocks.0.ffn.key.weight"].shape[0]
    w = Writer()

    def mat(name, key, arr):
        """A 2-D tensor: large matrices in qtype, others as stored (or qtype if 16/32-bit)."""
        dt = st[key][0]
        if qtype == "q4_k_m":  # mixed, in the spirit of llama.cpp's Q4_K_M
            t = 14 if key in ("head.weight",) or key.endswith("ffn.value.weight") else \
                13 if key.endswith("att.value.weight") else 12
        else:
            t = GGML[qtype] if qtype else {"F32": 0, "F16": 1, "BF16": 30}[dt]
        if key.split(".")[-1] in LORA and t not in (0, 1, 30):
            t = {"F32": 0, "F16": 1, "BF16": 30}[dt]
        arr = np.ascontiguousarray(arr, np.float32)
        if arr.shape[-1] % BLOCK[t][0]:
            sys.exit("%s: rows of %d values are not whole %d-value blocks of %s" %
                     (name, arr.shape[-1], BLOCK[t][0], qtype))
        if t == 0:
            data = arr.tobytes()
        elif t == 1:
            data = arr.astype(np.float16).tobytes()
        elif t == 30:
            data = f32_to_bf16(arr).tobytes()
        else:
            data = QUANT[t](arr)
        w.tensor(name, t, list(arr.shape), data)

    def vec(name, arr):
        arr = np.ascontiguousarray(arr, np.float32).reshape(-1)
        w.tensor(name, 0, [arr.size], arr.tobytes())

    ranks = {k: f["blocks.%d.att.%s1" % (1 if k == "v" and L > 1 else 0, k)].shape[1]
             for k in "wavg"}
    w.add("general.architecture", 8, "rwkv7")
    w.add("general.name", 8, src.rsplit("/", 1)[-1])
    w.add("general.alignment", 4, ALIGN)
    stored = {dt for dt, _ in st.values()}
    w.add("general.file_type", 4, FILE_TYPE[qtype] if qtype else
          32 if "BF16" in stored else 1 if "F16" in stored else 0)
    w.add("general.quantization_version", 4, 2)
    w.add("rwkv7.context_length", 4, 1048576)
    w.add("rwkv7.embedding_length", 4, C)
    w.add("rwkv7.block_count", 4, L)
    w.add("rwkv7.attention.layer_norm_epsilon", 6, 1e-5)
    w.add("rwkv7.wkv.head_size", 4, 64)
    w.add("rwkv7.attention.decay_lora_rank", 4, ranks["w"])
    w.add("rwkv7.attention.iclr_lora_rank", 4, ranks["a"])
    w.add("rwkv7.attention.value_residual_mix_lora_rank", 4, ranks["v"])
    w.add("rwkv7.attention.gate_lora_rank", 4, ranks["g"])
    w.add("rwkv7.feed_forward_length", 4, F)
    w.add("rwkv7.attention.head_count", 4, 0)
    # llama.cpp sizes a model without a tokenizer ("none") from this key
    # alone: without it the vocabulary is empty and token_embd is refused.
    w.add("rwkv7.vocab_size", 4, V)
    add_vocab(w, vocab, V)

    mat("token_embd.weight", "emb.weight", f["emb.weight"])
    vec("token_embd_norm.weight", f["blocks.0.ln0.weight"])
    vec("token_embd_norm.bias", f["blocks.0.ln0.bias"])
    for i in range(L):
        p, b = "blocks.%d." % i, "blk.%d." % i
        for o, g in (("ln1", "attn_norm"), ("ln2", "attn_norm_2")):
            vec(b + g + ".weight", f[p + o + ".weight"])
            vec(b + g + ".bias", f[p + o + ".bias"])
        mix = np.stack([f[p + "att.x_" + c].reshape(-1) for c in "rwkvag"]).reshape(6, 1, 1, C)
        w.tensor(b + "time_mix_lerp_fused.weight", 0, [6, 1, 1, C],
                 np.ascontiguousarray(mix, np.float32).tobytes())
        for c in "wav":
            src_c = "a" if (c == "v" and i == 0) else c  # llama.cpp's layer-0 copies
            vec(b + "time_mix_%s0.weight" % c, f[p + "att.%s0" % src_c])
            mat(b + "time_mix_%s1.weight" % c, p + "att.%s1" % src_c, f[p + "att.%s1" % src_c].T)
            mat(b + "time_mix_%s2.weight" % c, p + "att.%s2" % src_c, f[p + "att.%s2" % src_c].T)
        mat(b + "time_mix_g1.weight", p + "att.g1", f[p + "att.g1"].T)
        mat(b + "time_mix_g2.weight", p + "att.g2", f[p + "att.g2"].T)
        vec(b + "time_mix_k_k.weight", f[p + "att.k_k"])
        vec(b + "time_mix_k_a.weight", f[p + "att.k_a"])
        vec(b + "time_mix_r_k.weight", f[p + "att.r_k"])
        for o, g in (("receptance", "receptance"), ("key", "key"), ("value", "value"),
                     ("output", "output")):
            mat(b + "time_mix_%s.weight" % g, p + "att.%s.weight" % o, f[p + "att.%s.weight" % o])
        vec(b + "time_mix_ln.weight", f[p + "att.ln_x.weight"])
        vec(b + "time_mix_ln.bias", f[p + "att.ln_x.bias"])
        vec(b + "channel_mix_lerp_k.weight", f[p + "ffn.x_k"])
        mat(b + "channel_mix_key.weight", p + "ffn.key.weight", f[p + "ffn.key.weight"])
        mat(b + "channel_mix_value.weight", p + "ffn.value.weight", f[p + "ffn.value.weight"])
    vec("output_norm.weight", f["ln_out.weight"])
    vec("output_norm.bias", f["ln_out.bias"])
    mat("output.weight", "head.weight", f["head.weight"])
    return w


# --- reading GGUF (for --dequant) ---

def read_gguf(path):
    buf = open(path, "rb").read()
    pos = [24]
    assert buf[:4] == b"GGUF"
    _, n_t, n_kv = struct.unpack("<IQQ", buf[4:24])

    def u(fmt):
        v = struct.unpack_from(fmt, buf, pos[0])[0]
        pos[0] += struct.calcsize(fmt)
        return v

    def s():
        n = u("<Q")
        v = buf[pos[0]:pos[0] + n]
        pos[0] += n
        return v

    def val(t):
        if t == 8:
            return s()
        if t == 9:
            et, n = u("<I"), u("<Q")
            return [val(et) for _ in range(n)]
        return u({0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B",
                  10: "<Q", 11: "<q", 12: "<d"}[t])
    kv = {}
    for _ in range(n_kv):
        k = s().decode()
        kv[k] = val(u("<I"))
    infos = []
    for _ in range(n_t):
        name = s().decode()
        nd = u("<I")
        ne = [u("<Q") for _ in range(nd)]
        infos.append((name, ne, u("<I"), u("<Q")))
    align = kv.get("general.alignment", 32)
    base = (pos[0] + align - 1) // align * align
    out = {}
    for name, ne, t, off in infos:
        n = int(np.prod(ne))
        blk, size = BLOCK[t]
        raw = buf[base + off:base + off + n // blk * size]
        out[name] = (t, list(reversed(ne)), raw)
    return kv, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--type", choices=sorted(GGML) + ["q4_k_m"])
    ap.add_argument("--vocab")
    ap.add_argument("--vocab-only", action="store_true")
    ap.add_argument("--dequant", action="store_true")
    ap.add_argument("--pad", type=int, default=65536,
                    help="--vocab-only: pad the token list to this many (default 65536)")
    a = ap.parse_args()
    if a.dequant:
        _, ts = read_gguf(a.src)
        np.savez(a.dst, **{n: dequant(t, raw, int(np.prod(sh))).reshape(sh)
                           for n, (t, sh, raw) in ts.items()})
        return
    if a.vocab_only:
        w = Writer()
        w.add("general.architecture", 8, "rwkv7")
        add_vocab(w, a.src, a.pad)
        w.write(a.dst)
        return
    export(a.src, a.dst, a.type, a.vocab)


if __name__ == "__main__":
    main()
