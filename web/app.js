// rwkvd web UI: uses only the public HTTP API (docs/API.md).
'use strict';
const $ = (id) => document.getElementById(id);
const keyInput = $('apikey');
keyInput.value = localStorage.getItem('rwkvd-key') || '';
keyInput.addEventListener('change', () => { localStorage.setItem('rwkvd-key', keyInput.value); loadAll(); });

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (keyInput.value) h['Authorization'] = 'Bearer ' + keyInput.value;
  return h;
}
async function api(method, path, body, raw) {
  const opt = { method, headers: headers(raw ? {} : { 'Content-Type': 'application/json' }) };
  if (body !== undefined) opt.body = raw ? body : JSON.stringify(body);
  const res = await fetch(path, opt);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { text }; }
  if (!res.ok) throw new Error((data && data.error && data.error.message) || res.status + ' ' + res.statusText);
  return data;
}
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c])); }

// tabs
document.querySelectorAll('nav button').forEach((b) => b.addEventListener('click', () => {
  document.querySelectorAll('nav button, section.tab').forEach((e) => e.classList.remove('active'));
  b.classList.add('active');
  $(b.dataset.tab).classList.add('active');
}));

async function health() {
  const el = $('health');
  try {
    const r = await fetch('/health', { headers: headers() });
    const d = await r.json();
    el.textContent = r.ok ? d.model + ' · ' + d.active + ' active · ' + d.queued + ' queued' : (d.reason || 'unavailable');
    el.className = 'pill ' + (r.ok ? 'ok' : 'bad');
  } catch (e) { el.textContent = 'offline'; el.className = 'pill bad'; }
}

// playground: streams /generate as server-sent events
let controller = null;
$('go').addEventListener('click', async () => {
  const out = $('out'); out.textContent = '';
  let prompt = $('prompt').value;
  if ($('chat').checked) prompt = 'User: ' + prompt.trim() + '\n\nAssistant:';
  const body = { prompt, stream: true, max_tokens: +$('max_tokens').value,
    temperature: +$('temperature').value, top_p: +$('top_p').value };
  if ($('chat').checked) body.stop = ['\n\nUser:'];
  if ($('state').value) body.state = $('state').value;
  if ($('seed').value !== '') body.seed = +$('seed').value;
  controller = new AbortController();
  $('go').disabled = true; $('stop').disabled = false;
  const t0 = performance.now(); let first = 0, n = 0;
  try {
    const res = await fetch('/generate', { method: 'POST', body: JSON.stringify(body), signal: controller.signal,
      headers: headers({ 'Content-Type': 'application/json' }) });
    if (!res.ok) { const d = await res.json(); throw new Error(d.error ? d.error.message : res.status); }
    const reader = res.body.getReader(); const dec = new TextDecoder(); let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i); buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ')) continue;
        const d = JSON.parse(ev.slice(6));
        if (d.error) throw new Error(d.error.message);
        if (d.text) { if (!first) first = performance.now(); out.textContent += d.text; n++; }
        if (d.done) $('stats').textContent = d.usage.completion_tokens + ' tokens, first after ' +
          Math.round(first - t0) + ' ms, ' + (d.usage.completion_tokens / ((performance.now() - t0) / 1000)).toFixed(1) + ' tok/s';
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') out.innerHTML += '<span class="err">\n' + esc(e.message) + '</span>';
  } finally { $('go').disabled = false; $('stop').disabled = true; controller = null; }
});
$('stop').addEventListener('click', () => controller && controller.abort());

// states
async function loadStates() {
  const tb = $('state_table').querySelector('tbody'); const sel = $('state');
  try {
    const d = await api('GET', '/states');
    const keep = sel.value;
    sel.length = 1;
    tb.innerHTML = '';
    for (const s of d.data) {
      sel.add(new Option(s.id + ' (v' + s.version + ')', s.id));
      const tr = document.createElement('tr');
      tr.innerHTML = '<td>' + esc(s.id) + '</td><td>' + s.version + '</td><td>' + esc(s.method || '') + '</td><td>' +
        new Date(s.created_ms || s.created * 1000).toLocaleString() + '</td><td>' + s.bytes + '</td>' +
        '<td><a href="#" data-dl>file</a> · <a href="#" data-del>delete</a></td>';
      tr.querySelector('[data-del]').onclick = async (e) => { e.preventDefault();
        if (confirm('Delete state ' + s.id + '?')) { await api('DELETE', '/states/' + s.id); loadStates(); } };
      tr.querySelector('[data-dl]').onclick = async (e) => { e.preventDefault();
        const r = await fetch('/states/' + s.id + '/file', { headers: headers() });
        const a = document.createElement('a'); a.href = URL.createObjectURL(await r.blob());
        a.download = s.id + '.safetensors'; a.click(); };
      tb.appendChild(tr);
    }
    sel.value = keep;
  } catch (e) { tb.innerHTML = '<tr><td colspan="6" class="err">' + esc(e.message) + '</td></tr>'; }
}
$('refresh_states').onclick = loadStates;
$('upload').onclick = async () => {
  const f = $('up_file').files[0]; const id = $('up_id').value.trim();
  if (!f || !id) return alert('Choose a file and an id.');
  try { await api('PUT', '/states/' + id, await f.arrayBuffer(), true); loadStates(); }
  catch (e) { alert(e.message); }
};

// jobs
async function loadJobs() {
  const tb = $('job_table').querySelector('tbody');
  try {
    const d = await api('GET', '/jobs');
    tb.innerHTML = '';
    for (const j of d.data) {
      const tr = document.createElement('tr');
      tr.innerHTML = '<td>' + esc(j.id) + '</td><td>' + esc(j.status) + '</td><td>' + (j.step || 0) + '/' +
        (j.steps || '?') + '</td><td>' + (j.loss != null ? Number(j.loss).toFixed(4) : '') + '</td><td>' +
        esc(j.output_state || '') + '</td><td><a href="#" data-ev>events</a> · <a href="#" data-cancel>cancel</a></td>';
      tr.querySelector('[data-cancel]').onclick = async (e) => { e.preventDefault();
        await api('POST', '/jobs/' + j.id + '/cancel'); loadJobs(); };
      tr.querySelector('[data-ev]').onclick = (e) => { e.preventDefault(); follow(j.id); };
      tb.appendChild(tr);
    }
  } catch (e) { tb.innerHTML = '<tr><td colspan="6" class="err">' + esc(e.message) + '</td></tr>'; }
}
async function follow(id) {
  const log = $('job_log'); log.textContent = '';
  const res = await fetch('/jobs/' + id + '/events', { headers: headers() });
  const reader = res.body.getReader(); const dec = new TextDecoder(); let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i); buf = buf.slice(i + 2);
      const line = ev.split('\n').find((l) => l.startsWith('data: '));
      if (line) { log.textContent += line.slice(6) + '\n'; log.scrollTop = log.scrollHeight; }
    }
  }
  loadJobs(); loadStates();
}
$('refresh_jobs').onclick = loadJobs;
// the kernel options only for the methods that use them
function showKernelOpts() {
  const on = $('job_method').value !== 'standard';
  document.querySelectorAll('.kernel_opt').forEach((e) => { e.style.display = on ? '' : 'none'; });
}
$('job_method').onchange = showKernelOpts;
showKernelOpts();
$('tune').onclick = async () => {
  const lines = $('dataset').value.split('\n').map((l) => l.trim()).filter(Boolean);
  try {
    const data = lines.map((l, i) => { try { return JSON.parse(l); } catch (e) { throw new Error('line ' + (i + 1) + ': ' + e.message); } });
    const method = $('job_method').value;
    const body = { dataset: data, output_state: $('job_out').value.trim(),
      method, steps: +$('job_steps').value, lr: +$('job_lr').value, val_split: 0 };
    if (method !== 'standard') {
      body.kernel_m = +$('job_kernel_m').value;
      body.kernel_fade = $('job_kernel_fade').value;
    }
    const j = await api('POST', '/tune', body);
    loadJobs(); follow(j.id);
  } catch (e) { alert(e.message); }
};

function loadAll() { health(); loadStates(); loadJobs(); }
loadAll();
setInterval(health, 5000);
