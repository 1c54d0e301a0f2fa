#!/bin/sh
# Checks rwkvd against llama.cpp on the same GGUF files (written by
# tools/gguf_export.py): the logits after a fixed token sequence, the token
# ids the embedded World vocabulary gives for a few texts, and with
# --speed, prefill and decode speed. Not part of the test suites: llama.cpp
# is not a dependency of the project; point the script at a build of it.
#
# usage: bench/llamacpp_compare.sh [--speed] [--1.5b]
#   --speed  also time prefill (512 tokens) and decode (64 tokens) at
#            $THREADS threads (default 2): bench/llamacpp_run.c for
#            llama.cpp, `rwkvd bench` for rwkvd, alternating, same files
#   --1.5b   also the 1.5B shape (speed only; needs about 15 GB of memory
#            for the export)
# environment:
#   LLAMACPP_LIB      folder holding libllama*.so, libggml*.so and the CPU
#                     backends libggml-cpu-*.so (a llama.cpp build with
#                     GGML_BACKEND_DL, or node-llama-cpp's bins/linux-x64)
#   LLAMACPP_INCLUDE  folders holding llama.h and ggml.h of that same
#                     version, separated by ':' (in a source tree: include
#                     and ggml/include)
#   ROUNDS            speed: alternating rounds per file (default 2)
#   RWKVD             the rwkvd binary (default build/server/rwkvd)
#   RWKVD_VOCAB       World vocabulary (default ../shared/fixtures/...)
# Exits 77 when llama.cpp or the vocabulary is not there.
set -eu
cd "$(dirname "$0")/.."
SPEED=0 BIG=0
for a in "$@"; do
    case $a in
    --speed) SPEED=1 ;;
    --1.5b) BIG=1 ;;
    *) echo "usage: bench/llamacpp_compare.sh [--speed] [--1.5b]" >&2; exit 2 ;;
    esac
done
T=${THREADS:-2}
RWKVD=${RWKVD:-build/server/rwkvd}
VOCAB=${RWKVD_VOCAB:-../shared/fixtures/tokenizer/rwkv_vocab_v20230424.txt}
PY=${PYTHON:-/usr/bin/python3}
LIB=${LLAMACPP_LIB:-}
INC=${LLAMACPP_INCLUDE:-}
OUT=bench/models/llamacpp

skip() { echo "SKIP: $*"; exit 77; }
[ -n "$LIB" ] && [ -d "$LIB" ] || skip "LLAMACPP_LIB is not set to a folder with libllama"
LLAMA_SO=
for f in "$LIB"/libllama.so "$LIB"/libllama.v*.so "$LIB"/libllama.so.*; do
    [ -f "$f" ] && [ -z "$LLAMA_SO" ] && LLAMA_SO=$f
done
[ -n "$LLAMA_SO" ] || skip "no libllama.so in $LIB"
GGML_SO=
for f in "$LIB"/libggml.so "$LIB"/libggml.v*.so "$LIB"/libggml-base.so; do
    [ -f "$f" ] && GGML_SO="$GGML_SO $f"
done
[ -n "$GGML_SO" ] || skip "no libggml*.so in $LIB"
CFLAGS_INC=
IFS_SAVE=$IFS; IFS=:
for d in $INC; do CFLAGS_INC="$CFLAGS_INC -I$d"; done
IFS=$IFS_SAVE
found=0
for d in $(echo "$INC" | tr ':' ' '); do [ -f "$d/llama.h" ] && found=1; done
[ $found = 1 ] || skip "LLAMACPP_INCLUDE does not name a folder with llama.h"
[ -f "$VOCAB" ] || skip "no World vocabulary at $VOCAB (set RWKVD_VOCAB)"
[ -x "$RWKVD" ] || { echo "no rwkvd at $RWKVD: build first (ninja -C build)" >&2; exit 1; }

mkdir -p "$OUT"
RUN=$OUT/llamacpp_run
# shellcheck disable=SC2086
${CC:-cc} -O2 -std=c11 -Wall $CFLAGS_INC bench/llamacpp_run.c -o "$RUN" \
    "$LLAMA_SO" $GGML_SO -Wl,-rpath,"$(cd "$LIB" && pwd)"
llamacpp() { m=$1; shift; "$RUN" "$m" "$LIB" "$@"; }

M01=bench/models/rwkv7-0.1b-bf16.safetensors
M15=bench/models/rwkv7-1.5b-bf16.safetensors
[ -f $M01 ] || $PY tools/gen_model.py --preset 0.1b --dtype bf16 --out $M01
# export NAME SRC TYPE [VOCAB]: $OUT/NAME-TYPE.gguf unless already there
export_gguf() {
    g=$OUT/$1-$3.gguf
    if [ ! -f "$g" ] || [ "$g" -ot tools/gguf_export.py ] || [ "$g" -ot "$2" ]; then
        if [ -n "${4:-}" ]; then
            $PY tools/gguf_export.py --type "$3" --vocab "$4" "$2" "$g" >/dev/null
        else
            $PY tools/gguf_export.py --type "$3" "$2" "$g" >/dev/null
        fi
    fi
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) CPUs, threads $T; $(uptime | sed 's/.*load/load/')"
grep -m1 "model name" /proc/cpuinfo || true
echo "llama.cpp: $LLAMA_SO"

# Logits after the last of the tokens, fed from the zero state in one batch.
# demo: the bytes of a chat prompt; 0.1B: 48 fixed ids below 65530.
DEMO_TOK=$(printf 'User: What is the capital of Italy?\n\nAssistant:' | od -An -v -tu1 |
    tr -s ' \n' ',,' | sed 's/^,//; s/,$//')
R01_TOK=$(awk 'BEGIN { x = 12345; s = ""; for (i = 0; i < 48; i++) {
    x = (x * 1103515245 + 12345) % 2147483648; s = s (i ? "," : "") (1 + x % 65529) }
    print s }')

echo "== logits: largest |difference| (largest |logit|), top-1 id; ref = rwkvd --reference on the f32 file"
printf '%-22s %-24s %-24s %-24s %s\n' file "llama.cpp - rwkvd" "llama.cpp - ref" "rwkvd - ref" "top-1 l/r/ref"
for spec in "demo models/demo.safetensors $DEMO_TOK -" "r01 $M01 $R01_TOK $VOCAB"; do
    # shellcheck disable=SC2086
    set -- $spec
    name=$1 src=$2 tok=$3 voc=$4
    [ "$voc" = - ] && voc=
    for ty in f32 bf16 f16 q8_0; do export_gguf "$name" "$src" "$ty" "$voc"; done
    "$RWKVD" logits --model "$OUT/$name-f32.gguf" --tokens "$tok" --threads "$T" --reference \
        > "$OUT/$name.ref.json"
    for ty in f32 bf16 f16 q8_0; do
        g=$OUT/$name-$ty.gguf
        llamacpp logits "$g" "$T" "$tok" 2>/dev/null > "$OUT/$name-$ty.llama.json" ||
            { echo "$g: llama.cpp failed:"; llamacpp logits "$g" "$T" "$tok" 2>&1 | tail -3; exit 1; }
        "$RWKVD" logits --model "$g" --tokens "$tok" --threads "$T" > "$OUT/$name-$ty.rwkvd.json"
        $PY - "$OUT/$name-$ty.llama.json" "$OUT/$name-$ty.rwkvd.json" "$OUT/$name.ref.json" \
            "$name-$ty.gguf" <<'PY'
import json, sys
import numpy as np
l, r, ref = (np.array(json.load(open(p)), np.float64) for p in sys.argv[1:4])
assert l.shape == r.shape == ref.shape, (l.shape, r.shape, ref.shape)
d = lambda a, b: "%.2e (%.1f)" % (np.abs(a - b).max(), np.abs(b).max())
print("%-22s %-24s %-24s %-24s %d/%d/%d" % (sys.argv[4], d(l, r), d(l, ref), d(r, ref),
                                           l.argmax(), r.argmax(), ref.argmax()))
PY
    done
done

# The World vocabulary as the exporter embeds it, read by both tokenizers.
echo "== tokenizer: ids of the same texts from the 0.1B file's vocabulary"
same=0 n=0
for text in "Hello, world!" "User: What is the capital of Italy?

Assistant:" "Ünïcode ✓ 日本語	tab  two  spaces
" "   leading spaces, \\backslash\\ and \"quotes\"" "1234567890 3.14159 0x7f"; do
    n=$((n + 1))
    a=$(llamacpp tokenize "$OUT/r01-bf16.gguf" "$text" 2>/dev/null)
    b=$("$RWKVD" tokenize --vocab "$OUT/r01-bf16.gguf" --text "$text")
    if [ "$a" = "$b" ]; then same=$((same + 1)); else echo "differ: llama.cpp $a rwkvd $b"; fi
done
echo "$same of $n texts give the same ids"

[ $SPEED = 1 ] || exit 0
echo "== speed, $T threads: prefill 512 tokens in one pass, decode 64 tokens one at a time (tokens/s)"
echo "   llama.cpp: bench/llamacpp_run.c, best of 5 runs (1.5B: 3); rwkvd: rwkvd bench --batch 1"
SHAPES="r01:$M01"
if [ $BIG = 1 ]; then
    [ -f $M15 ] || $PY tools/gen_model.py --preset 1.5b --dtype bf16 --out $M15
    SHAPES="$SHAPES r15:$M15"
fi
for s in $SHAPES; do
    name=${s%%:*} src=${s#*:}
    for ty in bf16 q8_0; do
        export_gguf "$name" "$src" "$ty" "$VOCAB"
        g=$OUT/$name-$ty.gguf
        runs=5
        [ "$name" = r15 ] && runs=3
        for round in $(seq "${ROUNDS:-2}"); do
            l=$(llamacpp bench "$g" "$T" 512 64 $runs 2>/dev/null)
            r=$("$RWKVD" bench --model "$g" --threads "$T" --batch 1 --json 2>/dev/null)
            $PY - "$l" "$r" "$name-$ty.gguf" "$round" <<'PY'
import json, sys
l, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
lp, ld = l["prefill_tok_s_best"], l["decode_tok_s_best"]
rp, rd = r["prefill_tok_s"], r["decode_tok_s"]
print("%-18s round %s: prefill llama.cpp %7.1f rwkvd %7.1f (x%.2f) | decode llama.cpp %6.1f "
      "rwkvd %6.1f (x%.2f) | rwkvd wtype %s" % (sys.argv[3], sys.argv[4], lp, rp, rp / lp, ld,
                                               rd, rd / ld, r["wtype"]))
PY
        done
    done
done
echo "== $(date -u +%Y-%m-%dT%H:%MZ) done; $(uptime | sed 's/.*load/load/')"
