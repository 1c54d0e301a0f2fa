#!/usr/bin/env python3
"""A client that stops reading its stream: the server holds its sequences
(generation pauses once --max-stream-buffer bytes wait unsent) instead of
buffering the whole output, and resumes when the client reads again; the
stream then completes with every token.

usage: test_stream_backpressure.py RWKVD MODEL
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def metric(port, name):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit("metric %s missing" % name)


def main():
    rwkvd, model = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="rwkvd-bp-")
    log = open(os.path.join(tmp, "server.log"), "w")
    srv = subprocess.Popen([rwkvd, "serve", "--model", model, "--port", "0", "--threads", "1",
                            "--data-dir", os.path.join(tmp, "data"),
                            "--max-stream-buffer", "64K", "--max-tokens", "4096"],
                           stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = srv.stdout.readline()
        assert "listening on http://" in line, line
        port = int(line.rsplit(":", 1)[1])
        body = json.dumps({"prompt": "Hello", "max_tokens": 2048, "n": 8, "logprobs": 20,
                           "temperature": 1.0, "stream": True, "seed": 3}).encode()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.connect(("127.0.0.1", port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        # read nothing: the socket buffers fill, then the server must pause
        deadline = time.monotonic() + 60
        prev = metric(port, "rwkvd_generated_tokens_total")
        paused = False
        while time.monotonic() < deadline:
            time.sleep(1.0)
            cur = metric(port, "rwkvd_generated_tokens_total")
            if cur == prev and cur > 0:
                paused = True
                break
            prev = cur
        assert paused, "generation never paused for a client that does not read"
        assert prev < 8 * 2048, "the whole output was generated before the pause (%d)" % prev
        print("paused after %d of %d tokens" % (prev, 8 * 2048))
        # /health still answers at once
        t0 = time.monotonic()
        metric(port, "rwkvd_active_sequences")
        assert time.monotonic() - t0 < 2
        # now read everything: the stream completes with every token
        s.settimeout(120)
        data = b""
        while not data.endswith(b"data: [DONE]\n\n0\r\n\r\n") and b"[DONE]" not in data[-64:]:
            b = s.recv(1 << 20)
            if not b:
                break
            data += b
        s.close()
        text = data.decode("utf-8", "replace")
        assert "data: [DONE]" in text, text[-500:]
        n_len = text.count('"finish_reason":"length"')
        assert n_len == 8, "expected 8 choices to finish by length, saw %d" % n_len
        total = metric(port, "rwkvd_generated_tokens_total")
        assert total == 8 * 2048, total
        print("resumed and completed: %d tokens, %d bytes" % (total, len(data)))
    finally:
        srv.terminate()
        rc = srv.wait(timeout=60)
        log.close()
    assert rc == 0, "server exit %s" % rc


if __name__ == "__main__":
    main()
