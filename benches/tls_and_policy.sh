#!/usr/bin/env bash
# What knowing the caller costs: the same release binary serving plaintext with no policy,
# and TLS with a client CA and a policy (an mTLS caller), measured in one session in ABBA
# order. Prints per mode and side: req/s, p50 and p99 in microseconds, errors.
#   cargo build --release && bash benches/tls_and_policy.sh      # DUR=10s for longer runs
# Needs openssl and python3; uses ports 50061-50062 and 8091-8092 on loopback.
set -euo pipefail
BIN=${BIN:-target/release/token-authority}
D=${D:-$(mktemp -d)}; mkdir -p "$D"; BIN=$(realpath "$BIN"); cd "$D"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout server.key -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -days 2 -out server.crt \
  -extfile <(printf "subjectAltName=IP:127.0.0.1,DNS:localhost") 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench \
  -keyout client.key -out client.csr 2>/dev/null
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -days 2 -out client.crt \
  -extfile <(printf "subjectAltName=URI:spiffe://perf.example/bench") 2>/dev/null
cat > policy.toml <<'P'
[[rule]]
callers = ["spiffe://perf.example/bench"]
subjects = ["{caller}"]
audiences = ["bench"]
max_ttl = "1h"
P
mkdir -m 700 a b
"$BIN" serve --data-dir a --grpc-listen 127.0.0.1:50061 --http-listen 127.0.0.1:8091 \
  --issuer http://bench.test >a.log 2>&1 &
A=$!
"$BIN" serve --data-dir b --grpc-listen 127.0.0.1:50062 --http-listen 127.0.0.1:8092 \
  --issuer https://bench.test --tls-cert server.crt --tls-key server.key --client-ca ca.crt \
  --policy-file policy.toml >b.log 2>&1 &
B=$!
trap 'kill $A $B 2>/dev/null' EXIT
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:8091/readyz >/dev/null &&
    curl -sf --cacert ca.crt https://127.0.0.1:8092/readyz >/dev/null && break
  sleep 0.1
done
plain() { "$BIN" bench "$@" --target http://127.0.0.1:50061 --http-target http://127.0.0.1:8091 --json; }
mtls() { "$BIN" bench "$@" --target https://127.0.0.1:50062 --http-target https://127.0.0.1:8092 \
  --tls-ca ca.crt --tls-cert client.crt --tls-key client.key --subject spiffe://perf.example/bench --json; }
DUR=${DUR:-5s}
for mode in issue verify health; do
  for side in plain mtls mtls plain; do
    r=$($side $mode --duration $DUR --warmup 1s)
    echo "$mode $side $(echo "$r" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["requests_per_s"]), r["latency_us"]["p50"], r["latency_us"]["p99"], r["errors"])')"
  done
done
