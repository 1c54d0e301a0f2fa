#!/bin/sh
# The quality cost of 8-bit weights on a byte-level model: held-out loss of
# MODEL and of its q8 conversion (models/README.md's method: the text cut
# into 512-byte chunks, each from the zero state, every byte after the
# first scored), and greedy agreement: 1000 bytes generated at temperature 0
# from each prompt by both models, the length of the common prefix and the
# share of positions with the same byte.
#
# usage: bench/q8_quality.sh RWKVD MODEL HELDOUT.txt [OUTDIR]
set -eu
RWKVD=$1 MODEL=$2 TEXT=$3 OUT=${4:-$(mktemp -d)}
mkdir -p "$OUT"
Q8="$OUT/$(basename "$MODEL" .safetensors)-q8.safetensors"
"$RWKVD" convert --model "$MODEL" --out "$Q8" --wtype q8 2>/dev/null
python3 - "$TEXT" "$OUT/heldout.jsonl" <<'PY'
import json, sys
data = open(sys.argv[1], "rb").read().decode("latin-1")
with open(sys.argv[2], "w") as f:
    for i in range(0, len(data) - 1, 512):
        f.write(json.dumps({"text": data[i:i + 512]}) + "\n")
PY
for m in "$MODEL" "$Q8"; do
    printf '%s: held-out ' "$(basename "$m")"
    "$RWKVD" eval --model "$m" --data "$OUT/heldout.jsonl" --threads 2 --json
done
i=0
for p in "User: What is the capital of France?

Assistant:" "User: Tell me a story about a fox.

Assistant:" "It was a truth universally acknowledged" "Once upon a time"; do
    i=$((i + 1))
    "$RWKVD" generate --model "$MODEL" --prompt "$p" --temperature 0 --max-tokens 1000 \
        --threads 2 > "$OUT/a$i.txt" 2>/dev/null
    "$RWKVD" generate --model "$Q8" --prompt "$p" --temperature 0 --max-tokens 1000 \
        --threads 2 > "$OUT/b$i.txt" 2>/dev/null
    python3 - "$OUT/a$i.txt" "$OUT/b$i.txt" "$i" <<'PY'
import sys
a, b = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
n = min(len(a), len(b))
pre = next((k for k in range(n) if a[k] != b[k]), n)
same = sum(a[k] == b[k] for k in range(n))
print(f"prompt {sys.argv[3]}: {len(a)}/{len(b)} bytes, common prefix {pre}, "
      f"same byte at {same}/{n} positions ({100.0 * same / max(n, 1):.1f} %)")
PY
done
