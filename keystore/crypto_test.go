package keystore_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"testing"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCryptoRoundTrips: every operation on a material version, checked
// against Go's crypto with the public key where there is one.
func TestCryptoRoundTrips(t *testing.T) {
	e := newStore(t, 4)
	ctx := bg(t)

	t.Run("AES-GCM", func(t *testing.T) {
		m := e.material(t, keystore.AES256, keystore.UsageEncrypt)
		other := e.material(t, keystore.AES256, keystore.UsageEncrypt)
		aad := []byte("header and context")
		iv, sealed, err := e.store.EncryptGCM(ctx, m, []byte("plaintext"), aad)
		require.NoError(t, err)
		require.Len(t, iv, keystore.GCMIVSize)
		require.Len(t, sealed, len("plaintext")+keystore.GCMTagSize)
		plain, err := e.store.DecryptGCM(ctx, keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, m.Ref(), m.Wrapped(), m.DomainKey()), iv, sealed, aad)
		require.NoError(t, err)
		assert.Equal(t, "plaintext", string(plain))

		tampered := bytes.Clone(sealed)
		tampered[0] ^= 1
		for name, try := range map[string]func() ([]byte, error){
			"other additional data": func() ([]byte, error) { return e.store.DecryptGCM(ctx, m, iv, sealed, []byte("other")) },
			"other material":        func() ([]byte, error) { return e.store.DecryptGCM(ctx, other, iv, sealed, aad) },
			"tampered ciphertext":   func() ([]byte, error) { return e.store.DecryptGCM(ctx, m, iv, tampered, aad) },
			"short IV":              func() ([]byte, error) { return e.store.DecryptGCM(ctx, m, iv[:8], sealed, aad) },
			"no tag":                func() ([]byte, error) { return e.store.DecryptGCM(ctx, m, iv, sealed[:4], aad) },
		} {
			_, err := try()
			assert.ErrorIs(t, err, keystore.ErrInvalidCiphertext, name)
		}
	})

	t.Run("RSA-OAEP", func(t *testing.T) {
		m := e.material(t, keystore.RSA2048, keystore.UsageEncrypt)
		pub := publicKey(t, e, m).(*rsa.PublicKey)
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
			ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, []byte("secret"), nil)
			require.NoError(t, err)
			plain, err := e.store.DecryptOAEP(ctx, m, h, ct)
			require.NoError(t, err, "%v", h)
			assert.Equal(t, "secret", string(plain))
			ct[len(ct)-1] ^= 1
			_, err = e.store.DecryptOAEP(ctx, m, h, ct)
			assert.ErrorIs(t, err, keystore.ErrInvalidCiphertext, "%v", h)
		}
	})

	t.Run("RSA signatures", func(t *testing.T) {
		m := e.material(t, keystore.RSA2048, keystore.UsageSign)
		pub := publicKey(t, e, m).(*rsa.PublicKey)
		d := sha256.Sum256([]byte("message"))
		sig, err := e.store.Sign(ctx, m, keystore.RSAPSS, crypto.SHA256, d[:])
		require.NoError(t, err)
		require.NoError(t, rsa.VerifyPSS(pub, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}))
		sig, err = e.store.Sign(ctx, m, keystore.RSAPKCS1v15, crypto.SHA256, d[:])
		require.NoError(t, err)
		require.NoError(t, rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig))
		ok, err := e.store.Verify(ctx, m, keystore.RSAPKCS1v15, crypto.SHA256, d[:], sig)
		require.NoError(t, err)
		assert.True(t, ok)
	})

	t.Run("ECDSA", func(t *testing.T) {
		m := e.material(t, keystore.ECP256, keystore.UsageSign)
		pub := publicKey(t, e, m).(*ecdsa.PublicKey)
		d := sha256.Sum256([]byte("message"))
		sig, err := e.store.Sign(ctx, m, keystore.ECDSA, crypto.SHA256, d[:])
		require.NoError(t, err)
		assert.True(t, ecdsa.VerifyASN1(pub, d[:], sig), "DER signature that Go verifies")
		ok, err := e.store.Verify(ctx, m, keystore.ECDSA, crypto.SHA256, d[:], sig)
		require.NoError(t, err)
		assert.True(t, ok)
		other := sha256.Sum256([]byte("other message"))
		ok, err = e.store.Verify(ctx, m, keystore.ECDSA, crypto.SHA256, other[:], sig)
		require.NoError(t, err, "a signature that does not verify is no error")
		assert.False(t, ok)
	})

	t.Run("Ed25519", func(t *testing.T) {
		m := e.material(t, keystore.Ed25519, keystore.UsageSign)
		pub := publicKey(t, e, m).(ed25519.PublicKey)
		sig, err := e.store.Sign(ctx, m, keystore.EdDSA, crypto.SHA512, []byte("message"))
		require.NoError(t, err)
		assert.True(t, ed25519.Verify(pub, []byte("message"), sig))
		d := sha512.Sum512([]byte("message"))
		_, err = e.store.Sign(ctx, m, keystore.EdDSAPh, crypto.SHA512, d[:])
		assert.ErrorIs(t, err, keystore.ErrUnsupported, "SoftHSM2 2.6.1 ignores Ed25519ph's flag")
	})

	t.Run("HMAC", func(t *testing.T) {
		m := e.material(t, keystore.HMAC384, keystore.UsageMAC)
		mac, err := e.store.MAC(ctx, m, crypto.SHA384, []byte("message"))
		require.NoError(t, err)
		require.Len(t, mac, 48)
		again, err := e.store.MAC(ctx, m, crypto.SHA384, []byte("message"))
		require.NoError(t, err)
		assert.Equal(t, mac, again)
		ok, err := e.store.VerifyMAC(ctx, m, crypto.SHA384, []byte("message"), mac)
		require.NoError(t, err)
		assert.True(t, ok)
		mac[0] ^= 1
		ok, err = e.store.VerifyMAC(ctx, m, crypto.SHA384, []byte("message"), mac)
		require.NoError(t, err)
		assert.False(t, ok)
	})

	t.Run("ECDH", func(t *testing.T) {
		m := e.material(t, keystore.ECP384, keystore.UsageKeyAgreement)
		pub := publicKey(t, e, m).(*ecdsa.PublicKey)
		ours, err := pub.ECDH()
		require.NoError(t, err)
		peer, err := ecdh.P384().GenerateKey(rand.Reader)
		require.NoError(t, err)
		secret, err := e.store.DeriveECDH(ctx, m, peer.PublicKey().Bytes())
		require.NoError(t, err)
		want, err := peer.ECDH(ours)
		require.NoError(t, err)
		assert.Equal(t, want, secret)
	})

	t.Run("random", func(t *testing.T) {
		a, err := e.store.GenerateRandom(ctx, 32)
		require.NoError(t, err)
		b, err := e.store.GenerateRandom(ctx, 32)
		require.NoError(t, err)
		require.Len(t, a, 32)
		assert.NotEqual(t, a, b)
	})
}

func publicKey(t *testing.T, e *storeEnv, m keystore.Material) crypto.PublicKey {
	t.Helper()
	der, err := e.store.PublicKey(bg(t), m)
	require.NoError(t, err)
	pub, err := x509.ParsePKIXPublicKey(der)
	require.NoError(t, err)
	return pub
}

// TestPublicKeysAreCached: a public key is read from the token once; a
// destroyed version's is forgotten.
func TestPublicKeysAreCached(t *testing.T) {
	e := newStore(t, 2)
	m := e.material(t, keystore.ECP256, keystore.UsageSign)
	first, err := e.store.PublicKey(bg(t), m)
	require.NoError(t, err)
	reads := e.faults.Calls("C_GetAttributeValue")
	for range 3 {
		again, err := e.store.PublicKey(bg(t), keystore.MaterialOf(keystore.ECP256, keystore.UsageSign, m.Ref(), m.Wrapped(), m.DomainKey()))
		require.NoError(t, err)
		assert.Equal(t, first, again)
	}
	assert.Equal(t, reads, e.faults.Calls("C_GetAttributeValue"), "no token call after the first")

	require.NoError(t, e.store.Destroy(bg(t), m))
	_, err = e.store.PublicKey(bg(t), m)
	require.ErrorIs(t, err, keystore.ErrMaterialNotFound)
}

// TestDataKeyPairs: pairs the caller takes away, as PKCS#8 and SPKI that
// belong together.
func TestDataKeyPairs(t *testing.T) {
	e := newStore(t, 2)
	for _, spec := range []keystore.Spec{keystore.RSA2048, keystore.ECP256, keystore.ECP521, keystore.ECSecp256k1, keystore.Ed25519} {
		t.Run(spec.String(), func(t *testing.T) {
			priv, pub, err := e.store.GenerateDataKeyPair(bg(t), spec)
			require.NoError(t, err)
			if spec == keystore.ECSecp256k1 {
				// Go's x509 knows no secp256k1: check the DER's shape only.
				assert.NotEmpty(t, priv)
				assert.NotEmpty(t, pub)
				return
			}
			k, err := x509.ParsePKCS8PrivateKey(priv)
			require.NoError(t, err)
			p, err := x509.ParsePKIXPublicKey(pub)
			require.NoError(t, err)
			type publicKeyer interface{ Public() crypto.PublicKey }
			type equaler interface{ Equal(crypto.PublicKey) bool }
			assert.True(t, k.(publicKeyer).Public().(equaler).Equal(p), "the public key is the private key's")
		})
	}
	t.Run("no pairs of symmetric specs", func(t *testing.T) {
		_, _, err := e.store.GenerateDataKeyPair(bg(t), keystore.AES256)
		require.Error(t, err)
	})
	t.Run("nothing is left on the token", func(t *testing.T) {
		inv, err := e.store.Inventory(bg(t))
		require.NoError(t, err)
		assert.Empty(t, inv)
	})
}
