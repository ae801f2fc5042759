#!/usr/bin/env bash
# benches/instructions.sh [MESSAGES]
#
# User-space instructions per echoed message, netloop's echo example beside
# the peer servers of benches/peers/ (C epoll, mio by hand, tokio), counted
# by callgrind: deterministic for one binary and one input, so it holds on a
# busy machine where throughput does not. Kernel time is not counted: this
# is each server's own cost.
#
# Each server runs twice under callgrind, idle and with MESSAGES (default
# 20000) 64-byte ping-pong messages over 10 connections (round-robin, one in
# flight), and the difference of the two totals over MESSAGES is printed, so
# start-up and shutdown cancel out. Needs valgrind, cc and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "instructions.sh: MESSAGES must be a positive integer, not '$n'" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
target=${CARGO_TARGET_DIR:-target}
peers=$target/peers
mkdir -p "$peers"
cargo build --release --example echo --quiet
cc -O2 -o "$peers/epoll-echo" benches/peers/epoll-echo.c
for p in mio-echo tokio-echo; do
    CARGO_TARGET_DIR="$peers/$p" cargo build --release --quiet --manifest-path "benches/peers/$p/Cargo.toml"
done

total() { # total MESSAGES PORT SERVER_CMD...: instructions the server ran
    local msgs=$1 port=$2 out pid
    shift 2
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$@" >/dev/null 2>"$out.log" &
    pid=$!
    python3 - "$port" "$msgs" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(300):  # callgrind starts slowly
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except OSError:
        time.sleep(0.1)
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
for s in socks:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"m" * 64
for i in range(n):
    s = socks[i % 10]
    s.sendall(msg)
    got = 0
    while got < 64:
        part = s.recv(64 - got)
        if not part:
            sys.exit("the server closed a connection")
        got += len(part)
for s in socks:
    s.close()
PY
    sleep 0.5
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    sed -n 's/^summary: //p;s/^totals: //p' "$out.cg" | head -1
    rm -f "$out" "$out.cg" "$out.log"
}

per_message() { # per_message PORT SERVER_CMD...
    local idle busy
    idle=$(total 0 "$@")
    busy=$(total "$n" "$@")
    python3 -c "import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3])))" "$idle" "$busy" "$n"
}

nl=$(per_message 17410 "$target/release/examples/echo" --listen tcp://127.0.0.1:17410)
c=$(per_message 17411 "$peers/epoll-echo" 127.0.0.1:17411)
m=$(per_message 17412 "$peers/mio-echo/release/mio-echo" 127.0.0.1:17412)
t=$(per_message 17413 "$peers/tokio-echo/release/tokio-echo" 127.0.0.1:17413)
echo "instructions/msg  netloop $nl  c-epoll $c  mio $m  tokio $t"
python3 -c "import sys; n,c,m,t=map(float,sys.argv[1:]); print(f'netloop/c-epoll {n/c:.2f}  netloop/mio {n/m:.2f}  netloop/tokio {n/t:.2f}')" "$nl" "$c" "$m" "$t"
