#!/usr/bin/env bash
# benches/compare.sh [LOAD OPTIONS]
#
# netloop's echo example against three echo servers written for this
# comparison (benches/peers/): a bare C epoll loop (epoll-echo.c), the same
# loop by hand on mio (mio-echo), and a tokio current-thread echo
# (tokio-echo). Each server in turn runs alone, pinned to CPU 0, while the
# load bench (`cargo bench --bench load`) drives it from CPU 1 with the LOAD
# OPTIONS given (its defaults otherwise; --addr, --json and --quiet are added
# here). The order of the servers flips every round. Printed: each run, then
# a table of the medians over the rounds: msg/s, MiB/s echoed, netloop's
# msg/s over each server's, and each server's CPU time (user + system, from
# /proc/PID/stat, sampled every 50 ms and taken over the measured window)
# per message and in percent of one core.
#
# Unthrottled (the default), the server has all of CPU 0 and the figures
# measure the pair of processes on this machine: a server faster than the
# load generator shows as idle CPU, not as more msg/s, so read the CPU per
# message too. With BUDGET=PCT each server runs in a cgroup whose CPU quota
# is PCT% of one core: the server is the bottleneck, and msg/s is how much
# it serves on that budget.
#
# Environment:
#   ROUNDS=N        rounds (default 3)
#   BUDGET=PCT      CPU quota of each server, percent of one core (cgroup v2
#                   cpu.max, or the v1 cpu controller where v2 has none;
#                   needs root)
#   SERVERS="..."   which servers, in round-one order (default
#                   "netloop epoll mio tokio")
#   PORT=P          first port; server i listens on P+i (default 7100)
#
# Examples:
#   benches/compare.sh --connections 50 --size 512 --duration 4
#   BUDGET=30 ROUNDS=5 benches/compare.sh --connections 50 --size 512 --duration 4 --depth 16
#   BUDGET=30 benches/compare.sh --connections 50 --size 512 --duration 4 --firehose
#
# Needs: cc, taskset (util-linux), python3, two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
budget=${BUDGET:-}
servers=${SERVERS:-netloop epoll mio tokio}
base_port=${PORT:-7100}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target/peers"
peers=$(cd "$target/peers" && pwd)

die() { echo "compare.sh: $*" >&2; exit 1; }

load_opts=()
for a in "$@"; do
    case $a in
    --addr | --addr=* | --suite | --csv | --csv=* | --transport | --transport=*)
        die "$a is not for compare.sh: it picks the servers itself" ;;
    --json | --quiet | -q) ;; # added anyway
    *) load_opts+=("$a") ;;
    esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
[ "$(nproc)" -ge 2 ] || die "needs two CPUs (server on CPU 0, load on CPU 1)"
for s in $servers; do
    case $s in netloop | epoll | mio | tokio) ;; *) die "unknown server '$s' (netloop, epoll, mio, tokio)" ;; esac
done

# ----- The CPU budget -----
# shellcheck source=benches/budget.sh
. benches/budget.sh
[ -n "$budget" ] && budget_setup "$budget" netloop-compare
trap budget_cleanup EXIT

# ----- Build -----
echo "building (release) ..." >&2
cargo build --release --example echo --quiet
cargo bench --bench load --no-run --quiet
cc -O2 -o "$peers/epoll-echo" benches/peers/epoll-echo.c
for p in mio-echo tokio-echo; do
    CARGO_TARGET_DIR="$peers/$p" cargo build --release --quiet --manifest-path "benches/peers/$p/Cargo.toml"
done

command_of() { # command_of SERVER PORT: the command line that starts it
    case $1 in
    netloop) echo "$target/release/examples/echo --listen tcp://127.0.0.1:$2" ;;
    epoll) echo "$peers/epoll-echo 127.0.0.1:$2" ;;
    mio) echo "$peers/mio-echo/release/mio-echo 127.0.0.1:$2" ;;
    tokio) echo "$peers/tokio-echo/release/tokio-echo 127.0.0.1:$2" ;;
    esac
}

# ----- One run -----
results=$(mktemp)
logs=$(mktemp -d)
server_pid=""
sampler_pid=""
stop_server() {
    if [ -n "$sampler_pid" ]; then
        kill "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
    fi
    sampler_pid=""
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
trap 'stop_server; budget_cleanup; rm -rf "$results" "$logs"' EXIT
trap 'exit 130' INT TERM

sample() { # sample PID: "seconds cpu_ticks" of the process every 50 ms until killed
    local rest f
    while read -r rest <"/proc/$1/stat" 2>/dev/null; do
        read -ra f <<<"${rest##*) }" # the fields after the command name: state is f[0]
        echo "$EPOCHREALTIME $((f[11] + f[12]))"  # utime + stime
        sleep 0.05
    done
}

run() { # run ROUND SERVER PORT LOAD_OPTIONS...
    local round=$1 server=$2 port=$3 log out t_end
    shift 3
    log="$logs/$server.$round"
    # shellcheck disable=SC2046 # the command line is split into words on purpose
    RUST_LOG=warn taskset -c 0 $(command_of "$server" "$port") 2>"$log.server" &
    server_pid=$!
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$server_pid" 2>/dev/null || die "$server did not start: $(cat "$log.server")"
        sleep 0.05
    done
    [ -n "$budget" ] && budget_add "$server_pid"
    sample "$server_pid" >"$log.cpu" &
    sampler_pid=$!
    taskset -pc 1 "$sampler_pid" >/dev/null # off the server's CPU
    out=$(taskset -c 1 cargo bench --quiet --bench load -- --addr "tcp://127.0.0.1:$port" --json --quiet "$@" 2>"$log.load" | tail -1) ||
        die "the load bench failed against $server: $(tail -5 "$log.load")"
    t_end=$EPOCHREALTIME
    stop_server
    python3 - "$round" "$server" "$t_end" "$log.cpu" "$out" "$(getconf CLK_TCK)" <<'PY' | tee -a "$results"
import json, sys
round_, server, t_end, cpu_file, out, hz = sys.argv[1:]
r = json.loads(out)
t_end, hz = float(t_end), int(hz)
samples = [tuple(map(float, l.split())) for l in open(cpu_file) if len(l.split()) == 2]
def at(t):  # the server's CPU ticks at time t, interpolated between samples
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] >= t]
    if not before or not after:
        return (before or after)[-1 if before else 0][1]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
d = float(r["duration_s"])
# The window ends just before the load exits (it reports and stops at once).
ticks = at(t_end) - at(t_end - d)
msgs = r["messages_per_sec"] * d
us_per_msg = ticks / hz * 1e6 / msgs if msgs else float("nan")
print(f"{round_} {server} {r['messages_per_sec']:.1f} {r['bytes_per_sec']:.1f} {r['errors']} "
      f"{us_per_msg:.4f} {100 * ticks / hz / d:.1f} {str(r.get('client_saturated', False)).lower()}")
PY
}

ports=()
i=0
for s in $servers; do
    ports+=("$s:$((base_port + i))")
    i=$((i + 1))
done
port_of() { local p; for p in "${ports[@]}"; do [ "${p%%:*}" = "$1" ] && echo "${p#*:}"; done; }

echo "compare: servers on CPU 0${budget:+ with a budget of $budget% of it}, load on CPU 1; load options: ${load_opts[*]:-(defaults)}; $rounds rounds" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "round server msg/s bytes/s errors server_cpu_us/msg server_cpu_% client_saturated" >&2
read -ra order <<<"$servers"
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 0 ]; then
        list=()
        for ((k = ${#order[@]} - 1; k >= 0; k--)); do list+=("${order[k]}"); done
    else
        list=("${order[@]}")
    fi
    for s in "${list[@]}"; do
        run "$round" "$s" "$(port_of "$s")" "${load_opts[@]}" >&2
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$results" "${budget:-}" "${load_opts[*]}" <<'PY'
import collections, statistics, sys
path, budget, opts = sys.argv[1:]
rows = collections.defaultdict(list)
order = []
for line in open(path):
    rnd, server, mps, bps, errors, us, pct, sat = line.split()
    if server not in order:
        order.append(server)
    rows[server].append((float(mps), float(bps), int(errors), float(us), float(pct), sat == "true"))
med = lambda server, k: statistics.median(r[k] for r in rows[server])
base = med("netloop", 0) if "netloop" in rows else None
print(f"\nload options: {opts or '(defaults)'}; " +
      (f"each server limited to {budget}% of one core" if budget else "servers unthrottled") +
      f"; medians of {len(next(iter(rows.values())))} rounds")
print("\n| server | msg/s | MiB/s | netloop / server | server CPU µs/msg | server CPU % of a core | errors |")
print("|---|---:|---:|---:|---:|---:|---:|")
for s in order:
    ratio = f"{base / med(s, 0):.2f}" if base and med(s, 0) else "-"
    errors = sum(r[2] for r in rows[s])
    print(f"| {s} | {med(s, 0):,.0f} | {med(s, 1) / 2**20:,.1f} | {ratio} | {med(s, 3):.3f} | {med(s, 4):.0f} | {errors} |")
if any(r[5] for v in rows.values() for r in v):
    print("\nwarning: the load generator was saturated in some runs: those figures are the client's limit")
PY
