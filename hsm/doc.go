// Package hsm is everything hsmkms needs from a PKCS#11 token, and nothing
// about KMS: loading modules, finding tokens, sessions, logins and PINs, key
// objects, AES-GCM, RSA and EC key pairs (signatures, RSAES-OAEP, ECDH),
// HMAC and random numbers. It exists so that the rest of the
// service never sees a session handle, a CKR code it must interpret, or a
// mechanism parameter it could get wrong.
//
// Guarantees:
//
//   - Modules are loaded by absolute path only, initialised once per path
//     per process (CKF_OS_LOCKING_OK) and finalised when the last user
//     closes them.
//   - Tokens are found by label or serial, never by slot id, which SoftHSM2
//     and others reassign.
//   - Every key generated here is a token object with CKA_PRIVATE,
//     CKA_SENSITIVE true and CKA_EXTRACTABLE false, and has exactly the
//     usages asked for; every other usage attribute is set false.
//   - AES-GCM always uses a fresh 12-byte random IV and a 128-bit tag, and
//     refuses other sizes before calling the token (SoftHSM2 would accept a
//     NULL IV or a 0-bit tag). Any authentication failure is
//     ErrInvalidCiphertext, whatever code the token used for it.
//   - Key pairs follow the same template; the private half never leaves the
//     token. The only key material this package ever returns is what
//     GenerateDataKeyPair and DeriveECDH exist to return, from session
//     objects destroyed before they return.
//   - Every RSAES-OAEP ciphertext that does not decrypt is exactly
//     ErrInvalidCiphertext, whether the token or the in-process constant-time
//     decoding (used where the token lacks the OAEP parameters) found it.
//   - A signature that does not verify is (false, nil), never an error; a
//     scheme the token cannot really do is ErrMechanismNotSupported, even
//     when the token claims otherwise (Ed25519ph on SoftHSM2).
//   - The hot path never searches the token: object handles are cached, and
//     dropped when the token says they are gone.
//   - A failed login is never retried automatically; each try would burn the
//     token's PIN counter. The one call tried again is the making of a token
//     object on SoftHSM2 that failed with CKR_GENERAL_ERROR or
//     CKR_FUNCTION_FAILED: SoftHSM2 2.6 fails so, rarely, while another
//     session writes the same token, and leaves nothing behind
//     (softHSMStoreRace); it is tried once more, and logged.
//   - Errors carry the Cryptoki function and CKR code (errors.As with
//     pkcs11.Error) and a class for errors.Is, and never a PIN or key byte.
//
// Token and Module are safe for concurrent use. Sessions are borrowed from a
// bounded pool for the span of one call and never escape the package.
package hsm
