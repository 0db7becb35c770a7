package keystore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAuditSignerIsMadeOnceOnTheTokenAndSigns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt := hsmtest.NewToken(t)
	cfg := hsm.TokenConfig{Module: tt.Module, Label: tt.Label}
	def, err := keystore.OpenDefault(ctx, cfg, tt.UserPIN)
	require.NoError(t, err)
	m := keystore.NewManager(def)
	t.Cleanup(func() { m.Close(ctx) })

	a, err := m.AuditSigner(ctx)
	require.NoError(t, err)
	pub, err := x509.ParsePKIXPublicKey(a.PublicKey())
	require.NoError(t, err)
	ec, ok := pub.(*ecdsa.PublicKey)
	require.True(t, ok)
	assert.Equal(t, "P-256", ec.Curve.Params().Name)

	sum := sha256.Sum256([]byte("a digest file"))
	sig, err := a.Sign(ctx, sum[:])
	require.NoError(t, err)
	assert.True(t, ecdsa.VerifyASN1(ec, sum[:], sig), "a DER signature over the SHA-256 digest")

	again, err := m.AuditSigner(ctx)
	require.NoError(t, err)
	assert.Equal(t, a.PublicKey(), again.PublicKey(), "the key is found again, not made anew")

	tok, err := def.Token()
	require.NoError(t, err)
	attrs, err := tok.Attributes(ctx, hsm.PrivateKeyByID([]byte("hsmkms:audit-signing")),
		pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_TOKEN, pkcs11.CKA_DECRYPT)
	require.NoError(t, err)
	assert.Equal(t, []byte{1}, attrs[0].Value, "sensitive")
	assert.Equal(t, []byte{0}, attrs[1].Value, "never extractable")
	assert.Equal(t, []byte{1}, attrs[2].Value, "a token object")
	assert.Equal(t, []byte{0}, attrs[3].Value, "signs only")

	inv, err := def.Inventory(ctx)
	require.NoError(t, err)
	assert.Empty(t, inv, "the audit key is keystore's own, not an orphan")

	require.NoError(t, def.Check(ctx))
	st, ok := def.Pool()
	require.True(t, ok)
	assert.Positive(t, st.Size)
	assert.Len(t, m.All(), 1)
}
