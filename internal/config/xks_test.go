package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const xksSection = `
xks_proxy:
  listen: 0.0.0.0:8444
  timeout: 150ms
  tokens:
    - id: hsm-1
      module: /usr/lib/softhsm/libsofthsm2.so
      token_label: hsmkms-xks
      pin_file: secrets/xks-pin
  prefixes:
    - path: /tenant-a/kms/xks/v1
      credentials:
        - access_key_id: AKIAXKSAAAAAAAAAAAAA2345
          secret_file: secrets/xks-a
        - access_key_id: AKIAXKSBBBBBBBBBBBBB2345
          secret_env: HSMKMS_XKS_B
      policy: '{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"xks:*","Resource":"*"}}'
external_key_stores:
  ca_file: tls/xks-ca.pem
  timeout: 250ms
  connect_to:
    xks.example.com: 10.0.0.5:8444
`

func TestXKSConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(validConfig+xksSection), "/etc/hsmkms")
	require.NoError(t, err)
	x := cfg.XKSProxy
	require.NotNil(t, x)
	require.Equal(t, "150ms", x.TimeoutDuration().String())
	require.Equal(t, "/etc/hsmkms/secrets/xks-pin", x.Tokens[0].PINFile)
	require.Equal(t, "/etc/hsmkms/secrets/xks-a", x.Prefixes[0].Credentials[0].SecretFile)
	require.Equal(t, "/etc/hsmkms/tls/xks-ca.pem", cfg.ExternalKeyStores.CAFile)
	require.Equal(t, "10.0.0.5:8444", cfg.ExternalKeyStores.ConnectTo["xks.example.com"])

	edit := func(old, new string) string {
		doc := validConfig + xksSection
		require.Contains(t, doc, old)
		return strings.Replace(doc, old, new, 1)
	}
	for name, c := range map[string]struct{ doc, want string }{
		"short access key id": {edit("AKIAXKSAAAAAAAAAAAAA2345", "AKIA1"), "xks_proxy.prefixes[0].credentials[0].access_key_id: must be 20-30 of A-Z and 2-7"},
		"secret inline":       {edit("secret_file: secrets/xks-a", "secret: x"), "xks_proxy.prefixes[0].credentials[0].secret (line"},
		"bad path":            {edit("/tenant-a/kms/xks/v1", "/tenant-a/kms/xks"), `xks_proxy.prefixes[0].path: "/tenant-a/kms/xks" must be`},
		"unknown token":       {edit("      credentials:", "      tokens: [hsm-9]\n      credentials:"), `xks_proxy.prefixes[0].tokens[0]: no token "hsm-9"`},
		"no credentials":      {edit("access_key_id: AKIAXKSBBBBBBBBBBBBB2345", "access_key_id: AKIAXKSAAAAAAAAAAAAA2345"), "declared twice"},
		"bad policy":          {edit(`"Action":"xks:*"`, `"Action":"xks"`), "xks_proxy.prefixes[0].policy:"},
		"same listener":       {edit("listen: 0.0.0.0:8444", "listen: 0.0.0.0:8443"), "xks_proxy.listen: the proxy needs a listener of its own"},
		"default token":       {edit("token_label: hsmkms-xks", "token_label: hsmkms-default"), "xks_proxy.tokens[0]: the default key store's token cannot also hold external keys"},
		"bad connect_to":      {edit("10.0.0.5:8444", "10.0.0.5"), "external_key_stores.connect_to.xks.example.com"},
		"long timeout":        {edit("timeout: 150ms", "timeout: 1m"), "xks_proxy.timeout"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.doc), "/etc/hsmkms")
			require.ErrorContains(t, err, c.want)
		})
	}
}

func TestXKSCredentialSecret(t *testing.T) {
	dir := t.TempDir()
	good, short := filepath.Join(dir, "good"), filepath.Join(dir, "short")
	require.NoError(t, os.WriteFile(good, []byte("FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE\n"), 0o600))
	require.NoError(t, os.WriteFile(short, []byte("tooshort\n"), 0o600))
	s, err := (&XKSCredential{SecretFile: good}).Secret()
	require.NoError(t, err)
	require.Len(t, s, 43)
	_, err = (&XKSCredential{SecretFile: short}).Secret()
	require.ErrorContains(t, err, "43 to 64")
	require.NotContains(t, err.Error(), "tooshort", "a secret never appears in an error")
	require.NoError(t, os.Chmod(good, 0o644))
	_, err = (&XKSCredential{SecretFile: good}).Secret()
	require.ErrorContains(t, err, "chmod 600")
}
