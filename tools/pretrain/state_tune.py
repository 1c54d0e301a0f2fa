#!/usr/bin/env python3
"""Check that a state tune steers the demo model (PyTorch, CPU is fine).

Trains only the initial WKV state (per layer (H,64,64), zero-initialised, token-shift
states stay zero, as RWKV-PEFT does) on a {"prompt","completion"} JSONL file, with the
loss on the completion bytes only, then prints generations with and without the state
for prompts that are not in the file. This is the reference for the quickstart's
`rwkvd` state tune on models/demo-style.jsonl; the C engine has its own trainer.

  python3 tools/pretrain/state_tune.py [--data models/demo-style.jsonl] [--steps 40]
         [--lr 0.02] [--out /tmp/pirate.pt]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import HEAD, RWKV7, load_safetensors, wkv_chunked  # noqa: E402
from sample import generate, n_layers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEST_PROMPTS = ["User: What sound does a cow make?\n\nAssistant:",
                "User: What is the capital of Italy?\n\nAssistant:",
                "User: What is a kite?\n\nAssistant:",
                "User: Good morning!\n\nAssistant:"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo.safetensors"))
    ap.add_argument("--data", default=os.path.join(ROOT, "models", "demo-style.jsonl"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    sd, _ = load_safetensors(args.model)
    L, C = n_layers(sd), sd["emb.weight"].shape[1]
    H = C // HEAD
    model = RWKV7(L, C)
    model.load_state_dict(sd)
    model.requires_grad_(False)
    rows = [json.loads(l) for l in open(args.data) if l.strip()]
    seqs = []
    for r in rows:
        p, c = r["prompt"].encode(), r["completion"].encode()
        ids = torch.tensor(list(p + c))
        mask = torch.zeros(len(ids) - 1)
        mask[len(p) - 1:] = 1.0  # predictions of the completion bytes
        seqs.append((ids, mask))
    state = torch.zeros(L, H, HEAD, HEAD, requires_grad=True)
    opt = torch.optim.Adam([state], lr=args.lr, betas=(0.9, 0.99))
    t0 = time.time()
    for step in range(args.steps):
        opt.zero_grad()
        tot, cnt = 0.0, 0.0
        for ids, mask in seqs:
            logits = model(ids[None, :-1], wkv=wkv_chunked, s0=[state[l][None] for l in range(L)])
            l = (F.cross_entropy(logits[0], ids[1:], reduction="none") * mask).sum()
            (l / sum(m.sum() for _, m in seqs)).backward()
            tot += l.item()
            cnt += mask.sum().item()
        opt.step()
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step} completion loss {tot / cnt:.4f} ({time.time() - t0:.0f}s)", flush=True)
    if args.out:
        torch.save([s.detach().clone() for s in state], args.out)
    torch.set_grad_enabled(False)
    wkv = [s.detach() for s in state]
    for p in TEST_PROMPTS:
        base = generate(sd, p, 120, temperature=0.0)
        tuned = generate(sd, p, 120, temperature=0.0, wkv=wkv)
        print("=" * 60)
        print(p.replace("\n", "\\n"))
        print("  base :", base.strip())
        print("  tuned:", tuned.strip())


if __name__ == "__main__":
    main()
