#!/usr/bin/env bash
# Installs what hsmkms needs beyond Go: SoftHSM2 (the token used by tests and
# `make run`), OpenSC (pkcs11-tool, for poking at tokens by hand) and
# OpenSSL (tests verify signatures with it, as a user would).
# Idempotent: does nothing when everything is present. Called by `make test`
# and `make run`; safe to run by hand.
set -euo pipefail

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool   >/dev/null 2>&1 || need+=(opensc)
command -v openssl       >/dev/null 2>&1 || need+=(openssl)   # tests check signatures with it
[ -e "$("$(dirname "$0")/softhsm-module.sh" 2>/dev/null || echo /nonexistent)" ] || need+=(softhsm2)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing ${need[*]}; this script installs them only on Debian/Ubuntu (apt-get)." >&2
  echo "setup: install SoftHSM2 2.6+ and OpenSC with your package manager, then retry." >&2
  exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "setup: need root (or sudo) to apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

echo "setup: installing ${need[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "setup: done" >&2
