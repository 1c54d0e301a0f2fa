#!/usr/bin/env python3
"""Pretrain the rwkvd demo model: a byte-level RWKV-7 ("x070") in plain PyTorch.

The architecture is the official RWKV-7 (see shared/reference/rwkv7_spec.md Part 2 and
BlinkDL/RWKV-LM RWKV-v7/train_temp/src/model.py): head size 64, LayerNorm eps 1e-5,
GroupNorm (ln_x) eps 64e-5, decay w = exp(-e^-0.5 * sigmoid(z)), value residual for
layers >= 1, L2-normalised removal key kk, replacement key k*(1+(a-1)*k_a), r_k bonus,
ReLU^2 channel-mix of width 4C, token shift on the normalised inputs, ln0 on the
embedding. Parameter names and shapes are the official .pth ones, so the saved
safetensors file loads like a converted official checkpoint (vocab 256 = bytes).

The WKV recurrence  S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T,  y_t = S_t r_t
(S[value][key], a = -kk, b = kk*alpha) is computed exactly (fp32) in chunks of 16
tokens: inside a chunk the S_{t-1} a_t terms solve a unit lower-triangular system, and
a 16-step chunk maps the state by S -> S A_c + U_c, so only T/16 small matrix products
run in sequence. wkv_naive() is the per-token loop; --selftest checks one against the
other (values and gradients), and the per-token RNN forward (forward_rnn, written from
the spec independently of the parallel model) against the parallel forward.

Usage (see tools/pretrain/README.md):
  python3 tools/pretrain/make_data.py                   # once, writes tools/pretrain/data/
  python3 tools/pretrain/train.py --selftest            # CPU or GPU, a few seconds
  python3 tools/pretrain/train.py --out OUTDIR [--steps N --batch B --ctx T ...]
"""
import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HEAD = 64
CHUNK = 16
EXP_HALF = 0.6065306597126334  # e^-0.5

REF_PROMPT = "User: What color is the sky?\n\nAssistant:"
EVAL_CHUNK = 512


# ----------------------------------------------------------------------------
# WKV-7
# ----------------------------------------------------------------------------

def wkv_naive(r, logw, k, v, a, b, s0=None):
    """Per-token reference. Inputs (B,T,H,N) fp32, logw = log(w) <= 0.
    State S (B,H,N_v,N_k). Returns y (B,T,H,N), final S."""
    B, T, H, N = r.shape
    S = torch.zeros(B, H, N, N, dtype=r.dtype, device=r.device) if s0 is None else s0
    w = torch.exp(logw)
    ys = []
    for t in range(T):
        sa = torch.einsum("bhij,bhj->bhi", S, a[:, t])
        S = S * w[:, t, :, None, :] + sa[..., :, None] * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    return torch.stack(ys, 1), S


def unit_lower_inverse(M):
    """(I - M)^-1 for strictly lower triangular M (..., L, L), L a power of two <= 64: since
    M^L = 0, (I - M)^-1 = (I + M)(I + M^2)(I + M^4)...; only batched matrix products, which
    torch.compile and the GPU handle far better than many tiny triangular solves."""
    L = M.shape[-1]
    eye = torch.eye(L, dtype=M.dtype, device=M.device)
    inv = eye + M
    P = M
    n = 2
    while n < L:
        P = P @ P
        inv = inv + inv @ P
        n *= 2
    return inv


TRI_SOLVE = "solve"  # or "inv" (set by --tri)


def wkv_chunked(r, logw, k, v, a, b, s0=None, L=CHUNK):
    """Exact chunked WKV-7 (same result as wkv_naive up to fp32 rounding)."""
    B, T0, H, N = r.shape
    if T0 % L:  # pad the end with w=1, k=v=a=b=r=0: changes neither y[:T0] nor the state
        pad = lambda t: F.pad(t, (0, 0, 0, 0, 0, L - T0 % L))
        r, logw, k, v, a, b = map(pad, (r, logw, k, v, a, b))
    T = r.shape[1]
    nc = T // L

    def ch(x):  # (B,T,H,N) -> (B,H,nc,L,N)
        return x.view(B, nc, L, H, N).permute(0, 3, 1, 2, 4)

    r, logw, k, v, a, b = map(ch, (r, logw, k, v, a, b))
    cs = logw.cumsum(dim=3)          # Lambda_t (inclusive)
    cs_ex = cs - logw                # Lambda_{t-1}
    cL = cs[:, :, :, -1:, :]         # Lambda_L
    a_t = a * torch.exp(cs_ex)
    r_t = r * torch.exp(cs)
    inv = torch.exp(-cs)
    b_t = b * inv
    k_t = k * inv
    dec = torch.exp(cL - cs)
    b_h = b * dec
    k_h = k * dec
    mask_s = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    mask_i = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(0)
    kt_T = k_t.transpose(-1, -2)
    bt_T = b_t.transpose(-1, -2)
    Mab = (a_t @ bt_T).masked_fill(~mask_s, 0.0)
    Mak = (a_t @ kt_T).masked_fill(~mask_s, 0.0)
    Mrb = (r_t @ bt_T).masked_fill(~mask_i, 0.0)
    Mrk = (r_t @ kt_T).masked_fill(~mask_i, 0.0)
    eye = torch.eye(L, dtype=r.dtype, device=r.device)
    rhs = torch.cat([a_t, Mak @ v], dim=-1)
    if TRI_SOLVE == "inv":
        sol = unit_lower_inverse(Mab) @ rhs
    else:
        sol = torch.linalg.solve_triangular(eye - Mab, rhs, upper=False, unitriangular=True)
    P, Q = sol[..., :N], sol[..., N:]
    # S_end = S_0 A + U  (S[value][key])
    A = torch.diag_embed(torch.exp(cL.squeeze(3))) + P.transpose(-1, -2) @ b_h
    U = Q.transpose(-1, -2) @ b_h + v.transpose(-1, -2) @ k_h
    S = torch.zeros(B, H, N, N, dtype=r.dtype, device=r.device) if s0 is None else s0
    starts = []
    for c in range(nc):
        starts.append(S)
        S = S @ A[:, :, c] + U[:, :, c]
    S0s = torch.stack(starts, dim=2)            # (B,H,nc,N_v,N_k)
    S0T = S0s.transpose(-1, -2)                 # (.., N_k, N_v)
    SA = P @ S0T + Q                            # rows sa_t
    y = r_t @ S0T + Mrb @ SA + Mrk @ v
    y = y.permute(0, 2, 3, 1, 4).reshape(B, T, H, N)[:, :T0]
    return y, S


# ----------------------------------------------------------------------------
# Model (official parameter names)
# ----------------------------------------------------------------------------

def lora_dims(C):
    # RWKV-LM RWKV-v7 train_temp suggestions (max(32, round(f*C^e/32)*32))
    dw = max(32, int(round((1.8 * (C ** 0.5)) / 32) * 32))
    da = max(32, int(round((1.8 * (C ** 0.5)) / 32) * 32))
    dv = max(32, int(round((1.3 * (C ** 0.5)) / 32) * 32))
    dg = max(32, int(round((0.6 * (C ** 0.8)) / 32) * 32))
    return dw, da, dv, dg


def ortho_(x, scale):
    with torch.no_grad():
        gain = math.sqrt(x.shape[0] / x.shape[1]) if x.shape[0] > x.shape[1] else 1.0
        nn.init.orthogonal_(x, gain=gain * scale)
    return x


class Tmix(nn.Module):
    def __init__(self, C, layer_id, n_layer):
        super().__init__()
        self.layer_id = layer_id
        H, N = C // HEAD, HEAD
        self.H = H
        dw, da, dv, dg = lora_dims(C)
        r01 = layer_id / (n_layer - 1)
        r10 = 1.0 - layer_id / n_layer
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        self.x_r = nn.Parameter(1.0 - torch.pow(ddd, 0.2 * r10))
        self.x_w = nn.Parameter(1.0 - torch.pow(ddd, 0.9 * r10))
        self.x_k = nn.Parameter(1.0 - torch.pow(ddd, 0.7 * r10))
        self.x_v = nn.Parameter(1.0 - torch.pow(ddd, 0.7 * r10))
        self.x_a = nn.Parameter(1.0 - torch.pow(ddd, 0.9 * r10))
        self.x_g = nn.Parameter(1.0 - torch.pow(ddd, 0.2 * r10))
        n = torch.arange(C, dtype=torch.float32)
        linear = n / (C - 1) - 0.5
        zig = ((n % N) - ((N - 1) / 2)) / ((N - 1) / 2)
        zig = zig * zig.abs()
        www = -6 + 6 * (n / (C - 1)) ** (1 + 1 * r01 ** 0.3)
        self.w0 = nn.Parameter((www + 0.5 + zig * 2.5).view(1, 1, C))
        self.w1 = nn.Parameter(torch.zeros(C, dw))
        self.w2 = nn.Parameter(ortho_(torch.zeros(dw, C), 0.1))
        self.a0 = nn.Parameter((torch.zeros(C) - 0.19 + zig * 0.3 + linear * 0.4).view(1, 1, C))
        self.a1 = nn.Parameter(torch.zeros(C, da))
        self.a2 = nn.Parameter(ortho_(torch.zeros(da, C), 0.1))
        # layer 0 keeps v0/v1/v2 like the official checkpoints; they are never used there
        self.v0 = nn.Parameter((torch.zeros(C) + 0.73 - linear * 0.4).view(1, 1, C))
        self.v1 = nn.Parameter(torch.zeros(C, dv))
        self.v2 = nn.Parameter(ortho_(torch.zeros(dv, C), 0.1))
        self.g1 = nn.Parameter(torch.zeros(C, dg))
        self.g2 = nn.Parameter(ortho_(torch.zeros(dg, C), 0.1))
        self.k_k = nn.Parameter((torch.zeros(C) + 0.71 - linear * 0.1).view(1, 1, C))
        self.k_a = nn.Parameter(torch.zeros(1, 1, C) + 1.02)
        self.r_k = nn.Parameter(torch.zeros(H, N) - 0.04)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)
        with torch.no_grad():
            s = C ** -0.5
            self.receptance.weight.uniform_(-0.5 * s, 0.5 * s)
            self.key.weight.uniform_(-0.05 * s, 0.05 * s)
            self.value.weight.uniform_(-0.5 * s, 0.5 * s)
            self.output.weight.zero_()
            self.ln_x.weight.copy_(torch.full((C,), ((1 + layer_id) / n_layer) ** 0.7))

    def pre(self, x, v_first):
        """x = LN1 output (B,T,C). Returns the WKV inputs (fp32) and what post() needs."""
        B, T, C = x.shape
        xx = F.pad(x, (0, 0, 1, -1)) - x
        xr = x + xx * self.x_r
        xw = x + xx * self.x_w
        xk = x + xx * self.x_k
        xv = x + xx * self.x_v
        xa = x + xx * self.x_a
        xg = x + xx * self.x_g
        r = self.receptance(xr)
        z = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        logw = -EXP_HALF * torch.sigmoid(z.float())
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        alpha = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = k * self.k_k
        kk = F.normalize(kk.float().view(B, T, self.H, HEAD), dim=-1, p=2.0, eps=1e-12)
        k = k * (1 + (alpha - 1) * self.k_a)
        H = self.H
        f = lambda t: t.float().view(B, T, H, HEAD)
        return (f(r), logw.view(B, T, H, HEAD), f(k), f(v), -kk, kk * f(alpha)), (g, v_first)

    def post(self, y, r, k, v, g):
        B, T, H, N = y.shape
        C = H * N
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        y = y + ((r * k * self.r_k.float()).sum(dim=-1, keepdim=True) * v).view(B, T, C)
        return self.output(y * g)

    def forward(self, x, v_first, wkv=wkv_chunked, s0=None):
        if wkv is wkv_chunked and getattr(self, "wkv_default", None) is not None:
            wkv = self.wkv_default
        (r, logw, k, v, a, b), (g, v_first) = self.pre(x, v_first)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, _ = wkv(r, logw, k, v, a, b, s0)
        return self.post(y, r, k, v, g), v_first


class Cmix(nn.Module):
    def __init__(self, C, layer_id, n_layer):
        super().__init__()
        r10 = 1.0 - layer_id / n_layer
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        self.x_k = nn.Parameter(1.0 - torch.pow(ddd, r10 ** 4))
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)
        with torch.no_grad():
            self.key.weight.uniform_(-0.5 * C ** -0.5, 0.5 * C ** -0.5)
            self.value.weight.zero_()

    def forward(self, x):
        xx = F.pad(x, (0, 0, 1, -1)) - x
        k = torch.relu(self.key(x + xx * self.x_k)) ** 2
        return self.value(k)


class Block(nn.Module):
    def __init__(self, C, layer_id, n_layer):
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=1e-5)
        self.ln1 = nn.LayerNorm(C, eps=1e-5)
        self.ln2 = nn.LayerNorm(C, eps=1e-5)
        self.att = Tmix(C, layer_id, n_layer)
        self.ffn = Cmix(C, layer_id, n_layer)

    def forward(self, x, v_first, wkv=wkv_chunked, s0=None):
        a, v_first = self.att(self.ln1(x), v_first, wkv, s0)
        x = x + a
        x = x + self.ffn(self.ln2(x))
        return x, v_first


class RWKV7(nn.Module):
    def __init__(self, n_layer, C, V=256):
        super().__init__()
        self.n_layer, self.C, self.V = n_layer, C, V
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(C, i, n_layer) for i in range(n_layer)])
        self.ln_out = nn.LayerNorm(C, eps=1e-5)
        self.head = nn.Linear(C, V, bias=False)
        with torch.no_grad():
            self.emb.weight.uniform_(-1e-4, 1e-4)
            ortho_(self.head.weight, 0.5 * (math.sqrt(V / C) if V > C else 1.0))

    def forward(self, idx, wkv=wkv_chunked, s0=None):
        x = self.blocks[0].ln0(self.emb(idx))
        v_first = None
        for i, blk in enumerate(self.blocks):
            x, v_first = blk(x, v_first, wkv, None if s0 is None else s0[i])
        return self.head(self.ln_out(x))


# ----------------------------------------------------------------------------
# Per-token RNN forward straight from the spec (fp32), on a plain state dict
# ----------------------------------------------------------------------------

def forward_rnn(sd, tokens_bt, n_layer, state=None):
    """sd: name -> fp32 tensor. tokens_bt: (B, T) long. Returns logits (B,T,V), state.
    state: list per layer of (p_att (B,C), S (B,H,N,N), p_ffn (B,C))."""
    B, T = tokens_bt.shape
    C = sd["emb.weight"].shape[1]
    H = C // HEAD
    dev = sd["emb.weight"].device

    def ln(x, p):
        return F.layer_norm(x, (C,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)

    if state is None:
        state = [(torch.zeros(B, C, device=dev), torch.zeros(B, H, HEAD, HEAD, device=dev), torch.zeros(B, C, device=dev))
                 for _ in range(n_layer)]
    out = []
    for t in range(T):
        x = ln(sd["emb.weight"][tokens_bt[:, t]], "blocks.0.ln0")
        v_first = None
        new_state = []
        for l in range(n_layer):
            p = f"blocks.{l}."
            A = lambda n: sd[p + "att." + n].reshape(-1) if sd[p + "att." + n].dim() == 3 else sd[p + "att." + n]
            p_att, S, p_ffn = state[l]
            u = ln(x, p + "ln1")
            d = p_att - u
            xr, xw, xk, xv, xa, xg = (u + d * A(c) for c in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
            r = xr @ sd[p + "att.receptance.weight"].T
            kh = xk @ sd[p + "att.key.weight"].T
            vh = xv @ sd[p + "att.value.weight"].T
            z = A("w0") + torch.tanh(xw @ A("w1")) @ A("w2")
            w = torch.exp(-EXP_HALF * torch.sigmoid(z))
            alpha = torch.sigmoid(A("a0") + (xa @ A("a1")) @ A("a2"))
            if l == 0:
                v = vh
                v_first = v
            else:
                nu = torch.sigmoid(A("v0") + (xv @ A("v1")) @ A("v2"))
                v = vh + (v_first - vh) * nu
            g = torch.sigmoid(xg @ A("g1")) @ A("g2")
            q = (kh * A("k_k")).view(B, H, HEAD)
            kk = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            k = kh * (1 + (alpha - 1) * A("k_a"))
            rh, kh2, vh2, wh, ah = (t_.view(B, H, HEAD) for t_ in (r, k, v, w, alpha))
            aa, bb = -kk, kk * ah
            sa = torch.einsum("bhij,bhj->bhi", S, aa)
            S = S * wh[:, :, None, :] + sa[..., None] * bb[:, :, None, :] + vh2[..., None] * kh2[:, :, None, :]
            y = torch.einsum("bhij,bhj->bhi", S, rh)
            mu = y.mean(-1, keepdim=True)
            var = ((y - mu) ** 2).mean(-1, keepdim=True)
            o = ((y - mu) / torch.sqrt(var + 64e-5)).reshape(B, C) * sd[p + "att.ln_x.weight"] + sd[p + "att.ln_x.bias"]
            s_h = (rh * kh2 * sd[p + "att.r_k"]).sum(-1, keepdim=True)
            o = o + (s_h * vh2).reshape(B, C)
            x = x + (o * g) @ sd[p + "att.output.weight"].T
            u2 = ln(x, p + "ln2")
            d2 = p_ffn - u2
            hid = torch.relu((u2 + d2 * sd[p + "ffn.x_k"].reshape(-1)) @ sd[p + "ffn.key.weight"].T) ** 2
            x = x + hid @ sd[p + "ffn.value.weight"].T
            new_state.append((u, S, u2))
        state = new_state
        out.append(ln(x, "ln_out") @ sd["head.weight"].T)
    return torch.stack(out, 1), state


# ----------------------------------------------------------------------------
# safetensors (written by hand: no dependency)
# ----------------------------------------------------------------------------

def is_big(name, t):
    return t.dim() == 2 and name != "" and not name.endswith("r_k")


def save_safetensors(path, sd, meta):
    header, blobs, off = {}, [], 0
    for name in sorted(sd):
        t = sd[name].detach().float().cpu().contiguous()
        if is_big(name, t):
            raw = t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
            dt = "BF16"
        else:
            raw = t.numpy().astype("<f4").tobytes()
            dt = "F32"
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {k: str(v) for k, v in meta.items()}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def load_safetensors(path, device="cpu"):
    import numpy as np
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    sd = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        buf = data[a:b]
        if h["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<i2").copy()).view(torch.bfloat16).float()
        elif h["dtype"] == "F32":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<f4").copy())
        else:
            raise ValueError(h["dtype"])
        sd[name] = t.reshape(h["shape"]).to(device)
    return sd, meta


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

SOURCES = [("austen", 0.30), ("stories", 0.30), ("chat", 0.40)]


def parse_mix(text):
    """"name:weight,name:weight" -> [(name, weight)], weights normalised to sum 1."""
    out = []
    for part in text.split(","):
        n_, w_ = part.split(":")
        out.append((n_.strip(), float(w_)))
    tot = sum(w_ for _, w_ in out)
    return [(n_, w_ / tot) for n_, w_ in out]


class Data:
    def __init__(self, datadir, device, ctx, seed, sources=SOURCES):
        self.dev, self.ctx = device, ctx
        self.src = []
        for name, wt in sources:
            raw = gzip.open(os.path.join(datadir, name + ".txt.gz"), "rb").read()
            buf = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            # window starts: the beginning of every paragraph / document
            nl = (buf[:-1] == 10) & (buf[1:] == 10)
            starts = torch.nonzero(nl).flatten() + 2
            starts = torch.cat([torch.zeros(1, dtype=torch.long), starts])
            starts = starts[starts + ctx + 1 <= len(buf)]
            self.src.append((name, wt, buf.to(device), starts.to(device)))
            print(f"data {name}: {len(buf)} bytes, {len(starts)} window starts", flush=True)
        self.g = torch.Generator(device=device)
        self.g.manual_seed(seed)
        self.ar = torch.arange(ctx + 1, device=device)

    def batch(self, B):
        parts = []
        left = B
        for i, (name, wt, buf, starts) in enumerate(self.src):
            n = left if i == len(self.src) - 1 else int(round(B * wt))
            left -= n
            j = torch.randint(len(starts), (n,), device=self.dev, generator=self.g)
            parts.append(buf[starts[j][:, None] + self.ar[None, :]])
        x = torch.cat(parts).long()
        return x[:, :-1], x[:, 1:]


def heldout_loss(model_fn, data_bytes, device):
    """Mean next-byte cross-entropy (nats) over models/heldout.txt: split into consecutive
    chunks of EVAL_CHUNK bytes, each run from the zero state; every chunk of m bytes
    gives m-1 predictions; the mean is over all predictions."""
    tot, cnt = 0.0, 0
    for i in range(0, len(data_bytes), EVAL_CHUNK):
        c = data_bytes[i:i + EVAL_CHUNK]
        if len(c) < 2:
            continue
        x = torch.tensor(list(c), dtype=torch.long, device=device)[None]
        logits = model_fn(x[:, :-1])
        loss = F.cross_entropy(logits[0].float(), x[0, 1:], reduction="sum")
        tot += loss.item()
        cnt += len(c) - 1
    return tot / cnt, cnt



# ----------------------------------------------------------------------------
# The fused Triton WKV (wkv_triton.py), checked against wkv_chunked before use
# ----------------------------------------------------------------------------

def _wkv_inputs(B, T, H, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    rn = lambda *s: torch.randn(*s, device=device, generator=g)
    N = HEAD
    r = rn(B, T, H, N)
    k = rn(B, T, H, N) * 0.5
    v = rn(B, T, H, N)
    logw = -EXP_HALF * torch.sigmoid(rn(B, T, H, N) * 3)
    kk = F.normalize(rn(B, T, H, N), dim=-1)
    al = torch.sigmoid(rn(B, T, H, N))
    return [r, logw, k, v, -kk, kk * al]


def triton_wkv_checked(device, verbose=False, bench_shape=(64, 512, 10)):
    """Returns (wkv_triton, "") when the kernel imports, compiles and agrees with wkv_chunked
    (values and all six gradients, relative max error < 1e-4 / 1e-3), else (None, reason)."""
    try:
        from wkv_triton import wkv_triton
    except Exception as e:  # no triton, or an import error
        return None, f"import failed: {e}"
    try:
        ins = _wkv_inputs(2, 128, 3, device, 11)
        dy = torch.randn(2, 128, 3, HEAD, device=device)
        res = []
        for fn in (wkv_chunked, wkv_triton):
            xs = [t.clone().requires_grad_(True) for t in ins]
            y, _ = fn(*xs)
            (y * dy).sum().backward()
            res.append((y.detach(), [t.grad for t in xs]))
        (y1, g1), (y2, g2) = res
        err = (y1 - y2).abs().max().item() / y1.abs().max().item()
        gerr = max((x - z).abs().max().item() / (x.abs().max().item() + 1e-30) for x, z in zip(g1, g2))
        if verbose:
            print(f"triton wkv vs chunked: rel err y {err:.2e} grads {gerr:.2e}", flush=True)
        if not (err < 1e-4 and gerr < 1e-3):
            return None, f"mismatch against wkv_chunked (y {err:.2e}, grads {gerr:.2e})"
        if bench_shape:
            B, T, H = bench_shape
            xs = [t.requires_grad_(True) for t in _wkv_inputs(B, T, H, device, 12)]
            dyb = torch.randn(B, T, H, HEAD, device=device)
            for name, fn in (("chunked", wkv_chunked), ("triton", wkv_triton)):
                for it in range(4):
                    if it == 1:
                        torch.cuda.synchronize()
                        t0 = time.time()
                    y, _ = fn(*xs)
                    (y * dyb).sum().backward()
                torch.cuda.synchronize()
                ms = (time.time() - t0) / 3 * 1000
                print(f"wkv forward+backward B={B} T={T} H={H}: {name} {ms:.2f} ms", flush=True)
        return wkv_triton, ""
    except Exception as e:
        return None, f"failed: {type(e).__name__}: {e}"

# ----------------------------------------------------------------------------
# Self-test
# ----------------------------------------------------------------------------

def selftest(device):
    torch.manual_seed(0)
    B, T, H, N = 2, 45, 2, HEAD
    r = torch.randn(B, T, H, N, device=device)
    k = torch.randn(B, T, H, N, device=device) * 0.5
    v = torch.randn(B, T, H, N, device=device)
    logw = -EXP_HALF * torch.sigmoid(torch.randn(B, T, H, N, device=device) * 3)
    kk = F.normalize(torch.randn(B, T, H, N, device=device), dim=-1)
    al = torch.sigmoid(torch.randn(B, T, H, N, device=device))
    a, b = -kk, kk * al
    s0 = torch.randn(B, H, N, N, device=device) * 0.3
    ins = [t.clone().requires_grad_(True) for t in (r, logw, k, v, a, b, s0)]
    y1, S1 = wkv_naive(*ins)
    (y1.square().sum() + S1.square().sum()).backward()
    g1 = [t.grad.clone() for t in ins]
    ins2 = [t.clone().requires_grad_(True) for t in (r, logw, k, v, a, b, s0)]
    y2, S2 = wkv_chunked(*ins2)
    (y2.square().sum() + S2.square().sum()).backward()
    g2 = [t.grad for t in ins2]
    err = (y1 - y2).abs().max().item() / y1.abs().max().item()
    serr = (S1 - S2).abs().max().item() / S1.abs().max().item()
    gerr = max((x - y).abs().max().item() / (x.abs().max().item() + 1e-30) for x, y in zip(g1, g2))
    print(f"selftest wkv: rel err y {err:.2e} state {serr:.2e} grads {gerr:.2e}")
    assert err < 1e-4 and serr < 1e-4 and gerr < 1e-3
    global TRI_SOLVE
    keep, TRI_SOLVE = TRI_SOLVE, "inv"
    ins3 = [t.clone().requires_grad_(True) for t in (r, logw, k, v, a, b, s0)]
    y3, S3 = wkv_chunked(*ins3)
    (y3.square().sum() + S3.square().sum()).backward()
    TRI_SOLVE = keep
    err3 = (y1 - y3).abs().max().item() / y1.abs().max().item()
    gerr3 = max((x - y).abs().max().item() / (x.abs().max().item() + 1e-30) for x, y in zip(g1, [t.grad for t in ins3]))
    print(f"selftest wkv (--tri inv): rel err y {err3:.2e} grads {gerr3:.2e}")
    assert err3 < 1e-4 and gerr3 < 1e-3
    if device == "cuda":
        fn, why = triton_wkv_checked(device, verbose=True)
        print("selftest wkv (triton): " + ("ok" if fn else "not used: " + why))
    # parallel model vs per-token RNN forward from the spec
    m = RWKV7(2, 128).to(device)
    with torch.no_grad():  # make every parameter matter
        for n_, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.02 if p.dim() == 2 else 0.1))
    sd = {n_: p.detach().float() for n_, p in m.state_dict().items()}
    x = torch.randint(0, 256, (2, 32), device=device)
    with torch.no_grad():
        lp = m(x)
        ln_ = m(x, wkv=wkv_naive)
        lr_, _ = forward_rnn(sd, x, 2)
    e1 = (lp - lr_).abs().max().item()
    e2 = (ln_ - lr_).abs().max().item()
    print(f"selftest model: parallel(chunked) vs rnn max abs {e1:.2e}; parallel(naive) vs rnn {e2:.2e}; logit scale {lr_.abs().max().item():.2f}")
    assert e1 < 1e-3 and e2 < 1e-3
    print("selftest ok")


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def amp(device):
    if device == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def file_size_estimate(model):
    return sum(p.numel() * (2 if is_big(n, p) else 4) for n, p in model.state_dict().items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--lr-final", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-minutes", type=float, default=1e9, help="stop early (safety guard)")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="minutes for the training loop: at step 100 --steps is set from the measured speed "
                         "(the run prints and records the value; pass it as --steps to repeat the schedule)")
    ap.add_argument("--adapt", action="store_true",
                    help="with --time-budget: re-fit --steps every 100 steps from the last 100 steps' speed "
                         "(the log records each change)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-wkv", action="store_true", help="also torch.compile the chunked WKV (use with --tri inv)")
    ap.add_argument("--wkv", choices=["auto", "triton", "chunked"], default="auto",
                    help="training WKV: the fused Triton kernel (wkv_triton.py, CUDA only, checked against the "
                         "chunked WKV at start), the chunked PyTorch WKV, or auto = triton where it runs")
    ap.add_argument("--save-every", type=float, default=0.0,
                    help="minutes between partial saves of the weights (NAME.partial.safetensors), 0 = never")
    ap.add_argument("--tri", choices=["solve", "inv"], default="solve",
                    help="in-chunk triangular system: torch.linalg.solve_triangular, or the product-series inverse")
    ap.add_argument("--mix", default=",".join(f"{n}:{w}" for n, w in SOURCES),
                    help="data mixture per batch, name:weight,... (files DATA/name.txt.gz)")
    ap.add_argument("--name", default="demo", help="output file prefix: NAME.safetensors, NAME.ref-logits.f32")
    ap.add_argument("--bench", action="store_true", help="time a few steps and exit")
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--heldout", default=os.path.join(ROOT, "models", "heldout.txt"))
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    global TRI_SOLVE
    TRI_SOLVE = args.tri
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.selftest:
        selftest(device)
        return
    t_start = time.time()
    torch.manual_seed(args.seed)
    model = RWKV7(args.layers, args.dim).to(device)
    print(f"model L={args.layers} C={args.dim} params {param_count(model)} file ~{file_size_estimate(model)} bytes "
          f"lora {lora_dims(args.dim)}", flush=True)
    sources = parse_mix(args.mix)
    data = Data(args.data, device, args.ctx, args.seed, sources)
    heldout = open(args.heldout, "rb").read()

    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (decay if (p.dim() == 2 and n_.endswith(".weight")) else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), eps=1e-8, **({"fused": True} if device == "cuda" else {}))

    fwd = model
    if args.compile:
        import torch._dynamo as dynamo
        for opt_name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                         "accumulated_recompile_limit"):
            if hasattr(dynamo.config, opt_name):
                setattr(dynamo.config, opt_name, max(256, getattr(dynamo.config, opt_name)))
        for blk in model.blocks:
            blk.att.pre = torch.compile(blk.att.pre)
            blk.att.post = torch.compile(blk.att.post)
            blk.ffn.forward = torch.compile(blk.ffn.forward)
    wkv_used = "chunked"
    if args.compile_wkv:
        wkv_fn = torch.compile(wkv_chunked)
        for blk in model.blocks:
            blk.att.wkv_default = wkv_fn
        wkv_used = "chunked-compiled"
    elif args.wkv != "chunked" and device == "cuda" and args.ctx % 16 == 0:
        fn, why = triton_wkv_checked(device, verbose=True,
                                     bench_shape=(args.batch, args.ctx, args.dim // HEAD))
        if fn is None and args.wkv == "triton":
            raise SystemExit("--wkv triton: " + why)
        if fn is not None:
            for blk in model.blocks:
                blk.att.wkv_default = fn
            wkv_used = "triton"
        else:
            print("triton WKV not used: " + why, flush=True)
    print(f"training WKV: {wkv_used}", flush=True)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr_final + 0.5 * (args.lr - args.lr_final) * (1 + math.cos(math.pi * min(1.0, p)))

    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "train_log.txt"), "w")
    losses = []
    t0 = time.time()
    step = 0
    tokens = 0
    t_saved = time.time()
    for step in range(10 ** 9):
        if args.save_every > 0 and time.time() - t_saved > args.save_every * 60:
            save_safetensors(os.path.join(args.out, args.name + ".partial.safetensors"),
                             {n_: p.detach().float().cpu() for n_, p in model.state_dict().items()},
                             {"format": "pt", "architecture": "rwkv7", "vocab": "bytes", "n_layer": args.layers,
                              "n_embd": args.dim, "head_size": HEAD, "partial_step": step})
            t_saved = time.time()
        for gp in opt.param_groups:
            gp["lr"] = lr_at(step)
        x, y = data.batch(args.batch)
        with amp(device):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float().view(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += x.numel()
        if step == 20:
            torch.cuda.synchronize() if device == "cuda" else None
            t20_any, tok20 = time.time(), tokens
        if args.time_budget > 0 and step in (20, 100):
            torch.cuda.synchronize() if device == "cuda" else None
            if step == 20:
                t20 = time.time()
            else:
                per = (time.time() - t20) / 80
                left = args.time_budget * 60 - (time.time() - t0)
                args.steps = 101 + int(left / per)
                print(f"time budget: {per * 1000:.1f} ms/step -> --steps {args.steps}", flush=True)
                t_prev = time.time()
        if args.time_budget > 0 and args.adapt and step > 100 and step % 100 == 0 and step < 0.9 * args.steps:
            # the speed can change (another process on the GPU finished): re-fit the schedule
            torch.cuda.synchronize() if device == "cuda" else None
            per = (time.time() - t_prev) / 100
            t_prev = time.time()
            left = args.time_budget * 60 - (time.time() - t0)
            new_steps = step + 1 + int(left / per)
            if abs(new_steps - args.steps) > 0.02 * args.steps:
                print(f"time budget: {per * 1000:.1f} ms/step at step {step} -> --steps {new_steps}", flush=True)
                log.write(f"schedule: step {step} steps {args.steps} -> {new_steps}\n")
                args.steps = new_steps
        last = step >= args.steps - 1
        if step % 25 == 0 or last:
            lv = loss.item()
            losses.append((step, lv))
            el = time.time() - t0
            msg = f"step {step} loss {lv:.4f} gnorm {gn.item():.3f} lr {lr_at(step):.2e} tok/s {tokens / max(el, 1e-9):.0f} elapsed {el:.1f}s"
            if step > 20:
                msg += f" steady tok/s {(tokens - tok20) / max(time.time() - t20_any, 1e-9):.0f}"
            if step % 250 == 0 and step > 0 and not args.compile:
                model.eval()
                with torch.no_grad(), amp(device):
                    hl, _ = heldout_loss(lambda t: model(t), heldout, device)
                model.train()
                msg += f" heldout {hl:.4f}"
            print(msg, flush=True)
            log.write(msg + "\n")
            if args.bench and step >= 50:
                break
            if el > args.max_minutes * 60:
                print(f"time guard: stopping after step {step}", flush=True)
                break
        if last:
            break
    train_time = time.time() - t0
    steps_done = step + 1
    if args.bench:
        return

    # ---- final evaluation on the bf16-rounded weights, fp32 arithmetic
    meta = {"format": "pt", "architecture": "rwkv7", "vocab": "bytes", "n_layer": args.layers, "n_embd": args.dim,
            "head_size": HEAD, "ctx_len": args.ctx, "seed": args.seed, "steps": steps_done, "batch": args.batch}
    if args.name != "demo":
        meta["data_mix"] = args.mix
        meta["lr"] = args.lr
    raw_sd = {n_: p.detach().float().cpu() for n_, p in model.state_dict().items()}
    path = os.path.join(args.out, args.name + ".safetensors")
    save_safetensors(path, raw_sd, meta)
    sd, _ = load_safetensors(path, device)
    ev = RWKV7(args.layers, args.dim).to(device)
    ev.load_state_dict({k_: v_ for k_, v_ in sd.items()})
    ev.eval()
    with torch.no_grad():
        hl, npred = heldout_loss(lambda t: ev(t), heldout, device)
        # cross-check with the per-token RNN forward, all chunks batched
        chunks = [heldout[i:i + EVAL_CHUNK] for i in range(0, len(heldout), EVAL_CHUNK)]
        assert all(len(c) == EVAL_CHUNK for c in chunks)
        xb = torch.tensor([list(c) for c in chunks], dtype=torch.long, device=device)
        lg, _ = forward_rnn(sd, xb[:, :-1], args.layers)
        hl_rnn = F.cross_entropy(lg.reshape(-1, 256), xb[:, 1:].reshape(-1)).item()
        # final train loss: fresh batches, fp32, bf16-rounded weights
        tl = []
        for _ in range(8):
            xx, yy = data.batch(args.batch)
            tl.append(F.cross_entropy(ev(xx).float().view(-1, 256), yy.reshape(-1)).item())
        train_loss = sum(tl) / len(tl)
        # reference logits for REF_PROMPT (per-token RNN forward, fp32)
        toks = list(REF_PROMPT.encode())
        lg_ref, _ = forward_rnn(sd, torch.tensor([toks], device=device), args.layers)
        lg_par = ev(torch.tensor([toks], device=device))
        ref_diff = (lg_ref - lg_par).abs().max().item()
    lg_ref[0].float().cpu().numpy().astype("<f4").tofile(os.path.join(args.out, args.name + ".ref-logits.f32"))
    result = {
        "n_layer": args.layers, "n_embd": args.dim, "params": param_count(model), "file_bytes": os.path.getsize(path),
        "steps": steps_done, "batch": args.batch, "ctx": args.ctx, "tokens_seen": tokens, "lr": args.lr,
        "lr_final": args.lr_final, "warmup": args.warmup, "wd": args.wd, "seed": args.seed,
        "train_seconds": round(train_time, 1), "final_train_loss_nats_per_byte": round(train_loss, 4),
        "last_logged_train_loss": losses[-1][1],
        "heldout_loss_nats_per_byte": hl, "heldout_loss_rnn": hl_rnn, "heldout_predictions": npred,
        "ref_prompt": REF_PROMPT, "ref_tokens": toks, "ref_logits_shape": list(lg_ref[0].shape),
        "ref_parallel_vs_rnn_max_abs": ref_diff, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "total_seconds": round(time.time() - t_start, 1),
        "name": args.name, "mix": sources, "tri": args.tri, "compile": args.compile, "compile_wkv": args.compile_wkv,
        "wkv": wkv_used,
        "tokens_per_second": round(tokens / train_time), "tokens_per_param": round(tokens / param_count(model), 2),
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()
