package datadir

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/store"
	softhsmconfig "github.com/hsmkms/hsmkms/softhsm-config"
	"go.yaml.in/yaml/v3"
)

const (
	// DefaultTokenLabel is the label of the data directory's default token.
	DefaultTokenLabel = "hsmkms-default"
	// The first-run admin acts in AWS's documentation example account, so
	// ARNs in examples and in the output look alike.
	defaultAccount = "111122223333"
	// DefaultRegion is the Region the data directory's clients are told to use.
	DefaultRegion = "us-east-1"
)

// BootstrapInfo is what a user needs to point AWS clients at a
// --data-dir instance.
type BootstrapInfo struct {
	Endpoint        string
	CABundle        string
	CredentialsFile string
	Region          string
	Clusters        []BootstrapCluster
	// XKS is the data directory's XKS proxy.
	XKS *BootstrapXKS
}

// BootstrapXKS is what AWS KMS (or hsmkms, or AWS's XKS test client) needs
// to use the data directory's XKS proxy.
type BootstrapXKS struct {
	HostPort    string // where it listens
	Endpoint    string // XksProxyUriEndpoint for the data directory's own hsmkms
	URIPath     string // XksProxyUriPath
	AccessKeyID string
	EnvFile     string // DIR/xks.env: the test client's variables, secret included
}

// The data directory's XKS proxy: one token, one prefix, one credential,
// and the four keys AWS's XKS proxy test client asks for.
const (
	XKSTokenLabel = "hsmkms-xks"
	XKSURIPrefix  = "hsmkms"
	XKSURIPath    = "/" + XKSURIPrefix + "/kms/xks/v1"
	// The external key ids: one for both usages, one encrypt-only, one
	// decrypt-only and one with neither.
	XKSKeyID            = "hsmkms-xks-key"
	XKSEncryptOnlyKeyID = "hsmkms-xks-encrypt-only"
	XKSDecryptOnlyKeyID = "hsmkms-xks-decrypt-only"
	XKSImpotentKeyID    = "hsmkms-xks-impotent"
	// xksEndpointHost is the XksProxyUriEndpoint host the data
	// directory's hsmkms reaches its own proxy by: the server certificate
	// names it, and external_key_stores.connect_to maps it to the
	// proxy's address (an endpoint has no port).
	xksEndpointHost = "localhost"
)

// BootstrapCluster is an extra token made to back a custom key store.
type BootstrapCluster struct {
	ID, PasswordFile, Password string
}

// bootstrapClusters is how many extra tokens the first run makes, so a
// newcomer can create custom key stores at once.
const bootstrapClusters = 2

// softHSMModules are where Debian and Ubuntu put the SoftHSM2 module;
// HSMKMS_SOFTHSM_MODULE overrides them (scripts/softhsm-module.sh searches
// the same list).
var softHSMModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// FindSoftHSM is the path of the SoftHSM2 module: HSMKMS_SOFTHSM_MODULE, or
// the first of the usual places that exists.
func FindSoftHSM() (string, error) {
	if p := os.Getenv("HSMKMS_SOFTHSM_MODULE"); p != "" {
		return p, nil
	}
	for _, p := range softHSMModules {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("SoftHSM2 is not installed: run scripts/setup.sh (or `make run`), or set HSMKMS_SOFTHSM_MODULE")
}

// Bootstrap prepares dir for `serve --data-dir`: on the first run it creates
// an isolated SoftHSM2 token store with a default token, random PINs and an
// admin access key (files 0600), a local CA and server certificate, an AWS
// shared-credentials file and the configuration that ties them together;
// later runs reuse all of it. Each step checks what exists, so a run
// interrupted half way is completed by the next; but a token is made only
// if nothing says it ever existed (see ensureToken), and SoftHSM2 tokens a
// crash damaged are restored from hsmkms's copies first. The configuration
// is written last and returned with what the user must paste.
func Bootstrap(dir, listen string, log hclog.Logger) (string, *BootstrapInfo, error) {
	return BootstrapWith(dir, Options{Listen: listen}, log)
}

// Options are what `serve --data-dir` may change in the directory's
// configuration.
type Options struct {
	// Listen is HOST:PORT.
	Listen string
	// XKSListen is the XKS proxy's HOST:PORT ("" for Listen's port + 1).
	XKSListen string
	// DatabaseURLFile, if set, names a file (0600) holding the URL of a
	// PostgreSQL database: the metadata is kept there instead of
	// DIR/hsmkms.db, so that several nodes can share the directory's
	// tokens and the database (scripts/run-ha.sh).
	DatabaseURLFile string
	// NodeID, if set, is the node's id; its configuration is then
	// DIR/hsmkms-<NodeID>.yaml, so that nodes sharing DIR each keep
	// their own.
	NodeID string
}

// BootstrapWithProxy is Bootstrap with the XKS proxy listening on
// xksListen ("" for --listen's port + 1).
func BootstrapWithProxy(dir, listen, xksListen string, log hclog.Logger) (string, *BootstrapInfo, error) {
	return BootstrapWith(dir, Options{Listen: listen, XKSListen: xksListen}, log)
}

// BootstrapWith is Bootstrap with Options. Nodes sharing one directory
// must not bootstrap it at the same moment the first time: start one,
// then the others.
func BootstrapWith(dir string, o Options, log hclog.Logger) (string, *BootstrapInfo, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	listen, xksListen := o.Listen, o.XKSListen
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, err
	}
	if o.NodeID != "" && !kms.ValidNodeID(o.NodeID) {
		return "", nil, fmt.Errorf("--node-id: %q must be 1-64 letters, digits, '.', '_', ':' or '-'", o.NodeID)
	}
	if o.DatabaseURLFile != "" {
		if o.DatabaseURLFile, err = filepath.Abs(o.DatabaseURLFile); err != nil {
			return "", nil, err
		}
		if _, err := config.ReadSecret("url", o.DatabaseURLFile, ""); err != nil {
			return "", nil, fmt.Errorf("--database-url-file: %w", err)
		}
	}
	dbExisted := false
	var recorded map[string]string
	if o.DatabaseURLFile == "" {
		_, err = os.Stat(filepath.Join(dir, "hsmkms.db"))
		dbExisted = err == nil
		if dbExisted {
			if recorded, err = recordedSerials(filepath.Join(dir, "hsmkms.db")); err != nil {
				return "", nil, err
			}
		}
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", nil, fmt.Errorf("--listen: %v", err)
	}
	if xksListen == "" {
		n, err := strconv.Atoi(port)
		if err != nil || n == 0 || n >= 65535 {
			return "", nil, fmt.Errorf("--xks-listen: give it when --listen's port is %q", port)
		}
		xksListen = net.JoinHostPort(host, strconv.Itoa(n+1))
	}
	xksHost, xksPort, err := net.SplitHostPort(xksListen)
	if err != nil {
		return "", nil, fmt.Errorf("--xks-listen: %v", err)
	}
	module, err := FindSoftHSM()
	if err != nil {
		return "", nil, err
	}
	for _, d := range []string{dir, filepath.Join(dir, "secrets"), filepath.Join(dir, "softhsm", "tokens")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", nil, err
		}
	}
	secret := func(name string) string { return filepath.Join(dir, "secrets", name) }

	conf := filepath.Join(dir, "softhsm", "softhsm2.conf")
	if _, err := os.Stat(conf); errors.Is(err, os.ErrNotExist) {
		if err := writeFileAtomic(conf, softhsmconfig.Render(filepath.Join(dir, "softhsm", "tokens")), 0o600); err != nil {
			return "", nil, err
		}
	}
	// SoftHSM2 reads its configuration, and every token directory, once
	// when the module loads: restore what a crash damaged before that.
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return "", nil, err
	}
	backups, err := keystore.NewTokenBackups(config.TokenBackupDir(filepath.Join(dir, "hsmkms.db")))
	if err != nil {
		return "", nil, err
	}
	repaired, err := backups.Repair(nil)
	if err != nil {
		return "", nil, err
	}
	repaired.Log(log)
	soNew, err := ensureSecret(secret("so-pin"), func() string { return randomText(24) })
	if err != nil {
		return "", nil, err
	}
	userNew, err := ensureSecret(secret("user-pin"), func() string { return randomText(24) })
	if err != nil {
		return "", nil, err
	}
	if err := ensureToken(module, conf, DefaultTokenLabel, "the default key store", secret("so-pin"), secret("user-pin"),
		soNew || userNew, dbExisted, recorded[""], backups); err != nil {
		return "", nil, err
	}
	var clusters []config.ClusterConfig
	var clusterInfo []BootstrapCluster
	for i := 1; i <= bootstrapClusters; i++ {
		n := fmt.Sprint(i)
		if _, err := ensureSecret(secret("cluster-"+n+"-id"), func() string { return "cluster-" + randomClusterSuffix(11) }); err != nil {
			return "", nil, err
		}
		soNew, err := ensureSecret(secret("cluster-"+n+"-so-pin"), func() string { return randomText(24) })
		if err != nil {
			return "", nil, err
		}
		pwNew, err := ensureSecret(secret("cluster-"+n+"-kmsuser-password"), func() string { return randomClusterSuffix(24) })
		if err != nil {
			return "", nil, err
		}
		label := "hsmkms-cluster-" + n
		id, err := config.ReadSecret("secret", secret("cluster-"+n+"-id"), "")
		if err != nil {
			return "", nil, err
		}
		err = ensureToken(module, conf, label, "cluster "+id, secret("cluster-"+n+"-so-pin"), secret("cluster-"+n+"-kmsuser-password"),
			soNew || pwNew, dbExisted, recorded[id], backups)
		var refused *keystore.TokenProblem
		if errors.As(err, &refused) {
			// Still declared: a key store on it goes FAILED with
			// CLUSTER_NOT_FOUND when it connects, and the keys the
			// database names on it are not silently given up.
			log.Error("a cluster token of the data directory is gone; not making a new one", "cluster", id, "error", err)
		} else if err != nil {
			return "", nil, err
		}
		pw, err := config.ReadSecret("secret", secret("cluster-"+n+"-kmsuser-password"), "")
		if err != nil {
			return "", nil, err
		}
		clusters = append(clusters, config.ClusterConfig{ID: id, Module: module, TokenLabel: label, PoolSize: 4})
		clusterInfo = append(clusterInfo, BootstrapCluster{ID: id, PasswordFile: secret("cluster-" + n + "-kmsuser-password"), Password: pw})
	}
	xksInfo, xksCfg, err := ensureXKS(dir, module, conf, xksListen, xksHost, xksPort, dbExisted, backups, log)
	if err != nil {
		return "", nil, err
	}
	if _, err := ensureSecret(secret("admin-access-key-id"), func() string { return "AKIA" + randomKeyID(16) }); err != nil {
		return "", nil, err
	}
	if _, err := ensureSecret(secret("admin-secret"), func() string { return randomText(30) }); err != nil {
		return "", nil, err
	}
	keyID, err := config.ReadSecret("secret", secret("admin-access-key-id"), "")
	if err != nil {
		return "", nil, err
	}
	adminSecret, err := config.ReadSecret("secret", secret("admin-secret"), "")
	if err != nil {
		return "", nil, err
	}
	if err := ensureTLS(filepath.Join(dir, "tls"), host); err != nil {
		return "", nil, err
	}
	creds := fmt.Sprintf("# hsmkms admin access key (account %s). Use with AWS_SHARED_CREDENTIALS_FILE.\n[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", defaultAccount, keyID, adminSecret)
	if err := writeFileAtomic(filepath.Join(dir, "credentials"), []byte(creds), 0o600); err != nil {
		return "", nil, err
	}

	cfg := config.Config{
		Version:  1,
		Listen:   listen,
		TLS:      config.TLSConfig{CertFile: "tls/server.pem", KeyFile: "tls/server-key.pem"},
		LogLevel: "info",
		Database: config.DatabaseConfig{Path: "hsmkms.db"},
		NodeID:   o.NodeID,
		DefaultKeyStore: config.KeyStoreConfig{
			Module:     module,
			ModuleEnv:  map[string]string{"SOFTHSM2_CONF": conf},
			TokenLabel: DefaultTokenLabel,
			PINFile:    "secrets/user-pin",
			PoolSize:   8,
		},
		Principals: []config.Principal{{
			AccessKeyID: keyID, SecretFile: "secrets/admin-secret",
			AccountID: defaultAccount, ARN: "arn:aws:iam::" + defaultAccount + ":user/hsmkms-admin",
			Policy: kms.AdminPolicy,
		}},
		Clusters: clusters,
		Audit:    config.AuditConfig{Directory: "audit"},
		XKSProxy: xksCfg,
		ExternalKeyStores: &config.ExternalKeyStoresConfig{
			CAFile: "tls/ca.pem",
			// AWS KMS gives a proxy 250 ms; a development machine shared
			// with builds and tests needs more room.
			Timeout:   "1s",
			ConnectTo: map[string]string{xksEndpointHost: net.JoinHostPort(loopbackFor(xksHost), xksPort)},
		},
	}
	if o.NodeID != "" {
		// A trail is one process's: nodes sharing the directory each
		// write their own.
		cfg.Audit.Directory = "audit-" + o.NodeID
	}
	if o.DatabaseURLFile != "" {
		// The copies of token.object files stay where SQLite's would be:
		// every node sharing the directory uses the same copies.
		cfg.Database = config.DatabaseConfig{Postgres: &config.PostgresConfig{URLFile: o.DatabaseURLFile}, TokenBackups: "token-backups"}
	}
	out, err := yaml.Marshal(&cfg)
	if err != nil {
		return "", nil, err
	}
	header := "# Written by `hsmkms serve --data-dir` on every start; edit a copy and run it with --config.\n"
	path := filepath.Join(dir, "hsmkms.yaml")
	if o.NodeID != "" {
		path = filepath.Join(dir, "hsmkms-"+o.NodeID+".yaml")
	}
	if err := writeFileAtomic(path, append([]byte(header), out...), 0o600); err != nil {
		return "", nil, err
	}
	if host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
		host = "127.0.0.1"
	}
	return path, &BootstrapInfo{
		Endpoint:        "https://" + net.JoinHostPort(host, port),
		CABundle:        filepath.Join(dir, "tls", "ca.pem"),
		CredentialsFile: filepath.Join(dir, "credentials"),
		Region:          DefaultRegion,
		Clusters:        clusterInfo,
		XKS:             xksInfo,
	}, nil
}

// loopbackFor is the address to reach a listener on host from this
// machine: the unspecified address is reached on loopback.
func loopbackFor(host string) string {
	if host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
		return "127.0.0.1"
	}
	return host
}

// recordedSerials reads, from an existing database, the serial recorded
// for the default key store's token (key "") and for the token of each
// cluster a custom key store uses (key: cluster id), to name a token that
// went missing precisely.
func recordedSerials(dbPath string) (map[string]string, error) {
	db, err := store.OpenSQLite(dbPath)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	ctx := context.Background()
	out := map[string]string{}
	if id, err := db.TokenIdentity(ctx, ""); err == nil {
		out[""] = id.Serial
	}
	stores, err := db.AllKeyStores(ctx)
	if err != nil {
		return nil, err
	}
	for _, ks := range stores {
		if id, err := db.TokenIdentity(ctx, ks.ID); err == nil && id.ClusterID == ks.ClusterID {
			out[ks.ClusterID] = id.Serial
		}
	}
	return out, nil
}

// randomClusterSuffix is n characters of AWS's cluster id alphabet. It also
// makes the initial kmsuser passwords: plain letters and digits paste safely
// into a shell and never look like a CLI option.
func randomClusterSuffix(n int) string {
	const alphabet = "234567abcdefghijklmnopqrstuvwxyz"
	b := randomBytes(n)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// ensureToken initialises the token, but only when nothing says it ever
// existed: a token that vanished from a data directory is never silently
// replaced by a blank one under its label (its keys would be gone, and the
// database would go on naming them). What says it existed: the database
// together with PIN files from an earlier run, hsmkms's copy of its
// token.object (taken right after it was made), or token directories
// SoftHSM2 cannot read. Then it refuses, with a *keystore.TokenProblem
// naming the token, its directory and the recovery steps. An interrupted
// first run (PIN files written, no token, no database) still completes.
// SOFTHSM2_CONF must point at the store (conf) before the module loads.
func ensureToken(module, conf, label, role, soPINFile, userPINFile string, pinsNew, dbExisted bool, recordedSerial string, backups *keystore.TokenBackups) error {
	_, err := ensureTokenMade(module, conf, label, role, soPINFile, userPINFile, pinsNew, dbExisted, recordedSerial, backups)
	return err
}

// ensureTokenMade is ensureToken, also saying whether it made the token
// now.
func ensureTokenMade(module, conf, label, role, soPINFile, userPINFile string, pinsNew, dbExisted bool, recordedSerial string, backups *keystore.TokenBackups) (bool, error) {
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return false, err
	}
	m, err := hsm.OpenModule(module)
	if err != nil {
		return false, err
	}
	defer m.Close()
	tokens, err := m.Tokens()
	if err != nil {
		return false, err
	}
	for _, t := range tokens {
		if t.Label == label {
			if pinsNew {
				return false, fmt.Errorf("token %q exists but its PIN files in %s were missing; restore them or start with a new --data-dir", label, filepath.Dir(soPINFile))
			}
			return false, nil
		}
	}
	cfg := hsm.TokenConfig{Module: module, Label: label}
	var existed []string
	if recordedSerial != "" {
		existed = append(existed, "the database recorded it")
	}
	if dbExisted && !pinsNew {
		existed = append(existed, "the database and the token's PIN files are from an earlier run")
	}
	dir, serial := "", recordedSerial
	if t, ok := backups.Find(cfg, recordedSerial); ok {
		existed = append(existed, "hsmkms knows its directory")
		dir, serial = t.Describe(), t.Serial
	} else if backups != nil {
		dirs, err := backups.Store().Tokens()
		if err != nil {
			return false, err
		}
		for _, t := range dirs {
			if t.Damage != nil {
				existed = append(existed, "SoftHSM2 cannot read "+t.Describe()+", which may be it")
			}
		}
	}
	if len(existed) > 0 {
		return false, &keystore.TokenProblem{Store: role, Token: cfg, Serial: serial, Dir: dir, Err: hsm.ErrTokenNotFound,
			Problem: "the module offers no token with this label, and this data directory had one (" + strings.Join(existed, "; ") +
				"); tokens are initialised only in a new data directory"}
	}
	so, err := config.ReadSecret("pin", soPINFile, "")
	if err != nil {
		return false, err
	}
	user, err := config.ReadSecret("pin", userPINFile, "")
	if err != nil {
		return false, err
	}
	info, err := m.InitToken(label, so, user)
	if err != nil {
		return false, err
	}
	// The first copy, from before any login, also records that the token
	// was made.
	return true, backups.Save(info)
}

// ensureSecret writes gen() to path (0600) unless the file exists, and
// reports whether it wrote it.
func ensureSecret(path string, gen func() string) (bool, error) {
	if _, err := os.Stat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	return true, writeFileAtomic(path, []byte(gen()+"\n"), 0o600)
}

// writeFileAtomic writes via a temporary file, fsync and rename, so a crash
// leaves the old file or the new one, never half of one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return b
}

// randomText is n random bytes as URL-safe base64: printable, so it
// survives INI files, YAML and PKCS#11 PIN fields.
func randomText(n int) string { return base64.RawURLEncoding.EncodeToString(randomBytes(n)) }

// randomKeyID is n upper-case letters and digits, as AWS access key ids.
func randomKeyID(n int) string {
	s := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(randomBytes(n))
	return strings.ToUpper(s[:n])
}

// PasteBlock is the shell snippet that points the AWS CLI and SDKs at a
// --data-dir instance, and what the clients that read the environment
// differently need: the AWS SDK for JavaScript v3 trusts only
// NODE_EXTRA_CA_CERTS (it ignores AWS_CA_BUNDLE), SOPS wants a key ARN,
// and Vault's awskms seal ignores AWS_ENDPOINT_URL_KMS. AWS_REGION comes
// last among the exports: scripts wait for it.
func PasteBlock(info *BootstrapInfo) string {
	return fmt.Sprintf(`export AWS_ENDPOINT_URL_KMS=%[1]s
export AWS_CA_BUNDLE=%[2]s
export NODE_EXTRA_CA_CERTS=%[2]s
export AWS_SHARED_CREDENTIALS_FILE=%[3]s
export AWS_DEFAULT_REGION=%[4]s
export AWS_REGION=%[4]s

Then, for example:

  aws kms create-key --description "my first hsmkms key"

SOPS takes the key by its ARN:

  sops --encrypt --kms "$(aws kms describe-key --key-id <KeyId> --query KeyMetadata.Arn --output text)" secrets.yaml

Vault's awskms seal ignores AWS_ENDPOINT_URL_KMS: name the endpoint in the seal stanza,

  seal "awskms" {
    region     = "%[4]s"
    kms_key_id = "<KeyId>"
    endpoint   = "%[1]s"
  }

and start Vault with AWS_SHARED_CREDENTIALS_FILE=%[3]s
and SSL_CERT_FILE=%[2]s in its environment (leave AWS_CA_BUNDLE out of it:
Vault builds whose seal uses the AWS SDK for Go v2 refuse to start the seal with it).
`, info.Endpoint, info.CABundle, info.CredentialsFile, info.Region) + clusterBlock(info) + xksBlock(info)
}

// clusterBlock tells how to use the extra tokens as custom key stores.
// The initial kmsuser password stops working at the first connect, which
// rotates it; the file keeps the initial one for reference only.
func clusterBlock(info *BootstrapInfo) string {
	if len(info.Clusters) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\nTokens you can use as CloudHSM clusters for custom key stores:\n\n")
	for _, c := range info.Clusters {
		fmt.Fprintf(&b, "  %s  initial kmsuser password: %s\n", c.ID, c.Password)
	}
	c := info.Clusters[0]
	fmt.Fprintf(&b, `
  aws kms create-custom-key-store --custom-key-store-name my-store \
    --cloud-hsm-cluster-id %s --key-store-password %s \
    --trust-anchor-certificate file://%s
`, c.ID, c.Password, info.CABundle)
	return b.String()
}
