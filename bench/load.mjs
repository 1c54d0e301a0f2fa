// load.mjs - load generator for rwkvd: C concurrent streaming clients, each
// on its own state adapter, for D seconds; reports generated-token
// throughput, per-stream token rate, TTFT and inter-token latency p50/p99,
// and /health latency p50/p99 measured alongside. Node 20, no dependencies.
//
// usage: node bench/load.mjs --url http://127.0.0.1:8080 --concurrency 1,4,16,64
//          [--duration 20] [--max-tokens 128] [--key KEY] [--states N]
//          [--state-file FILE]   (uploaded as states bench-0..N-1 first)
//          [--stagger-ms S]      (each stream starts after a random delay in
//                                 [0, S) ms, so streams do not run in lock-step)
//          [--warmup W]          (seconds at the start of each level whose
//                                 tokens and latencies are not counted)
// Tokens are counted when they arrive inside the measured window (after the
// warm-up, before the deadline); the rate is those tokens over the window.
import { readFileSync } from 'node:fs';

const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, all) => {
  if (v.startsWith('--')) a.push([v.slice(2), all[i + 1]]);
  return a;
}, []));
const url = args.url ?? 'http://127.0.0.1:8080';
const levels = (args.concurrency ?? '1,4,16,64').split(',').map(Number);
const duration = Number(args.duration ?? 20) * 1000;
const maxTokens = Number(args['max-tokens'] ?? 128);
const headers = { 'content-type': 'application/json' };
if (args.key) headers.authorization = `Bearer ${args.key}`;
const nStates = Number(args.states ?? Math.max(...levels));
const staggerMs = Number(args['stagger-ms'] ?? 0);
const warmupMs = Number(args.warmup ?? 0) * 1000;

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

if (args['state-file']) {
  const body = readFileSync(args['state-file']);
  for (let i = 0; i < nStates; i++) {
    const r = await fetch(`${url}/states/bench-${i}`, { method: 'PUT', headers, body });
    if (r.status >= 300) throw new Error(`PUT state: ${r.status} ${await r.text()}`);
  }
}

async function stream(i, stats, deadline) {
  if (staggerMs > 0) await new Promise((res) => setTimeout(res, Math.random() * staggerMs));
  while (Date.now() < deadline) {
    const t0 = performance.now();
    const body = { prompt: `Request ${i}: tell me a story about the number ${i}.`,
      max_tokens: maxTokens, temperature: 0, stream: true, logprobs: 0 };
    if (args['state-file']) body.state = `bench-${i % nStates}`;
    const r = await fetch(`${url}/generate`, { method: 'POST', headers, body: JSON.stringify(body) });
    if (r.status !== 200) { stats.errors++; await r.text(); continue; }
    let last = t0, first = true, buf = '';
    const dec = new TextDecoder();
    for await (const chunk of r.body) {
      buf += dec.decode(chunk, { stream: true });
      let k;
      while ((k = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, k);
        buf = buf.slice(k + 2);
        if (!ev.includes('"token":')) continue;
        const now = performance.now();
        const counted = Date.now() >= stats.from && Date.now() < deadline;
        if (first) { if (counted) stats.ttft.push(now - t0); first = false; }
        else if (counted) stats.itl.push(now - last);
        last = now;
        if (counted) stats.tokens++;
      }
    }
    stats.requests++;
  }
}

async function healthProbe(stats, deadline) {
  while (Date.now() < deadline) {
    const t0 = performance.now();
    const r = await fetch(`${url}/health`, { headers });
    await r.text();
    if (Date.now() >= stats.from) stats.health.push(performance.now() - t0);
    await new Promise((res) => setTimeout(res, 50));
  }
}

console.log('streams  tok/s   per-stream  ttft_p50  ttft_p99  itl_p50  itl_p99  health_p50  health_p99  errors');
for (const c of levels) {
  const t0 = Date.now(), deadline = t0 + warmupMs + duration;
  const stats = { tokens: 0, requests: 0, errors: 0, ttft: [], itl: [], health: [],
    from: t0 + warmupMs };
  await Promise.all([...Array.from({ length: c }, (_, i) => stream(i, stats, deadline)),
    healthProbe(stats, deadline)]);
  const secs = duration / 1000;
  const f = (x) => x.toFixed(1).padStart(8);
  console.log(`${String(c).padStart(7)} ${f(stats.tokens / secs)} ${f(stats.tokens / secs / c)}   ` +
    `${f(pct(stats.ttft, 50))}  ${f(pct(stats.ttft, 99))} ${f(pct(stats.itl, 50))} ` +
    `${f(pct(stats.itl, 99))}   ${f(pct(stats.health, 50))}    ${f(pct(stats.health, 99))}  ${stats.errors}`);
}
