package kms_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func arn(id string) string { return "arn:aws:kms:" + region + ":" + account + ":key/" + id }

func TestCreateAndDescribeKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{
		Description: aws.String("first key"),
		Tags:        []types.Tag{{TagKey: aws.String("team"), TagValue: aws.String("crypto")}},
	})
	require.NoError(t, err)
	m := out.KeyMetadata
	assert.Equal(t, account, *m.AWSAccountId)
	assert.Equal(t, arn(*m.KeyId), *m.Arn)
	assert.Equal(t, "first key", *m.Description)
	assert.True(t, m.Enabled)
	assert.Equal(t, types.KeyStateEnabled, m.KeyState)
	assert.Equal(t, types.KeySpecSymmetricDefault, m.KeySpec)
	assert.Equal(t, types.KeyUsageTypeEncryptDecrypt, m.KeyUsage)
	assert.Equal(t, types.OriginTypeAwsKms, m.Origin)
	assert.Equal(t, types.KeyManagerTypeCustomer, m.KeyManager)
	assert.Equal(t, []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecSymmetricDefault}, m.EncryptionAlgorithms)
	assert.Len(t, *m.CurrentKeyMaterialId, 64)
	assert.WithinDuration(t, e.clock.Now(), *m.CreationDate, 2*time.Second)

	_, err = c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/first"), TargetKeyId: m.KeyId})
	require.NoError(t, err)
	for _, id := range []string{*m.KeyId, *m.Arn, "alias/first", "arn:aws:kms:" + region + ":" + account + ":alias/first"} {
		d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		require.NoError(t, err, id)
		assert.Equal(t, *m.KeyId, *d.KeyMetadata.KeyId, id)
	}

	tags, err := c.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: m.KeyId})
	require.NoError(t, err)
	require.Len(t, tags.Tags, 1)
	assert.Equal(t, "crypto", *tags.Tags[0].TagValue)
}

func TestKeyIDErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	missing := "1234abcd-12ab-34cd-56ef-1234567890ab"
	cases := []struct{ id, code, msg string }{
		{"foo", "NotFoundException", "Invalid keyId 'foo'"},
		{missing, "NotFoundException", "Key '" + arn(missing) + "' does not exist"},
		{"alias/none", "NotFoundException", "Alias arn:aws:kms:" + region + ":" + account + ":alias/none is not found."},
	}
	for _, tc := range cases {
		t.Run(tc.id, func(t *testing.T) {
			_, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(tc.id)})
			requireAPIError(t, err, tc.code, tc.msg)
		})
	}
}

func TestCreateKeyUnsupportedInputs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecSm2, KeyUsage: types.KeyUsageTypeSignVerify})
	requireAPIError(t, err, "UnsupportedOperationException", "SM2 keys are not supported by hsmkms: PKCS#11 2.40 defines no SM2 mechanism.")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecMlDsa65, KeyUsage: types.KeyUsageTypeSignVerify})
	requireAPIError(t, err, "UnsupportedOperationException", "ML-DSA keys are not supported by hsmkms: PKCS#11 2.40 defines no ML-DSA mechanism.")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{MultiRegion: aws.Bool(true), CustomKeyStoreId: aws.String("cks-1234567890abcdef0"), Origin: types.OriginTypeAwsCloudhsm})
	requireAPIError(t, err, "UnsupportedOperationException", "You cannot create a multi-Region key in a custom key store.")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: aws.String("cks-1234567890abcdef0"), Origin: types.OriginTypeExternal})
	requireAPIError(t, err, "UnsupportedOperationException", "")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: aws.String("cks-1234567890abcdef0"), Origin: types.OriginTypeAwsCloudhsm})
	requireAPIError(t, err, "CustomKeyStoreNotFoundException", "")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{Tags: []types.Tag{{TagKey: aws.String("aws:x"), TagValue: aws.String("y")}}})
	requireAPIError(t, err, "TagException", "")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{Policy: aws.String("not json")})
	requireAPIError(t, err, "MalformedPolicyDocumentException", "")
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/app"), TargetKeyId: &id})
	require.NoError(t, err)
	ec := map[string]string{"purpose": "test", "tenant": "a"}
	plain := bytes.Repeat([]byte("x"), 4096)

	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String("alias/app"), Plaintext: plain, EncryptionContext: ec})
	require.NoError(t, err)
	assert.Equal(t, arn(id), *enc.KeyId)
	assert.Equal(t, types.EncryptionAlgorithmSpecSymmetricDefault, enc.EncryptionAlgorithm)

	// Without KeyId the blob names its key; the context must match exactly,
	// in any order.
	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"tenant": "a", "purpose": "test"}})
	require.NoError(t, err)
	assert.Equal(t, plain, dec.Plaintext)
	assert.Equal(t, arn(id), *dec.KeyId)

	for name, bad := range map[string]map[string]string{
		"missing": nil, "changed": {"purpose": "test", "tenant": "b"}, "extra": {"purpose": "test", "tenant": "a", "x": "y"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: bad})
			requireAPIError(t, err, "InvalidCiphertextException", "")
		})
	}
	tampered := bytes.Clone(enc.CiphertextBlob)
	tampered[len(tampered)-20] ^= 1
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: tampered, EncryptionContext: ec})
	requireAPIError(t, err, "InvalidCiphertextException", "")
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: []byte("garbage that is not a blob at all, not even close......................")})
	requireAPIError(t, err, "InvalidCiphertextException", "")

	// KeyId given: the right key works, another key is IncorrectKeyException.
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec, KeyId: &id})
	require.NoError(t, err)
	other := e.createKey(c)
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec, KeyId: &other})
	requireAPIError(t, err, "IncorrectKeyException", "")
}

func TestReEncryptAndDataKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	a, b := e.createKey(c), e.createKey(c)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &a, Plaintext: []byte("secret"), EncryptionContext: map[string]string{"k": "v"}})
	require.NoError(t, err)
	re, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{
		CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: map[string]string{"k": "v"},
		DestinationKeyId: &b, DestinationEncryptionContext: map[string]string{"k2": "v2"},
	})
	require.NoError(t, err)
	assert.Equal(t, arn(a), *re.SourceKeyId)
	assert.Equal(t, arn(b), *re.KeyId)
	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: re.CiphertextBlob, EncryptionContext: map[string]string{"k2": "v2"}})
	require.NoError(t, err)
	assert.Equal(t, []byte("secret"), dec.Plaintext)
	assert.Equal(t, arn(b), *dec.KeyId)

	for _, tc := range []struct {
		in   awskms.GenerateDataKeyInput
		size int
	}{
		{awskms.GenerateDataKeyInput{KeySpec: types.DataKeySpecAes256}, 32},
		{awskms.GenerateDataKeyInput{KeySpec: types.DataKeySpecAes128}, 16},
		{awskms.GenerateDataKeyInput{NumberOfBytes: aws.Int32(7)}, 7},
	} {
		in := tc.in
		in.KeyId = &a
		dk, err := c.GenerateDataKey(bg(), &in)
		require.NoError(t, err)
		require.Len(t, dk.Plaintext, tc.size)
		dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: dk.CiphertextBlob})
		require.NoError(t, err)
		assert.Equal(t, dk.Plaintext, dec.Plaintext)
	}
	wo, err := c.GenerateDataKeyWithoutPlaintext(bg(), &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: &a, KeySpec: types.DataKeySpecAes256})
	require.NoError(t, err)
	dec, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: wo.CiphertextBlob})
	require.NoError(t, err)
	assert.Len(t, dec.Plaintext, 32)

	_, err = c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &a, KeySpec: types.DataKeySpecAes256, NumberOfBytes: aws.Int32(32)})
	requireAPIError(t, err, "ValidationException", "")
	_, err = c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &a})
	requireAPIError(t, err, "ValidationException", "")
}

func TestGenerateRandom(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	out, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(1024)})
	require.NoError(t, err)
	assert.Len(t, out.Plaintext, 1024)
	_, err = c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(1025)})
	requireAPIError(t, err, "ValidationException", "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024")
}

func TestKeyStateRules(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)

	_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	require.NoError(t, err)
	d, _ := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	assert.Equal(t, types.KeyStateDisabled, d.KeyMetadata.KeyState)
	assert.False(t, d.KeyMetadata.Enabled)
	disabled := arn(id) + " is disabled."
	_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	requireAPIError(t, err, "DisabledException", disabled)
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	requireAPIError(t, err, "DisabledException", disabled)
	_, err = c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &id, KeySpec: types.DataKeySpecAes256})
	requireAPIError(t, err, "DisabledException", disabled)

	del, err := c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	assert.Equal(t, types.KeyStatePendingDeletion, del.KeyState)
	assert.Equal(t, int32(7), *del.PendingWindowInDays)
	assert.WithinDuration(t, e.clock.Now().Add(7*24*time.Hour), *del.DeletionDate, 2*time.Second)

	pending := arn(id) + " is pending deletion."
	_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	requireAPIError(t, err, "KMSInvalidStateException", pending)
	_, err = c.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &id})
	requireAPIError(t, err, "KMSInvalidStateException", pending)
	_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	requireAPIError(t, err, "KMSInvalidStateException", pending)
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id})
	requireAPIError(t, err, "KMSInvalidStateException", pending)
	_, err = c.UpdateKeyDescription(bg(), &awskms.UpdateKeyDescriptionInput{KeyId: &id, Description: aws.String("x")})
	requireAPIError(t, err, "KMSInvalidStateException", pending)
	// Reads still work.
	_, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	require.NoError(t, err)
	_, err = c.GetKeyPolicy(bg(), &awskms.GetKeyPolicyInput{KeyId: &id})
	require.NoError(t, err)

	_, err = c.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &id})
	require.NoError(t, err)
	d, _ = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	assert.Equal(t, types.KeyStateDisabled, d.KeyMetadata.KeyState)
	assert.Nil(t, d.KeyMetadata.DeletionDate)
	_, err = c.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &id})
	requireAPIError(t, err, "KMSInvalidStateException", "")

	_, err = c.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &id})
	require.NoError(t, err)
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)

	for _, days := range []int32{6, 31} {
		_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(days)})
		requireAPIError(t, err, "ValidationException", "")
	}
}

func TestDeletionReaper(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	keep := e.createKey(c)
	_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/doomed"), TargetKeyId: &id})
	require.NoError(t, err)
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)

	e.clock.Advance(6 * 24 * time.Hour)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Equal(t, 0, n, "not due yet")

	// The schedule survives a restart.
	e.restart()
	c = e.admin()
	e.clock.Advance(24*time.Hour + time.Second)
	t.Run("a key whose waiting period has ended cannot be cancelled", func(t *testing.T) {
		// The reaper may be destroying it: a cancel must not answer for it.
		_, err := c.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &id})
		requireAPIError(t, err, "KMSInvalidStateException", arn(id)+" is pending deletion and its waiting period has ended: it is being deleted.")
	})
	n, err = e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Equal(t, 0, n, "reaped a minute after the deletion date, once no cancel can be under way")
	e.clock.Advance(time.Minute)
	n, err = e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Equal(t, 1, n)

	_, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	requireAPIError(t, err, "NotFoundException", "")
	aliases, err := c.ListAliases(bg(), &awskms.ListAliasesInput{})
	require.NoError(t, err)
	assert.Empty(t, aliases.Aliases, "the alias went with the key")
	_, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &keep})
	require.NoError(t, err)

	// The token object is gone too.
	rep, err := e.svc.Reconcile(bg())
	require.NoError(t, err)
	assert.Empty(t, rep.OrphanObjects)
	assert.Empty(t, rep.MissingMaterial)
}

func TestAliases(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	a, b := e.createKey(c), e.createKey(c)
	_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/x"), TargetKeyId: &a})
	require.NoError(t, err)
	_, err = c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/x"), TargetKeyId: &b})
	requireAPIError(t, err, "AlreadyExistsException", "")
	_, err = c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/aws/x"), TargetKeyId: &b})
	require.Error(t, err)
	_, err = c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/y"), TargetKeyId: aws.String("alias/x")})
	requireAPIError(t, err, "NotFoundException", "")

	_, err = c.UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: aws.String("alias/x"), TargetKeyId: &b})
	require.NoError(t, err)
	d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String("alias/x")})
	require.NoError(t, err)
	assert.Equal(t, b, *d.KeyMetadata.KeyId)
	_, err = c.UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: aws.String("alias/none"), TargetKeyId: &b})
	requireAPIError(t, err, "NotFoundException", "")

	for i := range 3 {
		_, err = c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String(fmt.Sprintf("alias/p%d", i)), TargetKeyId: &a})
		require.NoError(t, err)
	}
	var names []string
	var marker *string
	for {
		page, err := c.ListAliases(bg(), &awskms.ListAliasesInput{Limit: aws.Int32(2), Marker: marker})
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Aliases), 2)
		for _, al := range page.Aliases {
			names = append(names, *al.AliasName)
			assert.Equal(t, "arn:aws:kms:"+region+":"+account+":"+*al.AliasName, *al.AliasArn)
		}
		if !page.Truncated {
			break
		}
		marker = page.NextMarker
	}
	assert.ElementsMatch(t, []string{"alias/x", "alias/p0", "alias/p1", "alias/p2"}, names)

	byKey, err := c.ListAliases(bg(), &awskms.ListAliasesInput{KeyId: &a})
	require.NoError(t, err)
	assert.Len(t, byKey.Aliases, 3)

	_, err = c.DeleteAlias(bg(), &awskms.DeleteAliasInput{AliasName: aws.String("alias/x")})
	require.NoError(t, err)
	_, err = c.DeleteAlias(bg(), &awskms.DeleteAliasInput{AliasName: aws.String("alias/x")})
	requireAPIError(t, err, "NotFoundException", "")
	_, err = c.ListAliases(bg(), &awskms.ListAliasesInput{Marker: aws.String("bogus!")})
	requireAPIError(t, err, "InvalidMarkerException", "")
}

func TestTags(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	_, err := c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: []types.Tag{
		{TagKey: aws.String("a"), TagValue: aws.String("1")}, {TagKey: aws.String("b"), TagValue: aws.String("2")},
	}})
	require.NoError(t, err)
	_, err = c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: []types.Tag{{TagKey: aws.String("a"), TagValue: aws.String("3")}}})
	require.NoError(t, err)
	_, err = c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: []types.Tag{{TagKey: aws.String("aws:reserved"), TagValue: aws.String("3")}}})
	requireAPIError(t, err, "TagException", "")
	out, err := c.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: &id, Limit: aws.Int32(1)})
	require.NoError(t, err)
	require.Len(t, out.Tags, 1)
	assert.True(t, out.Truncated)
	assert.Equal(t, "a", *out.Tags[0].TagKey)
	assert.Equal(t, "3", *out.Tags[0].TagValue)
	_, err = c.UntagResource(bg(), &awskms.UntagResourceInput{KeyId: &id, TagKeys: []string{"a"}})
	require.NoError(t, err)
	out, err = c.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: &id})
	require.NoError(t, err)
	require.Len(t, out.Tags, 1)
	assert.Equal(t, "b", *out.Tags[0].TagKey)

	many := make([]types.Tag, 50)
	for i := range many {
		many[i] = types.Tag{TagKey: aws.String(fmt.Sprintf("k%02d", i)), TagValue: aws.String("v")}
	}
	_, err = c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: many})
	requireAPIError(t, err, "TagException", "Too many tags")
}

func TestListKeysPaginates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	want := map[string]bool{}
	for range 5 {
		want[e.createKey(c)] = true
	}
	got := map[string]bool{}
	var marker *string
	for {
		page, err := c.ListKeys(bg(), &awskms.ListKeysInput{Limit: aws.Int32(2), Marker: marker})
		require.NoError(t, err)
		for _, k := range page.Keys {
			got[*k.KeyId] = true
			assert.Equal(t, arn(*k.KeyId), *k.KeyArn)
		}
		if !page.Truncated {
			assert.Nil(t, page.NextMarker)
			break
		}
		marker = page.NextMarker
	}
	assert.Equal(t, want, got)
}

func TestPoliciesAndRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	p, err := c.GetKeyPolicy(bg(), &awskms.GetKeyPolicyInput{KeyId: &id, PolicyName: aws.String("default")})
	require.NoError(t, err)
	assert.Contains(t, *p.Policy, `"AWS" : "arn:aws:iam::`+account+`:root"`)
	doc := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}`
	_, err = c.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, PolicyName: aws.String("default"), Policy: &doc})
	require.NoError(t, err)
	p, err = c.GetKeyPolicy(bg(), &awskms.GetKeyPolicyInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, doc, *p.Policy, "byte for byte")
	_, err = c.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: aws.String("{not json")})
	requireAPIError(t, err, "MalformedPolicyDocumentException", "")
	names, err := c.ListKeyPolicies(bg(), &awskms.ListKeyPoliciesInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, []string{"default"}, names.PolicyNames)

	st, err := c.GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &id})
	require.NoError(t, err)
	assert.False(t, st.KeyRotationEnabled)
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
	require.NoError(t, err)
	st, err = c.GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &id})
	require.NoError(t, err)
	assert.True(t, st.KeyRotationEnabled)
	assert.Equal(t, int32(90), *st.RotationPeriodInDays)
	assert.WithinDuration(t, e.clock.Now().Add(90*24*time.Hour), *st.NextRotationDate, 2*time.Second)
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(89)})
	requireAPIError(t, err, "ValidationException", "")
	_, err = c.DisableKeyRotation(bg(), &awskms.DisableKeyRotationInput{KeyId: &id})
	require.NoError(t, err)
	st, err = c.GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &id})
	require.NoError(t, err)
	assert.False(t, st.KeyRotationEnabled)
}

func TestIsolationByAccountAndRegion(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id := e.createKey(e.admin())
	enc, err := e.admin().Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)

	for name, tc := range map[string]struct {
		c *awskms.Client
		// byARN is the answer to the key's ARN: another region has no
		// such key; another account may not see it (access_test.go has
		// the key policies that let it).
		byARN string
	}{
		"other region":  {e.client(principals[0], "eu-west-1"), "NotFoundException"},
		"other account": {e.client(principals[1], region), "AccessDeniedException"},
	} {
		c := tc.c
		t.Run(name, func(t *testing.T) {
			_, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
			requireAPIError(t, err, "NotFoundException", "")
			_, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(arn(id))})
			requireAPIError(t, err, tc.byARN, "")
			_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
			require.Error(t, err)
			keys, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
			require.NoError(t, err)
			assert.Empty(t, keys.Keys)
		})
	}
}

func TestRestartPersistence(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/kept"), TargetKeyId: &id})
	require.NoError(t, err)
	_, err = c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: []types.Tag{{TagKey: aws.String("t"), TagValue: aws.String("v")}}})
	require.NoError(t, err)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String("alias/kept"), Plaintext: []byte("durable")})
	require.NoError(t, err)

	e.restart()
	c = e.admin()
	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, []byte("durable"), dec.Plaintext)
	d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String("alias/kept")})
	require.NoError(t, err)
	assert.Equal(t, id, *d.KeyMetadata.KeyId)
	tags, err := c.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: &id})
	require.NoError(t, err)
	require.Len(t, tags.Tags, 1)
}

// Operations not implemented yet are authorized on the key they name
// like the real call, and then answer UnsupportedOperationException: the
// import operations with AWS's answer for a key that is not EXTERNAL
// (hsmkms has no other), the rest saying hsmkms lacks them.
func TestUnsupportedOperations(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	wrongOrigin := arn(id) + " origin is AWS_KMS which is not valid for this operation."
	want := map[string]string{"GetParametersForImport": wrongOrigin, "ImportKeyMaterial": wrongOrigin, "DeleteImportedKeyMaterial": wrongOrigin}
	for op, call := range map[string]func() error{
		"GetParametersForImport": func() error {
			_, err := c.GetParametersForImport(bg(), &awskms.GetParametersForImportInput{KeyId: &id,
				WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
			return err
		},
		"ImportKeyMaterial": func() error {
			_, err := c.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: &id, EncryptedKeyMaterial: []byte("x"), ImportToken: []byte("x")})
			return err
		},
		"DeleteImportedKeyMaterial": func() error {
			_, err := c.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: &id})
			return err
		},
	} {
		t.Run(op, func(t *testing.T) {
			msg, ok := want[op]
			if !ok {
				msg = op + " is not supported by hsmkms."
			}
			requireAPIError(t, call(), "UnsupportedOperationException", msg)
		})
	}
	_, err := c.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: aws.String("alias/none"), ReplicaRegion: aws.String("us-east-2")})
	requireAPIError(t, err, "NotFoundException", "")
}

func TestAuthFailures(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bad := principals[0]
	bad.Secret = "wrong"
	_, err := e.client(bad, region).ListKeys(bg(), &awskms.ListKeysInput{})
	requireAPIError(t, err, "InvalidSignatureException", "")
	unknown := principals[0]
	unknown.AccessKeyID = "AKIAUNKNOWN000000000"
	_, err = e.client(unknown, region).ListKeys(bg(), &awskms.ListKeysInput{})
	requireAPIError(t, err, "UnrecognizedClientException", "")
}

var _ = strings.Contains
