#!/usr/bin/env python3
"""Write the evaluation task suite (eval/tasks/NAME/) and the collateral set
(eval/collateral/) of rwkvd, deterministically from one seed.

Every word list, name and sentence template below is written for this script;
no outside text is used. The formats follow docs/EVALUATION.md ("Task suite")
and the task-directory interface there: task.json plus train/val/test.jsonl in
the JSONL formats that `rwkvd tune` reads.

    python3 eval/make_tasks.py            # (re)write eval/tasks and eval/collateral
    python3 eval/make_tasks.py --check    # exit 1 when the files differ from what it writes
    python3 eval/make_tasks.py --out DIR  # write under DIR/tasks and DIR/collateral

Only the Python standard library is used. random.Random(seed) with randrange,
choice, sample and shuffle gives the same sequence on every Python 3 since 3.2.
"""
import argparse
import json
import os
import random
import sys
import tempfile

SEED = 20261204

# --- word lists (written for this script) ------------------------------------

ANIMALS = """ant ape bat bear beaver bee bison boar buffalo bull camel cat cheetah chicken
cobra cow crab crane crow deer dog donkey dove duck eagle eel elk falcon ferret finch
fox frog gecko goat goose gorilla hamster hare hawk hedgehog heron horse hyena jackal
jaguar kangaroo koala lark leopard lion lizard llama lobster lynx mole monkey moose mouse
mule newt otter owl ox panda panther parrot pelican penguin pig pigeon pony puma rabbit
raccoon rat raven seal shark sheep skunk sloth snail snake sparrow spider squid stork
swan tiger toad trout turkey turtle viper walrus wasp weasel whale wolf worm yak
zebra""".split()

FOODS = """apple apricot bacon bagel banana bean biscuit bread broccoli butter cabbage cake
carrot celery cereal cheese cherry chili cookie corn cracker cream cucumber curry date
donut dumpling egg fig garlic grape gravy ham honey jam jelly kale lemon lentil lettuce
lime mango melon muffin mushroom noodle nut oat olive omelet onion orange pancake pasta
pea peach peanut pear pepper pickle pie pizza plum porridge potato pretzel pudding
pumpkin radish raisin rice salad salami sandwich sausage soup spinach steak stew
sugar syrup taco toast tofu tomato turnip waffle yogurt""".split()

SHORT_WORDS = """apple river stone cloud green table chair light bread horse water music
paper plant smile night dream ocean tiger lemon grass happy sunny quiet brave sweet
candle garden window pocket silver forest winter summer little yellow purple orange
basket rabbit bottle butter castle doctor finger hammer jacket kitten ladder mirror
needle pencil rocket saddle shadow spider temple turtle violin wagon""".split()

NAMES_A = "Bar Dor Fen Gal Hol Jor Kel Lom Mir Nal Or Pel Quin Ros Sal Tor Ul Vel Wen Yor Zan".split()
NAMES_B = "ik ona ubel ath emy orin ista undo ea ivo anth ela opi urn ex ida".split()
TOWN_A = "Ash Brack Cold Dun Elm Frost Glen High Iron Kings Lark Mist North Oak Pine Red".split()
TOWN_B = "ford wick mere holt by stead moor combe haven dale".split()

JOBS = "baker potter weaver sailor miller tailor farmer painter".split()

FILLER_SUBJ = ["The old man", "A small girl", "The farmer", "My neighbour", "The teacher",
               "A tall woman", "The cook", "The boy", "Our friend", "The driver",
               "The singer", "A quiet child"]
FILLER_VERB = ["walked to", "looked at", "painted", "cleaned", "waited near", "sat by",
               "talked about", "drew a picture of", "found a coin near", "ran past",
               "slept under", "read a book beside"]
FILLER_OBJ = ["the river", "the red barn", "the market", "a green hill", "the bridge",
              "the little shop", "the station", "the garden gate", "the church", "the well",
              "the long road", "the school"]
FILLER_TAIL = ["in the morning", "after lunch", "before the rain", "on Sunday", "at dusk",
               "with a smile", "for an hour", "once again", "in the snow", "at noon"]

KEYS = """lamp key ring coin map book cup hat pen watch shoe bell card doll box flute
sock glove comb brush""".split()

# Chat questions with plain answers (the persona task answers these in a voice).
def plain_qa(r):
    out = []
    colors = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("sun", "yellow"),
              ("night sky", "black"), ("sea", "blue")]
    for t, c in colors:
        out.append((f"What color is the {t}?", f"The {t} is {c}."))
    caps = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Japan", "Tokyo"), ("England", "London")]
    for c, k in caps:
        out.append((f"What is the capital of {c}?", f"The capital of {c} is {k}."))
    sounds = [("dog", "barks"), ("cat", "meows"), ("cow", "moos"), ("duck", "quacks"),
              ("lion", "roars"), ("sheep", "bleats"), ("horse", "neighs"), ("owl", "hoots")]
    for a, s in sounds:
        out.append((f"What sound does a {a} make?", f"A {a} {s}."))
    opp = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
           ("old", "new"), ("happy", "sad"), ("wet", "dry"), ("light", "dark"), ("open", "closed")]
    for a, b in opp:
        out.append((f"What is the opposite of {a}?", f"The opposite of {a} is {b}."))
    for a in range(1, 10):
        for b in range(1, 10):
            out.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    legs = [("spider", 8), ("dog", 4), ("bird", 2), ("ant", 6), ("cat", 4), ("snake", 0)]
    for a, n in legs:
        out.append((f"How many legs does a {a} have?", f"A {a} has {n} legs."))
    seen, uniq = set(), []
    for q, a in out:
        if q not in seen:
            seen.add(q)
            uniq.append((q, a))
    r.shuffle(uniq)
    return uniq


def chat(q):
    return f"User: {q}\n\nAssistant:"


# --- tasks: each returns (task.json dict, [items]) with items in split order --

def task_persona(r):
    """A butler's voice around plain answers (kind loss: the completion's NLL)."""
    qa = plain_qa(r)
    openers = ["Certainly, madam.", "Very good, madam.", "Of course, madam."]
    items = []
    for i, (q, a) in enumerate(qa):
        comp = f" {openers[i % 3]} {a} Will that be all, madam?\n\n"
        items.append({"prompt": chat(q), "completion": comp})
    meta = {"kind": "loss", "shots": 4, "shot_separator": "",
            "description": "Persona: chat answers in a butler's voice (fixed opening and "
                           "closing phrase around the plain answer); loss on the reply."}
    return meta, items, (48, 16, 32)


def task_format(r):
    """Copy three fields into a fixed JSON-like line."""
    items, seen = [], set()
    while len(items) < 128:
        name = r.choice(NAMES_A) + r.choice(NAMES_B)
        age = r.randrange(18, 90)
        job = r.choice(JOBS)
        if (name, age, job) in seen:
            continue
        seen.add((name, age, job))
        items.append({"prompt": f"Person: {name}, {age}, {job}\nJSON:",
                      "completion": f' {{"name": "{name}", "age": {age}, "job": "{job}"}}'})
    meta = {"kind": "generate", "max_tokens": 48, "stop": ["\n"], "shots": 4,
            "shot_separator": "\n\n",
            "description": "Output format: a name, an age and a job rewritten as one JSON object "
                           "with fixed keys; exact match."}
    return meta, items, (32, 32, 64)


def task_classify(r):
    """Two-way classification with labels that only the examples define."""
    n = min(len(ANIMALS), len(FOODS), 80)
    a, f = r.sample(ANIMALS, n), r.sample(FOODS, n)
    # each split gets half animals, half foods, with no word in two splits
    cuts = [(0, 24), (24, 40), (40, 80)]
    splits = []
    for lo, hi in cuts:
        part = [(w, 0) for w in a[lo:hi]] + [(w, 1) for w in f[lo:hi]]
        r.shuffle(part)
        splits.extend(part)
    items = [{"prompt": f"Word: {w}\nLabel:", "choices": [" red", " blue"], "answer": c}
             for w, c in splits]
    meta = {"kind": "choice", "shots": 8, "shot_separator": "\n\n",
            "description": "Classification: animals are labelled red and foods blue (labels the "
                           "model cannot know); unseen words in validation and test."}
    return meta, items, (48, 32, 80)


def task_facts(r):
    """Invented person -> town facts; train asks two ways, val and test two other ways."""
    people, towns = [], []
    while len(people) < 32:
        p = r.choice(NAMES_A) + r.choice(NAMES_B)
        if p not in people:
            people.append(p)
    while len(towns) < 32:
        t = r.choice(TOWN_A) + r.choice(TOWN_B)
        if t not in towns:
            towns.append(t)
    home = dict(zip(people, towns))
    tmpl_train = ["Q: Where does {p} live?\nA:", "Q: Which town is home to {p}?\nA:"]
    tmpl_val = "Q: In which town does {p} live?\nA:"
    tmpl_test = "Q: What is the home town of {p}?\nA:"
    train = [{"prompt": t.format(p=p), "completion": f" {home[p]}."}
             for t in tmpl_train for p in people]
    r.shuffle(train)
    val = [{"prompt": tmpl_val.format(p=p), "completion": f" {home[p]}."} for p in people[:16]]
    test = [{"prompt": tmpl_test.format(p=p), "completion": f" {home[p]}."} for p in people]
    meta = {"kind": "generate", "max_tokens": 16, "stop": ["\n"], "shots": 4,
            "shot_separator": "\n\n",
            "description": "Closed-book facts: 32 invented people and their invented home towns. "
                           "Training asks two ways; validation and test ask two other ways, so "
                           "the state must hold the facts, not the phrasing."}
    return meta, train + val + test, (64, 16, 32)


def add_steps(a, b):
    xs, ys = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}")
        carry = s // 10
    return ", ".join(steps)


def task_arith_steps(r):
    """Three-digit addition in a new one-line worked format."""
    items, seen = [], set()
    while len(items) < 160:
        a, b = r.randrange(100, 1000), r.randrange(100, 1000)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        items.append({"prompt": f"Add {a} and {b}.\nSteps:",
                      "completion": f" {add_steps(a, b)}; sum {a + b}"})
    meta = {"kind": "generate", "max_tokens": 48, "stop": ["\n"], "shots": 4,
            "shot_separator": "\n\n",
            "description": "Arithmetic with worked steps: three-digit addition, column by column "
                           "on one line (a format not seen in pretraining), then the sum."}
    return meta, items, (64, 32, 64)


def task_arith_direct(r):
    """Two-digit addition, answer only."""
    items, seen = [], set()
    while len(items) < 160:
        a, b = r.randrange(10, 100), r.randrange(10, 100)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        items.append({"prompt": f"{a} plus {b} makes", "completion": f" {a + b}"})
    meta = {"kind": "generate", "max_tokens": 8, "stop": ["\n", "."], "shots": 4,
            "shot_separator": "\n",
            "description": "Arithmetic without steps: two-digit addition, the sum only."}
    return meta, items, (64, 32, 64)


def task_instruct(r):
    """Chat instructions with one exact answer each."""
    kinds = [
        ("Put the word \"{w}\" in square brackets.", lambda w: f"[{w}]"),
        ("Say the word \"{w}\" three times.", lambda w: f"{w} {w} {w}"),
        ("Write \"{w}\" with a dot between the letters.", lambda w: ".".join(w)),
        ("Write \"{w}\" in capital letters.", lambda w: w.upper()),
    ]
    words = list(SHORT_WORDS)
    r.shuffle(words)
    pairs = [(w, k) for w in words for k in range(len(kinds))]
    r.shuffle(pairs)
    pairs = pairs[:160]
    items = [{"prompt": chat(kinds[k][0].format(w=w)), "completion": " " + kinds[k][1](w)}
             for w, k in pairs]
    meta = {"kind": "generate", "max_tokens": 40, "stop": ["\n"], "shots": 4,
            "shot_separator": "\n\n",
            "description": "Instruction following: four kinds of word instruction in the chat "
                           "template (brackets, three times, dotted letters, capitals); exact "
                           "answer without extra words."}
    return meta, items, (64, 32, 64)


def task_longctx(r):
    """Find the one box number in a passage of filler sentences."""
    items = []
    for _ in range(96):
        n = r.randrange(8, 13)
        sents = [f"{r.choice(FILLER_SUBJ)} {r.choice(FILLER_VERB)} {r.choice(FILLER_OBJ)} "
                 f"{r.choice(FILLER_TAIL)}." for _ in range(n)]
        key, box = r.choice(KEYS), r.randrange(100, 1000)
        sents.insert(r.randrange(0, n + 1), f"The {key} is in box {box}.")
        items.append({"prompt": " ".join(sents) + f"\nQ: Where is the {key}?\nA:",
                      "completion": f" In box {box}."})
    meta = {"kind": "generate", "max_tokens": 16, "stop": ["\n"], "shots": 1,
            "shot_separator": "\n\n",
            "description": "Long context: a passage of 8-12 filler sentences (about 400-600 "
                           "bytes) hides one \"The X is in box N.\"; the question asks for X."}
    return meta, items, (32, 16, 48)


TASKS = [
    ("persona", task_persona),
    ("format", task_format),
    ("classify", task_classify),
    ("facts", task_facts),
    ("arith_steps", task_arith_steps),
    ("arith_direct", task_arith_direct),
    ("instruct", task_instruct),
    ("longctx", task_longctx),
]

COLLATERAL_CHAT = [
    "What is the capital of Spain?", "What color is grass?", "What do bees make?",
    "How many days are in a week?", "What is the opposite of up?", "Where do fish live?",
    "What sound does a cat make?", "What is 2 plus 3?", "Who wrote books for children?",
    "What is the sun?", "Why do birds fly south?", "What is rain?", "Hello!",
    "What is your name?", "Can you tell me a story?", "What do cows eat?",
]
COLLATERAL_TEXT = [
    "Once upon a time, there was a", "The little dog ran", "It was a cold winter",
    "She opened the door and", "In the morning the farmer", "The king said to his",
    "Q: 25 + 17 = ?\nWork:", "Copy: k3j9x2\nOutput:", "Sort: 9 2 7 4\nWork:",
    "dog -> DOG\ncat -> CAT\nsun ->", "Elizabeth looked at her sister and",
    "Ge1:1 In the beginning", "tree (noun):", "The lamp is in box 12.\nQ: Where is the lamp?\nA:",
    "Mr. Darcy walked", "The river was",
]


def splits_of(items, sizes):
    a, b, c = sizes
    assert len(items) >= a + b + c, (len(items), sizes)
    return {"train": items[:a], "val": items[a:a + b], "test": items[a + b:a + b + c]}


def jsonl(rows):
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows)


def build():
    """{relative path: text} of every file written."""
    files = {}
    for i, (name, fn) in enumerate(TASKS):
        r = random.Random(SEED * 100 + i)
        meta, items, sizes = fn(r)
        task = {"name": name, "kind": meta["kind"], "description": meta["description"]}
        for k in ("max_tokens", "stop"):
            if k in meta:
                task[k] = meta[k]
        task["shots"] = meta["shots"]
        task["shot_separator"] = meta["shot_separator"]
        sp = splits_of(items, sizes)
        keyf = (lambda x: x["prompt"])
        seen = {}
        for s in ("train", "val", "test"):
            for x in sp[s]:
                k = keyf(x)
                assert k not in seen, f"{name}: prompt in {seen.get(k)} and {s}: {k!r}"
                seen[k] = s
        files[f"tasks/{name}/task.json"] = json.dumps(task, indent=1, ensure_ascii=False) + "\n"
        for s in ("train", "val", "test"):
            files[f"tasks/{name}/{s}.jsonl"] = jsonl(sp[s])
    coll = {"name": "collateral", "kind": "generate",
            "description": "Unrelated prompts (chat questions, text continuations, pretraining "
                           "task formats); greedy output with a tuned state is compared with "
                           "the base model's.",
            "max_tokens": 32, "stop": ["\n"], "shots": 0, "shot_separator": "\n\n"}
    rows = [{"prompt": chat(q), "completion": ""} for q in COLLATERAL_CHAT]
    rows += [{"prompt": t, "completion": ""} for t in COLLATERAL_TEXT]
    files["collateral/task.json"] = json.dumps(coll, indent=1, ensure_ascii=False) + "\n"
    files["collateral/test.jsonl"] = jsonl(rows)
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                    help="directory that receives tasks/ and collateral/ (default: eval/)")
    ap.add_argument("--check", action="store_true",
                    help="compare with the files under --out instead of writing")
    args = ap.parse_args()
    files = build()
    if args.check:
        bad = []
        for rel, text in sorted(files.items()):
            path = os.path.join(args.out, rel)
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        bad.append(rel + " differs")
            except OSError as e:
                bad.append(f"{rel}: {e.strerror}")
        for sub in ("tasks", "collateral"):
            root = os.path.join(args.out, sub)
            for dp, _, fns in os.walk(root):
                for fn in fns:
                    rel = os.path.relpath(os.path.join(dp, fn), args.out)
                    if rel not in files:
                        bad.append(rel + " is not written by make_tasks.py")
        for b in bad:
            print("make_tasks.py --check: " + b, file=sys.stderr)
        return 1 if bad else 0
    for rel, text in sorted(files.items()):
        path = os.path.join(args.out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    n = sum(1 for k in files if k.endswith(".jsonl"))
    print(f"make_tasks.py: {len(TASKS)} tasks and the collateral set, {n} JSONL files "
          f"under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
