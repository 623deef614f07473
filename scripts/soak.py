#!/usr/bin/env python3
"""Soak: the gateway (built binary) in front of the built-in mock upstream, under
CONNS keep-alive connections for MINUTES, with a fixed mix of requests whose
expected answer is known per class. Reports each class's statuses against what was
expected (any other is an unexpected error), and samples the gateway's RSS and open
file descriptors from /proc every SAMPLE seconds; growth is measured from the end
of the warm-up to the end of the run (mean of the last three samples).

    scripts/soak.py [--minutes 10] [--conns 256] [--bin target/debug/smh-gateway]

Exit 0 when there was no unexpected answer and RSS and fds grew less than 5%
after warm-up; 1 otherwise. Needs only python3; starts and stops its own
processes on free loopback ports.
"""
import argparse
import asyncio
import itertools
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {limit}s")


def proc_sample(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


class Mix:
    """The request classes: (name, weight, request builder, expected statuses)."""

    def __init__(self, tokens, keys):
        self.t = tokens
        self.keys = keys
        self.hot = [f"ck-hot-{i}" for i in range(64)]
        self.cold = itertools.count()

    def classes(self):
        t = self.t
        renew = "/api/v1/file/lib1/-/{ck}?renew&access_token={tok}"
        return [
            # A confirm key from a keyspace larger than cache.max_entries: misses.
            ("renew_miss", 20, lambda: ("POST", renew.format(
                ck=f"ck-cold-{next(self.cold) % self.keys}", tok=t["upload"])), {200}),
            # A few hot keys: hits after the first.
            ("renew_hit", 40, lambda: ("POST", renew.format(
                ck=random.choice(self.hot), tok=t["upload"])), {200}),
            ("bad_token", 10, lambda: ("POST", renew.format(
                ck="ck-x", tok=t["upload"][:-4] + "AAAA")), {403}),
            ("no_token", 5, lambda: ("POST", "/api/v1/file/lib1/-/ck-x?renew"), {400}),
            # Scope: a token for lib1 on lib2's path; a viewer renewing.
            ("wrong_library", 5, lambda: ("POST", "/api/v1/file/lib2/-/ck-x?renew&access_token="
                                          + t["upload"]), {403}),
            ("no_permission", 5, lambda: ("POST", renew.format(ck="ck-x", tok=t["view"])), {403}),
            # Other routes: file info (the mock has no such file: its 404 passes
            # through), an unknown route (the gateway's 404).
            ("info_file", 10, lambda: ("GET", "/api/v1/file/lib1/-/soak/none.bin?info&access_token="
                                       + t["view"]), {404}),
            ("unmatched", 5, lambda: ("GET", "/api/v1/nothing-here"), {404}),
        ]


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers.get("connection", "").lower() == "close"


STARTED = time.time()
UNEXPECTED_AT = []  # (seconds into the run, class, status)


async def client(port, mix, classes, weights, stop, stats):
    reader = writer = None
    while not stop.is_set():
        name, build, expected = random.choices(classes, weights)[0]
        method, target = build()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"{method} {target} HTTP/1.1\r\nHost: soak\r\nContent-Length: 0\r\n\r\n"
                         .encode())
            status, close = await asyncio.wait_for(read_response(reader), 30)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                asyncio.LimitOverrunError, ValueError) as e:
            stats.setdefault(name, {}).setdefault(f"error:{type(e).__name__}", 0)
            stats[name][f"error:{type(e).__name__}"] += 1
            UNEXPECTED_AT.append((time.time() - STARTED, name, type(e).__name__))
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        by = stats.setdefault(name, {})
        key = status if status in expected else f"UNEXPECTED {status}"
        by[key] = by.get(key, 0) + 1
        if status not in expected:
            UNEXPECTED_AT.append((time.time() - STARTED, name, status))
        if close:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def run_load(port, pid, args, tokens):
    mix = Mix(tokens, args.keys)
    table = mix.classes()
    classes = [(n, b, e) for n, _, b, e in table]
    weights = [w for _, w, _, _ in table]
    stop = asyncio.Event()
    stats = {}
    tasks = [asyncio.create_task(client(port, mix, classes, weights, stop, stats))
             for _ in range(args.conns)]
    samples = []
    global STARTED
    start = STARTED = time.time()
    end = start + args.minutes * 60
    while time.time() < end:
        await asyncio.sleep(args.sample)
        t = time.time() - start
        rss, fds = proc_sample(pid)
        done = sum(sum(v for v in by.values()) for by in stats.values())
        samples.append((t, rss, fds, done))
        print(f"  t={t:6.0f}s rss={rss / 1024:7.1f} MiB fds={fds:5d} requests={done}",
              flush=True)
    stop.set()
    await asyncio.gather(*tasks)
    return stats, samples, time.time() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--sample", type=float, default=5, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of warm-up (default: a fifth of the run, at most 60)")
    ap.add_argument("--keys", type=int, default=5000,
                    help="cold confirm keys cycled (over cache.max_entries = 500)")
    ap.add_argument("--bin", default=os.path.join(REPO, "target/debug/smh-gateway"))
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else min(60, args.minutes * 60 / 5)
    # Stopped early (Ctrl-C, or SIGTERM, even when started in the background where
    # SIGINT is ignored): the processes it started are still stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("soak: stopped"))

    work = tempfile.mkdtemp(prefix="smh-soak-")
    secret = os.path.join(work, "k1.secret")
    with open(secret, "w") as f:
        f.write(os.urandom(24).hex())
    mock_port, gw_port, admin_port = free_port(), free_port(), free_port()
    config = os.path.join(work, "gateway.toml")
    with open(config, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{gw_port}"
shutdown_grace = "5s"
max_connections = 4096

[admin]
listen = "127.0.0.1:{admin_port}"

[upstream]
url = "http://127.0.0.1:{mock_port}"

[[auth.keys]]
kid = "k1"
alg = "HS256"
secret_file = "{secret}"

[[libraries]]
id = "lib1"

[[libraries]]
id = "lib2"

[cache]
max_entries = 500
""")
    mock = subprocess.Popen([args.bin, "mock-upstream", "--listen", f"127.0.0.1:{mock_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(mock_port, mock, "mock-upstream")

    def mint(perms):
        out = subprocess.run([args.bin, "token", "--config", config, "--kid", "k1",
                              "--library", "lib1", "--permissions", perms, "--ttl", "24h"],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    tokens = {"upload": mint("upload_file"), "view": mint("view")}
    gw = subprocess.Popen([args.bin, "serve", "--config", config],
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "stderr"), "w"))
    try:
        wait_port(gw_port, gw, "smh-gateway")
        print(f"soak: {args.minutes} min, {args.conns} connections, gateway pid {gw.pid} "
              f"({args.bin}), warm-up {warmup:.0f}s, sample every {args.sample:.0f}s", flush=True)
        stats, samples, elapsed = asyncio.run(run_load(gw_port, gw.pid, args, tokens))
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            code = gw.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
            code = "killed"
        mock.kill()
        mock.wait()

    total = sum(sum(by.values()) for by in stats.values())
    unexpected = 0
    print(f"\nrequests: {total} in {elapsed:.0f}s ({total / elapsed:.0f}/s); gateway exit {code}")
    print("| class | answers | unexpected |")
    print("|---|---|---:|")
    for name in sorted(stats):
        by = stats[name]
        bad = sum(v for k, v in by.items() if isinstance(k, str))
        unexpected += bad
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(by.items(), key=lambda kv: str(kv[0])))
        print(f"| {name} | {shown} | {bad} |")

    if UNEXPECTED_AT:
        print("unexpected answers at (s into the run): " + ", ".join(
            f"{t:.0f} {n} {st}" for t, n, st in UNEXPECTED_AT[:20]))
    after = [s for s in samples if s[0] >= warmup]
    ok = unexpected == 0 and code == 0
    if len(after) >= 4:
        base = after[0]
        tail = after[-3:]
        rss_end = statistics.mean(s[1] for s in tail)
        fds_end = statistics.mean(s[2] for s in tail)
        rss_growth = (rss_end - base[1]) / base[1] * 100
        fds_growth = (fds_end - base[2]) / base[2] * 100
        peak = max(s[1] for s in samples)
        print(f"\nafter warm-up (t={base[0]:.0f}s): RSS {base[1] / 1024:.1f} -> {rss_end / 1024:.1f} MiB "
              f"({rss_growth:+.1f}%), fds {base[2]} -> {fds_end:.0f} ({fds_growth:+.1f}%); "
              f"peak RSS {peak / 1024:.1f} MiB")
        ok = ok and rss_growth < 5 and fds_growth < 5
    else:
        print("\ntoo few samples after warm-up to measure growth")
        ok = False
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
