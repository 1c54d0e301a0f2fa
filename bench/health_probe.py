#!/usr/bin/env python3
"""health_probe.py - /health latency from a process of its own.

The load generator's in-process probe also measures its own event-loop delay
while it parses many streams; this probe keeps one connection open and asks
every 20 ms, so what it reports is the server's answer time (plus the
scheduling delay of sharing the machine, which is real for a co-located
load balancer too).

usage: health_probe.py URL SECONDS [--key KEY] [--label TEXT]
"""
import http.client
import sys
import time
import urllib.parse


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    url = urllib.parse.urlparse(sys.argv[1])
    seconds = float(sys.argv[2])
    opts = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    headers = {"Authorization": "Bearer " + opts["--key"]} if "--key" in opts else {}
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    lat, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/health", headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors += 1
        except OSError:
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            continue
        lat.append((time.perf_counter() - t0) * 1e3)
        time.sleep(0.02)
    lat.sort()
    n = len(lat)
    if not n:
        print("health probe: no answers (%d errors)" % errors)
        return
    q = lambda p: lat[min(n - 1, int(p * n))]
    print("health probe %s: n=%d p50 %.2f p90 %.2f p99 %.2f max %.2f ms, %d errors"
          % (opts.get("--label", ""), n, q(0.5), q(0.9), q(0.99), lat[-1], errors))


if __name__ == "__main__":
    main()
