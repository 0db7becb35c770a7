package keystore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func bg(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// storeEnv is a default key store on a throwaway token whose PKCS#11 calls
// go through Faults, for the few codes SoftHSM2 cannot produce.
type storeEnv struct {
	tok    hsmtest.Token
	store  *keystore.Store
	m      *keystore.Manager
	faults *hsm.Faults
}

func newStore(t *testing.T, pool int) *storeEnv {
	t.Helper()
	e := &storeEnv{tok: hsmtest.NewToken(t)}
	cfg := keystore.TokenConfig{Module: e.tok.Module, Label: e.tok.Label, PoolSize: pool,
		Wrap: func(p hsm.PKCS11) hsm.PKCS11 { e.faults = hsm.NewFaults(p); return e.faults }}
	var err error
	e.store, err = keystore.OpenDefault(bg(t), cfg, e.tok.UserPIN)
	require.NoError(t, err)
	e.m = keystore.NewManager(e.store)
	t.Cleanup(func() { e.m.Close(context.Background()) })
	return e
}

func newKeyID() [keystore.KeyIDSize]byte {
	var id [keystore.KeyIDSize]byte
	rand.Read(id[:])
	return id
}

// material makes and generates a material version of spec on e's store.
func (e *storeEnv) material(t *testing.T, spec keystore.Spec, usage keystore.Usage) keystore.Material {
	t.Helper()
	m, err := e.store.NewMaterial(bg(t), newKeyID(), spec, usage, "arn:aws:kms:us-east-1:111122223333:key/test")
	require.NoError(t, err)
	require.NoError(t, e.store.Generate(bg(t), m))
	return m
}

// TestMaterialLifecycle: one case per family of spec. A version is named
// before it exists, generated, found, listed by Inventory with its key id
// and material id, destroyed (twice: it repeats), and rebuilt from its
// Ref alone the way kms does.
func TestMaterialLifecycle(t *testing.T) {
	e := newStore(t, 4)
	cases := []struct {
		spec    keystore.Spec
		usage   keystore.Usage
		objects int
	}{
		{keystore.AES256, keystore.UsageEncrypt, 1},
		{keystore.HMAC256, keystore.UsageMAC, 1},
		{keystore.HMAC512, keystore.UsageMAC, 1},
		{keystore.RSA2048, keystore.UsageEncrypt, 2},
		{keystore.ECP256, keystore.UsageSign, 2},
		{keystore.ECP384, keystore.UsageKeyAgreement, 2},
		{keystore.ECSecp256k1, keystore.UsageSign, 2},
		{keystore.Ed25519, keystore.UsageSign, 2},
	}
	for _, c := range cases {
		t.Run(c.spec.String(), func(t *testing.T) {
			keyID := newKeyID()
			label := "arn:aws:kms:us-east-1:111122223333:key/" + c.spec.String()
			m, err := e.store.NewMaterial(bg(t), keyID, c.spec, c.usage, label)
			require.NoError(t, err)
			require.Len(t, m.Ref(), keystore.KeyIDSize+keystore.MaterialIDSize, "CKA_ID = key id ‖ material id")
			assert.Equal(t, keyID[:], m.Ref()[:keystore.KeyIDSize])
			assert.Equal(t, m.Ref()[keystore.KeyIDSize:], m.ID())
			assert.Equal(t, c.spec, m.Spec())
			require.ErrorIs(t, e.store.Find(bg(t), m), keystore.ErrMaterialNotFound, "named, not yet made")

			require.NoError(t, e.store.Generate(bg(t), m))
			stored := keystore.MaterialOf(c.spec, c.usage, m.Ref(), m.Wrapped(), m.DomainKey())
			require.NoError(t, e.store.Find(bg(t), stored))

			inv, err := e.store.Inventory(bg(t))
			require.NoError(t, err)
			var found []keystore.TokenObject
			for _, o := range inv {
				if bytes.Equal(o.Ref, m.Ref()) {
					found = append(found, o)
				}
			}
			require.Len(t, found, c.objects)
			for _, o := range found {
				assert.True(t, o.IsMaterial)
				assert.Equal(t, keyID, o.KeyID)
				assert.Equal(t, m.ID(), o.MaterialID)
				assert.Equal(t, label, o.Label)
			}

			require.NoError(t, e.store.Destroy(bg(t), stored))
			require.ErrorIs(t, e.store.Find(bg(t), stored), keystore.ErrMaterialNotFound)
			require.NoError(t, e.store.Destroy(bg(t), stored), "destroying what is gone is not an error")
		})
	}
	t.Run("usage must fit the spec", func(t *testing.T) {
		for _, c := range []struct {
			spec  keystore.Spec
			usage keystore.Usage
		}{
			{keystore.AES256, keystore.UsageSign},
			{keystore.HMAC256, keystore.UsageEncrypt},
			{keystore.ECP256, keystore.UsageMAC},
		} {
			_, err := e.store.NewMaterial(bg(t), newKeyID(), c.spec, c.usage, "label")
			require.Error(t, err, "%v with usage %d", c.spec, c.usage)
		}
	})
	t.Run("only NewMaterial's versions can be generated", func(t *testing.T) {
		require.Error(t, e.store.Generate(bg(t), keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, make([]byte, 48), nil, "")))
	})
	t.Run("a token without the mechanism refuses before making anything", func(t *testing.T) {
		e := newStore(t, 2) // a fresh token: mechanism answers are cached per token
		e.faults.HideMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN)
		m, err := e.store.NewMaterial(bg(t), newKeyID(), keystore.ECP521, keystore.UsageSign, "label")
		require.NoError(t, err)
		require.ErrorIs(t, e.store.Generate(bg(t), m), keystore.ErrUnsupported)
		require.ErrorIs(t, e.store.Find(bg(t), m), keystore.ErrMaterialNotFound)
	})
}

// TestMaterialIsKeptOnTheToken: what Generate makes is sensitive, never
// extractable, and has only its usage's operations.
func TestMaterialIsKeptOnTheToken(t *testing.T) {
	e := newStore(t, 2)
	tok, err := e.store.Token()
	require.NoError(t, err)
	attrs := []uint{pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_TOKEN,
		pkcs11.CKA_DECRYPT, pkcs11.CKA_SIGN, pkcs11.CKA_DERIVE}
	for _, c := range []struct {
		name  string
		spec  keystore.Spec
		usage keystore.Usage
		ref   func([]byte) hsm.ObjectRef
		want  []bool
	}{
		{"AES256 secret", keystore.AES256, keystore.UsageEncrypt, hsm.SecretKeyByID, []bool{true, false, true, true, false, false}},
		{"HMAC256 secret", keystore.HMAC256, keystore.UsageMAC, hsm.SecretKeyByID, []bool{true, false, true, false, true, false}},
		{"ECP256 signing private key", keystore.ECP256, keystore.UsageSign, hsm.PrivateKeyByID, []bool{true, false, true, false, true, false}},
		{"ECP256 agreement private key", keystore.ECP256, keystore.UsageKeyAgreement, hsm.PrivateKeyByID, []bool{true, false, true, false, false, true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := e.material(t, c.spec, c.usage)
			_, err := tok.Attributes(bg(t), c.ref(m.Ref()), pkcs11.CKA_VALUE)
			code, _ := hsm.Code(err)
			require.Equal(t, uint(pkcs11.CKR_ATTRIBUTE_SENSITIVE), code)
			got, err := tok.Attributes(bg(t), c.ref(m.Ref()), attrs...)
			require.NoError(t, err)
			for i, w := range c.want {
				assert.Equal(t, w, got[i].Value[0] == 1, "attribute 0x%x", attrs[i])
			}
		})
	}
}

// TestInventory: every object on the token is listed once, keystore's own
// (the vault key) never; objects without the material layout are listed
// as not material, for kms to report.
func TestInventory(t *testing.T) {
	e := newStore(t, 2)
	_, err := e.m.SealPassword(bg(t), "cks-1234567890abcdef0", "password")
	require.NoError(t, err, "makes the vault key")
	aes := e.material(t, keystore.AES256, keystore.UsageEncrypt)
	tok, err := e.store.Token()
	require.NoError(t, err)
	_, err = tok.GenerateAESKey(bg(t), []byte("not-a-material-version"), "stranger", hsm.UsageEncrypt)
	require.NoError(t, err)

	inv, err := e.store.Inventory(bg(t))
	require.NoError(t, err)
	require.Len(t, inv, 2)
	byLabel := map[string]keystore.TokenObject{}
	for _, o := range inv {
		byLabel[o.Label] = o
	}
	assert.True(t, byLabel["arn:aws:kms:us-east-1:111122223333:key/test"].IsMaterial)
	assert.Equal(t, aes.Ref(), byLabel["arn:aws:kms:us-east-1:111122223333:key/test"].Ref)
	assert.False(t, byLabel["stranger"].IsMaterial)
	assert.Equal(t, []byte("not-a-material-version"), byLabel["stranger"].Ref)
}

// TestCheckRelated: a cluster is related when its token, logged in with
// the store's password, holds every material version of the store.
func TestCheckRelated(t *testing.T) {
	t1, t2 := hsmtest.NewToken(t), hsmtest.NewToken(t)
	// Make the material on t1 as a connected store would, then let go of
	// the token: a store is DISCONNECTED while its cluster is checked.
	def, err := keystore.OpenDefault(bg(t), keystore.TokenConfig{Module: t1.Module, Label: t1.Label, PoolSize: 2}, t1.UserPIN)
	require.NoError(t, err)
	var ms []keystore.Material
	for range 3 {
		m, err := def.NewMaterial(bg(t), newKeyID(), keystore.AES256, keystore.UsageEncrypt, "label")
		require.NoError(t, err)
		require.NoError(t, def.Generate(bg(t), m))
		ms = append(ms, m)
	}
	require.NoError(t, def.Close(bg(t)))
	cluster := func(tok hsmtest.Token) keystore.Cluster {
		return keystore.Cluster{ID: "cluster-234567abcdefg", Token: keystore.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 1}}
	}

	t.Run("holds every version", func(t *testing.T) {
		require.NoError(t, keystore.NewManager(nil).CheckRelated(bg(t), cluster(t1), t1.UserPIN, ms))
	})
	t.Run("rebuilt from the recorded refs", func(t *testing.T) {
		var stored []keystore.Material
		for _, m := range ms {
			stored = append(stored, keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, m.Ref(), nil, ""))
		}
		require.NoError(t, keystore.NewManager(nil).CheckRelated(bg(t), cluster(t1), t1.UserPIN, stored))
	})
	t.Run("one version missing", func(t *testing.T) {
		id := newKeyID()
		missing := keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, append(id[:], make([]byte, keystore.MaterialIDSize)...), nil, "")
		require.ErrorIs(t, keystore.NewManager(nil).CheckRelated(bg(t), cluster(t1), t1.UserPIN, append(ms[:2:2], missing)), keystore.ErrNotRelated)
	})
	t.Run("password refused", func(t *testing.T) {
		err := keystore.NewManager(nil).CheckRelated(bg(t), cluster(t1), "not-the-password", ms)
		require.ErrorIs(t, err, keystore.ErrNotRelated)
		assert.NotContains(t, err.Error(), "not-the-password", "no password in errors")
	})
	t.Run("another token", func(t *testing.T) {
		require.ErrorIs(t, keystore.NewManager(nil).CheckRelated(bg(t), cluster(t2), t2.UserPIN, ms), keystore.ErrNotRelated)
	})
	t.Run("token absent", func(t *testing.T) {
		c := cluster(t1)
		c.Token.Label = "no-such-token"
		var pe *keystore.ProbeError
		require.True(t, errors.As(keystore.NewManager(nil).CheckRelated(bg(t), c, t1.UserPIN, ms), &pe))
		assert.True(t, pe.NotActive)
	})
	t.Run("no material: nothing to check, the token is not opened", func(t *testing.T) {
		c := cluster(t1)
		c.Token.Module = "/nonexistent/libpkcs11.so"
		require.NoError(t, keystore.NewManager(nil).CheckRelated(bg(t), c, "whatever", nil))
	})
	t.Run("the check logs out", func(t *testing.T) {
		require.NoError(t, keystore.NewManager(nil).CheckRelated(bg(t), cluster(t1), t1.UserPIN, ms))
		// Login state is per process: were the user still logged in, the
		// private objects would be visible to a session that never logged in.
		h, err := hsm.OpenToken(hsm.TokenConfig{Module: t1.Module, Label: t1.Label, PoolSize: 1})
		require.NoError(t, err)
		defer h.Close()
		objs, err := h.ListObjects(bg(t), 0)
		require.NoError(t, err)
		assert.Empty(t, objs)
	})
}
