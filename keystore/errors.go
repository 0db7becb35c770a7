package keystore

import (
	"context"
	"errors"
	"fmt"

	"github.com/hsmkms/hsmkms/hsm"
)

// The classes of failure a key store's operations report. Every error from
// a Store, Manager or Cluster method on key material wraps at most one of
// them (errors.Is), and also the token's own error, for the log: callers
// branch on the class, never on PKCS#11 codes. Timeouts carry no class of
// their own: they satisfy errors.Is(err, context.DeadlineExceeded), as the
// context that ran out says. An error wrapping none of these is a fault on
// hsmkms's side (a bug, an inconsistent token): log it and answer as for an
// internal error.
var (
	// ErrUnavailable: the store cannot use its token now. The device
	// failed, was removed or is absent; the token dropped the login and
	// logging in again failed; the token was closed; or the store is not
	// connected. It may pass by itself (hsm rebuilds a failed token) or
	// after a reconnect.
	ErrUnavailable = errors.New("keystore: key store unavailable")
	// ErrInvalidCiphertext: the ciphertext does not decrypt under the
	// material (wrong key, tampered, truncated, wrong additional data). The
	// causes are deliberately indistinguishable.
	ErrInvalidCiphertext = errors.New("keystore: invalid ciphertext")
	// ErrUnsupported: the store's token cannot do what was asked (it lacks
	// the mechanism, or a scheme it claims, such as Ed25519ph on SoftHSM2).
	ErrUnsupported = errors.New("keystore: not supported by the key store's token")
	// ErrMaterialNotFound: the material version is not in the store (its
	// token objects are gone), or only part of it is.
	ErrMaterialNotFound = errors.New("keystore: key material not found")
	// ErrNotRelated: a cluster does not hold a key store's material, or
	// refuses the store's password (see Cluster.CheckRelated).
	ErrNotRelated = errors.New("keystore: the cluster does not hold the key store's material")
)

// classify gives a token failure its class. The token's error stays
// wrapped (with its Cryptoki function and CKR code, never a secret) for the
// log.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrInvalidCiphertext), errors.Is(err, ErrUnsupported),
		errors.Is(err, ErrMaterialNotFound), errors.Is(err, ErrIncorrectMaterial):
		return err // classified already
	case hsm.IsDeviceFailure(err), errors.Is(err, hsm.ErrTokenNotFound), errors.Is(err, hsm.ErrUserNotLoggedIn),
		errors.Is(err, hsm.ErrClosed):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	case errors.Is(err, hsm.ErrInvalidCiphertext):
		return fmt.Errorf("%w: %w", ErrInvalidCiphertext, err)
	case errors.Is(err, hsm.ErrIncorrectMaterial):
		return fmt.Errorf("%w: %w", ErrIncorrectMaterial, err)
	case errors.Is(err, hsm.ErrMechanismNotSupported), errors.Is(err, hsm.ErrNotWrappable):
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	case errors.Is(err, errEnvelope):
		return fmt.Errorf("%w: %w", ErrMaterialNotFound, err)
	case errors.Is(err, hsm.ErrObjectNotFound):
		return fmt.Errorf("%w: %w", ErrMaterialNotFound, err)
	}
	return err
}
