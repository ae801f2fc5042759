#!/usr/bin/env bash
# benches/tls_memory.sh [N]
#
# Server RSS per idle connection, plain TCP against TLS: the echo example
# (built with the tls feature) serving tcp:// and tls:// with one ECDSA
# P-256 certificate made here by openssl; a Python client opens N
# connections (default 10,000, the warm-up one included), one after another,
# and over TLS makes one round trip on each (so the handshake, the session
# tickets and the first record are behind it), then leaves them idle. The
# server's VmRSS is read from /proc once it stops changing, before and after.
# With nginx installed, nginx (worker_processes 1, `ssl` on the same
# certificate, a `return 200` location) is measured the same way: its
# worker's RSS, over TLS, the round trip an HTTP request.
# Build first: cargo build --release --features tls --example echo
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
ulimit -n $((n + 200)) # each process holds one end of each connection
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null

cat >"$dir/idle.py" <<'PY'
import socket, ssl, sys, time
n, mode, port, pid, ca = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
def settled():  # three equal reads 100 ms apart, or the last of 30
    last, same = rss(), 0
    for _ in range(30):
        time.sleep(0.1)
        now = rss()
        same, last = (same + 1 if now == last else 0), now
        if same == 2:
            break
    return last
ctx = ssl.create_default_context(cafile=ca)
probe = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n" if mode == "nginx-tls" else b"x"
def conn():
    s = socket.create_connection(("127.0.0.1", port))
    if mode != "tcp":
        s = ctx.wrap_socket(s, server_hostname="localhost")
        s.sendall(probe)
        s.recv(4096)
    return s
held = [conn()]
base = settled()
start = time.time()
held += [conn() for _ in range(n - 1)]
idle = settled()
print(f"| {mode} | {n - 1} | {base} | {idle} | {(idle - base) * 1024 / (n - 1):.0f} |  ({time.time() - start:.1f} s to open)")
PY

echo "| server | connections added | RSS before (KiB) | RSS idle (KiB) | bytes per connection |"
echo "|---|---:|---:|---:|---:|"
for mode in tcp tls; do
    RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/examples/echo" --listen tcp://127.0.0.1:7200 \
        --listen tls://127.0.0.1:7201 --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" &
    pid=$!
    pids+=($pid)
    sleep 1
    port=7200
    [ $mode = tls ] && port=7201
    python3 "$dir/idle.py" "$n" "$mode" $port $pid "$dir/cert.pem"
    kill $pid
    wait $pid 2>/dev/null || true
done
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
    cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $((n + 200));
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $((n + 100)); }
http {
    access_log off;
    keepalive_timeout 300s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:7203 ssl;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
        location /plaintext { default_type text/plain; return 200 "Hello, World!"; }
    }
}
CONF
    PATH=$PATH:/usr/sbin nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
    pids+=($!)
    sleep 1
    worker=$(pgrep -P "${pids[-1]}" | head -1)
    python3 "$dir/idle.py" "$n" nginx-tls 7203 "$worker" "$dir/cert.pem"
fi
