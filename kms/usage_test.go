package kms_test

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go/middleware"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// usedWith is one call of a tracked operation: what key it needs and the
// call, which returns the response's metadata.
type usedWith struct {
	spec  types.KeySpec
	usage types.KeyUsageType
	call  func(t *testing.T, c *awskms.Client, key string) middleware.Metadata
}

// trackedOperations are AWS's tracked operations (the model's
// KeyLastUsageTrackingOperation), each called once; ReEncrypt has its own
// test for its two keys.
func trackedOperations() map[string]usedWith {
	sym := func(call func(t *testing.T, c *awskms.Client, key string) middleware.Metadata) usedWith {
		return usedWith{types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt, call}
	}
	ecc := func(call func(t *testing.T, c *awskms.Client, key string) middleware.Metadata) usedWith {
		return usedWith{types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify, call}
	}
	mac := func(call func(t *testing.T, c *awskms.Client, key string) middleware.Metadata) usedWith {
		return usedWith{types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac, call}
	}
	return map[string]usedWith{
		"Encrypt": sym(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			out, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("x")})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"Decrypt": sym(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			blob := encryptUnder(t, c, key)
			// The Encrypt just before must not mask the Decrypt: the
			// last use is by time, and both land in the same second.
			out, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: blob})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"GenerateDataKey": sym(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			out, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &key, NumberOfBytes: aws.Int32(16)})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"GenerateDataKeyWithoutPlaintext": sym(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			out, err := c.GenerateDataKeyWithoutPlaintext(bg(), &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: &key, KeySpec: types.DataKeySpecAes128})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"GenerateDataKeyPair": sym(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			out, err := c.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: &key, KeyPairSpec: types.DataKeyPairSpecEccNistP256})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"GenerateDataKeyPairWithoutPlaintext": sym(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			out, err := c.GenerateDataKeyPairWithoutPlaintext(bg(), &awskms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: &key, KeyPairSpec: types.DataKeyPairSpecEccNistP256})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"Sign": ecc(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			out, err := c.Sign(bg(), &awskms.SignInput{KeyId: &key, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"Verify": ecc(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			out, err := c.Verify(bg(), &awskms.VerifyInput{KeyId: &key, Message: []byte("m"), Signature: []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01},
				SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			// A signature that does not verify is an answer, not a
			// successful use.
			requireAPIError(t, err, "KMSInvalidSignatureException", "")
			sig, err := c.Sign(bg(), &awskms.SignInput{KeyId: &key, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			require.NoError(t, err)
			ok, err := c.Verify(bg(), &awskms.VerifyInput{KeyId: &key, Message: []byte("m"), Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			require.NoError(t, err)
			_ = out
			return ok.ResultMetadata
		}),
		"GenerateMac": mac(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			out, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &key, Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"VerifyMac": mac(func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			m, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &key, Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			require.NoError(t, err)
			out, err := c.VerifyMac(bg(), &awskms.VerifyMacInput{KeyId: &key, Message: []byte("m"), Mac: m.Mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			require.NoError(t, err)
			return out.ResultMetadata
		}),
		"DeriveSharedSecret": {types.KeySpecEccNistP256, types.KeyUsageTypeKeyAgreement, func(t *testing.T, c *awskms.Client, key string) middleware.Metadata {
			peer, err := ecdh.P256().GenerateKey(rand.Reader)
			require.NoError(t, err)
			der, err := x509.MarshalPKIXPublicKey(peer.PublicKey())
			require.NoError(t, err)
			out, err := c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &key, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: der})
			require.NoError(t, err)
			return out.ResultMetadata
		}},
	}
}

func encryptUnder(t *testing.T, c *awskms.Client, key string) []byte {
	out, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("x")})
	require.NoError(t, err)
	return out.CiphertextBlob
}

// lastUsage asserts GetKeyLastUsage reports op by request id, and, with a
// trail, the eventID of that request's record.
func lastUsage(t *testing.T, e *env, dir, key, op, requestID string) *awskms.GetKeyLastUsageOutput {
	t.Helper()
	out, err := e.admin().GetKeyLastUsage(bg(), &awskms.GetKeyLastUsageInput{KeyId: &key})
	require.NoError(t, err)
	require.NotNil(t, out.KeyLastUsage, "%s", op)
	assert.Equal(t, types.KeyLastUsageTrackingOperation(op), out.KeyLastUsage.Operation)
	assert.Equal(t, requestID, aws.ToString(out.KeyLastUsage.KmsRequestId))
	if dir != "" {
		r := record(t, dir, requestID, "AwsApiCall")
		assert.Equal(t, r["eventID"], aws.ToString(out.KeyLastUsage.CloudTrailEventId), "the CloudTrail eventId of the call")
		when, err := time.Parse(time.RFC3339, r["eventTime"].(string))
		require.NoError(t, err)
		assert.True(t, when.Equal(*out.KeyLastUsage.Timestamp), "%v, %v", when, *out.KeyLastUsage.Timestamp)
	}
	return out
}

func TestGetKeyLastUsageForEachTrackedOperation(t *testing.T) {
	t.Parallel()
	e, dir := newAuditedEnv(t, nil)
	c := e.admin()
	ops := trackedOperations()
	last := map[string]string{} // key → the request that used it last
	keys := map[string]string{}
	for op, u := range ops {
		t.Run(op, func(t *testing.T) {
			k, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: u.spec, KeyUsage: u.usage})
			require.NoError(t, err)
			key := *k.KeyMetadata.KeyId
			fresh, err := c.GetKeyLastUsage(bg(), &awskms.GetKeyLastUsageInput{KeyId: &key})
			require.NoError(t, err)
			assert.Nil(t, fresh.KeyLastUsage, "not used since it was made")
			assert.Equal(t, key, aws.ToString(fresh.KeyId))
			assert.True(t, fresh.KeyCreationDate.Equal(*k.KeyMetadata.CreationDate))
			assert.True(t, fresh.TrackingStartDate.Equal(*k.KeyMetadata.CreationDate), "made after tracking began: tracked since it was made")

			// A read that is not a use does not count.
			_, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &key})
			require.NoError(t, err)
			id := requestIDOf(u.call(t, c, key))
			lastUsage(t, e, dir, *k.KeyMetadata.Arn, op, id)
			last[key], keys[key] = id, op
		})
	}

	e.restart() // a clean stop writes everything
	for key, id := range last {
		lastUsage(t, e, dir, key, keys[key], id)
	}
}

func TestGetKeyLastUsageOfReEncryptNamesBothKeys(t *testing.T) {
	t.Parallel()
	e, dir := newAuditedEnv(t, nil)
	c := e.admin()
	src, dst := e.createKey(c), e.createKey(c)
	blob := encryptUnder(t, c, src)
	out, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: blob, DestinationKeyId: &dst})
	require.NoError(t, err)
	id := requestIDOf(out.ResultMetadata)
	lastUsage(t, e, dir, src, "ReEncrypt", id)
	lastUsage(t, e, dir, dst, "ReEncrypt", id)

	// A failed call is not a use.
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{"wrong": "context"}})
	requireAPIError(t, err, "InvalidCiphertextException", "")
	lastUsage(t, e, dir, src, "ReEncrypt", id)
}

func TestGetKeyLastUsageTakesKeyIDsOrARNsOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t) // no trail: usage is still tracked, and still survives a restart
	c := e.admin()
	k, err := c.CreateKey(bg(), &awskms.CreateKeyInput{})
	require.NoError(t, err)
	key, arn := *k.KeyMetadata.KeyId, *k.KeyMetadata.Arn
	_, err = c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/used"), TargetKeyId: &key})
	require.NoError(t, err)
	for _, alias := range []string{"alias/used", "arn:aws:kms:" + region + ":" + account + ":alias/used"} {
		_, err = c.GetKeyLastUsage(bg(), &awskms.GetKeyLastUsageInput{KeyId: aws.String(alias)})
		requireAPIError(t, err, "NotFoundException", "Invalid keyId '"+alias+"'")
	}
	_, err = e.client(principals[1], region).GetKeyLastUsage(bg(), &awskms.GetKeyLastUsageInput{KeyId: &arn})
	requireAPIError(t, err, "NotFoundException", "")
	_, err = e.client(nobody, region).GetKeyLastUsage(bg(), &awskms.GetKeyLastUsageInput{KeyId: &arn})
	require.Error(t, err)

	out, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String("alias/used"), Plaintext: []byte("x")})
	require.NoError(t, err)
	id := requestIDOf(out.ResultMetadata)
	got := lastUsage(t, e, "", arn, "Encrypt", id)
	assert.Regexp(t, uuidRe, aws.ToString(got.KeyLastUsage.CloudTrailEventId))
	e.restart()
	again := lastUsage(t, e, "", key, "Encrypt", id)
	assert.Equal(t, got.KeyLastUsage.CloudTrailEventId, again.KeyLastUsage.CloudTrailEventId)
}

// TestKeyUsageIsWrittenInBatches: calls change no row of the store; the
// flusher writes a key's last use once per interval.
func TestKeyUsageIsWrittenInBatches(t *testing.T) {
	t.Parallel()
	e, _ := newAuditedEnv(t, func(e *env) { e.usageFlush = time.Hour })
	c := e.admin()
	key := e.createKey(c)
	var id string
	for range 20 {
		out, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("x")})
		require.NoError(t, err)
		id = requestIDOf(out.ResultMetadata)
	}
	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(t, err)
	defer db.Close()
	_, err = db.KeyUsage(bg(), account, region, key)
	require.ErrorIs(t, err, store.ErrNotFound, "twenty uses, no write yet")
	lastUsage(t, e, "", key, "Encrypt", id) // from memory
	require.Equal(t, 1, e.svc.HeldUsage())
	require.NoError(t, e.svc.FlushUsage())
	u, err := db.KeyUsage(bg(), account, region, key)
	require.NoError(t, err)
	assert.Equal(t, id, u.RequestID)
	assert.Zero(t, e.svc.HeldUsage(), "written, so no longer held: memory is bounded by one interval's keys")
	lastUsage(t, e, "", key, "Encrypt", id) // from the store
}
