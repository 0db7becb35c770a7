#!/usr/bin/env bash
# What the number of keys costs: starts `hsmkms serve` on a throwaway data
# directory, creates KEYS symmetric keys with hsmkms-load (WORKERS clients
# at once: CreateKey's throughput), restarts the server (time until it
# serves, RSS), then runs Encrypt over 10 keys and over all KEYS at random
# by turns, ROUNDS times each, and reports the server's RSS after, and
# CreateKey alone with WORKERS clients on top of the KEYS keys.
#
#   scripts/bench-keys.sh [path/to/hsmkms] [keys] [duration] [workers] [rounds]
#
# hsmkms-load is taken from beside hsmkms unless LOAD names it. KEEP=DIR
# keeps the data directory and the key ids in DIR (made if missing) and
# reuses them the next time, so that a run over many keys creates them once.
# TUNE=FILE, a YAML fragment (say `limits: {cached_keys: 131072}` and
# `default_key_store: {unwrapped_keys: {max_keys: 131072}}`), is merged into
# the configuration `serve --data-dir` writes, and every start after the
# first serves that with --config: what larger caches buy, and cost.
set -euo pipefail

bin=${1:-bin/hsmkms} keys=${2:-100000} duration=${3:-10s} workers=${4:-16} rounds=${5:-3}
load=${LOAD:-$(dirname "$bin")/hsmkms-load}
[ -x "$load" ] || { echo "bench-keys: $load not found (make build-load builds it)" >&2; exit 1; }

dir=${KEEP:-$(mktemp -d)}
mkdir -p "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pid= pid_seen=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

# start runs the server and prints how long it took to serve.
start() {
  local t0 t1 tuned=$dir/data/tuned.yaml
  : >"$dir/out"
  t0=$(date +%s.%N)
  if [ -n "${TUNE:-}" ] && [ -f "$dir/data/hsmkms.yaml" ] && [ -n "$pid_seen" ]; then
    python3 - "$dir/data/hsmkms.yaml" "$TUNE" "$tuned" <<'PY'
import sys, yaml
def merge(a, b):
    for k, v in b.items():
        a[k] = merge(a.get(k) or {}, v) if isinstance(v, dict) else v
    return a
cfg = yaml.safe_load(open(sys.argv[1]))
merge(cfg, yaml.safe_load(open(sys.argv[2])))
open(sys.argv[3], "w").write(yaml.safe_dump(cfg))
PY
    local before
    before=$(grep -c 'hsmkms: listening' "$dir/log" 2>/dev/null || true)
    "$bin" serve --config "$tuned" >"$dir/out" 2>>"$dir/log" &
    pid=$!
    until [ "$(grep -c 'hsmkms: listening' "$dir/log")" -gt "${before:-0}" ]; do
      kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/log" >&2; echo "bench-keys: server exited" >&2; exit 1; }
      sleep 0.01
    done
  else
    "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >"$dir/out" 2>>"$dir/log" &
    pid=$!
    until grep -q '^export AWS_REGION=' "$dir/out" 2>/dev/null; do
      kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/log" >&2; echo "bench-keys: server exited" >&2; exit 1; }
      sleep 0.01
    done
    cp "$dir/out" "$dir/exports"
  fi
  pid_seen=1
  t1=$(date +%s.%N)
  python3 -c "print(f'ready in {$t1-$t0:.2f} s')"
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
rss() { awk '/^(VmRSS|VmHWM)/ {printf "%s %d MB  ", $1, $2/1024} END {print ""}' "/proc/$pid/status"; }

echo "== $bin, $keys keys, $workers workers"
printf 'first start: '; start
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_REGION AWS_ENDPOINT_URL
eval "$(grep '^export ' "$dir/exports")"
export AWS_CONFIG_FILE=/dev/null

"$load" --op Encrypt --workers "$workers" --duration 1s --keys "$keys" --keys-file "$dir/keys" >/dev/null
printf 'after creating the keys: '; rss
stop
printf 'restart with %d keys: ' "$keys"; start
printf 'right after the restart: '; rss
head -10 "$dir/keys" >"$dir/keys10"
for _ in $(seq 1 "$rounds"); do
  "$load" --op Encrypt --workers "$workers" --duration "$duration" --keys 10 --keys-file "$dir/keys10" --pid "$pid"
  "$load" --op Encrypt --workers "$workers" --duration "$duration" --keys "$keys" --keys-file "$dir/keys" --pid "$pid"
done
printf 'after Encrypt over %d keys: ' "$keys"; rss
"$load" --op CreateKey --workers "$workers" --duration "$duration" --pid "$pid"
