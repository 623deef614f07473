#!/usr/bin/env python3
"""Memory per idle keep-alive connection of a running server: opens COUNT
connections, each sends REQUEST once and reads its whole answer, then holds them
all open; reports the server's RSS before and after (VmRSS of PID and its
children, from /proc) and the growth per connection. Then one more request on a
fresh connection must still be answered at once (the "normal request still
served" part of the check), and every held connection must still be open.

    scripts/idle-conns.py --port 18090 --pid $(cat /tmp/smh-bench/state/gateway/gateway.pid) \
        --count 4000 --path '/api/v1/file/lib1/-/ck123?renew&access_token=...'

Used with ../shared/bench's targets (start-peers.sh gateway nginx): the same request
as compare.sh's, against the gateway and nginx in one run. Needs the open-files
limit above COUNT (ulimit -n). Prints one Markdown table row.
"""
import argparse
import os
import socket
import sys
import time


def rss_kib(pid):
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def read_answer(sock):
    """Reads one HTTP/1.1 answer with a Content-Length; returns its status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's body")
        body += chunk
    return status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--method", default="POST")
    ap.add_argument("--path", required=True)
    ap.add_argument("--label", default="")
    # Past the park (2 s idle) and the collection after it (1 s), with margin:
    # connections opened late in a run of thousands park seconds after the first.
    ap.add_argument("--settle", type=float, default=8.0)
    a = ap.parse_args()
    request = (
        f"{a.method} {a.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    ).encode()

    # One warm-up request, so that start-up allocations are not counted.
    with socket.create_connection(("127.0.0.1", a.port), 10) as s:
        s.sendall(request)
        read_answer(s)
    time.sleep(a.settle)
    before = rss_kib(a.pid)

    held, statuses = [], {}
    for _ in range(a.count):
        s = socket.create_connection(("127.0.0.1", a.port), 10)
        s.sendall(request)
        st = read_answer(s)
        statuses[st] = statuses.get(st, 0) + 1
        held.append(s)
    time.sleep(a.settle)
    after = rss_kib(a.pid)

    # A normal request on a new connection, while all are held.
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", a.port), 10) as s:
        s.sendall(request)
        fresh = read_answer(s)
    fresh_ms = (time.monotonic() - t0) * 1000

    # Every held connection still open: one more request on each of a sample.
    still_open = 0
    for s in held[:: max(1, len(held) // 100)]:
        try:
            s.sendall(request)
            read_answer(s)
            still_open += 1
        except OSError:
            pass
    for s in held:
        s.close()

    per_conn = (after - before) * 1024 / a.count
    print(
        f"| {a.label or a.port} | {a.count} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB "
        f"| {per_conn / 1024:.1f} KiB | {fresh} in {fresh_ms:.1f} ms "
        f"| {still_open} of {len(held[:: max(1, len(held) // 100)])} reused | {statuses} |"
    )
    ok = fresh == 200 and list(statuses) == [200]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
