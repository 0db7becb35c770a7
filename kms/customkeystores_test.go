package kms_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

func trustAnchor(t *testing.T) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cluster CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func (e *env) createStore(c *awskms.Client, name, cluster, password string) string {
	out, err := c.CreateCustomKeyStore(bg(), &awskms.CreateCustomKeyStoreInput{
		CustomKeyStoreName: aws.String(name), CloudHsmClusterId: aws.String(cluster),
		TrustAnchorCertificate: aws.String(trustAnchor(e.t)), KeyStorePassword: aws.String(password),
	})
	require.NoError(e.t, err)
	return *out.CustomKeyStoreId
}

// waitState polls DescribeCustomKeyStores, as a client would, until the
// store leaves CONNECTING.
func (e *env) waitState(c *awskms.Client, id string) types.CustomKeyStoresListEntry {
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &id})
		require.NoError(e.t, err)
		require.Len(e.t, out.CustomKeyStores, 1)
		if st := out.CustomKeyStores[0].ConnectionState; st != types.ConnectionStateTypeConnecting || time.Now().After(deadline) {
			return out.CustomKeyStores[0]
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func directLogin(t *testing.T, module, label, pin string) error {
	h, err := hsm.OpenToken(hsm.TokenConfig{Module: module, Label: label, PoolSize: 1})
	require.NoError(t, err)
	defer h.Close()
	err = h.Login(bg(), pin)
	if err == nil {
		h.Logout(bg())
	}
	return err
}

func TestCustomKeyStoreLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnvWithClusters(t, 1)
	c := e.admin()
	cluster := e.clusters[0].ID
	tok := e.clusterToken[cluster]
	id := e.createStore(c, "store-one", cluster, tok.UserPIN)
	require.Regexp(t, `^cks-[0-9a-f]{17}$`, id)

	entry := e.waitState(c, id)
	require.Equal(t, types.ConnectionStateTypeDisconnected, entry.ConnectionState)
	require.Empty(t, entry.ConnectionErrorCode)
	require.Equal(t, cluster, *entry.CloudHsmClusterId)
	require.Equal(t, types.CustomKeyStoreTypeAwsCloudhsm, entry.CustomKeyStoreType)
	require.NotNil(t, entry.TrustAnchorCertificate)

	_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
	requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")

	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState)
	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err, "connecting a connected store is a no-op")

	key, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm, Description: aws.String("in the store")})
	require.NoError(t, err)
	m := key.KeyMetadata
	require.Equal(t, id, *m.CustomKeyStoreId)
	require.Equal(t, cluster, *m.CloudHsmClusterId)
	require.Equal(t, types.OriginTypeAwsCloudhsm, m.Origin)
	require.Equal(t, types.KeyStateEnabled, m.KeyState)

	// The key lives on the cluster's token, labelled with its ARN.
	h, err := hsm.OpenToken(hsm.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 1})
	require.NoError(t, err)
	objs, err := h.ListObjects(bg(), pkcs11.CKO_SECRET_KEY)
	h.Close()
	require.NoError(t, err)
	require.Len(t, objs, 1)
	require.Equal(t, *m.Arn, objs[0].Label)

	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: m.KeyId, Plaintext: []byte("in the hsm"), EncryptionContext: map[string]string{"a": "b"}})
	require.NoError(t, err)
	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"a": "b"}})
	require.NoError(t, err)
	require.Equal(t, "in the hsm", string(dec.Plaintext))
	rnd, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(16), CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Len(t, rnd.Plaintext, 16)
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: m.KeyId})
	requireAPIError(t, err, "UnsupportedOperationException", "")

	_, err = c.DeleteCustomKeyStore(bg(), &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: &id})
	requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
	_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, KeyStorePassword: aws.String("another-password")})
	requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
	_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, NewCustomKeyStoreName: aws.String("renamed")})
	require.NoError(t, err, "renaming works in any state")

	// Disconnected: keys are Unavailable, crypto refused, management works.
	_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeDisconnected, e.waitState(c, id).ConnectionState)
	_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
	d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: m.KeyId})
	require.NoError(t, err)
	require.Equal(t, types.KeyStateUnavailable, d.KeyMetadata.KeyState)
	_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: m.KeyId, Plaintext: []byte("x")})
	requireAPIError(t, err, "KMSInvalidStateException", *m.Arn+" is unavailable.")
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"a": "b"}})
	requireAPIError(t, err, "KMSInvalidStateException", *m.Arn+" is unavailable.")
	_, err = c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(16), CustomKeyStoreId: &id})
	requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
	_, err = c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/in-store"), TargetKeyId: m.KeyId})
	require.NoError(t, err)
	_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: m.KeyId})
	require.NoError(t, err)
	_, err = c.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: m.KeyId})
	require.NoError(t, err)
	_, err = c.DeleteCustomKeyStore(bg(), &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: &id})
	requireAPIError(t, err, "CustomKeyStoreHasCMKsException", "Custom key store "+id+" contains 1 KMS keys; delete them before deleting the store.")

	// The rotated password is what logs in now; the original does not.
	require.ErrorIs(t, directLogin(t, tok.Module, tok.Label, tok.UserPIN), hsm.ErrPINIncorrect)

	// Reconnect: the key's own state returns and old ciphertext decrypts.
	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState)
	d, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String("alias/in-store")})
	require.NoError(t, err)
	require.Equal(t, types.KeyStateEnabled, d.KeyMetadata.KeyState)
	dec, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"a": "b"}})
	require.NoError(t, err)
	require.Equal(t, "in the hsm", string(dec.Plaintext))

	// A restart while CONNECTED reconnects with the rotated password.
	e.restart()
	c = e.admin()
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState)
	dec, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"a": "b"}})
	require.NoError(t, err)
	require.Equal(t, "in the hsm", string(dec.Plaintext))

	// Deleting the key while the store is disconnected orphans its object.
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: m.KeyId, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	d, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: m.KeyId})
	require.NoError(t, err)
	require.Equal(t, types.KeyStatePendingDeletion, d.KeyMetadata.KeyState, "PendingDeletion shows through Unavailable")
	e.clock.Advance(8 * 24 * time.Hour)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	orphans, err := e.svc.Orphans(bg())
	require.NoError(t, err)
	require.Len(t, orphans, 1)
	require.Equal(t, *m.Arn, orphans[0].KeyARN)

	_, err = c.DeleteCustomKeyStore(bg(), &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	_, err = c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &id})
	requireAPIError(t, err, "CustomKeyStoreNotFoundException", "")
}

func TestCustomKeyStoreWrongPassword(t *testing.T) {
	t.Parallel()
	e := newEnvWithClusters(t, 1)
	c := e.admin()
	cluster := e.clusters[0].ID
	id := e.createStore(c, "wrong", cluster, "not-the-password")
	_, err := c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	entry := e.waitState(c, id)
	require.Equal(t, types.ConnectionStateTypeFailed, entry.ConnectionState)
	require.Equal(t, types.ConnectionErrorCodeTypeInvalidCredentials, entry.ConnectionErrorCode)

	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
	_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, KeyStorePassword: aws.String(e.clusterToken[cluster].UserPIN)})
	require.NoError(t, err)
	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState)
}

func TestCustomKeyStoreErrors(t *testing.T) {
	t.Parallel()
	e := newEnvWithClusters(t, 2)
	c := e.admin()
	c1, c2 := e.clusters[0].ID, e.clusters[1].ID
	id := e.createStore(c, "taken", c1, "password1")
	create := func(name, cluster, anchor string) error {
		_, err := c.CreateCustomKeyStore(bg(), &awskms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String(name),
			CloudHsmClusterId: aws.String(cluster), TrustAnchorCertificate: aws.String(anchor), KeyStorePassword: aws.String("password1")})
		return err
	}
	anchor := trustAnchor(t)
	requireAPIError(t, create("x", "cluster-zzzzzzzzzzz", anchor), "CloudHsmClusterNotFoundException", "")
	requireAPIError(t, create("x", c1, anchor), "CloudHsmClusterInUseException", "")
	requireAPIError(t, create("taken", c2, anchor), "CustomKeyStoreNameInUseException", "")
	requireAPIError(t, create("x", c2, "not a certificate"), "IncorrectTrustAnchorException", "")
	// An external key store without its proxy's settings (xks_test.go
	// has the rest).
	_, err := c.CreateCustomKeyStore(bg(), &awskms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String("x"), CustomKeyStoreType: types.CustomKeyStoreTypeExternalKeyStore})
	requireAPIError(t, err, "ValidationException", "XksProxyConnectivity is required for an EXTERNAL_KEY_STORE custom key store.")

	_, err = c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &id, CustomKeyStoreName: aws.String("taken")})
	requireAPIError(t, err, "ValidationException", "")
	_, err = c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreName: aws.String("nope")})
	requireAPIError(t, err, "CustomKeyStoreNotFoundException", "")
	byName, err := c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreName: aws.String("taken")})
	require.NoError(t, err)
	require.Equal(t, id, *byName.CustomKeyStores[0].CustomKeyStoreId)

	// Another account or Region does not see the store.
	_, err = e.client(principals[1], region).DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &id})
	requireAPIError(t, err, "CustomKeyStoreNotFoundException", "")
	_, err = e.client(principals[0], "eu-west-1").ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	requireAPIError(t, err, "CustomKeyStoreNotFoundException", "")

	// A replacement cluster must hold the store's keys.
	_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, CloudHsmClusterId: aws.String(c2)})
	require.NoError(t, err, "a store without keys may move to any free cluster")
	_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, CloudHsmClusterId: aws.String("cluster-zzzzzzzzzzz")})
	requireAPIError(t, err, "CloudHsmClusterNotFoundException", "")
}

// TestConnectionStateTable is (ConnectionState × operation) → outcome.
func TestConnectionStateTable(t *testing.T) {
	t.Parallel()
	e := newEnvWithClusters(t, 3)
	c := e.admin()
	ids := map[types.ConnectionStateType]string{}
	ids[types.ConnectionStateTypeDisconnected] = e.createStore(c, "disconnected", e.clusters[0].ID, e.clusterToken[e.clusters[0].ID].UserPIN)
	ids[types.ConnectionStateTypeConnected] = e.createStore(c, "connected", e.clusters[1].ID, e.clusterToken[e.clusters[1].ID].UserPIN)
	ids[types.ConnectionStateTypeFailed] = e.createStore(c, "failed", e.clusters[2].ID, "wrong-password")
	for _, st := range []types.ConnectionStateType{types.ConnectionStateTypeConnected, types.ConnectionStateTypeFailed} {
		_, err := c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(ids[st])})
		require.NoError(t, err)
	}
	for st, id := range ids {
		require.Equal(t, st, e.waitState(c, id).ConnectionState)
	}
	ops := map[string]func(id string) error{
		"CreateKey": func(id string) error {
			_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
			return err
		},
		"GenerateRandom": func(id string) error {
			_, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(8), CustomKeyStoreId: &id})
			return err
		},
		"UpdatePassword": func(id string) error {
			_, err := c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, KeyStorePassword: aws.String("password2")})
			return err
		},
		"Connect": func(id string) error {
			_, err := c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
			return err
		},
	}
	const ok, invalid = "", "CustomKeyStoreInvalidStateException"
	want := map[types.ConnectionStateType]map[string]string{
		types.ConnectionStateTypeConnected:    {"CreateKey": ok, "GenerateRandom": ok, "UpdatePassword": invalid, "Connect": ok},
		types.ConnectionStateTypeFailed:       {"CreateKey": invalid, "GenerateRandom": invalid, "UpdatePassword": invalid, "Connect": invalid},
		types.ConnectionStateTypeDisconnected: {"CreateKey": invalid, "GenerateRandom": invalid, "UpdatePassword": ok},
	}
	for st, row := range want {
		t.Run(string(st), func(t *testing.T) {
			for op, outcome := range row {
				t.Run(op, func(t *testing.T) {
					err := ops[op](ids[st])
					if outcome == ok {
						require.NoError(t, err, "%s in %s", op, st)
					} else {
						requireAPIError(t, err, outcome, "")
					}
				})
			}
		})
	}
	// Disconnect and Delete: from DISCONNECTED, Disconnect is refused and
	// Delete allowed; from CONNECTED and FAILED the reverse.
	_, err := c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(ids[types.ConnectionStateTypeDisconnected])})
	requireAPIError(t, err, invalid, "")
	for _, st := range []types.ConnectionStateType{types.ConnectionStateTypeConnected, types.ConnectionStateTypeFailed} {
		_, err := c.DeleteCustomKeyStore(bg(), &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: aws.String(ids[st])})
		requireAPIError(t, err, invalid, "")
		_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(ids[st])})
		require.NoError(t, err)
	}
	_, err = c.DeleteCustomKeyStore(bg(), &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: aws.String(ids[types.ConnectionStateTypeDisconnected])})
	require.NoError(t, err)
}

// TestFailingClusterTokenRecovers: a CONNECTED store whose token starts
// failing stays CONNECTED, its keys answer KMSInvalidStateException, and it
// recovers by itself when the token does.
func TestFailingClusterTokenRecovers(t *testing.T) {
	t.Parallel()
	var faults *hsm.Faults
	tok := hsmtest.NewToken(t)
	cluster := "cluster-failingtoken"
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

	faults.Fail("C_EncryptInit", pkcs11.CKR_DEVICE_ERROR, 1)
	_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("x")})
	requireAPIError(t, err, "KMSInvalidStateException", *key.KeyMetadata.Arn+" is unavailable.")
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState, "the store stays CONNECTED")

	require.Eventually(t, func() bool {
		_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("x")})
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "the store recovers by itself")
}

// TestClusterChecks: a declared token that is absent, or is not the
// declared device, cannot back a new store; a replacement cluster must hold
// the store's keys.
func TestClusterChecks(t *testing.T) {
	t.Parallel()
	t1, t2 := hsmtest.NewToken(t), hsmtest.NewToken(t)
	e := newEnvWith(t, func(e *env) {
		e.addCluster("cluster-aaaaaaaaaaa", t1, nil)
		e.addCluster("cluster-bbbbbbbbbbb", t2, nil)
		e.clusters = append(e.clusters,
			keystore.Cluster{ID: "cluster-absentabsent", Token: hsm.TokenConfig{Module: t1.Module, Label: "not-initialised", PoolSize: 2}},
			keystore.Cluster{ID: "cluster-wrongdevice", Token: hsm.TokenConfig{Module: t2.Module, Label: t2.Label, PoolSize: 2}, Manufacturer: "Thales"})
	})
	c := e.admin()
	create := func(name, cluster string) error {
		_, err := c.CreateCustomKeyStore(bg(), &awskms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String(name),
			CloudHsmClusterId: aws.String(cluster), TrustAnchorCertificate: aws.String(trustAnchor(t)), KeyStorePassword: aws.String("password1")})
		return err
	}
	requireAPIError(t, create("absent", "cluster-absentabsent"), "CloudHsmClusterNotActiveException", "")
	requireAPIError(t, create("wrong", "cluster-wrongdevice"), "CloudHsmClusterInvalidConfigurationException", "")

	id := e.createStore(c, "moving", "cluster-aaaaaaaaaaa", t1.UserPIN)
	_, err := c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState)
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
	require.NoError(t, err)
	_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, CloudHsmClusterId: aws.String("cluster-bbbbbbbbbbb"),
		KeyStorePassword: aws.String(t2.UserPIN)})
	requireAPIError(t, err, "CloudHsmClusterNotRelatedException", "")
}
