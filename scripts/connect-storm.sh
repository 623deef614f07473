#!/usr/bin/env bash
# connect-storm.sh [gateway | nginx | HOST:PORT] [connect-storm.py options...]
#
# COUNT (default 3000) new connections in a row, each one request then close, and
# the connects per second and the number that took >= 1 s (dropped SYNs) - see
# connect-storm.py. The target:
#   gateway    (default) target/debug/smh-gateway (BIN= to change) started here in
#              front of its own mock-upstream, on free loopback ports
#   nginx      a private nginx (Debian's package) answering 200 on a free port, for
#              comparison
#   HOST:PORT  anything already running
# Everything this script starts, it stops.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
target=${1:-gateway}; [ $# -gt 0 ] && shift
work=$(mktemp -d /tmp/smh-storm.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2; exit 1
}

case "$target" in
gateway)
    bin=${BIN:-$repo/target/debug/smh-gateway}
    mock=$(free_port); gw=$(free_port); admin=$(free_port)
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/k1.secret"
    cat > "$work/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$gw"
[admin]
listen = "127.0.0.1:$admin"
[upstream]
url = "http://127.0.0.1:$mock"
[[auth.keys]]
kid = "k1"
alg = "HS256"
secret_file = "$work/k1.secret"
TOML
    "$bin" mock-upstream --listen "127.0.0.1:$mock" >/dev/null 2>&1 & pids+=($!)
    wait_port "$mock"
    "$bin" serve --config "$work/gateway.toml" >/dev/null 2>"$work/stderr" & pids+=($!)
    wait_port "$gw"
    tok=$("$bin" token --config "$work/gateway.toml" --kid k1 --library lib1 --permissions upload_file)
    addr="127.0.0.1:$gw"
    set -- --path "/api/v1/file/lib1/-/ck-storm?renew&access_token=$tok" "$@"
    ;;
nginx)
    port=$(free_port)
    mkdir -p "$work/logs"
    cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/logs/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
CONF
    nginx -p "$work" -c "$work/nginx.conf"
    wait_port "$port"
    pids+=("$(cat "$work/nginx.pid")")
    addr="127.0.0.1:$port"
    ;;
*)
    addr=$target
    ;;
esac
python3 "$here/connect-storm.py" "$addr" "$@"
