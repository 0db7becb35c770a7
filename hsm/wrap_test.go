package hsm_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// wrappingKey makes a wrapping key on tok and returns a session copy of it
// (what keystore uses) and the token object.
func wrappingKey(t *testing.T, tok *hsm.Token, id string) (copy, object hsm.ObjectRef) {
	t.Helper()
	require.NoError(t, tok.GenerateWrappingKey(ctx(t), []byte(id), id))
	object = hsm.SecretKeyByID([]byte(id))
	copy, err := tok.SessionCopy(ctx(t), object)
	require.NoError(t, err)
	return copy, object
}

// sessionObjects counts every object the process sees on tok, token and
// session objects alike.
func sessionObjects(t *testing.T, tok *hsm.Token) int {
	t.Helper()
	n := 0
	require.NoError(t, tok.RawForTest(ctx(t), func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error {
		if err := p.FindObjectsInit(s, nil); err != nil {
			return err
		}
		defer p.FindObjectsFinal(s)
		for {
			hs, _, err := p.FindObjects(s, 100)
			if err != nil || len(hs) == 0 {
				return err
			}
			n += len(hs)
		}
	}))
	return n
}

func boolAttr(t *testing.T, tok *hsm.Token, ref hsm.ObjectRef, typ uint) bool {
	t.Helper()
	a, err := tok.Attributes(ctx(t), ref, typ)
	require.NoError(t, err)
	return len(a[0].Value) == 1 && a[0].Value[0] != 0
}

// TestWrappedMaterial generates each kind of material wrapped, checks that
// nothing is left on the token, unwraps it and uses it.
func TestWrappedMaterial(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 4)
	wk, _ := wrappingKey(t, tok, "wrapping-key")
	info, err := tok.CheckWrappingKey(ctx(t), wk)
	require.NoError(t, err)
	assert.False(t, info.Trusted, "SoftHSM2: only the SO sets CKA_TRUSTED, and it cannot see private keys")

	digest := sha256.Sum256([]byte("message"))
	cases := []struct {
		name  string
		spec  hsm.MaterialSpec
		usage hsm.Usage
	}{
		{"AES256", hsm.MaterialSpec{}, hsm.UsageEncrypt | hsm.UsageDecrypt},
		{"HMAC224", hsm.MaterialSpec{HMACBits: 224}, hsm.UsageSign | hsm.UsageVerify},
		{"HMAC256", hsm.MaterialSpec{HMACBits: 256}, hsm.UsageSign | hsm.UsageVerify},
		{"HMAC384", hsm.MaterialSpec{HMACBits: 384}, hsm.UsageSign | hsm.UsageVerify},
		{"HMAC512", hsm.MaterialSpec{HMACBits: 512}, hsm.UsageSign | hsm.UsageVerify},
		{"RSA2048", hsm.MaterialSpec{Pair: hsm.RSA2048}, hsm.UsageSign | hsm.UsageVerify},
		{"ECP256", hsm.MaterialSpec{Pair: hsm.ECP256}, hsm.UsageSign | hsm.UsageVerify},
		{"ECP384", hsm.MaterialSpec{Pair: hsm.ECP384}, hsm.UsageSign | hsm.UsageVerify},
		{"ECP521", hsm.MaterialSpec{Pair: hsm.ECP521}, hsm.UsageSign | hsm.UsageVerify},
		{"ECSecp256k1", hsm.MaterialSpec{Pair: hsm.ECSecp256k1}, hsm.UsageSign | hsm.UsageVerify},
		{"ECP256-ECDH", hsm.MaterialSpec{Pair: hsm.ECP256}, hsm.UsageDerive},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := sessionObjects(t, tok)
			w, err := tok.GenerateWrapped(ctx(t), wk, c.spec, c.usage, false)
			require.NoError(t, err)
			require.Equal(t, before, sessionObjects(t, tok), "generating wrapped material leaves nothing on the token")
			require.NotEmpty(t, w.Key)
			if c.spec.Pair != 0 {
				require.NotEmpty(t, w.PublicKey)
			} else {
				require.Empty(t, w.PublicKey)
			}

			k, err := tok.Unwrap(ctx(t), wk, w.Key, c.spec, c.usage)
			require.NoError(t, err)
			require.True(t, k.IsSessionObject())
			defer func() { assert.NoError(t, tok.DestroyObject(ctx(t), k)) }()
			assert.True(t, boolAttr(t, tok, k, pkcs11.CKA_SENSITIVE))
			assert.False(t, boolAttr(t, tok, k, pkcs11.CKA_EXTRACTABLE))
			assert.False(t, boolAttr(t, tok, k, pkcs11.CKA_TOKEN))
			_, err = tok.Attributes(ctx(t), k, pkcs11.CKA_VALUE)
			require.Error(t, err, "the unwrapped key's value is unreadable")

			switch {
			case c.spec.Pair == 0 && c.spec.HMACBits == 0:
				iv, sealed, err := tok.EncryptGCM(ctx(t), k, []byte("plaintext"), nil)
				require.NoError(t, err)
				again, err := tok.Unwrap(ctx(t), wk, w.Key, c.spec, c.usage)
				require.NoError(t, err)
				plain, err := tok.DecryptGCM(ctx(t), again, iv, sealed, nil)
				require.NoError(t, err, "a second unwrap is the same key")
				assert.Equal(t, "plaintext", string(plain))
				require.NoError(t, tok.DestroyObject(ctx(t), again))
			case c.spec.HMACBits != 0:
				h := map[int]crypto.Hash{224: crypto.SHA224, 256: crypto.SHA256, 384: crypto.SHA384, 512: crypto.SHA512}[c.spec.HMACBits]
				mac, err := tok.MAC(ctx(t), k, h, []byte("message"))
				require.NoError(t, err)
				ok, err := tok.VerifyMAC(ctx(t), k, h, []byte("message"), mac)
				require.NoError(t, err)
				assert.True(t, ok)
			case c.usage&hsm.UsageSign != 0:
				alg := hsm.ECDSA
				if c.spec.Pair == hsm.RSA2048 {
					alg = hsm.RSAPSS
				}
				sig, err := tok.Sign(ctx(t), k, alg, crypto.SHA256, digest[:])
				require.NoError(t, err)
				pub, err := tok.CreatePublicKey(ctx(t), w.PublicKey, hsm.UsageVerify)
				require.NoError(t, err)
				ok, err := tok.Verify(ctx(t), pub, alg, crypto.SHA256, digest[:], sig)
				require.NoError(t, err)
				assert.True(t, ok, "the public key stored in clear verifies what the unwrapped private key signed")
				der, err := tok.PublicKeyDER(ctx(t), pub)
				require.NoError(t, err)
				assert.Equal(t, w.PublicKey, der)
				require.NoError(t, tok.DestroyObject(ctx(t), pub))
			}
		})
	}

	t.Run("Ed25519", func(t *testing.T) {
		// SoftHSM2 2.6.1 wraps no EdDSA private key (CKR_KEY_NOT_WRAPPABLE).
		_, err := tok.GenerateWrapped(ctx(t), wk, hsm.MaterialSpec{Pair: hsm.Ed25519}, hsm.UsageSign|hsm.UsageVerify, false)
		require.ErrorIs(t, err, hsm.ErrNotWrappable)
	})
}

// TestWrappingKeyGuardsItsBlobs records what the token enforces about a
// wrapping key, whoever holds the user PIN: no unwrap with it yields a
// readable key, its template cannot be changed, and only the SO may make
// it trusted (SoftHSM2: the SO cannot see private objects at all).
func TestWrappingKeyGuardsItsBlobs(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 4)
	_, wk := wrappingKey(t, tok, "guard")
	w, err := tok.GenerateWrapped(ctx(t), wk, hsm.MaterialSpec{}, hsm.UsageEncrypt|hsm.UsageDecrypt, false)
	require.NoError(t, err)
	h, err := tok.HandleForTest(ctx(t), wk)
	require.NoError(t, err)
	wmech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	secret := func(sensitive bool) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, sensitive),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		}
	}
	code := func(err error) uint {
		c, _ := hsm.Code(err)
		return c
	}
	require.NoError(t, tok.RawForTest(ctx(t), func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error {
		_, err := p.UnwrapKey(s, wmech, h, w.Key, secret(false))
		assert.Equal(t, uint(pkcs11.CKR_TEMPLATE_INCONSISTENT), code(err), "unwrapping into a readable key")
		err = p.SetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, []byte{})})
		assert.Equal(t, uint(pkcs11.CKR_ATTRIBUTE_READ_ONLY), code(err), "changing the unwrap template")
		err = p.SetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true)})
		assert.Equal(t, uint(pkcs11.CKR_ATTRIBUTE_READ_ONLY), code(err), "the user marking the key trusted")
		err = p.SetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)})
		assert.Equal(t, uint(pkcs11.CKR_ATTRIBUTE_READ_ONLY), code(err), "making the wrapping key extractable")
		// Material that may be wrapped only under a trusted key cannot
		// be wrapped under an untrusted one.
		k, err := p.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, append(secret(true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true)))
		require.NoError(t, err)
		defer p.DestroyObject(s, k)
		_, err = p.WrapKey(s, wmech, h, k)
		assert.Equal(t, uint(pkcs11.CKR_KEY_NOT_WRAPPABLE), code(err), "wrapping CKA_WRAP_WITH_TRUSTED material under an untrusted key")
		return nil
	}))
	// What the token does with a blob that is not one.
	for name, blob := range map[string][]byte{
		"altered":   append(append([]byte(nil), w.Key[:len(w.Key)-1]...), w.Key[len(w.Key)-1]^1),
		"truncated": w.Key[:len(w.Key)-8],
		"empty":     {},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tok.Unwrap(ctx(t), wk, blob, hsm.MaterialSpec{}, hsm.UsageEncrypt)
			require.Error(t, err)
		})
	}
}

func TestRewrap(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 4)
	a, _ := wrappingKey(t, tok, "a")
	b, _ := wrappingKey(t, tok, "b")
	usage := hsm.UsageEncrypt | hsm.UsageDecrypt
	w, err := tok.GenerateWrapped(ctx(t), a, hsm.MaterialSpec{}, usage, false)
	require.NoError(t, err)
	before := sessionObjects(t, tok)
	under, err := tok.Rewrap(ctx(t), a, b, w.Key, hsm.MaterialSpec{}, usage, false)
	require.NoError(t, err)
	require.Equal(t, before, sessionObjects(t, tok), "rewrapping leaves nothing on the token")
	require.False(t, bytes.Equal(w.Key, under))

	ka, err := tok.Unwrap(ctx(t), a, w.Key, hsm.MaterialSpec{}, usage)
	require.NoError(t, err)
	kb, err := tok.Unwrap(ctx(t), b, under, hsm.MaterialSpec{}, usage)
	require.NoError(t, err)
	iv, sealed, err := tok.EncryptGCM(ctx(t), ka, []byte("same key"), nil)
	require.NoError(t, err)
	plain, err := tok.DecryptGCM(ctx(t), kb, iv, sealed, nil)
	require.NoError(t, err)
	assert.Equal(t, "same key", string(plain))
	_, err = tok.Unwrap(ctx(t), a, under, hsm.MaterialSpec{}, usage)
	require.Error(t, err, "the rewrapped blob is b's, not a's")

	pw, err := tok.GenerateWrapped(ctx(t), a, hsm.MaterialSpec{Pair: hsm.ECP256}, hsm.UsageSign, false)
	require.NoError(t, err)
	pu, err := tok.Rewrap(ctx(t), a, b, pw.Key, hsm.MaterialSpec{Pair: hsm.ECP256}, hsm.UsageSign, false)
	require.NoError(t, err)
	pk, err := tok.Unwrap(ctx(t), b, pu, hsm.MaterialSpec{Pair: hsm.ECP256}, hsm.UsageSign)
	require.NoError(t, err)
	d := sha256.Sum256([]byte("m"))
	sig, err := tok.Sign(ctx(t), pk, hsm.ECDSA, crypto.SHA256, d[:])
	require.NoError(t, err)
	pub, err := tok.CreatePublicKey(ctx(t), pw.PublicKey, hsm.UsageVerify)
	require.NoError(t, err)
	ok, err := tok.Verify(ctx(t), pub, hsm.ECDSA, crypto.SHA256, d[:], sig)
	require.NoError(t, err)
	assert.True(t, ok)
}

// TestSessionObjectLifetime: a session object made for a caller is usable
// from every pooled session, concurrently, and becomes ErrSessionObjectLost
// (never a handle to something else) once the token may have dropped it.
func TestSessionObjectLifetime(t *testing.T) {
	t.Parallel()
	tok, tt := open(t, nil, 4)
	wk, _ := wrappingKey(t, tok, "life")
	usage := hsm.UsageEncrypt | hsm.UsageDecrypt
	w, err := tok.GenerateWrapped(ctx(t), wk, hsm.MaterialSpec{}, usage, false)
	require.NoError(t, err)
	k, err := tok.Unwrap(ctx(t), wk, w.Key, hsm.MaterialSpec{}, usage)
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			_, _, err := tok.EncryptGCM(ctx(t), k, []byte("x"), nil)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	t.Run("login", func(t *testing.T) {
		// C_Logout destroys the process's private session objects.
		require.NoError(t, tok.Logout(ctx(t)))
		require.NoError(t, tok.Login(ctx(t), tt.UserPIN))
		_, _, err := tok.EncryptGCM(ctx(t), k, []byte("x"), nil)
		require.ErrorIs(t, err, hsm.ErrSessionObjectLost)
		_, err = tok.Unwrap(ctx(t), wk, w.Key, hsm.MaterialSpec{}, usage)
		require.ErrorIs(t, err, hsm.ErrSessionObjectLost, "the wrapping key's session copy went too")
		require.NoError(t, tok.DestroyObject(ctx(t), k), "destroying what is gone is not an error")
	})
}

// TestKeeperFailureDropsSessionObjects: a keeper session the token calls
// broken takes its objects with it; every reference from before is stale.
func TestKeeperFailureDropsSessionObjects(t *testing.T) {
	t.Parallel()
	tok, f, _ := withFaults(t, 4)
	wk, wko := wrappingKey(t, tok, "keeper")
	usage := hsm.UsageEncrypt | hsm.UsageDecrypt
	w, err := tok.GenerateWrapped(ctx(t), wk, hsm.MaterialSpec{}, usage, false)
	require.NoError(t, err)
	k, err := tok.Unwrap(ctx(t), wk, w.Key, hsm.MaterialSpec{}, usage)
	require.NoError(t, err)

	f.Fail("C_UnwrapKey", pkcs11.CKR_SESSION_HANDLE_INVALID, 1)
	_, err = tok.Unwrap(ctx(t), wk, w.Key, hsm.MaterialSpec{}, usage)
	require.ErrorIs(t, err, hsm.ErrSessionObjectLost, "the wrapping key's copy was on the dropped keepers")
	_, _, err = tok.EncryptGCM(ctx(t), k, []byte("x"), nil)
	require.ErrorIs(t, err, hsm.ErrSessionObjectLost)

	wk2, err := tok.SessionCopy(ctx(t), wko)
	require.NoError(t, err)
	k2, err := tok.Unwrap(ctx(t), wk2, w.Key, hsm.MaterialSpec{}, usage)
	require.NoError(t, err)
	_, _, err = tok.EncryptGCM(ctx(t), k2, []byte("x"), nil)
	require.NoError(t, err)
	require.False(t, errors.Is(err, hsm.ErrSessionObjectLost))
}

func TestWrappingNeedsTheMechanism(t *testing.T) {
	t.Parallel()
	tok, f, _ := withFaults(t, 2)
	f.HideMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD)
	require.ErrorIs(t, tok.RequireWrapping(ctx(t)), hsm.ErrMechanismNotSupported)
	require.ErrorIs(t, tok.GenerateWrappingKey(ctx(t), []byte("nope"), "nope"), hsm.ErrMechanismNotSupported)
}
