#!/usr/bin/env bash
# Fails if the server binary links the AWS SDK. hsmkms implements the KMS
# API; it never calls one, so the SDK belongs to tests and to the load
# generator (cmd/hsmkms-load) only. Called by `make lint`.
#
#   scripts/check-server-deps.sh [package ...]   (default ./cmd/hsmkms)
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for pkg in "${@:-./cmd/hsmkms}"; do
  deps=$(go list -deps "$pkg")
  bad=$(grep '^github.com/aws/aws-sdk-go-v2' <<<"$deps" || true)
  if [ -n "$bad" ]; then
    echo "check-server-deps: $pkg must not depend on the AWS SDK, but pulls in:" >&2
    head -5 <<<"$bad" | sed 's/^/  /' >&2
    n=$(wc -l <<<"$bad"); [ "$n" -le 5 ] || echo "  ... and $((n - 5)) more" >&2
    echo "check-server-deps: see why with: go list -deps -f '{{.ImportPath}}: {{join .Imports \" \"}}' $pkg | grep aws-sdk" >&2
    status=1
  fi
done
exit $status
