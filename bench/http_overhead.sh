#!/bin/sh
# HTTP overhead per generated token: the same greedy generation through
# `rwkvd generate`, through POST /generate (curl, one JSON answer) and through
# POST /generate streamed as server-sent events, each timed for N+1 and 1
# tokens so that start-up and prefill cancel out; best of REPS.
# Usage: bench/http_overhead.sh MODEL VOCAB [N] [THREADS] [REPS]
set -eu
cd "$(dirname "$0")/.."
M=$1 VOCAB=$2 N=${3:-256} T=${4:-2} REPS=${5:-5}
RWKVD=build/server/rwkvd
PROMPT="The quick brown fox jumps over the lazy dog."
tmp=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
$RWKVD serve --model "$M" --vocab "$VOCAB" --port 0 --threads "$T" --data-dir "$tmp/data" \
    > "$tmp/serve.out" 2> "$tmp/serve.err" &
pid=$!
for _ in $(seq 150); do grep -q listening "$tmp/serve.out" 2>/dev/null && break; sleep 0.2; done
url=$(sed -n 's/^listening on //p' "$tmp/serve.out" | head -1)
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
cli() { # tokens -> seconds
    t0=$(now)
    $RWKVD generate --model "$M" --vocab "$VOCAB" --prompt "$PROMPT" --max-tokens "$1" \
        --temperature 0 --threads "$T" > "$tmp/cli.txt" 2>/dev/null
    calc "$(now) - $t0"
}
srv() {
    t0=$(now)
    curl -s "$url/generate" -H 'content-type: application/json' \
        -d "{\"prompt\":\"$PROMPT\",\"max_tokens\":$1,\"temperature\":0}" > "$tmp/srv.json"
    calc "$(now) - $t0"
}
sse() {
    t0=$(now)
    curl -sN "$url/generate" -H 'content-type: application/json' \
        -d "{\"prompt\":\"$PROMPT\",\"max_tokens\":$1,\"temperature\":0,\"stream\":true}" > "$tmp/sse.txt"
    calc "$(now) - $t0"
}
min() { sort -g | head -1; }
for f in cli srv sse; do
    : > "$tmp/$f.1"; : > "$tmp/$f.n"
done
for _ in $(seq "$REPS"); do
    for f in cli srv sse; do
        $f 1 >> "$tmp/$f.1"
        $f $((N + 1)) >> "$tmp/$f.n"
    done
done
ntok=$(python3 -c "import json,sys; print(json.load(open('$tmp/srv.json'))['usage']['completion_tokens'])")
cli_ms=$(calc "($(min < "$tmp/cli.n") - $(min < "$tmp/cli.1")) * 1000 / $N")
srv_ms=$(calc "($(min < "$tmp/srv.n") - $(min < "$tmp/srv.1")) * 1000 / $N")
printf 'server generated %s tokens, cli %s bytes of text\n' "$ntok" "$(wc -c < "$tmp/cli.txt")"
sse_ms=$(calc "($(min < "$tmp/sse.n") - $(min < "$tmp/sse.1")) * 1000 / $N")
printf 'per token: cli %.3f ms; server %.3f ms (%+.1f %%); streamed %.3f ms (%+.1f %%)\n' \
    "$cli_ms" "$srv_ms" "$(calc "($srv_ms / $cli_ms - 1) * 100")" \
    "$sse_ms" "$(calc "($sse_ms / $cli_ms - 1) * 100")"
