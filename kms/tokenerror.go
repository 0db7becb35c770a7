package kms

import (
	"context"
	"errors"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// tokenCall is what a key store call on a request's path was for, so that
// tokenError can answer in AWS's terms.
type tokenCall struct {
	// key is the key whose material the call used; nil for a call on a
	// store's token alone (GenerateRandom, the password vault).
	key *store.Key
	// storeID is, when key is nil, the custom key store whose token was
	// called ("" for the default key store).
	storeID string
	// what names, in the request's terms, what the token may lack
	// ("KeySpec HMAC_512", "ECDSA_SHA_256"); "" when the client asked for
	// nothing the token could lack, so a missing mechanism is our fault.
	what string
}

// tokenError is the one place a key store failure becomes what the client
// sees. Every call into a keystore.Store on a request's path passes its
// error through here, the key's or the store's alike:
//
//	keystore error                  call on a key's material                  call on a store's token alone
//	------------------------------  ----------------------------------------  -----------------------------------
//	context.DeadlineExceeded        DependencyTimeoutException                DependencyTimeoutException
//	ErrUnavailable, custom store    KMSInvalidStateException                  CustomKeyStoreInvalidStateException
//	                                "<key ARN> is unavailable."
//	ErrUnavailable, default store   KMSInternalException                      KMSInternalException
//	ErrInvalidCiphertext            InvalidCiphertextException (no detail)    KMSInternalException
//	ErrUnsupported, what named      UnsupportedOperationException             UnsupportedOperationException
//	                                "<what> is not supported by this key store's token."
//	ErrUnsupported, nothing named   KMSInternalException                      KMSInternalException
//	anything else                   KMSInternalException                      KMSInternalException
//	(ErrMaterialNotFound, faults)
//
// KMSInternalException is the error returned as is: the wire layer logs
// its detail and sends AWS's generic message. A ciphertext that does not
// open is the client's only when it came from the client (a key's
// material); the vault's sealed passwords are ours. A mechanism missing is
// the client's only when the client chose it (what); otherwise the token
// made the material and then lost the means to use it, which is ours too.
//
// Why the default store differs: a custom key store's token is the
// customer's cluster, and AWS answers for a key whose cluster cannot be
// used with the key being unavailable (KMSInvalidStateException), and for
// GenerateRandom on such a store with CustomKeyStoreInvalidStateException,
// which it documents for a store that is not connected. The default token
// is hsmkms's own HSM, as AWS's fleet is AWS's: its failure is the
// service's, not the key's (AWS keys outside custom key stores have no
// Unavailable state) and not a timeout (DependencyTimeoutException would
// claim one that did not happen). KMSInternalException is a 500, which the
// SDKs retry, and its message tells the caller the request can be retried,
// while hsm rebuilds the failed token in the background.
func tokenError(err error, call tokenCall) error {
	custom := call.storeID != ""
	if call.key != nil {
		// A key of an external key store has its own material on the
		// default token: that token's failures are the service's.
		custom = materialStoreID(call.key) != ""
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return wire.Errorf(wire.DependencyTimeout, "The system timed out while trying to fulfill the request. The request can be retried.")
	case errors.Is(err, keystore.ErrUnavailable) && custom && call.key != nil:
		return invalidState(arnOf(call.key), StateUnavailable)
	case errors.Is(err, keystore.ErrUnavailable) && custom:
		return wire.Errorf(wire.CustomKeyStoreInvalidState, "The token of custom key store %s is not available; the operation requires the store to be CONNECTED.", call.storeID)
	case errors.Is(err, keystore.ErrInvalidCiphertext) && call.key != nil:
		return invalidCiphertext()
	case errors.Is(err, keystore.ErrUnsupported) && call.what != "":
		return wire.Errorf(wire.UnsupportedOperation, "%s is not supported by this key store's token.", call.what)
	}
	return err
}
