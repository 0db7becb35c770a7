// Package kms implements the AWS KMS operations over keys whose material
// lives on PKCS#11 tokens. Metadata (keys, aliases, tags, policies,
// schedules) is in a store.Store and is committed before any response;
// material is only ever touched through keystore and hsm, never in memory.
// The wire sub-package speaks the protocol; this package decides what each
// operation means, with AWS's parameters, key-state rules and errors.
package kms
