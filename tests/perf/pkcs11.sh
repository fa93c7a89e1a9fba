#!/usr/bin/env bash
# The PKCS#11 figures of the README: IssueToken per algorithm with keys in the process and
# with keys in a SoftHSM token (--signer pkcs11), both servers started once and measured in
# ROUNDS rounds, the order reversed every other round (ABBA), so slow drift of a shared
# machine falls on both sides alike. Prints each run, then per algorithm the median req/s of
# each side and the ratio token/process.
# Usage: cargo build --release && tests/perf/pkcs11.sh   (DUR=5s ROUNDS=4 ALGS="RS256 ES256 EdDSA")
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/common.sh
MODULE=${TA_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
ALGS=${ALGS:-RS256 ES256 EdDSA}
mkdir "$W/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$W/tokens" > "$W/softhsm2.conf"
export SOFTHSM2_CONF="$W/softhsm2.conf"
softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 5678 >/dev/null
printf 1234 > "$W/pin"; chmod 600 "$W/pin"
start() { # name serve-flags... -> the gRPC port, once serving
  local name=$1 g h
  shift
  g=$(free); h=$(free)
  serve "$name" "$g" "$h" --algorithms "$(echo "$ALGS" | tr ' ' ,)" "$@"
  echo "$g"
}
P=$(start process)
T=$(start token --signer pkcs11 --pkcs11-module "$MODULE" --pkcs11-token-label bench \
  --pkcs11-pin-file "$W/pin")
: > "$W/runs"
for round in $(seq "${ROUNDS:-4}"); do
  order="process token"
  [ $((round % 2)) = 0 ] && order="token process"
  for alg in $ALGS; do
    for side in $order; do
      case $side in process) port=$P ;; token) port=$T ;; esac
      bench_issue "$side" "$alg" "$port" | tee -a "$W/runs"
    done
  done
done
ALGS="$ALGS" python3 - "$W/runs" <<'PY'
import os, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, alg, rps, *_ = line.split()
    runs.setdefault((alg, side), []).append(int(rps))
for alg in os.environ["ALGS"].split():
    process = statistics.median(runs[(alg, "process")])
    token = statistics.median(runs[(alg, "token")])
    print(f"issue {alg:5} process median {process:8.0f} req/s, token median {token:8.0f} req/s "
          f"over {len(runs[(alg, 'token')])} runs: token/process {token / process:.2f}")
PY
