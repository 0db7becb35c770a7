package datadir

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/keystore"
)

// ensureXKS prepares the data directory's XKS proxy: a token of its own
// (hsmkms-xks) with random PINs, an access key for the prefix /hsmkms, the
// four keys AWS's XKS proxy test client asks for (made only with the
// token, never again: a key an operator removed stays removed), and
// DIR/xks.env (0600) with the test client's variables. It returns what to
// print and the configuration's xks_proxy section.
func ensureXKS(dir, module, conf, listen, host, port string, dbExisted bool, backups *keystore.TokenBackups, log hclog.Logger) (*BootstrapXKS, *config.XKSProxyConfig, error) {
	secret := func(name string) string { return filepath.Join(dir, "secrets", name) }
	soNew, err := ensureSecret(secret("xks-so-pin"), func() string { return randomText(24) })
	if err != nil {
		return nil, nil, err
	}
	userNew, err := ensureSecret(secret("xks-user-pin"), func() string { return randomText(24) })
	if err != nil {
		return nil, nil, err
	}
	made, err := ensureTokenMade(module, conf, XKSTokenLabel, "the XKS proxy", secret("xks-so-pin"), secret("xks-user-pin"),
		soNew || userNew, dbExisted, "", backups)
	if err != nil {
		return nil, nil, err
	}
	if made {
		if err := makeXKSKeys(module, secret("xks-user-pin"), backups); err != nil {
			return nil, nil, err
		}
		log.Info("made the XKS proxy's token and its four keys", "token", XKSTokenLabel)
	}
	// An access key id AWS KMS accepts (20-30 of A-Z and 2-7) and a
	// secret of 256 bits (44 characters of Base64).
	if _, err := ensureSecret(secret("xks-access-key-id"), func() string { return randomXKSKeyID(24) }); err != nil {
		return nil, nil, err
	}
	if _, err := ensureSecret(secret("xks-secret"), func() string { return base64.StdEncoding.EncodeToString(randomBytes(32)) }); err != nil {
		return nil, nil, err
	}
	keyID, err := config.ReadSecret("secret", secret("xks-access-key-id"), "")
	if err != nil {
		return nil, nil, err
	}
	sec, err := config.ReadSecret("secret", secret("xks-secret"), "")
	if err != nil {
		return nil, nil, err
	}
	hostPort := net.JoinHostPort(loopbackFor(host), port)
	env := strings.Join([]string{
		"XKS_PROXY_HOST=" + hostPort,
		"URI_PREFIX=" + XKSURIPrefix,
		"SIGV4_ACCESS_KEY_ID=" + keyID,
		"SIGV4_SECRET_ACCESS_KEY=" + sec,
		"REGION=" + DefaultRegion,
		"KEY_ID=" + XKSKeyID,
		"ENCRYPT_ONLY_KEY_ID=" + XKSEncryptOnlyKeyID,
		"DECRYPT_ONLY_KEY_ID=" + XKSDecryptOnlyKeyID,
		"IMPOTENT_KEY_ID=" + XKSImpotentKeyID,
	}, "\n") + "\n"
	envFile := filepath.Join(dir, "xks.env")
	if err := writeFileAtomic(envFile, []byte(env), 0o600); err != nil {
		return nil, nil, err
	}
	cfg := &config.XKSProxyConfig{
		Listen: listen,
		Tokens: []config.XKSTokenConfig{{ID: XKSTokenLabel, Module: module, TokenLabel: XKSTokenLabel, PINFile: "secrets/xks-user-pin", PoolSize: 8}},
		Prefixes: []config.XKSPrefixConfig{{Path: XKSURIPath,
			Credentials: []config.XKSCredential{{AccessKeyID: keyID, SecretFile: "secrets/xks-secret"}}}},
	}
	return &BootstrapXKS{HostPort: hostPort, Endpoint: "https://" + xksEndpointHost, URIPath: XKSURIPath, AccessKeyID: keyID, EnvFile: envFile}, cfg, nil
}

// makeXKSKeys makes the four keys on the new token.
func makeXKSKeys(module, pinFile string, backups *keystore.TokenBackups) error {
	pin, err := config.ReadSecret("pin", pinFile, "")
	if err != nil {
		return err
	}
	ctx := context.Background()
	keys, err := keystore.OpenExternalKeys(ctx, keystore.TokenConfig{Module: module, Label: XKSTokenLabel, PoolSize: 1}, pin, &keystore.Safeguards{Backups: backups})
	if err != nil {
		return err
	}
	defer keys.Close(ctx)
	for _, k := range []struct {
		id               string
		encrypt, decrypt bool
	}{{XKSKeyID, true, true}, {XKSEncryptOnlyKeyID, true, false}, {XKSDecryptOnlyKeyID, false, true}, {XKSImpotentKeyID, false, false}} {
		if _, err := keys.CreateExternalKey(ctx, k.id, keystore.ExternalAES256, k.encrypt, k.decrypt); err != nil {
			return fmt.Errorf("making external key %s: %w", k.id, err)
		}
	}
	return nil
}

// randomXKSKeyID is n characters of A-Z and 2-7.
func randomXKSKeyID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b)[:n]
}

// xksBlock tells how to use the data directory's XKS proxy, from AWS KMS
// or from this hsmkms.
func xksBlock(info *BootstrapInfo) string {
	x := info.XKS
	if x == nil {
		return ""
	}
	return fmt.Sprintf(`
hsmkms is also an external key store (XKS) proxy at https://%[1]s%[2]s
(credentials and key ids in %[3]s). This hsmkms reaches it as %[4]s
(the aws CLI v1 would fetch an https:// parameter as a URL: hence the JSON input):

  set -a; . %[3]s; set +a
  printf '{"CustomKeyStoreName":"my-xks","CustomKeyStoreType":"EXTERNAL_KEY_STORE","XksProxyConnectivity":"PUBLIC_ENDPOINT","XksProxyUriEndpoint":"%[4]s","XksProxyUriPath":"%[2]s","XksProxyAuthenticationCredential":{"AccessKeyId":"%%s","RawSecretAccessKey":"%%s"}}' \
    "$SIGV4_ACCESS_KEY_ID" "$SIGV4_SECRET_ACCESS_KEY" > xks-store.json
  aws kms create-custom-key-store --cli-input-json file://xks-store.json      # note the CustomKeyStoreId
  aws kms connect-custom-key-store --custom-key-store-id <id>
  aws kms create-key --custom-key-store-id <id> --origin EXTERNAL_KEY_STORE --xks-key-id $KEY_ID
`, x.HostPort, x.URIPath, x.EnvFile, x.Endpoint)
}
