#!/usr/bin/env bash
# benches/http_vs_nginx.sh [ROUNDS]
#
# The http example's GET /plaintext against Debian's nginx (nginx-light:
# worker_processes 1, access_log off, `location /plaintext { return 200
# "Hello, World!"; }`), both measured by wrk -t1 -c64 pinned to CPU 1, the
# servers to CPU 0: once without pipelining and once with a pipeline of 16
# requests per write (a Lua script). Each round runs every test on one
# server and then at once on the other (the order flips every round); the
# medians of ROUNDS (default 3) are printed as a Markdown table, with wrk's
# socket errors and non-2xx responses summed.
#
# TLS=1 adds three tests over TLS, both servers with one certificate (ECDSA
# P-256, made here by openssl): `tls-plaintext` (GET /plaintext on
# keep-alive connections), `tls-64k` (GET /bytes/65536 on keep-alive
# connections: nginx serves a 64 KiB file) and `tls-handshakes` (GET
# /plaintext with `Connection: close`: each request a new connection and a
# full handshake, since wrk resumes no session; req/s is handshakes/s).
# SAME_SUITE=1 makes nginx negotiate the example's TLS 1.3 suite
# (TLS_AES_128_GCM_SHA256) instead of the client's first choice.
# The example must then be built with the feature:
#   cargo build --release --features tls --example http
# TESTS="..." picks tests (default: plain pipeline16, and the TLS ones).
#
# BUDGET=PCT (default 30) puts both servers in one cgroup whose CPU quota is
# PCT% of one core (see benches/budget.sh; needs root); BUDGET= runs them
# unbounded. One server is loaded at a time, so each has the whole quota
# while it is measured. DURATION=SECS per run (default 5). Build first:
#   cargo build --release --example http
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${DURATION:-5}
budget=${BUDGET-30}
# shellcheck source=benches/budget.sh
. benches/budget.sh
[ -n "$budget" ] && budget_setup "$budget" netloop-http-vs-nginx
dir=$(mktemp -d)
results=$dir/results

cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:8091;
        location /plaintext { default_type text/plain; return 200 "Hello, World!"; }
        location /bytes/ { root $dir/www; default_type application/octet-stream; }
    }
}
CONF
tls=${TLS:-}
tests=${TESTS:-plain pipeline16${tls:+ tls-plaintext tls-64k tls-handshakes}}
mkdir -p "$dir/www/bytes"
chmod 755 "$dir" "$dir/www" "$dir/www/bytes" # nginx's worker runs as another user
head -c 65536 /dev/zero | tr '\0' x >"$dir/www/bytes/65536"
chmod 644 "$dir/www/bytes/65536"
if [ -n "$tls" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
    # nginx: the same certificate, its defaults otherwise (TLS 1.2 and 1.3).
    sed -i "s|^    server {|    server {\n        listen 127.0.0.1:8093 ssl;\n        ssl_certificate $dir/cert.pem;\n        ssl_certificate_key $dir/key.pem;|" "$dir/nginx.conf"
    # SAME_SUITE=1: nginx negotiates what the example does (netloop::tls
    # prefers TLS_AES_128_GCM_SHA256); otherwise nginx follows the client's
    # order (wrk's OpenSSL: TLS_AES_256_GCM_SHA384 first).
    if [ -n "${SAME_SUITE:-}" ]; then
        sed -i "s|^        ssl_certificate_key .*|&\n        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;|" "$dir/nginx.conf"
    fi
fi
cat >"$dir/pipeline.lua" <<'LUA'
init = function(args)
    local r = {}
    for i = 1, 16 do r[i] = wrk.format(nil, "/plaintext") end
    req = table.concat(r)
end
request = function() return req end
LUA

taskset -c 0 nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
nginx=$!
listen=(--listen tcp://127.0.0.1:8090)
[ -n "$tls" ] && listen+=(--listen tls://127.0.0.1:8092 --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
RUST_LOG=warn,rustls=error taskset -c 0 "${CARGO_TARGET_DIR:-target}/release/examples/http" "${listen[@]}" &
http=$!
trap 'kill -TERM $nginx $http 2>/dev/null || true; wait || true; rm -rf "$dir"; budget_cleanup' EXIT
for port in 8091 8090; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/plaintext" >/dev/null && break; sleep 0.1; done
done
if [ -n "$budget" ]; then
    budget_add $nginx
    for p in $(pgrep -P $nginx); do budget_add "$p"; done # the worker
    budget_add $http
    echo "both servers in $budget_cgroup: $budget% of one core between them, one loaded at a time"
fi

run() { # run SERVER PORT TEST
    local extra=() url="http://127.0.0.1:$2/plaintext"
    case $3 in
    pipeline16) extra=(-s "$dir/pipeline.lua") ;;
    tls-plaintext) url="https://127.0.0.1:$(($2 + 2))/plaintext" ;;
    tls-64k) url="https://127.0.0.1:$(($2 + 2))/bytes/65536" ;;
    tls-handshakes)
        url="https://127.0.0.1:$(($2 + 2))/plaintext"
        extra=(-H "Connection: close")
        ;;
    esac
    local out rps errors
    out=$(taskset -c 1 wrk -t1 -c64 -d"${duration}s" "${extra[@]}" "$url")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    errors=$(awk '/Socket errors:/ {gsub(",", ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $NF} END {print s + 0}' <<<"$out")
    echo "$1 $3 $rps $errors" >>"$results"
}

for round in $(seq "$rounds"); do
    for test in $tests; do
        if [ $((round % 2)) = 1 ]; then
            run netloop 8090 $test
            run nginx 8091 $test
        else
            run nginx 8091 $test
            run netloop 8090 $test
        fi
    done
done

echo
echo "| test | netloop http req/s | nginx req/s | ratio | errors (netloop/nginx) |"
echo "|---|---:|---:|---:|---:|"
for test in $tests; do
    median() { awk -v s="$1" -v t="$test" '$1 == s && $2 == t {print $3}' "$results" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
    errs() { awk -v s="$1" -v t="$test" '$1 == s && $2 == t {e += $4} END {print e + 0}' "$results"; }
    n=$(median netloop)
    g=$(median nginx)
    printf '| %s | %.0f | %.0f | %.2f | %s/%s |\n' "$test" "$n" "$g" "$(echo "$n / $g" | bc -l)" "$(errs netloop)" "$(errs nginx)"
done
echo
echo "(medians of $rounds rounds of ${duration} s; wrk -t1 -c64 on CPU 1, servers on CPU 0${budget:+, $budget% of one core})"
