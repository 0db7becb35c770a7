package kms_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Multi-Region keys of imported material, as AWS has them: every key of
// the set imports the same material on its own, with its own expiry and
// its own state; hsmkms holds each version once, wrapped.

func (e *env) createExternalMRK(c *awskms.Client, spec types.KeySpec, usage types.KeyUsageType) string {
	e.t.Helper()
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{Origin: types.OriginTypeExternal, MultiRegion: aws.Bool(true), KeySpec: spec, KeyUsage: usage})
	require.NoError(e.t, err)
	md := out.KeyMetadata
	require.Regexp(e.t, mrkID, *md.KeyId)
	assert.Equal(e.t, types.KeyStatePendingImport, md.KeyState)
	assert.Equal(e.t, types.OriginTypeExternal, md.Origin)
	assert.True(e.t, aws.ToBool(md.MultiRegion))
	require.NotNil(e.t, md.MultiRegionConfiguration)
	assert.Equal(e.t, types.MultiRegionKeyTypePrimary, md.MultiRegionConfiguration.MultiRegionKeyType)
	return *md.KeyId
}

func rotations(t *testing.T, c *awskms.Client, id string) map[string]types.RotationsListEntry {
	t.Helper()
	out, err := c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &id, IncludeKeyMaterial: types.IncludeKeyMaterialAllKeyMaterial})
	require.NoError(t, err)
	m := map[string]types.RotationsListEntry{}
	for _, r := range out.Rotations {
		m[*r.KeyMaterialId] = r
	}
	return m
}

// storedVersion reads version id of the key in region from the database,
// with the service stopped.
func (e *env) storedVersion(region, id, version string) store.Material {
	e.t.Helper()
	e.close()
	defer e.start()
	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(e.t, err)
	defer db.Close()
	k, err := db.GetKey(bg(), account, region, id)
	require.NoError(e.t, err)
	for _, m := range k.Materials {
		if m.ID == version {
			return m
		}
	}
	e.t.Fatalf("%s has no material %s", region, version)
	return store.Material{}
}

func TestMultiRegionImportedSymmetric(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = keystore.Wrapped })
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createExternalMRK(a, "", "")
	noExpiry := func() *awskms.ImportKeyMaterialInput {
		return &awskms.ImportKeyMaterialInput{ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire}
	}

	first := random(32)
	validTo := e.clock.Now().Add(2 * time.Hour).Truncate(time.Second)
	imp, err := importMaterial(t, a, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, first,
		&awskms.ImportKeyMaterialInput{ValidTo: aws.Time(validTo)})
	require.NoError(t, err)
	firstID := *imp.KeyMaterialId
	assert.Equal(t, types.KeyStateEnabled, describe(t, a, id).KeyState)

	// The replica is made Creating and becomes PendingImport: AWS copies
	// no imported material.
	rep := e.replicate(a, id, region2)
	assert.Equal(t, types.KeyStateCreating, rep.ReplicaKeyMetadata.KeyState)
	assert.Equal(t, types.OriginTypeExternal, rep.ReplicaKeyMetadata.Origin)
	m := e.waitKeyState(b, id, types.KeyStatePendingImport)
	assert.Empty(t, m.ExpirationModel)
	_, err = b.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	requireAPIError(t, err, "KMSInvalidStateException", "")

	// It takes its primary's material only, and no new material.
	_, err = importMaterial(t, b, id, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa2048, random(32), noExpiry())
	requireAPIError(t, err, "IncorrectKeyMaterialException", "")
	in := noExpiry()
	in.ImportType = types.ImportTypeNewKeyMaterial
	_, err = importMaterial(t, b, id, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa2048, first, in)
	requireAPIError(t, err, "UnsupportedOperationException", "")
	imp, err = importMaterial(t, b, id, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa2048, first, noExpiry())
	require.NoError(t, err)
	assert.Equal(t, firstID, *imp.KeyMaterialId, "the same material has the same id in every Region")

	// Each key has its own expiry.
	pm, rm := describe(t, a, id), describe(t, b, id)
	assert.Equal(t, types.KeyStateEnabled, rm.KeyState)
	assert.Equal(t, types.ExpirationModelTypeKeyMaterialExpires, pm.ExpirationModel)
	assert.Equal(t, validTo.UTC(), pm.ValidTo.UTC())
	assert.Equal(t, types.ExpirationModelTypeKeyMaterialDoesNotExpire, rm.ExpirationModel)
	assert.Nil(t, rm.ValidTo)
	assert.Equal(t, firstID, *rm.CurrentKeyMaterialId)
	crossRegionUse(t, a, b, id, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	crossRegionUse(t, b, a, id, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	ct1, err := a.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("first")})
	require.NoError(t, err)

	// The primary's material expires; the replica's does not.
	e.clock.Advance(3 * time.Hour)
	n, err := e.svc.ExpireImported(bg())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, types.KeyStatePendingImport, describe(t, a, id).KeyState)
	assert.Equal(t, types.KeyStateEnabled, describe(t, b, id).KeyState)
	_, err = a.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct1.CiphertextBlob})
	requireAPIError(t, err, "KMSInvalidStateException", "")
	dec, err := b.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct1.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "first", string(dec.Plaintext))
	_, err = importMaterial(t, a, id, types.AlgorithmSpecRsaesOaepSha256, types.WrappingKeySpecRsa3072, first, noExpiry())
	require.NoError(t, err)
	assert.Equal(t, types.KeyStateEnabled, describe(t, a, id).KeyState)

	// New material: into the primary, then every replica, then rotated.
	second := random(32)
	in = noExpiry()
	in.ImportType = types.ImportTypeNewKeyMaterial
	imp, err = importMaterial(t, a, id, types.AlgorithmSpecRsaAesKeyWrapSha1, types.WrappingKeySpecRsa2048, second, in)
	require.NoError(t, err)
	secondID := *imp.KeyMaterialId
	pr, rr := rotations(t, a, id), rotations(t, b, id)
	assert.Equal(t, types.KeyMaterialStateCurrent, pr[firstID].KeyMaterialState)
	assert.Equal(t, types.KeyMaterialStatePendingMultiRegionImportAndRotation, pr[secondID].KeyMaterialState)
	assert.Equal(t, types.ImportStateImported, pr[secondID].ImportState)
	assert.Equal(t, types.KeyMaterialStatePendingMultiRegionImportAndRotation, rr[secondID].KeyMaterialState)
	assert.Equal(t, types.ImportStatePendingImport, rr[secondID].ImportState)
	assert.Equal(t, types.KeyStateEnabled, describe(t, b, id).KeyState, "material pending rotation leaves the replica's state alone")
	_, err = a.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	requireAPIError(t, err, "KMSInvalidStateException", "")
	_, err = b.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	requireAPIError(t, err, "UnsupportedOperationException", "")
	in = noExpiry()
	in.ImportType, in.KeyMaterialId = types.ImportTypeExistingKeyMaterial, aws.String(secondID)
	_, err = importMaterial(t, b, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa4096, second, in)
	require.NoError(t, err)
	assert.Equal(t, types.KeyMaterialStatePendingRotation, rotations(t, a, id)[secondID].KeyMaterialState)
	_, err = a.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	require.NoError(t, err)
	for _, c := range []*awskms.Client{a, b} {
		assert.Equal(t, secondID, *describe(t, c, id).CurrentKeyMaterialId)
		r := rotations(t, c, id)
		assert.Equal(t, types.KeyMaterialStateCurrent, r[secondID].KeyMaterialState)
		assert.Equal(t, types.RotationTypeOnDemand, r[secondID].RotationType)
	}
	ct2, err := b.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("second")})
	require.NoError(t, err)
	dec, err = a.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct2.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "second", string(dec.Plaintext))

	// Material pending rotation deleted from the primary is deleted from
	// every key of the set.
	in = noExpiry()
	in.ImportType = types.ImportTypeNewKeyMaterial
	imp, err = importMaterial(t, a, id, types.AlgorithmSpecRsaAesKeyWrapSha1, types.WrappingKeySpecRsa2048, random(32), in)
	require.NoError(t, err)
	assert.Contains(t, rotations(t, b, id), *imp.KeyMaterialId)
	_, err = a.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: &id, KeyMaterialId: imp.KeyMaterialId})
	require.NoError(t, err)
	assert.NotContains(t, rotations(t, b, id), *imp.KeyMaterialId)

	// Deleted from the replica, the material stays the primary's.
	del, err := b.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, secondID, *del.KeyMaterialId)
	assert.Equal(t, types.KeyStatePendingImport, describe(t, b, id).KeyState)
	assert.Equal(t, types.KeyStateEnabled, describe(t, a, id).KeyState)
	_, err = b.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct2.CiphertextBlob})
	requireAPIError(t, err, "KMSInvalidStateException", "")
	dec, err = a.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct2.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "second", string(dec.Plaintext))
	assert.NotEmpty(t, e.storedVersion(region2, id, secondID).Wrapped, "the primary holds it")
	a = e.admin() // a new server

	// Deleted from the primary too, no key holds it: its wrapped copy is
	// gone from every key's record.
	_, err = a.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: &id, KeyMaterialId: aws.String(secondID)})
	require.NoError(t, err)
	for _, r := range []string{region, region2} {
		v := e.storedVersion(r, id, secondID)
		assert.Empty(t, v.Wrapped, r)
		assert.Empty(t, v.DomainKey, r)
		assert.True(t, v.Import.PendingImport, r)
	}
	a, b = e.admin(), e.client(principals[0], region2)
	_, err = importMaterial(t, b, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, second, noExpiry())
	require.NoError(t, err)
	assert.Equal(t, types.KeyStateEnabled, describe(t, b, id).KeyState)
	assert.Equal(t, types.KeyStatePendingImport, describe(t, a, id).KeyState)
	dec, err = b.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct2.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "second", string(dec.Plaintext))

	e.restart()
	assert.Empty(t, e.report.MissingMaterial)
	b = e.client(principals[0], region2)
	dec, err = b.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct1.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "first", string(dec.Plaintext))
}

// TestMultiRegionImportedAsymmetric: a replica of an imported signing key
// takes only its primary's private key, and then signs as it does.
func TestMultiRegionImportedAsymmetric(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = keystore.Wrapped })
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createExternalMRK(a, types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d1, _ := x509.MarshalPKCS8PrivateKey(k1)
	d2, _ := x509.MarshalPKCS8PrivateKey(k2)
	_, err := importMaterial(t, a, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, d1, nil)
	require.NoError(t, err)
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStatePendingImport)
	_, err = importMaterial(t, b, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, d2, nil)
	requireAPIError(t, err, "IncorrectKeyMaterialException", "")
	_, err = importMaterial(t, b, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, d1, nil)
	require.NoError(t, err)
	assert.Equal(t, types.KeyStateEnabled, describe(t, b, id).KeyState)
	samePublicKey(t, a, b, id)
	pub, err := a.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &id})
	require.NoError(t, err)
	want, _ := x509.MarshalPKIXPublicKey(&k1.PublicKey)
	assert.Equal(t, want, pub.PublicKey)
	sig, err := b.Sign(bg(), &awskms.SignInput{KeyId: &id, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	sum := sha256.Sum256([]byte("m"))
	assert.True(t, ecdsa.VerifyASN1(&k1.PublicKey, sum[:], sig.Signature))
	crossRegionUse(t, a, b, id, types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
}

// TestMultiRegionImportedDeletion: a key of the set that goes takes with
// it the material only it had imported, and nothing another key holds.
func TestMultiRegionImportedDeletion(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = keystore.Wrapped })
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createExternalMRK(a, "", "")
	material := random(32)
	imp, err := importMaterial(t, a, id, types.AlgorithmSpecRsaesOaepSha256, types.WrappingKeySpecRsa2048, material, nil)
	require.NoError(t, err)
	version := *imp.KeyMaterialId
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStatePendingImport)
	_, err = importMaterial(t, b, id, types.AlgorithmSpecRsaesOaepSha256, types.WrappingKeySpecRsa2048, material, nil)
	require.NoError(t, err)
	ct, err := b.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("kept")})
	require.NoError(t, err)

	// The primary lets its import go; the replica, the last key holding
	// the material, is deleted.
	_, err = a.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: &id})
	require.NoError(t, err)
	assert.NotEmpty(t, e.storedVersion(region, id, version).Wrapped, "the replica holds it")
	b = e.client(principals[0], region2) // a new server
	_, err = b.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	e.clock.Advance(8 * day)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	v := e.storedVersion(region, id, version)
	assert.Empty(t, v.Wrapped, "no key of the set holds the material any more")
	assert.True(t, v.Import.PendingImport)

	// Imported again, it is the same material: old ciphertexts decrypt.
	a = e.admin()
	_, err = importMaterial(t, a, id, types.AlgorithmSpecRsaesOaepSha256, types.WrappingKeySpecRsa2048, material, nil)
	require.NoError(t, err)
	dec, err := a.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "kept", string(dec.Plaintext))
}

// TestMultiRegionImportedNeedsWrappedMaterial: a default key store that
// makes token objects cannot hold one material for several keys' imports.
func TestMultiRegionImportedNeedsWrappedMaterial(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = keystore.TokenObjects })
	_, err := e.admin().CreateKey(bg(), &awskms.CreateKeyInput{Origin: types.OriginTypeExternal, MultiRegion: aws.Bool(true)})
	requireAPIError(t, err, "UnsupportedOperationException", "Multi-Region keys with imported key material (Origin EXTERNAL) need the default key store to hold key material wrapped (key_material: wrapped); this deployment's holds it as token objects.")
}

// TestMultiRegionImportedEd25519: a token that cannot wrap Ed25519 keys
// (SoftHSM2 2.6.1) holds them as token objects even in a store that holds
// material wrapped, and so refuses their import into multi-Region keys,
// after unwrapping and before anything is made or recorded.
func TestMultiRegionImportedEd25519(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = keystore.Wrapped })
	a := e.admin()
	id := e.createExternalMRK(a, types.KeySpecEccNistEdwards25519, types.KeyUsageTypeSignVerify)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	_, err = importMaterial(t, a, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, der, nil)
	requireAPIError(t, err, "UnsupportedOperationException", "The default key store holds ECC_NIST_EDWARDS25519 key material as token objects, not wrapped: multi-Region keys cannot import it.")
	assert.Equal(t, types.KeyStatePendingImport, describe(t, a, id).KeyState)
	e.restart()
	assert.Empty(t, e.report.OrphanObjects)
	assert.Empty(t, e.report.AbandonedRotations)
}
