package datadir

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/stretchr/testify/require"
)

func TestBootstrap(t *testing.T) {
	if _, err := FindSoftHSM(); err != nil {
		t.Fatal(err, "(make test runs scripts/setup.sh first)")
	}
	dir := filepath.Join(t.TempDir(), "data")
	path, info, err := Bootstrap(dir, "127.0.0.1:4599", nil)
	require.NoError(t, err)
	require.Equal(t, "https://127.0.0.1:4599", info.Endpoint)
	cfg, err := config.LoadConfig(path)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:4599", cfg.Listen)
	require.False(t, cfg.PlainHTTP)

	for _, f := range []string{"secrets/so-pin", "secrets/user-pin", "secrets/admin-secret", "credentials", "tls/ca-key.pem", "tls/server-key.pem", "hsmkms.yaml"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err, f)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	// The first-run admin may do everything, through its identity policy.
	require.Len(t, cfg.Principals, 1)
	require.Equal(t, kms.AdminPolicy, cfg.Principals[0].Policy)
	creds, err := os.ReadFile(info.CredentialsFile)
	require.NoError(t, err)
	require.Regexp(t, `(?m)^aws_access_key_id = AKIA[A-Z0-9]{16}$`, string(creds))
	pin, err := cfg.DefaultKeyStore.PIN()
	require.NoError(t, err)
	require.NotContains(t, string(creds), pin)

	// A second run reuses everything.
	caBefore, _ := os.ReadFile(info.CABundle)
	path2, _, err := Bootstrap(dir, "127.0.0.1:4599", nil)
	require.NoError(t, err)
	require.Equal(t, path, path2)
	caAfter, _ := os.ReadFile(info.CABundle)
	require.Equal(t, caBefore, caAfter)
	creds2, _ := os.ReadFile(info.CredentialsFile)
	require.Equal(t, creds, creds2)

	// The XKS proxy: its token with the four keys, made once; xks.env
	// with AWS's test client's variables, 0600.
	require.NotNil(t, cfg.XKSProxy)
	require.Equal(t, "127.0.0.1:4600", cfg.XKSProxy.Listen, "--listen's port + 1")
	require.Equal(t, "/hsmkms/kms/xks/v1", cfg.XKSProxy.Prefixes[0].Path)
	require.Equal(t, map[string]string{"localhost": "127.0.0.1:4600"}, cfg.ExternalKeyStores.ConnectTo)
	fi, err := os.Stat(filepath.Join(dir, "xks.env"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	env, err := os.ReadFile(filepath.Join(dir, "xks.env"))
	require.NoError(t, err)
	secret, err := cfg.XKSProxy.Prefixes[0].Credentials[0].Secret()
	require.NoError(t, err, "the secret is one AWS KMS accepts")
	for _, want := range []string{"XKS_PROXY_HOST=127.0.0.1:4600", "URI_PREFIX=hsmkms", "SIGV4_ACCESS_KEY_ID=" + cfg.XKSProxy.Prefixes[0].Credentials[0].AccessKeyID,
		"SIGV4_SECRET_ACCESS_KEY=" + secret, "REGION=us-east-1", "KEY_ID=hsmkms-xks-key", "ENCRYPT_ONLY_KEY_ID=hsmkms-xks-encrypt-only",
		"DECRYPT_ONLY_KEY_ID=hsmkms-xks-decrypt-only", "IMPOTENT_KEY_ID=hsmkms-xks-impotent"} {
		require.Contains(t, string(env), want+"\n")
	}
	pin, err = cfg.XKSProxy.Tokens[0].PIN()
	require.NoError(t, err)
	keys, err := keystore.OpenExternalKeys(context.Background(), keystore.TokenConfig{Module: cfg.XKSProxy.Tokens[0].Module, Label: XKSTokenLabel, PoolSize: 1}, pin, nil)
	require.NoError(t, err)
	list, err := keys.ListExternalKeys(context.Background())
	require.NoError(t, err)
	require.NoError(t, keys.Close(context.Background()))
	require.Equal(t, []keystore.ExternalKey{
		{ID: "hsmkms-xks-decrypt-only", Spec: keystore.ExternalAES256, Decrypt: true, Enabled: true},
		{ID: "hsmkms-xks-encrypt-only", Spec: keystore.ExternalAES256, Encrypt: true, Enabled: true},
		{ID: "hsmkms-xks-impotent", Spec: keystore.ExternalAES256, Enabled: true},
		{ID: "hsmkms-xks-key", Spec: keystore.ExternalAES256, Encrypt: true, Decrypt: true, Enabled: true},
	}, list)

	block := PasteBlock(info)
	require.Contains(t, block, `"XksProxyUriPath":"/hsmkms/kms/xks/v1"`)
	require.Contains(t, block, "export AWS_ENDPOINT_URL_KMS=https://127.0.0.1:4599\n")
	require.Contains(t, block, "export AWS_CA_BUNDLE="+info.CABundle+"\n")
	require.Contains(t, block, "aws kms create-key")
}
