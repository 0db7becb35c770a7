package main

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"
)

// TestCrashDuringConnect kills the real server (SIGKILL) at a random
// moment 0-60 ms after ConnectCustomKeyStore, over and over: the connect
// logs in to the cluster's token and rotates the kmsuser password
// (C_SetPIN), and SoftHSM2 rewrites the token's token.object in place for
// both. After each kill the server is started again and must reconnect
// the store (with a password that logs in: no lockout) and decrypt what
// was encrypted before the first kill under a key in the store (no lost
// token), and under a key of the default key store. Every other trial
// also kills the restart 0-400 ms in, where hsmkms restores damaged
// tokens and logs in to the default and the cluster token.
//
// HSMKMS_CRASH_TRIALS sets the number of kills (default 10, which `make
// test` runs; `make test-crash` runs 150).
func TestCrashDuringConnect(t *testing.T) {
	trials := 10
	if v := os.Getenv("HSMKMS_CRASH_TRIALS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "HSMKMS_CRASH_TRIALS")
		trials = n
	}
	ctx := context.Background()
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	listen := freePort(t)
	run := 0
	srv := startServer(t, dir, listen, run).mustStart()
	st := newStoreWithKey(t, srv)
	c := srv.client()
	key, err := c.CreateKey(ctx, &awskms.CreateKeyInput{})
	require.NoError(t, err)
	def, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("in the default store")})
	require.NoError(t, err)

	var lost, lockouts, defaultLost, restores, restoresDefault, cutShort, tokenHadNew int
	for i := range trials {
		_, err := c.DisconnectCustomKeyStore(ctx, &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &st.id})
		require.NoError(t, err)
		_, err = c.ConnectCustomKeyStore(ctx, &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &st.id})
		require.NoError(t, err)
		time.Sleep(time.Duration(rand.IntN(60_001)) * time.Microsecond)
		srv.kill()

		logs := ""
		if i%2 == 1 {
			// Every other trial also kills the restart, 0-400 ms in: while
			// it restores, logs in to the default token, reconnects the
			// store (one more login on the cluster token) or serves.
			run++
			early := startServer(t, dir, listen, run)
			time.Sleep(time.Duration(rand.IntN(400_001)) * time.Microsecond)
			early.kill()
			logs = early.log()
		}
		run++
		srv = startServer(t, dir, listen, run)
		if !srv.ready() {
			t.Fatalf("trial %d: serve refused to start after the kill: %v\n%s", i, srv.exitErr, srv.log())
		}
		c = srv.client()
		e := storeState(t, c, st.id)
		switch {
		case e.ConnectionState == types.ConnectionStateTypeConnected:
		case e.ConnectionErrorCode == types.ConnectionErrorCodeTypeInvalidCredentials, e.ConnectionErrorCode == types.ConnectionErrorCodeTypeUserLockedOut:
			lockouts++
			t.Errorf("trial %d: store %s %s\n%s", i, e.ConnectionState, e.ConnectionErrorCode, srv.log())
		default:
			lost++
			t.Errorf("trial %d: store %s %s\n%s", i, e.ConnectionState, e.ConnectionErrorCode, srv.log())
		}
		if e.ConnectionState == types.ConnectionStateTypeConnected {
			dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: st.blob})
			if err != nil || string(dec.Plaintext) != "in the store" {
				lost++
				t.Errorf("trial %d: the store's key does not decrypt: %v\n%s", i, err, srv.log())
			}
		}
		dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: def.CiphertextBlob})
		if err != nil || string(dec.Plaintext) != "in the default store" {
			defaultLost++
			t.Errorf("trial %d: the default store's key does not decrypt: %v\n%s", i, err, srv.log())
		}
		log := logs + srv.log()
		restores += countLines(log, "restored a damaged SoftHSM2 token")
		restoresDefault += countLines(log, "restored a damaged SoftHSM2 token from hsmkms's copy of its token.object: label="+defaultTokenLabel+" ")
		cutShort += countLines(log, "resolving a password rotation cut short")
		tokenHadNew += countLines(log, "rotation cut short: the token has the new password")
		if t.Failed() {
			break
		}
	}
	srv.stop()
	t.Logf("%d kills 0-60 ms after ConnectCustomKeyStore (and %d during the restart): %d lost tokens, %d lockouts, %d default-store losses; "+
		"%d token.object files restored from hsmkms's copy (%d of the default token); %d restarts found a rotation cut short between recording "+
		"the new password and committing it (the token had the new password in %d, the previous in %d)",
		trials, trials/2, lost, lockouts, defaultLost, restores, restoresDefault, cutShort, tokenHadNew, cutShort-tokenHadNew)
	require.Zero(t, lost)
	require.Zero(t, lockouts)
	require.Zero(t, defaultLost)
}
