"""Helpers shared by the Python HTTP tests (tests/http/test_*.py): start an
`rwkvd serve` on a free port, JSON requests, /metrics values, job polling,
SSE events, stopping servers, and a base for the small fake endpoints that
serve fault cases from inside the test process.

The tests run as scripts (meson passes the script's path), so Python puts
this directory first on sys.path and `import rwkvd_http` finds this file.
"""
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

FINAL = ("succeeded", "failed", "cancelled")


def start(rwkvd, model, tmp, name, extra=()):
    """Start `rwkvd serve --port 0` with data directory TMP/NAME and its
    stderr appended to TMP/NAME.log; returns (process, port) once it listens."""
    log_path = os.path.join(tmp, name + ".log")
    log = open(log_path, "a")
    p = subprocess.Popen([rwkvd, "serve", "--model", model, "--port", "0", "--threads", "1",
                          "--data-dir", os.path.join(tmp, name), *extra],
                         stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    line = p.stdout.readline()
    if "listening on http://" not in line:
        p.kill()
        p.wait()
        raise AssertionError("%s did not start: %r\n%s"
                             % (name, line, open(log_path).read()[-3000:]))
    return p, int(line.rsplit(":", 1)[1])


def stop(procs, timeout=30, sig=None):
    """Stop the servers (SIGTERM unless sig says otherwise), killing one
    that has not exited after timeout seconds; returns their exit codes."""
    procs = list(procs)
    for p in procs:
        if sig is None:
            p.terminate()
        else:
            p.send_signal(sig)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def _headers(key, json_body):
    h = {}
    if key is not None:
        h["Authorization"] = "Bearer " + key
    if json_body:
        h["Content-Type"] = "application/json"
    return h


def request(port, method, path, body=None, raw=None, key=None, timeout=60):
    """One request; returns (status, parsed JSON body or None)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    r = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data, method=method,
                               headers=_headers(key, body is not None))
    try:
        with urllib.request.urlopen(r, timeout=timeout) as f:
            return f.status, json.loads(f.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def post(port, path, body, key=None, timeout=60):
    return request(port, "POST", path, body, key=key, timeout=timeout)


def get_text(port, path, key=None, timeout=30):
    """GET a path that must answer 2xx; returns the body as text."""
    r = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                               headers=_headers(key, False))
    with urllib.request.urlopen(r, timeout=timeout) as f:
        return f.read().decode()


def get_json(port, path, key=None, timeout=30):
    return json.loads(get_text(port, path, key, timeout))


def metric(port, name):
    """The value of the /metrics line whose name (with labels) is name;
    0.0 when the line is absent."""
    for line in get_text(port, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def wait_job(port, jid, until=FINAL, timeout=120, key=None, or_none=False):
    """Poll GET /jobs/ID until its status is in until; the job record, or
    None (or_none) / an AssertionError when timeout seconds pass first."""
    t_end = time.monotonic() + timeout
    j = None
    while time.monotonic() < t_end:
        st, j = request(port, "GET", "/jobs/" + jid, key=key)
        if st == 200 and j["status"] in until:
            return j
        time.sleep(0.05)
    if or_none:
        return None
    raise AssertionError("job %s still %s after %d s" % (jid, j and j.get("status"), timeout))


def events(port, jid, key=None, timeout=120):
    """The SSE events of a job, read until the stream ends: a list of
    (event name, parsed data)."""
    r = urllib.request.Request("http://127.0.0.1:%d/jobs/%s/events" % (port, jid),
                               headers=_headers(key, False))
    out = []
    with urllib.request.urlopen(r, timeout=timeout) as f:
        ev = None
        for line in f:
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                out.append((ev, json.loads(line[6:])))
    return out


class FakeHandler(http.server.BaseHTTPRequestHandler):
    """Base of a fake endpoint's handler: quiet, keep-alive, and reply()."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, obj=None, raw=None, headers=()):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (a timeout case)


class FakeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that closed its kept-alive connection

    def url(self, kind):
        """The base URL of one of the fake's behaviours (the first path part)."""
        return "http://127.0.0.1:%d/%s/v1" % (self.server_address[1], kind)


def start_fake(handler):
    """Serve handler on a free local port in a daemon thread; returns the
    server (shutdown() stops it)."""
    fake = FakeServer(("127.0.0.1", 0), handler)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    return fake


def sanitizer_report(*log_paths):
    """The first of the logs that reports a sanitizer error, or None."""
    for path in log_paths:
        text = open(path).read() if os.path.exists(path) else ""
        if "Sanitizer" in text or "runtime error" in text:
            return path
    return None


def finish(procs, tmp, names, ok, name):
    """The end of a test that started servers (start) named `names` under
    tmp: stop them, fail on a sanitizer report in their logs, remove tmp
    when all went well (else say where it is kept). The exit status."""
    stop(procs, timeout=10)
    bad = sanitizer_report(*(os.path.join(tmp, n + ".log") for n in names))
    if bad:
        print("%s reports a sanitizer error" % bad)
        ok = False
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
        print("%s: ok" % name)
    else:
        print("left in", tmp)
    return 0 if ok else 1
