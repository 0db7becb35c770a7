package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// operation is one API call the load generator can repeat.
type operation struct {
	// spec and usage are the key the call needs; needsKey false means
	// none (GenerateRandom).
	needsKey bool
	spec     types.KeySpec
	usage    types.KeyUsageType
	// prepare does the one-time work for one key (a ciphertext for
	// Decrypt, a signature for Verify) and returns the call to repeat.
	prepare func(ctx context.Context, c *awskms.Client, keyID string, msg []byte) (func(context.Context) error, error)
}

// encryptionContext is sent with every symmetric call, as applications do.
var encryptionContext = map[string]string{"purpose": "hsmkms-load"}

var operations = map[string]operation{
	"Encrypt": {needsKey: true, prepare: func(_ context.Context, c *awskms.Client, id string, msg []byte) (func(context.Context) error, error) {
		return func(ctx context.Context) error {
			_, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: &id, Plaintext: msg, EncryptionContext: encryptionContext})
			return err
		}, nil
	}},
	"Decrypt": {needsKey: true, prepare: func(ctx context.Context, c *awskms.Client, id string, msg []byte) (func(context.Context) error, error) {
		out, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: &id, Plaintext: msg, EncryptionContext: encryptionContext})
		if err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
		return func(ctx context.Context) error {
			_, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: out.CiphertextBlob, EncryptionContext: encryptionContext})
			return err
		}, nil
	}},
	"GenerateDataKey": {needsKey: true, prepare: func(_ context.Context, c *awskms.Client, id string, _ []byte) (func(context.Context) error, error) {
		return func(ctx context.Context) error {
			_, err := c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: &id, KeySpec: types.DataKeySpecAes256, EncryptionContext: encryptionContext})
			return err
		}, nil
	}},
	"GenerateDataKeyPair": {needsKey: true, prepare: func(_ context.Context, c *awskms.Client, id string, _ []byte) (func(context.Context) error, error) {
		return func(ctx context.Context) error {
			_, err := c.GenerateDataKeyPair(ctx, &awskms.GenerateDataKeyPairInput{KeyId: &id, KeyPairSpec: types.DataKeyPairSpecEccNistP256, EncryptionContext: encryptionContext})
			return err
		}, nil
	}},
	"Sign": {needsKey: true, spec: types.KeySpecEccNistP256, usage: types.KeyUsageTypeSignVerify,
		prepare: func(_ context.Context, c *awskms.Client, id string, msg []byte) (func(context.Context) error, error) {
			return func(ctx context.Context) error {
				_, err := c.Sign(ctx, &awskms.SignInput{KeyId: &id, Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
				return err
			}, nil
		}},
	"Verify": {needsKey: true, spec: types.KeySpecEccNistP256, usage: types.KeyUsageTypeSignVerify,
		prepare: func(ctx context.Context, c *awskms.Client, id string, msg []byte) (func(context.Context) error, error) {
			out, err := c.Sign(ctx, &awskms.SignInput{KeyId: &id, Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			if err != nil {
				return nil, fmt.Errorf("sign: %w", err)
			}
			return func(ctx context.Context) error {
				_, err := c.Verify(ctx, &awskms.VerifyInput{KeyId: &id, Message: msg, Signature: out.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
				return err
			}, nil
		}},
	"GenerateMac": {needsKey: true, spec: types.KeySpecHmac256, usage: types.KeyUsageTypeGenerateVerifyMac,
		prepare: func(_ context.Context, c *awskms.Client, id string, msg []byte) (func(context.Context) error, error) {
			return func(ctx context.Context) error {
				_, err := c.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: &id, Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
				return err
			}, nil
		}},
	"VerifyMac": {needsKey: true, spec: types.KeySpecHmac256, usage: types.KeyUsageTypeGenerateVerifyMac,
		prepare: func(ctx context.Context, c *awskms.Client, id string, msg []byte) (func(context.Context) error, error) {
			out, err := c.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: &id, Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			if err != nil {
				return nil, fmt.Errorf("generate mac: %w", err)
			}
			return func(ctx context.Context) error {
				_, err := c.VerifyMac(ctx, &awskms.VerifyMacInput{KeyId: &id, Message: msg, Mac: out.Mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
				return err
			}, nil
		}},
	// CreateKey creates a symmetric key per request: req/s is keys/s.
	"CreateKey": {prepare: func(_ context.Context, c *awskms.Client, _ string, _ []byte) (func(context.Context) error, error) {
		return func(ctx context.Context) error {
			_, err := c.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String("hsmkms-load")})
			return err
		}, nil
	}},
	"GenerateRandom": {prepare: func(_ context.Context, c *awskms.Client, _ string, msg []byte) (func(context.Context) error, error) {
		n := int32(len(msg))
		return func(ctx context.Context) error {
			_, err := c.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: &n})
			return err
		}, nil
	}},
}

func opNames() string {
	var names []string
	for n := range operations {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// createKey makes a key the operation can use.
func (op operation) createKey(ctx context.Context, c *awskms.Client) (string, error) {
	in := &awskms.CreateKeyInput{Description: aws.String("hsmkms-load"), KeySpec: op.spec, KeyUsage: op.usage}
	out, err := c.CreateKey(ctx, in)
	if err != nil {
		return "", fmt.Errorf("create key: %w", err)
	}
	return *out.KeyMetadata.KeyId, nil
}
