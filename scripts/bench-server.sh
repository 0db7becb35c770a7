#!/usr/bin/env bash
# Starts `hsmkms serve` on a throwaway data directory and drives it with
# `hsmkms bench` (aws-sdk-go-v2 clients, SigV4 and TLS as in production)
# for each operation, printing req/s, p50 and p99.
#
#   scripts/bench-server.sh [path/to/hsmkms] [duration] [workers]
set -euo pipefail

bin=${1:-bin/hsmkms} duration=${2:-10s} workers=${3:-16}
. "$(dirname "$0")/serve-temp.sh"

for op in Encrypt Decrypt GenerateDataKey; do
  "$bin" bench --op "$op" --workers "$workers" --duration "$duration" --size 1024
done
"$bin" bench --op GenerateRandom --workers "$workers" --duration "$duration" --size 32
# Issue 5's operations: ECDSA P-256 signing and verifying, HMAC-SHA-256 and
# ECC data key pairs, over 1 KiB messages.
for op in Sign Verify GenerateMac GenerateDataKeyPair; do
  "$bin" bench --op "$op" --workers "$workers" --duration "$duration" --size 1024
done
