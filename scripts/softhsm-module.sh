#!/usr/bin/env bash
# Prints the absolute path of the SoftHSM2 PKCS#11 module, or fails.
# hsmkms loads modules by absolute path only, so this is how scripts and tests
# find it without guessing a distribution's layout. HSMKMS_SOFTHSM_MODULE wins.
set -euo pipefail
if [ -n "${HSMKMS_SOFTHSM_MODULE:-}" ]; then echo "$HSMKMS_SOFTHSM_MODULE"; exit 0; fi
for p in /usr/lib/softhsm/libsofthsm2.so \
         /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -e "$p" ]; then echo "$p"; exit 0; fi
done
exit 1
