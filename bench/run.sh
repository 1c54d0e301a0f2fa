#!/bin/sh
# Runs every benchmark recorded in BENCHMARKS.md and prints the results.
# Needs: a build in build/ (./scripts/test.sh or ninja -C build), python3 with
# numpy for the random models, node for the HTTP load generator, and the World
# vocabulary (RWKVD_VOCAB, default ../shared/fixtures/tokenizer/...).
# Usage: bench/run.sh [THREADS]   (default 2)
set -eu
cd "$(dirname "$0")/.."
T=${1:-2}
RWKVD=build/server/rwkvd
M01=bench/models/rwkv7-0.1b-bf16.safetensors
M15=bench/models/rwkv7-1.5b-bf16.safetensors
VOCAB=${RWKVD_VOCAB:-../shared/fixtures/tokenizer/rwkv_vocab_v20230424.txt}
PY=${PYTHON:-/usr/bin/python3}
mkdir -p bench/models
[ -f $M01 ] || $PY tools/gen_model.py --preset 0.1b --dtype bf16 --out $M01
[ -f $M15 ] || $PY tools/gen_model.py --preset 1.5b --dtype bf16 --out $M15

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m), $(nproc) CPUs, threads $T"
grep -m1 "model name" /proc/cpuinfo || true

echo "== engine: 0.1B shape, bf16 (two runs), f16 and f32 (converted at load)"
$RWKVD bench --model $M01 --threads "$T" --limits --tune --json
$RWKVD bench --model $M01 --threads "$T" --limits --tune --json
$RWKVD bench --model $M01 --threads "$T" --wtype f16 --json
$RWKVD bench --model $M01 --threads "$T" --wtype f32 --json
echo "== engine: 1.5B shape, bf16"
$RWKVD bench --model $M15 --threads "$T" --limits --json --decode-tokens 16

echo "== state tuning: 0.1B shape, 512-token sequences (forward + backward)"
tmp=$(mktemp -d)
$PY - "$tmp/data.jsonl" <<'PYEOF'
import json, random, sys
random.seed(1)
words = "the of and to in is was for on that with as by at from it this be are or an".split()
with open(sys.argv[1], "w") as f:
    for _ in range(8):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(600))}) + "\n")
PYEOF
/usr/bin/time -f "tune peak RSS %M KiB" $RWKVD tune --model $M01 --vocab "$VOCAB" --data "$tmp/data.jsonl" \
    --steps 3 --batch 1 --seq-len-max 512 --val-split 0 --threads "$T" --quiet --out "$tmp/st.safetensors"

echo "== HTTP: load generator, 0.1B shape, one state per stream"
$RWKVD serve --model $M01 --vocab "$VOCAB" --port 0 --threads "$T" --data-dir "$tmp/data" \
    > "$tmp/serve.out" 2> "$tmp/serve.err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$tmp/serve.out" 2>/dev/null && break; sleep 0.2; done
url=$(sed -n 's/^listening on //p' "$tmp/serve.out" | head -1)
# one level at a time, with /health also probed from a separate process
for c in 1 4 16 64; do
    $PY bench/health_probe.py "$url" 20 --label "$c streams" > "$tmp/probe.out" &
    probe=$!
    node bench/load.mjs --url "$url" --concurrency $c --duration 20 --max-tokens 64 \
        --state-file "$tmp/st.safetensors" --states 64
    wait $probe
    cat "$tmp/probe.out"
done
kill -TERM $pid
wait $pid || true
rm -rf "$tmp"

echo "== HTTP overhead per generated token (CLI vs POST /generate vs SSE), 0.1B shape"
bench/http_overhead.sh "$M01" "$VOCAB" 256 "$T" 3

echo "== best_of: K candidates per request, scored by the model or by a judge (demo model)"
$PY bench/bestof.py "$RWKVD" models/demo.safetensors --judge --threads "$T"
