// Package kms implements the AWS KMS operations over keys whose material
// lives on PKCS#11 tokens. Metadata (keys, aliases, tags, policies,
// schedules) is in a store.Store and is committed before any response;
// material is only ever touched through keystore, never in memory. The
// wire sub-package speaks the protocol; this package decides what each
// operation means, with AWS's parameters, key-state rules and errors.
//
// kms names a key's material only by the keystore.Material its metadata
// records, and turns keystore's classified errors into AWS exceptions in
// one place (tokenError).
//
// Dependencies: kms and every kms/... package must not import hsm: tokens,
// sessions, CKA_IDs and CKR codes are keystore's business (keystore must
// not import kms, and hsm imports neither). Only _test files may use hsm
// and hsm/hsmtest, to set up and inspect tokens. scripts/check-imports.sh
// enforces this in `make lint`.
package kms
