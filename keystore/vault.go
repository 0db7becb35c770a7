package keystore

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hsmkms/hsmkms/hsm"
)

// The password vault keeps each custom key store's kmsuser password (its
// token's user PIN) sealed at rest: AES-256-GCM under one key on the
// default token, generated there on first use, sensitive and never
// extractable, so a copy of the metadata alone reveals no password. The
// custom key store's id is the additional data: a sealed password moved to
// another store's row does not open.
//
// The key's CKA_ID, label and the additional data's form are kept byte for
// byte from the first release: passwords sealed then must still open.
var vaultKeyID = []byte("hsmkms:key-store-passwords")

const vaultKeyLabel = "hsmkms key store passwords"

func vaultAAD(storeID string) []byte { return []byte("kmsuser password for " + storeID) }

// vault serialises making the vault key, so that two first seals cannot
// both generate one. Only connects and key store changes take it, never a
// request's hot path.
type vault struct {
	mu    sync.Mutex
	ready bool // the key is known to exist on the default token
}

// vaultKey returns the default token and the vault key, making the key if
// create is set and the token has none.
func (m *Manager) vaultKey(ctx context.Context, create bool) (*hsm.Token, hsm.ObjectRef, error) {
	ref := hsm.SecretKeyByID(vaultKeyID)
	def := m.Default()
	if def == nil {
		return nil, ref, ErrNotConnected
	}
	tok, err := def.token()
	if err != nil {
		return nil, ref, err
	}
	m.vault.mu.Lock()
	defer m.vault.mu.Unlock()
	if m.vault.ready {
		return tok, ref, nil
	}
	_, err = tok.FindObject(ctx, ref)
	if errors.Is(err, hsm.ErrObjectNotFound) && create {
		err = m.makeVaultKey(ctx, tok)
	}
	if err != nil {
		return nil, ref, classify(err)
	}
	m.vault.ready = true
	return tok, ref, nil
}

// SealPassword seals the kmsuser password of the custom key store storeID
// for the metadata: IV ‖ ciphertext ‖ tag.
func (m *Manager) SealPassword(ctx context.Context, storeID, password string) ([]byte, error) {
	tok, ref, err := m.vaultKey(ctx, true)
	if err != nil {
		return nil, err
	}
	iv, sealed, err := tok.EncryptGCM(ctx, ref, []byte(password), vaultAAD(storeID))
	if err != nil {
		return nil, classify(err)
	}
	return append(iv, sealed...), nil
}

// OpenPassword opens what SealPassword sealed for storeID; nothing sealed
// (empty) is the empty password. ErrInvalidCiphertext when sealed was not
// sealed for storeID or was changed; ErrMaterialNotFound when the vault key
// is gone from the default token (it is never silently made again to open).
func (m *Manager) OpenPassword(ctx context.Context, storeID string, sealed []byte) (string, error) {
	if len(sealed) == 0 {
		return "", nil
	}
	if len(sealed) < GCMIVSize+GCMTagSize {
		return "", fmt.Errorf("%w: sealed password of key store %s is too short", ErrInvalidCiphertext, storeID)
	}
	tok, ref, err := m.vaultKey(ctx, false)
	if err != nil {
		return "", err
	}
	plain, err := tok.DecryptGCM(ctx, ref, sealed[:GCMIVSize], sealed[GCMIVSize:], vaultAAD(storeID))
	if err != nil {
		return "", classify(err)
	}
	return string(plain), nil
}

// makeVaultKey makes the vault key under the Locker's "vault" lock, after
// looking once more: another node sharing the token and the database may
// have made it since this one looked (a token shows every process the
// objects another made, SoftHSM2 included). Without the lock two nodes
// sealing their first password at once would each make a key, and every
// later lookup would find two.
func (m *Manager) makeVaultKey(ctx context.Context, tok *hsm.Token) error {
	if m.locker != nil {
		unlock, err := m.locker.Lock(ctx, "vault")
		if err != nil {
			return err
		}
		defer unlock()
	}
	_, err := tok.FindObject(ctx, hsm.SecretKeyByID(vaultKeyID))
	if errors.Is(err, hsm.ErrObjectNotFound) {
		_, err = tok.GenerateAESKey(ctx, vaultKeyID, vaultKeyLabel, hsm.UsageEncrypt|hsm.UsageDecrypt)
	}
	return err
}
