#!/bin/sh
# /health latency while large training files are uploaded and tuning jobs
# submitted from them: the disk work of those requests (reading up to
# 64 MiB, tokenizing it, writing and fsyncing the job's copy) must not hold
# up the loop thread. bench/health_probe.py asks /health every 20 ms from a
# process of its own for the whole run.
#
# usage: bench/disk_probe.sh RWKVD [MODEL] [MIB]
#   RWKVD  the rwkvd binary (compare two builds by running this twice)
#   MODEL  default models/demo.safetensors (byte-level: one token per byte)
#   MIB    size of the training file, default 32 (the limit is 64)
# Prints the probe's percentiles and the time each request took.
set -eu
RWKVD=$1
MODEL=${2:-models/demo.safetensors}
MIB=${3:-32}
SRC=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'kill "$srv" 2>/dev/null || true; rm -rf "$tmp"' EXIT

python3 - "$tmp/train.jsonl" "$MIB" <<'EOF'
import json, random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
words = ["the", "state", "of", "a", "model", "river", "stone", "light", "runs", "over"]
with open(path, "w") as f:
    n = 0
    while n < mib << 20:
        line = json.dumps({"text": " ".join(rnd.choice(words) for _ in range(180))}) + "\n"
        f.write(line)
        n += len(line)
EOF

"$RWKVD" serve --model "$MODEL" --port 0 --threads 2 --data-dir "$tmp/data" \
    >"$tmp/out" 2>"$tmp/log" &
srv=$!
for _ in $(seq 100); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/out")
    [ -n "$port" ] && break
    sleep 0.1
done
url="http://127.0.0.1:$port"
python3 "$SRC/bench/health_probe.py" "$url" 30 --label "$(basename "$RWKVD")" &
probe=$!
sleep 1
for i in 1 2; do
    t0=$(date +%s.%N)
    fid=$(curl -sf "$url/v1/files" -F purpose=fine-tune -F "file=@$tmp/train.jsonl" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    t1=$(date +%s.%N)
    curl -sf "$url/tune" -d "{\"training_file\":\"$fid\",\"output_state\":\"s$i\",\"steps\":1}" \
        >/dev/null
    t2=$(date +%s.%N)
    echo "round $i: upload $(echo "$t1 - $t0" | bc) s, submit $(echo "$t2 - $t1" | bc) s"
    curl -sf -X POST "$url/jobs/$(curl -sf "$url/jobs" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')/cancel" >/dev/null
done
wait "$probe"
