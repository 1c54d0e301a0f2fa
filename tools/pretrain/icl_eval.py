#!/usr/bin/env python3
"""In-context ability of a byte-level RWKV-7 file (CPU is fine): copying, induction,
few-shot versus zero-shot classification, worked arithmetic, sorting, word relations,
long-context recall, and the held-out loss.

  python3 tools/pretrain/icl_eval.py --model models/student.safetensors [--json OUT.json]

Every item is drawn with fixed seeds that differ from the training data's (make_icl_data.py
uses 20251204; this uses 7001 + task number), and the classification queries use only the
words that make_icl_data.py keeps out of training (EVAL_WORDS), so the items are not in the
training text.

Scoring. "Exact match" items have a prompt and a reference completion that ends with a
newline; an item counts as solved when greedy decoding from the prompt reproduces the
completion byte for byte (worked steps included). That is computed by teacher forcing: one
forward over prompt + completion, solved iff the arg-max at every completion position is the
next reference byte, which is the same as running greedy decoding and comparing. Multiple
choice items score each choice by the log-probability of its bytes (" label\\n") after the
prompt and take the best; chance is 1/number of choices. All computation in fp32 with the
parallel (chunked) forward of tools/pretrain/train.py.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train import RWKV7, EVAL_CHUNK, load_safetensors  # noqa: E402
import make_icl_data as D  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))


def n_layers(sd):
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))


class Results(dict):
    """A dict that prints each number as it is set (long runs show progress)."""

    def __setitem__(self, k, v):
        super().__setitem__(k, v)
        print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}", flush=True)


class Scorer:
    def __init__(self, path, batch=16, device="cpu"):
        sd, self.meta = load_safetensors(path)
        self.L, self.C = n_layers(sd), sd["emb.weight"].shape[1]
        self.device = device
        self.m = RWKV7(self.L, self.C).to(device)
        self.m.load_state_dict(sd)
        self.m.eval()
        self.params = sum(p.numel() for p in self.m.parameters())
        self.batch = batch

    def logprobs(self, seqs):
        """seqs: list of byte strings. Returns per sequence (log-probs of bytes 1.., arg-max ok)."""
        out = []
        for i in range(0, len(seqs), self.batch):
            grp = seqs[i:i + self.batch]
            T = max(len(s) for s in grp)
            x = torch.zeros(len(grp), T, dtype=torch.long)
            for j, s in enumerate(grp):
                x[j, :len(s)] = torch.tensor(list(s))
            x = x.to(self.device)
            with torch.no_grad():
                lg = self.m(x[:, :-1]).float().cpu()
            x = x.cpu()
            lp = F.log_softmax(lg, -1)
            am = lg.argmax(-1)
            for j, s in enumerate(grp):
                n = len(s) - 1
                tgt = x[j, 1:n + 1]
                out.append((lp[j, :n].gather(-1, tgt[:, None])[:, 0], am[j, :n] == tgt))
        return out

    def exact(self, items):
        """items: (prompt, completion). Fraction where greedy decoding gives the completion."""
        seqs = [(p + c).encode() for p, c in items]
        res = self.logprobs(seqs)
        ok = 0
        for (p, c), (_, hit) in zip(items, res):
            ok += bool(hit[len(p.encode()) - 1:].all())
        return ok / len(items)

    def choice(self, items):
        """items: (prompt, [choices], index of the right one). Accuracy by summed log-prob."""
        seqs, spans = [], []
        for p, chs, _ in items:
            for c in chs:
                seqs.append((p + c).encode())
                spans.append(len(p.encode()) - 1)
        res = self.logprobs(seqs)
        ok, k = 0, 0
        for p, chs, right in items:
            scores = [res[k + i][0][spans[k + i]:].sum().item() for i in range(len(chs))]
            k += len(chs)
            ok += int(max(range(len(chs)), key=lambda i: scores[i]) == right)
        return ok / len(items)


# ----------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------

def copy_items(r, n, length):
    out = []
    for _ in range(n):
        s = D.rand_string(r, length)
        out.append((f"Copy: {s}\nOutput:", f" {s}\n"))
    return out


def induction_loss(sc, r, n=32, length=64):
    """Random lowercase strings shown twice with no instruction: loss on each copy."""
    seqs = [D.rand_string(r, length, D.LETTERS) * 2 for _ in range(n)]
    res = sc.logprobs([s.encode() for s in seqs])
    first = sum(-lp[:length - 1].mean().item() for lp, _ in res) / n
    second = sum(-lp[length - 1:].mean().item() for lp, _ in res) / n
    return first, second


def induct_classify_items(r, n, shots):
    """Four random 5-letter items, two labels (foo/bar, ...) assigned at random in each item;
    `shots` example lines drawn from the four (the query's item among them when shots > 0);
    the query is one of the four. With no example the label is a guess (chance 50%)."""
    out = []
    for _ in range(n):
        labels = r.choice(D.LABELS).split()
        pool = [D.rand_string(r, 5, D.LETTERS) for _ in range(4)]
        lab = {w: labels[i % 2] for i, w in enumerate(pool)}
        q = r.choice(pool)
        ex = [r.choice(pool) for _ in range(shots)]
        if shots:
            ex[r.randrange(shots)] = q
        lines = ["Labels: " + ", ".join(labels)] + [f"{w}: {lab[w]}" for w in ex]
        out.append(("\n".join(lines) + f"\n{q}:", [f" {x}\n" for x in labels], labels.index(lab[q])))
    return out


def classify_items(r, n, shots, labels_kind, query_words=None):
    """Two categories, two labels; examples from those categories. The query is one of the
    words kept out of training (EVAL_WORDS), or with query_words=TRAIN_WORDS a word seen in
    training episodes (under other labels: the mapping is new in every episode)."""
    query_words = query_words or D.EVAL_WORDS
    items = []
    cats_all = sorted(D.CATS)
    for _ in range(n):
        c1, c2 = r.sample(cats_all, 2)
        if labels_kind == "arbitrary":
            labels = r.choice(D.LABELS).split()
            r.shuffle(labels)
        else:
            labels = [c1, c2]
        right = r.randrange(2)
        q = r.choice(query_words[(c1, c2)[right]])
        lines = ["Labels: " + ", ".join(labels if r.random() < 0.5 else labels[::-1])]
        for _ in range(shots):
            c = r.randrange(2)
            w = r.choice([x for x in D.CATS[(c1, c2)[c]] if x != q])
            lines.append(f"{w}: {labels[c]}")
        prompt = "\n".join(lines) + f"\n{q}:"
        items.append((prompt, [f" {labels[0]}\n", f" {labels[1]}\n"], right))
    return items


def sentiment_items(r, n, shots):
    items = []
    for _ in range(n):
        labels = r.choice(D.LABELS).split()
        r.shuffle(labels)
        right = r.randrange(2)
        q = r.choice(D.EVAL_SENT["pos" if right == 0 else "neg"])
        lines = ["Labels: " + ", ".join(labels if r.random() < 0.5 else labels[::-1])]
        for _ in range(shots):
            c = r.randrange(2)
            s = r.choice([x for x in D.POSNEG["pos" if c == 0 else "neg"] if x != q])
            lines.append(f"Text: {s}\nLabel: {labels[c]}")
        prompt = "\n".join(lines) + f"\nText: {q}\nLabel:"
        items.append((prompt, [f" {labels[0]}\n", f" {labels[1]}\n"], right))
    return items


def add_items(r, n, digits):
    out = []
    for _ in range(n):
        a = r.randint(10 ** (digits - 1), 10 ** digits - 1)
        b = r.randint(10 ** (digits - 1), 10 ** digits - 1)
        steps, s = D.add_worked(a, b)
        out.append((f"Q: {a} + {b} = ?\nWork:", f" {steps}.\nA: {s}\n"))
    return out


def mul_items(r, n, digits):
    out = []
    for _ in range(n):
        a, d = r.randint(10 ** (digits - 1), 10 ** digits - 1), r.randint(2, 9)
        steps, p = D.mul_worked(a, d)
        out.append((f"Q: {a} x {d} = ?\nWork:", f" {steps}.\nA: {p}\n"))
    return out


def sort_items(r, n, k):
    out = []
    for _ in range(n):
        xs = [r.randint(0, 99) for _ in range(k)]
        ys = sorted(xs)
        work = "smallest " + str(ys[0]) + "".join(f", then {y}" for y in ys[1:])
        out.append((f"Sort: {' '.join(map(str, xs))}\nWork:", f" {work}.\nA: {' '.join(map(str, ys))}\n"))
    return out


def reverse_items(r, n):
    out = []
    for _ in range(n):
        w = D.rand_string(r, r.randint(5, 7), D.LETTERS)
        out.append((f"Reverse: {w}\nLetters:", f" {' '.join(w)}\nBackwards: {' '.join(w[::-1])}\nOutput: {w[::-1]}\n"))
    return out


def opposite_items(r, n, ants):
    out = []
    for a, b in r.sample(ants, n):
        if r.random() < 0.5:
            a, b = b, a
        out.append((f"Q: What is the opposite of {a}?\nA:", f" {b}\n"))
    return out


def recall_items(r, n, nfacts):
    out = []
    for _ in range(n):
        keys = r.sample(D.WORDS, nfacts)
        vals = [str(r.randint(10, 999)) for _ in keys]
        facts = "\n".join(f"The {k} is in box {v}." for k, v in zip(keys, vals))
        i = r.randrange(nfacts)
        out.append((facts + f"\nQ: Where is the {keys[i]}?\nA:", f" In box {vals[i]}.\n"))
    return out


def transform_items(r, n, shots):
    """Few-shot rule induction (upper case / first letter / length / doubling), the query a
    new word; with 0 shots the prompt is only "word ->"."""
    out = []
    rules = [("upper", str.upper), ("first letter", lambda w: w[0]), ("length", lambda w: str(len(w))),
             ("twice", lambda w: w + " " + w)]
    for _ in range(n):
        name, f = r.choice(rules)
        ws = r.sample(D.WORDS, shots + 1)
        lines = [f"{w} -> {f(w)}" for w in ws[:-1]]
        out.append(("\n".join(lines + [f"{ws[-1]} ->"]), f" {f(ws[-1])}\n"))
    return out


def heldout_loss(sc, path):
    data = open(path, "rb").read()
    chunks = [data[i:i + EVAL_CHUNK] for i in range(0, len(data), EVAL_CHUNK)]
    res = sc.logprobs(chunks)
    tot = sum(-lp.sum().item() for lp, _ in res)
    cnt = sum(len(lp) for lp, _ in res)
    return tot / cnt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=50, help="items per copy / few-shot task")
    ap.add_argument("--n-tasks", type=int, default=30, help="items per arithmetic / sorting / relation task")
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (fp32 either way, TF32 off)")
    ap.add_argument("--named-curve", type=int, default=0, metavar="N",
                    help="only few-shot classification with the category names as labels, N items at "
                         "0, 1, 2, 4 and 8 examples")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.named_curve:
        sc = Scorer(args.model, device=args.device)
        res = Results()
        res["model"] = os.path.basename(args.model)
        for shots in (0, 1, 2, 4, 8):
            res[f"classify_named_newword_{shots}shot_n{args.named_curve}"] = sc.choice(
                classify_items(random.Random(7200 + shots), args.named_curve, shots, "named"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return
    t0 = time.time()
    sc = Scorer(args.model, device=args.device)
    _, _, (ants, _) = D.load_relations()
    n = args.n
    res = Results()
    res.update({"model": os.path.basename(args.model), "params": sc.params, "n_layer": sc.L, "n_embd": sc.C,
                "items_per_fewshot_task": n, "items_per_other_task": args.n_tasks})
    res["heldout_loss"] = round(heldout_loss(sc, os.path.join(ROOT, "models", "heldout.txt")), 4)
    a, b = induction_loss(sc, random.Random(7001))
    res["induction_first_copy_nats"], res["induction_second_copy_nats"] = round(a, 3), round(b, 3)
    res["copy16"] = sc.exact(copy_items(random.Random(7002), n, 16))
    res["copy32"] = sc.exact(copy_items(random.Random(7003), n, 32))
    for shots in (0, 4):
        res[f"rule_induction_{shots}shot"] = sc.exact(transform_items(random.Random(7040 + shots), n, shots))
    for shots in (0, 4, 8):
        res[f"classify_induction_{shots}shot"] = sc.choice(induct_classify_items(random.Random(7090 + shots), n, shots))
    for shots in (0, 4, 16):
        res[f"classify_arbitrary_seenword_{shots}shot"] = sc.choice(
            classify_items(random.Random(7080 + shots), n, shots, "arbitrary", D.TRAIN_WORDS))
    for shots in (0, 16):
        res[f"classify_arbitrary_newword_{shots}shot"] = sc.choice(
            classify_items(random.Random(7010 + shots), n, shots, "arbitrary"))
    for shots in (0, 8):
        res[f"sentiment_arbitrary_{shots}shot"] = sc.choice(sentiment_items(random.Random(7030 + shots), n, shots))
    for shots in (0, 4):
        res[f"classify_named_newword_{shots}shot"] = sc.choice(classify_items(random.Random(7020 + shots), n, shots, "named"))
    m = args.n_tasks
    res["add_3digit"] = sc.exact(add_items(random.Random(7051), m, 3))
    res["add_5digit"] = sc.exact(add_items(random.Random(7052), m, 5))
    res["mul_3digit_by_1"] = sc.exact(mul_items(random.Random(7053), m, 3))
    res["sort_5"] = sc.exact(sort_items(random.Random(7060), m, 5))
    res["sort_8"] = sc.exact(sort_items(random.Random(7061), m, 8))
    res["reverse_5to7"] = sc.exact(reverse_items(random.Random(7062), m))
    res["opposite"] = sc.exact(opposite_items(random.Random(7063), min(m, len(ants)), ants))
    res["recall_4facts"] = sc.exact(recall_items(random.Random(7070), m, 4))
    res["recall_12facts"] = sc.exact(recall_items(random.Random(7071), m, 12))
    res["seconds"] = round(time.time() - t0, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
