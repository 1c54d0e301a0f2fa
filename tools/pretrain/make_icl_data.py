#!/usr/bin/env python3
"""Build the extra corpus for the student and teacher models (byte-level RWKV-7).

Run tools/pretrain/make_data.py first (Austen, stories, chat; the demo's data). This script
adds three more gzip files to tools/pretrain/data/ (git-ignored):

  kjv.txt.gz       The King James Bible (1611; public domain), read from the Debian
                   packages bible-kjv + bible-kjv-text with their `bible` program. One
                   block per run of at most six verses of a chapter, verses one a line
                   ("Ge1:1 In the beginning ..."), blocks separated by a blank line.
  wordnet.txt.gz   Dictionary entries written from WordNet 3.0 (Debian package
                   wordnet-base; WordNet 3.0 licence, Princeton University, see below):
                   for each synset a line "word (noun): gloss" with synonyms, the broader
                   term and the antonym where WordNet has them. One entry a block.
  tasks.txt.gz     Generated task text with worked reasoning and in-context formats:
                   copying, reversing, few-shot classification with labels that change
                   from episode to episode, addition / subtraction / multiplication with
                   worked column steps, sorting with steps, word relations (opposites,
                   kinds, categories, definitions, from WordNet and from this script's
                   word lists), instructions in the chat template, few-shot word
                   transformations, key-value recall over a long context. One episode a
                   block (examples inside an episode are separated by single newlines).

Items of the evaluation (tools/pretrain/icl_eval.py) are drawn with other seeds, and the
classification words listed in EVAL_WORDS never occur in a training episode.

WordNet licence notice (it must accompany copies and derived files): "WordNet 3.0
Copyright 2006 by Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE
IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES,
EXPRESS OR IMPLIED. [...] The name of Princeton University or Princeton may not be used
in advertising or publicity pertaining to distribution of the software and/or database.
Title to copyright in this software, database and any associated documentation shall at
all times remain with Princeton University and LICENSEE agrees to preserve same."

Usage:  apt-get install bible-kjv wordnet-base
        python3 tools/pretrain/make_icl_data.py [--tasks-bytes N]
"""
import argparse
import gzip
import hashlib
import json
import os
import random
import re
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
WORDNET = os.environ.get("WORDNET_DIR", "/usr/share/wordnet")
SEED = 20251204

# --------------------------------------------------------------------------
# King James Bible
# --------------------------------------------------------------------------


def build_kjv():
    out = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True, capture_output=True).stdout
    text = out.decode("ascii", "replace")
    blocks, cur, key = [], [], None
    for line in text.split("\n"):
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        k = (m.group(1), m.group(2))
        if cur and (k != key or len(cur) >= 6):  # blocks of at most 6 verses
            blocks.append("\n".join(cur))
            cur = []
        key = k
        cur.append(line.strip())
    if cur:
        blocks.append("\n".join(cur))
    if sum(b.count("\n") + 1 for b in blocks) != 31102:
        raise SystemExit("bible: expected 31102 verses")
    return "\n\n".join(blocks) + "\n\n"


# --------------------------------------------------------------------------
# WordNet
# --------------------------------------------------------------------------

POS_NAME = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def read_wordnet():
    """Returns synsets: offset key -> dict(pos, words, gloss, ptrs) and lemma counts."""
    syn = {}
    for fn, pc in (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")):
        for line in open(os.path.join(WORDNET, "data." + fn), encoding="latin-1"):
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            f = head.split()
            off, ss_type = f[0], f[2]
            nw = int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ") for i in range(nw)]
            words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]
            i = 4 + 2 * nw
            np_ = int(f[i])
            ptrs = []
            for j in range(np_):
                sym, poff, ppos, st = f[i + 1 + 4 * j: i + 5 + 4 * j]
                ptrs.append((sym, pc + poff if ppos in "nvr" else "a" + poff, int(st[:2], 16), int(st[2:], 16)))
            syn[pc + off] = {"pos": ss_type, "words": words, "gloss": gloss.strip(), "ptrs": ptrs}
    counts = {}
    for line in open(os.path.join(WORDNET, "cntlist.rev"), encoding="latin-1"):
        f = line.split()
        if len(f) == 3:
            lemma = f[0].split("%")[0].replace("_", " ")
            counts[lemma] = counts.get(lemma, 0) + int(f[2])
    return syn, counts


def ascii_ok(s):
    return all(32 <= ord(c) < 127 for c in s)


def build_wordnet(syn, rnd):
    blocks = []
    for key, s in syn.items():
        if not ascii_ok(s["gloss"]) or not all(ascii_ok(w) for w in s["words"]):
            continue
        w0 = s["words"][0]
        parts = s["gloss"].split("; \"", 1)
        gloss = parts[0].strip()
        ex = ("\"" + parts[1]).strip() if len(parts) > 1 else ""
        line = f"{w0} ({POS_NAME[s['pos']]}): {gloss}."
        if len(s["words"]) > 1:
            line += " Synonyms: " + ", ".join(s["words"][1:]) + "."
        hyp = [p for p in s["ptrs"] if p[0] in ("@", "@i") and p[1] in syn]
        if hyp and s["pos"] == "n":
            h = syn[hyp[0][1]]["words"][0]
            line += f" {'An' if w0[0].lower() in 'aeiou' else 'A'} {w0} is a kind of {h}."
        ant = [p for p in s["ptrs"] if p[0] == "!" and p[1] in syn]
        if ant:
            p = ant[0]
            src = s["words"][p[2] - 1] if p[2] else w0
            tw = syn[p[1]]["words"]
            tgt = tw[p[3] - 1] if p[3] and p[3] <= len(tw) else tw[0]
            line += f" The opposite of {src} is {tgt}."
        if ex:
            line += " Example: " + ex.replace("\"; \"", "\"; \"")
        blocks.append(line)
    rnd.shuffle(blocks)
    return "\n\n".join(blocks) + "\n\n"


def wordnet_relations(syn, counts):
    """Common-word relations for the task generator: antonym pairs, (noun, broader noun)."""
    ants, kinds = set(), []
    for s in syn.values():
        for sym, tk, si, ti in s["ptrs"]:
            if sym != "!" or tk not in syn or s["pos"] not in "as":
                continue
            a = s["words"][si - 1] if si else s["words"][0]
            tw = syn[tk]["words"]
            b = tw[ti - 1] if ti and ti <= len(tw) else tw[0]
            if " " in a or " " in b or not a.isalpha() or not b.isalpha():
                continue
            if counts.get(a, 0) >= 3 and counts.get(b, 0) >= 3:
                ants.add(tuple(sorted((a.lower(), b.lower()))))
    for s in syn.values():
        if s["pos"] != "n":
            continue
        w = s["words"][0]
        if " " in w or not w.isalpha() or not w.islower() or counts.get(w, 0) < 8:
            continue
        hyp = [p for p in s["ptrs"] if p[0] == "@" and p[1] in syn]
        if hyp:
            h = syn[hyp[0][1]]["words"][0]
            if h.isalpha() and h.islower() and h != w:
                kinds.append((w, h))
    return sorted(ants), sorted(set(kinds))


# --------------------------------------------------------------------------
# Task generator
# --------------------------------------------------------------------------

# Categories for few-shot classification. The last EVAL_PER_CAT words of each list are
# kept out of every training episode (the evaluation asks about them).
CATEGORIES = {
    "animal": "dog cat horse cow sheep goat pig lion tiger bear wolf fox rabbit mouse deer monkey elephant "
              "giraffe zebra camel donkey otter beaver badger hamster squirrel kangaroo panda leopard moose",
    "fruit": "apple pear banana orange grape plum peach cherry lemon lime mango melon kiwi apricot papaya "
             "fig date coconut berry guava quince raisin tangerine nectarine pineapple lychee",
    "color": "red blue green yellow purple orange pink brown black white grey violet indigo scarlet crimson "
             "beige maroon turquoise navy teal amber lavender magenta olive",
    "tool": "hammer saw drill wrench screwdriver pliers chisel shovel rake axe file spanner ladder level "
            "trowel hoe clamp mallet crowbar sickle awl anvil plane scythe",
    "body": "arm leg hand foot head neck knee elbow finger toe nose ear eye mouth shoulder ankle wrist chin "
            "cheek thumb heel hip lip tongue",
    "vehicle": "car bus train truck bicycle boat ship plane tram taxi van scooter tractor canoe yacht "
               "helicopter jeep wagon ferry sled motorcycle rocket subway",
    "clothing": "shirt coat hat sock shoe dress skirt scarf glove jacket sweater boot belt vest tie cap "
                "blouse cloak apron sandal mitten gown robe",
    "job": "doctor teacher farmer baker pilot nurse cook judge miner sailor tailor singer painter driver "
           "lawyer dentist plumber soldier writer banker actor builder",
    "number": "one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty "
              "hundred thousand million dozen sixty seventy",
    "country": "France Spain Italy Germany China Japan India Egypt Brazil Peru Chile Mexico Canada Norway "
               "Sweden Kenya Greece Poland Turkey Ireland Cuba Nepal",
    "weather": "rain snow wind fog hail storm thunder sleet frost drizzle cloud sunshine breeze gale mist "
               "blizzard lightning heat",
    "furniture": "table chair bed sofa desk shelf stool bench wardrobe cupboard dresser couch cabinet "
                 "armchair bookcase cradle",
}
EVAL_PER_CAT = 4
CATS = {k: v.split() for k, v in CATEGORIES.items()}
TRAIN_WORDS = {k: v[:-EVAL_PER_CAT] for k, v in CATS.items()}
EVAL_WORDS = {k: v[-EVAL_PER_CAT:] for k, v in CATS.items()}

# Label pairs/triples that carry no meaning of their own: the episode's examples define them.
LABELS = ["A B", "X Y", "yes no", "foo bar", "left right", "1 0", "red blue", "up down", "cat dog",
          "alpha beta", "hot cold", "P Q", "one two", "good bad", "north south", "sun moon", "on off",
          "true false", "big small", "tea milk", "K M", "zig zag", "plus minus", "pass fail"]

POSNEG = {
    "pos": ["I loved it", "what a great day", "this is wonderful", "the food was delicious", "a lovely gift",
            "I am so happy", "best film ever", "the staff were kind", "it works perfectly", "a beautiful song",
            "great value", "I had a lot of fun", "an excellent book", "the room was clean", "truly amazing",
            "we enjoyed every minute", "very friendly people", "it made me smile", "highly recommended",
            "a nice warm welcome"],
    "neg": ["I hated it", "what a terrible day", "this is awful", "the food was cold", "a broken gift",
            "I am so sad", "worst film ever", "the staff were rude", "it does not work", "a boring song",
            "a waste of money", "I was bored the whole time", "a dull book", "the room was dirty",
            "truly horrible", "we left early", "very unfriendly people", "it made me angry", "avoid this place",
            "a cold and rude welcome"],
}
EVAL_SENT = {"pos": POSNEG["pos"][-5:], "neg": POSNEG["neg"][-5:]}
TRAIN_SENT = {"pos": POSNEG["pos"][:-5], "neg": POSNEG["neg"][:-5]}

WORDS = ("apple table river garden window pencil candle basket mirror ladder pocket button carpet "
         "rocket bottle castle jacket kitten monkey pillow rabbit silver summer winter yellow orange "
         "planet forest island market school doctor farmer letter number puzzle cookie dragon flower "
         "hammer lemon melon paper water music story money house mouse horse cloud stone bread light "
         "night chair plant smile dream green black white brown friend family tiger zebra").split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def rand_string(r, n, alphabet=ALNUM):
    return "".join(r.choice(alphabet) for _ in range(n))


def add_worked(a, b):
    """Column addition with carries, least significant digit first."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps, digits = 0, [], []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        if carry:
            steps.append(f"{x}+{y}+{carry}={s}")
        else:
            steps.append(f"{x}+{y}={s}")
        digits.append(str(s % 10))
        carry = s // 10
        steps[-1] += f", write {s % 10}" + (", carry 1" if carry else "")
    if carry:
        steps.append("write the carry 1")
        digits.append("1")
    return "; ".join(steps), a + b


def sub_worked(a, b):
    """a >= b. Column subtraction with borrows."""
    da, db = str(a)[::-1], str(b)[::-1]
    borrow, steps = 0, []
    for i in range(len(da)):
        x = int(da[i]) - borrow
        y = int(db[i]) if i < len(db) else 0
        if x < y:
            steps.append(f"{x}-{y}: borrow, {x + 10}-{y}={x + 10 - y}")
            borrow = 1
        else:
            steps.append(f"{x}-{y}={x - y}")
            borrow = 0
    return "; ".join(steps), a - b


def mul_worked(a, d):
    """a times a one-digit d, digit by digit."""
    sa = str(a)[::-1]
    carry, steps = 0, []
    for ch in sa:
        p = int(ch) * d + carry
        steps.append(f"{ch}x{d}" + (f"+{carry}" if carry else "") + f"={p}, write {p % 10}"
                     + (f", carry {p // 10}" if p // 10 else ""))
        carry = p // 10
    if carry:
        steps.append(f"write the carry {carry}")
    return "; ".join(steps), a * d


class Tasks:
    def __init__(self, seed, ants, kinds, eval_split=False):
        self.r = random.Random(seed)
        self.ants = ants
        self.kinds = kinds
        self.words = EVAL_WORDS if eval_split else TRAIN_WORDS
        self.sent = EVAL_SENT if eval_split else TRAIN_SENT
        self.kinds_fn = [
            (self.copy, 10), (self.reverse, 4), (self.classify, 14), (self.sentiment, 5),
            (self.addition, 9), (self.subtraction, 4), (self.multiplication, 4), (self.sort_numbers, 6),
            (self.sort_words, 3), (self.relations, 8), (self.instructions, 9), (self.transform, 9),
            (self.recall, 8), (self.count, 3), (self.repeat_text, 3),
            (self.induct_classify, 8), (self.repeat_random, 4),
        ]
        self.total = sum(w for _, w in self.kinds_fn)

    def episode(self):
        x = self.r.uniform(0, self.total)
        for fn, w in self.kinds_fn:
            x -= w
            if x <= 0:
                return fn()
        return self.kinds_fn[-1][0]()

    # --- copying
    def copy(self):
        r = self.r
        n = r.randint(1, 4)
        out = []
        for _ in range(n):
            alpha = r.choice([ALNUM, LETTERS, "0123456789", LETTERS + " "])
            s = rand_string(r, r.randint(3, 48), alpha).strip() or "x"
            out.append(f"Copy: {s}\nOutput: {s}")
        return "\n".join(out)

    def repeat_random(self):
        """A random string shown two to four times with no instruction: copying outside any
        trained format (induction)."""
        r = self.r
        s = rand_string(r, r.randint(8, 64), r.choice([LETTERS, ALNUM, LETTERS + "  "])).strip() or "q"
        sep = r.choice(["", " ", "\n", " | "])
        return sep.join([s] * r.randint(2, 4))

    def repeat_text(self):
        r = self.r
        s = " ".join(r.choice(WORDS) for _ in range(r.randint(3, 12)))
        k = r.randint(2, 4)
        return f"Say \"{s}\" {k} times.\n" + "\n".join([s] * k)

    def reverse(self):
        r = self.r
        out = []
        for _ in range(r.randint(1, 3)):
            w = r.choice(WORDS) if r.random() < 0.6 else rand_string(r, r.randint(3, 8), LETTERS)
            out.append(f"Reverse: {w}\nLetters: {' '.join(w)}\nBackwards: {' '.join(w[::-1])}\nOutput: {w[::-1]}")
        return "\n".join(out)

    # --- few-shot classification
    def classify(self):
        r = self.r
        ncls = 2 if r.random() < 0.75 else 3
        cats = r.sample(sorted(self.words), ncls)
        if ncls == 2 and r.random() < 0.8:
            labels = r.choice(LABELS).split()
            r.shuffle(labels)
        elif r.random() < 0.5:
            labels = cats[:]
        else:
            labels = r.sample(["A", "B", "C", "X", "Y", "Z", "1", "2", "3", "red", "green", "blue"], ncls)
        head = r.choice(["Labels: ", "Classify as ", "Choose one of: "]) + ", ".join(labels)
        k = r.randint(3, 14)
        lines = [head]
        seen = set()
        for _ in range(k):
            c = r.randrange(ncls)
            w = r.choice(self.words[cats[c]])
            lines.append(f"{w}: {labels[c]}")
            seen.add(c)
        return "\n".join(lines)

    def induct_classify(self):
        """Labels that only this episode defines, for items that have no meaning (random
        strings) or whose category does not matter: the label of an item is found by looking
        back for the same item. Items repeat; the first showing of each cannot be predicted."""
        r = self.r
        labels = r.choice(LABELS).split() if r.random() < 0.7 else r.sample(
            ["A", "B", "C", "X", "Y", "Z", "1", "2", "3", "red", "green", "blue"], 3)
        r.shuffle(labels)
        if r.random() < 0.5:
            pool = [rand_string(r, r.randint(3, 7), LETTERS) for _ in range(r.randint(3, 6))]
        else:
            pool = r.sample(WORDS, r.randint(3, 6))
        lab = {w: r.choice(labels) for w in pool}
        lines = ["Labels: " + ", ".join(labels)] if r.random() < 0.6 else []
        for _ in range(r.randint(8, 20)):
            w = r.choice(pool)
            lines.append(f"{w}: {lab[w]}")
        return "\n".join(lines)

    def sentiment(self):
        r = self.r
        if r.random() < 0.5:
            labels = ["positive", "negative"]
        else:
            labels = r.choice(LABELS).split()
            r.shuffle(labels)
        lines = ["Labels: " + ", ".join(labels)]
        for _ in range(r.randint(2, 10)):
            c = r.randrange(2)
            s = r.choice(self.sent["pos" if c == 0 else "neg"])
            lines.append(f"Text: {s}\nLabel: {labels[c]}")
        return "\n".join(lines)

    # --- arithmetic
    def digits(self, lo=1, hi=4):
        n = self.r.randint(lo, hi)
        return self.r.randint(10 ** (n - 1) if n > 1 else 0, 10 ** n - 1)

    def addition(self):
        r = self.r
        a, b = self.digits(1, 5), self.digits(1, 5)
        if r.random() < 0.25 and a < 100 and b < 100:
            return f"Q: {a} + {b} = ?\nA: {a + b}"
        steps, s = add_worked(a, b)
        return f"Q: {a} + {b} = ?\nWork: {steps}.\nA: {s}"

    def subtraction(self):
        a, b = self.digits(1, 4), self.digits(1, 4)
        a, b = max(a, b), min(a, b)
        steps, s = sub_worked(a, b)
        return f"Q: {a} - {b} = ?\nWork: {steps}.\nA: {s}"

    def multiplication(self):
        r = self.r
        a, d = self.digits(1, 3), r.randint(2, 9)
        if a < 10 and r.random() < 0.5:
            return f"Q: {a} x {d} = ?\nA: {a * d}"
        steps, p = mul_worked(a, d)
        return f"Q: {a} x {d} = ?\nWork: {steps}.\nA: {p}"

    # --- sorting
    def sort_numbers(self):
        r = self.r
        xs = [r.randint(0, 99) for _ in range(r.randint(3, 8))]
        rest, steps = xs[:], []
        while rest:
            m = min(rest)
            steps.append(str(m))
            rest.remove(m)
        ys = sorted(xs)
        if r.random() < 0.3:
            return f"Sort: {' '.join(map(str, xs))}\nA: {' '.join(map(str, ys))}"
        work = "smallest " + steps[0] + "".join(f", then {s}" for s in steps[1:])
        return f"Sort: {' '.join(map(str, xs))}\nWork: {work}.\nA: {' '.join(map(str, ys))}"

    def sort_words(self):
        r = self.r
        ws = r.sample(WORDS, r.randint(3, 6))
        firsts = ", ".join(f"{w} ({w[0]})" for w in ws)
        return f"Sort alphabetically: {', '.join(ws)}\nWork: first letters {firsts}.\nA: {', '.join(sorted(ws))}"

    # --- word relations
    def relations(self):
        r = self.r
        k = r.random()
        if k < 0.35:
            a, b = r.choice(self.ants)
            if r.random() < 0.5:
                a, b = b, a
            return f"Q: What is the opposite of {a}?\nA: {b}"
        if k < 0.6:
            w, h = r.choice(self.kinds)
            return f"Q: {'An' if w[0] in 'aeiou' else 'A'} {w} is a kind of what?\nA: {h}"
        if k < 0.8:
            c = r.choice(sorted(self.words))
            w = r.choice(self.words[c])
            return f"Q: What kind of thing is {w}?\nA: {c}"
        # analogy chain, few-shot
        pairs = r.sample(self.ants, r.randint(3, 6))
        lines = [f"{a} : {b}" for a, b in pairs]
        return "Opposites.\n" + "\n".join(lines)

    # --- instructions (chat template)
    def instructions(self):
        r = self.r
        w = r.choice(WORDS)
        k = r.randrange(8)
        if k == 0:
            q, a = f"Write the word \"{w}\" in capital letters.", w.upper()
        elif k == 1:
            q, a = f"What is the first letter of \"{w}\"?", f"The first letter of \"{w}\" is \"{w[0]}\"."
        elif k == 2:
            q, a = f"What is the last letter of \"{w}\"?", f"The last letter of \"{w}\" is \"{w[-1]}\"."
        elif k == 3:
            q = f"How many letters are in \"{w}\"?"
            a = f"{'-'.join(w)}: that is {len(w)} letters."
        elif k == 4:
            ws = r.sample(WORDS, 3)
            q = f"Make a list of these words, one per line: {', '.join(ws)}."
            a = "\n".join(f"- {x}" for x in ws)
        elif k == 5:
            n = r.randint(3, 9)
            q, a = f"Count from 1 to {n}.", ", ".join(str(i) for i in range(1, n + 1)) + "."
        elif k == 6:
            ws = r.sample(WORDS, r.randint(2, 4))
            q = f"Join these words with a dash: {' '.join(ws)}"
            a = "-".join(ws)
        else:
            c = r.choice(sorted(self.words))
            ws = r.sample(self.words[c], 3)
            q, a = f"Name three words of the kind \"{c}\".", ", ".join(ws) + "."
        return f"User: {q}\n\nAssistant: {a}"

    # --- few-shot transformations (the rule is only shown by the examples)
    def transform(self):
        r = self.r
        k = r.randrange(9)
        src = [r.choice(WORDS) for _ in range(r.randint(3, 9))]
        if k == 0:
            f = str.upper
        elif k == 1:
            f = lambda w: w[::-1]
        elif k == 2:
            f = lambda w: w[0]
        elif k == 3:
            f = lambda w: w[-1]
        elif k == 4:
            f = lambda w: str(len(w))
        elif k == 5:
            f = lambda w: w + " " + w
        elif k == 6:
            src = [str(r.randint(0, 98)) for _ in range(len(src))]
            f = lambda w: str(int(w) + 1)
        elif k == 7:
            src = [str(r.randint(0, 49)) for _ in range(len(src))]
            f = lambda w: str(int(w) * 2)
        else:
            pairs = r.sample(self.ants, len(src))
            return "\n".join(f"{a} -> {b}" for a, b in pairs)
        return "\n".join(f"{w} -> {f(w)}" for w in src)

    # --- long-context recall
    def recall(self):
        r = self.r
        n = r.randint(3, 12)
        keys = r.sample(WORDS, n)
        vals = [str(r.randint(10, 999)) for _ in keys]
        facts = "\n".join(f"The {k} is in box {v}." for k, v in zip(keys, vals))
        qs = r.sample(range(n), r.randint(1, min(3, n)))
        ql = "\n".join(f"Q: Where is the {keys[i]}?\nA: In box {vals[i]}." for i in qs)
        return facts + "\n" + ql

    def count(self):
        r = self.r
        ch = r.choice("abcxyz")
        s = "".join(r.choice([ch, r.choice(LETTERS)]) for _ in range(r.randint(4, 14)))
        marks = " ".join(("[" + c + "]") if c == ch else c for c in s)
        return f"Count the letter {ch} in \"{s}\".\nWork: {marks}.\nA: {s.count(ch)}"


def gen_tasks(t, nbytes):
    parts, n = [], 0
    while n < nbytes:
        p = t.episode() + "\n\n"
        parts.append(p)
        n += len(p)
    return "".join(parts)


def write_gz(path, text):
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(text.encode("ascii"))


def load_relations():
    """WordNet relations; where WordNet is not installed (the GPU machine), the antonym and
    kind pairs that main() saved in data/relations.json (synsets and counts are then None)."""
    if not os.path.isdir(WORDNET) and os.path.exists(os.path.join(DATA, "relations.json")):
        with open(os.path.join(DATA, "relations.json")) as f:
            rel = json.load(f)
        return None, None, ([tuple(p) for p in rel["antonyms"]], [tuple(p) for p in rel["kinds"]])
    syn, counts = read_wordnet()
    return syn, counts, wordnet_relations(syn, counts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks-bytes", type=int, default=60_000_000)
    ap.add_argument("--sample", action="store_true", help="print a few episodes and exit")
    args = ap.parse_args()
    syn, counts, (ants, kinds) = load_relations()
    print(f"wordnet: {len(syn)} synsets, {len(ants)} common antonym pairs, {len(kinds)} noun kinds")
    if args.sample:
        t = Tasks(SEED, ants, kinds)
        for _ in range(25):
            print(t.episode(), end="\n\n")
        return
    os.makedirs(DATA, exist_ok=True)
    kjv = build_kjv()
    wn = build_wordnet(syn, random.Random(SEED))
    tasks = gen_tasks(Tasks(SEED, ants, kinds), args.tasks_bytes)
    with open(os.path.join(DATA, "relations.json"), "w") as f:
        json.dump({"antonyms": [list(p) for p in ants], "kinds": [list(p) for p in kinds]}, f)
    for name, text in (("kjv.txt.gz", kjv), ("wordnet.txt.gz", wn), ("tasks.txt.gz", tasks)):
        text = text.encode("ascii", "replace").decode("ascii")
        write_gz(os.path.join(DATA, name), text)
        print(f"{name}: {len(text)} bytes, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
