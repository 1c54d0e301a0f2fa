#!/usr/bin/env python3
"""Independent NumPy reference of the RWKV-7 forward pass (per-token RNN mode).

Used to produce the golden outputs in tests/data/ that the C core of rwkvd is
checked against. Written for readability, not speed: one token at a time, one
head at a time, computing in float64 unless --precision f32 is given.

Reads a safetensors file with the official RWKV-7 tensor names
(emb.weight, blocks.N.att.*, blocks.N.ffn.*, ln_out.*, head.weight) holding
F32, BF16 or F16 tensors.

Usage:
    ref_rwkv7.py MODEL --tokens 1,2,3 --out-logits OUT.f32
                 [--all] [--state-in IN.f32] [--out-state OUT.f32]
                 [--precision f64|f32] [--kernel STATE.safetensors]
    ref_rwkv7.py MODEL --tokens 1,2,3 --kernel STATE.safetensors --loss-fd OUT.txt
    ref_rwkv7.py MODEL --make-kernel STATE.safetensors --kernel-m M [--kernel-fade mean|none]
                 [--seed S]

Kernel states (methods "kernel" and "dbp", docs/TUNING.md): --kernel reads a
rwkvd-state file of format_version 2 (the initial state plus, per layer, P
[H][N][M], Omega [M][N], beta [M]) and adds to every head's WKV read-out
    y += c_t P phi(r_t),  phi = sqrt(2/M) cos(Omega r/sqrt(|r|^2 + 1e-6) + beta),
    c_t = prod_{tau<=t} mean(w_tau) (fade mean; 0 once log c_t < -40) or 1 (fade none),
in float64 like the rest. --loss-fd writes the mean cross-entropy of
tokens[1:] given tokens[:-1] and its central differences along the fixed
directions of kernel_directions() (tests/unit/test_kernel.c compares rwkvd's
gradient with them). --make-kernel writes a random kernel state (the test
fixture tests/data/kernel-mh.safetensors) with its own safetensors writer.

Outputs are raw little-endian float32 arrays without a header:
    --out-logits   [V] logits after the last token, or [T][V] with --all
    --out-state    the recurrent state after the last token

State layout (identical to rwkvd's rk_state_len()/rk_state_layout()): for each
layer i = 0..L-1, in order
    att_shift[C]      LN1 output of the previous token (time-mix shift)
    wkv[H][64][64]    row = value channel, column = key channel
    ffn_shift[C]      LN2 output of the previous token (channel-mix shift)
so one layer holds 2*C + H*64*64 floats. All zeros is the fresh state.
"""
import argparse
import json
import struct
import sys

import numpy as np

HEAD_SIZE = 64
LN_EPS = 1e-5                    # LayerNorm eps (ln0, ln1, ln2, ln_out)
GN_EPS = HEAD_SIZE * 1e-5        # per-head GroupNorm eps of att.ln_x = 64e-5
DECAY_SCALE = np.exp(-0.5)       # w = exp(-e^{-1/2} * sigmoid(z))
L2_EPS = 1e-12                   # floor of the norm when normalising kk


# --------------------------------------------------------------------------
# safetensors reading
# --------------------------------------------------------------------------

def bf16_to_f32(raw_u16):
    """bf16 bit patterns (uint16) -> float32 (the bf16 is the top half)."""
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """Return {name: float32 ndarray} for every tensor in the file."""
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
    base = 8 + hlen
    blob = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = blob[base + start: base + end]
        dt = info["dtype"]
        if dt == "F32":
            arr = raw.view("<f4").astype(np.float32)
        elif dt == "F16":
            arr = raw.view("<f2").astype(np.float32)
        elif dt == "BF16":
            arr = bf16_to_f32(raw.view("<u2"))
        else:
            raise ValueError(f"{name}: unsupported dtype {dt}")
        tensors[name] = arr.reshape(info["shape"])
    return tensors


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------

class Model:
    def __init__(self, path, dtype=np.float64):
        self.kernel = None  # set_kernel
        t = read_safetensors(path)
        self.dt = dtype
        self.t = {k: v.astype(dtype) for k, v in t.items()}
        self.V, self.C = self.t["emb.weight"].shape
        self.H = self.t["blocks.0.att.r_k"].shape[0]
        if self.H * HEAD_SIZE != self.C:
            raise ValueError("r_k shape does not match C / 64 heads")
        self.L = 0
        while f"blocks.{self.L}.ln1.weight" in self.t:
            self.L += 1
        self.layer_floats = 2 * self.C + self.H * HEAD_SIZE * HEAD_SIZE

    def w(self, name):
        """Tensor by name; [1,1,C] vectors come back as [C]."""
        a = self.t[name]
        if a.ndim == 3:
            a = a.reshape(-1)
        return a

    # ---- state -----------------------------------------------------------

    def zero_state(self):
        st = []
        for _ in range(self.L):
            st.append({
                "att_shift": np.zeros(self.C, self.dt),
                "wkv": np.zeros((self.H, HEAD_SIZE, HEAD_SIZE), self.dt),
                "ffn_shift": np.zeros(self.C, self.dt),
            })
        return st

    def state_from_flat(self, flat):
        flat = np.asarray(flat, dtype=self.dt)
        if flat.size != self.L * self.layer_floats:
            raise ValueError(f"state has {flat.size} floats, expected "
                             f"{self.L * self.layer_floats}")
        st = []
        C, H, N = self.C, self.H, HEAD_SIZE
        for i in range(self.L):
            lay = flat[i * self.layer_floats:(i + 1) * self.layer_floats]
            st.append({
                "att_shift": lay[0:C].copy(),
                "wkv": lay[C:C + H * N * N].reshape(H, N, N).copy(),
                "ffn_shift": lay[C + H * N * N:].copy(),
            })
        return st

    def state_to_flat(self, st):
        parts = []
        for lay in st:
            parts += [lay["att_shift"].ravel(), lay["wkv"].ravel(),
                      lay["ffn_shift"].ravel()]
        return np.concatenate(parts)

    # ---- kernel states ---------------------------------------------------

    def set_kernel(self, P, omega, beta, fade):
        """P [L][H][N][M], omega [L][M][N], beta [L][M]; fade "mean"/"none"."""
        self.kernel = {"P": np.asarray(P, self.dt), "omega": np.asarray(omega, self.dt),
                       "beta": np.asarray(beta, self.dt), "fade": fade}
        self.kernel_logc = np.zeros((self.L, self.H), self.dt)

    def kernel_term(self, layer, h, r_h, w_h):
        """The head's kernel read-out c_t P phi(r_t) [N]; advances the fade."""
        kz = self.kernel
        if kz["fade"] == "mean":
            self.kernel_logc[layer, h] += np.log(np.mean(w_h))
            if self.kernel_logc[layer, h] < -40.0:   # faded: c = 0
                return np.zeros_like(r_h)
            c = np.exp(self.kernel_logc[layer, h])
        else:
            c = 1.0
        M = kz["beta"].shape[1]
        rhat = r_h / np.sqrt(np.sum(r_h * r_h) + 1e-6)
        phi = np.sqrt(2.0 / M) * np.cos(kz["omega"][layer] @ rhat + kz["beta"][layer])
        return c * (kz["P"][layer, h] @ phi)

    # ---- forward ---------------------------------------------------------

    def forward_token(self, token, st):
        """Advance `st` (modified in place) by one token; return logits [V]."""
        x = self.w("emb.weight")[token]
        x = layer_norm(x, self.w("blocks.0.ln0.weight"), self.w("blocks.0.ln0.bias"))
        v_first = None
        for i in range(self.L):
            p = f"blocks.{i}."
            dx, v_first = self.time_mix(i, p + "att.", x, st[i], v_first,
                                        self.w(p + "ln1.weight"), self.w(p + "ln1.bias"))
            x = x + dx
            x = x + self.channel_mix(p + "ffn.", x, st[i],
                                     self.w(p + "ln2.weight"), self.w(p + "ln2.bias"))
        x = layer_norm(x, self.w("ln_out.weight"), self.w("ln_out.bias"))
        return self.w("head.weight") @ x

    def time_mix(self, layer, p, x, lay, v_first, ln_w, ln_b):
        w = lambda n: self.w(p + n)
        H, N = self.H, HEAD_SIZE

        # 1. token shift on the LN1 output
        u = layer_norm(x, ln_w, ln_b)
        delta = lay["att_shift"] - u
        lay["att_shift"] = u.copy()

        # 2. the six lerps
        xr = u + delta * w("x_r")
        xw = u + delta * w("x_w")
        xk = u + delta * w("x_k")
        xv = u + delta * w("x_v")
        xa = u + delta * w("x_a")
        xg = u + delta * w("x_g")

        # 3. projections ([out, in] weights)
        r = w("receptance.weight") @ xr
        k_hat = w("key.weight") @ xk
        v_hat = w("value.weight") @ xv

        # 4. decay, in (exp(-e^-0.5), 1)
        z = w("w0") + np.tanh(xw @ w("w1")) @ w("w2")
        decay = np.exp(-DECAY_SCALE * sigmoid(z))

        # 5. in-context learning rate
        alpha = sigmoid(w("a0") + (xa @ w("a1")) @ w("a2"))

        # 6. value residual
        if layer == 0:
            v = v_hat
            v_first = v
        else:
            nu = sigmoid(w("v0") + (xv @ w("v1")) @ w("v2"))
            v = v_hat + (v_first - v_hat) * nu

        # 7. gate
        g = sigmoid(xg @ w("g1")) @ w("g2")

        # 8. removal key, L2-normalised per head (from k_hat)
        q = k_hat * w("k_k")
        kk = np.empty_like(q)
        for h in range(H):
            qh = q[h * N:(h + 1) * N]
            kk[h * N:(h + 1) * N] = qh / max(np.sqrt(np.sum(qh * qh)), L2_EPS)

        # 9. replacement key
        k = k_hat * (1.0 + (alpha - 1.0) * w("k_a"))

        # 10. WKV recurrence per head; S[i][j], i = value, j = key
        y = np.empty(self.C, self.dt)
        for h in range(H):
            sl = slice(h * N, (h + 1) * N)
            S = lay["wkv"][h]
            a_vec = -kk[sl]
            b_vec = kk[sl] * alpha[sl]
            sa = S @ a_vec                                   # old S
            S = (S * decay[sl][None, :] + np.outer(sa, b_vec)
                 + np.outer(v[sl], k[sl]))
            lay["wkv"][h] = S
            y[sl] = S @ r[sl]                                # new S
            if self.kernel is not None:                      # kernel state
                y[sl] = y[sl] + self.kernel_term(layer, h, r[sl], decay[sl])

        # 11. per-head GroupNorm, then ln_x affine
        o = np.empty(self.C, self.dt)
        for h in range(H):
            sl = slice(h * N, (h + 1) * N)
            yh = y[sl]
            mu = np.mean(yh)
            var = np.mean((yh - mu) ** 2)
            o[sl] = (yh - mu) / np.sqrt(var + GN_EPS)
        o = o * w("ln_x.weight") + w("ln_x.bias")

        # 12. bonus term r_k
        r_k = self.t[p + "r_k"]
        for h in range(H):
            sl = slice(h * N, (h + 1) * N)
            s_h = np.sum(r[sl] * k[sl] * r_k[h])
            o[sl] = o[sl] + s_h * v[sl]

        # 13. gated output projection
        return w("output.weight") @ (o * g), v_first

    def channel_mix(self, p, x, lay, ln_w, ln_b):
        u = layer_norm(x, ln_w, ln_b)
        delta = lay["ffn_shift"] - u
        lay["ffn_shift"] = u.copy()
        xk = u + delta * self.w(p + "x_k")
        hidden = np.maximum(self.w(p + "key.weight") @ xk, 0.0) ** 2
        return self.w(p + "value.weight") @ hidden


def layer_norm(x, weight, bias):
    mu = np.mean(x)
    var = np.mean((x - mu) ** 2)
    return (x - mu) / np.sqrt(var + LN_EPS) * weight + bias


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def read_kernel_state(m, path):
    """A rwkvd-state file of format_version 2: (flat state, P, omega, beta, fade)."""
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(hlen)).get("__metadata__", {})
    if meta.get("format") != "rwkvd-state" or meta.get("format_version") != "2":
        raise ValueError(f"{path}: not a kernel state (rwkvd-state version 2)")
    t = read_safetensors(path)
    M, C, H, N = int(meta["kernel_m"]), m.C, m.H, HEAD_SIZE
    flat, P, om, be = [], [], [], []
    for i in range(m.L):
        b = f"blocks.{i}."
        flat += [t.get(b + "att.shift_state", np.zeros(C)).ravel(),
                 t[b + "att.time_state"].ravel(),
                 t.get(b + "ffn.shift_state", np.zeros(C)).ravel()]
        P.append(t[b + "att.kernel_P"].reshape(H, N, M))
        om.append(t[b + "att.kernel_omega"].reshape(M, N))
        be.append(t[b + "att.kernel_beta"].reshape(M))
    return (np.concatenate(flat).astype(np.float64), np.stack(P), np.stack(om), np.stack(be),
            meta.get("kernel_fade", "mean"))


def kernel_directions(m, M):
    """The fixed directions of --loss-fd, as flat vectors over (state, P):
    0: P of the last layer, u_i = sin(1.7 i + 0.3)
    1: the WKV state of layer 0, u_i = sin(2.3 i + 1.1)
    2: the att shift of layer 0, u_i = sin(0.7 i + 2.0)
    (i counts from 0 within the part; rwkvd's test builds the same vectors)."""
    H, N, C = m.H, HEAD_SIZE, m.C
    dirs = []
    n = H * N * M
    dirs.append(("P", m.L - 1, np.sin(1.7 * np.arange(n) + 0.3)))
    dirs.append(("wkv", 0, np.sin(2.3 * np.arange(H * N * N) + 1.1)))
    dirs.append(("att_shift", 0, np.sin(0.7 * np.arange(C) + 2.0)))
    return dirs


def kernel_loss(m, flat, P, om, be, fade, tokens):
    m.set_kernel(P, om, be, fade)
    st = m.state_from_flat(flat)
    total = 0.0
    for t in range(len(tokens) - 1):
        lg = m.forward_token(tokens[t], st)
        mx = np.max(lg)
        total += mx + np.log(np.sum(np.exp(lg - mx))) - lg[tokens[t + 1]]
    return total / (len(tokens) - 1)


def loss_fd(m, path, tokens, out, eps=1e-4):
    flat, P, om, be, fade = read_kernel_state(m, path)
    M = be.shape[1]
    lines = [f"loss {kernel_loss(m, flat, P, om, be, fade, tokens):.17g}"]
    H, N, C = m.H, HEAD_SIZE, m.C
    for name, layer, u in kernel_directions(m, M):
        res = []
        for sgn in (1.0, -1.0):
            f2, P2 = flat.copy(), P.copy()
            if name == "P":
                P2[layer] += sgn * eps * u.reshape(H, N, M)
            else:
                off = layer * m.layer_floats + (C if name == "wkv" else 0)
                f2[off:off + u.size] += sgn * eps * u
            res.append(kernel_loss(m, f2, P2, om, be, fade, tokens))
        lines.append(f"{name} {layer} {(res[0] - res[1]) / (2 * eps):.17g}")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def make_kernel(m, path, M, fade, seed):
    """A random kernel state (float32 tensors), written without rwkvd."""
    rng = np.random.default_rng(seed)
    H, N, C = m.H, HEAD_SIZE, m.C
    tensors = []
    for i in range(m.L):
        b = f"blocks.{i}."
        tensors += [(b + "att.time_state", rng.normal(0, 0.05, (H, N, N))),
                    (b + "att.shift_state", rng.normal(0, 0.05, (C,))),
                    (b + "ffn.shift_state", rng.normal(0, 0.05, (C,))),
                    (b + "att.kernel_P", rng.normal(0, 1.0, (H, N, M))),
                    (b + "att.kernel_omega", rng.normal(0, 2.0, (M, N))),
                    (b + "att.kernel_beta", rng.uniform(0, 2 * np.pi, (M,)))]
    meta = {"format": "rwkvd-state", "format_version": "2", "kernel_m": str(M),
            "kernel_fade": fade, "n_layer": str(m.L), "n_embd": str(C), "n_head": str(H),
            "head_size": str(N), "vocab": str(m.V), "method": "kernel",
            "note": f"ref_rwkv7.py --make-kernel seed {seed}"}
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name, a in tensors:
        raw = np.asarray(a, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def parse_tokens(s):
    return [int(t) for t in s.replace(" ", "").split(",") if t != ""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="safetensors file with official RWKV-7 names")
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--state-in", help="initial state, raw LE float32 (default zeros)")
    ap.add_argument("--out-logits", help="LE float32 logits output")
    ap.add_argument("--kernel", help="a kernel state (rwkvd-state version 2): its state "
                    "and kernel term")
    ap.add_argument("--loss-fd", help="with --kernel: write the loss and its central "
                    "differences along kernel_directions() here")
    ap.add_argument("--make-kernel", help="write a random kernel state here and exit")
    ap.add_argument("--kernel-m", type=int, default=16)
    ap.add_argument("--kernel-fade", choices=["mean", "none"], default="mean")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--all", action="store_true", help="write logits of every token [T][V]")
    ap.add_argument("--out-state", help="write the final state (LE float32)")
    ap.add_argument("--precision", choices=["f64", "f32"], default="f64")
    args = ap.parse_args(argv)

    dtype = np.float64 if args.precision == "f64" else np.float32
    m = Model(args.model, dtype)
    if args.make_kernel:
        make_kernel(m, args.make_kernel, args.kernel_m, args.kernel_fade, args.seed)
        return
    if not args.tokens:
        sys.exit("--tokens is required")
    tokens = parse_tokens(args.tokens)
    if not tokens:
        sys.exit("no tokens given")
    for tok in tokens:
        if not 0 <= tok < m.V:
            sys.exit(f"token {tok} out of range (vocab {m.V})")

    if args.loss_fd:
        if not args.kernel:
            sys.exit("--loss-fd needs --kernel")
        loss_fd(m, args.kernel, tokens, args.loss_fd)
        return
    if not args.out_logits:
        sys.exit("--out-logits is required")
    if args.kernel:
        flat, P, om, be, fade = read_kernel_state(m, args.kernel)
        m.set_kernel(P, om, be, fade)
        st = m.state_from_flat(flat)
    elif args.state_in:
        st = m.state_from_flat(np.fromfile(args.state_in, dtype="<f4"))
    else:
        st = m.zero_state()

    all_logits = []
    for tok in tokens:
        all_logits.append(m.forward_token(tok, st))
    out = np.stack(all_logits) if args.all else all_logits[-1]
    out.astype("<f4").tofile(args.out_logits)
    if args.out_state:
        m.state_to_flat(st).astype("<f4").tofile(args.out_state)


if __name__ == "__main__":
    main()
