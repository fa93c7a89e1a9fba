#!/usr/bin/env bash
# The replica figures of the README: IssueToken and VerifyToken with sled, then with one, two
# and three replicas on one throwaway PostgreSQL cluster, and each replica's start-up time.
# Usage: cargo build --release && tests/perf/replicas.sh   (DUR=8s by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${TA_BIN:-$PWD/target/release/token-authority}
PG=${TA_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}
W=$(mktemp -d); chmod 755 "$W"
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PGPORT=$(free)
mkdir "$W/pg"; [ "$(id -u)" = 0 ] && chown postgres "$W/pg"
as_pg "$PG/initdb -D $W/pg/data -A trust -U postgres --no-sync >/dev/null && $PG/pg_ctl start -w -D $W/pg/data -l $W/pg/log -o '-c listen_addresses=127.0.0.1 -p $PGPORT -k $W/pg' >/dev/null"
trap 'for p in "$W"/*/pid; do kill "$(cat "$p")" 2>/dev/null || true; done; as_pg "$PG/pg_ctl stop -m immediate -D $W/pg/data" >/dev/null; rm -rf "$W"' EXIT
head -c 32 /dev/urandom | base64 > "$W/kek"; chmod 600 "$W/kek"
echo "bench-admin-token-0123456789" > "$W/admin"; chmod 600 "$W/admin"
URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
FMT='import json, sys
r = json.load(sys.stdin)
l = r["latency_us"]
print("%.0f req/s, p50 %sus, p99 %sus, errors %s" % (r["requests_per_s"], l["p50"], l["p99"], dict(r["errors"])))'
start() { # name store -> the gRPC port, once serving
  local g h d="$W/$1"
  g=$(free); h=$(free)
  mkdir -p "$d"; chmod 700 "$d"
  # One --issuer for all: the default follows each replica's own address.
  "$BIN" serve --data-dir "$d/data" --admin-token-file "$W/admin" --kek-file "$W/kek" \
    --store "$2" --issuer http://ta.test --grpc-listen "127.0.0.1:$g" \
    --http-listen "127.0.0.1:$h" --log-format json >/dev/null 2>"$d/log" &
  echo $! > "$d/pid"
  for _ in $(seq 100); do grep -q '"serving"' "$d/log" 2>/dev/null && break; sleep 0.1; done
  echo "$g"
}
bench() { # mode port...
  local mode=$1 t; shift
  t=$(printf 'http://127.0.0.1:%s,' "$@"); t=${t%,}
  "$BIN" bench "$mode" --target "$t" --duration "${DUR:-8s}" --warmup 2s --concurrency 64 \
    --connections 6 --json | python3 -c "$FMT"
}
S=$(start sled sled)
echo "sled, 1 process: issue $(bench issue "$S")"
echo "sled, 1 process: verify $(bench verify "$S")"
kill "$(cat "$W/sled/pid")"
A=$(start a "$URL")
echo "postgres, 1 replica: issue $(bench issue "$A")"
echo "postgres, 1 replica: verify $(bench verify "$A")"
B=$(start b "$URL")
echo "postgres, 2 replicas: issue $(bench issue "$A" "$B")"
echo "postgres, 2 replicas: verify $(bench verify "$A" "$B")"
C=$(start c "$URL")
echo "postgres, 3 replicas: issue $(bench issue "$A" "$B" "$C")"
echo "postgres, 3 replicas: verify $(bench verify "$A" "$B" "$C")"
for r in a b c; do
  echo "replica $r start-up: $(grep -o '"startup_ms":[0-9]*' "$W/$r/log" | head -1)"
done
