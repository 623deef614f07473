#!/usr/bin/env bash
# scripts/bench.sh: the whole gateway against nginx and HAProxy, with the shared
# harness (../shared/bench), and the result written into README.md between
# `<!-- bench:begin -->` and `<!-- bench:end -->`, with the date and the machine.
#
#   scripts/bench.sh                      run compare.sh and instructions.sh, write README
#   scripts/bench.sh --from CMP [INSTR]   only write README, from saved outputs of
#                                         compare.sh (and instructions.sh)
#
# Env: BENCH (default ../shared/bench), README (default README.md), and the
# harness's own (ROUNDS, DURATION, N, ...). Needs a release build (cargo build
# --release), nginx, haproxy, wrk and valgrind, as ../shared/bench/README.md says.
# The harness owns 127.0.0.1:18080-18093 while it runs.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$root/../shared/bench}
README=${README:-$root/README.md}
COMPARE_TARGETS=(direct nginx nginx-cached haproxy gateway gateway-cached gateway-rs256 gateway-es256)
# instructions.sh needs a foreground mode (fg) that HAProxy's targets lack.
INSTR_TARGETS=(nginx nginx-cached gateway gateway-cached gateway-rs256 gateway-es256)

die() { echo "bench.sh: $*" >&2; exit 1; }

if [ "${1:-}" = --from ]; then
    [ $# -ge 2 ] || die "--from needs a saved compare.sh output"
    compare_out=$2
    instr_out=${3:-}
else
    [ $# -eq 0 ] || die "usage: scripts/bench.sh [--from COMPARE_OUTPUT [INSTRUCTIONS_OUTPUT]]"
    [ -x "$BENCH/compare.sh" ] || die "no harness at $BENCH (set BENCH=...)"
    [ -x "$root/target/release/smh-gateway" ] || die "build first: cargo build --release"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    compare_out=$work/compare.txt
    instr_out=$work/instructions.txt
    (cd "$root" && "$BENCH/compare.sh" "${COMPARE_TARGETS[@]}") | tee "$compare_out"
    if [ -x "$BENCH/instructions.sh" ] && command -v valgrind >/dev/null; then
        (cd "$root" && "$BENCH/instructions.sh" "${INSTR_TARGETS[@]}") | tee "$instr_out"
    else
        echo "bench.sh: no valgrind or instructions.sh: instructions per request skipped" >&2
        : > "$instr_out"
    fi
fi
[ -f "$compare_out" ] || die "$compare_out: no such file"
[ -z "$instr_out" ] || [ -f "$instr_out" ] || die "$instr_out: no such file"

python3 - "$README" "$compare_out" "${instr_out:-}" "$root" <<'PY'
import os, re, subprocess, sys, time

readme, compare, instr, root = sys.argv[1:5]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

def lines(path):
    return open(path, encoding="utf-8").read().splitlines() if path else []

def table(text):
    """The Markdown table in a harness output: its header, separator and rows."""
    rows = [l for l in text if l.startswith("|")]
    if len(rows) < 3 or not re.match(r"^\|[-:| ]+\|$", rows[1]):
        return []
    return rows

cmp = lines(compare)
rows = table(cmp)
if not rows:
    sys.exit(f"bench.sh: {compare} holds no result table (did compare.sh finish?)")
instr_rows = table(lines(instr))

# The date and machine: as compare.sh recorded them, else now and this machine.
meta = {m[1]: m[2].strip() for l in cmp if (m := re.match(r"^(date|host|pinning): (.*)$", l))}
meta |= {"rounds": l.strip() for l in cmp if l.startswith("rounds=")}
date = meta.get("date") or time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
host = meta.get("host")
if not host:
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
    host = f"{os.uname().sysname} {os.uname().release} {os.uname().machine}; {os.cpu_count()} cpus; {model}"
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.strip()
except Exception:
    commit = "unknown"

block = [BEGIN,
         f"Measured {date} at commit {commit} by `scripts/bench.sh`; machine: {host}.",
         *( [f"Harness: {meta['pinning']}; {meta['rounds']}."] if "pinning" in meta and "rounds" in meta else []),
         "",
         "**Throughput, latency, CPU and memory** (`compare.sh`):",
         "",
         *rows]
if instr_rows:
    block += ["", "**Instructions per request** (`instructions.sh`, callgrind, user space only):", "", *instr_rows]
block.append(END)

text = open(readme, encoding="utf-8").read()
if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
    sys.exit(f"bench.sh: {readme} needs exactly one {BEGIN} ... {END} pair")
head, rest = text.split(BEGIN, 1)
_, tail = rest.split(END, 1)
open(readme, "w", encoding="utf-8").write(head + "\n".join(block) + tail)
print(f"bench.sh: wrote {len(rows) - 2} compare rows and {max(len(instr_rows) - 2, 0)} instruction rows into {readme}")
PY
