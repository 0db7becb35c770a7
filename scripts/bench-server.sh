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
set -euo pipefail

bin=${1:-bin/hsmkms} duration=${2:-10s} workers=${3:-16} keys=${4:-1}
load=${LOAD:-$(dirname "$bin")/hsmkms-load}
[ -x "$load" ] || { echo "bench-server: $load not found (make bench builds it)" >&2; exit 1; }
. "$(dirname "$0")/serve-temp.sh"

run() { "$load" --pid "$pid" --workers "$workers" --duration "$duration" --keys "$keys" "$@"; }
for op in Encrypt Decrypt GenerateDataKey; do
  run --op "$op" --size 1024
done
run --op GenerateRandom --size 32
# Asymmetric and HMAC keys: ECDSA P-256 signing and verifying, HMAC-SHA-256
# and ECC data key pairs, over 1 KiB messages.
for op in Sign Verify GenerateMac GenerateDataKeyPair; do
  run --op "$op" --size 1024
done
