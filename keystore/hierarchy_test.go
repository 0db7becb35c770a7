package keystore_test

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newWrappedStore is newStore with a key hierarchy holding material
// wrapped, on in-memory records.
func newWrappedStore(t *testing.T, pool int, cfg keystore.MaterialConfig) (*storeEnv, *memRecords) {
	t.Helper()
	e := newStore(t, pool)
	rec := newRecords()
	cfg.Mode = keystore.Wrapped
	require.NoError(t, e.store.AttachHierarchy(bg(t), cfg, rec, nil))
	return e, rec
}

// recorded is m as kms rebuilds it from its record.
func recorded(m keystore.Material, usage keystore.Usage) keystore.Material {
	return keystore.MaterialOf(m.Spec(), usage, m.Ref(), m.Wrapped(), m.DomainKey())
}

// tokenObjects counts what the process sees on the store's token: token
// objects and session objects.
func tokenObjects(t *testing.T, e *storeEnv) (tokenObjs, sessionObjs int) {
	t.Helper()
	require.NoError(t, e.raw(t, func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error {
		for _, onToken := range []bool{true, false} {
			if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, onToken)}); err != nil {
				return err
			}
			n := 0
			for {
				hs, _, err := p.FindObjects(s, 100)
				if err != nil {
					p.FindObjectsFinal(s)
					return err
				}
				if len(hs) == 0 {
					break
				}
				n += len(hs)
			}
			p.FindObjectsFinal(s)
			if onToken {
				tokenObjs = n
			} else {
				sessionObjs = n
			}
		}
		return nil
	}))
	return tokenObjs, sessionObjs
}

// raw runs fn on a session of the store's token opened through the
// module's own context, the way another part of this process could: for
// what keystore never does (reading attributes of every object, making an
// extractable key). Login state and session objects are the process's, so
// it sees what the store's sessions see.
func (e *storeEnv) raw(t *testing.T, fn func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error) error {
	t.Helper()
	p := pkcs11.New(e.tok.Module)
	require.NotNil(t, p)
	p.Initialize() // already initialised by the store: CKR_CRYPTOKI_ALREADY_INITIALIZED
	slots, err := p.GetSlotList(true)
	require.NoError(t, err)
	for _, slot := range slots {
		if ti, err := p.GetTokenInfo(slot); err == nil && ti.Label == e.tok.Label {
			s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
			require.NoError(t, err)
			defer p.CloseSession(s)
			return fn(p, s)
		}
	}
	t.Fatalf("no token %s", e.tok.Label)
	return nil
}

// use exercises m as its usage allows and fails t if it does not work.
func use(t *testing.T, e *storeEnv, m keystore.Material, usage keystore.Usage) {
	t.Helper()
	ctx := bg(t)
	d := sha256.Sum256([]byte("message"))
	switch {
	case m.Spec() == keystore.AES256:
		iv, sealed, err := e.store.EncryptGCM(ctx, m, []byte("plaintext"), []byte("aad"))
		require.NoError(t, err)
		plain, err := e.store.DecryptGCM(ctx, m, iv, sealed, []byte("aad"))
		require.NoError(t, err)
		require.Equal(t, "plaintext", string(plain))
	case usage == keystore.UsageMAC:
		h := map[keystore.Spec]crypto.Hash{keystore.HMAC224: crypto.SHA224, keystore.HMAC256: crypto.SHA256,
			keystore.HMAC384: crypto.SHA384, keystore.HMAC512: crypto.SHA512}[m.Spec()]
		mac, err := e.store.MAC(ctx, m, h, []byte("message"))
		require.NoError(t, err)
		ok, err := e.store.VerifyMAC(ctx, m, h, []byte("message"), mac)
		require.NoError(t, err)
		require.True(t, ok)
	case usage == keystore.UsageSign:
		alg, hash, data := keystore.ECDSA, crypto.SHA256, d[:]
		switch m.Spec() {
		case keystore.RSA2048, keystore.RSA3072, keystore.RSA4096:
			alg = keystore.RSAPSS
		case keystore.Ed25519:
			alg, hash, data = keystore.EdDSA, crypto.SHA512, []byte("message")
		}
		sig, err := e.store.Sign(ctx, m, alg, hash, data)
		require.NoError(t, err)
		ok, err := e.store.Verify(ctx, m, alg, hash, data, sig)
		require.NoError(t, err)
		require.True(t, ok)
	case usage == keystore.UsageEncrypt:
		der, err := e.store.PublicKey(ctx, m)
		require.NoError(t, err)
		pub, err := x509.ParsePKIXPublicKey(der)
		require.NoError(t, err)
		ct, err := rsa.EncryptOAEP(crypto.SHA1.New(), rand.Reader, pub.(*rsa.PublicKey), []byte("secret"), nil)
		require.NoError(t, err)
		plain, err := e.store.DecryptOAEP(ctx, m, crypto.SHA1, ct)
		require.NoError(t, err)
		require.Equal(t, "secret", string(plain))
	case usage == keystore.UsageKeyAgreement:
		peer, err := ecdh.P256().GenerateKey(rand.Reader)
		require.NoError(t, err)
		_, err = e.store.DeriveECDH(ctx, m, peer.PublicKey().Bytes())
		require.NoError(t, err)
	}
}

// TestWrappedMaterialLifecycle: material is generated on the token,
// wrapped, and only the envelope leaves it; rebuilt from its record it is
// unwrapped on first use and then served from the cache; destroyed, its
// unwrapped copy goes.
func TestWrappedMaterialLifecycle(t *testing.T) {
	e, _ := newWrappedStore(t, 4, keystore.MaterialConfig{})
	require.Equal(t, keystore.Wrapped, e.store.KeyMaterial())
	require.Len(t, e.store.DomainKeys(), 1)
	cases := []struct {
		spec  keystore.Spec
		usage keystore.Usage
	}{
		{keystore.AES256, keystore.UsageEncrypt},
		{keystore.HMAC224, keystore.UsageMAC},
		{keystore.HMAC512, keystore.UsageMAC},
		{keystore.RSA2048, keystore.UsageEncrypt},
		{keystore.RSA2048, keystore.UsageSign},
		{keystore.ECP256, keystore.UsageSign},
		{keystore.ECP384, keystore.UsageSign},
		{keystore.ECP256, keystore.UsageKeyAgreement},
		{keystore.ECSecp256k1, keystore.UsageSign},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v-%d", c.spec, c.usage), func(t *testing.T) {
			tokBefore, _ := tokenObjects(t, e)
			m, err := e.store.NewMaterial(bg(t), newKeyID(), c.spec, c.usage, "label")
			require.NoError(t, err)
			require.False(t, m.OnToken())
			require.NotEmpty(t, m.Wrapped())
			require.Equal(t, e.store.DomainKeys()[0].ID, m.DomainKey())
			require.NoError(t, e.store.Generate(bg(t), m), "wrapped material needs no Generate")
			tokAfter, _ := tokenObjects(t, e)
			require.Equal(t, tokBefore, tokAfter, "nothing of the material is a token object")

			stored := recorded(m, c.usage)
			require.NoError(t, e.store.Find(bg(t), stored))
			unwraps := e.faults.Calls("C_UnwrapKey")
			use(t, e, stored, c.usage)
			require.Equal(t, unwraps+1, e.faults.Calls("C_UnwrapKey"), "unwrapped on first use")
			use(t, e, stored, c.usage)
			require.Equal(t, unwraps+1, e.faults.Calls("C_UnwrapKey"), "then served from the cache")

			_, sessBefore := tokenObjects(t, e)
			require.NoError(t, e.store.Destroy(bg(t), stored))
			_, sessAfter := tokenObjects(t, e)
			require.Less(t, sessAfter, sessBefore, "its unwrapped copy is destroyed with it")
			require.NoError(t, e.store.Destroy(bg(t), stored), "again")
		})
	}
	t.Run("Ed25519 falls back to token objects", func(t *testing.T) {
		// SoftHSM2 2.6.1 cannot wrap an EdDSA private key.
		m, err := e.store.NewMaterial(bg(t), newKeyID(), keystore.Ed25519, keystore.UsageSign, "label")
		require.NoError(t, err)
		require.True(t, m.OnToken())
		require.NoError(t, e.store.Generate(bg(t), m))
		use(t, e, recorded(m, keystore.UsageSign), keystore.UsageSign)
	})
	t.Run("a token object next to wrapped material", func(t *testing.T) {
		tok, err := e.store.Token()
		require.NoError(t, err)
		id := newKeyID()
		ref := append(id[:], make([]byte, keystore.MaterialIDSize)...)
		rand.Read(ref[keystore.KeyIDSize:])
		_, err = tok.GenerateAESKey(bg(t), ref, "old key", hsm.UsageEncrypt|hsm.UsageDecrypt)
		require.NoError(t, err)
		old := keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, ref, nil, "")
		use(t, e, old, keystore.UsageEncrypt)
	})
	t.Run("a corrupt envelope is missing material", func(t *testing.T) {
		m, err := e.store.NewMaterial(bg(t), newKeyID(), keystore.AES256, keystore.UsageEncrypt, "label")
		require.NoError(t, err)
		bad := keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, m.Ref(), m.Wrapped()[:3], m.DomainKey())
		_, _, err = e.store.EncryptGCM(bg(t), bad, []byte("x"), nil)
		require.ErrorIs(t, err, keystore.ErrMaterialNotFound)
		other := keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, m.Ref(), m.Wrapped(), "no-such-domain-key")
		_, _, err = e.store.EncryptGCM(bg(t), other, []byte("x"), nil)
		require.ErrorIs(t, err, keystore.ErrMaterialNotFound)
	})
}

// TestCacheBoundUnderKeySpreadLoad: requests spread over many more keys
// than the cache holds keep the cache, and what is unwrapped on the token,
// within the bound, and every request succeeds although objects are
// evicted under other requests all the time.
func TestCacheBoundUnderKeySpreadLoad(t *testing.T) {
	const bound, keys, workers = 8, 64, 16
	e, _ := newWrappedStore(t, 8, keystore.MaterialConfig{CacheKeys: bound})
	ms := make([]keystore.Material, keys)
	for i := range ms {
		m, err := e.store.NewMaterial(bg(t), newKeyID(), keystore.AES256, keystore.UsageEncrypt, "label")
		require.NoError(t, err)
		ms[i] = recorded(m, keystore.UsageEncrypt)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range 60 {
				m := ms[mrand.IntN(keys)]
				iv, sealed, err := e.store.EncryptGCM(bg(t), m, []byte("p"), nil)
				if err == nil {
					_, err = e.store.DecryptGCM(bg(t), m, iv, sealed, nil)
				}
				if err != nil {
					errs <- err
					return
				}
				if st := e.store.CacheStats(); st.Objects > bound {
					errs <- fmt.Errorf("cache holds %d objects, bound %d", st.Objects, bound)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	st := e.store.CacheStats()
	assert.LessOrEqual(t, st.Objects, bound)
	assert.Positive(t, st.Evictions)
	_, sess := tokenObjects(t, e)
	// The session objects left: the cached keys and the domain key's copy.
	assert.LessOrEqual(t, sess, bound+1, "evicted objects are destroyed on the token")
}

// TestDomainKeyRotation: a new domain key wraps new material; material
// under the retired one works until rewrapped, and the retired key is
// destroyed only once nothing names it.
func TestDomainKeyRotation(t *testing.T) {
	e, rec := newWrappedStore(t, 4, keystore.MaterialConfig{})
	old := e.store.DomainKeys()[0].ID
	m, err := e.store.NewMaterial(bg(t), newKeyID(), keystore.AES256, keystore.UsageEncrypt, "label")
	require.NoError(t, err)
	m = recorded(m, keystore.UsageEncrypt)
	iv, sealed, err := e.store.EncryptGCM(bg(t), m, []byte("before"), nil)
	require.NoError(t, err)

	id, err := e.store.RotateDomainKey(bg(t))
	require.NoError(t, err)
	dks := e.store.DomainKeys()
	require.Len(t, dks, 2)
	require.Equal(t, keystore.DomainKeyRecord{ID: old, State: "RETIRED", Created: dks[0].Created}, dks[0])
	require.Equal(t, id, dks[1].ID)
	require.Equal(t, "ACTIVE", dks[1].State)

	n, err := e.store.NewMaterial(bg(t), newKeyID(), keystore.AES256, keystore.UsageEncrypt, "label")
	require.NoError(t, err)
	require.Equal(t, id, n.DomainKey(), "new material goes under the new key")
	use(t, e, m, keystore.UsageEncrypt)

	rec.named[old] = true
	require.ErrorIs(t, e.store.DestroyDomainKey(bg(t), old), keystore.ErrDomainKeyInUse)
	moved, err := e.store.Rewrap(bg(t), m)
	require.NoError(t, err)
	require.Equal(t, id, moved.DomainKey())
	require.Equal(t, m.Ref(), moved.Ref(), "the same version")
	require.NotEqual(t, m.Wrapped(), moved.Wrapped())
	e.store.Destroy(bg(t), m) // drop the copy unwrapped under the old key
	plain, err := e.store.DecryptGCM(bg(t), recorded(moved, keystore.UsageEncrypt), iv, sealed, nil)
	require.NoError(t, err, "the rewrapped material is the same key")
	require.Equal(t, "before", string(plain))

	rec.named[old] = false
	tokBefore, _ := tokenObjects(t, e)
	require.NoError(t, e.store.DestroyDomainKey(bg(t), old))
	tokAfter, _ := tokenObjects(t, e)
	require.Equal(t, tokBefore-1, tokAfter, "the old domain key's token object is destroyed")
	require.Len(t, e.store.DomainKeys(), 1)
	_, _, err = e.store.EncryptGCM(bg(t), m, []byte("x"), nil)
	require.ErrorIs(t, err, keystore.ErrMaterialNotFound, "nothing can use the destroyed key")
}

// TestAttachHierarchy: what a start finds, from the records and the token.
func TestAttachHierarchy(t *testing.T) {
	t.Run("a recorded domain key missing from the token is refused", func(t *testing.T) {
		e, rec := newWrappedStore(t, 2, keystore.MaterialConfig{})
		id := e.store.DomainKeys()[0].ID
		tok, err := e.store.Token()
		require.NoError(t, err)
		require.NoError(t, tok.DestroyObject(bg(t), hsm.SecretKeyByID([]byte("hsmkms:domain-key:"+id))))
		err = e.store.AttachHierarchy(bg(t), keystore.MaterialConfig{Mode: keystore.Wrapped}, rec, nil)
		require.ErrorIs(t, err, keystore.ErrDomainKeyMissing)
		require.ErrorContains(t, err, id)
		err = e.store.AttachHierarchy(bg(t), keystore.MaterialConfig{Mode: keystore.TokenObjects}, rec, nil)
		require.ErrorIs(t, err, keystore.ErrDomainKeyMissing, "a token_objects store with wrapped material needs its domain keys too")
	})
	t.Run("steps a crash cut short are finished", func(t *testing.T) {
		e, rec := newWrappedStore(t, 2, keystore.MaterialConfig{})
		tok, err := e.store.Token()
		require.NoError(t, err)
		// A PENDING key made on the token, one never made, and one
		// DESTROYING whose object is still there.
		ctx := context.Background()
		require.NoError(t, rec.AddDomainKey(ctx, "", "pendingmade", time.Now()))
		require.NoError(t, tok.GenerateWrappingKey(ctx, []byte("hsmkms:domain-key:pendingmade"), "x"))
		require.NoError(t, rec.AddDomainKey(ctx, "", "pendingnot", time.Now()))
		require.NoError(t, rec.AddDomainKey(ctx, "", "destroying", time.Now()))
		require.NoError(t, tok.GenerateWrappingKey(ctx, []byte("hsmkms:domain-key:destroying"), "x"))
		rec.setState("destroying", "DESTROYING")
		tokBefore, _ := tokenObjects(t, e)
		require.NoError(t, e.store.AttachHierarchy(ctx, keystore.MaterialConfig{Mode: keystore.Wrapped}, rec, nil))
		tokAfter, _ := tokenObjects(t, e)
		require.Equal(t, tokBefore-2, tokAfter)
		recs, err := rec.DomainKeys(ctx, "")
		require.NoError(t, err)
		require.Len(t, recs, 1)
		require.Equal(t, "ACTIVE", recs[0].State)
	})
	t.Run("a token without key wrap is refused clearly", func(t *testing.T) {
		e := newStore(t, 2)
		e.faults.HideMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD)
		err := e.store.AttachHierarchy(bg(t), keystore.MaterialConfig{Mode: keystore.Wrapped}, newRecords(), nil)
		require.ErrorIs(t, err, keystore.ErrUnsupported)
		require.ErrorContains(t, err, "CKM_AES_KEY_WRAP_PAD")
	})
	t.Run("token_objects with no domain key needs no hierarchy", func(t *testing.T) {
		e := newStore(t, 2)
		require.NoError(t, e.store.AttachHierarchy(bg(t), keystore.MaterialConfig{Mode: keystore.TokenObjects}, newRecords(), nil))
		require.Equal(t, keystore.TokenObjects, e.store.KeyMaterial())
		m, err := e.store.NewMaterial(bg(t), newKeyID(), keystore.AES256, keystore.UsageEncrypt, "label")
		require.NoError(t, err)
		require.True(t, m.OnToken())
	})
}

// TestNothingReadableOnTheToken checks the attributes of every key object
// on the token, token and session objects alike, after material of every
// kind was made, wrapped, unwrapped and used: all sensitive, none
// extractable, no value readable; the domain key can only wrap and unwrap,
// and (SoftHSM2) is not trusted, so material is not CKA_WRAP_WITH_TRUSTED.
func TestNothingReadableOnTheToken(t *testing.T) {
	e, _ := newWrappedStore(t, 4, keystore.MaterialConfig{})
	for _, c := range []struct {
		spec  keystore.Spec
		usage keystore.Usage
	}{
		{keystore.AES256, keystore.UsageEncrypt}, {keystore.HMAC256, keystore.UsageMAC},
		{keystore.RSA2048, keystore.UsageEncrypt}, {keystore.ECP256, keystore.UsageSign},
		{keystore.ECP256, keystore.UsageKeyAgreement}, {keystore.Ed25519, keystore.UsageSign},
	} {
		m, err := e.store.NewMaterial(bg(t), newKeyID(), c.spec, c.usage, "label")
		require.NoError(t, err)
		require.NoError(t, e.store.Generate(bg(t), m))
		use(t, e, recorded(m, c.usage), c.usage)
	}
	tok, err := e.store.Token()
	require.NoError(t, err)
	checked := map[string]int{}
	require.NoError(t, e.raw(t, func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error {
		if err := p.FindObjectsInit(s, nil); err != nil {
			return err
		}
		var hs []pkcs11.ObjectHandle
		for {
			batch, _, err := p.FindObjects(s, 100)
			if err != nil || len(batch) == 0 {
				p.FindObjectsFinal(s)
				if err != nil {
					return err
				}
				break
			}
			hs = append(hs, batch...)
		}
		for _, h := range hs {
			a, err := p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil)})
			require.NoError(t, err)
			class := ulong(a[0].Value)
			where := map[bool]string{true: "token", false: "session"}[a[1].Value[0] == 1]
			if class != pkcs11.CKO_SECRET_KEY && class != pkcs11.CKO_PRIVATE_KEY {
				continue // public keys and the identity data object are not secret
			}
			b, err := p.GetAttributeValue(s, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, nil)})
			require.NoError(t, err)
			assert.Equal(t, []byte{1}, b[0].Value, "%s object %q: sensitive", where, b[2].Value)
			assert.Equal(t, []byte{0}, b[1].Value, "%s object %q: not extractable", where, b[2].Value)
			assert.Equal(t, []byte{0}, b[3].Value, "%s object %q: SoftHSM2 has no trusted key to wrap under", where, b[2].Value)
			kt, err := p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
			require.NoError(t, err)
			secret := uint(pkcs11.CKA_VALUE)
			if ulong(kt[0].Value) == pkcs11.CKK_RSA {
				secret = pkcs11.CKA_PRIVATE_EXPONENT
			}
			_, err = p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(secret, nil)})
			code, _ := hsm.Code(err)
			assert.Equal(t, uint(pkcs11.CKR_ATTRIBUTE_SENSITIVE), code, "%s object %q: value unreadable", where, b[2].Value)
			kind := where
			if len(b[2].Value) > 18 && string(b[2].Value[:18]) == "hsmkms:domain-key:" {
				kind = where + " domain key"
				u, err := p.GetAttributeValue(s, h, []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_WRAP, nil), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, nil),
					pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, nil), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, nil),
					pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, nil),
					pkcs11.NewAttribute(pkcs11.CKA_DERIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, nil)})
				require.NoError(t, err)
				got := make([]byte, len(u))
				for i, a := range u {
					got[i] = a.Value[0]
				}
				assert.Equal(t, []byte{1, 1, 0, 0, 0, 0, 0, 0}, got, "the domain key wraps and unwraps, nothing else; not trusted (SoftHSM2)")
			}
			checked[kind]++
		}
		return nil
	}))
	assert.Equal(t, 1, checked["token domain key"])
	assert.Equal(t, 1, checked["session domain key"], "its copy, to unwrap with")
	assert.GreaterOrEqual(t, checked["session"], 5, "the unwrapped keys")
	assert.Equal(t, 1, checked["token"], "Ed25519's private key, which SoftHSM2 cannot wrap")
	info, err := tok.CheckWrappingKey(bg(t), hsm.SecretKeyByID([]byte("hsmkms:domain-key:"+e.store.DomainKeys()[0].ID)))
	require.NoError(t, err)
	assert.False(t, info.Trusted)
}

// TestWrapTokenObjects: material made as token objects moves into the
// hierarchy only if the token lets it be wrapped, which it never does for
// the non-extractable objects hsmkms makes.
func TestWrapTokenObjects(t *testing.T) {
	e, _ := newWrappedStore(t, 2, keystore.MaterialConfig{})
	tok, err := e.store.Token()
	require.NoError(t, err)
	id := newKeyID()
	ref := append(id[:], make([]byte, keystore.MaterialIDSize)...)
	rand.Read(ref[keystore.KeyIDSize:])
	_, err = tok.GenerateAESKey(bg(t), ref, "hsmkms key", hsm.UsageEncrypt|hsm.UsageDecrypt)
	require.NoError(t, err)
	_, err = e.store.Wrap(bg(t), keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, ref, nil, ""))
	require.ErrorIs(t, err, keystore.ErrUnsupported, "CKA_EXTRACTABLE false is for ever")

	rand.Read(ref[keystore.KeyIDSize:])
	require.NoError(t, e.raw(t, func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error {
		_, err := p.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true), pkcs11.NewAttribute(pkcs11.CKA_ID, ref)})
		return err
	}))
	orig := keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, ref, nil, "")
	iv, sealed, err := e.store.EncryptGCM(bg(t), orig, []byte("migrated"), nil)
	require.NoError(t, err)
	w, err := e.store.Wrap(bg(t), orig)
	require.NoError(t, err)
	require.False(t, w.OnToken())
	require.NoError(t, e.store.Destroy(bg(t), orig))
	plain, err := e.store.DecryptGCM(bg(t), recorded(w, keystore.UsageEncrypt), iv, sealed, nil)
	require.NoError(t, err)
	require.Equal(t, "migrated", string(plain))
}

func ulong(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}
