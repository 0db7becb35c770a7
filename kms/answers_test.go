package kms_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"
)

// TestAWSAnswers holds the answers recorded against AWS KMS that hsmkms
// once gave differently (issue 11), each with AWS's exact exception and
// message, through the SDK (and the raw wire where the SDK refuses to send
// the request or cannot show what is missing), and the same rule applied
// to its neighbours. README's "Answers as AWS gives them" lists the
// sources and the rules.
func TestAWSAnswers(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	sym := e.createKey(c)
	tags := func(keys ...string) []types.Tag {
		out := make([]types.Tag, len(keys))
		for i, k := range keys {
			out[i] = types.Tag{TagKey: aws.String(k), TagValue: aws.String("v")}
		}
		return out
	}
	numbered := func(n int) []types.Tag {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%02d", i)
		}
		return tags(keys...)
	}
	keyCount := func(t *testing.T) int {
		out, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
		require.NoError(t, err)
		return len(out.Keys)
	}

	// Requests AWS rejects.
	t.Run("TagResource duplicate tag keys", func(t *testing.T) {
		_, err := c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &sym, Tags: tags("a", "b", "a")})
		requireAPIError(t, err, "TagException", "Duplicate tag keys")
		out, err := c.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: &sym})
		require.NoError(t, err)
		require.Empty(t, out.Tags, "nothing is written")
		before := keyCount(t)
		_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{Tags: tags("a", "a")})
		requireAPIError(t, err, "TagException", "Duplicate tag keys")
		require.Equal(t, before, keyCount(t))
	})
	t.Run("CreateKey 51 tags", func(t *testing.T) {
		before := keyCount(t)
		_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{Tags: numbered(51)})
		requireAPIError(t, err, "TagException", "Too many tags")
		require.Equal(t, before, keyCount(t), "no key is made")
		out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{Tags: numbered(50)})
		require.NoError(t, err, "50 is the limit, not past it")
		_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: out.KeyMetadata.KeyId, PendingWindowInDays: aws.Int32(7)})
		require.NoError(t, err)
	})
	t.Run("TagResource past 50 tags", func(t *testing.T) {
		id := e.createKey(c)
		_, err := c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: numbered(51)})
		requireAPIError(t, err, "TagException", "Too many tags")
		_, err = c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: numbered(50)})
		require.NoError(t, err)
		_, err = c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: tags("one-more")})
		requireAPIError(t, err, "TagException", "Too many tags")
	})
	t.Run("null inside a list", func(t *testing.T) {
		before := keyCount(t)
		for _, tc := range []struct{ op, body string }{
			{"CreateKey", `{"Tags":[null]}`},
			{"CreateKey", `{"Tags":[{"TagKey":"a","TagValue":"b"},null]}`},
			{"TagResource", `{"KeyId":"` + sym + `","Tags":[null]}`},
			{"Encrypt", `{"KeyId":"` + sym + `","Plaintext":"aGk=","GrantTokens":[null]}`},
			// A null map value would be an encryption context of "".
			{"Encrypt", `{"KeyId":"` + sym + `","Plaintext":"aGk=","EncryptionContext":{"a":null}}`},
		} {
			status, body := e.rawFields(t, tc.op, tc.body)
			require.Equal(t, 400, status, tc.body)
			require.Equal(t, "SerializationException", body["__type"], tc.body)
		}
		require.Equal(t, before, keyCount(t), "no key is made")
	})

	// Wrong exception.
	t.Run("alias name without alias/", func(t *testing.T) {
		const msg = `Alias must start with the prefix "alias/". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html`
		_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("my-alias"), TargetKeyId: &sym})
		requireAPIError(t, err, "ValidationException", msg)
		_, err = c.UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: aws.String("my-alias"), TargetKeyId: &sym})
		requireAPIError(t, err, "ValidationException", msg)
		_, err = c.DeleteAlias(bg(), &awskms.DeleteAliasInput{AliasName: aws.String("my-alias")})
		requireAPIError(t, err, "ValidationException", msg)
	})
	t.Run("alias in the alias/aws/ namespace", func(t *testing.T) {
		_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/aws/ebs"), TargetKeyId: &sym})
		requireAPIErrorNoMessage(t, err, "NotAuthorizedException")
		_, err = c.UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: aws.String("alias/aws/ebs"), TargetKeyId: &sym})
		requireAPIErrorNoMessage(t, err, "NotAuthorizedException")
		_, err = c.DeleteAlias(bg(), &awskms.DeleteAliasInput{AliasName: aws.String("alias/aws/mine")})
		requireAPIErrorNoMessage(t, err, "NotAuthorizedException")
		e.rawNoMessage(t, "CreateAlias", `{"AliasName":"alias/aws/mine","TargetKeyId":"`+sym+`"}`, "NotAuthorizedException")
	})
	t.Run("decrypt with a key that cannot decrypt", func(t *testing.T) {
		const msg = "The key ID in the request does not identify a CMK that can perform this operation."
		hmac, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
		require.NoError(t, err)
		enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &sym, Plaintext: []byte("x")})
		require.NoError(t, err)
		_, err = c.Decrypt(bg(), &awskms.DecryptInput{KeyId: hmac.KeyMetadata.KeyId, CiphertextBlob: enc.CiphertextBlob})
		requireAPIError(t, err, "IncorrectKeyException", msg)
		_, err = c.ReEncrypt(bg(), &awskms.ReEncryptInput{SourceKeyId: hmac.KeyMetadata.KeyId, CiphertextBlob: enc.CiphertextBlob, DestinationKeyId: &sym})
		requireAPIError(t, err, "IncorrectKeyException", msg)
		// The encrypting side keeps InvalidKeyUsageException.
		_, err = c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, DestinationKeyId: hmac.KeyMetadata.KeyId})
		requireAPIError(t, err, "InvalidKeyUsageException", arn(*hmac.KeyMetadata.KeyId)+" key usage is GENERATE_VERIFY_MAC which is not valid for ReEncrypt.")
		// State comes before type: a disabled key is disabled, whatever it is.
		_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: hmac.KeyMetadata.KeyId})
		require.NoError(t, err)
		_, err = c.Decrypt(bg(), &awskms.DecryptInput{KeyId: hmac.KeyMetadata.KeyId, CiphertextBlob: enc.CiphertextBlob})
		requireAPIError(t, err, "DisabledException", arn(*hmac.KeyMetadata.KeyId)+" is disabled.")
	})
	// RSA_2048 here, for speed; TestRSAEncryption checks the same on every
	// RSA spec, RSA_4096 included.
	t.Run("RotateKeyOnDemand RSA", func(t *testing.T) {
		out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: types.KeyUsageTypeEncryptDecrypt})
		require.NoError(t, err)
		rsa := *out.KeyMetadata.KeyId
		// A spec that cannot rotate: UnsupportedOperationException, no message.
		_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &rsa})
		requireAPIErrorNoMessage(t, err, "UnsupportedOperationException")
		e.rawNoMessage(t, "RotateKeyOnDemand", `{"KeyId":"`+rsa+`"}`, "UnsupportedOperationException")
		// The key state is checked first.
		_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &rsa})
		require.NoError(t, err)
		_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &rsa})
		requireAPIError(t, err, "DisabledException", arn(rsa)+" is disabled.")
		_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &rsa})
		requireAPIError(t, err, "DisabledException", arn(rsa)+" is disabled.")
		_, err = c.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &rsa})
		require.NoError(t, err)

		// RSA Encrypt past the key's limit, in AWS's words.
		_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &rsa, Plaintext: make([]byte, 215), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
		requireAPIError(t, err, "ValidationException", "Algorithm RSAES_OAEP_SHA_1 and key spec RSA_2048 cannot encrypt data larger than 214 bytes.")
	})

	// Right exception, different message.
	t.Run("DescribeKey ARN of another Region", func(t *testing.T) {
		other := "arn:aws:kms:us-east-1:" + account + ":key/" + sym
		_, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &other})
		requireAPIError(t, err, "NotFoundException", "Invalid arn us-east-1")
		// Any KeyId, alias ARNs too, on any operation.
		_, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String("arn:aws:kms:eu-west-1:" + account + ":alias/any")})
		requireAPIError(t, err, "NotFoundException", "Invalid arn eu-west-1")
		_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &other, Plaintext: []byte("x")})
		requireAPIError(t, err, "NotFoundException", "Invalid arn us-east-1")
	})
	t.Run("DescribeKey unknown mrk- id", func(t *testing.T) {
		const mrk = "mrk-d3b95762d3b95762d3b95762d3b95762"
		_, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(mrk)})
		requireAPIError(t, err, "NotFoundException", "Key '"+arn(mrk)+"' does not exist")
		_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String(arn(mrk)), Plaintext: []byte("x")})
		requireAPIError(t, err, "NotFoundException", "Key '"+arn(mrk)+"' does not exist")
		// Ids of neither shape stay invalid, as AWS answers them.
		for _, bad := range []string{"mrk-fake-key-id", "134f2428cec14b25a1ae9048164dba47", "fake-key-id"} {
			_, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(bad)})
			requireAPIError(t, err, "NotFoundException", "Invalid keyId '"+bad+"'")
		}
	})
	t.Run("GenerateRandom without NumberOfBytes", func(t *testing.T) {
		_, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{})
		requireAPIError(t, err, "ValidationException", "NumberOfBytes is required.")
		// A fault of the request alone, before the key store is looked up.
		_, err = c.GenerateRandom(bg(), &awskms.GenerateRandomInput{CustomKeyStoreId: aws.String("cks-0123456789abcdef0")})
		requireAPIError(t, err, "ValidationException", "NumberOfBytes is required.")
	})
	t.Run("CreateKey without KeyUsage", func(t *testing.T) {
		before := keyCount(t)
		for _, spec := range []types.KeySpec{types.KeySpecHmac256, types.KeySpecRsa2048, types.KeySpecEccNistP256,
			types.KeySpecEccNistEdwards25519, types.KeySpecSm2, types.KeySpecMlDsa44} {
			_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: spec})
			requireAPIError(t, err, "ValidationException", "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.")
		}
		// The deprecated CustomerMasterKeySpec alike (sent raw: the SDK
		// marks the member deprecated).
		status, body := e.rawFields(t, "CreateKey", `{"CustomerMasterKeySpec":"ECC_NIST_P384"}`)
		require.Equal(t, 400, status)
		require.Equal(t, map[string]any{"__type": "ValidationException",
			"message": "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."}, body)
		require.Equal(t, before, keyCount(t))
	})
	t.Run("GetParametersForImport on an AWS_KMS key", func(t *testing.T) {
		_, err := c.GetParametersForImport(bg(), &awskms.GetParametersForImportInput{KeyId: &sym,
			WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa4096})
		requireAPIError(t, err, "UnsupportedOperationException", arn(sym)+" origin is AWS_KMS which is not valid for this operation.")
	})
	t.Run("DeriveSharedSecret invalid public key", func(t *testing.T) {
		out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeKeyAgreement})
		require.NoError(t, err)
		id := *out.KeyMetadata.KeyId
		_, err = c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &id, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh,
			PublicKey: []byte("InvalidPublicKey")})
		requireAPIErrorNoMessage(t, err, "ValidationException")
		e.rawNoMessage(t, "DeriveSharedSecret", `{"KeyId":"`+id+`","KeyAgreementAlgorithm":"ECDH","PublicKey":"SW52YWxpZFB1YmxpY0tleQ=="}`, "ValidationException")
	})
	t.Run("enum values in AWS's order", func(t *testing.T) {
		hmac, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
		require.NoError(t, err)
		_, err = c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: hmac.KeyMetadata.KeyId, Message: []byte("m"), MacAlgorithm: "INVALID"})
		requireAPIError(t, err, "ValidationException", "1 validation error detected: Value 'INVALID' at 'macAlgorithm' failed to satisfy constraint: "+
			"Member must satisfy enum value set: [HMAC_SHA_384, HMAC_SHA_256, HMAC_SHA_224, HMAC_SHA_512]")
	})
	t.Run("exceptions without a message", func(t *testing.T) {
		// AWS sends no message member with these, not an empty one.
		e.rawNoMessage(t, "Decrypt", `{"CiphertextBlob":"`+strings.Repeat("A", 200)+`"}`, "InvalidCiphertextException")
	})
}
