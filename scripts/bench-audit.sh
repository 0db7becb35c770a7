#!/usr/bin/env bash
# Measures what the audit trail costs: Encrypt at 16 workers against the
# same data directory served with the trail on and off, alternately, back
# to back (the shared machine's load drifts; alternating spreads it over
# both).
#
#   scripts/bench-audit.sh [path/to/hsmkms] [duration] [rounds] [workers]
#
# Each round starts `serve --config` twice: the configuration `serve
# --data-dir` wrote (audit on, as by default) and a copy with
# `audit: {enabled: false}`.
set -euo pipefail

bin=${1:-bin/hsmkms} duration=${2:-10s} rounds=${3:-3} workers=${4:-16}
load=${LOAD:-$(dirname "$bin")/hsmkms-load}
[ -x "$load" ] || { echo "bench-audit: $load not found (make build-load builds it)" >&2; exit 1; }
. "$(dirname "$0")/serve-temp.sh"

# The data directory is made; serve it by its configuration from now on.
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
data="$dir/data"
sed 's/^audit:$/audit:\n    enabled: false/' "$data/hsmkms.yaml" > "$data/unaudited.yaml"
grep -q 'enabled: false' "$data/unaudited.yaml" || { echo "bench-audit: could not turn the trail off" >&2; exit 1; }

serve() {
  "$bin" serve --config "$1" >"$dir/out-$2" 2>"$dir/log-$2" &
  pid=$!
  for _ in $(seq 1 200); do
    curl -fs --cacert "$data/tls/ca.pem" "$AWS_ENDPOINT_URL_KMS/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$dir/log-$2" >&2; echo "bench-audit: server exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench-audit: server not ready" >&2; exit 1
}

# Each round's cost is 1 - audited/unaudited req/s; the summary gives the
# median round (a noisy neighbour slows one run, not a whole round's pair).
costs=()
declare -A rps=()
for r in $(seq 1 "$rounds"); do
  for mode in audited unaudited; do
    cfg="$data/hsmkms.yaml"; [ "$mode" = unaudited ] && cfg="$data/unaudited.yaml"
    serve "$cfg" "$mode-$r"
    # A failed request makes the load generator exit non-zero after its line.
    line=$("$load" --op Encrypt --size 1024 --workers "$workers" --duration "$duration" --pid "$pid") ||
      { printf '%s\n' "$line" >&2; exit 1; }
    printf '%-10s round %d  %s\n' "$mode" "$r" "$line"
    rps[$mode]=$(sed -n 's/.* \([0-9.]*\) req\/s .*/\1/p' <<<"$line")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
  costs+=("$(awk -v a="${rps[audited]}" -v u="${rps[unaudited]}" 'BEGIN { printf "%.1f", 100 * (1 - a / u) }')")
done
printf '%s\n' "${costs[@]}" | sort -n | awk -v w="$workers" '
  { c[NR] = $1 }
  END { printf "audit cost at %d workers: median %.1f%% of Encrypt req/s over %d rounds (rounds: %.1f%% to %.1f%%)\n",
        w, (NR % 2 ? c[(NR + 1) / 2] : (c[NR / 2] + c[NR / 2 + 1]) / 2), NR, c[1], c[NR] }'
