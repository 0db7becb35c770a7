#!/usr/bin/env bash
# Starts `hsmkms serve` on a throwaway data directory and drives it with
# `hsmkms bench` (aws-sdk-go-v2 clients, SigV4 and TLS as in production)
# for each operation, printing req/s, p50 and p99.
#
#   scripts/bench-server.sh [path/to/hsmkms] [duration] [workers]
set -euo pipefail

bin=${1:-bin/hsmkms} duration=${2:-10s} workers=${3:-16}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# The per-request log line goes to a file: a terminal would slow the server.
"$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >"$dir/out" 2>"$dir/log" &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^export AWS_REGION=' "$dir/out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
  sleep 0.1
done
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE
eval "$(grep '^export ' "$dir/out")"
export AWS_CONFIG_FILE=/dev/null

for op in Encrypt Decrypt GenerateDataKey; do
  "$bin" bench --op "$op" --workers "$workers" --duration "$duration" --size 1024
done
"$bin" bench --op GenerateRandom --workers "$workers" --duration "$duration" --size 32
