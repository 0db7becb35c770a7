package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/kms/store"
	"go.yaml.in/yaml/v3"
)

// Config is the deployment configuration (`hsmkms serve --config FILE`).
// Secrets are never inline: PINs and secret keys come from files (mode
// 0600) or environment variables, so the file itself can be reviewed and
// versioned.
type Config struct {
	Version         int             `yaml:"version"`
	Listen          string          `yaml:"listen"`
	PlainHTTP       bool            `yaml:"plain_http,omitempty"`
	TLS             TLSConfig       `yaml:"tls,omitempty"`
	LogLevel        string          `yaml:"log_level,omitempty"`
	Database        DatabaseConfig  `yaml:"database"`
	DefaultKeyStore KeyStoreConfig  `yaml:"default_key_store"`
	Principals      []Principal     `yaml:"principals"`
	Clusters        []ClusterConfig `yaml:"clusters,omitempty"`
	Limits          LimitsConfig    `yaml:"limits,omitempty"`
	// Regions are the AWS Regions served; absent means the commercial
	// Regions (kms.CommercialRegions). The XKS proxy accepts signatures
	// scoped to them too.
	Regions []string `yaml:"regions,omitempty"`
	// NodeID names this node among the nodes sharing a database, in logs,
	// metrics and audit records; absent means the host name
	// (kms.DefaultNodeID). Each node needs its own.
	NodeID string `yaml:"node_id,omitempty"`
	// XKSProxy, if present, serves hsmkms as an AWS KMS external key
	// store proxy (xks.go).
	XKSProxy *XKSProxyConfig `yaml:"xks_proxy,omitempty"`
	// ExternalKeyStores is how EXTERNAL_KEY_STORE custom key stores reach
	// their proxies.
	ExternalKeyStores *ExternalKeyStoresConfig `yaml:"external_key_stores,omitempty"`
	// DomainKeyRotationDays, if positive, replaces a key store's domain
	// key once it is that old (see "How keys are held"); 0 means only by
	// `hsmkms domain-keys --rotate`.
	DomainKeyRotationDays int `yaml:"domain_key_rotation_days,omitempty"`
	// Audit is the audit trail; on unless disabled.
	Audit AuditConfig `yaml:"audit,omitempty"`
	// Endpoints are the unauthenticated GET endpoints on the API
	// listener; each on unless turned off.
	Endpoints EndpointsConfig `yaml:"endpoints,omitempty"`
}

// AuditConfig is the audit trail (kms.AuditConfig): every call recorded
// before it is answered, in signed, hash-chained files.
type AuditConfig struct {
	// Enabled: absent means true. A deployment without a trail must say so.
	Enabled *bool `yaml:"enabled,omitempty"`
	// Directory holds the trail; absent means audit/ beside the database.
	Directory string `yaml:"directory,omitempty"`
	// MaxFileSize seals a file at this size: bytes, or with KiB, MiB or
	// GiB ("100MiB", the default).
	MaxFileSize string `yaml:"max_file_size,omitempty"`
	// RotationInterval seals a file at this age; at most (and by
	// default) 1h, so a digest is written at least hourly.
	RotationInterval string `yaml:"rotation_interval,omitempty"`
	// RetentionDays deletes sealed files and digests older than this many
	// days (announced in the trail first); 0 keeps everything.
	RetentionDays int `yaml:"retention_days,omitempty"`
	// LogEncryptionContext: absent means true, as AWS logs them.
	LogEncryptionContext *bool `yaml:"log_encryption_context,omitempty"`

	resolved *kms.AuditConfig // nil when disabled; set by validate
}

// Trail is what the service opens the trail with; nil when disabled.
func (a *AuditConfig) Trail() *kms.AuditConfig { return a.resolved }

// AuditDir is where the trail is, enabled or not (for `audit verify`).
func (c *Config) AuditDir() string {
	if c.Audit.Directory != "" {
		return c.Audit.Directory
	}
	return filepath.Join(filepath.Dir(c.Database.Path), "audit")
}

// EndpointsConfig turns the operational endpoints off; each is on unless
// set to false.
type EndpointsConfig struct {
	Healthz *bool `yaml:"healthz,omitempty"`
	Readyz  *bool `yaml:"readyz,omitempty"`
	Metrics *bool `yaml:"metrics,omitempty"`
}

// Endpoints is what the handler serves.
func (e EndpointsConfig) Endpoints() kms.Endpoints {
	on := func(b *bool) bool { return b == nil || *b }
	return kms.Endpoints{Healthz: on(e.Healthz), Readyz: on(e.Readyz), Metrics: on(e.Metrics)}
}

// Key material modes of key_material.
const (
	KeyMaterialWrapped      = "wrapped"
	KeyMaterialTokenObjects = "token_objects"
)

// UnwrappedKeysConfig bounds a key store's cache of wrapped material kept
// unwrapped on its token.
type UnwrappedKeysConfig struct {
	MaxKeys      int `yaml:"max_keys,omitempty"`
	MaxMemoryMiB int `yaml:"max_memory_mib,omitempty"`
}

func (u UnwrappedKeysConfig) validate(at string) error {
	switch {
	case u.MaxKeys < 0 || u.MaxKeys > 10_000_000:
		return fmt.Errorf("%s.unwrapped_keys.max_keys: must be between 1 and 10000000 (absent for the default)", at)
	case u.MaxMemoryMiB < 0 || u.MaxMemoryMiB > 1<<20:
		return fmt.Errorf("%s.unwrapped_keys.max_memory_mib: must be between 1 and 1048576 (absent for the default)", at)
	}
	return nil
}

func validKeyMaterial(at, mode string) error {
	switch mode {
	case "", KeyMaterialWrapped, KeyMaterialTokenObjects:
		return nil
	}
	return fmt.Errorf("%s.key_material: must be wrapped or token_objects (got %q)", at, mode)
}

// LimitsConfig bounds the HTTP edge: what is served at once, and how long
// the excess may wait before it is throttled.
type LimitsConfig struct {
	// MaxInFlight is how many requests are served at once; 0 means
	// kms.DefaultMaxInFlight.
	MaxInFlight int `yaml:"max_in_flight,omitempty"`
	// QueueWait is a duration ("50ms"); "" means kms.DefaultQueueWait and
	// "0s" throttles at once.
	QueueWait string `yaml:"queue_wait,omitempty"`
	// CachedKeys is how many keys' metadata a node keeps in memory; 0
	// means store.DefaultKeyCacheSize. A key not cached costs a database
	// read on its next use.
	CachedKeys int `yaml:"cached_keys,omitempty"`

	queueWait time.Duration // QueueWait, resolved by validate
}

// Wait is how long a request beyond MaxInFlight may wait for a place.
func (l *LimitsConfig) Wait() time.Duration { return l.queueWait }

// maxQueueWait keeps a throttled client's answer prompt: the SDKs back
// off and retry on ThrottlingException, which serves them better than a
// long wait in a queue.
const maxQueueWait = 10 * time.Second

// ClusterConfig declares a token that may back a custom key store, under
// the id AWS clients use for a CloudHSM cluster.
type ClusterConfig struct {
	ID          string `yaml:"id"`
	Module      string `yaml:"module"`
	TokenLabel  string `yaml:"token_label,omitempty"`
	TokenSerial string `yaml:"token_serial,omitempty"`
	// The expected identity of the device; a token that differs is refused
	// as the wrong device.
	Manufacturer string `yaml:"manufacturer,omitempty"`
	Model        string `yaml:"model,omitempty"`
	Serial       string `yaml:"serial,omitempty"`
	PoolSize     int    `yaml:"pool_size,omitempty"`
	// KeyMaterial is how a custom key store on this cluster holds key
	// material: token_objects (the default, as AWS keeps a CloudHSM key
	// store's keys in the cluster) or wrapped.
	KeyMaterial   string              `yaml:"key_material,omitempty"`
	UnwrappedKeys UnwrappedKeysConfig `yaml:"unwrapped_keys,omitempty"`
}

// TLSConfig is the server certificate and key, PEM files.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// TokenBackupDir is where hsmkms keeps its copies of SoftHSM2 token.object
// files for the SQLite database at path (see keystore.TokenBackups): beside
// the database, in hsmkms's own directory.
func TokenBackupDir(path string) string {
	return filepath.Join(filepath.Dir(path), "token-backups")
}

// DatabaseConfig is where the metadata database lives: exactly one of a
// SQLite file (Path, the embedded default) and a PostgreSQL database
// (Postgres), which several nodes may share.
type DatabaseConfig struct {
	Path     string          `yaml:"path,omitempty"`
	Postgres *PostgresConfig `yaml:"postgres,omitempty"`
	// TokenBackups is the directory of hsmkms's copies of SoftHSM2
	// token.object files; absent means beside Path. Nodes sharing one
	// SoftHSM2 token store should share it.
	TokenBackups string `yaml:"token_backups,omitempty"`
}

// PostgresConfig names the PostgreSQL database. Its URL holds the
// password, so it comes from a file (0600) or an environment variable,
// never the configuration itself.
type PostgresConfig struct {
	URLFile string `yaml:"url_file,omitempty"`
	URLEnv  string `yaml:"url_env,omitempty"`
}

// URL reads the PostgreSQL URL; "" when the database is SQLite. Errors
// never contain it.
func (d DatabaseConfig) URL() (string, error) {
	if d.Postgres == nil {
		return "", nil
	}
	u, err := ReadSecret("url", d.Postgres.URLFile, d.Postgres.URLEnv)
	if err != nil {
		return "", fmt.Errorf("database.postgres.%w", err)
	}
	return u, nil
}

// TokenBackupDir is where the copies of SoftHSM2 token.object files are
// kept: token_backups, else beside the SQLite file; "" for none.
func (d DatabaseConfig) TokenBackupDir() string {
	switch {
	case d.TokenBackups != "":
		return d.TokenBackups
	case d.Path != "":
		return TokenBackupDir(d.Path)
	}
	return ""
}

// KeyStoreConfig names a token through its PKCS#11 module.
type KeyStoreConfig struct {
	Module string `yaml:"module"`
	// ModuleEnv is set in the process environment before the module is
	// loaded: PKCS#11 libraries read their own configuration from it
	// (SOFTHSM2_CONF, ChrystokiConfigurationPath, ...).
	ModuleEnv   map[string]string `yaml:"module_env,omitempty"`
	TokenLabel  string            `yaml:"token_label,omitempty"`
	TokenSerial string            `yaml:"token_serial,omitempty"`
	PINFile     string            `yaml:"pin_file,omitempty"`
	PINEnv      string            `yaml:"pin_env,omitempty"`
	PoolSize    int               `yaml:"pool_size,omitempty"`
	// KeyMaterial is how the default key store holds the material of new
	// keys: wrapped or token_objects; "" decides from the database (wrapped
	// for a new deployment, token_objects for one whose keys are).
	KeyMaterial   string              `yaml:"key_material,omitempty"`
	UnwrappedKeys UnwrappedKeysConfig `yaml:"unwrapped_keys,omitempty"`
}

// PIN reads the user PIN from its file or environment variable.
func (k *KeyStoreConfig) PIN() (string, error) {
	return ReadSecret("pin", k.PINFile, k.PINEnv)
}

// Principal is an access key allowed to call the API.
type Principal struct {
	AccessKeyID string `yaml:"access_key_id"`
	SecretFile  string `yaml:"secret_file,omitempty"`
	SecretEnv   string `yaml:"secret_env,omitempty"`
	AccountID   string `yaml:"account_id"`
	ARN         string `yaml:"arn"`
	// Policy or PolicyFile is the principal's IAM identity policy (JSON).
	// Neither means none: the principal has only what key policies and
	// grants give it directly. Policies are not secret, so inline is fine.
	Policy     string `yaml:"policy,omitempty"`
	PolicyFile string `yaml:"policy_file,omitempty"`
}

// Secret reads the principal's secret access key.
func (p *Principal) Secret() (string, error) {
	return ReadSecret("secret", p.SecretFile, p.SecretEnv)
}

// IdentityPolicy returns the principal's identity policy document, "" if
// it has none.
func (p *Principal) IdentityPolicy() (string, error) {
	if p.PolicyFile == "" {
		return p.Policy, nil
	}
	b, err := os.ReadFile(p.PolicyFile)
	if err != nil {
		return "", fmt.Errorf("policy_file: %w", err)
	}
	return string(b), nil
}

// ReadSecret reads a secret from the environment variable env if set, else
// from file, which must not be readable by group or others. what names the
// YAML key family in errors (pin, secret). Errors never contain the secret.
func ReadSecret(what, file, env string) (string, error) {
	if env != "" {
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return "", fmt.Errorf("%s_env: environment variable %s is not set", what, env)
		}
		return v, nil
	}
	fi, err := os.Stat(file)
	if err != nil {
		return "", fmt.Errorf("%s_file: %w", what, err)
	}
	// A secret readable by others is already leaked; refuse rather than
	// run on it.
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s_file: %s has mode %04o; secrets must not be readable by group or others (chmod 600)", what, file, fi.Mode().Perm())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s_file: %w", what, err)
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return "", fmt.Errorf("%s_file: %s is empty", what, file)
	}
	return v, nil
}

// schema is the shape of the YAML document: for each key, a nested schema
// (mapping), a one-element slice (sequence of that), or the scalar tag it
// must have. Checking the node tree against it first lets every error name
// its YAML path, which yaml's own decoder does not.
var schema = map[string]any{
	"version":    "!!int",
	"listen":     "!!str",
	"plain_http": "!!bool",
	"tls":        map[string]any{"cert_file": "!!str", "key_file": "!!str"},
	"log_level":  "!!str",
	"database": map[string]any{
		"path": "!!str", "postgres": map[string]any{"url_file": "!!str", "url_env": "!!str"}, "token_backups": "!!str",
	},
	"node_id": "!!str",
	"default_key_store": map[string]any{
		"module": "!!str", "module_env": "map", "token_label": "!!str", "token_serial": "!!str",
		"pin_file": "!!str", "pin_env": "!!str", "pool_size": "!!int",
		"key_material": "!!str", "unwrapped_keys": unwrappedKeysSchema,
	},
	"principals": []any{map[string]any{
		"access_key_id": "!!str", "secret_file": "!!str", "secret_env": "!!str", "account_id": "!!str", "arn": "!!str",
		"policy": "!!str", "policy_file": "!!str",
	}},
	"clusters": []any{map[string]any{
		"id": "!!str", "module": "!!str", "token_label": "!!str", "token_serial": "!!str",
		"manufacturer": "!!str", "model": "!!str", "serial": "!!str", "pool_size": "!!int",
		"key_material": "!!str", "unwrapped_keys": unwrappedKeysSchema,
	}},
	"limits":                   map[string]any{"max_in_flight": "!!int", "queue_wait": "duration", "cached_keys": "!!int"},
	"regions":                  []any{"!!str"},
	"xks_proxy":                xksProxySchema,
	"external_key_stores":      externalKeyStoresSchema,
	"domain_key_rotation_days": "!!int",
	"audit": map[string]any{"enabled": "!!bool", "directory": "!!str", "max_file_size": "!!str",
		"rotation_interval": "duration", "retention_days": "!!int", "log_encryption_context": "!!bool"},
	"endpoints": map[string]any{"healthz": "!!bool", "readyz": "!!bool", "metrics": "!!bool"},
}

var unwrappedKeysSchema = map[string]any{"max_keys": "!!int", "max_memory_mib": "!!int"}

// LoadConfig reads and validates the configuration at path. Relative paths
// inside it are relative to the file's directory.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses and validates a configuration document.
func ParseConfig(data []byte, baseDir string) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, errors.New("empty configuration")
	}
	if err := checkNode(doc.Content[0], schema, ""); err != nil {
		return nil, err
	}
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, err
	}
	if err := cfg.validate(baseDir); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func checkNode(n *yaml.Node, want any, path string) error {
	at := func(format string, args ...any) error {
		p := path
		if p == "" {
			p = "(document)"
		}
		return fmt.Errorf("%s (line %d): %s", p, n.Line, fmt.Sprintf(format, args...))
	}
	switch w := want.(type) {
	case map[string]any:
		if n.Kind != yaml.MappingNode {
			return at("must be a mapping")
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub := k.Value
			if path != "" {
				sub = path + "." + k.Value
			}
			ws, ok := w[k.Value]
			if !ok {
				return fmt.Errorf("%s (line %d): unknown key", sub, k.Line)
			}
			if err := checkNode(v, ws, sub); err != nil {
				return err
			}
		}
	case []any:
		if n.Kind != yaml.SequenceNode {
			return at("must be a list")
		}
		for i, item := range n.Content {
			if err := checkNode(item, w[0], fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case string:
		if w == "duration" {
			if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
				return at("must be a duration such as 50ms or 0s")
			}
			return nil
		}
		if w == "map" {
			if n.Kind != yaml.MappingNode {
				return at("must be a mapping of names to strings")
			}
			for _, c := range n.Content {
				if c.Kind != yaml.ScalarNode {
					return at("must be a mapping of names to strings")
				}
			}
			return nil
		}
		if n.Kind != yaml.ScalarNode || (n.Tag != w && !(w == "!!str" && n.Tag != "!!null")) {
			return at("must be %s", map[string]string{"!!int": "an integer", "!!str": "a string", "!!bool": "true or false"}[w])
		}
	}
	return nil
}

var (
	accessKeyIDRe = regexp.MustCompile(`^[A-Z0-9]{16,128}$`)
	accountIDRe   = regexp.MustCompile(`^[0-9]{12}$`)
	principalRe   = regexp.MustCompile(`^arn:aws:iam::([0-9]{12}):(user|role)/[\w+=,.@/-]{1,512}$`)
	envNameRe     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	clusterIDRe   = regexp.MustCompile(`^cluster-[2-7a-zA-Z]{11,16}$`)
)

func (c *Config) validate(baseDir string) error {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(baseDir, p)
	}
	if c.Version != 1 {
		return fmt.Errorf("version: must be 1 (got %d)", c.Version)
	}
	if c.Listen == "" {
		return errors.New("listen: required (HOST:PORT)")
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("listen: %v", err)
	}
	if c.PlainHTTP {
		if !isLoopback(host) {
			return fmt.Errorf("plain_http: only allowed on a loopback address; listen is %q", c.Listen)
		}
	} else {
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			return errors.New("tls: cert_file and key_file are required (or plain_http: true on a loopback address)")
		}
		c.TLS.CertFile, c.TLS.KeyFile = abs(c.TLS.CertFile), abs(c.TLS.KeyFile)
	}
	switch c.LogLevel {
	case "":
		c.LogLevel = "info"
	case "trace", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: must be one of trace, debug, info, warn, error (got %q)", c.LogLevel)
	}
	if err := c.Database.validate(abs); err != nil {
		return err
	}
	if c.NodeID != "" && !kms.ValidNodeID(c.NodeID) {
		return fmt.Errorf("node_id: %q must be 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit", c.NodeID)
	}

	ks := &c.DefaultKeyStore
	switch {
	case ks.Module == "":
		return errors.New("default_key_store.module: required (absolute path of the PKCS#11 library)")
	case !filepath.IsAbs(ks.Module):
		return fmt.Errorf("default_key_store.module: %q is not an absolute path", ks.Module)
	case (ks.TokenLabel == "") == (ks.TokenSerial == ""):
		return errors.New("default_key_store: exactly one of token_label and token_serial is required")
	case (ks.PINFile == "") == (ks.PINEnv == ""):
		return errors.New("default_key_store: exactly one of pin_file and pin_env is required")
	case ks.PINEnv != "" && !envNameRe.MatchString(ks.PINEnv):
		return fmt.Errorf("default_key_store.pin_env: %q is not an environment variable name", ks.PINEnv)
	case ks.PoolSize < 0 || ks.PoolSize > 1024:
		return fmt.Errorf("default_key_store.pool_size: must be between 1 and 1024 (0 for the default)")
	}
	if err := validKeyMaterial("default_key_store", ks.KeyMaterial); err != nil {
		return err
	}
	if err := ks.UnwrappedKeys.validate("default_key_store"); err != nil {
		return err
	}
	ks.PINFile = abs(ks.PINFile)
	for k := range ks.ModuleEnv {
		if !envNameRe.MatchString(k) {
			return fmt.Errorf("default_key_store.module_env: %q is not an environment variable name", k)
		}
	}

	if len(c.Principals) == 0 {
		return errors.New("principals: at least one is required")
	}
	seen := map[string]bool{}
	for i := range c.Principals {
		p := &c.Principals[i]
		at := fmt.Sprintf("principals[%d]", i)
		switch {
		case !accessKeyIDRe.MatchString(p.AccessKeyID):
			return fmt.Errorf("%s.access_key_id: must be 16-128 upper-case letters and digits", at)
		case seen[p.AccessKeyID]:
			return fmt.Errorf("%s.access_key_id: %s is declared twice", at, p.AccessKeyID)
		case (p.SecretFile == "") == (p.SecretEnv == ""):
			return fmt.Errorf("%s: exactly one of secret_file and secret_env is required", at)
		case p.SecretEnv != "" && !envNameRe.MatchString(p.SecretEnv):
			return fmt.Errorf("%s.secret_env: %q is not an environment variable name", at, p.SecretEnv)
		case !accountIDRe.MatchString(p.AccountID):
			return fmt.Errorf("%s.account_id: must be 12 digits", at)
		}
		m := principalRe.FindStringSubmatch(p.ARN)
		if m == nil {
			return fmt.Errorf("%s.arn: must be an IAM user or role ARN (arn:aws:iam::ACCOUNT:user/NAME)", at)
		}
		if m[1] != p.AccountID {
			return fmt.Errorf("%s.arn: account %s does not match account_id %s", at, m[1], p.AccountID)
		}
		if p.Policy != "" && p.PolicyFile != "" {
			return fmt.Errorf("%s: at most one of policy and policy_file", at)
		}
		seen[p.AccessKeyID] = true
		p.SecretFile = abs(p.SecretFile)
		p.PolicyFile = abs(p.PolicyFile)
		doc, err := p.IdentityPolicy()
		if err != nil {
			return fmt.Errorf("%s.%w", at, err)
		}
		if doc != "" {
			if _, err := authz.Parse([]byte(doc), authz.IdentityPolicy); err != nil {
				var me *authz.MalformedError
				if errors.As(err, &me) {
					return fmt.Errorf("%s.policy: %s", at, me.Reason)
				}
				return fmt.Errorf("%s.policy: %w", at, err)
			}
		}
	}
	ids := map[string]bool{}
	for i, cl := range c.Clusters {
		at := fmt.Sprintf("clusters[%d]", i)
		switch {
		case !clusterIDRe.MatchString(cl.ID):
			return fmt.Errorf("%s.id: %q must match cluster-[2-7a-zA-Z]{11,16}, as AWS cluster ids do", at, cl.ID)
		case ids[cl.ID]:
			return fmt.Errorf("%s.id: %s is declared twice", at, cl.ID)
		case !filepath.IsAbs(cl.Module):
			return fmt.Errorf("%s.module: %q is not an absolute path", at, cl.Module)
		case (cl.TokenLabel == "") == (cl.TokenSerial == ""):
			return fmt.Errorf("%s: exactly one of token_label and token_serial is required", at)
		case cl.PoolSize < 0 || cl.PoolSize > 1024:
			return fmt.Errorf("%s.pool_size: must be between 1 and 1024 (0 for the default)", at)
		case cl.Module == ks.Module && ((cl.TokenLabel != "" && cl.TokenLabel == ks.TokenLabel) || (cl.TokenSerial != "" && cl.TokenSerial == ks.TokenSerial)):
			return fmt.Errorf("%s: the default key store's token cannot also be a cluster", at)
		}
		if err := validKeyMaterial(at, cl.KeyMaterial); err != nil {
			return err
		}
		if err := cl.UnwrappedKeys.validate(at); err != nil {
			return err
		}
		ids[cl.ID] = true
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if c.Database.Postgres != nil && c.Database.TokenBackups == "" {
		modules := []string{ks.Module}
		for _, cl := range c.Clusters {
			modules = append(modules, cl.Module)
		}
		for _, m := range modules {
			if keystore.IsSoftHSM(m) {
				return errors.New("database.token_backups: required with database.postgres when a token is SoftHSM2's: " +
					"the directory of the copies of its token.object that undo a crash (shared by the nodes sharing the token store)")
			}
		}
	}
	if c.XKSProxy != nil {
		if err := c.XKSProxy.validate(c, abs); err != nil {
			return err
		}
	}
	if c.ExternalKeyStores != nil {
		if err := c.ExternalKeyStores.validate(abs); err != nil {
			return err
		}
	}
	if c.DomainKeyRotationDays < 0 || c.DomainKeyRotationDays > 36500 {
		return fmt.Errorf("domain_key_rotation_days: must be between 1 and 36500 (absent or 0: only by hsmkms domain-keys --rotate)")
	}
	if err := c.validateAudit(abs); err != nil {
		return err
	}
	return c.validateRegions()
}

func (d *DatabaseConfig) validate(abs func(string) string) error {
	switch {
	case d.Path == "" && d.Postgres == nil:
		return errors.New("database: path (a SQLite file) or postgres is required")
	case d.Path != "" && d.Postgres != nil:
		return errors.New("database: path and postgres are exclusive: the metadata is in a SQLite file or a PostgreSQL database")
	case d.Postgres != nil && (d.Postgres.URLFile == "") == (d.Postgres.URLEnv == ""):
		return errors.New("database.postgres: exactly one of url_file and url_env is required")
	case d.Postgres != nil && d.Postgres.URLEnv != "" && !envNameRe.MatchString(d.Postgres.URLEnv):
		return fmt.Errorf("database.postgres.url_env: %q is not an environment variable name", d.Postgres.URLEnv)
	}
	d.Path, d.TokenBackups = abs(d.Path), abs(d.TokenBackups)
	if d.Postgres != nil {
		d.Postgres.URLFile = abs(d.Postgres.URLFile)
	}
	return nil
}

// Bounds of the audit trail's settings.
const (
	minAuditFileSize = 64 << 10
	maxAuditInterval = time.Hour
)

func (c *Config) validateAudit(abs func(string) string) error {
	a := &c.Audit
	a.Directory = abs(a.Directory)
	if a.Enabled != nil && !*a.Enabled {
		a.resolved = nil
		return nil
	}
	if a.Directory == "" && c.Database.Postgres != nil {
		// No SQLite file to put it beside, and one trail is one
		// process's: each node sharing the database writes its own.
		return errors.New("audit.directory: required with database.postgres (each node writes its own audit trail)")
	}
	t := &kms.AuditConfig{Dir: c.AuditDir(), MaxFileSize: 100 << 20, RotationInterval: maxAuditInterval}
	if a.MaxFileSize != "" {
		n, err := parseSize(a.MaxFileSize)
		if err != nil || n < minAuditFileSize {
			return fmt.Errorf("audit.max_file_size: %q must be a size of at least 64KiB, such as 100MiB", a.MaxFileSize)
		}
		t.MaxFileSize = n
	}
	if a.RotationInterval != "" {
		d, err := time.ParseDuration(a.RotationInterval)
		if err != nil || d < time.Second || d > maxAuditInterval {
			return fmt.Errorf("audit.rotation_interval: %q must be a duration from 1s to 1h (a digest at least hourly)", a.RotationInterval)
		}
		t.RotationInterval = d
	}
	if a.RetentionDays < 0 || a.RetentionDays > 36500 {
		return fmt.Errorf("audit.retention_days: must be between 0 (keep everything) and 36500")
	}
	t.Retention = time.Duration(a.RetentionDays) * 24 * time.Hour
	t.OmitEncryptionContext = a.LogEncryptionContext != nil && !*a.LogEncryptionContext
	a.resolved = t
	return nil
}

// parseSize reads a byte count, with an optional KiB, MiB or GiB suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			s, mult = strings.TrimSpace(n), m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("not a size")
	}
	return n * mult, nil
}

func (l *LimitsConfig) validate() error {
	switch {
	case l.MaxInFlight == 0:
		l.MaxInFlight = kms.DefaultMaxInFlight
	case l.MaxInFlight < 0 || l.MaxInFlight > 4096:
		return fmt.Errorf("limits.max_in_flight: must be between 1 and 4096 (absent for the default, %d)", kms.DefaultMaxInFlight)
	}
	switch {
	case l.CachedKeys == 0:
		l.CachedKeys = store.DefaultKeyCacheSize
	case l.CachedKeys < 0 || l.CachedKeys > 10_000_000:
		return fmt.Errorf("limits.cached_keys: must be between 1 and 10000000 (absent for the default, %d)", store.DefaultKeyCacheSize)
	}
	if l.QueueWait == "" {
		l.queueWait = kms.DefaultQueueWait
		return nil
	}
	d, err := time.ParseDuration(l.QueueWait)
	if err != nil {
		return fmt.Errorf("limits.queue_wait: %q is not a duration such as 50ms or 0s", l.QueueWait)
	}
	if d < 0 || d > maxQueueWait {
		return fmt.Errorf("limits.queue_wait: must be between 0s and %s (got %s)", maxQueueWait, d)
	}
	l.queueWait = d
	return nil
}

func (c *Config) validateRegions() error {
	if c.Regions == nil {
		c.Regions = kms.CommercialRegions()
		return nil
	}
	if len(c.Regions) == 0 {
		return errors.New("regions: at least one is required (leave regions out to serve the AWS commercial Regions)")
	}
	seen := map[string]bool{}
	for i, r := range c.Regions {
		switch {
		case !kms.ValidRegion(r):
			return fmt.Errorf("regions[%d]: %q is not a Region name such as eu-west-1", i, r)
		case seen[r]:
			return fmt.Errorf("regions[%d]: %s is listed twice", i, r)
		}
		seen[r] = true
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
