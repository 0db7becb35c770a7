package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/xks"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// readEnv reads DIR/xks.env.
func readEnv(t *testing.T, path string) map[string]string {
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "xks.env holds the secret")
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		require.True(t, ok, sc.Text())
		out[k] = v
	}
	return out
}

// xksClientFromEnv is a SigV4 client of our own for the data directory's
// proxy, configured only from xks.env and the data directory's CA, as
// AWS's XKS test client would be.
func xksClientFromEnv(t *testing.T, s *server, env map[string]string, secret string) *xks.Client {
	ca, err := os.ReadFile(filepath.Join(s.dir, "tls/ca.pem"))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca))
	c, err := xks.NewClient(xks.ClientConfig{Endpoint: "https://localhost", Path: "/" + env["URI_PREFIX"] + "/kms/xks/v1",
		AccessKeyID: env["SIGV4_ACCESS_KEY_ID"], Secret: secret, Region: env["REGION"], RootCAs: pool,
		ConnectTo: map[string]string{"localhost": env["XKS_PROXY_HOST"]}, Timeout: 30 * time.Second})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

func requireAPIErr(t *testing.T, err error, code string) string {
	t.Helper()
	var ae smithy.APIError
	require.True(t, errors.As(err, &ae), "%v", err)
	require.Equal(t, code, ae.ErrorCode(), ae.ErrorMessage())
	return ae.ErrorMessage()
}

// TestXKSThroughServeDataDir: both sides in the real binary. The data
// directory's proxy answers a SigV4 client configured from xks.env alone;
// its own hsmkms uses it as an EXTERNAL_KEY_STORE through the SDK; the
// admin command disables the external key from another process and the
// KMS key stops working; a restart reconnects the store; a SIGHUP rotates
// the proxy's credentials.
func TestXKSThroughServeDataDir(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dir, freePort(t), 0).mustStart()
	env := readEnv(t, filepath.Join(dir, "xks.env"))
	for _, k := range []string{"XKS_PROXY_HOST", "URI_PREFIX", "SIGV4_ACCESS_KEY_ID", "SIGV4_SECRET_ACCESS_KEY", "REGION", "KEY_ID",
		"ENCRYPT_ONLY_KEY_ID", "DECRYPT_ONLY_KEY_ID", "IMPOTENT_KEY_ID"} {
		require.NotEmpty(t, env[k], k)
	}
	require.Equal(t, s.xks, env["XKS_PROXY_HOST"])
	ctx := context.Background()
	md := xks.RequestMetadata{AwsPrincipalArn: "arn:aws:iam::123456789012:user/Alice", KmsKeyArn: "arn:aws:kms:us-east-1:123456789012:key/k",
		KmsOperation: "Encrypt", KmsRequestID: "r"}

	t.Run("the proxy, from xks.env", func(t *testing.T) {
		xc := xksClientFromEnv(t, s, env, env["SIGV4_SECRET_ACCESS_KEY"])
		h, err := xc.Health(ctx, xks.RequestMetadata{KmsOperation: "KmsHealthCheck", KmsRequestID: "r"})
		require.NoError(t, err)
		assert.Equal(t, xks.HealthActive, h.EkmFleetDetails[0].HealthStatus)
		sealed, err := xc.Encrypt(ctx, env["KEY_ID"], md, []byte("hello"), []byte("aad"))
		require.NoError(t, err)
		back, err := xc.Decrypt(ctx, env["KEY_ID"], md, sealed, []byte("aad"))
		require.NoError(t, err)
		assert.Equal(t, "hello", string(back))
		_, err = xc.Encrypt(ctx, env["ENCRYPT_ONLY_KEY_ID"], md, []byte("x"), nil)
		require.NoError(t, err)
		for _, id := range []string{env["DECRYPT_ONLY_KEY_ID"], env["IMPOTENT_KEY_ID"]} {
			_, err = xc.Encrypt(ctx, id, md, []byte("x"), nil)
			var ce *xks.CallError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, xks.InvalidKeyUsageException, ce.ErrorName)
		}
	})

	c := s.client()
	name := "xks"
	out, err := c.CreateCustomKeyStore(ctx, &awskms.CreateCustomKeyStoreInput{CustomKeyStoreName: &name, CustomKeyStoreType: types.CustomKeyStoreTypeExternalKeyStore,
		XksProxyConnectivity: types.XksProxyConnectivityTypePublicEndpoint, XksProxyUriEndpoint: aws.String("https://localhost"),
		XksProxyUriPath: aws.String("/" + env["URI_PREFIX"] + "/kms/xks/v1"), XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{
			AccessKeyId: aws.String(env["SIGV4_ACCESS_KEY_ID"]), RawSecretAccessKey: aws.String(env["SIGV4_SECRET_ACCESS_KEY"])}})
	require.NoError(t, err)
	id := *out.CustomKeyStoreId
	_, err = c.ConnectCustomKeyStore(ctx, &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, storeState(t, c, id).ConnectionState)
	for _, bad := range []string{env["ENCRYPT_ONLY_KEY_ID"], env["DECRYPT_ONLY_KEY_ID"], env["IMPOTENT_KEY_ID"]} {
		_, err := c.CreateKey(ctx, &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeExternalKeyStore, XksKeyId: aws.String(bad)})
		requireAPIErr(t, err, "XksKeyInvalidConfigurationException")
	}
	ck, err := c.CreateKey(ctx, &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeExternalKeyStore, XksKeyId: aws.String(env["KEY_ID"])})
	require.NoError(t, err)
	key := *ck.KeyMetadata.KeyId
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("kept outside")})
	require.NoError(t, err)
	decrypt := func() error {
		d, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		if err == nil && string(d.Plaintext) != "kept outside" {
			t.Fatalf("decrypted to %q", d.Plaintext)
		}
		return err
	}
	require.NoError(t, decrypt())

	admin := func(args ...string) string {
		out, err := exec.Command(binary(t), append([]string{"xks-keys"}, append(args, "--data-dir", dir)...)...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		return string(out)
	}
	t.Run("the admin command disables the external key", func(t *testing.T) {
		assert.Contains(t, admin("list"), env["KEY_ID"])
		admin("disable", "--id", env["KEY_ID"])
		// Another process's change reaches the proxy within its
		// StatusTTL (a second).
		var err error
		require.Eventually(t, func() bool { err = decrypt(); return err != nil }, 30*time.Second, 20*time.Millisecond)
		msg := requireAPIErr(t, err, "KMSInvalidStateException")
		assert.Contains(t, msg, "is not enabled in the external key manager")
		assert.Regexp(t, env["KEY_ID"]+`\s+AES_256\s+ENCRYPT,DECRYPT\s+DISABLED`, admin("list"))
		admin("enable", "--id", env["KEY_ID"])
		require.Eventually(t, func() bool { return decrypt() == nil }, 30*time.Second, 20*time.Millisecond)
		admin("create", "--id", "made-by-admin", "--usage", "ENCRYPT,DECRYPT")
		_, err = c.CreateKey(ctx, &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeExternalKeyStore, XksKeyId: aws.String("made-by-admin")})
		require.NoError(t, err, "a key made by the admin command is usable at once")
	})

	outer := t // the server outlives this subtest: its cleanup is the test's
	t.Run("restart reconnects the store", func(t *testing.T) {
		s.stop()
		s = startServer(outer, dir, s.listen, 1).mustStart()
		c = s.client()
		require.Equal(t, types.ConnectionStateTypeConnected, storeState(t, c, id).ConnectionState, "%s", s.log())
		require.NoError(t, decrypt())
	})
	t.Run("SIGHUP rotates the proxy's credentials", func(t *testing.T) {
		// A second credential for the prefix, added to the configuration
		// while the proxy runs, works once the proxy re-reads it.
		newID, newSecret := "ROTATEDROTATEDROTATED234", "bmV3LXNlY3JldC1mb3Itcm90YXRpb24tMDAwMDAwMDAwMDA="
		require.NoError(t, os.WriteFile(filepath.Join(dir, "secrets", "xks-secret-2"), []byte(newSecret+"\n"), 0o600))
		path := filepath.Join(dir, "hsmkms.yaml")
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		var doc map[string]any
		require.NoError(t, yaml.Unmarshal(raw, &doc))
		pre := doc["xks_proxy"].(map[string]any)["prefixes"].([]any)[0].(map[string]any)
		pre["credentials"] = append(pre["credentials"].([]any), map[string]any{"access_key_id": newID, "secret_file": "secrets/xks-secret-2"})
		edited, err := yaml.Marshal(doc)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, edited, 0o600))
		cfg, err := config.LoadConfig(path)
		require.NoError(t, err, "the edited configuration is valid")
		require.Len(t, cfg.XKSProxy.Prefixes[0].Credentials, 2)

		rotated := map[string]string{}
		for k, v := range readEnv(t, filepath.Join(dir, "xks.env")) { // the restart moved the proxy
			rotated[k] = v
		}
		rotated["SIGV4_ACCESS_KEY_ID"] = newID
		xc := xksClientFromEnv(t, s, rotated, newSecret)
		_, err = xc.Health(ctx, xks.RequestMetadata{KmsOperation: "KmsHealthCheck", KmsRequestID: "r"})
		var ce *xks.CallError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, xks.AuthenticationFailedException, ce.ErrorName, "not before the reload: %v", err)
		require.NoError(t, s.cmd.Process.Signal(syscall.SIGHUP))
		require.Eventually(t, func() bool {
			_, err := xc.Health(ctx, xks.RequestMetadata{KmsOperation: "KmsHealthCheck", KmsRequestID: "r"})
			return err == nil
		}, 30*time.Second, 50*time.Millisecond, "%s", s.log())
		// The old credential still works: both are configured.
		require.NoError(t, decrypt())
		// The store moves to the new credential, without disconnecting.
		_, err = c.UpdateCustomKeyStore(ctx, &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &id, XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{
			AccessKeyId: aws.String(newID), RawSecretAccessKey: aws.String(newSecret)}})
		require.NoError(t, err)
		require.NoError(t, decrypt())
		assert.NotContains(t, s.log(), newSecret)
		assert.NotContains(t, s.log(), env["SIGV4_SECRET_ACCESS_KEY"])
	})

}
