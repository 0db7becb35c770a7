#!/usr/bin/env bash
# Creates an isolated SoftHSM2 environment in DIR (DIR/softhsm2.conf and
# DIR/tokens) and, optionally, initialises tokens in it by label.
#
#   softhsm-env.sh DIR [LABEL SO_PIN_FILE USER_PIN_FILE]...
#
# PINs are read from files (mode 0600 expected), never taken on the command
# line of this script. A token whose label already exists is left alone, so
# the script is idempotent. On success it prints the SOFTHSM2_CONF line to
# export. Nothing outside DIR is touched.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ] || [ $(( ($# - 1) % 3 )) -ne 0 ]; then
  echo "usage: $0 DIR [LABEL SO_PIN_FILE USER_PIN_FILE]..." >&2
  exit 2
fi
command -v softhsm2-util >/dev/null 2>&1 || "$here/../scripts/setup.sh"

dir=$1; shift
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
chmod 0700 "$dir" "$dir/tokens"
conf="$dir/softhsm2.conf"
if [ ! -f "$conf" ]; then
  sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.in" > "$conf.tmp"
  chmod 0600 "$conf.tmp"
  mv "$conf.tmp" "$conf"
fi
export SOFTHSM2_CONF="$conf"

while [ $# -gt 0 ]; do
  label=$1 so_file=$2 pin_file=$3; shift 3
  if softhsm2-util --show-slots 2>/dev/null | grep -qE "^[[:space:]]*Label:[[:space:]]+${label}[[:space:]]*$"; then
    continue
  fi
  so_pin=$(<"$so_file") pin=$(<"$pin_file")
  # softhsm2-util only takes PINs as arguments; they are visible to local
  # root in /proc for the lifetime of this short call and nowhere else.
  softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$pin" >/dev/null
done
echo "SOFTHSM2_CONF=$conf"
