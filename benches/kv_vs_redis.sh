#!/usr/bin/env bash
# benches/kv_vs_redis.sh [ROUNDS]
#
# The kv example against Debian's redis-server, both measured by the real
# redis-benchmark: both servers pinned to CPU 0, the client to CPU 1. Each
# round runs every test on one server and then at once on the other (the
# order flips every round), so the two of a pair see the same machine; the
# medians of ROUNDS (default 3) are printed as a Markdown table, with the
# servers' CPU time (user + system, from /proc) per request, which a
# client-bound run hides.
#
# BUDGET=PCT puts both servers in one cgroup whose CPU quota is PCT% of one
# core (cgroup v2 cpu.max, or v1's cpu controller; needs root, see
# benches/budget.sh). One server is loaded at a time, so each has the whole
# quota while it is measured: req/s is then what a server serves on that
# budget, and the CPU per request what each request costs it. Build first:
#   cargo build --release --example kv
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
requests=300000
budget=${BUDGET:-}
# shellcheck source=benches/budget.sh
. benches/budget.sh
[ -n "$budget" ] && budget_setup "$budget" netloop-kv-vs-redis
results=$(mktemp)

taskset -c 0 redis-server --port 6390 --save '' --appendonly no --daemonize no >/dev/null &
redis=$!
RUST_LOG=warn taskset -c 0 "${CARGO_TARGET_DIR:-target}/release/examples/kv" --listen tcp://127.0.0.1:6380 &
kv=$!
trap 'kill -TERM $redis $kv 2>/dev/null || true; wait || true; rm -f "$results"; budget_cleanup' EXIT
for port in 6390 6380; do
    for _ in $(seq 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.1; done
done
if [ -n "$budget" ]; then
    budget_add $redis
    budget_add $kv
    echo "both servers in $budget_cgroup: $budget% of one core between them, one loaded at a time"
fi

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # CPU time of a process, 1/100 s

run() { # run SERVER PORT PID P TEST: one redis-benchmark, its req/s and the server's CPU
    local before rps
    before=$(ticks "$3")
    rps=$(taskset -c 1 redis-benchmark -p "$2" -c 50 -n $requests -t "$5" -P "$4" -q \
        | tr '\r' '\n' | sed -n 's/^[A-Z_]*: \([0-9.]*\) requests per second.*/\1/p')
    echo "$1 $4 $5 $rps $(( $(ticks "$3") - before ))" | tee -a "$results"
}

for round in $(seq "$rounds"); do
    for p in 1 16; do
        for test in ping_inline set get; do
            if [ $((round % 2)) = 1 ]; then
                run redis 6390 $redis $p $test
                run kv 6380 $kv $p $test
            else
                run kv 6380 $kv $p $test
                run redis 6390 $redis $p $test
            fi
        done
    done
done

python3 - "$results" "$requests" "$budget" <<'PY'
import collections, statistics, sys
rps, cpu = collections.defaultdict(list), collections.defaultdict(list)
for line in open(sys.argv[1]):
    server, p, test, r, ticks = line.split()
    rps[server, p, test].append(float(r))
    cpu[server, p].append(int(ticks) * 1e4 / int(sys.argv[2]))  # µs per request
budget = sys.argv[3]
print("\n" + (f"both servers limited to {budget}% of one core" if budget else "servers unthrottled")
      + f"; medians of {len(next(iter(rps.values())))} rounds")
print("\n| pipeline | test | redis-server | kv | kv / redis |")
print("|---|---|---:|---:|---:|")
for p in ("1", "16"):
    for test in ("ping_inline", "set", "get"):
        r, k = (statistics.median(rps[s, p, test]) for s in ("redis", "kv"))
        print(f"| -P {p} | {test.upper()} (req/s) | {r:,.0f} | {k:,.0f} | {k / r:.2f} |")
    r, k = (statistics.median(cpu[s, p]) for s in ("redis", "kv"))
    print(f"| -P {p} | server CPU (µs/req) | {r:.2f} | {k:.2f} | {k / r:.2f} |")
PY
