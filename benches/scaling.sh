#!/usr/bin/env bash
# How netloop's Group scales with loops: the echo example with --loops N
# under the load bench, medians of ROUNDS rounds (loop counts alternate
# within each round, so drift on a busy machine hits every count alike).
#
# MODE=budget (the default) simulates cores on a small machine: the server
# runs in a cgroup whose CPU quota is N x SHARE% of one core (SHARE=25), so
# the server, not the load generator, is the bottleneck, and N loops should
# serve about N times what one loop serves. LOOPS="1 2" by default.
#
# MODE=curve is for a machine with cores to spare: no quota; the server is
# pinned to the first half of the CPUs and the load to the other half.
# LOOPS="1 2 4 8" by default (a count above the server's CPUs measures
# oversubscription, not scaling).
#
# Printed per loop count: msg/s of each round, the median, the speed-up over
# the first count and the efficiency (speed-up / loops); and how the
# server's CPU time was split over its threads (utime + stime from
# /proc/PID/task/TID/stat, all of the run): loop 0 is the main thread, loop
# k the thread netloop-k, the acceptor netloop-accept; "max/min" compares
# the busiest loop thread with the idlest. "quota used" is the server's CPU
# over the run as a share of its quota: well below 100%, the server was not
# the bottleneck (the load generator or the machine was), and that count's
# msg/s is a lower bound on what the server can do. "us CPU/msg" is the
# server's CPU over the whole run (connects and warm-up too) per message
# measured: an upper bound, alike for every run, that does not depend on
# who the bottleneck was.
#
# Run from the project root, as root for MODE=budget (it makes a cgroup):
#   benches/scaling.sh                                  # ping-pong
#   benches/scaling.sh --depth 16                       # pipelined
#   ROUNDS=5 SHARE=30 benches/scaling.sh
#   MODE=curve LOOPS="1 2 4 8" benches/scaling.sh --connections 400
# Load options (passed to `cargo bench --bench load`, long names) default to
#   --threads 2 --connections 100 --size 64 --duration 3
# each kept unless given; any other given option is added.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${MODE:-budget}
rounds=${ROUNDS:-3}
share=${SHARE:-25}
ncpu=$(nproc)
case $mode in
  budget) loops=${LOOPS:-"1 2"} ;;
  curve) loops=${LOOPS:-"1 2 4 8"} ;;
  *) echo "MODE is budget or curve" >&2; exit 2 ;;
esac
load_opts=("$@")
for default in "--threads 2" "--connections 100" "--size 64" "--duration 3"; do
  read -r flag value <<< "$default"
  case " $* " in
    *" $flag "* | *" $flag="*) ;;
    *) load_opts+=("$flag" "$value") ;;
  esac
done

target=${CARGO_TARGET_DIR:-target}
cargo build -q --release --example echo
cargo bench -q --bench load --no-run >/dev/null 2>&1 || cargo bench --bench load --no-run
echo_bin=$target/release/examples/echo

# CPU sets: the server's and the load's (curve mode only).
server_cpus="" load_cpus=""
if [ "$mode" = curve ]; then
  if [ "$ncpu" -lt 2 ]; then echo "MODE=curve needs 2 CPUs or more" >&2; exit 2; fi
  half=$((ncpu / 2))
  server_cpus="0-$((half - 1))"
  load_cpus="$half-$((ncpu - 1))"
fi
pin() { # pin CPUS COMMAND...: becomes COMMAND, pinned when CPUS is set (run it in a subshell)
  local cpus=$1; shift
  if [ -n "$cpus" ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

# The cgroup for the budget: the cgroup v1 cpu controller or v2's cpu.max.
cg=""
quota_set() { :; }
if [ "$mode" = budget ]; then
  if [ -d /sys/fs/cgroup/cpu ] && mkdir -p "/sys/fs/cgroup/cpu/netloop-scaling.$$" 2>/dev/null; then
    cg=/sys/fs/cgroup/cpu/netloop-scaling.$$
    echo 10000 > "$cg/cpu.cfs_period_us"
    quota_set() { echo "$1" > "$cg/cpu.cfs_quota_us"; }
  elif [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir -p "/sys/fs/cgroup/netloop-scaling.$$" 2>/dev/null; then
    cg=/sys/fs/cgroup/netloop-scaling.$$
    quota_set() { echo "$1 10000" > "$cg/cpu.max"; }
  else
    echo "MODE=budget needs a writable cgroup cpu controller (run as root), or use MODE=curve" >&2
    exit 2
  fi
fi
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ -n "$cg" ]; then rmdir "$cg" 2>/dev/null || true; fi
}
trap cleanup EXIT

# CPU ticks of each thread of a process: "name ticks" lines.
thread_ticks() {
  for t in /proc/"$1"/task/*; do
    [ -r "$t/stat" ] || continue
    # comm is in parentheses; utime and stime are fields 14 and 15 of the line.
    sed -E 's/^[0-9]+ \((.*)\) (.*)$/\1 \2/' "$t/stat" | awk '{print $1, $13 + $14}'
  done | sort
}

work=$(mktemp -d)
results=$work/results # lines: loops msg/s cpu-split
: > "$results"
echo "mode $mode, $rounds round(s), load: ${load_opts[*]}" >&2
[ "$mode" = budget ] && echo "server quota: loops x $share% of one core" >&2
[ "$mode" = curve ] && echo "server on CPUs $server_cpus, load on CPUs $load_cpus" >&2

for r in $(seq "$rounds"); do
  for n in $loops; do
    [ "$mode" = budget ] && quota_set $((n * share * 100))
    (pin "$server_cpus" "$echo_bin" --loops "$n" --listen tcp://127.0.0.1:0 2> "$work/server.log") &
    server=$!
    [ -n "$cg" ] && echo "$server" > "$cg/cgroup.procs"
    port=""
    for _ in $(seq 100); do
      port=$(sed -nE 's/.*echo listening on .*:([0-9]+)\)$/\1/p' "$work/server.log" | head -n 1)
      [ -n "$port" ] && break
      sleep 0.05
    done
    [ -n "$port" ] || { echo "the echo example did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
    thread_ticks "$server" > "$work/before"
    t0=$(date +%s.%N)
    report=$( (pin "$load_cpus" cargo bench -q --bench load -- --addr "tcp://127.0.0.1:$port" \
      "${load_opts[@]}" --json 2> "$work/load.err") | tail -n 1) || true
    t1=$(date +%s.%N)
    thread_ticks "$server" > "$work/after"
    kill "$server"; wait "$server" 2>/dev/null || true
    server=""
    if [ -z "$report" ]; then echo "the load bench failed:" >&2; cat "$work/load.err" >&2; exit 1; fi
    mps=$(echo "$report" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["messages_per_sec"])')
    secs=$(echo "$report" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["duration_s"])')
    split=$(python3 - "$work/before" "$work/after" "$t0" "$t1" "$n" "$mode" "$share" "$mps" "$secs" <<'PY'
import os, sys
def read(p):
    d = {}
    for line in open(p):
        name, ticks = line.rsplit(None, 1)
        d[name] = d.get(name, 0) + int(ticks)
    return d
b, a = read(sys.argv[1]), read(sys.argv[2])
delta = {k: a[k] - b.get(k, 0) for k in a}
loops = {("0" if k == "echo" else k.split("-", 1)[1]): v for k, v in delta.items()
         if k == "echo" or (k.startswith("netloop-") and k != "netloop-accept")}
parts = [f"{k}:{loops[k]}" for k in sorted(loops, key=int)]
if delta.get("netloop-accept"):
    parts.append(f"acceptor:{delta['netloop-accept']}")
busy = [v for v in loops.values()]
ratio = f" max/min {max(busy) / max(min(busy), 1):.2f}" if len(busy) > 1 else ""
cores = sum(delta.values()) / os.sysconf("SC_CLK_TCK") / (float(sys.argv[4]) - float(sys.argv[3]))
n, mode, share = int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
use = f"quota used {cores / (n * share / 100):.0%}" if mode == "budget" else f"server {cores:.2f} cores"
# CPU of the whole run (connects and warm-up too) per message measured: an
# upper bound, computed alike for every run.
us = sum(delta.values()) / os.sysconf("SC_CLK_TCK") * 1e6 / max(float(sys.argv[8]) * float(sys.argv[9]), 1)
print(f"{use}, {us:.2f} us CPU/msg, ticks " + " ".join(parts) + ratio)
PY
)
    echo "round $r  loops $n  $mps msg/s  $split" >&2
    echo "$n $mps $split" >> "$results"
  done
done

python3 - "$results" "$mode" "$share" <<'PY'
import statistics, sys
path, mode, share = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = {}
for line in open(path):
    n, mps, split = line.split(None, 2)
    runs.setdefault(int(n), []).append((float(mps), split.strip()))
def cpu(split):
    return float(split.split(" us CPU/msg")[0].rsplit(None, 1)[1])
base_n = min(runs)
base = statistics.median(m for m, _ in runs[base_n])
print(f"{'loops':>5} {'quota':>6} {'median msg/s':>13} {'speed-up':>9} {'efficiency':>10} {'us CPU/msg':>10}  rounds (msg/s)")
for n in sorted(runs):
    med = statistics.median(m for m, _ in runs[n])
    quota = f"{n * share}%" if mode == "budget" else "-"
    up = med / base
    eff = up / (n / base_n)
    rounds = " ".join(f"{m:,.0f}" for m, _ in runs[n])
    us = statistics.median(cpu(s) for _, s in runs[n])
    print(f"{n:>5} {quota:>6} {med:>13,.0f} {up:>8.2f}x {eff:>10.2f} {us:>10.2f}  {rounds}")
print("server CPU by thread (clock ticks, last round):")
for n in sorted(runs):
    print(f"  loops {n}: {runs[n][-1][1]}")
PY
