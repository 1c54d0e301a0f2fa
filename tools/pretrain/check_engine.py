#!/usr/bin/env python3
"""Compare the C engine's logits with a model's PyTorch reference logits.

  python3 tools/pretrain/check_engine.py models/student.safetensors [--rwkvd build/server/rwkvd]

NAME.ref-logits.f32 (written by train.py beside NAME.safetensors) holds the logits after
every prefix of train.py's REF_PROMPT, [T][256] little-endian float32, from the per-token
fp32 PyTorch forward. For each prefix this runs `rwkvd logits --tokens ...` (the default
kernels, and --reference for the plain fp32 ones) and prints the largest absolute
difference and whether the arg-max agrees. Needs no PyTorch.
"""
import argparse
import json
import os
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REF_PROMPT = "User: What color is the sky?\n\nAssistant:"  # = train.REF_PROMPT


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rwkvd", default=os.path.join(ROOT, "build", "server", "rwkvd"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    toks = list(REF_PROMPT.encode())
    raw = open(args.model[:-len(".safetensors")] + ".ref-logits.f32", "rb").read()
    ref = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(ref) == len(toks) * 256
    for mode in ([], ["--reference"]):
        worst, argmax_ok = 0.0, 0
        for t in range(len(toks)):
            cmd = [args.rwkvd, "logits", "--model", args.model, "--threads", str(args.threads),
                   "--tokens", ",".join(map(str, toks[:t + 1]))] + mode
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            want = ref[t * 256:(t + 1) * 256]
            worst = max(worst, max(abs(a - b) for a, b in zip(got, want)))
            argmax_ok += max(range(256), key=lambda i: got[i]) == max(range(256), key=lambda i: want[i])
        print(f"{os.path.basename(args.model)} rwkvd logits {' '.join(mode) or '(default kernels)'}: "
              f"max |C - PyTorch| over {len(toks)} prefixes = {worst:.3e}; arg-max agrees {argmax_ok}/{len(toks)}")


if __name__ == "__main__":
    main()
