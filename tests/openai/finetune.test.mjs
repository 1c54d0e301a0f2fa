// finetune.test.mjs - drives rwkvd's fine-tuning mapping with the official
// `openai` npm client (v6): files.create/list/retrieve/content/delete,
// fine_tuning.jobs.create/list/retrieve/cancel/listEvents, then completions
// with the job's fine_tuned_model ("<base>:<state>"), and tenant isolation.
//
// usage: node finetune.test.mjs RWKVD_BINARY MODEL_FILE
// Exits 77 (skip) when node_modules is missing; see tests/openai/README.md.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const here = dirname(fileURLToPath(import.meta.url));
if (!existsSync(join(here, 'node_modules', 'openai'))) {
  console.log('SKIP: the openai npm package is missing (./scripts/test.sh installs it: npm ci --prefix tests/openai)');
  process.exit(77);
}
const { default: OpenAI, toFile } = await import('openai');
const [bin, model] = process.argv.slice(2);
if (!bin || !model) {
  console.error('usage: node finetune.test.mjs RWKVD_BINARY MODEL_FILE');
  process.exit(2);
}

const dir = mkdtempSync(join(tmpdir(), 'rwkvd-openai-ft-'));
const keys = join(dir, 'keys.txt');
writeFileSync(keys, 'sk-test-alice-000 alice\nsk-test-bob-0000 bob\n');
const srv = spawn(bin, ['serve', '--model', model, '--port', '0', '--threads', '1',
  '--data-dir', join(dir, 'data'), '--api-keys', keys],
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
const baseURL = `http://127.0.0.1:${port}/v1`;
const client = new OpenAI({ apiKey: 'sk-test-alice-000', baseURL, maxRetries: 0 });
const bob = new OpenAI({ apiKey: 'sk-test-bob-0000', baseURL, maxRetries: 0 });
const base_model = model.split('/').pop().replace(/\.[^.]*$/, '');

let failed = 0, passed = 0;
async function test(name, fn) {
  try { await fn(); passed++; console.log(`ok - ${name}`); }
  catch (e) { failed++; console.log(`not ok - ${name}\n  ${e.stack || e}`); }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The task: after a few random letters and " -> " the answer is "kiwi".
function kiwi(n, seed) {
  let x = seed;
  const rnd = () => { x = (x * 1103515245 + 12345) % 2147483648; return x; };
  const lines = [];
  for (let i = 0; i < n; i++) {
    let p = '\n';
    const k = 4 + (rnd() % 6);
    for (let c = 0; c < k; c++) p += String.fromCharCode(97 + (rnd() % 26));
    lines.push(JSON.stringify({ prompt: p + ' -> ', completion: 'kiwi' }));
  }
  return lines.join('\n') + '\n';
}

async function waitFor(id, want, ms = 120000) {
  const t0 = Date.now();
  for (;;) {
    const j = await client.fineTuning.jobs.retrieve(id);
    if (j.status === want) return j;
    if (['succeeded', 'failed', 'cancelled'].includes(j.status) || Date.now() - t0 > ms)
      throw new Error(`job ${id}: status ${j.status}, waiting for ${want}: ${JSON.stringify(j.error)}`);
    await sleep(100);
  }
}

let fileId, jobId;

await test('files.create validates JSONL (line numbers) and stores the file', async () => {
  await assert.rejects(client.files.create({
    file: await toFile(Buffer.from('{"text":"ok"}\n{"prompt":3}\n'), 'bad.jsonl'),
    purpose: 'fine-tune' }), (e) => e.status === 400 && /line 2/.test(e.message));
  const f = await client.files.create({
    file: await toFile(Buffer.from(kiwi(40, 7)), 'kiwi.jsonl'), purpose: 'fine-tune' });
  assert.equal(f.object, 'file');
  assert.equal(f.purpose, 'fine-tune');
  assert.equal(f.filename, 'kiwi.jsonl');
  assert.ok(f.id.startsWith('file-'));
  fileId = f.id;
  const got = await client.files.retrieve(fileId);
  assert.equal(got.bytes, f.bytes);
  const ids = [];
  for await (const x of client.files.list()) ids.push(x.id);
  assert.ok(ids.includes(fileId));
  const text = await (await client.files.content(fileId)).text();
  assert.equal(text, kiwi(40, 7));
});

await test('fine_tuning.jobs.create -> succeeded with fine_tuned_model', async () => {
  const j = await client.fineTuning.jobs.create({ training_file: fileId, model: base_model,
    suffix: 'kiwi-oa', seed: 3,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 3, batch_size: 4,
      learning_rate_multiplier: 1 } } } });
  assert.equal(j.object, 'fine_tuning.job');
  assert.ok(['validating_files', 'queued', 'running'].includes(j.status));
  assert.equal(j.fine_tuned_model, null);
  assert.equal(j.training_file, fileId);
  assert.equal(j.hyperparameters.batch_size, 4);
  assert.equal(j.hyperparameters.n_epochs, 3);
  jobId = j.id;
  const done = await waitFor(jobId, 'succeeded');
  assert.equal(done.fine_tuned_model, `${base_model}:kiwi-oa`);
  assert.ok(done.finished_at >= done.created_at);
  assert.ok(done.trained_tokens > 0);
  assert.equal(done.error, null);
});

await test('fine_tuning.jobs.list and listEvents paginate', async () => {
  const ids = [];
  for await (const j of client.fineTuning.jobs.list({ limit: 1 })) ids.push(j.id);
  assert.ok(ids.includes(jobId));
  const evs = [];
  for await (const e of client.fineTuning.jobs.listEvents(jobId, { limit: 5 })) evs.push(e);
  assert.ok(evs.length >= 18 + 2, `only ${evs.length} events`);
  assert.equal(evs[0].object, 'fine_tuning.job.event');
  assert.match(evs[0].message, /succeeded/); // newest first
  assert.ok(evs.some((e) => e.type === 'metrics' && /training loss/.test(e.message)));
  assert.equal(new Set(evs.map((e) => e.id)).size, evs.length);
});

await test('completions with the fine_tuned_model', async () => {
  const j = await client.fineTuning.jobs.retrieve(jobId);
  const r = await client.completions.create({ model: j.fine_tuned_model, prompt: '\nqwzrt -> ',
    max_tokens: 4, temperature: 0 });
  assert.equal(r.choices[0].text, 'kiwi');
  const b = await client.completions.create({ model: base_model, prompt: '\nqwzrt -> ',
    max_tokens: 4, temperature: 0 });
  assert.notEqual(b.choices[0].text, 'kiwi');
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(j.fine_tuned_model), JSON.stringify(ids));
});

await test('cancel: running job stops; cancel is idempotent; finished job unchanged', async () => {
  const j = await client.fineTuning.jobs.create({ training_file: fileId, model: base_model,
    hyperparameters: { n_epochs: 500 } });
  for (let i = 0; i < 400; i++) {
    const x = await client.fineTuning.jobs.retrieve(j.id);
    if (x.status === 'running' && x.step > 0) break;
    await sleep(50);
  }
  const c = await client.fineTuning.jobs.cancel(j.id);
  assert.equal(c.status, 'cancelled');
  const c2 = await client.fineTuning.jobs.cancel(j.id);
  assert.equal(c2.status, 'cancelled');
  const s = await client.fineTuning.jobs.cancel(jobId);
  assert.equal(s.status, 'succeeded');
});

await test('errors: unknown model, missing file, bad suffix', async () => {
  await assert.rejects(client.fineTuning.jobs.create({ training_file: fileId, model: 'gpt-4o' }),
    (e) => e.status === 404 && e.code === 'model_not_found');
  await assert.rejects(client.fineTuning.jobs.create({ training_file: 'file-0000000000000000',
    model: base_model }), (e) => e.status === 404);
  await assert.rejects(client.fineTuning.jobs.create({ training_file: fileId, model: base_model,
    suffix: 'Bad Suffix!' }), (e) => e.status === 400 && e.param === 'suffix');
  await assert.rejects(client.fineTuning.jobs.retrieve('ftjob-0000000000000000'),
    (e) => e.status === 404);
});

await test('tenants: bob sees none of alice\'s files, jobs or states', async () => {
  await assert.rejects(bob.files.retrieve(fileId), (e) => e.status === 404);
  await assert.rejects(bob.fineTuning.jobs.retrieve(jobId), (e) => e.status === 404);
  await assert.rejects(bob.fineTuning.jobs.cancel(jobId), (e) => e.status === 404);
  const ids = [];
  for await (const j of bob.fineTuning.jobs.list()) ids.push(j.id);
  assert.equal(ids.length, 0);
  await assert.rejects(bob.completions.create({ model: `${base_model}:kiwi-oa`, prompt: 'x',
    max_tokens: 2 }), (e) => e.status === 404);
});

await test('files.delete', async () => {
  const d = await client.files.delete(fileId);
  assert.equal(d.deleted, true);
  await assert.rejects(client.files.retrieve(fileId), (e) => e.status === 404);
});

srv.kill('SIGTERM');
const code = await new Promise((resolve) => srv.on('exit', (c) => resolve(c)));
await test('SIGTERM exits 0', async () => assert.equal(code, 0));
console.log(`${passed} passed, ${failed} failed`);
if (failed) console.log(log);
process.exit(failed ? 1 : 0);
