package kms_test

import (
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Token failures through the API, with tokenError's table deciding: every
// token call, the RNG's included, answers by the store it went to. The
// device codes come from hsm.Faults (SoftHSM2 cannot lose its device).

// TestDefaultTokenFailuresAreInternal: the default token is the service's
// own HSM; its device failing is KMSInternalException (a 500 that SDKs
// retry), and the service recovers by itself.
func TestDefaultTokenFailuresAreInternal(t *testing.T) {
	var faults *hsm.Faults
	e := newEnvWith(t, func(e *env) {
		e.wrapDefault = func(p hsm.PKCS11) hsm.PKCS11 { faults = hsm.NewFaults(p); return faults }
	})
	c := e.admin()
	key := e.createKey(c)
	recovered := func(t *testing.T) {
		require.Eventually(t, func() bool {
			_, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(8)})
			return err == nil
		}, 10*time.Second, 20*time.Millisecond, "the default token recovers by itself")
	}
	cases := []struct {
		name, call string
		run        func() error
	}{
		{"GenerateRandom", "C_GenerateRandom", func() error {
			_, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(8)})
			return err
		}},
		{"CreateKey drawing its material id", "C_GenerateRandom", func() error {
			_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{})
			return err
		}},
		{"CreateKey making its material", "C_GenerateKey", func() error {
			_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{})
			return err
		}},
		{"GenerateDataKey", "C_GenerateRandom", func() error {
			_, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &key, KeySpec: types.DataKeySpecAes256})
			return err
		}},
		{"Encrypt", "C_EncryptInit", func() error {
			_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("x")})
			return err
		}},
		{"RotateKeyOnDemand", "C_GenerateRandom", func() error {
			_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &key})
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recovered(t)
			faults.Fail(tc.call, pkcs11.CKR_DEVICE_REMOVED, 1)
			requireAPIError(t, tc.run(), "KMSInternalException", "The request was rejected because an internal exception occurred. The request can be retried.")
		})
	}
	recovered(t)
	keys, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
	require.NoError(t, err)
	assert.Len(t, keys.Keys, 1, "no half-made key is left")
	rot, err := c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &key})
	require.NoError(t, err)
	assert.Empty(t, rot.Rotations, "no rotation was recorded")
}

// TestCustomKeyStoreTokenFailures: a custom key store's failing token is
// the key being unavailable, or, for GenerateRandom, the store being in no
// state to serve it.
func TestCustomKeyStoreTokenFailures(t *testing.T) {
	var faults *hsm.Faults
	tok := hsmtest.NewToken(t)
	cluster := "cluster-failingrandom"
	e := newEnvWith(t, func(e *env) {
		e.addCluster(cluster, tok, func(p hsm.PKCS11) hsm.PKCS11 { faults = hsm.NewFaults(p); return faults })
	})
	c := e.admin()
	id := e.createStore(c, "flaky", cluster, tok.UserPIN)
	_, err := c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState)
	key, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
	require.NoError(t, err)
	recovered := func(t *testing.T) {
		require.Eventually(t, func() bool {
			_, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(8), CustomKeyStoreId: &id})
			return err == nil
		}, 10*time.Second, 20*time.Millisecond, "the cluster's token recovers by itself")
	}

	t.Run("GenerateRandom", func(t *testing.T) {
		recovered(t)
		faults.Fail("C_GenerateRandom", pkcs11.CKR_DEVICE_REMOVED, 1)
		_, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(8), CustomKeyStoreId: &id})
		requireAPIError(t, err, "CustomKeyStoreInvalidStateException",
			"The token of custom key store "+id+" is not available; the operation requires the store to be CONNECTED.")
	})
	t.Run("GenerateDataKey", func(t *testing.T) {
		recovered(t)
		faults.Fail("C_GenerateRandom", pkcs11.CKR_DEVICE_ERROR, 1)
		_, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: key.KeyMetadata.KeyId, NumberOfBytes: aws.Int32(32)})
		requireAPIError(t, err, "KMSInvalidStateException", *key.KeyMetadata.Arn+" is unavailable.")
	})
	t.Run("CreateKey", func(t *testing.T) {
		recovered(t)
		faults.Fail("C_GenerateRandom", pkcs11.CKR_TOKEN_NOT_PRESENT, 1)
		_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
		requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
	})
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState, "the store stays CONNECTED")
	recovered(t)
}
