// Package keystore owns key material and the identity of the tokens that
// hold it. It knows which PKCS#11 token backs which KMS key store and
// whether that store is connected (kmsuser login, PIN rotation,
// ConnectionErrorCode), and it is the only place that knows how a KMS key's
// material sits on a token. kms asks a Store to make, find, use and destroy
// material and gets back results or a classified error; it never opens
// tokens, handles PINs, builds a CKA_ID or reads a CKR code.
//
// The default key store (ID "") is the token named in the service
// configuration; it is connected for as long as the service runs, and also
// holds the vault that seals custom key stores' kmsuser passwords
// (Manager.SealPassword, OpenPassword).
//
// It also keeps a store's token from being lost or replaced unnoticed:
// each token carries an identity the database records (identity.go), and
// SoftHSM2 tokens, whose token.object a crash can empty, are restored from
// copies hsmkms keeps (softhsm.go). See Safeguards.
//
// # Material is addressed, not located
//
// kms names a material version only through a Material: a Spec, a Usage
// and what kms recorded for it (Ref, and for wrapped material Wrapped and
// DomainKey), turned back into a Material with MaterialOf. Ref is the key
// id and material id (material.go); for material held as token objects it
// is also their CKA_ID. A key store holds new material either as token
// objects or wrapped under its domain keys (hierarchy.go): NewMaterial
// fixes the reference, and for a wrapped store makes the material there,
// generated and wrapped on the token with nothing left on it; Generate
// makes what must exist outside the metadata (token objects, or nothing);
// every operation takes a Material, and uses its token objects or its
// unwrapped copy from the store's bounded cache (objectcache.go);
// Inventory, Find and Destroy speak of versions, not objects.
//
// # Errors
//
// Operations on material return errors of a few classes, for errors.Is:
// ErrUnavailable (device failure, logged out, token closed, store not
// connected), ErrInvalidCiphertext, ErrUnsupported (the token lacks a
// mechanism), ErrMaterialNotFound, ErrNotRelated; timeouts satisfy
// errors.Is(err, context.DeadlineExceeded). Anything else is a fault. The
// token's own error stays wrapped for the log; no error carries a PIN,
// password or key byte.
//
// # Dependencies
//
// keystore imports hsm and must never import kms or any kms/... package;
// hsm imports neither; kms and every kms/... package reach tokens only
// through keystore and must not import hsm (their _test files may, and
// hsm/hsmtest). scripts/check-imports.sh enforces this in `make lint`.
//
// Store and Manager are safe for concurrent use; Material, Spec and Usage
// are values. Imported material and multi-Region replicas are meant to
// enter the same hierarchy: a way to unwrap material brought in wrapped
// into the envelope's form is the natural addition (hsm.Token.Unwrap and
// WrapExisting hold the token side of it).
package keystore
