#!/usr/bin/env python3
"""Independent float64 reference for rk_backward_seq: RWKV-7 forward written
from the project's spec (Part 2), token by token, and PyTorch autograd for
dLoss/d(initial state) (wkv matrices and both token-shift vectors of every
layer). It shares no code with core/ and is run once; its output is committed
under tests/data/grad-*.bin and compared by tests/golden/test_backward.c.

Loss: mean over selected positions t of -log softmax(logits_t)[targets[t]],
logits_t after tokens[0..t] from the initial state (the rk_backward_seq
contract).

Inputs (tokens, targets, mask, state0) are drawn here from a seeded
torch.Generator and stored in the output file, so the C test replays exactly
the same case. state0 is rounded to float32 first and the float32 values are
used (as float64) in the forward.

Output file (little-endian):
    b"RKGRAD01", u32 T, u32 state_len,
    u32 tokens[T], u32 targets[T], u8 mask[T] (zero-padded to a multiple of 4),
    f32 state0[state_len], f64 loss, f32 dstate0[state_len]
State layout (flat, per layer l): att_shift[C], wkv[H][N][N] (row = value,
column = key), ffn_shift[C].

Usage:
    ref_backward_torch.py MODEL.safetensors OUT.bin --T 48 --seed 1
    ref_backward_torch.py MODEL.safetensors OUT.bin --kernel STATE.safetensors \
        --tokens 5,17,200,...

Kernel states (methods "kernel" and "dbp", docs/TUNING.md): with --kernel the
initial state and the kernel term come from a rwkvd-state file of
format_version 2, every head's WKV read-out gains
    y += c_t P phi(r_t),  phi = sqrt(2/M) cos(Omega r/sqrt(|r|^2 + 1e-6) + beta),
    c_t = prod_{tau<=t} mean(w_tau) (fade mean; 0 once log c_t < -40) or 1 (fade none),
the loss is the mean cross-entropy of tokens[1:] given tokens[:-1] (every
position scored), and OUT.bin gets the gradient of both the state and P:
    b"RKKGRD01", u32 T, u32 state_len, u32 P_len, u32 tokens[T],
    f64 loss, f32 dstate0[state_len], f32 dP[P_len]   (P as [L][H][N][M])
tests/unit/test_kernel.c compares rwkvd with tests/data/kernel-mh.grad-torch.bin
(state and P gradients, max error <= 2e-3 of the largest), which was made with
PyTorch 1.13 (Debian's python3-torch) by
    ref_backward_torch.py tests/data/rand-mh.safetensors \
        tests/data/kernel-mh.grad-torch.bin --kernel tests/data/kernel-mh.safetensors \
        --tokens 5,17,200,33,91,4,250,120,7,64,300,12
"""
import argparse
import json
import struct
import sys

import torch
import torch.nn.functional as Fn

N = 64


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        t = torch.frombuffer(bytearray(raw[base + a:base + b]), dtype=dtypes[v["dtype"]])
        out[k] = t.reshape(v["shape"]).to(torch.float64)
    return out


def dims(W):
    V, C = W["emb.weight"].shape
    L = 0
    while f"blocks.{L}.ln1.weight" in W:
        L += 1
    return L, C, C // N, V


def loss_fn(W, tokens, targets, mask, st, kern=None):
    """st: list over layers of [att_shift (C), wkv (H,N,N), ffn_shift (C)].
    kern: None, or {"P": [L,H,N,M], "omega": [L,M,N], "beta": [L,M], "fade"}."""
    L, C, H, V = dims(W)
    logc = [torch.zeros(H, dtype=torch.float64) for _ in range(L)]

    def ln(x, pre, eps=1e-5):
        return Fn.layer_norm(x, (x.shape[-1],), W[pre + ".weight"], W[pre + ".bias"], eps)

    pa = [s[0] for s in st]
    S = [s[1] for s in st]
    pf = [s[2] for s in st]
    total = torch.zeros((), dtype=torch.float64)
    nsel = 0
    for t, tok in enumerate(tokens):
        x = ln(W["emb.weight"][tok], "blocks.0.ln0")
        vf = None
        for l in range(L):
            p = f"blocks.{l}."
            a_ = lambda n: W[p + "att." + n]
            u = ln(x, p + "ln1")
            d = pa[l] - u
            mix = {c: u + d * a_("x_" + c).reshape(C) for c in "rwkvag"}
            pa[l] = u
            r = a_("receptance.weight") @ mix["r"]
            kh = a_("key.weight") @ mix["k"]
            vh = a_("value.weight") @ mix["v"]
            z = a_("w0").reshape(C) + torch.tanh(mix["w"] @ a_("w1")) @ a_("w2")
            w = torch.exp(-torch.exp(torch.tensor(-0.5, dtype=torch.float64)) * torch.sigmoid(z))
            al = torch.sigmoid(a_("a0").reshape(C) + (mix["a"] @ a_("a1")) @ a_("a2"))
            if l == 0:
                v = vh
                vf = vh
            else:
                nu = torch.sigmoid(a_("v0").reshape(C) + (mix["v"] @ a_("v1")) @ a_("v2"))
                v = vh + (vf - vh) * nu
            g = torch.sigmoid(mix["g"] @ a_("g1")) @ a_("g2")
            q = (kh * a_("k_k").reshape(C)).reshape(H, N)
            kk = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            k = kh * (1 + (al - 1) * a_("k_a").reshape(C))
            kk_flat = kk.reshape(C)
            sa = S[l] @ (-kk).unsqueeze(-1)                     # [H,N,1], old state
            bvec = (kk_flat * al).reshape(H, 1, N)
            S[l] = (S[l] * w.reshape(H, 1, N) + sa * bvec
                    + v.reshape(H, N, 1) * k.reshape(H, 1, N))
            y = (S[l] @ r.reshape(H, N, 1)).reshape(H, N)
            if kern is not None:  # the kernel state's read-out term
                rh = r.reshape(H, N)
                rhat = rh / torch.sqrt((rh * rh).sum(-1, keepdim=True) + 1e-6)
                M = kern["beta"].shape[1]
                phi = (2.0 / M) ** 0.5 * torch.cos(rhat @ kern["omega"][l].T + kern["beta"][l])
                if kern["fade"] == "mean":
                    logc[l] = logc[l] + torch.log(w.reshape(H, N).mean(-1))
                    c = torch.where(logc[l] < -40.0, torch.zeros_like(logc[l]),
                                    torch.exp(logc[l])).reshape(H, 1)
                else:
                    c = torch.ones(H, 1, dtype=torch.float64)
                y = y + c * (kern["P"][l] @ phi.unsqueeze(-1)).reshape(H, N)
            o = Fn.layer_norm(y, (N,), eps=64e-5).reshape(C)
            o = o * a_("ln_x.weight") + a_("ln_x.bias")
            bonus = (r * k * a_("r_k").reshape(C)).reshape(H, N).sum(-1, keepdim=True)
            o = o + (bonus * v.reshape(H, N)).reshape(C)
            x = x + a_("output.weight") @ (o * g)
            u2 = ln(x, p + "ln2")
            xk = u2 + (pf[l] - u2) * W[p + "ffn.x_k"].reshape(C)
            pf[l] = u2
            x = x + W[p + "ffn.value.weight"] @ torch.relu(W[p + "ffn.key.weight"] @ xk) ** 2
        if mask[t]:
            logits = W["head.weight"] @ ln(x, "ln_out")
            total = total + torch.logsumexp(logits, 0) - logits[targets[t]]
            nsel += 1
    return total / max(nsel, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--T", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fd", type=int, default=4, help="finite-difference self-checks")
    ap.add_argument("--kernel", help="a kernel state (rwkvd-state version 2)")
    ap.add_argument("--tokens", help="with --kernel: comma-separated token ids")
    a = ap.parse_args()
    torch.set_grad_enabled(True)
    W = load_safetensors(a.model)
    L, C, H, V = dims(W)
    if a.kernel:
        return kernel_main(a, W, L, C, H, V)
    gen = torch.Generator().manual_seed(a.seed)
    T = a.T
    tokens = torch.randint(0, V, (T,), generator=gen).tolist()
    targets = tokens[1:] + [int(torch.randint(0, V, (1,), generator=gen))]
    mask = [1 if (t % 5) != 1 else 0 for t in range(T)]
    parts = []
    for _ in range(L):
        parts.append(torch.randn(C, generator=gen, dtype=torch.float64) * 0.5)
        parts.append(torch.randn(H * N * N, generator=gen, dtype=torch.float64) * 0.3)
        parts.append(torch.randn(C, generator=gen, dtype=torch.float64) * 0.5)
    state0 = torch.cat(parts).to(torch.float32)

    def split(flat):
        st, o = [], 0
        for _ in range(L):
            st.append([flat[o:o + C], flat[o + C:o + C + H * N * N].reshape(H, N, N),
                       flat[o + C + H * N * N:o + 2 * C + H * N * N]])
            o += 2 * C + H * N * N
        return st

    leaf = state0.to(torch.float64).clone().requires_grad_(True)
    loss = loss_fn(W, tokens, targets, mask, split(leaf))
    loss.backward()
    grad = leaf.grad.detach()
    print(f"{a.model}: L={L} C={C} H={H} V={V} T={T} loss={loss.item():.12f} "
          f"|grad|max={grad.abs().max().item():.6e}", flush=True)
    # self-check of autograd against central differences on the largest entries
    with torch.no_grad():
        idx = torch.topk(grad.abs(), a.fd).indices.tolist()
        for i in idx:
            h = 1e-5
            sp = leaf.detach().clone()
            sp[i] += h
            sm = leaf.detach().clone()
            sm[i] -= h
            fd = (loss_fn(W, tokens, targets, mask, split(sp))
                  - loss_fn(W, tokens, targets, mask, split(sm))) / (2 * h)
            print(f"  fd check elem {i}: autograd {grad[i].item():.9e} fd {fd.item():.9e}",
                  flush=True)
    with open(a.out, "wb") as f:
        f.write(b"RKGRAD01")
        f.write(struct.pack("<II", T, state0.numel()))
        f.write(struct.pack(f"<{T}I", *tokens))
        f.write(struct.pack(f"<{T}I", *targets))
        pad = (-T) % 4
        f.write(bytes(mask) + bytes(pad))
        f.write(state0.numpy().astype("<f4").tobytes())
        f.write(struct.pack("<d", loss.item()))
        f.write(grad.to(torch.float32).numpy().astype("<f4").tobytes())
    return 0


def kernel_main(a, W, L, C, H, V):
    with open(a.kernel, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(hlen)).get("__metadata__", {})
    if meta.get("format") != "rwkvd-state" or meta.get("format_version") != "2":
        sys.exit(f"{a.kernel}: not a kernel state (rwkvd-state version 2)")
    K = load_safetensors(a.kernel)
    M = int(meta["kernel_m"])
    parts = []
    for l in range(L):
        b = f"blocks.{l}."
        parts += [K[b + "att.shift_state"].reshape(-1), K[b + "att.time_state"].reshape(-1),
                  K[b + "ffn.shift_state"].reshape(-1)]
    flat = torch.cat(parts).to(torch.float64)
    P = torch.stack([K[f"blocks.{l}.att.kernel_P"].reshape(H, N, M) for l in range(L)])
    kern = {"omega": torch.stack([K[f"blocks.{l}.att.kernel_omega"].reshape(M, N)
                                  for l in range(L)]).to(torch.float64),
            "beta": torch.stack([K[f"blocks.{l}.att.kernel_beta"].reshape(M)
                                 for l in range(L)]).to(torch.float64),
            "fade": meta.get("kernel_fade", "mean")}
    seq = [int(t) for t in a.tokens.split(",")]
    tokens, targets, mask = seq[:-1], seq[1:], [1] * (len(seq) - 1)

    def split(fl):
        st, o = [], 0
        for _ in range(L):
            st.append([fl[o:o + C], fl[o + C:o + C + H * N * N].reshape(H, N, N),
                       fl[o + C + H * N * N:o + 2 * C + H * N * N]])
            o += 2 * C + H * N * N
        return st

    leaf = flat.clone().requires_grad_(True)
    Pl = P.to(torch.float64).clone().requires_grad_(True)
    kern["P"] = Pl
    loss = loss_fn(W, tokens, targets, mask, split(leaf), kern)
    loss.backward()
    print(f"{a.kernel}: M={M} fade={kern['fade']} T={len(tokens)} loss={loss.item():.12f}",
          flush=True)
    with open(a.out, "wb") as f:
        f.write(b"RKKGRD01")
        f.write(struct.pack("<III", len(tokens), leaf.numel(), Pl.numel()))
        f.write(struct.pack(f"<{len(tokens)}I", *tokens))
        f.write(struct.pack("<d", loss.item()))
        f.write(leaf.grad.to(torch.float32).numpy().astype("<f4").tobytes())
        f.write(Pl.grad.to(torch.float32).numpy().astype("<f4").tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
