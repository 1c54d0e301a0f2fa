#!/usr/bin/env python3
"""Write an RWKV-7 safetensors model (official names) as a model directory.

    tools/hf_export.py SRC.safetensors OUTDIR [--names hf|official] [--shards K]
                       [--pth] [--fused-mix]

--names hf (the default) renames every tensor to the Hugging Face
"RWKV7ForCausalLM" (fla) scheme and reshapes it the way that scheme stores
it: the LoRA factors transposed into nn.Linear form (w1 [C, D] becomes
w_lora.lora.0.weight [D, C], w2 [D, C] becomes w_lora.lora.2.weight [C, D]),
w0/a0/v0 as the bias of the second LoRA layer, the vectors as [C]. Layer 0
has no v LoRA (fla leaves it out: the first layer keeps its own values).
--fused-mix writes the six token-shift mixes of each layer as one
attn.x_x [6, C] in the order r, w, k, v, a, g. --names official keeps the
names and shapes. config.json describes the model either way.

--shards K cuts the tensors into K files model-0000k-of-0000K.safetensors
(in file order, about equal bytes each) with model.safetensors.index.json
saying which file holds each tensor; K = 1 writes model.safetensors.
--pth writes torch.save shards model-k.pth instead (official names, through
tools/make_pth.py) and no index.

The tests build their fixtures with this (tests/cli/test_hfdir.py) and load
them next to the source file: the logits must be bit-identical. The
functions are importable, so a test can write broken directories too.
Plain Python (a tensor is its dtype, shape and bytes); --pth needs what
tools/make_pth.py needs (numpy), run by the interpreter given in --python.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

ESIZE = {"F32": 4, "F16": 2, "BF16": 2}


class T:
    """A tensor: row-major bytes of a shape."""

    def __init__(self, shape, data):
        self.shape, self.data = list(shape), data

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def nbytes(self):
        return len(self.data)

    def reshape(self, shape):
        return T(shape, self.data)

    def flat(self):
        n = 1
        for d in self.shape:
            n *= d
        return T([n], self.data)

    def transposed(self, es):
        """The transpose of a 2-D tensor of es-byte elements."""
        r, c = self.shape
        src, out = memoryview(self.data), bytearray(len(self.data))
        for i in range(r):
            for j in range(c):
                o, p = (j * r + i) * es, (i * c + j) * es
                out[o:o + es] = src[p:p + es]
        return T([c, r], bytes(out))


def read_st(path):
    """{name: (dtype string, T)} in file order, plus the metadata."""
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8:8 + hlen])
    meta = head.pop("__metadata__", {})
    base = 8 + hlen
    out = {}
    for name, e in sorted(head.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, en = e["data_offsets"]
        out[name] = (e["dtype"], T(e["shape"], raw[base + b:base + en]))
    return out, meta


def write_st(path, tensors, meta=None):
    """tensors: list of (name, dtype string, T); written in that order."""
    head, blobs, off = {}, [], 0
    for name, dt, t in tensors:
        data = t.data
        head[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if meta:
        head["__metadata__"] = meta
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")
SIMPLE = {  # official suffix -> fla suffix, same values (vectors flattened)
    "ln1.weight": "attn_norm.weight", "ln1.bias": "attn_norm.bias",
    "ln2.weight": "ffn_norm.weight", "ln2.bias": "ffn_norm.bias",
    "ln0.weight": "pre_norm.weight", "ln0.bias": "pre_norm.bias",
    "att.k_k": "attn.k_k", "att.k_a": "attn.k_a", "att.r_k": "attn.r_k",
    "att.receptance.weight": "attn.r_proj.weight", "att.key.weight": "attn.k_proj.weight",
    "att.value.weight": "attn.v_proj.weight", "att.output.weight": "attn.o_proj.weight",
    "att.ln_x.weight": "attn.g_norm.weight", "att.ln_x.bias": "attn.g_norm.bias",
    "ffn.x_k": "ffn.x_k", "ffn.key.weight": "ffn.key.weight",
    "ffn.value.weight": "ffn.value.weight",
}
MIXES = "rwkvag"


def to_hf(tensors, fused_mix=False):
    """Official (name -> (dtype, array)) to a list of fla (name, dtype, array)."""
    top = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
           "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
    out, mixes = [], {}
    for name, (dt, a) in tensors.items():
        if name in top:
            out.append((top[name], dt, a))
            continue
        m = LAYER.match(name)
        if not m:
            continue
        i, suf = int(m.group(1)), m.group(2)
        pre = "model.layers.%d." % i
        if suf in SIMPLE:  # matrices and r_k [H, 64] as they are, vectors as [C]
            v = a if a.ndim == 2 and a.shape[0] > 1 else a.flat()
            out.append((pre + SIMPLE[suf], dt, v))
        elif re.fullmatch(r"att\.x_[rwkvag]", suf):
            if fused_mix:
                mixes.setdefault(i, {})[suf[-1]] = (dt, a.flat())
                if len(mixes[i]) == 6:
                    d0 = mixes[i]["r"][0]
                    rows = [mixes[i][c][1] for c in MIXES]
                    out.append((pre + "attn.x_x", d0,
                                T([6, rows[0].shape[0]], b"".join(r.data for r in rows))))
            else:
                out.append((pre + "attn." + suf[4:], dt, a.flat()))
        elif re.fullmatch(r"att\.[wavg][012]", suf):
            kind, part = suf[4], suf[5]
            if kind == "v" and i == 0:
                continue  # not in fla's first layer
            lora = pre + "attn.%s_lora.lora." % kind
            if part == "0":
                out.append((lora + "2.bias", dt, a.flat()))
            elif part == "1":
                out.append((lora + "0.weight", dt, a.transposed(ESIZE[dt])))
            else:
                out.append((lora + "2.weight", dt, a.transposed(ESIZE[dt])))
        else:
            raise SystemExit("hf_export: no Hugging Face name for %s" % name)
    return out


def config_of(tensors):
    emb = tensors["emb.weight"][1]
    V, C = emb.shape
    L = 1 + max(int(LAYER.match(n).group(1)) for n in tensors if LAYER.match(n))
    g = lambda n, d: tensors[n][1].shape[d] if n in tensors else 0
    return {
        "architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7",
        "hidden_size": C, "num_hidden_layers": L, "head_dim": 64, "vocab_size": V,
        "intermediate_size": g("blocks.0.ffn.key.weight", 0),
        "decay_low_rank_dim": g("blocks.0.att.w1", 1), "a_low_rank_dim": g("blocks.0.att.a1", 1),
        "v_low_rank_dim": g("blocks.1.att.v1", 1), "gate_low_rank_dim": g("blocks.0.att.g1", 1),
        "norm_eps": 1e-05, "hidden_act": "sqrelu", "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def split(items, k):
    """Cut a list of (name, dtype, array) into k runs of about equal bytes."""
    total = sum(a.nbytes for _, _, a in items)
    parts, cur, acc = [], [], 0
    for it in items:
        cur.append(it)
        acc += it[2].nbytes
        if len(parts) < k - 1 and acc >= total * (len(parts) + 1) / k:
            parts.append(cur)
            cur = []
    parts.append(cur)
    while len(parts) < k:
        parts.append([])
    return parts


def write_shards(outdir, items, k):
    """model.safetensors, or k shards and their index. Returns the file names."""
    if k == 1:
        write_st(os.path.join(outdir, "model.safetensors"), items, {"format": "pt"})
        return ["model.safetensors"]
    names, wmap = [], {}
    for j, part in enumerate(split(items, k)):
        fn = "model-%05d-of-%05d.safetensors" % (j + 1, k)
        write_st(os.path.join(outdir, fn), part, {"format": "pt"})
        names.append(fn)
        for n, _, _ in part:
            wmap[n] = fn
    index = {"metadata": {"total_size": sum(a.nbytes for _, _, a in items)}, "weight_map": wmap}
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return names


def write_pth_shards(outdir, items, k, make_pth, python):
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for j, part in enumerate(split(items, k)):
            src = os.path.join(tmp, "part%d.safetensors" % j)
            write_st(src, part)
            fn = "model-%d.pth" % (j + 1)
            subprocess.run([python, make_pth, src, os.path.join(outdir, fn),
                            "--archive", "model-%d" % (j + 1)], check=True)
            names.append(fn)
    return names


def export(src, outdir, names="hf", shards=1, pth=False, fused_mix=False, config=True,
           python=sys.executable):
    tensors, _ = read_st(src)
    os.makedirs(outdir, exist_ok=True)
    if names == "hf":
        items = to_hf(tensors, fused_mix)
    else:
        items = [(n, dt, a) for n, (dt, a) in tensors.items()]
    if config:
        with open(os.path.join(outdir, "config.json"), "w") as f:
            json.dump(config_of(tensors), f, indent=2)
    if pth:
        here = os.path.dirname(os.path.abspath(__file__))
        return write_pth_shards(outdir, items, shards, os.path.join(here, "make_pth.py"), python)
    return write_shards(outdir, items, shards)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("outdir")
    ap.add_argument("--names", choices=("hf", "official"), default="hf")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--pth", action="store_true")
    ap.add_argument("--fused-mix", action="store_true")
    ap.add_argument("--python", default=sys.executable, help="interpreter for make_pth.py")
    a = ap.parse_args()
    if a.shards < 1:
        ap.error("--shards must be at least 1")
    if a.pth and a.names == "hf":
        a.names = "official"
    files = export(a.src, a.outdir, a.names, a.shards, a.pth, a.fused_mix, python=a.python)
    print("wrote %s: %s" % (a.outdir, ", ".join(files)))


if __name__ == "__main__":
    main()
