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
// kms names a material version only through a Material: a Spec and an
// opaque reference (Material.Ref) that kms records in its metadata and
// turns back into a Material with MaterialOf. Today the reference is the
// CKA_ID of the version's token objects (the layout is defined and
// documented in material.go, and nowhere else). The API is shaped so that
// the planned key hierarchy, where material is held as blobs wrapped under
// a token key and stored in the database rather than as token objects, can
// replace what a reference means without kms changing: NewMaterial fixes
// the reference before anything exists (a wrapped blob would be made
// there), Generate makes whatever must exist outside the metadata, every
// operation takes a Material rather than a token handle, and Inventory,
// Find and Destroy speak of versions, not objects.
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
// are values.
package keystore
