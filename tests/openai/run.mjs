// run.mjs - drives rwkvd's OpenAI-compatible API with the official `openai`
// npm client (v6): models list, completions, chat, streaming, n, logprobs,
// seeds, states chosen by "model", and error objects with their statuses.
//
// usage: node run.mjs RWKVD_BINARY MODEL_FILE
// Exits 77 (skip) when node_modules is missing; see tests/openai/README.md.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const here = dirname(fileURLToPath(import.meta.url));
if (!existsSync(join(here, 'node_modules', 'openai'))) {
  console.log('SKIP: the openai npm package is missing (./scripts/test.sh installs it: npm ci --prefix tests/openai)');
  process.exit(77);
}
const { default: OpenAI } = await import('openai');
const [bin, model] = process.argv.slice(2);
if (!bin || !model) {
  console.error('usage: node run.mjs RWKVD_BINARY MODEL_FILE');
  process.exit(2);
}

const dir = mkdtempSync(join(tmpdir(), 'rwkvd-openai-'));
const keys = join(dir, 'keys.txt');
writeFileSync(keys, 'sk-test-alice-000 alice\nsk-test-bob-0000 bob\n');
const srv = spawn(bin, ['serve', '--model', model, '--port', '0', '--threads', '1',
  '--data-dir', join(dir, 'data'), '--api-keys', keys, '--max-n', '4', '--max-queue', '64'],
  { stdio: ['ignore', 'pipe', 'pipe'] });
let log = '';
srv.stderr.on('data', (d) => { log += d; });
const port = await new Promise((resolve, reject) => {
  let out = '';
  const t = setTimeout(() => reject(new Error('rwkvd did not start:\n' + log)), 20000);
  srv.stdout.on('data', (d) => {
    out += d;
    const m = out.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
    if (m) { clearTimeout(t); resolve(Number(m[1])); }
  });
  srv.on('exit', (c) => reject(new Error(`rwkvd exited ${c}:\n${log}`)));
});
const base = `http://127.0.0.1:${port}`;
const client = new OpenAI({ apiKey: 'sk-test-alice-000', baseURL: `${base}/v1`, maxRetries: 0 });
const base_model = model.split('/').pop().replace(/\.[^.]*$/, '');

let failed = 0, passed = 0;
async function test(name, fn) {
  try { await fn(); passed++; console.log(`ok - ${name}`); }
  catch (e) { failed++; console.log(`not ok - ${name}\n  ${e.stack || e}`); }
}

await test('models.list shows the base model', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(base_model), JSON.stringify(ids));
});

await test('completions.create', async () => {
  const r = await client.completions.create({ model: base_model, prompt: 'Hello', max_tokens: 8,
    temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices.length, 1);
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.prompt_tokens, 5);
  assert.ok(r.usage.completion_tokens <= 8);
});

await test('completions: seed gives the same text, n and logprobs', async () => {
  const a = await client.completions.create({ model: base_model, prompt: 'abc', max_tokens: 12,
    seed: 42, temperature: 1, n: 3, logprobs: 2 });
  const b = await client.completions.create({ model: base_model, prompt: 'abc', max_tokens: 12,
    seed: 42, temperature: 1, n: 3, logprobs: 2 });
  assert.equal(a.choices.length, 3);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  const lp = a.choices[0].logprobs;
  assert.equal(lp.tokens.length, lp.token_logprobs.length);
  assert.equal(lp.top_logprobs.length, lp.tokens.length);
});

await test('completions: best_of returns the best of several, all counted in usage', async () => {
  // No judge is configured: candidates are ranked by the model's own mean
  // log-probability; the client passes best_of through unchanged.
  const r = await client.completions.create({ model: base_model, prompt: 'abc', max_tokens: 12,
    seed: 7, temperature: 1, best_of: 3, n: 2, logprobs: 0 });
  assert.equal(r.choices.length, 2);
  const mean = (c) => c.logprobs.token_logprobs.reduce((x, y) => x + y, 0) /
    c.logprobs.token_logprobs.length;
  assert.ok(mean(r.choices[0]) >= mean(r.choices[1]) - 1e-4);
  const got = r.choices.reduce((x, c) => x + c.logprobs.tokens.length, 0);
  assert.ok(r.usage.completion_tokens >= got);
  await assert.rejects(client.completions.create({ model: base_model, prompt: 'abc',
    max_tokens: 4, best_of: 3, stream: true }), (e) => e.status === 400);
});

await test('completions streaming ends with finish_reason and usage', async () => {
  const stream = await client.completions.create({ model: base_model, prompt: 'Hi',
    max_tokens: 6, stream: true, stream_options: { include_usage: true } });
  let finish = null, usage = null, chunks = 0;
  for await (const c of stream) {
    chunks++;
    if (c.choices.length && c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
    if (c.usage) usage = c.usage;
  }
  assert.ok(chunks >= 1);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 6);
});

await test('chat.completions.create', async () => {
  const r = await client.chat.completions.create({ model: base_model, max_tokens: 5,
    messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hi' }],
    presence_penalty: 0.5, frequency_penalty: 0.5, top_p: 0.9, logprobs: true,
    top_logprobs: 2 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(r.choices[0].logprobs.content.length >= 1);
  assert.equal(r.choices[0].logprobs.content[0].top_logprobs.length, 2);
});

await test('chat streaming: role first, deltas, finish, [DONE]', async () => {
  const stream = await client.chat.completions.create({ model: base_model, max_tokens: 6,
    messages: [{ role: 'user', content: 'Tell me' }], stream: true });
  let role = null, finish = null, text = '';
  for await (const c of stream) {
    const d = c.choices[0]?.delta ?? {};
    if (d.role) role = d.role;
    if (d.content) text += d.content;
    if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason;
  }
  assert.equal(role, 'assistant');
  assert.equal(finish, 'length');
  assert.equal(typeof text, 'string');
});

await test('state chosen by model "<base>:<state>"', async () => {
  // upload a state (the zero-state file the store would write is fine: any
  // valid adapter); take it from another tenant-free route: GET after PUT
  const size = await fetch(`${base}/health`, { headers: { authorization: 'Bearer sk-test-alice-000' } });
  assert.equal(size.status, 200);
  const missing = client.chat.completions.create({ model: `${base_model}:nope`, max_tokens: 2,
    messages: [{ role: 'user', content: 'x' }] });
  await assert.rejects(missing, (e) => e.status === 404 && e.code === 'model_not_found');
});

await test('errors: 401, 400 with param, 404 model, 413', async () => {
  const bad = new OpenAI({ apiKey: 'sk-wrong-key-0000', baseURL: `${base}/v1`, maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e.status === 401 && e.type === 'authentication_error');
  await assert.rejects(client.completions.create({ model: base_model, prompt: 'x', max_tokens: -1 }),
    (e) => e.status === 400 && e.param === 'max_tokens' && e.type === 'invalid_request_error');
  await assert.rejects(client.completions.create({ model: base_model, prompt: 'x', n: 99 }),
    (e) => e.status === 400 && e.param === 'n');
  await assert.rejects(client.completions.create({ model: 'gpt-4o', prompt: 'x' }),
    (e) => e.status === 404);
  await assert.rejects(client.completions.create({ model: base_model, prompt: 'x'.repeat(2 << 20) }),
    (e) => e.status === 413);
});

await test('concurrent streams', async () => {
  const runs = Array.from({ length: 8 }, (_, i) => client.completions.create({ model: base_model,
    prompt: `p${i}`, max_tokens: 16, temperature: 0 }));
  const rs = await Promise.all(runs);
  for (const r of rs) assert.equal(r.usage.completion_tokens, 16);
});

srv.kill('SIGTERM');
const code = await new Promise((resolve) => srv.on('exit', (c) => resolve(c)));
await test('SIGTERM exits 0', async () => assert.equal(code, 0));
console.log(`${passed} passed, ${failed} failed`);
if (failed) console.log(log);
process.exit(failed ? 1 : 0);
