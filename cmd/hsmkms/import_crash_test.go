package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/stretchr/testify/require"
)

// TestCrashDuringImport kills the real server (SIGKILL) as it imports key
// material, after the token unwrapped it and before anything is recorded,
// and as it deletes imported material, after the deletion is recorded and
// before the material is destroyed. After each kill the key is
// PendingImport and unusable, no object is left on the token, and the same
// material imports again, after which what was encrypted before decrypts.
func TestCrashDuringImport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	listen := freePort(t)
	run := 0
	srv := startServer(t, dir, listen, run).mustStart()
	c := srv.client()
	out, err := c.CreateKey(ctx, &awskms.CreateKeyInput{Origin: types.OriginTypeExternal})
	require.NoError(t, err)
	key := out.KeyMetadata.KeyId
	p, err := c.GetParametersForImport(ctx, &awskms.GetParametersForImportInput{KeyId: key,
		WrappingAlgorithm: types.AlgorithmSpecRsaAesKeyWrapSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
	require.NoError(t, err)
	material := make([]byte, 32)
	rand.Read(material)
	in := &awskms.ImportKeyMaterialInput{KeyId: key, ImportToken: p.ImportToken,
		EncryptedKeyMaterial: hsmtest.WrapForImport(p.PublicKey, sha256.New, true, material),
		ExpirationModel:      types.ExpirationModelTypeKeyMaterialDoesNotExpire}
	srv.stop()

	// killedAt serves dir armed to die at step, does what reaches it, and
	// checks the key after the restart.
	killedAt := func(step string, do func(c *awskms.Client)) {
		t.Helper()
		srv = restartAfterKill(t, dir, listen, &run, step, do)
		c = srv.client()
		d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: key})
		require.NoError(t, err)
		require.Equal(t, types.KeyStatePendingImport, d.KeyMetadata.KeyState, "killed at %s", step)
		_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: key, Plaintext: []byte("x")})
		require.Error(t, err, "killed at %s: the key is not usable", step)
		require.NotContains(t, srv.log(), "orphan", "killed at %s", step)
	}

	killedAt(keystore.StepImportUnwrapped, func(c *awskms.Client) {
		_, err := c.ImportKeyMaterial(ctx, in)
		require.Error(t, err)
	})
	_, err = c.ImportKeyMaterial(ctx, in)
	require.NoError(t, err, "the same material imports after the crash")
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: key, Plaintext: []byte("kept")})
	require.NoError(t, err)
	srv.stop()

	killedAt(keystore.StepImportDeleted, func(c *awskms.Client) {
		_, err := c.DeleteImportedKeyMaterial(ctx, &awskms.DeleteImportedKeyMaterialInput{KeyId: key})
		require.Error(t, err)
	})
	_, err = c.ImportKeyMaterial(ctx, in)
	require.NoError(t, err)
	dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, KeyId: aws.String(*key)})
	require.NoError(t, err)
	require.Equal(t, "kept", string(dec.Plaintext))
}
