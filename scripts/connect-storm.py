#!/usr/bin/env python3
"""Connect storm: COUNT new connections in a row against one address, each
connect, one request, read the answer, close; as fast as one client can. Reports
connects per second, latency percentiles of the whole exchange, and how many took
1 s or more (a SYN dropped by a full listen queue is retransmitted after 1 s, so
those are the dropped connects), and failures.

    scripts/connect-storm.py HOST:PORT [--count 3000] [--path /] [--method GET]
                             [--parallel 1]

Works against anything that speaks HTTP/1.1: the gateway (any path: a 404 answer
is still an answer), or nginx for comparison (see README, "Soak and connection
storms"). Exit 1 if any connect failed or took >= 1 s.
"""
import argparse
import socket
import statistics
import sys
import threading
import time


def one(host, port, request):
    t0 = time.perf_counter()
    s = socket.create_connection((host, port), timeout=10)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1."):
            raise OSError(f"no HTTP answer: {data[:40]!r}")
    finally:
        s.close()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="HOST:PORT")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--path", default="/api/v1/file/lib1/-/ck?renew")
    ap.add_argument("--method", default="POST")
    ap.add_argument("--parallel", type=int, default=1,
                    help="client threads, each making count/parallel connections in a row")
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    port = int(port)
    request = (f"{args.method} {args.path} HTTP/1.1\r\nHost: {host}\r\n"
               "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
    times, failures, lock = [], [], threading.Lock()

    def worker(n):
        for _ in range(n):
            try:
                t = one(host, port, request)
                with lock:
                    times.append(t)
            except OSError as e:
                with lock:
                    failures.append(str(e))

    per = [args.count // args.parallel + (i < args.count % args.parallel)
           for i in range(args.parallel)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in per]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    slow = sum(1 for t in times if t >= 1.0)
    q = statistics.quantiles(times, n=100) if len(times) >= 2 else [0] * 99
    print(f"target {args.target}: {len(times)} of {args.count} connections answered in "
          f"{wall:.2f}s = {len(times) / wall:.0f} connects/s ({args.parallel} client thread(s))")
    print(f"exchange latency ms: p50 {q[49] * 1e3:.2f}  p99 {q[98] * 1e3:.2f}  "
          f"max {max(times, default=0) * 1e3:.1f}")
    print(f">= 1 s (dropped SYN, retransmitted): {slow}; failed: {len(failures)}")
    for f in sorted(set(failures))[:5]:
        print(f"  failure: {f}")
    sys.exit(1 if slow or failures else 0)


if __name__ == "__main__":
    main()
