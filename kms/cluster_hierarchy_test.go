package kms_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The key hierarchy and external key stores on several nodes.

// activeDomainKey is the ACTIVE domain key of the default key store as
// node e holds it.
func activeDomainKey(e *env) (string, error) {
	dks, err := e.svc.DomainKeys(bg())
	if err != nil {
		return "", err
	}
	for _, dk := range dks {
		if dk.KeyStoreID == keystore.DefaultID && dk.State == "ACTIVE" {
			return dk.ID, nil
		}
	}
	return "", errors.New("no active domain key")
}

// TestDomainKeysAcrossNodes: the nodes share the default key store's
// domain keys. Material wrapped under a domain key one node made is
// unwrapped by another; a rotation on one node is followed by the others
// within a second; the rotation's rewrap and destruction run once across
// the nodes, and everything still decrypts everywhere.
func TestDomainKeysAcrossNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 3, func(_ int, e *env) { e.material = keystore.MaterialConfig{Mode: keystore.Wrapped} })
	first, err := activeDomainKey(nodes[0])
	require.NoError(t, err)
	for _, n := range nodes[1:] {
		got, err := activeDomainKey(n)
		require.NoError(t, err)
		require.Equal(t, first, got, "the nodes started on one domain key: the first made it, the others found it")
	}
	type sealed struct {
		keyID string
		blob  []byte
	}
	var blobs []sealed
	encrypt := func(e *env) {
		c := e.admin()
		id := e.createKey(c)
		out, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte(id)})
		require.NoError(t, err)
		blobs = append(blobs, sealed{id, out.CiphertextBlob})
	}
	encrypt(nodes[0])
	encrypt(nodes[1])

	second, err := nodes[0].svc.RotateDomainKey(bg(), keystore.DefaultID)
	require.NoError(t, err)
	encrypt(nodes[0]) // under the new domain key, which the others have not read yet
	for i, n := range nodes[1:] {
		c := n.admin()
		out, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: blobs[2].blob})
		require.NoError(t, err, "node %d unwraps material under a domain key node 1 made", i+2)
		require.Equal(t, blobs[2].keyID, string(out.Plaintext))
		took := within(t, time.Second, fmt.Sprintf("node %d follows the rotation", i+2), func() error {
			got, err := activeDomainKey(n)
			if err == nil && got != second {
				err = fmt.Errorf("active domain key %s", got)
			}
			return err
		})
		t.Logf("node %d followed node 1's domain key rotation within %v", i+2, took)
	}
	encrypt(nodes[2])

	// The job on every node at once: one rewraps and destroys, the
	// others find the work claimed or done.
	var wg sync.WaitGroup
	passes := make([]kms.DomainKeyPass, len(nodes))
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); passes[i], errs[i] = n.svc.RewrapDomainKeys(bg()) }()
	}
	wg.Wait()
	rewrapped, destroyed := 0, 0
	for i := range nodes {
		require.NoError(t, errs[i])
		rewrapped += passes[i].Rewrapped
		destroyed += len(passes[i].Destroyed)
		assert.Empty(t, passes[i].Rotated)
	}
	assert.Equal(t, 2, rewrapped, "each of the two versions under the first domain key rewrapped once")
	assert.Equal(t, 1, destroyed, "the first domain key destroyed once")
	for _, n := range nodes {
		within(t, time.Second, "the first domain key is gone everywhere", func() error {
			dks, err := n.svc.DomainKeys(bg())
			if err == nil && (len(dks) != 1 || dks[0].ID != second || dks[0].Materials != len(blobs)) {
				err = fmt.Errorf("domain keys %+v", dks)
			}
			return err
		})
		c := n.admin()
		for _, b := range blobs {
			out, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: b.blob})
			require.NoError(t, err)
			require.Equal(t, b.keyID, string(out.Plaintext))
		}
	}
}

// TestDomainKeyJobTakenOverFromDeadNode: the domain key work of a store a
// node claimed and died with is done by another at its next pass; a live
// node's claim is left to it.
func TestDomainKeyJobTakenOverFromDeadNode(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, func(_ int, e *env) { e.material = keystore.MaterialConfig{Mode: keystore.Wrapped} })
	c := nodes[0].admin()
	id := nodes[0].createKey(c)
	_, err := nodes[0].svc.RotateDomainKey(bg(), keystore.DefaultID)
	require.NoError(t, err)
	db, err := store.OpenPostgreSQL(bg(), nodes[0].dbURL)
	require.NoError(t, err)
	defer db.Close()
	now := time.Now()
	mark := store.Mark{Name: "domain-keys/", Node: "node-1", Started: now, Expires: now.Add(time.Hour)}
	require.NoError(t, db.TakeMark(bg(), mark), "node 1 is on it")
	pass, err := nodes[1].svc.RewrapDomainKeys(bg())
	require.NoError(t, err)
	require.Zero(t, pass.Rewrapped, "left to its live holder")
	require.NoError(t, db.DeleteMark(bg(), mark.Name, mark.Node, mark.Started))

	require.NoError(t, db.Heartbeat(bg(), "node-9", now.Add(-time.Hour), now.Add(-time.Minute)))
	mark.Node = "node-9"
	require.NoError(t, db.TakeMark(bg(), mark), "a node that stopped beating a minute ago")
	pass, err = nodes[1].svc.RewrapDomainKeys(bg())
	require.NoError(t, err)
	require.Equal(t, 1, pass.Rewrapped, "taken over")
	require.Len(t, pass.Destroyed, 1)
	out, err := nodes[0].admin().Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err, "node 1 follows: its new material under the active domain key")
	_, err = nodes[1].admin().Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: out.CiphertextBlob})
	require.NoError(t, err)
}

// TestExternalKeyStoreOnTwoNodes: an external key store connected through
// one node is connected on both, which report one state and use their own
// client of its proxy; a credential changed through one is used by the
// other; a disconnect through the other holds on both.
func TestExternalKeyStoreOnTwoNodes(t *testing.T) {
	t.Parallel()
	f := newXKSFixture(t)
	nodes := newNodes(t, 2, func(_ int, e *env) { e.xks = f.config() })
	c1, c2 := nodes[0].admin(), nodes[1].admin()
	storeID := connectedXKSStore(t, c1, "xks-two-nodes")
	within(t, time.Second, "node 2 reports the store CONNECTED", func() error {
		out, err := c2.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &storeID})
		if err == nil && out.CustomKeyStores[0].ConnectionState != types.ConnectionStateTypeConnected {
			err = fmt.Errorf("%s", out.CustomKeyStores[0].ConnectionState)
		}
		return err
	})
	keyID := createXKSKey(t, c2, storeID, "foo") // through node 2's client
	enc, err := c1.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyID, Plaintext: []byte("both")})
	require.NoError(t, err)
	dec, err := c2.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	require.Equal(t, "both", string(dec.Plaintext))

	// A new credential through node 1; node 2 follows at once.
	require.NoError(t, f.proxy.Reload(f.prefixes(nil, xksCred2)), "the proxy takes only the new credential")
	_, err = c1.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &storeID,
		XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{AccessKeyId: &xksCred2.AccessKeyID, RawSecretAccessKey: &xksCred2.Secret}})
	require.NoError(t, err)
	within(t, time.Second, "node 2 uses the new credential", func() error {
		_, err := c2.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyID, Plaintext: []byte("x")})
		return err
	})

	_, err = c2.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &storeID})
	require.NoError(t, err)
	within(t, time.Second, "node 1 refuses the store's keys", func() error {
		_, err := c1.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyID, Plaintext: []byte("x")})
		if code := apiCode(err); code != "KMSInvalidStateException" {
			return fmt.Errorf("got %q", code)
		}
		return nil
	})
	for _, c := range []*awskms.Client{c1, c2} {
		out, err := c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &storeID})
		require.NoError(t, err)
		require.Equal(t, types.ConnectionStateTypeDisconnected, out.CustomKeyStores[0].ConnectionState)
	}
	// Connected again through node 2, in use on node 1.
	_, err = c2.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &storeID})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, waitStore(t, c2, storeID).ConnectionState)
	within(t, time.Second, "node 1 uses the store again", func() error {
		_, err := c1.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyID, Plaintext: []byte("x")})
		return err
	})
}

// TestUnwrappedMaterialFollowsOtherNodes: a node drops the material it
// unwrapped for a key (and its cached metadata) as soon as another node
// changes the key, so that a key deleted there leaves no copy of its
// material here; a key still in use is unwrapped again at its next use.
func TestUnwrappedMaterialFollowsOtherNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, func(_ int, e *env) { e.material = keystore.MaterialConfig{Mode: keystore.Wrapped} })
	c1, c2 := nodes[0].admin(), nodes[1].admin()
	id := nodes[0].createKey(c1)
	out, err := c2.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)
	objects := func() int {
		st, err := nodes[1].svc.MaterialCache(keystore.DefaultID)
		require.NoError(t, err)
		return st.Objects
	}
	require.Equal(t, 1, objects(), "node 2 unwrapped the key's material")
	_, err = c1.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: int32Ptr(7)})
	require.NoError(t, err)
	within(t, time.Second, "node 2 drops what it unwrapped", func() error {
		if n := objects(); n != 0 {
			return fmt.Errorf("%d objects", n)
		}
		return nil
	})
	_, err = c2.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: out.CiphertextBlob})
	require.Equal(t, "KMSInvalidStateException", apiCode(err), "and its cached metadata")
	_, err = c1.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &id})
	require.NoError(t, err)
	_, err = c1.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &id})
	require.NoError(t, err)
	within(t, time.Second, "node 2 uses the key again", func() error {
		_, err := c2.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: out.CiphertextBlob})
		return err
	})
}
