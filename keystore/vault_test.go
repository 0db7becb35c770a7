package keystore_test

import (
	"bytes"
	"sync"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	storeA = "cks-1234567890abcdef0"
	storeB = "cks-0fedcba0987654321"
)

func TestVault(t *testing.T) {
	e := newStore(t, 2)
	ctx := bg(t)
	const password = "kmsuser-password-1"

	t.Run("nothing to open before anything was sealed", func(t *testing.T) {
		_, err := e.m.OpenPassword(ctx, storeA, make([]byte, keystore.GCMIVSize+keystore.GCMTagSize+4))
		require.ErrorIs(t, err, keystore.ErrMaterialNotFound, "the vault key is never made to open")
	})

	sealed, err := e.m.SealPassword(ctx, storeA, password)
	require.NoError(t, err)

	t.Run("round trip", func(t *testing.T) {
		got, err := e.m.OpenPassword(ctx, storeA, sealed)
		require.NoError(t, err)
		assert.Equal(t, password, got)
		assert.False(t, bytes.Contains(sealed, []byte(password)))
		again, err := e.m.SealPassword(ctx, storeA, password)
		require.NoError(t, err)
		assert.NotEqual(t, sealed, again, "a fresh IV every time")
	})
	t.Run("bound to the key store id", func(t *testing.T) {
		_, err := e.m.OpenPassword(ctx, storeB, sealed)
		require.ErrorIs(t, err, keystore.ErrInvalidCiphertext)
	})
	t.Run("tampering", func(t *testing.T) {
		for _, i := range []int{0, keystore.GCMIVSize, len(sealed) - 1} {
			bad := bytes.Clone(sealed)
			bad[i] ^= 1
			_, err := e.m.OpenPassword(ctx, storeA, bad)
			require.ErrorIs(t, err, keystore.ErrInvalidCiphertext, "byte %d", i)
		}
		_, err := e.m.OpenPassword(ctx, storeA, sealed[:keystore.GCMIVSize+keystore.GCMTagSize-1])
		require.ErrorIs(t, err, keystore.ErrInvalidCiphertext, "too short")
	})
	t.Run("nothing sealed is no password", func(t *testing.T) {
		got, err := e.m.OpenPassword(ctx, storeA, nil)
		require.NoError(t, err)
		assert.Empty(t, got)
	})
	t.Run("the vault key never leaves the token", func(t *testing.T) {
		tok, err := e.store.Token()
		require.NoError(t, err)
		ref := hsm.SecretKeyByID([]byte("hsmkms:key-store-passwords"))
		_, err = tok.Attributes(ctx, ref, pkcs11.CKA_VALUE)
		code, _ := hsm.Code(err)
		require.Equal(t, uint(pkcs11.CKR_ATTRIBUTE_SENSITIVE), code)
		attrs, err := tok.Attributes(ctx, ref, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_NEVER_EXTRACTABLE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_TOKEN)
		require.NoError(t, err)
		assert.Equal(t, []bool{false, true, true, true}, []bool{attrs[0].Value[0] == 1, attrs[1].Value[0] == 1, attrs[2].Value[0] == 1, attrs[3].Value[0] == 1})
	})
	t.Run("passwords sealed by earlier releases open", func(t *testing.T) {
		// The format before the vault moved into keystore, written out.
		tok, err := e.store.Token()
		require.NoError(t, err)
		iv, ct, err := tok.EncryptGCM(ctx, hsm.SecretKeyByID([]byte("hsmkms:key-store-passwords")), []byte("old-password"), []byte("kmsuser password for "+storeB))
		require.NoError(t, err)
		got, err := e.m.OpenPassword(ctx, storeB, append(iv, ct...))
		require.NoError(t, err)
		assert.Equal(t, "old-password", got)
	})
	t.Run("a closed default store", func(t *testing.T) {
		e := newStore(t, 1)
		require.NoError(t, e.m.Close(ctx))
		_, err := e.m.SealPassword(ctx, storeA, password)
		require.ErrorIs(t, err, keystore.ErrUnavailable)
	})
}

// TestVaultKeyIsMadeOnce: first seals racing each other make one key, not
// two that would make every later lookup ambiguous.
func TestVaultKeyIsMadeOnce(t *testing.T) {
	e := newStore(t, 4)
	ctx := bg(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.m.SealPassword(ctx, storeA, "password")
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, 1, e.faults.Calls("C_GenerateKey"))
	tok, err := e.store.Token()
	require.NoError(t, err)
	_, err = tok.FindObject(ctx, hsm.SecretKeyByID([]byte("hsmkms:key-store-passwords")))
	require.NoError(t, err, "exactly one vault key")
}
