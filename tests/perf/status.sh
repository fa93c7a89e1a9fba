#!/usr/bin/env bash
# The status list figure of the README: IssueToken with a status (the default: tokens of the
# default 15-minute ttl get an index) against without (--status-min-ttl off), per algorithm,
# two servers side by side, in ROUNDS rounds, the order swapped every round. Prints each
# run, then per algorithm the median req/s of each, their ratio, and the median of the
# rounds' own ratios.
# Usage: cargo build --release && tests/perf/status.sh   (DUR=5s ROUNDS=9 ALGS="RS256 ES256")
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/common.sh
ALGS=${ALGS:-RS256 PS256 ES256 EdDSA}
start() { # name alg flags... -> the gRPC port, once serving
  local name=$1 alg=$2 g h
  shift 2
  g=$(free); h=$(free)
  serve "$name" "$g" "$h" --algorithms "$alg" "$@"
  echo "$g"
}
: > "$W/runs"
for alg in $ALGS; do
  with=$(start "with-$alg" "$alg")
  without=$(start "without-$alg" "$alg" --status-min-ttl off)
  for round in $(seq "${ROUNDS:-9}"); do
    if (( round % 2 )); then order="with without"; else order="without with"; fi
    for label in $order; do
      if [ "$label" = with ]; then port=$with; else port=$without; fi
      bench_issue "$label" "$alg" "$port" | tee -a "$W/runs"
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
    # Each round measures both back to back: its ratio is free of the drift between rounds
    # (another tenant's load on a shared machine), which the medians of each side are not.
    paired = statistics.median(w / wo for w, wo in zip(runs[(alg, "with")], runs[(alg, "without")]))
    print(f"{alg:5} medians over {len(runs[(alg, 'with')])} runs: with status {with_:6.0f} req/s, "
          f"without {without:6.0f} req/s, ratio {with_ / without:.2f}, "
          f"median of the rounds' ratios {paired:.2f}")
print(f"errors: {errors}")
PY
