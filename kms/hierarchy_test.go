package kms_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"testing"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The key hierarchy seen through the API: keys whose material is wrapped
// under a domain key, next to keys made as token objects, through domain
// key rotation and restarts.

func wrappedEnv(t *testing.T, setup func(e *env)) *env {
	return newEnvWith(t, func(e *env) {
		e.material.Mode = keystore.Wrapped
		if setup != nil {
			setup(e)
		}
	})
}

// sealedKey is a key and what was encrypted under it.
type sealedKey struct {
	id         string
	spec       types.KeySpec
	usage      types.KeyUsageType
	ciphertext []byte // symmetric
	signature  []byte // ECC_NIST_P256
	mac        []byte // HMAC_256
}

var (
	msgDigest     = sha256.Sum256([]byte("message"))
	keyTypeMatrix = []struct {
		spec  types.KeySpec
		usage types.KeyUsageType
	}{
		{types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt},
		{types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify},
		{types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac},
		{types.KeySpecRsa2048, types.KeyUsageTypeEncryptDecrypt},
	}
)

// makeKey creates a key of spec and usage and uses it once, keeping what
// it produced for checkKey.
func makeKey(t *testing.T, c *awskms.Client, spec types.KeySpec, usage types.KeyUsageType) sealedKey {
	t.Helper()
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
	require.NoError(t, err)
	k := sealedKey{id: *out.KeyMetadata.KeyId, spec: spec, usage: usage}
	switch {
	case spec == types.KeySpecSymmetricDefault:
		enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &k.id, Plaintext: []byte("plaintext of " + k.id)})
		require.NoError(t, err)
		k.ciphertext = enc.CiphertextBlob
	case usage == types.KeyUsageTypeSignVerify:
		sig, err := c.Sign(bg(), &awskms.SignInput{KeyId: &k.id, Message: msgDigest[:], MessageType: types.MessageTypeDigest,
			SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
		require.NoError(t, err)
		k.signature = sig.Signature
	case usage == types.KeyUsageTypeGenerateVerifyMac:
		mac, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &k.id, Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
		require.NoError(t, err)
		k.mac = mac.Mac
	case spec == types.KeySpecRsa2048:
		enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &k.id, Plaintext: []byte("rsa"), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
		require.NoError(t, err)
		k.ciphertext = enc.CiphertextBlob
	}
	return k
}

// checkKey checks that k still opens, verifies or matches what it made,
// and still makes more.
func checkKey(t *testing.T, c *awskms.Client, k sealedKey) {
	t.Helper()
	switch {
	case k.spec == types.KeySpecSymmetricDefault:
		dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: k.ciphertext})
		require.NoError(t, err, "key %s", k.id)
		require.Equal(t, "plaintext of "+k.id, string(dec.Plaintext))
		_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &k.id, Plaintext: []byte("more")})
		require.NoError(t, err)
	case k.usage == types.KeyUsageTypeSignVerify:
		v, err := c.Verify(bg(), &awskms.VerifyInput{KeyId: &k.id, Message: msgDigest[:], MessageType: types.MessageTypeDigest,
			SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256, Signature: k.signature})
		require.NoError(t, err)
		require.True(t, v.SignatureValid)
		_, err = c.Sign(bg(), &awskms.SignInput{KeyId: &k.id, Message: msgDigest[:], MessageType: types.MessageTypeDigest,
			SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
		require.NoError(t, err)
	case k.usage == types.KeyUsageTypeGenerateVerifyMac:
		v, err := c.VerifyMac(bg(), &awskms.VerifyMacInput{KeyId: &k.id, Message: []byte("m"), Mac: k.mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
		require.NoError(t, err)
		require.True(t, v.MacValid)
	case k.spec == types.KeySpecRsa2048:
		dec, err := c.Decrypt(bg(), &awskms.DecryptInput{KeyId: &k.id, CiphertextBlob: k.ciphertext, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
		require.NoError(t, err)
		require.Equal(t, "rsa", string(dec.Plaintext))
	}
}

// recordedMaterials reads the key's materials from the database.
func (e *env) recordedMaterials(id string) []store.Material {
	e.t.Helper()
	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(e.t, err)
	defer db.Close()
	k, err := db.GetKey(bg(), account, region, id)
	require.NoError(e.t, err)
	return k.Materials
}

// TestWrappedKeys: every kind of key made in a wrapped store holds its
// material wrapped, nothing of it on the token, and works across restarts.
func TestWrappedKeys(t *testing.T) {
	t.Parallel()
	e := wrappedEnv(t, nil)
	c := e.admin()
	var keys []sealedKey
	for _, kt := range keyTypeMatrix {
		k := makeKey(t, c, kt.spec, kt.usage)
		keys = append(keys, k)
		ms := e.recordedMaterials(k.id)
		require.Len(t, ms, 1)
		assert.NotEmpty(t, ms[0].Wrapped, "%s: wrapped material recorded", kt.spec)
		assert.NotEmpty(t, ms[0].DomainKey)
		assert.Zero(t, e.keyObjects(k.id), "%s: nothing of it on the token", kt.spec)
	}
	e.restart()
	c = e.admin()
	for _, k := range keys {
		checkKey(t, c, k)
	}
	st, err := e.svc.MaterialCache("")
	require.NoError(t, err)
	assert.Positive(t, st.Misses, "unwrapped on first use after the restart")
}

// TestTokenObjectKeysNextToWrappedKeys: keys made as token objects by a
// deployment keep working once it holds new material wrapped, side by
// side, and a deployment that made token objects keeps making them unless
// told otherwise.
func TestTokenObjectKeysNextToWrappedKeys(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = "" })
	mode, err := e.svc.KeyMaterial("")
	require.NoError(t, err)
	require.Equal(t, keystore.Wrapped, mode, "a new deployment holds material wrapped")
	e.close()

	e = newEnvWith(t, func(e *env) { e.material.Mode = keystore.TokenObjects })
	c := e.admin()
	var old []sealedKey
	for _, kt := range keyTypeMatrix {
		k := makeKey(t, c, kt.spec, kt.usage)
		require.NotZero(t, e.keyObjects(k.id))
		old = append(old, k)
	}
	e.material.Mode = ""
	e.restart()
	mode, err = e.svc.KeyMaterial("")
	require.NoError(t, err)
	require.Equal(t, keystore.TokenObjects, mode, "an existing deployment keeps making token objects")

	e.material.Mode = keystore.Wrapped
	e.restart()
	c = e.admin()
	var wrapped []sealedKey
	for _, kt := range keyTypeMatrix {
		k := makeKey(t, c, kt.spec, kt.usage)
		require.Zero(t, e.keyObjects(k.id))
		wrapped = append(wrapped, k)
	}
	for _, k := range append(old, wrapped...) {
		checkKey(t, c, k)
	}
	// A symmetric token-object key rotates into a wrapped version, and
	// decrypts what its token object encrypted.
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &old[0].id})
	require.NoError(t, err)
	ms := e.recordedMaterials(old[0].id)
	require.Len(t, ms, 2)
	assert.Empty(t, ms[0].Wrapped)
	assert.NotEmpty(t, ms[1].Wrapped)
	checkKey(t, c, old[0])

	e.material.Mode = ""
	e.restart()
	mode, err = e.svc.KeyMaterial("")
	require.NoError(t, err)
	require.Equal(t, keystore.Wrapped, mode, "once it has domain keys, wrapped stays the default")
	assert.Empty(t, e.report.MissingMaterial)
	assert.Empty(t, e.report.OrphanObjects)

	rep, err := e.svc.MigrateToWrapped(bg(), "")
	require.NoError(t, err)
	assert.Empty(t, rep.Migrated)
	assert.Len(t, rep.Refused, len(keyTypeMatrix), "hsmkms made them non-extractable: they stay token objects")
	for _, k := range append(old, wrapped...) {
		checkKey(t, e.admin(), k)
	}
}

// TestMissingDomainKeyRefusesStart: a domain key the database names but
// the token lacks is a refused start, saying which, as for a missing
// token; nothing is changed.
func TestMissingDomainKeyRefusesStart(t *testing.T) {
	t.Parallel()
	e := wrappedEnv(t, nil)
	makeKey(t, e.admin(), types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	e.close()
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: e.tok.Module, Label: e.tok.Label})
	require.NoError(t, err)
	require.NoError(t, tok.Login(bg(), e.tok.UserPIN))
	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(t, err)
	dks, err := db.DomainKeys(bg(), "")
	require.NoError(t, err)
	require.NoError(t, db.Close())
	require.Len(t, dks, 1)
	require.NoError(t, tok.DestroyObject(bg(), hsm.SecretKeyByID([]byte("hsmkms:domain-key:"+dks[0].ID))))
	require.NoError(t, tok.Close())

	_, err = kms.Open(context.Background(), kms.OpenConfig{
		DefaultToken: keystore.TokenConfig{Module: e.tok.Module, Label: e.tok.Label, PoolSize: 2},
		PIN:          e.tok.UserPIN, Database: e.dbPath, KeyMaterial: e.material,
	})
	require.ErrorIs(t, err, keystore.ErrDomainKeyMissing)
	require.ErrorContains(t, err, dks[0].ID)
	db, err = store.OpenSQLite(e.dbPath)
	require.NoError(t, err)
	defer db.Close()
	after, err := db.DomainKeys(bg(), "")
	require.NoError(t, err)
	require.Equal(t, dks, after, "nothing recorded was changed")
}

// TestDomainKeyRotationWithRestart rotates the domain key, restarts in
// the middle (before anything is rewrapped), then lets the domain key job
// rewrap every material version and destroy the old key; every key keeps
// working at each step.
func TestDomainKeyRotationWithRestart(t *testing.T) {
	t.Parallel()
	e := wrappedEnv(t, nil)
	c := e.admin()
	var keys []sealedKey
	for _, kt := range keyTypeMatrix {
		keys = append(keys, makeKey(t, c, kt.spec, kt.usage))
	}
	_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &keys[0].id})
	require.NoError(t, err)
	before, err := e.svc.DomainKeys(bg())
	require.NoError(t, err)
	require.Len(t, before, 1)
	require.Equal(t, len(keyTypeMatrix)+1, before[0].Materials)

	next, err := e.svc.RotateDomainKey(bg(), "")
	require.NoError(t, err)
	fresh := makeKey(t, c, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	require.Equal(t, next, e.recordedMaterials(fresh.id)[0].DomainKey, "new material goes under the new domain key")

	e.restart() // in the middle: retired, nothing rewrapped yet
	c = e.admin()
	mid, err := e.svc.DomainKeys(bg())
	require.NoError(t, err)
	require.Len(t, mid, 2)
	assert.Equal(t, "RETIRED", mid[0].State)
	assert.Equal(t, len(keyTypeMatrix)+1, mid[0].Materials)
	for _, k := range append(keys, fresh) {
		checkKey(t, c, k)
	}

	pass, err := e.svc.RewrapDomainKeys(bg())
	require.NoError(t, err)
	assert.Equal(t, len(keyTypeMatrix)+1, pass.Rewrapped)
	assert.Equal(t, []string{before[0].ID}, pass.Destroyed)
	after, err := e.svc.DomainKeys(bg())
	require.NoError(t, err)
	require.Len(t, after, 1)
	assert.Equal(t, next, after[0].ID)
	assert.Equal(t, len(keyTypeMatrix)+2, after[0].Materials)
	for _, k := range append(keys, fresh) {
		checkKey(t, c, k)
	}
	e.restart()
	c = e.admin()
	for _, k := range append(keys, fresh) {
		checkKey(t, c, k)
	}
	pass, err = e.svc.RewrapDomainKeys(bg())
	require.NoError(t, err)
	assert.Zero(t, pass.Rewrapped, "nothing left to do")
}

// TestMaterialCacheUnderKeySpreadLoad: requests spread over many more keys
// than the cache holds all succeed while objects are evicted under other
// requests, and the cache stays within its bound.
func TestMaterialCacheUnderKeySpreadLoad(t *testing.T) {
	t.Parallel()
	const bound, keys, workers = 4, 40, 16
	e := wrappedEnv(t, func(e *env) { e.material.CacheKeys = bound })
	c := e.admin()
	ids := make([]string, keys)
	for i := range ids {
		ids[i] = e.createKey(c)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range 25 {
				id := ids[mrand.IntN(keys)]
				enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte(id)})
				if err == nil {
					var dec *awskms.DecryptOutput
					dec, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
					if err == nil && string(dec.Plaintext) != id {
						err = fmt.Errorf("decrypted %q under %s", dec.Plaintext, id)
					}
				}
				if err != nil {
					errs <- err
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
	st, err := e.svc.MaterialCache("")
	require.NoError(t, err)
	assert.LessOrEqual(t, st.Objects, bound)
	assert.Positive(t, st.Evictions)
	assert.Positive(t, st.Hits)
}

// TestReconcileFinishesMigration: material recorded wrapped whose token
// object is still there (a migration killed before it destroyed it) has
// the object destroyed at the next start.
func TestReconcileFinishesMigration(t *testing.T) {
	t.Parallel()
	e := wrappedEnv(t, nil)
	k := makeKey(t, e.admin(), types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	ref := e.recordedMaterials(k.id)[0].TokenID
	e.close()
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: e.tok.Module, Label: e.tok.Label})
	require.NoError(t, err)
	require.NoError(t, tok.Login(bg(), e.tok.UserPIN))
	_, err = tok.GenerateAESKey(bg(), ref, arn(k.id), hsm.UsageEncrypt|hsm.UsageDecrypt)
	require.NoError(t, err)
	require.NoError(t, tok.Close())
	e.start()
	require.Len(t, e.report.FinishedMigrations, 1)
	assert.Contains(t, e.report.FinishedMigrations[0], k.id)
	assert.Zero(t, e.keyObjects(k.id))
	assert.Empty(t, e.report.OrphanObjects)
	checkKey(t, e.admin(), k)
}
