#!/usr/bin/env bash
# Starts `hsmkms serve` on a throwaway data directory and drives it with
# hsmkms-load (aws-sdk-go-v2 clients, SigV4 and TLS as in production) for
# each operation, printing req/s, p50, p99 and the server's CPU time per
# request (from /proc/PID/stat).
#
#   scripts/bench-server.sh [path/to/hsmkms] [duration] [workers] [keys]
#
# hsmkms-load is taken from beside hsmkms unless LOAD names it. keys
# spreads each operation's requests at random over that many keys.
#
# PROFILE=DIR (with a server built with -tags pprof, as `make bench
# PROFILE=DIR` does) also saves a CPU profile of the server during each
# operation's run, as DIR/OP.pprof: `go tool pprof -top BIN DIR/OP.pprof`.
set -euo pipefail

bin=${1:-bin/hsmkms} duration=${2:-10s} workers=${3:-16} keys=${4:-1}
load=${LOAD:-$(dirname "$bin")/hsmkms-load}
[ -x "$load" ] || { echo "bench-server: $load not found (make bench builds it)" >&2; exit 1; }
profile=${PROFILE:-}
if [ -n "$profile" ]; then
  mkdir -p "$profile"
  pprof_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  export HSMKMS_PPROF=127.0.0.1:$pprof_port
fi
. "$(dirname "$0")/serve-temp.sh"

run() {
  local prof=""
  if [ -n "$profile" ]; then
    # The profile covers the run but its first second (keys made,
    # connections opened) and last second.
    local secs=${duration%s}
    secs=$(( ${secs%.*} > 3 ? ${secs%.*} - 2 : 1 ))
    ( sleep 1; curl -sf -o "$profile/$2.pprof" "http://$HSMKMS_PPROF/debug/pprof/profile?seconds=$secs" ||
      echo "bench-server: no profile from $HSMKMS_PPROF (a server built with -tags pprof?)" >&2 ) &
    prof=$!
  fi
  "$load" --pid "$pid" --workers "$workers" --duration "$duration" --keys "$keys" "$@"
  if [ -n "$prof" ]; then wait "$prof"; fi
}
for op in Encrypt Decrypt GenerateDataKey; do
  run --op "$op" --size 1024
done
run --op GenerateRandom --size 32
# Asymmetric and HMAC keys: ECDSA P-256 signing and verifying, HMAC-SHA-256
# and ECC data key pairs, over 1 KiB messages.
for op in Sign Verify GenerateMac GenerateDataKeyPair; do
  run --op "$op" --size 1024
done
