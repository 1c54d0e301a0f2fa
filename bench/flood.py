#!/usr/bin/env python3
"""flood.py - a half-header connection flood against a running rwkvd, with
/health probed throughout.

N clients connect (non-blocking, as fast as the kernel lets them), each
sends the first line and one header of a request but never the blank line
that ends the headers, they hold for --hold seconds, then all close. A
probe thread opens a fresh connection every --every seconds and asks
GET /health; each probe's answer time (or its failure) is recorded with
the phase it started in: "flood" (while the clients are open) or "after"
(once they have closed). The probe waits at most --probe-timeout seconds.

Prints one JSON object: the probe latencies per phase (max, p50, count,
failures) and "recovered_s": seconds from the close until the first probe
that was answered within 2 s and after which every probe was.

Loopback only, bounded in count and time; it stops by itself.

usage: flood.py PORT [--clients N] [--hold S] [--after S] [--every S]
                [--probe-timeout S] [--key KEY]
"""
import argparse
import json
import selectors
import socket
import threading
import time


def probe_once(port, key, timeout):
    """One GET /health on a fresh connection; returns seconds or None."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return None
    try:
        s.settimeout(max(0.05, timeout - (time.monotonic() - t0)))
        hdr = "Authorization: Bearer %s\r\n" % key if key else ""
        s.sendall(("GET /health HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n" % hdr)
                  .encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1."):
            return None
        return time.monotonic() - t0
    except OSError:
        return None
    finally:
        s.close()


def open_clients(port, n, deadline):
    """Open n sockets, non-blocking; send half a header on each as soon as it
    connects. Returns the sockets (connected or still connecting)."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    pending = n
    while pending and time.monotonic() < deadline:
        for k, _ in sel.select(timeout=0.1):
            s = k.fileobj
            sel.unregister(s)
            pending -= 1
            try:
                s.send(b"GET /health HTTP/1.1\r\nHost: flood\r\n")
            except OSError:
                pass
    sel.close()
    return socks, n - pending


def summarize(lat):
    ok = sorted(x for _, x in lat if x is not None)
    return {
        "probes": len(lat),
        "failures": sum(1 for _, x in lat if x is None),
        "max_s": round(max(ok), 3) if ok else None,
        "p50_s": round(ok[len(ok) // 2], 3) if ok else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--after", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=0.25)
    ap.add_argument("--probe-timeout", type=float, default=30.0)
    ap.add_argument("--key", default=None)
    a = ap.parse_args()

    results = []  # (t_start, phase, latency or None)
    phase = ["flood"]
    t_close = [None]
    stop = threading.Event()
    lock = threading.Lock()

    def prober():
        # Several probes may be outstanding at once, so a stuck probe does
        # not hide when the server answers again.
        threads = []
        while not stop.is_set():
            t0 = time.monotonic()
            ph = phase[0]

            def one(t0=t0, ph=ph):
                r = probe_once(a.port, a.key, a.probe_timeout)
                with lock:
                    results.append((t0, ph, r))

            th = threading.Thread(target=one, daemon=True)
            th.start()
            threads.append(th)
            stop.wait(a.every)
        for th in threads:
            th.join(a.probe_timeout + 1)

    pt = threading.Thread(target=prober)
    pt.start()
    t_begin = time.monotonic()
    socks, connected = open_clients(a.port, a.clients, t_begin + max(a.hold, 5.0))
    time.sleep(a.hold)
    for s in socks:
        s.close()
    t_close[0] = time.monotonic()
    phase[0] = "after"
    time.sleep(a.after)
    stop.set()
    pt.join()

    flood = [(t, r) for t, ph, r in results if ph == "flood"]
    after = [(t, r) for t, ph, r in results if ph == "after"]
    # recovered: first probe started after the close from which on every
    # probe answered within 2 s
    recovered = None
    for i, (t, r) in enumerate(sorted(after)):
        if all(x is not None and x <= 2.0 for _, x in sorted(after)[i:]):
            recovered = round(t - t_close[0], 3)
            break
    out = {
        "clients": a.clients,
        "connected": connected,
        "hold_s": a.hold,
        "flood": summarize(flood),
        "after": summarize(after),
        "recovered_s": recovered,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
