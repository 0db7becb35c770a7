package kms_test

import (
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"
)

const (
	oneError     = "1 validation error detected: "
	keyUsageEnum = "[SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT]"
)

// TestValidationThroughSDK checks the model's constraints (length, range,
// enum, pattern) as the SDK sends them: aws-sdk-go-v2 checks only required
// members itself, so everything else reaches the server.
func TestValidationThroughSDK(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	n := func(v int32) *int32 { return &v }
	cases := []struct {
		name string
		call func() error
		msg  string
	}{
		{"plaintext too long", func() error {
			_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: make([]byte, 4097)})
			return err
		}, "Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096"},
		{"plaintext empty", func() error {
			_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte{}})
			return err
		}, "Value at 'plaintext' failed to satisfy constraint: Member must have length greater than or equal to 1"},
		{"ciphertext too long", func() error {
			_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: make([]byte, 6145)})
			return err
		}, "Value at 'ciphertextBlob' failed to satisfy constraint: Member must have length less than or equal to 6144"},
		{"random too many", func() error {
			_, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: n(1025)})
			return err
		}, "Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024"},
		{"random zero", func() error {
			_, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: n(0)})
			return err
		}, "Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1"},
		{"data key bytes", func() error {
			_, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &id, NumberOfBytes: n(2000)})
			return err
		}, "Value '2000' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024"},
		{"data key spec enum", func() error {
			_, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &id, KeySpec: "AES_512"})
			return err
		}, "Value 'AES_512' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"},
		{"key usage enum", func() error {
			_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeyUsage: "ENCRYPT"})
			return err
		}, "Value 'ENCRYPT' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: " + keyUsageEnum},
		{"description too long", func() error {
			_, err := c.UpdateKeyDescription(bg(), &awskms.UpdateKeyDescriptionInput{KeyId: &id, Description: aws.String(strings.Repeat("d", 8193))})
			return err
		}, "Value '" + strings.Repeat("d", 8193) + "' at 'description' failed to satisfy constraint: Member must have length less than or equal to 8192"},
		{"list limit", func() error {
			_, err := c.ListKeys(bg(), &awskms.ListKeysInput{Limit: n(1001)})
			return err
		}, "Value '1001' at 'limit' failed to satisfy constraint: Member must have value less than or equal to 1000"},
		{"pending window", func() error {
			_, err := c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: n(400)})
			return err
		}, "Value '400' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value less than or equal to 365"},
		{"rotation period", func() error {
			_, err := c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: n(89)})
			return err
		}, "Value '89' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value greater than or equal to 90"},
		{"alias pattern", func() error {
			_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/has space"), TargetKeyId: &id})
			return err
		}, "Value 'alias/has space' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"},
		{"tag key too long", func() error {
			_, err := c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: []types.Tag{{TagKey: aws.String(strings.Repeat("k", 129)), TagValue: aws.String("v")}}})
			return err
		}, "Value '" + strings.Repeat("k", 129) + "' at 'tags.1.member.tagKey' failed to satisfy constraint: Member must have length less than or equal to 128"},
		{"key id too long", func() error {
			_, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(strings.Repeat("a", 2049))})
			return err
		}, "Value '" + strings.Repeat("a", 2049) + "' at 'keyId' failed to satisfy constraint: Member must have length less than or equal to 2048"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			requireAPIError(t, tc.call(), "ValidationException", oneError+tc.msg)
		})
	}

	// Two violations at once: AWS counts them and joins them with "; ".
	_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeyUsage: "X", Description: aws.String(strings.Repeat("d", 8193))})
	requireAPIError(t, err, "ValidationException", "")
	require.Contains(t, err.Error(), "2 validation errors detected: ")
}

// TestValidationRaw sends what the SDK would refuse to send.
func TestValidationRaw(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cases := []struct{ op, body, typ, msg string }{
		{"Encrypt", `{"Plaintext":"aGk="}`, "ValidationException", oneError + "Value null at 'keyId' failed to satisfy constraint: Member must not be null"},
		{"DescribeKey", `{}`, "ValidationException", oneError + "Value null at 'keyId' failed to satisfy constraint: Member must not be null"},
		{"CreateAlias", `{"TargetKeyId":"x"}`, "ValidationException", oneError + "Value null at 'aliasName' failed to satisfy constraint: Member must not be null"},
		{"GenerateRandom", `{"NumberOfBytes":"ten"}`, "SerializationException", ""},
		{"UpdateAlias", `{}`, "ValidationException", "2 validation errors detected: Value null at 'aliasName' failed to satisfy constraint: Member must not be null; Value null at 'targetKeyId' failed to satisfy constraint: Member must not be null"},
		{"Encrypt", `{"KeyId":`, "SerializationException", ""},
		{"Encrypt", `{"KeyId":"x","Plaintext":"not base64!"}`, "SerializationException", ""},
	}
	for _, tc := range cases {
		status, typ, msg := e.raw(tc.op, tc.body)
		require.Equal(t, 400, status, tc.body)
		require.Equal(t, tc.typ, typ, tc.body)
		if tc.msg != "" {
			require.Equal(t, tc.msg, msg, tc.body)
		}
	}
	status, typ, _ := e.raw("NoSuchOperation", `{}`)
	require.Equal(t, 400, status)
	require.Equal(t, "UnknownOperationException", typ)
}
