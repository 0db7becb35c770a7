#!/usr/bin/env bash
# Enforces the dependency rule between the three layers (cmd -> kms ->
# keystore -> hsm), for non-test files only: tests may use hsm and
# hsm/hsmtest to set up and inspect tokens.
#   kms, kms/...           must not import hsm or hsm/... (they reach tokens
#                          only through keystore; keystore's own use of hsm
#                          is the one path)
#   xks, xks/...           must not import hsm or hsm/... (the XKS proxy's
#                          keys are behind keystore, as kms's are)
#   keystore, keystore/... must not depend on kms or kms/..., even indirectly
#   hsm, hsm/...           must not depend on keystore or kms, even indirectly
# `go list` leaves _test files out of .Imports and .Deps.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
mod=$($GO list -m)
violations=0
# A failing `go list` (an import cycle, say) must fail the check, not feed
# the loop a partial listing.
listing=$($GO list -f '{{.ImportPath}}|{{join .Imports " "}}|{{join .Deps " "}}' ./...)

in_tree() { # in_tree PKG ROOT: PKG is ROOT or below it
  [ "$1" = "$2" ] || [ "${1#"$2"/}" != "$1" ]
}

report() {
  echo "check-imports: $1" >&2
  violations=$((violations + 1))
}

while IFS='|' read -r pkg imports deps; do
  if in_tree "$pkg" "$mod/kms"; then
    for i in $imports; do
      if in_tree "$i" "$mod/hsm"; then
        report "$pkg imports $i: kms reaches tokens only through keystore"
      fi
    done
  elif in_tree "$pkg" "$mod/xks"; then
    for i in $imports; do
      if in_tree "$i" "$mod/hsm"; then
        report "$pkg imports $i: the XKS proxy reaches tokens only through keystore"
      fi
    done
  elif in_tree "$pkg" "$mod/keystore"; then
    for d in $deps; do
      if in_tree "$d" "$mod/kms"; then
        report "$pkg depends on $d: keystore must not import kms"
      fi
    done
  elif in_tree "$pkg" "$mod/hsm"; then
    for d in $deps; do
      if in_tree "$d" "$mod/keystore" || in_tree "$d" "$mod/kms"; then
        report "$pkg depends on $d: hsm imports neither keystore nor kms"
      fi
    done
  fi
done <<<"$listing"

if [ "$violations" -gt 0 ]; then
  echo "check-imports: $violations violation(s) of the dependency rule (see keystore's package doc)" >&2
  exit 1
fi
