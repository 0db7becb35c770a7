# Sourced by cli-test.sh and bench-server.sh: starts `$bin serve` on a
# throwaway data directory and a free port, waits for the environment
# block it prints, and exports that block, and nothing else, as the AWS
# configuration. Sets dir (removed on exit), pid and out (the printed block).
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The XKS proxy's own port (the default, --listen's port + 1, may be taken).
xks_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# The per-request log goes to a file: a terminal would slow the server.
"$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" --xks-listen "127.0.0.1:$xks_port" >"$dir/out" 2>"$dir/log" &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^export AWS_REGION=' "$dir/out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; echo "$0: server exited" >&2; exit 1; }
  sleep 0.1
done
out="$dir/out"
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_REGION AWS_ENDPOINT_URL
eval "$(grep '^export ' "$out")"
export AWS_CONFIG_FILE=/dev/null
