#!/usr/bin/env bash
# benches/proxy_vs_haproxy.sh [ROUNDS]
#
# The proxy example against HAProxy (Debian's `haproxy`, `mode tcp`,
# `nbthread 1`), both relaying to the same server, the echo example, and
# each held to the same CPU budget: 30% of one core, by a cgroup's CPU
# quota (cgroup v2 `cpu.max` = "30000 100000", or on a cgroup v1 machine
# `cpu.cfs_quota_us` = 30000 per `cpu.cfs_period_us` = 100000). The load
# comes from the load bench:
#   cargo bench --bench load -- --addr tcp://127.0.0.1:PORT --connections 50 --size 512 --duration 4 --json
# as ping-pong, and with --depth 16. Each round runs every case on one
# proxy and then at once on the other (the order flips every round); the
# medians of ROUNDS (default 3) are printed as a Markdown table: messages
# per second of each proxy, their ratio, and each proxy's CPU time (utime +
# stime from /proc/PID/stat) per message. A first table row, the echo
# server reached directly without a quota, shows what the load bench and
# the echo server manage on their own.
#
# Needs root (for the cgroups) and haproxy (apt-get install haproxy).
# Builds what it runs first (release profile).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=4
warmup=1
echo_port=17400 proxy_port=17401 haproxy_port=17402
quota="30000 100000" # 30% of one core

command -v haproxy >/dev/null || { echo "needs haproxy (apt-get install haproxy)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build -q --release --example proxy --example echo
cargo bench -q --bench load --no-run 2>/dev/null

work=$(mktemp -d)
results=$work/results
pids=()
cgroups=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for cg in "${cgroups[@]}"; do rmdir "$cg" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# A cgroup holding one process to the quota: v2 if the unified hierarchy
# has the cpu controller, else v1's cpu hierarchy.
limit() { # limit NAME PID
    local cg
    if grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
        cg=/sys/fs/cgroup/netloop-bench-$1
        mkdir -p "$cg"
        echo "$quota" >"$cg/cpu.max"
    elif [ -d /sys/fs/cgroup/cpu ]; then
        cg=/sys/fs/cgroup/cpu/netloop-bench-$1
        mkdir -p "$cg"
        echo "${quota#* }" >"$cg/cpu.cfs_period_us"
        echo "${quota% *}" >"$cg/cpu.cfs_quota_us"
    else
        echo "no cgroup cpu controller found" >&2
        exit 1
    fi
    cgroups+=("$cg")
    echo "$2" >"$cg/cgroup.procs"
    echo "$1 (pid $2) limited by $cg" >&2
}

RUST_LOG=warn "$target/release/examples/echo" --listen tcp://127.0.0.1:$echo_port &
pids+=($!)
RUST_LOG=warn "$target/release/examples/proxy" --listen tcp://127.0.0.1:$proxy_port \
    --to tcp://127.0.0.1:$echo_port &
proxy=$!
pids+=($proxy)
cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend front
    bind 127.0.0.1:$haproxy_port
    default_backend back
backend back
    server s1 127.0.0.1:$echo_port
EOF
haproxy -db -q -f "$work/haproxy.cfg" &
haproxy=$!
pids+=($haproxy)
for port in $echo_port $proxy_port $haproxy_port; do
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
        sleep 0.1
    done
done
for pid in "${pids[@]}"; do kill -0 "$pid" || { echo "a server did not start" >&2; exit 1; }; done
limit proxy $proxy
limit haproxy $haproxy

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, 1/100 s

run() { # run NAME PORT PID DEPTH: one load run; its msg/s and the server's CPU ticks
    local before out
    before=$(ticks "$3")
    out=$(cargo bench -q --bench load -- --addr "tcp://127.0.0.1:$2" --connections 50 \
        --size 512 --depth "$4" --duration $duration --warmup $warmup --json --quiet 2>>"$work/load.log" | tail -n 1)
    echo "$1 $4 $(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["messages_per_sec"], r["errors"])') $(($(ticks "$3") - before))" |
        tee -a "$results"
}

echo_pid=${pids[0]}
for depth in 1 16; do run direct $echo_port "$echo_pid" $depth; done
for round in $(seq "$rounds"); do
    for depth in 1 16; do
        if [ $((round % 2)) = 1 ]; then
            run proxy $proxy_port $proxy $depth
            run haproxy $haproxy_port $haproxy $depth
        else
            run haproxy $haproxy_port $haproxy $depth
            run proxy $proxy_port $proxy $depth
        fi
    done
done

python3 - "$results" $((duration + warmup)) <<'PY'
import collections, statistics, sys
rate, cpu = collections.defaultdict(list), collections.defaultdict(list)
secs = float(sys.argv[2])  # the server's CPU is counted over warm-up and run
for line in open(sys.argv[1]):
    name, depth, mps, errors, ticks = line.split()
    assert int(errors) == 0, f"load errors: {line}"
    rate[name, depth].append(float(mps))
    cpu[name, depth].append(int(ticks) / 100 / (float(mps) * secs) * 1e6)  # µs per message
print("\n| load (50 conns, 512 B) | direct to echo msg/s | proxy example msg/s | HAProxy msg/s | proxy / HAProxy | proxy CPU µs/msg | HAProxy CPU µs/msg |")
print("|---|---:|---:|---:|---:|---:|---:|")
for depth, what in (("1", "ping-pong"), ("16", "--depth 16")):
    d, p, h = (statistics.median(rate[n, depth]) for n in ("direct", "proxy", "haproxy"))
    pc, hc = (statistics.median(cpu[n, depth]) for n in ("proxy", "haproxy"))
    print(f"| {what} | {d:,.0f} | {p:,.0f} | {h:,.0f} | {p / h:.2f} | {pc:.2f} | {hc:.2f} |")
PY
