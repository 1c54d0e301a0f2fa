#!/usr/bin/env python3
"""Generate text from models/demo.safetensors with the per-token RWKV-7 forward (fp32,
CPU is fine), and recompute the card's held-out loss.

  python3 tools/pretrain/sample.py [--model models/demo.safetensors] [--state S.pt]
         [--prompt TEXT ...] [--tokens 200] [--temperature 0.7] [--top-p 0.9] [--seed 0]
  python3 tools/pretrain/sample.py --heldout       # prints the held-out loss
  python3 tools/pretrain/sample.py --check-ref     # compares models/demo.ref-logits.f32
                                                   # (NAME.ref-logits.f32 beside --model NAME.safetensors)

Generation stops at "\\n\\n" after an answer (chat prompts) or after --tokens bytes.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import EVAL_CHUNK, HEAD, REF_PROMPT, forward_rnn, load_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_PROMPTS = [
    "User: Tell me a story about a dog.\n\nAssistant:",
    "User: What is the capital of France?\n\nAssistant:",
    "User: Give me three tips to sleep better.\n\nAssistant:",
    "User: What do bees make?\n\nAssistant:",
    "It was a fine morning in the village, and Elizabeth",
    "Once upon a time,",
]


def n_layers(sd):
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))


def state_from_wkv(sd, wkv):
    """A fresh state whose wkv matrices are wkv[l] (H,N,N); token shifts zero."""
    C = sd["emb.weight"].shape[1]
    return [(torch.zeros(1, C), wkv[l][None].clone(), torch.zeros(1, C)) for l in range(len(wkv))]


def generate(sd, prompt, tokens=200, temperature=0.7, top_p=0.9, seed=0, wkv=None, stop="\n\n"):
    L = n_layers(sd)
    g = torch.Generator().manual_seed(seed)
    state = state_from_wkv(sd, wkv) if wkv is not None else None
    ids = list(prompt.encode())
    logits, state = forward_rnn(sd, torch.tensor([ids]), L, state)
    out = bytearray()
    last = logits[0, -1]
    for _ in range(tokens):
        if temperature <= 0:
            t = int(last.argmax())
        else:
            p = F.softmax(last / temperature, -1)
            sp, si = p.sort(descending=True)
            keep = (sp.cumsum(0) - sp) < top_p
            sp = sp * keep
            t = int(si[torch.multinomial(sp / sp.sum(), 1, generator=g)])
        out.append(t)
        if stop and out.endswith(stop.encode()) and len(out) > len(stop):
            break
        lg, state = forward_rnn(sd, torch.tensor([[t]]), L, state)
        last = lg[0, -1]
    return out.decode("utf-8", "replace")


def heldout(sd, path):
    data = open(path, "rb").read()
    L = n_layers(sd)
    tot, cnt, parts = 0.0, 0, []
    for i in range(0, len(data), EVAL_CHUNK):
        c = torch.tensor(list(data[i:i + EVAL_CHUNK]))
        lg, _ = forward_rnn(sd, c[None, :-1], L)
        l = F.cross_entropy(lg[0], c[1:], reduction="sum").item()
        parts.append(l / (len(c) - 1))
        tot += l
        cnt += len(c) - 1
    return tot / cnt, cnt, parts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo.safetensors"))
    ap.add_argument("--state", help="a .pt file holding a list of per-layer wkv tensors (H,64,64)")
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout", action="store_true")
    ap.add_argument("--check-ref", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    sd, meta = load_safetensors(args.model)
    if args.heldout:
        loss, cnt, parts = heldout(sd, os.path.join(ROOT, "models", "heldout.txt"))
        print(f"held-out loss {loss:.6f} nats/byte over {cnt} predictions; per chunk: "
              + " ".join(f"{p:.4f}" for p in parts))
        return
    if args.check_ref:
        import numpy as np
        ref_path = args.model[:-len(".safetensors")] + ".ref-logits.f32"  # models/NAME.ref-logits.f32
        ref = torch.from_numpy(np.fromfile(ref_path, dtype="<f4"))
        ids = list(REF_PROMPT.encode())
        lg, _ = forward_rnn(sd, torch.tensor([ids]), n_layers(sd))
        ref = ref.view(len(ids), 256)
        print(f"max |ref - cpu| = {(ref - lg[0]).abs().max().item():.3e}; argmax after last token: "
              f"{int(ref[-1].argmax())} {bytes([int(ref[-1].argmax())])!r}")
        return
    wkv = torch.load(args.state) if args.state else None
    for p in args.prompt or DEFAULT_PROMPTS:
        print("=" * 60)
        print(p + generate(sd, p, args.tokens, args.temperature, args.top_p, args.seed, wkv,
                           stop="\n\n" if p.rstrip().endswith("Assistant:") else None))


if __name__ == "__main__":
    main()
