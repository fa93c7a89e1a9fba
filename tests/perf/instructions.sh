#!/usr/bin/env bash
# What traces cost, counted in instructions (callgrind): a count no neighbour on the machine
# moves, unlike req/s. Per MODE and ALG, a server under callgrind exporting every call's spans
# (sampling 1.0) to a real OTLP receiver on loopback, then one without traces, each driven by
# `bench` (8 streams over 2 connections). Once the load runs (for verify, once its pool of 256
# tokens is minted), the counters are zeroed, and DUR later written out: the server's
# instructions on every thread (the exporter's too) over the calls it answered meanwhile.
# Prints each run ("on|off KIND instructions-per-call calls failed-calls"), then per kind the
# two counts and off/on, the share of throughput traces leave when CPU is what limits.
# Usage: cargo build --release && tests/perf/instructions.sh   (DUR=20 ALGS="ES256 RS256"
# MODES="issue verify"; PROFILES=DIR keeps each window's profile there, for callgrind_annotate).
# Needs valgrind; PYTHON as for traces.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/common.sh
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
ALGS=${ALGS:-ES256 RS256}
MODES=${MODES:-issue verify}
start_receiver

answered() { # http-port method ok|failed -> that method's answers so far, OK or not
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="method=\"$2\"" -v want="$3" '
    /^token_authority_rpc_requests_total[{]/ && index($1, m) {
      ok = index($1, "code=\"OK\"") > 0
      if ((want == "ok") == ok) n += $2
    } END { print n + 0 }'
}

measure() { # label mode alg serve-flags... -> one run line
  local label=$1 mode=$2 alg=$3 d g h method pid load ok0 ok1 bad0 bad1 ir
  shift 3
  d="$W/$label-$mode-$alg"
  mkdir -p "$d"; chmod 700 "$d"
  g=$(free); h=$(free)
  # --fair-sched: without it, a thread spinning on a lock another holds (sled's start) can
  # keep the CPU from it for minutes under valgrind's one-thread-at-a-time.
  $SERVER_TASKSET valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$d/callgrind.out" \
    "$BIN" serve --data-dir "$d/data" --issuer http://ta.test --grpc-listen "127.0.0.1:$g" \
    --http-listen "127.0.0.1:$h" --log-format json --algorithms "$alg" "$@" >/dev/null 2>"$d/log" &
  pid=$!
  echo "$pid" > "$d/pid"
  for _ in $(seq 1200); do grep -q '"serving"' "$d/log" 2>/dev/null && break; sleep 0.5; done
  grep -q '"serving"' "$d/log" || { echo "$label did not start:" >&2; cat "$d/log" >&2; exit 1; }
  $CLIENT_TASKSET "$BIN" bench "$mode" --algorithm "$alg" --target "http://127.0.0.1:$g" \
    --duration 1h --warmup 0s --concurrency 8 --connections 2 --json >/dev/null 2>&1 &
  load=$!
  if [ "$mode" = verify ]; then
    method=VerifyToken
    for _ in $(seq 1200); do (( $(answered "$h" IssueToken ok) >= 256 )) && break; sleep 0.5; done
  else
    method=IssueToken
  fi
  sleep "${WARMUP:-2}"
  ok0=$(answered "$h" $method ok); bad0=$(answered "$h" $method failed)
  callgrind_control -z "$pid" >/dev/null 2>&1
  sleep "${DUR:-20}"
  callgrind_control -d "$pid" >/dev/null 2>&1
  ok1=$(answered "$h" $method ok); bad1=$(answered "$h" $method failed)
  kill "$load" 2>/dev/null || true
  wait "$load" 2>/dev/null || true
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$d/callgrind.out.1")
  if [ -n "${PROFILES:-}" ]; then cp "$d/callgrind.out.1" "$PROFILES/$label-$mode-$alg.callgrind"; fi
  (( ok1 > ok0 )) || { echo "$label $mode-$alg: no call answered in the window" >&2; exit 1; }
  echo "$label $mode-$alg $(( ir / (ok1 - ok0) )) $(( ok1 - ok0 )) $(( bad1 - bad0 ))"
}

: > "$W/runs"
for alg in $ALGS; do
  for mode in $MODES; do
    measure on "$mode" "$alg" --otlp-endpoint "$collector" | tee -a "$W/runs"
    measure off "$mode" "$alg" | tee -a "$W/runs"
  done
done
python3 - "$W/runs" <<'PY'
import sys
runs = {}
for line in open(sys.argv[1]):
    label, kind, per_call, calls, failed = line.split()
    runs.setdefault(kind, {})[label] = int(per_call)
for kind, sides in runs.items():
    on, off = sides["on"], sides["off"]
    print(f"{kind:13} instructions per call: traces on {on:,}, off {off:,}, "
          f"+{on - off:,}, off/on {off / on:.3f}")
PY
