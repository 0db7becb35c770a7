package kms_test

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/xks/proxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestExternalKeyStoresInTheTrail: an external key store's life in the
// audit trail, both ways. As KMS: CreateCustomKeyStore's parameters as
// CloudTrail has them for EXTERNAL_KEY_STORE (the credential's secret
// hidden), the background connect as a ConnectCustomKeyStore service
// event. As the XKS proxy: each call AWS KMS (here hsmkms itself) makes
// to it is a record of its own (eventSource hsmkms.xks-proxy) naming the
// KMS request it served; neither holds the plaintext.
func TestExternalKeyStoresInTheTrail(t *testing.T) {
	t.Parallel()
	f := newXKSFixture(t)
	dir := filepath.Join(t.TempDir(), "audit")
	e := newXKSEnv(t, f, func(e *env) { e.audit = &kms.AuditConfig{Dir: dir} })
	rec := proxy.Auditor(e.svc.AuditXKSProxyCall)
	f.auditor.Store(&rec)
	c := e.admin()

	created, err := c.CreateCustomKeyStore(bg(), createXKSInput("audited", xksCred))
	require.NoError(t, err)
	id := *created.CustomKeyStoreId
	r := record(t, dir, requestIDOf(created.ResultMetadata), "AwsApiCall")
	assert.Equal(t, map[string]any{"customKeyStoreName": "audited", "customKeyStoreType": "EXTERNAL_KEY_STORE",
		"xksProxyUriEndpoint": "https://" + xksHost, "xksProxyUriPath": xksPath, "xksProxyConnectivity": "PUBLIC_ENDPOINT",
		"xksProxyAuthenticationCredential": map[string]any{"accessKeyId": xksCred.AccessKeyID, "rawSecretAccessKey": "HIDDEN_DUE_TO_SECURITY_REASONS"}},
		r["requestParameters"])
	assert.Equal(t, map[string]any{"customKeyStoreId": id}, r["responseElements"])

	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	waitStore(t, c, id)
	key := createXKSKey(t, c, id, "foo")
	plaintext := []byte("xks-audit-plaintext-7c1e9d")
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: plaintext})
	require.NoError(t, err)
	encID := requestIDOf(enc.ResultMetadata)
	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	require.Equal(t, plaintext, dec.Plaintext)

	var connect, health, xksEncrypt map[string]any
	for _, r := range records(t, dir) {
		switch {
		case r["eventName"] == "ConnectCustomKeyStore" && r["eventType"] == "AwsServiceEvent":
			connect = r
		case r["eventSource"] == kms.XKSSource && r["eventName"] == "GetHealthStatus" && health == nil:
			health = r
		case r["eventSource"] == kms.XKSSource && r["eventName"] == "Encrypt":
			md, _ := r["requestParameters"].(map[string]any)["requestMetadata"].(map[string]any)
			if md["kmsRequestId"] == encID {
				xksEncrypt = r
			}
		}
	}
	require.NotNil(t, connect, "the background connect is a service event")
	assert.Equal(t, map[string]any{"customKeyStoreId": id, "customKeyStoreType": "EXTERNAL_KEY_STORE", "connectionState": "CONNECTED"},
		connect["serviceEventDetails"])
	assert.Equal(t, map[string]any{"accountId": account, "invokedBy": "AWS Internal"}, connect["userIdentity"])

	require.NotNil(t, health, "CreateCustomKeyStore's health check reached the proxy's trail")
	assert.Equal(t, "CreateCustomKeyStore", health["requestParameters"].(map[string]any)["requestMetadata"].(map[string]any)["kmsOperation"])

	require.NotNil(t, xksEncrypt, "the proxy's Encrypt names the KMS Encrypt it served")
	assert.Equal(t, kms.XKSEvent, xksEncrypt["eventType"])
	assert.Equal(t, map[string]any{"type": "XksProxyCredential", "accessKeyId": xksCred.AccessKeyID}, xksEncrypt["userIdentity"])
	assert.Equal(t, region, xksEncrypt["awsRegion"])
	assert.Equal(t, "foo", xksEncrypt["requestParameters"].(map[string]any)["keyId"])
	assert.Equal(t, "AES_GCM", xksEncrypt["requestParameters"].(map[string]any)["encryptionAlgorithm"])
	md := xksEncrypt["requestParameters"].(map[string]any)["requestMetadata"].(map[string]any)
	assert.Equal(t, "Encrypt", md["kmsOperation"])
	assert.Equal(t, principals[0].ARN, md["awsPrincipalArn"])
	assert.Nil(t, xksEncrypt["responseElements"])
	assert.NotContains(t, xksEncrypt, "errorCode")
	assert.NotEqual(t, xksEncrypt["requestID"], encID, "the proxy's own request id; the KMS one is in the metadata")

	// Nothing of the plaintext, raw or base64, anywhere in the trail.
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	require.NoError(t, err)
	for _, name := range files {
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		for _, secret := range [][]byte{plaintext, []byte(base64.StdEncoding.EncodeToString(plaintext)), []byte(xksCred.Secret)} {
			assert.False(t, bytes.Contains(b, secret), "%s holds %q", name, secret)
		}
	}
	e.close()
	_, err = audit.Verify(dir, audit.VerifyOptions{})
	assert.NoError(t, err, "the trail verifies")
}
