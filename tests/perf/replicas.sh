#!/usr/bin/env bash
# The replica figures of the README: IssueToken and VerifyToken with sled, and with one, two
# and three replicas on one throwaway PostgreSQL cluster, all started once and measured in
# ROUNDS rounds, the order reversed every other round (ABBA), so slow drift of a shared
# machine falls on every side alike. Prints each run, then per mode and side the median
# req/s and its ratio to sled's median; then each replica's start-up time.
# Usage: cargo build --release && tests/perf/replicas.sh   (DUR=5s ROUNDS=4 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/common.sh
chmod 755 "$W"
PG=${TA_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
PGPORT=$(free)
mkdir "$W/pg"; [ "$(id -u)" = 0 ] && chown postgres "$W/pg"
as_pg "$PG/initdb -D $W/pg/data -A trust -U postgres --no-sync >/dev/null && $PG/pg_ctl start -w -D $W/pg/data -l $W/pg/log -o '-c listen_addresses=127.0.0.1 -p $PGPORT -k $W/pg' >/dev/null"
trap 'stop_servers; as_pg "$PG/pg_ctl stop -m immediate -D $W/pg/data" >/dev/null; rm -rf "$W"' EXIT
head -c 32 /dev/urandom | base64 > "$W/kek"; chmod 600 "$W/kek"
echo "bench-admin-token-0123456789" > "$W/admin"; chmod 600 "$W/admin"
URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
start() { # name store -> the gRPC port, once serving
  local g h
  g=$(free); h=$(free)
  # One --issuer for all (serve's): the default follows each replica's own address.
  serve "$1" "$g" "$h" --admin-token-file "$W/admin" --kek-file "$W/kek" --store "$2"
  echo "$g"
}
run() { # side mode port... -> one line "side mode req/s p50 p99 errors"
  local side=$1 mode=$2 t; shift 2
  t=$(printf 'http://127.0.0.1:%s,' "$@"); t=${t%,}
  $CLIENT_TASKSET "$BIN" bench "$mode" --target "$t" --duration "${DUR:-5s}" --warmup 1s --concurrency 64 \
    --connections 6 --json | bench_line "$side" "$mode"
}
S=$(start sled sled)
A=$(start a "$URL")
B=$(start b "$URL")
C=$(start c "$URL")
side() { # name mode
  case $1 in
    sled) run sled "$2" "$S" ;;
    pg1) run pg1 "$2" "$A" ;;
    pg2) run pg2 "$2" "$A" "$B" ;;
    pg3) run pg3 "$2" "$A" "$B" "$C" ;;
  esac
}
: > "$W/runs"
for round in $(seq "${ROUNDS:-4}"); do
  order="sled pg1 pg2 pg3"
  [ $((round % 2)) = 0 ] && order="pg3 pg2 pg1 sled"
  for mode in issue verify; do
    for s in $order; do side "$s" "$mode" | tee -a "$W/runs"; done
  done
done
python3 - "$W/runs" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, mode, rps, *_ = line.split()
    runs.setdefault((mode, side), []).append(int(rps))
for mode in ("issue", "verify"):
    base = statistics.median(runs[(mode, "sled")])
    for side in ("sled", "pg1", "pg2", "pg3"):
        m = statistics.median(runs[(mode, side)])
        print(f"{mode:6} {side:4} median {m:8.0f} req/s over {len(runs[(mode, side)])} runs, {m / base:.2f} x sled")
PY
for r in a b c; do
  echo "replica $r start-up: $(grep -o '"startup_ms":[0-9]*' "$W/$r/log" | head -1)"
done
