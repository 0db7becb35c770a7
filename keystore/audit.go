package keystore

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"sync"

	"github.com/hsmkms/hsmkms/hsm"
)

// The audit signing key signs the audit trail's digest files. It is an
// ECDSA P-256 key pair on the default token, generated there on first
// use: the private key is sensitive, never extractable and may only sign,
// so a digest signature proves the default token made it. The public key
// is exported (as DER SubjectPublicKeyInfo) for anyone to check digests
// with, openssl included.
//
// Its CKA_ID and label are fixed: every start finds the same key, and
// digests signed by earlier runs still verify under the same public key.
var auditKeyID = []byte("hsmkms:audit-signing")

const auditKeyLabel = "hsmkms audit signing key"

// AuditSigner signs with the audit signing key. Safe for concurrent use.
type AuditSigner struct {
	store  *Store
	public []byte
}

// auditKey serialises making the audit key, so two first uses cannot both
// generate one.
var auditKeyMu sync.Mutex

// AuditSigner returns the signer of the audit signing key on the default
// token, generating the key pair there if the token has none.
func (m *Manager) AuditSigner(ctx context.Context) (*AuditSigner, error) {
	def := m.Default()
	if def == nil {
		return nil, ErrNotConnected
	}
	tok, err := def.token()
	if err != nil {
		return nil, err
	}
	auditKeyMu.Lock()
	defer auditKeyMu.Unlock()
	_, err = tok.FindObject(ctx, hsm.PrivateKeyByID(auditKeyID))
	if errors.Is(err, hsm.ErrObjectNotFound) {
		err = tok.GenerateKeyPair(ctx, auditKeyID, auditKeyLabel, hsm.ECP256, hsm.UsageSign|hsm.UsageVerify)
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: audit signing key: %w", classify(err))
	}
	der, err := tok.PublicKeyDER(ctx, hsm.PublicKeyByID(auditKeyID))
	if err != nil {
		return nil, fmt.Errorf("keystore: audit signing key: %w", classify(err))
	}
	return &AuditSigner{store: def, public: der}, nil
}

// PublicKey is the audit signing key's public key, DER
// SubjectPublicKeyInfo.
func (a *AuditSigner) PublicKey() []byte { return a.public }

// Sign signs a SHA-256 digest on the token: an ASN.1 DER ECDSA signature,
// what `openssl dgst -sha256 -verify` checks.
func (a *AuditSigner) Sign(ctx context.Context, sha256Digest []byte) ([]byte, error) {
	tok, err := a.store.token()
	if err != nil {
		return nil, err
	}
	sig, err := tok.Sign(ctx, hsm.PrivateKeyByID(auditKeyID), hsm.ECDSA, crypto.SHA256, sha256Digest)
	return sig, classify(err)
}

// isAuditKey reports whether a token object is half of the audit signing
// key: keystore's own, like the password vault's key.
func isAuditKey(id []byte) bool { return string(id) == string(auditKeyID) }
