#!/usr/bin/env bash
# The figures of the README's "Running several nodes": back to back, on
# this machine, one node on SQLite, one node on PostgreSQL and two nodes on
# PostgreSQL (sharing a SoftHSM2 token store), each driven by hsmkms-load
# for each operation; printing req/s, p50, p99, the nodes' CPU time per
# request and, on PostgreSQL, how many transactions the database committed
# per request (what PostgreSQL sees of the hot path; background work
# included).
#
#   scripts/bench-ha.sh [duration] [workers]      (make bench-ha)
#
# The two-node run splits the workers between the nodes, one hsmkms-load
# per node, and sums: req/s is the total, CPU per request the nodes' total
# CPU over all requests. The PostgreSQL cluster is a throwaway one
# (scripts/postgres.sh), with fsync and synchronous_commit on.
set -euo pipefail

duration=${1:-10s} workers=${2:-16}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${HSMKMS:-$root/bin/hsmkms} load=${LOAD:-$root/bin/hsmkms-load}
for b in "$bin" "$load"; do [ -x "$b" ] || { echo "bench-ha: $b not found (make bench-ha builds it)" >&2; exit 1; }; done
"$here/postgres.sh" install

tmp=$(mktemp -d)
chmod 711 "$tmp" # the cluster's user (as root: postgres) must reach it
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$here/postgres.sh" stop "$tmp/pg" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
"$here/postgres.sh" start "$tmp/pg" >/dev/null
psql="$("$here/postgres.sh" bindir)/psql"
url=$(cat "$tmp/pg/url")
commits() { "$psql" "$url" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# node NAME DATADIR [serve args]: starts a node, waits for its environment
# block; sets pid and envf.
node() {
  local name=$1 data=$2; shift 2
  local p out="$tmp/$name.out"
  p=$(port)
  "$bin" serve --data-dir "$data" --listen "127.0.0.1:$p" --xks-listen "127.0.0.1:$(port)" "$@" >"$out" 2>"$tmp/$name.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 300); do
    grep -q '^export AWS_REGION=' "$out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/$name.log" >&2; echo "bench-ha: $name exited" >&2; exit 1; }
    sleep 0.1
  done
  envf="$tmp/$name.env"
  grep '^export ' "$out" >"$envf"
}

# loadwith ENVFILE PID WORKERS OP: one hsmkms-load line.
loadwith() {
  (
    unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL
    . "$1"
    export AWS_CONFIG_FILE=/dev/null
    "$load" --pid "$2" --workers "$3" --duration "$duration" --op "$4" --size 1024
  )
}

ops="Encrypt Decrypt GenerateDataKey"

echo "== one node, SQLite"
node sqlite "$tmp/sqlite"
for op in $ops; do loadwith "$envf" "$pid" "$workers" "$op"; done
kill "$pid"; wait "$pid" 2>/dev/null || true

echo "== one node, PostgreSQL"
node pg-one "$tmp/pgdata" --database-url-file "$tmp/pg/url" --node-id node-1
for op in $ops; do
  before=$(commits)
  line=$(loadwith "$envf" "$pid" "$workers" "$op")
  after=$(commits)
  n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  echo "$line  pg-commits/req=$(awk -v a="$before" -v b="$after" -v n="$n" 'BEGIN{printf "%.3f", (b-a)/n}')"
done
kill "$pid"; wait "$pid" 2>/dev/null || true

echo "== two nodes, PostgreSQL (one SoftHSM2 token store), $((workers / 2)) workers on each"
node pg-1 "$tmp/pgdata" --database-url-file "$tmp/pg/url" --node-id node-1
pid1=$pid env1=$envf
node pg-2 "$tmp/pgdata" --database-url-file "$tmp/pg/url" --node-id node-2
pid2=$pid env2=$envf
for op in $ops; do
  before=$(commits)
  loadwith "$env1" "$pid1" $((workers / 2)) "$op" >"$tmp/l1" &
  l1=$!
  loadwith "$env2" "$pid2" $((workers / 2)) "$op" >"$tmp/l2"
  wait "$l1"
  after=$(commits)
  sed 's/^/  node-1: /' "$tmp/l1"
  sed 's/^/  node-2: /' "$tmp/l2"
  cat "$tmp/l1" "$tmp/l2" | awk -v op="$op" -v before="$before" -v after="$after" '
    function dur(s) { if (s ~ /µs$/) return s+0; if (s ~ /ms$/) return (s+0)*1000; if (s ~ /s$/) return (s+0)*1e6; return s+0 }
    { for (i = 1; i <= NF; i++) {
        if ($i ~ /^requests=/) { split($i, a, "="); n = a[2] + 0; reqs += n }
        if ($i == "req/s") rate += $(i-1)
        if ($i ~ /^server-cpu\/req=/) { split($i, a, "="); cpu += dur(a[2]) * n }
      } }
    END { printf "%-19s total %8.0f req/s  server-cpu/req=%.0fµs  pg-commits/req=%.3f\n", op, rate, cpu / reqs, (after - before) / reqs }'
done
