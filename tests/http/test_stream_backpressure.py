#!/usr/bin/env python3
"""A client that stops reading its stream: the server holds its sequences
(generation pauses once --max-stream-buffer bytes wait unsent) instead of
buffering the whole output, and resumes when the client reads again; the
stream then completes with every token.

usage: test_stream_backpressure.py RWKVD MODEL
"""
import json
import socket
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from rwkvd_http import metric, start, stop  # noqa: E402


def main():
    rwkvd, model = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="rwkvd-bp-")
    srv, port = start(rwkvd, model, tmp, "server",
                      ["--max-stream-buffer", "64K", "--max-tokens", "4096"])
    try:
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
        rc = stop([srv], timeout=60)[0]
    assert rc == 0, "server exit %s" % rc


if __name__ == "__main__":
    main()
