#!/usr/bin/env bash
# The traces figure of the README: IssueToken and VerifyToken with traces on (every call
# sampled, exported to a real OTLP receiver on loopback) against off, per algorithm, two
# servers side by side, in ROUNDS rounds, the order swapped every round. Prints each run,
# then per mode and algorithm the median req/s of each, their ratio, the median of the
# rounds' own ratios, and the spans the traced server dropped (0: every span was exported;
# any other count makes the script fail, its ratios being those of spans never sent).
# Usage: cargo build --release && tests/perf/traces.sh   (DUR=5s ROUNDS=5 ALGS="ES256 RS256")
# The receiver needs grpcio and opentelemetry-proto: PYTHON names a Python that has them
# (default: the test virtualenv's, made by `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/common.sh
ALGS=${ALGS:-ES256 RS256}
MODES=${MODES:-issue verify}
start_receiver
start() { # name alg flags... -> "grpc-port http-port", once serving
  local name=$1 alg=$2 g h
  shift 2
  g=$(free); h=$(free)
  serve "$name" "$g" "$h" --algorithms "$alg" "$@"
  echo "$g $h"
}
bench() { # label mode alg port
  $CLIENT_TASKSET "$BIN" bench "$2" --algorithm "$3" --target "http://127.0.0.1:$4" --duration "${DUR:-5s}" \
    --warmup "${WARMUP:-1s}" --concurrency 64 --connections 4 --json | bench_line "$1" "$2-$3"
}
: > "$W/runs"
: > "$W/dropped"
for alg in $ALGS; do
  read -r on on_http < <(start "on-$alg" "$alg" --otlp-endpoint "$collector")
  read -r off _ < <(start "off-$alg" "$alg")
  for mode in $MODES; do
    for round in $(seq "${ROUNDS:-5}"); do
      if (( round % 2 )); then order="on off"; else order="off on"; fi
      for label in $order; do
        if [ "$label" = on ]; then port=$on; else port=$off; fi
        bench "$label" "$mode" "$alg" "$port" | tee -a "$W/runs"
      done
    done
  done
  curl -s "http://127.0.0.1:$on_http/metrics" \
    | awk -v alg="$alg" '/^token_authority_trace_spans_dropped_total/ {n += $2} END {print alg, n + 0}' >> "$W/dropped"
  kill "$(cat "$W/on-$alg/pid")" "$(cat "$W/off-$alg/pid")"
done
python3 - "$W/runs" "$W/dropped" <<'PY'
import statistics, sys
runs = {}
errors = 0
for line in open(sys.argv[1]):
    label, kind, rps, p50, p99, failed = line.split()
    runs.setdefault(kind, {}).setdefault(label, []).append(int(rps))
    errors += int(failed)
for kind, sides in runs.items():
    on, off = statistics.median(sides["on"]), statistics.median(sides["off"])
    # Each round measures both back to back: its ratio is free of the drift between rounds.
    paired = statistics.median(a / b for a, b in zip(sides["on"], sides["off"]))
    print(f"{kind:13} medians over {len(sides['on'])} runs: traces on {on:6.0f} req/s, "
          f"off {off:6.0f} req/s, ratio {on / off:.2f}, median of the rounds' ratios {paired:.2f}")
dropped_total = 0
for line in open(sys.argv[2]):
    alg, dropped = line.split()
    print(f"spans dropped by the traced {alg} server: {dropped}")
    dropped_total += int(dropped)
print(f"errors: {errors}")
if dropped_total:
    # A span dropped is one never exported: the traced server's rate then leaves out work
    # that every call sampled would cost, and its ratio looks better than it is.
    sys.exit("the traced servers dropped spans, so the ratios above are not what exporting "
             "every span costs (OTEL_BSP_MAX_QUEUE_SIZE holds more, or give less load)")
PY
