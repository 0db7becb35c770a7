package hsm

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/miekg/pkcs11"
)

// The only AES-GCM parameters hsm/ uses. SoftHSM2 accepts a NULL or short IV
// and a 0-bit tag without complaint, so the sizes are enforced here, before
// anything reaches the token.
const (
	GCMIVSize  = 12
	GCMTagSize = 16
)

// EncryptGCM encrypts plaintext under the AES key ref with a fresh random
// 12-byte IV, authenticating aad too. It returns the IV and the ciphertext
// with the 16-byte tag appended.
func (t *Token) EncryptGCM(ctx context.Context, ref ObjectRef, plaintext, aad []byte) (iv, sealed []byte, err error) {
	iv = make([]byte, GCMIVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, nil, fmt.Errorf("hsm: IV: %w", err)
	}
	err = t.withKey(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		params := pkcs11.NewGCMParams(iv, aad, GCMTagSize*8)
		defer params.Free()
		if err := t.p11.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return wrap("C_EncryptInit", err)
		}
		var err error
		sealed, err = t.p11.Encrypt(s, plaintext)
		return wrap("C_Encrypt", err)
	})
	if err != nil {
		return nil, nil, err
	}
	if len(sealed) != len(plaintext)+GCMTagSize {
		return nil, nil, fmt.Errorf("hsm: token returned %d bytes for %d bytes of GCM plaintext", len(sealed), len(plaintext))
	}
	return iv, sealed, nil
}

// DecryptGCM reverses EncryptGCM. Any authentication failure, whatever code
// the token gives for it (SoftHSM2 says CKR_GENERAL_ERROR), is
// ErrInvalidCiphertext, as is an IV or tag of the wrong size.
func (t *Token) DecryptGCM(ctx context.Context, ref ObjectRef, iv, sealed, aad []byte) ([]byte, error) {
	if len(iv) != GCMIVSize {
		return nil, fmt.Errorf("%w: GCM IV must be %d bytes", ErrInvalidCiphertext, GCMIVSize)
	}
	if len(sealed) < GCMTagSize {
		return nil, fmt.Errorf("%w: shorter than the %d-byte GCM tag", ErrInvalidCiphertext, GCMTagSize)
	}
	var plain []byte
	err := t.withKey(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		params := pkcs11.NewGCMParams(iv, aad, GCMTagSize*8)
		defer params.Free()
		if err := t.p11.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return wrap("C_DecryptInit", err)
		}
		var err error
		plain, err = t.p11.Decrypt(s, sealed)
		if code, ok := Code(err); ok && isTagFailure(code) {
			return &Error{Op: "C_Decrypt", Code: pkcs11.Error(code), class: ErrInvalidCiphertext}
		}
		return wrap("C_Decrypt", err)
	})
	return plain, err
}

func isTagFailure(rv uint) bool {
	switch rv {
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		return true
	}
	return false
}

// GenerateRandom returns n bytes from the token's RNG.
func (t *Token) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	var out []byte
	err := t.do(ctx, hotPath, func(s pkcs11.SessionHandle) error {
		var err error
		out, err = t.p11.GenerateRandom(s, n)
		return wrap("C_GenerateRandom", err)
	})
	return out, err
}
