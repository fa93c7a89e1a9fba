#!/usr/bin/env bash
# The status list figure of the README: IssueToken with a status (the default: tokens of the
# default 15-minute ttl get an index) against without (--status-min-ttl off), per algorithm,
# two servers side by side, in ROUNDS rounds, the order swapped every round. Prints each
# run, then per algorithm the median req/s of each and their ratio.
# Usage: cargo build --release && tests/perf/status.sh   (DUR=5s ROUNDS=5 ALGS="RS256 ES256")
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${TA_BIN:-$PWD/target/release/token-authority}
ALGS=${ALGS:-RS256 PS256 ES256 EdDSA}
W=$(mktemp -d)
trap 'for p in "$W"/*/pid; do kill "$(cat "$p")" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"' EXIT
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
start() { # name alg flags... -> "grpc-port", once serving
  local name=$1 alg=$2 g h d="$W/$1"
  shift 2
  g=$(free); h=$(free)
  mkdir -p "$d"; chmod 700 "$d"
  "$BIN" serve --data-dir "$d/data" --algorithms "$alg" --issuer http://ta.test \
    --grpc-listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-format json "$@" \
    >/dev/null 2>"$d/log" &
  echo $! > "$d/pid"
  for _ in $(seq 300); do grep -q '"serving"' "$d/log" 2>/dev/null && break; sleep 0.1; done
  grep -q '"serving"' "$d/log" || { echo "$name did not start:" >&2; cat "$d/log" >&2; exit 1; }
  echo "$g"
}
run() { # label alg port -> one line "label alg req/s p50 p99 errors"
  "$BIN" bench issue --algorithm "$2" --target "http://127.0.0.1:$3" --duration "${DUR:-5s}" \
    --warmup "${WARMUP:-1s}" --concurrency 64 --connections 4 --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency_us"]
print(sys.argv[1], sys.argv[2], round(r["requests_per_s"]), l["p50"], l["p99"], sum(r["errors"].values()))' "$1" "$2"
}
: > "$W/runs"
for alg in $ALGS; do
  with=$(start "with-$alg" "$alg")
  without=$(start "without-$alg" "$alg" --status-min-ttl off)
  for round in $(seq "${ROUNDS:-5}"); do
    if (( round % 2 )); then order="with without"; else order="without with"; fi
    for label in $order; do
      if [ "$label" = with ]; then port=$with; else port=$without; fi
      run "$label" "$alg" "$port" | tee -a "$W/runs"
    done
  done
  kill "$(cat "$W/with-$alg/pid")" "$(cat "$W/without-$alg/pid")"
done
ALGS="$ALGS" python3 - "$W/runs" <<'PY'
import os, statistics, sys
runs = {}
errors = 0
for line in open(sys.argv[1]):
    label, alg, rps, p50, p99, failed = line.split()
    runs.setdefault((alg, label), []).append(int(rps))
    errors += int(failed)
for alg in os.environ["ALGS"].split():
    with_ = statistics.median(runs[(alg, "with")])
    without = statistics.median(runs[(alg, "without")])
    print(f"{alg:5} medians over {len(runs[(alg, 'with')])} runs: with status {with_:6.0f} req/s, "
          f"without {without:6.0f} req/s, ratio {with_ / without:.2f}")
print(f"errors: {errors}")
PY
