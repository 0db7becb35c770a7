package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/hsmkms/hsmkms/kms/store/pgtest"
	"github.com/stretchr/testify/require"
)

// Nodes as processes: `serve --data-dir DIR --database-url-file F
// --node-id N`, two of them on one data directory (one SoftHSM2 token
// store, one CA, one admin) and one PostgreSQL database, as
// scripts/run-ha.sh runs them. Unlike the in-process nodes of kms's tests,
// each has its own PKCS#11 module, logins and SoftHSM2 view of the tokens.

// startNodes starts n nodes on a fresh database, one after the other (the
// first one makes the data directory).
func startNodes(t *testing.T, n int) []*server {
	t.Helper()
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	urlFile := filepath.Join(base, "database-url")
	require.NoError(t, os.WriteFile(urlFile, []byte(pgtest.NewSchema(t)+"\n"), 0o600))
	var nodes []*server
	for i := range n {
		s := startServer(t, dir, freePort(t), i, "--database-url-file", urlFile, "--node-id", fmt.Sprintf("node-%d", i+1))
		nodes = append(nodes, s.mustStart())
	}
	return nodes
}

func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if err != nil {
		return "transport: " + err.Error()
	}
	return ""
}

// TestKillNodeUnderLoad: clients write through two nodes; one node is
// SIGKILLed mid-way. Every write either node acknowledged is there
// afterwards, the other node answers every request throughout, and what
// the dead node encrypted decrypts on the living one.
func TestKillNodeUnderLoad(t *testing.T) {
	t.Parallel()
	nodes := startNodes(t, 2)
	require.Contains(t, nodes[0].log(), "node=node-1", "every log line names its node")
	ctx := context.Background()
	clients := []*awskms.Client{nodes[0].client(), nodes[1].client()}
	key, err := clients[0].CreateKey(ctx, &awskms.CreateKeyInput{})
	require.NoError(t, err)
	keyID := key.KeyMetadata.KeyId

	type ack struct {
		keyID string
		blob  []byte
	}
	var mu sync.Mutex
	var acked []ack
	survivorErrs := 0
	killed := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		node := w % 2
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[node]
			for i := 0; ; i++ {
				select {
				case <-killed:
					if node == 0 {
						return
					}
					if i > 200 {
						return
					}
				default:
				}
				// A write (a key made: metadata and token object) and a
				// ciphertext under the shared key.
				k, err := c.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String(fmt.Sprintf("w%d-%d", w, i))})
				var e *awskms.EncryptOutput
				if err == nil {
					e, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: keyID, Plaintext: []byte(*k.KeyMetadata.KeyId)})
				}
				mu.Lock()
				switch {
				case err == nil:
					acked = append(acked, ack{*k.KeyMetadata.KeyId, e.CiphertextBlob})
				case node == 1:
					survivorErrs++
					t.Errorf("node 2 failed a request: %v", err)
				}
				mu.Unlock()
				if err != nil && node == 0 {
					return // the node is gone
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	nodes[0].kill()
	close(killed)
	wg.Wait()
	require.Zero(t, survivorErrs, "the other node serves on: %s", nodes[1].log())

	survivor := clients[1]
	for _, a := range acked {
		d, err := survivor.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: &a.keyID})
		require.NoError(t, err, "acknowledged CreateKey %s", a.keyID)
		require.Equal(t, types.KeyStateEnabled, d.KeyMetadata.KeyState)
		dec, err := survivor.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: a.blob})
		require.NoError(t, err)
		require.Equal(t, a.keyID, string(dec.Plaintext))
	}
	t.Logf("%d acknowledged writes, all there after node 1 was killed", len(acked))
	require.Greater(t, len(acked), 10)
}

// TestCustomKeyStoreOnTwoNodes: a custom key store connected through one
// node is connected on both, with one kmsuser password rotation; both
// report one state; a disconnect through the other holds on both; and it
// connects again through the other node (SoftHSM2's per-process view of
// the PIN included: see keystore.softHSMView).
func TestCustomKeyStoreOnTwoNodes(t *testing.T) {
	t.Parallel()
	nodes := startNodes(t, 2)
	ctx := context.Background()
	c1, c2 := nodes[0].client(), nodes[1].client()
	ids := make([]string, 0, len(nodes[0].clusters))
	for id := range nodes[0].clusters {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	cluster := ids[0]
	ca, err := os.ReadFile(filepath.Join(nodes[0].dir, "tls", "ca.pem"))
	require.NoError(t, err)
	out, err := c1.CreateCustomKeyStore(ctx, &awskms.CreateCustomKeyStoreInput{
		CustomKeyStoreName: aws.String("shared"), CloudHsmClusterId: aws.String(cluster),
		KeyStorePassword: aws.String(nodes[0].clusters[cluster]), TrustAnchorCertificate: aws.String(string(ca)),
	})
	require.NoError(t, err)
	id := *out.CustomKeyStoreId
	require.Equal(t, types.ConnectionStateTypeDisconnected, storeState(t, c2, id).ConnectionState, "the other node knows the store")

	_, err = c1.ConnectCustomKeyStore(ctx, &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	for i, c := range []*awskms.Client{c1, c2} {
		require.Equal(t, types.ConnectionStateTypeConnected, storeState(t, c, id).ConnectionState, "node %d: %s", i+1, nodes[i].log())
	}
	rotations := func() int {
		return countLines(nodes[0].log(), "rotated the kmsuser password") + countLines(nodes[1].log(), "rotated the kmsuser password")
	}
	require.Equal(t, 1, rotations(), "one rotation, on the connecting node")
	require.Equal(t, 1, countLines(nodes[0].log(), "rotated the kmsuser password"))

	// Both nodes use the store: a key made through one is used through the other.
	var key *awskms.CreateKeyOutput
	waitFor(t, "node 2 logged in", func() error {
		key, err = c2.CreateKey(ctx, &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
		return err
	})
	enc, err := c2.Encrypt(ctx, &awskms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("in the store")})
	require.NoError(t, err)
	dec, err := c1.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	require.Equal(t, "in the store", string(dec.Plaintext))

	// Disconnected through node 2: both report it, neither uses it.
	_, err = c2.DisconnectCustomKeyStore(ctx, &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	for _, c := range []*awskms.Client{c1, c2} {
		require.Equal(t, types.ConnectionStateTypeDisconnected, storeState(t, c, id).ConnectionState)
	}
	waitFor(t, "node 1 logged out", func() error {
		_, err := c1.Encrypt(ctx, &awskms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("x")})
		if code(err) != "KMSInvalidStateException" {
			return fmt.Errorf("answered %q", code(err))
		}
		return nil
	})

	// Connected again, through node 2 this time: node 2's SoftHSM2 still
	// holds the PIN from before node 1 changed it.
	_, err = c2.ConnectCustomKeyStore(ctx, &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	for i, c := range []*awskms.Client{c1, c2} {
		require.Equal(t, types.ConnectionStateTypeConnected, storeState(t, c, id).ConnectionState, "node %d: %s", i+1, nodes[i].log())
	}
	require.Equal(t, 2, rotations(), "one more rotation, on node 2")
	for _, c := range []*awskms.Client{c1, c2} {
		waitFor(t, "both nodes decrypt", func() error {
			_, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
			return err
		})
	}
	require.False(t, strings.Contains(nodes[0].log()+nodes[1].log(), nodes[0].clusters[cluster]), "no password in the logs")
}

// waitFor polls check for up to 30 s.
func waitFor(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
