package kms_test

import (
	"bytes"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The second Region of the multi-Region tests; region (us-west-2) is the
// first.
const region2 = "eu-west-1"

var mrkID = regexp.MustCompile(`^mrk-[0-9a-f]{32}$`)

func (e *env) createMRK(c *awskms.Client, spec types.KeySpec, usage types.KeyUsageType) string {
	e.t.Helper()
	in := &awskms.CreateKeyInput{MultiRegion: aws.Bool(true), KeySpec: spec}
	if usage != "" {
		in.KeyUsage = usage
	}
	out, err := c.CreateKey(bg(), in)
	require.NoError(e.t, err)
	return *out.KeyMetadata.KeyId
}

func (e *env) replicate(c *awskms.Client, id, to string) *awskms.ReplicateKeyOutput {
	e.t.Helper()
	out, err := c.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: &to})
	require.NoError(e.t, err)
	return out
}

// waitState polls DescribeKey until the key is in state: the transitions
// of multi-Region keys finish in the background.
func (e *env) waitKeyState(c *awskms.Client, id string, state types.KeyState) *types.KeyMetadata {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
		require.NoError(e.t, err)
		if d.KeyMetadata.KeyState == state || time.Now().After(deadline) {
			require.Equal(e.t, state, d.KeyMetadata.KeyState)
			return d.KeyMetadata
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func describe(t *testing.T, c *awskms.Client, id string) *types.KeyMetadata {
	t.Helper()
	d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	require.NoError(t, err)
	return d.KeyMetadata
}

// TestMultiRegionEverySpec: for every key spec hsmkms makes, a
// multi-Region key replicates, and what one Region's key does the other's
// undoes or checks, both ways: the two keys hold one material.
func TestMultiRegionEverySpec(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.admin(), e.client(principals[0], region2)
	for spec, usages := range specUsages {
		for _, usage := range usages {
			t.Run(string(spec)+"/"+string(usage), func(t *testing.T) {
				t.Parallel()
				id := e.createMRK(a, spec, usage)
				require.Regexp(t, mrkID, id)
				m := describe(t, a, id)
				assert.True(t, aws.ToBool(m.MultiRegion))
				require.NotNil(t, m.MultiRegionConfiguration)
				assert.Equal(t, types.MultiRegionKeyTypePrimary, m.MultiRegionConfiguration.MultiRegionKeyType)
				assert.Equal(t, "arn:aws:kms:"+region+":"+account+":key/"+id, *m.MultiRegionConfiguration.PrimaryKey.Arn)
				assert.Empty(t, m.MultiRegionConfiguration.ReplicaKeys)

				out := e.replicate(a, id, region2)
				rm := out.ReplicaKeyMetadata
				assert.Equal(t, types.KeyStateCreating, rm.KeyState)
				assert.Equal(t, id, *rm.KeyId)
				assert.Equal(t, "arn:aws:kms:"+region2+":"+account+":key/"+id, *rm.Arn)
				assert.Equal(t, spec, rm.KeySpec)
				assert.Equal(t, usage, rm.KeyUsage)
				assert.Equal(t, m.Origin, rm.Origin)
				assert.Equal(t, types.MultiRegionKeyTypeReplica, rm.MultiRegionConfiguration.MultiRegionKeyType)
				assert.NotEmpty(t, aws.ToString(out.ReplicaPolicy))
				e.waitKeyState(b, id, types.KeyStateEnabled)

				for _, c := range []*awskms.Client{a, b} {
					cfg := describe(t, c, id).MultiRegionConfiguration
					require.NotNil(t, cfg)
					assert.Equal(t, region, *cfg.PrimaryKey.Region)
					require.Len(t, cfg.ReplicaKeys, 1)
					assert.Equal(t, region2, *cfg.ReplicaKeys[0].Region)
				}
				crossRegionUse(t, a, b, id, spec, usage)
				crossRegionUse(t, b, a, id, spec, usage)
			})
		}
	}
}

// crossRegionUse does with from's key what to's key must undo or check.
func crossRegionUse(t *testing.T, from, to *awskms.Client, id string, spec types.KeySpec, usage types.KeyUsageType) {
	t.Helper()
	msg := []byte("multi-Region")
	switch usage {
	case types.KeyUsageTypeEncryptDecrypt:
		if spec == types.KeySpecSymmetricDefault {
			ec := map[string]string{"purpose": "test"}
			enc, err := from.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: msg, EncryptionContext: ec})
			require.NoError(t, err)
			// Without KeyId: the ciphertext names the multi-Region key.
			dec, err := to.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
			require.NoError(t, err)
			assert.Equal(t, msg, dec.Plaintext)
			assert.Equal(t, id, arnKeyID(*dec.KeyId))
			_, err = to.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
			requireAPIError(t, err, "InvalidCiphertextException", "")
			dk, err := from.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &id, KeySpec: types.DataKeySpecAes256})
			require.NoError(t, err)
			dec, err = to.Decrypt(bg(), &awskms.DecryptInput{KeyId: &id, CiphertextBlob: dk.CiphertextBlob})
			require.NoError(t, err)
			assert.Equal(t, dk.Plaintext, dec.Plaintext)
			// ReEncrypt in to's Region, from the multi-Region key to a
			// key of that Region, and back under the multi-Region key.
			local, err := to.CreateKey(bg(), &awskms.CreateKeyInput{})
			require.NoError(t, err)
			re, err := to.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ec,
				DestinationKeyId: local.KeyMetadata.KeyId})
			require.NoError(t, err)
			re2, err := to.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: re.CiphertextBlob, DestinationKeyId: &id})
			require.NoError(t, err)
			dec, err = from.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: re2.CiphertextBlob})
			require.NoError(t, err)
			assert.Equal(t, msg, dec.Plaintext)
			return
		}
		enc, err := from.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: msg, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
		require.NoError(t, err)
		dec, err := to.Decrypt(bg(), &awskms.DecryptInput{KeyId: &id, CiphertextBlob: enc.CiphertextBlob, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
		require.NoError(t, err)
		assert.Equal(t, msg, dec.Plaintext)
	case types.KeyUsageTypeSignVerify:
		alg := signingAlgs[spec][0]
		sig, err := from.Sign(bg(), &awskms.SignInput{KeyId: &id, Message: msg, SigningAlgorithm: alg})
		require.NoError(t, err)
		v, err := to.Verify(bg(), &awskms.VerifyInput{KeyId: &id, Message: msg, Signature: sig.Signature, SigningAlgorithm: alg})
		require.NoError(t, err)
		assert.True(t, v.SignatureValid)
		samePublicKey(t, from, to, id)
	case types.KeyUsageTypeGenerateVerifyMac:
		alg := types.MacAlgorithmSpec("HMAC_SHA_" + string(spec)[5:])
		mac, err := from.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &id, Message: msg, MacAlgorithm: alg})
		require.NoError(t, err)
		v, err := to.VerifyMac(bg(), &awskms.VerifyMacInput{KeyId: &id, Message: msg, Mac: mac.Mac, MacAlgorithm: alg})
		require.NoError(t, err)
		assert.True(t, v.MacValid)
	case types.KeyUsageTypeKeyAgreement:
		// The peer's public key: another key pair of the same curve.
		peer, err := from.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: types.KeyUsageTypeKeyAgreement})
		require.NoError(t, err)
		pub, err := from.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: peer.KeyMetadata.KeyId})
		require.NoError(t, err)
		var secrets [][]byte
		for _, c := range []*awskms.Client{from, to} {
			out, err := c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &id, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: pub.PublicKey})
			require.NoError(t, err)
			secrets = append(secrets, out.SharedSecret)
		}
		assert.Equal(t, secrets[0], secrets[1])
		samePublicKey(t, from, to, id)
	}
}

func samePublicKey(t *testing.T, a, b *awskms.Client, id string) {
	t.Helper()
	pa, err := a.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &id})
	require.NoError(t, err)
	pb, err := b.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, pa.PublicKey, pb.PublicKey)
}

func arnKeyID(arn string) string { return arn[strings.LastIndex(arn, "/")+1:] }

// TestMultiRegionReplicaOwnProperties: a replica has its own policy,
// description, tags, aliases and enabled state; its spec, usage, origin
// and rotation are its primary's.
func TestMultiRegionReplicaOwnProperties(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	policy := `{"Version":"2012-10-17","Statement":[{"Sid":"all","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"kms:*","Resource":"*"}]}`
	out, err := a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String(region2), Policy: &policy,
		Description: aws.String("the replica"), Tags: []types.Tag{{TagKey: aws.String("team"), TagValue: aws.String("b")}}})
	require.NoError(t, err)
	assert.Equal(t, policy, *out.ReplicaPolicy)
	assert.Equal(t, []types.Tag{{TagKey: aws.String("team"), TagValue: aws.String("b")}}, out.ReplicaTags)
	assert.Equal(t, "the replica", *out.ReplicaKeyMetadata.Description)
	e.waitKeyState(b, id, types.KeyStateEnabled)

	got, err := b.GetKeyPolicy(bg(), &awskms.GetKeyPolicyInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, policy, *got.Policy)
	tags, err := a.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: &id})
	require.NoError(t, err)
	assert.Empty(t, tags.Tags, "tags are the replica's own")
	assert.Equal(t, "", *describe(t, a, id).Description)

	// Aliases are per Region: the same name on each key.
	for _, c := range []*awskms.Client{a, b} {
		_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/mrk"), TargetKeyId: &id})
		require.NoError(t, err)
	}
	enc, err := a.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String("alias/mrk"), Plaintext: []byte("x")})
	require.NoError(t, err)
	// The key's ARN and an alias ARN in the replica's Region name it.
	_, err = b.Decrypt(bg(), &awskms.DecryptInput{KeyId: aws.String("arn:aws:kms:" + region2 + ":" + account + ":key/" + id), CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	_, err = b.Decrypt(bg(), &awskms.DecryptInput{KeyId: aws.String("arn:aws:kms:" + region2 + ":" + account + ":alias/mrk"), CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	_, err = b.Decrypt(bg(), &awskms.DecryptInput{KeyId: aws.String(strings.ToUpper(id[:4]) + id[4:]), CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err, "a key id is case-insensitive")

	// Enabled state is per key.
	_, err = b.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	require.NoError(t, err)
	_, err = b.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	requireAPIError(t, err, "DisabledException", "arn:aws:kms:"+region2+":"+account+":key/"+id+" is disabled.")
	_, err = a.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)

	// ListKeys in each Region lists its own key.
	for _, c := range []*awskms.Client{a, b} {
		l, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
		require.NoError(t, err)
		found := false
		for _, k := range l.Keys {
			found = found || *k.KeyId == id
		}
		assert.True(t, found)
	}
}

// TestMultiRegionRotation: rotating the primary rotates every replica;
// rotation settings are changed only on the primary.
func TestMultiRegionRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	_, err := a.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
	require.NoError(t, err)
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStateEnabled)
	st := e.rotationStatus(b, id)
	assert.True(t, st.KeyRotationEnabled, "the replica shares its primary's rotation")
	assert.Equal(t, int32(90), *st.RotationPeriodInDays)

	old, err := a.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("before")})
	require.NoError(t, err)
	_, err = a.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, e.currentMaterial(a, id), e.currentMaterial(b, id))
	ra, rb := e.rotations(a, id, true), e.rotations(b, id, true)
	require.Len(t, rb, 2)
	for i := range ra {
		assert.Equal(t, ra[i].KeyMaterialId, rb[i].KeyMaterialId)
		assert.Equal(t, ra[i].KeyMaterialState, rb[i].KeyMaterialState)
	}
	enc, err := b.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("after")})
	require.NoError(t, err)
	assert.True(t, sealedUnder(t, enc.CiphertextBlob, e.currentMaterial(a, id)))
	for _, blob := range [][]byte{old.CiphertextBlob, enc.CiphertextBlob} {
		for _, c := range []*awskms.Client{a, b} {
			_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: blob})
			require.NoError(t, err)
		}
	}

	// Automatic rotation: due for both, done once, by the primary.
	e.clock.Advance(91 * day)
	assert.Equal(t, 1, e.rotateDue())
	assert.Len(t, e.rotations(b, id, true), 3)
	assert.Equal(t, e.currentMaterial(a, id), e.currentMaterial(b, id))

	replica := "arn:aws:kms:" + region2 + ":" + account + ":key/" + id
	primary := "arn:aws:kms:" + region + ":" + account + ":key/" + id
	want := replica + " is a multi-Region replica key: this property is shared with its primary key " + primary + " and can be changed only there."
	_, err = b.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	requireAPIError(t, err, "UnsupportedOperationException", want)
	_, err = b.DisableKeyRotation(bg(), &awskms.DisableKeyRotationInput{KeyId: &id})
	requireAPIError(t, err, "UnsupportedOperationException", want)
	_, err = b.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id})
	requireAPIError(t, err, "UnsupportedOperationException", want)
	_, err = a.DisableKeyRotation(bg(), &awskms.DisableKeyRotationInput{KeyId: &id})
	require.NoError(t, err)
	assert.False(t, e.rotationStatus(b, id).KeyRotationEnabled)
}

// TestUpdatePrimaryRegion: the primary role moves; both keys are Updating
// until it has, and usable throughout.
func TestUpdatePrimaryRegion(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStateEnabled)
	enc, err := a.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)

	e.svc.PauseTransitions(true)
	_, err = a.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(region2)})
	require.NoError(t, err)
	for _, c := range []*awskms.Client{a, b} {
		assert.Equal(t, types.KeyStateUpdating, describe(t, c, id).KeyState)
		_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		require.NoError(t, err, "usable while Updating")
		_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
		requireAPIError(t, err, "KMSInvalidStateException", "arn:aws:kms:"+c.Options().Region+":"+account+":key/"+id+" is updating.")
	}
	_, err = b.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String("ap-south-1")})
	requireAPIError(t, err, "KMSInvalidStateException", "")
	e.svc.PauseTransitions(false)
	e.waitKeyState(a, id, types.KeyStateEnabled)
	ma, mb := describe(t, a, id), describe(t, b, id)
	assert.Equal(t, types.KeyStateEnabled, mb.KeyState)
	assert.Equal(t, types.MultiRegionKeyTypeReplica, ma.MultiRegionConfiguration.MultiRegionKeyType)
	assert.Equal(t, types.MultiRegionKeyTypePrimary, mb.MultiRegionConfiguration.MultiRegionKeyType)
	assert.Equal(t, region2, *ma.MultiRegionConfiguration.PrimaryKey.Region)
	require.Len(t, ma.MultiRegionConfiguration.ReplicaKeys, 1)
	assert.Equal(t, region, *ma.MultiRegionConfiguration.ReplicaKeys[0].Region)

	// Now the key in region2 replicates and rotates; the one in region
	// does not.
	_, err = a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String("ap-south-1")})
	requireAPIError(t, err, "UnsupportedOperationException", "arn:aws:kms:"+region+":"+account+":key/"+id+" is not a multi-Region primary key.")
	e.replicate(b, id, "ap-south-1")
	_, err = b.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, e.currentMaterial(a, id), e.currentMaterial(b, id))
}

// TestMultiRegionErrors: AWS's answers to what cannot be done.
func TestMultiRegionErrors(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.edge.Regions = []string{region, region2, "ap-south-1"} })
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	arn := "arn:aws:kms:" + region + ":" + account + ":key/" + id
	single := e.createKey(a)
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStateEnabled)

	t.Run("replicate a single-Region key", func(t *testing.T) {
		_, err := a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &single, ReplicaRegion: aws.String(region2)})
		requireAPIError(t, err, "UnsupportedOperationException", "arn:aws:kms:"+region+":"+account+":key/"+single+" is not a multi-Region primary key.")
	})
	t.Run("replicate a replica", func(t *testing.T) {
		_, err := b.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String("ap-south-1")})
		requireAPIError(t, err, "UnsupportedOperationException", "arn:aws:kms:"+region2+":"+account+":key/"+id+" is not a multi-Region primary key.")
	})
	t.Run("a second replica in a Region", func(t *testing.T) {
		_, err := a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String(region2)})
		requireAPIError(t, err, "AlreadyExistsException", "Multi-Region key "+arn+" already has a key in Region "+region2+": arn:aws:kms:"+region2+":"+account+":key/"+id+".")
	})
	t.Run("the primary's own Region", func(t *testing.T) {
		_, err := a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String(region)})
		requireAPIError(t, err, "AlreadyExistsException", "")
	})
	t.Run("a Region not served", func(t *testing.T) {
		_, err := a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String("sa-east-1")})
		requireAPIError(t, err, "UnsupportedOperationException", "Region sa-east-1 is not served by this hsmkms deployment: a replica can be made only in a Region it serves (its regions: configuration).")
	})
	t.Run("a malformed Region", func(t *testing.T) {
		status, typ, _ := e.raw("ReplicateKey", `{"KeyId":"`+id+`","ReplicaRegion":"Mars"}`)
		assert.Equal(t, 400, status)
		assert.Equal(t, "ValidationException", typ)
	})
	t.Run("a bad policy", func(t *testing.T) {
		_, err := a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String("ap-south-1"), Policy: aws.String("not json")})
		requireAPIError(t, err, "MalformedPolicyDocumentException", "")
	})
	t.Run("reserved tags", func(t *testing.T) {
		_, err := a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String("ap-south-1"),
			Tags: []types.Tag{{TagKey: aws.String("aws:x"), TagValue: aws.String("y")}}})
		requireAPIError(t, err, "TagException", "Tags beginning with aws: are reserved")
	})
	t.Run("an unknown key", func(t *testing.T) {
		missing := "mrk-00000000000000000000000000000000"
		_, err := a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &missing, ReplicaRegion: aws.String(region2)})
		requireAPIError(t, err, "NotFoundException", "Key 'arn:aws:kms:"+region+":"+account+":key/"+missing+"' does not exist")
	})
	t.Run("update to a Region without a replica", func(t *testing.T) {
		_, err := a.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String("ap-south-1")})
		requireAPIError(t, err, "NotFoundException", "Key 'arn:aws:kms:ap-south-1:"+account+":key/"+id+"' does not exist")
	})
	t.Run("update named by a replica", func(t *testing.T) {
		_, err := b.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(region)})
		requireAPIError(t, err, "UnsupportedOperationException", "arn:aws:kms:"+region2+":"+account+":key/"+id+" is not a multi-Region primary key.")
	})
	t.Run("update a single-Region key", func(t *testing.T) {
		_, err := a.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &single, PrimaryRegion: aws.String(region2)})
		requireAPIError(t, err, "UnsupportedOperationException", "arn:aws:kms:"+region+":"+account+":key/"+single+" is not a multi-Region key.")
	})
	t.Run("update to its own Region", func(t *testing.T) {
		_, err := a.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(region)})
		requireAPIError(t, err, "UnsupportedOperationException", arn+" is already the primary key of its multi-Region key.")
	})
	t.Run("a replica Creating is managed, not used", func(t *testing.T) {
		e.svc.PauseTransitions(true)
		defer e.svc.PauseTransitions(false)
		c := e.client(principals[0], "ap-south-1")
		e.replicate(a, id, "ap-south-1")
		assert.Equal(t, types.KeyStateCreating, describe(t, c, id).KeyState)
		_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
		requireAPIError(t, err, "KMSInvalidStateException", "arn:aws:kms:ap-south-1:"+account+":key/"+id+" is creating.")
		_, err = c.UpdateKeyDescription(bg(), &awskms.UpdateKeyDescriptionInput{KeyId: &id, Description: aws.String("managed")})
		require.NoError(t, err)
		_, err = c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: []types.Tag{{TagKey: aws.String("k"), TagValue: aws.String("v")}}})
		require.NoError(t, err)
	})
	t.Run("a primary pending deletion", func(t *testing.T) {
		other := e.createMRK(a, "", "")
		_, err := a.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &other, PendingWindowInDays: aws.Int32(7)})
		require.NoError(t, err)
		_, err = a.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &other, ReplicaRegion: aws.String(region2)})
		requireAPIError(t, err, "KMSInvalidStateException", "arn:aws:kms:"+region+":"+account+":key/"+other+" is pending deletion.")
	})
	t.Run("a disabled primary replicates", func(t *testing.T) {
		other := e.createMRK(a, "", "")
		_, err := a.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &other})
		require.NoError(t, err)
		e.replicate(a, other, region2)
		e.waitKeyState(b, other, types.KeyStateEnabled)
	})
	t.Run("DryRun is not a member", func(t *testing.T) {
		// ReplicateKey and UpdatePrimaryRegion have no DryRun: the model
		// test checks the inputs; here, the call is made once.
		_, err := a.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: aws.String("alias/none"), PrimaryRegion: aws.String(region2)})
		requireAPIError(t, err, "NotFoundException", "")
	})
}

// TestMultiRegionAuthorization: kms:ReplicateKey on the primary and
// kms:CreateKey in the replica Region; kms:UpdatePrimaryRegion on both
// keys.
func TestMultiRegionAuthorization(t *testing.T) {
	t.Parallel()
	user := func(name, policy string) kms.Principal {
		return kms.Principal{AccessKeyID: "AKIA" + strings.ToUpper(name) + strings.Repeat("0", 16-len(name)), Secret: name + "-secret-000000000000000000000000000",
			Account: account, ARN: "arn:aws:iam::" + account + ":user/" + name, Policy: policy}
	}
	allow := func(actions ...string) string {
		return `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["` + strings.Join(actions, `","`) + `"],"Resource":"*"}]}`
	}
	noCreate := user("nocreate", allow("kms:ReplicateKey", "kms:DescribeKey"))
	replicator := user("replicator", allow("kms:ReplicateKey", "kms:CreateKey"))
	mover := user("mover", allow("kms:UpdatePrimaryRegion"))
	e := newEnvWith(t, func(e *env) { e.principals = []kms.Principal{noCreate, replicator, mover} })
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	arn := "arn:aws:kms:" + region + ":" + account + ":key/" + id

	_, err := e.client(noCreate, region).ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String(region2)})
	requireAPIError(t, err, "AccessDeniedException", "")
	out, err := e.client(replicator, region).ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String(region2)})
	require.NoError(t, err)
	e.waitKeyState(b, id, types.KeyStateEnabled)

	// The replica's own policy can deny the move there.
	deny := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"kms:*","Resource":"*"},` +
		`{"Effect":"Deny","Principal":{"AWS":"` + mover.ARN + `"},"Action":"kms:UpdatePrimaryRegion","Resource":"*"}]}`
	_, err = b.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: &deny})
	require.NoError(t, err)
	_, err = e.client(mover, region).UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(region2)})
	requireAPIError(t, err, "AccessDeniedException", "")
	assert.Equal(t, types.MultiRegionKeyTypePrimary, describe(t, a, id).MultiRegionConfiguration.MultiRegionKeyType)
	_, err = b.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: out.ReplicaPolicy})
	require.NoError(t, err)
	_, err = e.client(mover, region).UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(region2)})
	require.NoError(t, err)
	e.waitKeyState(a, id, types.KeyStateEnabled)
	assert.Equal(t, types.MultiRegionKeyTypeReplica, describe(t, a, id).MultiRegionConfiguration.MultiRegionKeyType, arn)
}

// mrkObjects counts the token objects of the multi-Region key id.
func (e *env) mrkObjects(id string) int {
	e.t.Helper()
	prefix, err := hex.DecodeString(strings.TrimPrefix(id, "mrk-"))
	require.NoError(e.t, err)
	h, err := hsm.OpenToken(hsm.TokenConfig{Module: e.tok.Module, Label: e.tok.Label, PoolSize: 1})
	require.NoError(e.t, err)
	defer h.Close()
	objs, err := h.ListObjects(bg(), 0)
	require.NoError(e.t, err)
	n := 0
	for _, o := range objs {
		if bytes.HasPrefix(o.ID, prefix) {
			n++
		}
	}
	return n
}

// TestMultiRegionDeletion: a primary waits for its replicas
// (PendingReplicaDeletion); a replica is deleted alone; the material goes
// only with the last key of the set. Run with material as token objects,
// where there is something on the token to destroy.
func TestMultiRegionDeletion(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = keystore.TokenObjects })
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStateEnabled)
	enc, err := b.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("kept")})
	require.NoError(t, err)
	objects := e.mrkObjects(id)
	require.Positive(t, objects)

	sched, err := a.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	assert.Equal(t, types.KeyStatePendingReplicaDeletion, sched.KeyState)
	assert.Nil(t, sched.DeletionDate, "no date while replicas remain")
	m := describe(t, a, id)
	assert.Equal(t, types.KeyStatePendingReplicaDeletion, m.KeyState)
	assert.Nil(t, m.DeletionDate)
	assert.Equal(t, int32(7), *m.PendingDeletionWindowInDays)
	_, err = a.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	requireAPIError(t, err, "KMSInvalidStateException", "arn:aws:kms:"+region+":"+account+":key/"+id+" is pending replica deletion.")
	// Cancelled as a deletion is; scheduled again.
	_, err = a.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, types.KeyStateDisabled, describe(t, a, id).KeyState)
	_, err = a.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)

	e.clock.Advance(60 * day)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Zero(t, n, "a primary waiting for its replicas is never due")

	// The replica goes alone; the primary's waiting period begins then.
	_, err = b.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	e.clock.Advance(8 * day)
	n, err = e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	_, err = b.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	requireAPIError(t, err, "NotFoundException", "")
	assert.Equal(t, objects, e.mrkObjects(id), "the primary still names the material")
	m = describe(t, a, id)
	assert.Equal(t, types.KeyStatePendingDeletion, m.KeyState)
	require.NotNil(t, m.DeletionDate)
	assert.WithinDuration(t, e.clock.Now().Add(7*day), *m.DeletionDate, time.Second)
	assert.Empty(t, m.MultiRegionConfiguration.ReplicaKeys)
	// Cancelled now, the material is whole: the replica's ciphertext
	// decrypts.
	_, err = a.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &id})
	require.NoError(t, err)
	_, err = a.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &id})
	require.NoError(t, err)
	dec, err := a.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "kept", string(dec.Plaintext))

	// The last key of the set takes the material with it.
	_, err = a.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	e.clock.Advance(8 * day)
	n, err = e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Zero(t, e.mrkObjects(id))
}

// TestMultiRegionReplicaOutlivesPrimary: after the primary Region moves,
// the old primary (now a replica) is deleted and the new primary still
// decrypts what it made.
func TestMultiRegionReplicaOutlivesPrimary(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	enc, err := a.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("from the first Region")})
	require.NoError(t, err)
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStateEnabled)
	_, err = a.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(region2)})
	require.NoError(t, err)
	e.waitKeyState(a, id, types.KeyStateEnabled)
	e.waitKeyState(b, id, types.KeyStateEnabled)
	_, err = a.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	e.clock.Advance(8 * day)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	dec, err := b.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "from the first Region", string(dec.Plaintext))
}

// TestMultiRegionRestartInTheMiddle: a replica left Creating and a primary
// left moving by a stop are finished by the next start.
func TestMultiRegionRestartInTheMiddle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.admin()
	id := e.createMRK(a, "", "")
	e.replicate(a, id, region2)
	e.waitKeyState(e.client(principals[0], region2), id, types.KeyStateEnabled)
	enc, err := a.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)

	e.svc.PauseTransitions(true)
	e.replicate(a, id, "ap-south-1")
	_, err = a.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(region2)})
	require.NoError(t, err)
	e.restart()
	assert.Equal(t, []string{account + " " + id}, e.report.FinishedTransitions)
	a, b, c := e.admin(), e.client(principals[0], region2), e.client(principals[0], "ap-south-1")
	assert.Equal(t, types.KeyStateEnabled, describe(t, c, id).KeyState)
	assert.Equal(t, types.KeyStateEnabled, describe(t, a, id).KeyState)
	assert.Equal(t, types.MultiRegionKeyTypePrimary, describe(t, b, id).MultiRegionConfiguration.MultiRegionKeyType)
	for _, cl := range []*awskms.Client{a, b, c} {
		cfg := describe(t, cl, id).MultiRegionConfiguration
		assert.Equal(t, region2, *cfg.PrimaryKey.Region)
		assert.Len(t, cfg.ReplicaKeys, 2)
		_, err := cl.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		require.NoError(t, err)
	}
}

// TestMultiRegionDomainKeyRotation: material held wrapped is the set's:
// rewrapping it under a new domain key rewraps it for every key of the
// set at once, after which the old domain key is destroyed and both
// Regions still decrypt.
func TestMultiRegionDomainKeyRotation(t *testing.T) {
	t.Parallel()
	e := wrappedEnv(t, nil)
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStateEnabled)
	enc, err := a.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)
	before, err := e.svc.DomainKeys(bg())
	require.NoError(t, err)
	require.Len(t, before, 1)
	next, err := e.svc.RotateDomainKey(bg(), "")
	require.NoError(t, err)
	pass, err := e.svc.RewrapDomainKeys(bg())
	require.NoError(t, err)
	assert.Equal(t, 1, pass.Rewrapped, "one material version, rewrapped once for the set")
	assert.Equal(t, []string{before[0].ID}, pass.Destroyed)
	for _, c := range []*awskms.Client{a, b} {
		_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		require.NoError(t, err)
	}
	e.restart()
	for _, c := range []*awskms.Client{e.admin(), e.client(principals[0], region2)} {
		_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		require.NoError(t, err)
	}
	after, err := e.svc.DomainKeys(bg())
	require.NoError(t, err)
	require.Len(t, after, 1)
	assert.Equal(t, next, after[0].ID)
}

// TestMultiRegionStrayTransitionFinishedByReap: a move recorded by another
// node that died (written here straight to the database) is finished by
// the next pass of the deletion job.
func TestMultiRegionStrayTransitionFinishedByReap(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.admin(), e.client(principals[0], region2)
	id := e.createMRK(a, "", "")
	e.replicate(a, id, region2)
	e.waitKeyState(b, id, types.KeyStateEnabled)
	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(t, err)
	_, err = db.UpdateKeySet(bg(), account, id, func(keys []*store.Key) (store.SetChange, error) {
		for _, k := range keys {
			k.NewPrimaryRegion = region2
		}
		return store.SetChange{}, nil
	})
	require.NoError(t, err)
	require.NoError(t, db.Close())
	_, err = e.svc.Reap(bg())
	require.NoError(t, err)
	m := describe(t, b, id)
	assert.Equal(t, types.KeyStateEnabled, m.KeyState)
	assert.Equal(t, types.MultiRegionKeyTypePrimary, m.MultiRegionConfiguration.MultiRegionKeyType)
}
