#!/usr/bin/env python3
"""Write a random-weight RWKV-7 model as safetensors with the official names.

The weights are random but scaled so that a deep model stays numerically
well-behaved: every sub-layer sees LayerNorm-ed input, projections are
~N(0, 1/fan_in) (output projections scaled down further), decays, mixes and
gates stay in their usual ranges, and the logits come out O(1)-O(10). Good for
tests and benchmarks of rwkvd; the text it would generate is noise.

Tensors are generated and written one at a time (large ones in row chunks),
so memory stays small even for the 1.5B shape (~3 GB as bf16).

Examples:
    gen_model.py --layers 3 --embd 256 --vocab 512 --dw 32 --da 32 --dv 16 \\
                 --dg 48 --dtype f32 --seed 1 --out model.safetensors
    gen_model.py --preset 0.1b --dtype bf16 --out bench/models/rwkv7-0.1b-bf16.safetensors

File layout: standard safetensors (u64 LE header length, JSON header, data).
The JSON header is padded with spaces so that the data section starts at a
multiple of 64 bytes; tensors follow each other without gaps, in the order
emb, blocks.0 .. blocks.L-1, ln_out, head. bf16 values are the top 16 bits of
the float32 value rounded to nearest, ties to even.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

HEAD_SIZE = 64

PRESETS = {
    # name: (layers, embd, vocab, dw, da, dv, dg)
    "0.1b": (12, 768, 65536, 64, 64, 32, 128),
    "0.4b": (24, 1024, 65536, 64, 64, 32, 128),
    "1.5b": (24, 2048, 65536, 96, 96, 64, 256),
    "2.9b": (32, 2560, 65536, 96, 96, 64, 320),
}

DTYPES = {"f32": ("F32", 4), "bf16": ("BF16", 2), "f16": ("F16", 2)}

CHUNK_ELEMS = 1 << 24  # generate at most this many values at once


def tensor_specs(L, C, V, dw, da, dv, dg, ffn):
    """List of (name, shape, init) in file order. `init` describes the
    distribution: ("normal", std, mean), ("uniform", lo, hi) or
    ("const", value)."""
    H = C // HEAD_SIZE
    # output projections are damped so the residual stream grows slowly
    out_std = 0.5 / np.sqrt(C)
    specs = [("emb.weight", (V, C), ("normal", 1.0, 0.0))]
    for i in range(L):
        p = f"blocks.{i}."
        if i == 0:
            specs += [(p + "ln0.weight", (C,), ("normal", 0.1, 1.0)),
                      (p + "ln0.bias", (C,), ("normal", 0.05, 0.0))]
        specs += [(p + "ln1.weight", (C,), ("normal", 0.1, 1.0)),
                  (p + "ln1.bias", (C,), ("normal", 0.05, 0.0)),
                  (p + "ln2.weight", (C,), ("normal", 0.1, 1.0)),
                  (p + "ln2.bias", (C,), ("normal", 0.05, 0.0))]
        a = p + "att."
        for c in "rwkvag":
            specs.append((a + "x_" + c, (1, 1, C), ("uniform", 0.0, 1.0)))
        specs += [
            # decay: z = w0 + tanh(x w1) w2, w = exp(-e^-0.5 sigmoid(z))
            (a + "w0", (1, 1, C), ("uniform", -1.5, 1.5)),
            (a + "w1", (C, dw), ("normal", 1.0 / np.sqrt(C), 0.0)),
            (a + "w2", (dw, C), ("normal", 0.5 / np.sqrt(dw), 0.0)),
            # in-context learning rate
            (a + "a0", (1, 1, C), ("uniform", -1.0, 1.0)),
            (a + "a1", (C, da), ("normal", 1.0 / np.sqrt(C), 0.0)),
            (a + "a2", (da, C), ("normal", 0.5 / np.sqrt(da), 0.0)),
            # value residual mix (written for layer 0 too, where it is unused)
            (a + "v0", (1, 1, C), ("uniform", -1.0, 1.0)),
            (a + "v1", (C, dv), ("normal", 1.0 / np.sqrt(C), 0.0)),
            (a + "v2", (dv, C), ("normal", 0.5 / np.sqrt(dv), 0.0)),
            # gate
            (a + "g1", (C, dg), ("normal", 1.0 / np.sqrt(C), 0.0)),
            (a + "g2", (dg, C), ("normal", 1.0 / np.sqrt(dg), 0.0)),
            (a + "k_k", (1, 1, C), ("uniform", 0.5, 1.0)),
            (a + "k_a", (1, 1, C), ("uniform", 0.5, 1.0)),
            (a + "r_k", (H, HEAD_SIZE), ("normal", 0.1, 0.0)),
            (a + "receptance.weight", (C, C), ("normal", 1.0 / np.sqrt(C), 0.0)),
            (a + "key.weight", (C, C), ("normal", 1.0 / np.sqrt(C), 0.0)),
            (a + "value.weight", (C, C), ("normal", 1.0 / np.sqrt(C), 0.0)),
            (a + "output.weight", (C, C), ("normal", out_std, 0.0)),
            (a + "ln_x.weight", (C,), ("uniform", 0.5, 1.5)),
            (a + "ln_x.bias", (C,), ("normal", 0.05, 0.0)),
            (p + "ffn.x_k", (1, 1, C), ("uniform", 0.0, 1.0)),
            (p + "ffn.key.weight", (ffn, C), ("normal", 1.0 / np.sqrt(C), 0.0)),
            (p + "ffn.value.weight", (C, ffn), ("normal", 0.5 / np.sqrt(ffn), 0.0)),
        ]
    specs += [("ln_out.weight", (C,), ("normal", 0.1, 1.0)),
              ("ln_out.bias", (C,), ("normal", 0.05, 0.0)),
              ("head.weight", (V, C), ("normal", 2.5 / np.sqrt(C), 0.0))]
    return specs


def f32_to_bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


def encode(x, dtype):
    if dtype == "f32":
        return x.astype("<f4", copy=False).tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    return f32_to_bf16_bits(x).astype("<u2", copy=False).tobytes()


def sample(rng, init, n):
    kind = init[0]
    if kind == "normal":
        _, std, mean = init
        x = rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(std)
        if mean:
            x += np.float32(mean)
        return x
    if kind == "uniform":
        _, lo, hi = init
        x = rng.random(n, dtype=np.float32)
        x *= np.float32(hi - lo)
        x += np.float32(lo)
        return x
    raise ValueError(kind)


def write_model(path, specs, dtype, seed, metadata):
    st_dtype, esize = DTYPES[dtype]
    header = {"__metadata__": metadata}
    offset = 0
    for name, shape, _ in specs:
        nbytes = int(np.prod(shape)) * esize
        header[name] = {"dtype": st_dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hjson = json.dumps(header, separators=(",", ":")).encode()
    pad = (-(8 + len(hjson))) % 64
    hjson += b" " * pad

    rng = np.random.default_rng(seed)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for name, shape, init in specs:
            n = int(np.prod(shape))
            done = 0
            while done < n:
                m = min(CHUNK_ELEMS, n - done)
                f.write(encode(sample(rng, init, m), dtype))
                done += m
    os.replace(tmp, path)
    return 8 + len(hjson) + offset


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Write a random-weight RWKV-7 model (official names) as safetensors.")
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="shape of a released model; explicit options override it")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--embd", type=int, help="C, a multiple of 64")
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--dw", type=int, help="decay LoRA rank")
    ap.add_argument("--da", type=int, help="in-context learning rate LoRA rank")
    ap.add_argument("--dv", type=int, help="value residual LoRA rank")
    ap.add_argument("--dg", type=int, help="gate LoRA rank")
    ap.add_argument("--ffn", type=int, help="channel-mix width (default 4*C)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    base = PRESETS[args.preset] if args.preset else (2, 128, 256, 16, 16, 16, 32)
    names = ("layers", "embd", "vocab", "dw", "da", "dv", "dg")
    dims = {k: (getattr(args, k) if getattr(args, k) is not None else d)
            for k, d in zip(names, base)}
    L, C, V = dims["layers"], dims["embd"], dims["vocab"]
    ffn = args.ffn if args.ffn is not None else 4 * C
    if C % HEAD_SIZE or C <= 0:
        sys.exit(f"--embd must be a positive multiple of {HEAD_SIZE}")
    if min(L, V, dims["dw"], dims["da"], dims["dv"], dims["dg"], ffn) <= 0:
        sys.exit("all dimensions must be positive")

    specs = tensor_specs(L, C, V, dims["dw"], dims["da"], dims["dv"], dims["dg"], ffn)
    meta = {"format": "pt", "generator": "rwkvd tools/gen_model.py",
            "seed": str(args.seed), "dtype": args.dtype,
            "shape": (f"L={L} C={C} V={V} dw={dims['dw']} da={dims['da']} "
                      f"dv={dims['dv']} dg={dims['dg']} ffn={ffn}")}
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    size = write_model(args.out, specs, args.dtype, args.seed, meta)
    n_params = sum(int(np.prod(s)) for _, s, _ in specs)
    print(f"{args.out}: {n_params} params, {size} bytes, {meta['shape']}, "
          f"{args.dtype}, seed {args.seed}, {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
