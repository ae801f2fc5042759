#!/usr/bin/env bash
# benches/kv_instructions.sh [N]
#
# User-space instructions per GET request, kv example and redis-server, under
# callgrind (stable on a noisy machine): each server runs twice, idle and
# with N (default 20000) GETs from `redis-benchmark -c 10 -n N -t get -P 1`;
# the difference of the two totals over N is printed, so start-up and
# shutdown cancel out. Needs valgrind, redis-server and redis-tools, and
# python3. Build first:
#   cargo build --release --example kv
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}

run() { # run REQUESTS PORT SERVER_CMD...: total instructions of the server
    local requests=$1 port=$2 out pid
    shift 2
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$@" >/dev/null 2>"$out.log" &
    pid=$!
    for _ in $(seq 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    if [ "$requests" -gt 0 ]; then
        redis-benchmark -p "$port" -c 10 -n "$requests" -t get -P 1 -q >/dev/null
    fi
    sleep 0.5
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    sed -n 's/^summary: //p;s/^totals: //p' "$out.cg" | head -1
    rm -f "$out" "$out.cg" "$out.log"
}

per_request() { # per_request PORT SERVER_CMD...
    local i0 in
    i0=$(run 0 "$@")
    in=$(run "$n" "$@")
    python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3]):.0f}')" "$i0" "$in" "$n"
}

echo "redis-server: $(per_request 6390 redis-server --port 6390 --save '' --appendonly no --daemonize no) instructions per GET"
echo "kv:           $(per_request 6380 target/release/examples/kv --listen tcp://127.0.0.1:6380) instructions per GET"
