#!/usr/bin/env bash
# The Transaction Token figures of the README: ExchangeToken against IssueToken on the same
# server, per algorithm (the server's only one, so the subject token and the Txn-Token use
# it too), in ROUNDS rounds, the order reversed every other round (ABBA). The subject token
# is one of the server's own access tokens, with a scope claim, trusted through an
# [[issuer]] with allow_own_issuer: an exchange verifies it, decides, signs and audits.
# Prints each run, then per algorithm the median req/s of each and the ratio exchange/issue.
# Usage: cargo build --release && tests/perf/txn.sh   (DUR=5s ROUNDS=4 ALGS="RS256 ES256 EdDSA")
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${TA_BIN:-$PWD/target/release/token-authority}
ALGS=${ALGS:-RS256 PS256 ES256 EdDSA}
W=$(mktemp -d)
trap 'for p in "$W"/*/pid; do kill "$(cat "$p")" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"' EXIT
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
printf 'bench-secret-0123456789' > "$W/secret"
SECRET_SHA=$(sha256sum < "$W/secret" | cut -d' ' -f1)
start() { # alg -> "grpc-port", once serving
  local alg=$1 g h d="$W/$1"
  g=$(free); h=$(free)
  mkdir -p "$d"; chmod 700 "$d"
  cat > "$d/policy.toml" <<TOML
[[issuer]]
name = "self"
issuer = "http://ta.test"
jwks_uri = "http://127.0.0.1:$h/.well-known/jwks.json"
audiences = ["bench"]
allow_own_issuer = true

[[client]]
id = "bench"
secret_sha256 = "$SECRET_SHA"

[[rule]]
callers = ["client:bench"]
subjects = ["bench"]
audiences = ["bench"]
allow_claims = ["scope"]

[txn]
trust_domain = "bench.internal"

[[txn_rule]]
callers = ["client:bench"]
scopes = ["bench"]
TOML
  "$BIN" serve --data-dir "$d/data" --algorithms "$alg" --issuer http://ta.test \
    --grpc-listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --policy-file "$d/policy.toml" \
    --audit-log "$d/audit.log" --log-format json >/dev/null 2>"$d/log" &
  echo $! > "$d/pid"
  for _ in $(seq 300); do grep -q '"serving"' "$d/log" 2>/dev/null && break; sleep 0.1; done
  grep -q '"serving"' "$d/log" || { echo "$alg did not start:" >&2; cat "$d/log" >&2; exit 1; }
  echo "$g"
}
run() { # mode alg port -> one line "mode alg req/s p50 p99 errors"
  "$BIN" bench "$1" --algorithm "$2" --target "http://127.0.0.1:$3" --duration "${DUR:-5s}" \
    --warmup "${WARMUP:-1s}" --concurrency 64 --connections 4 --client-id bench \
    --client-secret-file "$W/secret" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency_us"]
print(sys.argv[1], sys.argv[2], round(r["requests_per_s"]), l["p50"], l["p99"], sum(r["errors"].values()))' "$1" "$2"
}
: > "$W/runs"
for alg in $ALGS; do
  port=$(start "$alg")
  for round in $(seq "${ROUNDS:-4}"); do
    order="issue exchange"
    [ $((round % 2)) = 0 ] && order="exchange issue"
    for mode in $order; do
      run "$mode" "$alg" "$port" | tee -a "$W/runs"
    done
  done
  kill "$(cat "$W/$alg/pid")"
done
ALGS="$ALGS" python3 - "$W/runs" <<'PY'
import os, statistics, sys
runs = {}
errors = 0
for line in open(sys.argv[1]):
    mode, alg, rps, p50, p99, failed = line.split()
    runs.setdefault((alg, mode), []).append(int(rps))
    errors += int(failed)
for alg in os.environ["ALGS"].split():
    issue = statistics.median(runs[(alg, "issue")])
    exchange = statistics.median(runs[(alg, "exchange")])
    print(f"{alg:5} issue median {issue:8.0f} req/s, exchange median {exchange:8.0f} req/s "
          f"over {len(runs[(alg, 'exchange')])} runs: exchange/issue {exchange / issue:.2f}")
print(f"errors: {errors}")
PY
