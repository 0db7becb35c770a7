package keystore_test

import (
	"context"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func openExternal(t *testing.T) (*keystore.ExternalKeys, *hsm.Faults, hsmtest.Token) {
	t.Helper()
	tok := hsmtest.NewToken(t)
	var faults *hsm.Faults
	x, err := keystore.OpenExternalKeys(bg(t), keystore.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 2,
		Wrap: func(p hsm.PKCS11) hsm.PKCS11 { faults = hsm.NewFaults(p); return faults }}, tok.UserPIN, nil)
	require.NoError(t, err)
	t.Cleanup(func() { x.Close(context.Background()) })
	return x, faults, tok
}

// TestExternalKeys: the four kinds of key AWS's proxy tests use, their
// usage enforced on the token, ENABLED/DISABLED seen by another process's
// view of the token (a second login), and the deep health check.
func TestExternalKeys(t *testing.T) {
	t.Parallel()
	x, faults, tok := openExternal(t)
	ctx := bg(t)
	for _, k := range []struct {
		id               string
		encrypt, decrypt bool
	}{{"both", true, true}, {"encrypt-only", true, false}, {"decrypt-only", false, true}, {"impotent", false, false}} {
		got, err := x.CreateExternalKey(ctx, k.id, keystore.ExternalAES256, k.encrypt, k.decrypt)
		require.NoError(t, err)
		assert.Equal(t, keystore.ExternalKey{ID: k.id, Spec: keystore.ExternalAES256, Encrypt: k.encrypt, Decrypt: k.decrypt, Enabled: true}, got)
	}
	_, err := x.CreateExternalKey(ctx, "small", keystore.ExternalAES128, true, true)
	require.NoError(t, err)

	t.Run("duplicate and malformed ids", func(t *testing.T) {
		_, err := x.CreateExternalKey(ctx, "both", keystore.ExternalAES256, true, true)
		require.ErrorIs(t, err, keystore.ErrExternalKeyExists)
		_, err = x.CreateExternalKey(ctx, "has space", keystore.ExternalAES256, true, true)
		require.Error(t, err)
		_, err = x.ExternalKey(ctx, "nope")
		require.ErrorIs(t, err, keystore.ErrExternalKeyNotFound)
	})

	t.Run("list skips the health check key", func(t *testing.T) {
		list, err := x.ListExternalKeys(ctx)
		require.NoError(t, err)
		var ids []string
		for _, k := range list {
			ids = append(ids, k.ID)
		}
		assert.Equal(t, []string{"both", "decrypt-only", "encrypt-only", "impotent", "small"}, ids)
	})

	t.Run("round trip and usage", func(t *testing.T) {
		aad := []byte("aad")
		iv, ct, tag, err := x.ExternalEncrypt(ctx, "both", []byte("hello"), aad)
		require.NoError(t, err)
		require.Len(t, iv, 12)
		require.Len(t, tag, 16)
		require.Len(t, ct, 5)
		plain, err := x.ExternalDecrypt(ctx, "both", iv, ct, tag, aad)
		require.NoError(t, err)
		assert.Equal(t, []byte("hello"), plain)
		_, err = x.ExternalDecrypt(ctx, "both", iv, ct, tag, []byte("other"))
		require.ErrorIs(t, err, keystore.ErrInvalidCiphertext)
		_, err = x.ExternalDecrypt(ctx, "both", make([]byte, 16), ct, tag, aad)
		require.ErrorIs(t, err, keystore.ErrInvalidCiphertext)

		iv, ct, tag, err = x.ExternalEncrypt(ctx, "encrypt-only", []byte("x"), nil)
		require.NoError(t, err)
		_, err = x.ExternalDecrypt(ctx, "encrypt-only", iv, ct, tag, nil)
		require.ErrorIs(t, err, keystore.ErrExternalKeyUsage)
		_, _, _, err = x.ExternalEncrypt(ctx, "decrypt-only", []byte("x"), nil)
		require.ErrorIs(t, err, keystore.ErrExternalKeyUsage)
		_, _, _, err = x.ExternalEncrypt(ctx, "impotent", []byte("x"), nil)
		require.ErrorIs(t, err, keystore.ErrExternalKeyUsage)
		_, _, _, err = x.ExternalEncrypt(ctx, "small", []byte("x"), nil)
		require.ErrorIs(t, err, keystore.ErrExternalKeyUsage, "only AES-256 keys serve AWS KMS")
	})

	t.Run("disabled here, refused at once", func(t *testing.T) {
		// The status read is kept for a second, but a change made
		// through this ExternalKeys replaces it at once.
		_, _, _, err := x.ExternalEncrypt(ctx, "both", []byte("x"), nil)
		require.NoError(t, err)
		require.NoError(t, x.SetExternalKeyEnabled(ctx, "both", false))
		_, _, _, err = x.ExternalEncrypt(ctx, "both", []byte("x"), nil)
		require.ErrorIs(t, err, keystore.ErrExternalKeyDisabled)
		require.NoError(t, x.SetExternalKeyEnabled(ctx, "both", true))
		_, _, _, err = x.ExternalEncrypt(ctx, "both", []byte("x"), nil)
		require.NoError(t, err)
	})

	t.Run("disable from another session of the token", func(t *testing.T) {
		// A second ExternalKeys on the same token stands for the admin
		// command: what it changes, the first sees at its next read of
		// the token (every use, with a StatusTTL of 0).
		x.SetStatusTTL(0)
		defer x.SetStatusTTL(keystore.DefaultStatusTTL)
		// (Not closed: a logout is per process and would log x out too.)
		other, err := keystore.OpenExternalKeys(ctx, keystore.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 1}, tok.UserPIN, nil)
		require.NoError(t, err)
		require.NoError(t, other.SetExternalKeyEnabled(ctx, "both", false))
		k, err := x.ExternalKey(ctx, "both")
		require.NoError(t, err)
		assert.False(t, k.Enabled)
		_, _, _, err = x.ExternalEncrypt(ctx, "both", []byte("x"), nil)
		require.ErrorIs(t, err, keystore.ErrExternalKeyDisabled)
		require.NoError(t, other.SetExternalKeyEnabled(ctx, "both", true))
		_, _, _, err = x.ExternalEncrypt(ctx, "both", []byte("x"), nil)
		require.NoError(t, err)
	})

	t.Run("health check", func(t *testing.T) {
		require.NoError(t, x.Check(ctx))
		faults.Fail("C_Encrypt", pkcs11.CKR_DEVICE_ERROR, 1)
		err := x.Check(ctx)
		require.ErrorIs(t, err, keystore.ErrUnavailable)
		faults.Clear()
		// The token rebuilds itself after a device error.
		require.Eventually(t, func() bool { return x.Check(ctx) == nil }, 30*time.Second, 50*time.Millisecond)
	})

	t.Run("the key's value never leaves the token", func(t *testing.T) {
		tk, err := hsm.OpenToken(hsm.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 1})
		require.NoError(t, err)
		defer tk.Close()
		// Login state is per process: x's login covers this Token too.
		ref := hsm.SecretKeyByID([]byte("hsmkms-xks:both"))
		_, err = tk.Attributes(ctx, ref, pkcs11.CKA_VALUE)
		require.Error(t, err)
		attrs, err := tk.Attributes(ctx, ref, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_TOKEN)
		require.NoError(t, err)
		assert.Equal(t, []byte{1}, attrs[0].Value)
		assert.Equal(t, []byte{0}, attrs[1].Value)
		assert.Equal(t, []byte{1}, attrs[2].Value)
	})
}
