package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/stretchr/testify/require"
)

// TestCrashDuringMultiRegionImport kills the real server (SIGKILL) while
// the keys of a multi-Region key of imported material import and delete
// it, each on its own: in the replica's import after the token unwrapped
// the material, and in each key's deletion after it is recorded. After
// each kill the key that was killed in is PendingImport, the other keeps
// the material and decrypts what was encrypted before, and the material
// imports again.
func TestCrashDuringMultiRegionImport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	listen := freePort(t)
	run := 0
	srv := startServer(t, dir, listen, run).mustStart()
	const other = "eu-west-1"
	clients := func(s *server) (*awskms.Client, *awskms.Client) {
		c := s.client()
		return c, inRegion(c, other)
	}
	a, b := clients(srv)
	out, err := a.CreateKey(ctx, &awskms.CreateKeyInput{Origin: types.OriginTypeExternal, MultiRegion: aws.Bool(true)})
	require.NoError(t, err)
	key := out.KeyMetadata.KeyId
	material := make([]byte, 32)
	rand.Read(material)
	importInto := func(c *awskms.Client) *awskms.ImportKeyMaterialInput {
		p, err := c.GetParametersForImport(ctx, &awskms.GetParametersForImportInput{KeyId: key,
			WrappingAlgorithm: types.AlgorithmSpecRsaAesKeyWrapSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
		require.NoError(t, err)
		return &awskms.ImportKeyMaterialInput{KeyId: key, ImportToken: p.ImportToken,
			EncryptedKeyMaterial: hsmtest.WrapForImport(p.PublicKey, sha256.New, true, material),
			ExpirationModel:      types.ExpirationModelTypeKeyMaterialDoesNotExpire}
	}
	_, err = a.ImportKeyMaterial(ctx, importInto(a))
	require.NoError(t, err)
	_, err = a.ReplicateKey(ctx, &awskms.ReplicateKeyInput{KeyId: key, ReplicaRegion: aws.String(other)})
	require.NoError(t, err)
	state := func(c *awskms.Client) types.KeyState {
		d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: key})
		require.NoError(t, err)
		return d.KeyMetadata.KeyState
	}
	require.Eventually(t, func() bool { return state(b) == types.KeyStatePendingImport }, 30*time.Second, 20*time.Millisecond)
	enc, err := a.Encrypt(ctx, &awskms.EncryptInput{KeyId: key, Plaintext: []byte("kept")})
	require.NoError(t, err)
	replicaImport := importInto(b)
	srv.stop()

	decrypts := func(c *awskms.Client) {
		t.Helper()
		dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, KeyId: key})
		require.NoError(t, err)
		require.Equal(t, "kept", string(dec.Plaintext))
	}
	// killedAt serves dir armed to die at step, does in the replica's
	// Region (or the primary's) what reaches the step, and checks after
	// the restart that the key killed in is PendingImport.
	killedAt := func(step string, inReplica bool, do func(c *awskms.Client)) {
		t.Helper()
		srv = restartAfterKill(t, dir, listen, &run, step, func(c *awskms.Client) {
			if inReplica {
				c = inRegion(c, other)
			}
			do(c)
		})
		a, b = clients(srv)
		hit := a
		if inReplica {
			hit = b
		}
		require.Equal(t, types.KeyStatePendingImport, state(hit), "killed at %s", step)
		_, err := hit.Encrypt(ctx, &awskms.EncryptInput{KeyId: key, Plaintext: []byte("x")})
		require.Error(t, err, "killed at %s: the key is not usable", step)
		require.NotContains(t, srv.log(), "missing", "killed at %s", step)
	}

	killedAt(keystore.StepImportUnwrapped, true, func(c *awskms.Client) {
		_, err := c.ImportKeyMaterial(ctx, replicaImport)
		require.Error(t, err)
	})
	decrypts(a)
	_, err = b.ImportKeyMaterial(ctx, importInto(b))
	require.NoError(t, err, "the same material imports into the replica after the crash")
	decrypts(b)
	srv.stop()

	killedAt(keystore.StepImportDeleted, true, func(c *awskms.Client) {
		_, err := c.DeleteImportedKeyMaterial(ctx, &awskms.DeleteImportedKeyMaterialInput{KeyId: key})
		require.Error(t, err)
	})
	decrypts(a) // the primary holds it still
	_, err = b.ImportKeyMaterial(ctx, importInto(b))
	require.NoError(t, err)
	srv.stop()

	killedAt(keystore.StepImportDeleted, false, func(c *awskms.Client) {
		_, err := c.DeleteImportedKeyMaterial(ctx, &awskms.DeleteImportedKeyMaterialInput{KeyId: key})
		require.Error(t, err)
	})
	decrypts(b) // the replica holds it still
	_, err = a.ImportKeyMaterial(ctx, importInto(a))
	require.NoError(t, err)
	decrypts(a)
}
