#!/usr/bin/env python3
"""test_hfdir.py - model directories and sharded checkpoints (suite `cli`).

usage: test_hfdir.py RWKVD SOURCE_ROOT

Builds model directories at test time from the repository's random-weight
models with tools/hf_export.py (Hugging Face / fla names or official names,
one file or shards with model.safetensors.index.json, fused token-shift
mixes, .pth shards as a directory and as a comma-separated list) and checks
that `rwkvd logits` prints exactly the same bytes as for the source file.
Then broken directories: a missing shard, a tensor in two shards, a tensor
where the index does not put it, an indexed tensor no shard holds, a shard
name with a directory in it, a wrong shape, config.json disagreeing with
the weights or naming another architecture: each a clear error naming the
file. A vocabulary file beside the weights is picked up. Exit 0 = pass,
1 = fail, 77 = skip. Takes a few seconds.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

RWKVD, ROOT = (sys.argv[1:3] + [None, None])[:2]
FAILS = []
TOKENS = "1,2,3,200,7,255,0,42"


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg, flush=True)
    return cond


def logits(model):
    p = subprocess.run([RWKVD, "logits", "--model", model, "--tokens", TOKENS],
                       capture_output=True, timeout=120)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def must_fail(model, what, *subs):
    rc, out, err = logits(model)
    ok = check(rc != 0 and not out.strip(), "%s: loaded (rc %d)" % (what, rc))
    for s in subs:
        ok &= check(s in err, "%s: message %r lacks %r" % (what, err.strip(), s))
    if ok:
        print("ok   %-34s %s" % (what, err.strip().splitlines()[-1][:150]))


def numpy_python():
    """An interpreter that has numpy (for tools/make_pth.py), or None."""
    for py in (sys.executable, "/usr/bin/python3"):
        if py and os.path.exists(py) and subprocess.run(
                [py, "-c", "import numpy"], capture_output=True).returncode == 0:
            return py
    return None


def main():
    if not RWKVD or not ROOT:
        print(__doc__)
        return 77
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import hf_export as hx

    tmp = tempfile.mkdtemp(prefix="rk-hfdir-")
    try:
        for src_name in ("rand-mh.safetensors", "rand-mh-bf16.safetensors"):
            src = os.path.join(ROOT, "tests/data", src_name)
            rc, want, err = logits(src)
            if not check(rc == 0 and want.startswith(b"["), "%s: %s" % (src_name, err)):
                continue
            cases = [("hf", 1, False), ("hf", 3, False), ("official", 2, False), ("hf", 2, True)]
            for names, k, fused in cases:
                d = os.path.join(tmp, "%s-%s-%d%s" % (src_name, names, k, "-fused" if fused else ""))
                hx.export(src, d, names, k, fused_mix=fused)
                rc, got, err = logits(d)
                check(rc == 0 and got == want, "%s: logits differ from %s (rc %d, %s)"
                      % (os.path.basename(d), src_name, rc, err.strip()[-300:]))
            py = numpy_python()
            if py:
                d = os.path.join(tmp, src_name + "-pth")
                files = hx.export(src, d, "official", 3, pth=True, config=False, python=py)
                rc, got, err = logits(d)
                check(rc == 0 and got == want, "%s .pth shards: %s" % (src_name, err.strip()))
                lst = ",".join(os.path.join(d, f) for f in files)
                rc, got, err = logits(lst)
                check(rc == 0 and got == want, "%s .pth list: %s" % (src_name, err.strip()))
            else:
                print("note: no Python with numpy; the .pth shard cases are skipped")
        print("ok   logits bit-identical for every layout")

        src = os.path.join(ROOT, "tests/data/rand-mh.safetensors")
        tensors, _ = hx.read_st(src)
        items = hx.to_hf(tensors)

        def fresh(name, k=3):
            d = os.path.join(tmp, name)
            hx.export(src, d, "hf", k)
            return d

        def index(d):
            with open(os.path.join(d, "model.safetensors.index.json")) as f:
                return json.load(f)

        def write_index(d, ix):
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump(ix, f)

        d = fresh("missing")
        os.remove(os.path.join(d, "model-00002-of-00003.safetensors"))
        must_fail(d, "missing shard", "model-00002-of-00003.safetensors",
                  "model.safetensors.index.json", "No such file")

        # A tensor of shard 1 written into shard 3 as well.
        d = fresh("twice")
        parts = hx.split(items, 3)
        hx.write_st(os.path.join(d, "model-00003-of-00003.safetensors"), parts[2] + parts[0][:1])
        must_fail(d, "tensor in two shards", "in two files", parts[0][0][0],
                  "model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors")

        # The index listing a tensor twice (the JSON names it twice).
        d = fresh("listed-twice")
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            text = f.read()
        first = parts[0][0][0]
        text = text.replace('"weight_map": {', '"weight_map": {"%s": '
                            '"model-00002-of-00003.safetensors", ' % first, 1)
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            f.write(text)
        must_fail(d, "index names a tensor twice", "listed twice", first)

        # The index putting a tensor in the wrong shard.
        d = fresh("moved")
        ix = index(d)
        ix["weight_map"][first] = "model-00002-of-00003.safetensors"
        write_index(d, ix)
        must_fail(d, "tensor not where the index says", first, "but model.safetensors.index.json "
                  "puts it in model-00002-of-00003.safetensors")

        # The index naming a tensor no shard holds.
        d = fresh("phantom")
        ix = index(d)
        ix["weight_map"]["model.layers.0.attn.extra"] = "model-00001-of-00003.safetensors"
        write_index(d, ix)
        must_fail(d, "indexed tensor missing", "model.layers.0.attn.extra", "does not hold it")

        # A shard name that leaves the directory.
        d = fresh("escape")
        ix = index(d)
        ix["weight_map"][first] = "../model-00001-of-00003.safetensors"
        write_index(d, ix)
        must_fail(d, "shard outside the directory", "is not a *.safetensors file name")

        # A LoRA factor left in the official orientation: a wrong shape.
        d = os.path.join(tmp, "shape")
        os.makedirs(d)
        bad = [(n, dt, tensors["blocks.1.att.w1"][1] if n == "model.layers.1.attn.w_lora.lora.0.weight"
                else t) for n, dt, t in items]
        hx.write_shards(d, bad, 2)
        must_fail(d, "wrong shape", "model.layers.1.attn.w_lora.lora.0.weight", "shape")

        # config.json that disagrees with the weights, or another model type.
        for key, val, sub in (("hidden_size", 256, '"hidden_size" is 256, but the weights have 192'),
                              ("model_type", "llama", "model_type 'llama' is not an RWKV-7"),
                              ("num_hidden_layers", "2", '"num_hidden_layers" must be given once')):
            d = fresh("config-" + key, 1)
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
            cfg[key] = val
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(cfg, f)
            must_fail(d, "config.json " + key, "config.json", sub)
        d = fresh("config-bad-json", 1)
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write('{"model_type": "rwkv7",}')
        must_fail(d, "config.json not JSON", "config.json")

        d = os.path.join(tmp, "empty")
        os.makedirs(d)
        must_fail(d, "empty directory", "a model directory needs")

        # The vocabulary beside the weights is used (here it is too large for
        # the 384-token test model, which proves it was read).
        vocab = os.path.join(ROOT, "..", "shared", "fixtures", "tokenizer",
                             "rwkv_vocab_v20230424.txt")
        if os.path.exists(vocab):
            d = fresh("vocab", 1)
            shutil.copy(vocab, os.path.join(d, "rwkv_vocab_v20230424.txt"))
            p = subprocess.run([RWKVD, "generate", "--model", d, "--prompt", "hi",
                                "--max-tokens", "1"], capture_output=True, timeout=60)
            err = p.stderr.decode(errors="replace")
            check(p.returncode != 0 and "vocabulary from the model directory" in err
                  and "tokens but the model only 384" in err,
                  "vocabulary beside the weights: rc %d, %r" % (p.returncode, err[-300:]))
        else:
            print("note: ../shared fixtures missing; the vocabulary case is skipped")
    finally:
        if not FAILS:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept", tmp)
    print("%d failure(s)" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
