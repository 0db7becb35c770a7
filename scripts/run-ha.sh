#!/usr/bin/env bash
# Two hsmkms nodes sharing one SoftHSM2 token store and one PostgreSQL
# database, on this machine, for trying what "Running several nodes" in
# the README describes.
#
#   scripts/run-ha.sh DIR          (or: make run-ha [HA_DIR=DIR])
#
# It installs PostgreSQL from the distribution's packages if it is missing
# (scripts/postgres.sh install), starts a cluster under DIR/postgres (as an
# unprivileged user, on 127.0.0.1 only), then the nodes, one after the
# other: node-1 on 127.0.0.1:4599 and node-2 on 127.0.0.1:4600
# (HA_PORTS="p1 p2" changes them), both `hsmkms serve --data-dir DIR/data`
# with the database's URL and their own node id. It writes
#
#   DIR/env          the AWS client environment for node 1, as `serve
#                    --data-dir` prints it (source it: . DIR/env)
#   DIR/nodes        one endpoint URL per line
#   DIR/node-1.pid   DIR/node-2.pid
#   DIR/node-N.log   each node's log; DIR/node-N.out what it printed
#
# and runs in the foreground until SIGTERM or SIGINT (Ctrl-C), then stops
# the nodes and the database it started. Run it again on the same DIR to
# get the same keys back. HSMKMS=path picks the hsmkms binary (default:
# bin/hsmkms, built if missing).
set -euo pipefail

die() { echo "run-ha.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 DIR"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
mkdir -p "$1"
dir=$(cd "$1" && pwd)
read -r port1 port2 <<<"${HA_PORTS:-4599 4600}"
[ -n "${port1:-}" ] && [ -n "${port2:-}" ] || die "HA_PORTS must name two ports"
bin=${HSMKMS:-$root/bin/hsmkms}
if [ ! -x "$bin" ]; then
  (cd "$root" && go build -trimpath -o bin/hsmkms ./cmd/hsmkms) || die "cannot build $bin"
fi
command -v softhsm2-util >/dev/null 2>&1 || "$here/setup.sh"
"$here/postgres.sh" install

pids=()
pg_started=
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "$dir"/node-*.pid
  [ -z "$pg_started" ] || "$here/postgres.sh" stop "$dir/postgres" || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# PostgreSQL refuses to run as root: as root, postgres.sh runs it as the
# postgres user, who must reach DIR/postgres.
"$here/postgres.sh" start "$dir/postgres" >/dev/null
pg_started=1
url_file="$dir/postgres/url"
[ -s "$url_file" ] || die "$url_file is missing"

# start N PORT: starts node-N and waits for the environment block it
# prints once it serves.
start() {
  local n=$1 port=$2 out="$dir/node-$1.out" log="$dir/node-$1.log"
  : >"$out"
  # Each node's XKS proxy listens 100 above its port (the default, one
  # above, is the other node's).
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" --xks-listen "127.0.0.1:$((port + 100))" \
    --database-url-file "$url_file" --node-id "node-$n" >"$out" 2>>"$log" &
  local pid=$!
  pids+=("$pid")
  echo "$pid" >"$dir/node-$n.pid"
  for _ in $(seq 1 600); do
    grep -q '^export AWS_REGION=' "$out" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "node-$n exited (log: $log)"; }
    sleep 0.1
  done
  die "node-$n did not start within a minute (log: $log)"
}

# One after the other: the first makes the data directory and the
# schema; SoftHSM2 tokens are logged in to one node at a time anyway.
start 1 "$port1"
grep '^export ' "$dir/node-1.out" >"$dir/env"
start 2 "$port2"
printf 'https://127.0.0.1:%s\nhttps://127.0.0.1:%s\n' "$port1" "$port2" >"$dir/nodes"

cat <<EOF

Two hsmkms nodes are serving, on one SoftHSM2 token store ($dir/data/softhsm)
and one PostgreSQL database ($dir/postgres):

$(sed 's/^/  /' "$dir/nodes")

  . $dir/env                                   # the AWS environment, for node 1
  AWS_ENDPOINT_URL_KMS=https://127.0.0.1:$port2 aws kms list-keys    # the same keys through node 2

Logs: $dir/node-1.log, $dir/node-2.log. Ctrl-C stops everything.
EOF

# Wait for a signal; if both nodes die, stop.
while true; do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || die "both nodes exited (logs: $dir/node-1.log, $dir/node-2.log)"
  sleep 1 &
  wait $! || true
done
