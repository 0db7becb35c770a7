package kms_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/xks"
	"github.com/hsmkms/hsmkms/xks/proxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The client side of external key stores: hsmkms's EXTERNAL_KEY_STORE
// custom key stores, against hsmkms's own XKS proxy (xks/proxy) on a token
// of its own, served over TLS with a certificate of a CA made here, all in
// process and through the real SDK.

const xksHost = "xks.example.com"

var (
	xksCred  = proxy.Credential{AccessKeyID: "AKIAXKSCREDAAAAAAAAA2345", Secret: "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"}
	xksCred2 = proxy.Credential{AccessKeyID: "AKIAXKSCREDBBBBBBBBB2345", Secret: "VU6W2byoiBrhDqNGbx703oL0syCAmhlQgwNUT123456"}
)

const xksPath = "/tenant-a/kms/xks/v1"

// testCA is a CA and what it signs.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) serverCert(t *testing.T, host string) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// xksFixture is hsmkms's proxy on a throwaway token, with a hook that
// stands in for a misbehaving network or proxy where a test needs one.
type xksFixture struct {
	t      *testing.T
	tok    hsmtest.Token
	keys   *keystore.ExternalKeys
	faults *hsm.Faults
	proxy  *proxy.Proxy
	srv    *httptest.Server
	ca     *testCA
	cert   atomic.Pointer[tls.Certificate]
	// override, when set, answers instead of the proxy (true) or lets it
	// answer (false).
	override atomic.Pointer[func(http.ResponseWriter, *http.Request) bool]
	log      syncBuffer
	// auditor, when set, records the proxy's calls.
	auditor atomic.Pointer[proxy.Auditor]
}

func newXKSFixture(t *testing.T) *xksFixture {
	f := &xksFixture{t: t, tok: hsmtest.NewToken(t), ca: newTestCA(t, "xks test CA")}
	var err error
	f.keys, err = keystore.OpenExternalKeys(context.Background(), keystore.TokenConfig{Module: f.tok.Module, Label: f.tok.Label, PoolSize: 4,
		Wrap: func(p hsm.PKCS11) hsm.PKCS11 { f.faults = hsm.NewFaults(p); return f.faults }}, f.tok.UserPIN, nil)
	require.NoError(t, err)
	t.Cleanup(func() { f.keys.Close(context.Background()) })
	for _, k := range []struct {
		id         string
		spec       keystore.ExternalKeySpec
		enc, dec   bool
		disabledOf bool
	}{
		{"foo", keystore.ExternalAES256, true, true, false}, {"bar", keystore.ExternalAES256, true, true, false},
		{"encrypt_only_key", keystore.ExternalAES256, true, false, false}, {"decrypt_only_key", keystore.ExternalAES256, false, true, false},
		{"impotent_key", keystore.ExternalAES256, false, false, false}, {"aes128", keystore.ExternalAES128, true, true, false},
		{"disabled", keystore.ExternalAES256, true, true, true},
	} {
		_, err := f.keys.CreateExternalKey(context.Background(), k.id, k.spec, k.enc, k.dec)
		require.NoError(t, err)
		if k.disabledOf {
			require.NoError(t, f.keys.SetExternalKeyEnabled(context.Background(), k.id, false))
		}
	}
	f.proxy, err = proxy.New(proxy.Config{Regions: []string{region}, Timeout: 20 * time.Second, MaxInFlight: 64, Version: "test", HealthTTL: -1,
		Logger: hclog.New(&hclog.LoggerOptions{Output: &f.log, JSONFormat: true}), Prefixes: f.prefixes(nil, xksCred, xksCred2),
		Audit: func(ctx context.Context, c *proxy.Call) error {
			if a := f.auditor.Load(); a != nil {
				return (*a)(ctx, c)
			}
			return nil
		}})
	require.NoError(t, err)
	cert := f.ca.serverCert(t, xksHost)
	f.cert.Store(&cert)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o := f.override.Load(); o != nil && (*o)(w, r) {
			return
		}
		f.proxy.ServeHTTP(w, r)
	}))
	f.srv.TLS = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return f.cert.Load(), nil }}
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes refused on purpose
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *xksFixture) prefixes(pol *authz.Policy, creds ...proxy.Credential) []proxy.Prefix {
	return []proxy.Prefix{{Path: strings.TrimSuffix(xksPath, xks.APIPath), Credentials: creds, Policy: pol,
		Tokens: []*proxy.Token{{ID: "hsm-1", Keys: f.keys}}}}
}

// config is what hsmkms needs to reach the fixture.
func (f *xksFixture) config() kms.XKSConfig {
	return kms.XKSConfig{RootCAs: f.ca.pool, ConnectTo: map[string]string{xksHost: f.srv.Listener.Addr().String()}, Timeout: 30 * time.Second}
}

func (f *xksFixture) setOverride(fn func(http.ResponseWriter, *http.Request) bool) {
	if fn == nil {
		f.override.Store(nil)
		return
	}
	f.override.Store(&fn)
}

// newXKSEnv is an hsmkms whose external key stores reach f.
func newXKSEnv(t *testing.T, f *xksFixture, setup func(*env)) *env {
	return newEnvWith(t, func(e *env) {
		e.xks = f.config()
		if setup != nil {
			setup(e)
		}
	})
}

func createXKSInput(name string, cred proxy.Credential) *awskms.CreateCustomKeyStoreInput {
	return &awskms.CreateCustomKeyStoreInput{CustomKeyStoreName: &name, CustomKeyStoreType: types.CustomKeyStoreTypeExternalKeyStore,
		XksProxyConnectivity: types.XksProxyConnectivityTypePublicEndpoint, XksProxyUriEndpoint: strPtr("https://" + xksHost),
		XksProxyUriPath: strPtr(xksPath), XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{
			AccessKeyId: &cred.AccessKeyID, RawSecretAccessKey: &cred.Secret}}
}

func strPtr(s string) *string { return &s }

// waitStore polls until the store is no longer CONNECTING.
func waitStore(t *testing.T, c *awskms.Client, id string) types.CustomKeyStoresListEntry {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &id})
		require.NoError(t, err)
		require.Len(t, out.CustomKeyStores, 1)
		e := out.CustomKeyStores[0]
		if e.ConnectionState != types.ConnectionStateTypeConnecting || time.Now().After(deadline) {
			return e
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// connectedXKSStore creates and connects an external key store on f.
func connectedXKSStore(t *testing.T, c *awskms.Client, name string) string {
	t.Helper()
	out, err := c.CreateCustomKeyStore(bg(), createXKSInput(name, xksCred))
	require.NoError(t, err)
	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: out.CustomKeyStoreId})
	require.NoError(t, err)
	st := waitStore(t, c, *out.CustomKeyStoreId)
	require.Equal(t, types.ConnectionStateTypeConnected, st.ConnectionState, "%s", st.ConnectionErrorCode)
	return *out.CustomKeyStoreId
}

func createXKSKey(t *testing.T, c *awskms.Client, store, xksKey string) string {
	t.Helper()
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &store, Origin: types.OriginTypeExternalKeyStore, XksKeyId: &xksKey})
	require.NoError(t, err)
	return *out.KeyMetadata.KeyId
}

// TestXKSStoreLifecycle: an external key store from creation to deletion,
// and a key in it through every operation that uses it.
func TestXKSStoreLifecycle(t *testing.T) {
	t.Parallel()
	f := newXKSFixture(t)
	e := newXKSEnv(t, f, nil)
	c := e.admin()

	out, err := c.CreateCustomKeyStore(bg(), createXKSInput("xks-one", xksCred))
	require.NoError(t, err)
	id := *out.CustomKeyStoreId
	d := waitStore(t, c, id)
	assert.Equal(t, types.ConnectionStateTypeDisconnected, d.ConnectionState)
	assert.Equal(t, types.CustomKeyStoreTypeExternalKeyStore, d.CustomKeyStoreType)
	require.NotNil(t, d.XksProxyConfiguration)
	assert.Equal(t, xksCred.AccessKeyID, *d.XksProxyConfiguration.AccessKeyId)
	assert.Equal(t, types.XksProxyConnectivityTypePublicEndpoint, d.XksProxyConfiguration.Connectivity)
	assert.Equal(t, "https://"+xksHost, *d.XksProxyConfiguration.UriEndpoint)
	assert.Equal(t, xksPath, *d.XksProxyConfiguration.UriPath)
	assert.Nil(t, d.CloudHsmClusterId)
	assert.Nil(t, d.TrustAnchorCertificate)
	_, body := e.rawFields(t, "DescribeCustomKeyStores", `{"CustomKeyStoreId":"`+id+`"}`)
	assert.NotContains(t, body["CustomKeyStores"].([]any)[0].(map[string]any)["XksProxyConfiguration"], "RawSecretAccessKey")
	assert.NotContains(t, e.log.String(), xksCred.Secret, "the secret is never logged")

	// CreateKey needs the store connected.
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeExternalKeyStore, XksKeyId: strPtr("foo")})
	requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, waitStore(t, c, id).ConnectionState)
	assert.Contains(t, f.log.String(), `"kms_operation":"ConnectCustomKeyStore"`)

	key := createXKSKey(t, c, id, "foo")
	dk, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &key})
	require.NoError(t, err)
	md := dk.KeyMetadata
	assert.Equal(t, types.OriginTypeExternalKeyStore, md.Origin)
	assert.Equal(t, id, *md.CustomKeyStoreId)
	require.NotNil(t, md.XksKeyConfiguration)
	assert.Equal(t, "foo", *md.XksKeyConfiguration.Id)
	assert.Equal(t, types.KeyStateEnabled, md.KeyState)
	assert.Nil(t, md.CloudHsmClusterId)
	assert.Contains(t, f.log.String(), `"kms_operation":"CreateKey"`)

	t.Run("cryptography", func(t *testing.T) {
		ec := map[string]string{"purpose": "test"}
		enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("hello xks"), EncryptionContext: ec})
		require.NoError(t, err)
		dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
		require.NoError(t, err)
		assert.Equal(t, "hello xks", string(dec.Plaintext))
		assert.Equal(t, *dk.KeyMetadata.Arn, *dec.KeyId)
		// A wrong context: the proxy refuses its layer, which AWS answers
		// KMSInvalidStateException.
		_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"purpose": "other"}})
		requireAPIError(t, err, "KMSInvalidStateException", "The external key store proxy rejected the request because the specified ciphertext or encryption context is corrupted, missing, or otherwise invalid.")

		gdk, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &key, KeySpec: types.DataKeySpecAes256})
		require.NoError(t, err)
		back, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: gdk.CiphertextBlob})
		require.NoError(t, err)
		assert.Equal(t, gdk.Plaintext, back.Plaintext)
		nop, err := c.GenerateDataKeyWithoutPlaintext(bg(), &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: &key, NumberOfBytes: int32Ptr(64)})
		require.NoError(t, err)
		back, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: nop.CiphertextBlob})
		require.NoError(t, err)
		assert.Len(t, back.Plaintext, 64)

		// ReEncrypt both ways between an external key and a key of the
		// default store.
		plain := e.createKey(c)
		re, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ec, DestinationKeyId: &plain})
		require.NoError(t, err)
		re2, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: re.CiphertextBlob, DestinationKeyId: &key, DestinationEncryptionContext: ec})
		require.NoError(t, err)
		dec, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: re2.CiphertextBlob, EncryptionContext: ec})
		require.NoError(t, err)
		assert.Equal(t, "hello xks", string(dec.Plaintext))

		// The largest plaintext KMS takes fits the proxy's 4300 bytes
		// after hsmkms's layer.
		big := bytes.Repeat([]byte("x"), 4096)
		enc, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: big, EncryptionContext: ec})
		require.NoError(t, err)
		dec, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
		require.NoError(t, err)
		assert.Equal(t, big, dec.Plaintext)
	})

	t.Run("what external keys cannot do", func(t *testing.T) {
		_, err := c.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: &key, KeyPairSpec: types.DataKeyPairSpecEccNistP256})
		requireAPIError(t, err, "UnsupportedOperationException", "")
		_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &key})
		requireAPIError(t, err, "UnsupportedOperationException", *md.Arn+" origin is EXTERNAL_KEY_STORE which is not valid for this operation.")
		_, err = c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: int32Ptr(8), CustomKeyStoreId: &id})
		requireAPIError(t, err, "UnsupportedOperationException", "")
		_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeExternalKeyStore, XksKeyId: strPtr("bar"),
			KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
		requireAPIError(t, err, "UnsupportedOperationException", "")
	})

	t.Run("update while connected", func(t *testing.T) {
		_, err := c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, NewCustomKeyStoreName: strPtr("xks-renamed")})
		require.NoError(t, err)
		// Rotation: the proxy accepts both pairs; the store moves to the
		// second, checked against the proxy first, without disconnecting.
		_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id,
			XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{AccessKeyId: &xksCred2.AccessKeyID, RawSecretAccessKey: &xksCred2.Secret}})
		require.NoError(t, err)
		require.NoError(t, f.proxy.Reload(f.prefixes(nil, xksCred2)))
		_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("x")})
		require.NoError(t, err, "the store signs with the new credential at once")
		bad := "AKIAXKSWRONGWRONGWRONG23"
		_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id,
			XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{AccessKeyId: &bad, RawSecretAccessKey: &xksCred2.Secret}})
		requireAPIError(t, err, "XksProxyIncorrectAuthenticationCredentialException", "The external key store proxy rejected the request because it could not authenticate AWS KMS. Verify the XKS proxy authentication credentials for your external key store and update if necessary.")
		_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, XksProxyUriEndpoint: strPtr("https://other.example.com")})
		requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
		_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, KeyStorePassword: strPtr("password1")})
		requireAPIError(t, err, "ValidationException", "")
		d := waitStore(t, c, id)
		assert.Equal(t, "xks-renamed", *d.CustomKeyStoreName)
		assert.Equal(t, xksCred2.AccessKeyID, *d.XksProxyConfiguration.AccessKeyId)
	})

	t.Run("restart reconnects", func(t *testing.T) {
		e.restart()
		c = e.admin()
		require.Equal(t, types.ConnectionStateTypeConnected, waitStore(t, c, id).ConnectionState)
		_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("after restart")})
		require.NoError(t, err)
	})

	t.Run("disconnect", func(t *testing.T) {
		enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("x")})
		require.NoError(t, err)
		_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
		require.NoError(t, err)
		assert.Equal(t, types.ConnectionStateTypeDisconnected, waitStore(t, c, id).ConnectionState)
		dk, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &key})
		require.NoError(t, err)
		assert.Equal(t, types.KeyStateUnavailable, dk.KeyMetadata.KeyState)
		_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		requireAPIError(t, err, "KMSInvalidStateException", "This KMS key is in a custom key store that is not connected to its external key store proxy. Connect the external key store and try the request again.")
		_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
		requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
		// The endpoint may change now (and is checked).
		_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, XksProxyUriEndpoint: strPtr("https://unknown.example.com")})
		requireAPIError(t, err, "XksProxyUriUnreachableException", "")
	})

	t.Run("delete", func(t *testing.T) {
		_, err := c.DeleteCustomKeyStore(bg(), &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: &id})
		requireAPIError(t, err, "CustomKeyStoreHasCMKsException", "")
		_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &key, PendingWindowInDays: int32Ptr(7)})
		require.NoError(t, err)
		e.clock.Advance(8 * 24 * time.Hour)
		n, err := e.svc.Reap(bg())
		require.NoError(t, err)
		require.Equal(t, 1, n, "a key of a disconnected external key store is deleted with its material on the default token")
		_, err = c.DeleteCustomKeyStore(bg(), &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: &id})
		require.NoError(t, err)
		_, err = c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &id})
		requireAPIError(t, err, "CustomKeyStoreNotFoundException", "")
		e.restart()
		assert.Empty(t, e.report.OrphanObjects, "no material left behind")
	})
}

func int32Ptr(n int32) *int32 { return &n }

// TestXKSCreateErrors: what CreateCustomKeyStore answers for each thing
// wrong with an external key store's settings or its proxy.
func TestXKSCreateErrors(t *testing.T) {
	t.Parallel()
	f := newXKSFixture(t)
	e := newXKSEnv(t, f, nil)
	c := e.admin()
	wrongSecret := xksCred
	wrongSecret.Secret = strings.Repeat("A", 43)
	cases := []struct {
		name string
		in   func() *awskms.CreateCustomKeyStoreInput
		code string
		msg  string
	}{
		{"wrong credential", func() *awskms.CreateCustomKeyStoreInput { return createXKSInput("a", wrongSecret) },
			"XksProxyIncorrectAuthenticationCredentialException", "The external key store proxy rejected the request because it could not authenticate AWS KMS. Verify the XKS proxy authentication credentials for your external key store and update if necessary."},
		{"wrong path", func() *awskms.CreateCustomKeyStoreInput {
			in := createXKSInput("a", xksCred)
			in.XksProxyUriPath = strPtr("/tenant-b/kms/xks/v1")
			return in
		}, "XksProxyInvalidConfigurationException", "The external key store proxy rejected the request because of an invalid URI path. Verify the URI path for your external key store and update if necessary."},
		{"no proxy there", func() *awskms.CreateCustomKeyStoreInput {
			in := createXKSInput("a", xksCred)
			in.XksProxyUriEndpoint = strPtr("https://nowhere.invalid")
			return in
		}, "XksProxyUriUnreachableException", "AWS KMS cannot communicate with the external key store proxy. This might be a transient network issue. If you see this error repeatedly, verify that your external key store proxy is active and is connected to the network, and that its endpoint URI is correct in your external keystore."},
		{"VPC endpoint service", func() *awskms.CreateCustomKeyStoreInput {
			in := createXKSInput("a", xksCred)
			in.XksProxyConnectivity = types.XksProxyConnectivityTypeVpcEndpointService
			in.XksProxyVpcEndpointServiceName = strPtr("com.amazonaws.vpce.us-west-2.vpce-svc-0123456789abcdef0")
			return in
		}, "XksProxyVpcEndpointServiceNotFoundException", ""},
		{"VPC without its service name", func() *awskms.CreateCustomKeyStoreInput {
			in := createXKSInput("a", xksCred)
			in.XksProxyConnectivity = types.XksProxyConnectivityTypeVpcEndpointService
			return in
		}, "ValidationException", "XksProxyVpcEndpointServiceName is required when XksProxyConnectivity is VPC_ENDPOINT_SERVICE."},
		{"no credential", func() *awskms.CreateCustomKeyStoreInput {
			in := createXKSInput("a", xksCred)
			in.XksProxyAuthenticationCredential = nil
			return in
		}, "ValidationException", "XksProxyAuthenticationCredential is required for an EXTERNAL_KEY_STORE custom key store."},
		{"a CloudHSM parameter", func() *awskms.CreateCustomKeyStoreInput {
			in := createXKSInput("a", xksCred)
			in.KeyStorePassword = strPtr("password1")
			return in
		}, "ValidationException", "KeyStorePassword is valid only for an AWS_CLOUDHSM custom key store."},
		{"an XKS parameter for CloudHSM", func() *awskms.CreateCustomKeyStoreInput {
			return &awskms.CreateCustomKeyStoreInput{CustomKeyStoreName: strPtr("h"), CloudHsmClusterId: strPtr("cluster-abcdefghijk"),
				KeyStorePassword: strPtr("password1"), TrustAnchorCertificate: strPtr("x"), XksProxyUriPath: strPtr(xksPath)}
		}, "ValidationException", "XksProxyUriPath is valid only for an EXTERNAL_KEY_STORE custom key store."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.CreateCustomKeyStore(bg(), tc.in())
			requireAPIError(t, err, tc.code, tc.msg)
		})
	}
	t.Run("a certificate of another CA", func(t *testing.T) {
		other := newTestCA(t, "another CA")
		e2 := newEnvWith(t, func(e *env) {
			e.xks = f.config()
			e.xks.RootCAs = other.pool
		})
		_, err := e2.admin().CreateCustomKeyStore(bg(), createXKSInput("a", xksCred))
		requireAPIError(t, err, "XksProxyUriUnreachableException", "AWS KMS cannot establish a TLS connection to the external key store proxy. Verify the TLS configuration, including its certificate.")
	})
	t.Run("the same proxy URI twice", func(t *testing.T) {
		_, err := c.CreateCustomKeyStore(bg(), createXKSInput("first", xksCred))
		require.NoError(t, err)
		_, err = c.CreateCustomKeyStore(bg(), createXKSInput("second", xksCred2))
		requireAPIError(t, err, "XksProxyUriInUseException", "")
		_, err = c.CreateCustomKeyStore(bg(), createXKSInput("first", xksCred2))
		requireAPIError(t, err, "CustomKeyStoreNameInUseException", "")
	})
	assert.NotContains(t, e.log.String(), xksCred.Secret)
}

// TestXKSConnectionErrorCodes: every ConnectionErrorCode an external key
// store can get, each from what its proxy (or the way to it) does. The
// store is created while all is well; then the world changes and the
// store is connected.
func TestXKSConnectionErrorCodes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		code   types.ConnectionErrorCodeType
		break_ func(t *testing.T, f *xksFixture)
		// timeout is the client's, where the case needs a short one.
		timeout time.Duration
	}{
		{types.ConnectionErrorCodeTypeInvalidCredentials, func(t *testing.T, f *xksFixture) {
			require.NoError(t, f.proxy.Reload(f.prefixes(nil, xksCred2))) // the store's credential was rotated away
		}, 0},
		{types.ConnectionErrorCodeTypeXksProxyInvalidConfiguration, func(t *testing.T, f *xksFixture) {
			pre := f.prefixes(nil, xksCred)
			pre[0].Path = "/tenant-z" // the store's path is no longer served
			require.NoError(t, f.proxy.Reload(pre))
		}, 0},
		{types.ConnectionErrorCodeTypeXksProxyNotReachable, func(t *testing.T, f *xksFixture) { f.srv.Close() }, 0},
		{types.ConnectionErrorCodeTypeXksProxyNotReachable, func(t *testing.T, f *xksFixture) {
			// The proxy answers, but its only token cannot serve:
			// GetHealthStatus reports it UNAVAILABLE.
			f.faults.Fail("C_Encrypt", 0x30 /* CKR_DEVICE_ERROR */, -1)
		}, 0},
		{types.ConnectionErrorCodeTypeXksProxyInvalidTlsConfiguration, func(t *testing.T, f *xksFixture) {
			other := newTestCA(t, "impostor CA").serverCert(t, xksHost)
			f.cert.Store(&other)
		}, 0},
		{types.ConnectionErrorCodeTypeXksProxyTimedOut, func(t *testing.T, f *xksFixture) {
			f.setOverride(func(w http.ResponseWriter, r *http.Request) bool { time.Sleep(3 * time.Second); return false })
		}, time.Second},
		{types.ConnectionErrorCodeTypeXksProxyInvalidResponse, func(t *testing.T, f *xksFixture) {
			f.setOverride(func(w http.ResponseWriter, r *http.Request) bool {
				w.Write([]byte("<html>not json</html>"))
				return true
			})
		}, 0},
		{types.ConnectionErrorCodeTypeXksProxyAccessDenied, func(t *testing.T, f *xksFixture) {
			// A proxy that applies authorization to GetHealthStatus (the
			// specification says not to; hsmkms's does not).
			f.setOverride(func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(403)
				w.Write([]byte(`{"errorName":"AccessDeniedException"}`))
				return true
			})
		}, 0},
	}
	for _, tc := range cases {
		t.Run(string(tc.code), func(t *testing.T) {
			t.Parallel()
			f := newXKSFixture(t)
			e := newXKSEnv(t, f, func(e *env) {
				if tc.timeout != 0 {
					e.xks.Timeout = tc.timeout
				}
			})
			c := e.admin()
			out, err := c.CreateCustomKeyStore(bg(), createXKSInput("s", xksCred))
			require.NoError(t, err)
			tc.break_(t, f)
			_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: out.CustomKeyStoreId})
			require.NoError(t, err, "connecting answers at once; the result is the state")
			st := waitStore(t, c, *out.CustomKeyStoreId)
			assert.Equal(t, types.ConnectionStateTypeFailed, st.ConnectionState)
			assert.Equal(t, tc.code, st.ConnectionErrorCode)
			// A FAILED store is disconnected before it connects again.
			_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: out.CustomKeyStoreId})
			requireAPIError(t, err, "CustomKeyStoreInvalidStateException", "")
			_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: out.CustomKeyStoreId})
			require.NoError(t, err)
			assert.NotContains(t, e.log.String(), xksCred.Secret)
		})
	}
}

// TestXKSCreateKeyErrors: CreateKey checks the external key through the
// proxy's GetKeyMetadata, and answers as AWS does.
func TestXKSCreateKeyErrors(t *testing.T) {
	t.Parallel()
	f := newXKSFixture(t)
	e := newXKSEnv(t, f, nil)
	c := e.admin()
	id := connectedXKSStore(t, c, "s")
	create := func(xksKey string) error {
		_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeExternalKeyStore, XksKeyId: &xksKey})
		return err
	}
	requireAPIError(t, create("missing"), "XksKeyNotFoundException", "The external key associated with this KMS key in an external key store was not found in its external key manager. If the external key ID associated with this KMS key is incorrect, create a new KMS key with the correct external key ID.")
	for _, k := range []string{"encrypt_only_key", "decrypt_only_key", "impotent_key"} {
		requireAPIError(t, create(k), "XksKeyInvalidConfigurationException", "The external key associated with this KMS key in an external key store does not support the requested operation. Enable the operation on the key in your external key manager, and try the request again.")
	}
	requireAPIError(t, create("aes128"), "XksKeyInvalidConfigurationException", `The external key aes128 is not a 256-bit AES key: its key spec is "AES_128".`)
	requireAPIError(t, create("disabled"), "XksKeyInvalidConfigurationException", "The external key associated with this KMS key in an external key store is not enabled in the external key manager. Enable the external key in the external key manager and retry the request.")
	require.NoError(t, create("foo"))
	requireAPIError(t, create("foo"), "XksKeyAlreadyInUseException", "")

	_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{XksKeyId: strPtr("foo")})
	requireAPIError(t, err, "ValidationException", "XksKeyId is valid only for a KMS key with Origin EXTERNAL_KEY_STORE.")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{Origin: types.OriginTypeExternalKeyStore, XksKeyId: strPtr("foo")})
	requireAPIError(t, err, "ValidationException", "Origin EXTERNAL_KEY_STORE requires a CustomKeyStoreId.")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeExternalKeyStore})
	requireAPIError(t, err, "ValidationException", "XksKeyId is required for a KMS key with Origin EXTERNAL_KEY_STORE.")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
	requireAPIError(t, err, "UnsupportedOperationException", "")

	// The proxy's secondary authorization, at CreateKey:
	// KMSInvalidStateException, as the specification says.
	pol, err := authz.Parse([]byte(`{"Statement":{"Effect":"Allow","Action":"xks:*","Resource":"*","Condition":{"StringNotEquals":{"xks:kmsOperation":"CreateKey"}}}}`), authz.IdentityPolicy)
	require.NoError(t, err)
	require.NoError(t, f.proxy.Reload(f.prefixes(pol, xksCred)))
	requireAPIError(t, create("bar"), "KMSInvalidStateException", "The external key store proxy denied access to the operation. Verify that the user and the external key are both authorized for this operation, and try the request again.")
}

// TestXKSExternalKeyDisabled: disabling the external key in the key
// manager makes the KMS key's data unreadable and its use refused, whatever
// hsmkms holds; enabling it again restores both.
func TestXKSExternalKeyDisabled(t *testing.T) {
	t.Parallel()
	f := newXKSFixture(t)
	e := newXKSEnv(t, f, nil)
	c := e.admin()
	id := connectedXKSStore(t, c, "s")
	key := createXKSKey(t, c, id, "foo")
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("secret data")})
	require.NoError(t, err)

	require.NoError(t, f.keys.SetExternalKeyEnabled(bg(), "foo", false))
	const msg = "The external key associated with this KMS key in an external key store is not enabled in the external key manager. Enable the external key in the external key manager and retry the request."
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	requireAPIError(t, err, "KMSInvalidStateException", msg)
	_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("x")})
	requireAPIError(t, err, "KMSInvalidStateException", msg)
	_, err = c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &key, NumberOfBytes: int32Ptr(32)})
	requireAPIError(t, err, "KMSInvalidStateException", msg)
	// The KMS key itself is still Enabled: its state is hsmkms's, the
	// external key's status the key manager's.
	dk, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &key})
	require.NoError(t, err)
	assert.Equal(t, types.KeyStateEnabled, dk.KeyMetadata.KeyState)

	require.NoError(t, f.keys.SetExternalKeyEnabled(bg(), "foo", true))
	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "secret data", string(dec.Plaintext))

	// The proxy's token failing is the proxy's InternalException.
	f.faults.Fail("C_DecryptInit", 0x30 /* CKR_DEVICE_ERROR */, 1)
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	requireAPIError(t, err, "KMSInvalidStateException", "The external key store proxy rejected the request because it cannot communicate with the external key manager. Verify that the external key store proxy configuration is correct and that the external key manager is available.")
}

// TestXKSDoubleEncryption: neither layer alone gives the plaintext. The
// external key alone (the proxy's Decrypt with the key store's own
// credential) yields hsmkms's inner ciphertext; hsmkms alone (everything
// but the external key) decrypts nothing.
func TestXKSDoubleEncryption(t *testing.T) {
	t.Parallel()
	f := newXKSFixture(t)
	e := newXKSEnv(t, f, nil)
	c := e.admin()
	id := connectedXKSStore(t, c, "s")
	key := createXKSKey(t, c, id, "foo")
	plaintext := []byte("the plaintext that only both layers together reveal")
	ec := map[string]string{"tenant": "a"}
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: plaintext, EncryptionContext: ec})
	require.NoError(t, err)
	blob := enc.CiphertextBlob
	require.Equal(t, byte(2), blob[0], "format 2: double encrypted")
	assert.False(t, bytes.Contains(blob, plaintext))

	// Parse the proxy's layer out of the blob (ciphertext.go, format 2).
	p := 1
	p += 1 + int(blob[p])
	p += 1 + int(blob[p])
	p += 16 + 32
	header := blob[:p]
	m := int(blob[p])
	meta := blob[p+1 : p+1+m]
	p += 1 + m
	v := int(blob[p])
	iv := blob[p+1 : p+1+v]
	p += 1 + v
	tag := blob[p : p+16]
	outer := blob[p+16:]
	require.Len(t, outer, 12+len(plaintext)+16, "the proxy encrypted hsmkms's IV, ciphertext and tag")

	t.Run("the external key alone", func(t *testing.T) {
		xc, err := xks.NewClient(xks.ClientConfig{Endpoint: "https://" + xksHost, Path: xksPath, AccessKeyID: xksCred.AccessKeyID, Secret: xksCred.Secret,
			Region: region, RootCAs: f.ca.pool, ConnectTo: map[string]string{xksHost: f.srv.Listener.Addr().String()}, Timeout: 30 * time.Second})
		require.NoError(t, err)
		defer xc.Close()
		// The outer AAD is the header and the SHA-256 of the inner one;
		// with the wrong one the proxy refuses, with the right one it
		// gives back only hsmkms's layer.
		md := xks.RequestMetadata{AwsPrincipalArn: "arn:aws:iam::111122223333:user/mallory", KmsKeyArn: "k", KmsOperation: "Decrypt", KmsRequestID: "r"}
		_, err = xc.Decrypt(bg(), "foo", md, &xks.Sealed{Ciphertext: outer, Metadata: meta, IV: iv, Tag: tag}, header)
		var ce *xks.CallError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, xks.InvalidCiphertextException, ce.ErrorName)
		// The inner additional data (header and canonical context, as
		// ciphertext.go's additionalData builds it) is known to anyone
		// who knows the context.
		inner := append(append([]byte{}, header...), 1, 6)
		inner = append(append(inner, "tenant"...), 1)
		inner = append(inner, "a"...)
		sum := sha256Sum(inner)
		layer, err := xc.Decrypt(bg(), "foo", md, &xks.Sealed{Ciphertext: outer, Metadata: meta, IV: iv, Tag: tag}, append(append([]byte{}, header...), sum...))
		require.NoError(t, err)
		assert.Len(t, layer, len(outer))
		assert.False(t, bytes.Contains(layer, plaintext), "the proxy's key yields hsmkms's ciphertext, not the plaintext")
	})

	t.Run("hsmkms alone", func(t *testing.T) {
		// Without the external key (disabled in its key manager), hsmkms
		// holds its material and the blob and decrypts nothing.
		require.NoError(t, f.keys.SetExternalKeyEnabled(bg(), "foo", false))
		defer f.keys.SetExternalKeyEnabled(bg(), "foo", true)
		_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec})
		requireAPIError(t, err, "KMSInvalidStateException", "")
		// Nor does the outer layer pass for a ciphertext of hsmkms's
		// material alone (format 1 of the same key).
		v1 := append([]byte{1}, header[1:]...)
		v1 = append(v1, outer...)
		_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: v1, EncryptionContext: ec})
		requireAPIErrorNoMessage(t, err, "InvalidCiphertextException")
	})

	t.Run("tampering", func(t *testing.T) {
		for _, at := range []int{len(header) + 1, len(blob) - 1, len(blob) - len(outer) - 1} {
			bad := append([]byte{}, blob...)
			bad[at] ^= 1
			_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: bad, EncryptionContext: ec})
			require.Error(t, err)
		}
	})
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}
