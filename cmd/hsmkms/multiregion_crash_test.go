package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/internal/datadir"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/require"
)

// TestCrashDuringMultiRegion kills the real binary (SIGKILL, from the
// HSMKMS_KILL_AT seam) right after each durable step of a multi-Region
// key's life, before the call that made it answers or the job that made it
// goes on:
//
//	ReplicateKey         the replica recorded Creating
//	UpdatePrimaryRegion  the move recorded on every key of the set
//	the deletion job     a replica deleted from its set, its material kept
//
// After each kill the server must start, finish what was in flight (the
// replica Enabled, the primary moved, the primary's waiting period begun)
// and every key of the set must still decrypt what the set made before.
func TestCrashDuringMultiRegion(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	listen := freePort(t)
	run := 0
	srv := startServer(t, dir, listen, run).mustStart()
	ctx := context.Background()
	home, away := datadir.DefaultRegion, "eu-west-1"
	c := srv.client()
	out, err := c.CreateKey(ctx, &awskms.CreateKeyInput{MultiRegion: aws.Bool(true)})
	require.NoError(t, err)
	id := *out.KeyMetadata.KeyId
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("made before the kills")})
	require.NoError(t, err)
	srv.stop()

	// killedDuring starts the server armed to die at step, runs call,
	// which must fail (the server died under it), and restarts.
	killedDuring := func(step string, call func(c *awskms.Client) error) *awskms.Client {
		t.Helper()
		var do func(c *awskms.Client)
		if call != nil {
			do = func(c *awskms.Client) { require.Error(t, call(c), "the server was to die during the call") }
		}
		srv = restartAfterKill(t, dir, listen, &run, step, do)
		return srv.client()
	}
	// decrypts checks that every Region's key of the set decrypts the
	// ciphertext made before the kills.
	decrypts := func(c *awskms.Client, regions ...string) {
		t.Helper()
		for _, r := range regions {
			dec, err := inRegion(c, r).Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
			require.NoError(t, err, "in %s", r)
			require.Equal(t, "made before the kills", string(dec.Plaintext))
		}
	}
	describe := func(c *awskms.Client, region string) *types.KeyMetadata {
		t.Helper()
		d, err := inRegion(c, region).DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: &id})
		require.NoError(t, err)
		return d.KeyMetadata
	}

	t.Run("ReplicateKey", func(t *testing.T) {
		c := killedDuring(keystore.StepReplicaRecorded, func(c *awskms.Client) error {
			_, err := c.ReplicateKey(ctx, &awskms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String(away)})
			return err
		})
		m := describe(c, away)
		require.Equal(t, types.KeyStateEnabled, m.KeyState, "finished at start")
		require.Equal(t, types.MultiRegionKeyTypeReplica, m.MultiRegionConfiguration.MultiRegionKeyType)
		decrypts(c, home, away)
	})
	t.Run("UpdatePrimaryRegion", func(t *testing.T) {
		srv.stop()
		c := killedDuring(keystore.StepPrimaryMoveRecorded, func(c *awskms.Client) error {
			_, err := c.UpdatePrimaryRegion(ctx, &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(away)})
			return err
		})
		for _, r := range []string{home, away} {
			m := describe(c, r)
			require.Equal(t, types.KeyStateEnabled, m.KeyState, "in %s", r)
			require.Equal(t, away, *m.MultiRegionConfiguration.PrimaryKey.Region, "in %s", r)
		}
		decrypts(c, home, away)
	})
	t.Run("deletion of a replica", func(t *testing.T) {
		// The old primary, now a replica, is scheduled; its date is moved
		// to the past while the server is stopped, so the deletion job
		// reaps it at once when the server starts.
		c := srv.client()
		_, err := inRegion(c, away).ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
		require.NoError(t, err)
		_, err = c.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
		require.NoError(t, err)
		require.Equal(t, types.KeyStatePendingReplicaDeletion, describe(c, away).KeyState)
		srv.stop()
		db, err := store.OpenSQLite(filepath.Join(dir, "hsmkms.db"))
		require.NoError(t, err)
		_, err = db.UpdateKey(ctx, describe0(t, db, id).Account, home, id, func(k *store.Key) error {
			k.DeletionDate = time.Now().Add(-time.Hour)
			return nil
		})
		require.NoError(t, err)
		require.NoError(t, db.Close())
		c = killedDuring(keystore.StepReplicaDeleted, nil)
		_, err = c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: &id})
		var nf *types.NotFoundException
		require.ErrorAs(t, err, &nf, "the replica is gone")
		m := describe(c, away)
		require.Equal(t, types.KeyStatePendingDeletion, m.KeyState, "the primary's waiting period began with the replica's deletion")
		require.NotNil(t, m.DeletionDate)
		_, err = inRegion(c, away).CancelKeyDeletion(ctx, &awskms.CancelKeyDeletionInput{KeyId: &id})
		require.NoError(t, err)
		_, err = inRegion(c, away).EnableKey(ctx, &awskms.EnableKeyInput{KeyId: &id})
		require.NoError(t, err)
		decrypts(c, away)
		srv.stop()
	})
}

// describe0 reads the key id of the data directory's account from the
// database: the only account there.
func describe0(t *testing.T, db store.Store, id string) *store.Key {
	t.Helper()
	var found *store.Key
	require.NoError(t, db.ForEachKey(context.Background(), func(k *store.Key) error {
		if k.ID == id {
			found = k
		}
		return nil
	}))
	require.NotNil(t, found)
	return found
}
