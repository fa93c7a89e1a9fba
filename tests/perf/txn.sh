#!/usr/bin/env bash
# The Transaction Token figures of the README: ExchangeToken against IssueToken on the same
# server, per algorithm (the server's only one, so the subject tokens and the Txn-Token use
# it too), in ROUNDS rounds, the order rotated every round. The subject tokens are the
# server's own access tokens, with a scope claim, trusted through an [[issuer]] with
# allow_own_issuer. Two kinds of exchange: "repeat" sends 256 subject tokens in turn (the
# edge's users each making many requests: each token is verified once, then its verdict is
# kept), "fresh" sends FRESH (FRESH_RSA) tokens minted for the run, more than it makes requests, so
# every exchange verifies its subject token. Prints each run, then per algorithm the median
# req/s of each and the ratios to issue.
# Usage: cargo build --release && tests/perf/txn.sh   (DUR=5s ROUNDS=3 FRESH=45000 FRESH_RSA=10000 ALGS="RS256 ES256")
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/common.sh
ALGS=${ALGS:-RS256 PS256 ES256 EdDSA}
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
  serve "$alg" "$g" "$h" --algorithms "$alg" --policy-file "$d/policy.toml" \
    --audit-log "$d/audit.log"
  echo "$g"
}
run() { # label alg port -> one line "label alg req/s p50 p99 errors"
  local mode=$1 extra=()
  case $1 in
    repeat) mode=exchange; extra=(--subject-tokens 256) ;;
    # More tokens than the run's requests: RSA signs ~1,000/s here, ECDSA and EdDSA ~6,000/s.
    fresh) mode=exchange
      case $2 in RS256|PS256) extra=(--subject-tokens "${FRESH_RSA:-10000}") ;;
        *) extra=(--subject-tokens "${FRESH:-45000}") ;; esac ;;
  esac
  $CLIENT_TASKSET "$BIN" bench "$mode" --algorithm "$2" --target "http://127.0.0.1:$3" --duration "${DUR:-5s}" \
    --warmup "${WARMUP:-1s}" --concurrency 64 --connections 4 --client-id bench \
    --client-secret-file "$W/secret" "${extra[@]}" --json | bench_line "$1" "$2"
}
: > "$W/runs"
for alg in $ALGS; do
  port=$(start "$alg")
  for round in $(seq "${ROUNDS:-3}"); do
    case $((round % 3)) in
      1) order="issue repeat fresh" ;;
      2) order="fresh issue repeat" ;;
      0) order="repeat fresh issue" ;;
    esac
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
    repeat = statistics.median(runs[(alg, "repeat")])
    fresh = statistics.median(runs[(alg, "fresh")])
    print(f"{alg:5} medians over {len(runs[(alg, 'issue')])} runs: issue {issue:6.0f} req/s, "
          f"exchange repeat {repeat:6.0f} ({repeat / issue:.2f}), fresh {fresh:6.0f} ({fresh / issue:.2f})")
print(f"errors: {errors}")
PY
