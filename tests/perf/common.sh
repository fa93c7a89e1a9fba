# Sourced by the perf scripts (from the repository's root): the binary measured, a work
# folder removed at exit with every server started in it, free ports, starting a server,
# and one line per bench run.

BIN=${TA_BIN:-$PWD/target/release/token-authority}
# Without TA_BIN, the binary measured is this tree's release build: one missing, or older
# than a source it is built from, would measure some other version of the code.
if [ -z "${TA_BIN:-}" ]; then
  [ -x "$BIN" ] || { echo "no $BIN: cargo build --release first (or name a binary with TA_BIN)" >&2; exit 1; }
  newer=$(find src jose/src jose/Cargo.toml proto build.rs Cargo.toml Cargo.lock -type f -newer "$BIN" -print -quit 2>/dev/null || true)
  [ -z "$newer" ] || { echo "$BIN is older than $newer: cargo build --release first (or name a binary with TA_BIN)" >&2; exit 1; }
fi
# SERVER_CPUS=1 CLIENT_CPUS=0: the servers on CPU 1, the load (and a script's other helpers) on
# CPU 0, so what the servers do is measured on a CPU of their own (`taskset -c`).
SERVER_TASKSET=${SERVER_CPUS:+taskset -c $SERVER_CPUS}
CLIENT_TASKSET=${CLIENT_CPUS:+taskset -c $CLIENT_CPUS}
W=$(mktemp -d)
stop_servers() {
  for p in "$W"/*/pid; do [ -e "$p" ] || continue; kill "$(cat "$p")" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
# A script with more to stop sets its own trap, calling stop_servers first.
trap 'stop_servers; rm -rf "$W"' EXIT

free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# serve NAME GRPC_PORT HTTP_PORT serve-flags...: starts a server in $W/NAME (its pid in
# $W/NAME/pid, its log in $W/NAME/log) and returns once it serves; exits if it does not.
serve() {
  local name=$1 g=$2 h=$3 d="$W/$1"
  shift 3
  mkdir -p "$d"; chmod 700 "$d"
  $SERVER_TASKSET "$BIN" serve --data-dir "$d/data" --issuer http://ta.test --grpc-listen "127.0.0.1:$g" \
    --http-listen "127.0.0.1:$h" --log-format json "$@" >/dev/null 2>"$d/log" &
  echo $! > "$d/pid"
  for _ in $(seq 300); do grep -q '"serving"' "$d/log" 2>/dev/null && break; sleep 0.1; done
  grep -q '"serving"' "$d/log" || { echo "$name did not start:" >&2; cat "$d/log" >&2; exit 1; }
}

# ... | bench_line LABEL KIND: a `bench --json` report as one line
# "LABEL KIND req/s p50 p99 errors".
bench_line() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency_us"]
print(sys.argv[1], sys.argv[2], round(r["requests_per_s"]), l["p50"], l["p99"], sum(r["errors"].values()))' "$1" "$2"
}

# bench_issue LABEL ALG PORT: IssueToken for DUR (after WARMUP), as one bench_line.
bench_issue() {
  $CLIENT_TASKSET "$BIN" bench issue --algorithm "$2" --target "http://127.0.0.1:$3" --duration "${DUR:-5s}" \
    --warmup "${WARMUP:-1s}" --concurrency 64 --connections 4 --json | bench_line "$1" "$2"
}

# start_receiver: a real OTLP/gRPC receiver (tests/clients/otlp_receiver.py, decoding each
# export with grpcio; PYTHON names a Python that has it, by default the test virtualenv's) on
# a free loopback port, with the load's CPUs, stopped at exit. Sets $collector to its endpoint.
start_receiver() {
  $CLIENT_TASKSET "${PYTHON:-target/test-tools/bin/python}" tests/clients/otlp_receiver.py \
    "$W/collector-port" --quiet &
  receiver=$!
  # The receiver first: stop_servers waits for every child.
  trap 'kill $receiver 2>/dev/null || true; stop_servers; rm -rf "$W"' EXIT
  for _ in $(seq 300); do [ -s "$W/collector-port" ] && break; sleep 0.1; done
  [ -s "$W/collector-port" ] || { echo "the OTLP receiver did not start" >&2; exit 1; }
  collector="http://127.0.0.1:$(cat "$W/collector-port")"
}
