package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/kms"
	"github.com/stretchr/testify/require"
)

const validConfig = `
version: 1
listen: 0.0.0.0:8443
tls:
  cert_file: tls/server.pem
  key_file: /etc/hsmkms/server-key.pem
log_level: warn
database:
  path: /var/lib/hsmkms/hsmkms.db
default_key_store:
  module: /usr/lib/softhsm/libsofthsm2.so
  module_env:
    SOFTHSM2_CONF: /etc/hsmkms/softhsm2.conf
  token_label: hsmkms-default
  pin_env: HSMKMS_USER_PIN
  pool_size: 16
principals:
  - access_key_id: AKIAEXAMPLEADMIN0001
    secret_file: secrets/admin
    account_id: "111122223333"
    arn: arn:aws:iam::111122223333:user/admin
  - access_key_id: AKIAEXAMPLEAPP000001
    secret_env: HSMKMS_APP_SECRET
    account_id: 444455556666
    arn: arn:aws:iam::444455556666:role/app
`

func TestPrincipalPolicyFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "app.json"), []byte(`{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}}`), 0o644))
	doc := strings.Replace(validConfig, "    arn: arn:aws:iam::444455556666:role/app", "    arn: arn:aws:iam::444455556666:role/app\n    policy_file: app.json", 1)
	cfg, err := ParseConfig([]byte(doc), dir)
	require.NoError(t, err)
	pol, err := cfg.Principals[1].IdentityPolicy()
	require.NoError(t, err)
	require.Contains(t, pol, "kms:Decrypt")
	pol, err = cfg.Principals[0].IdentityPolicy()
	require.NoError(t, err)
	require.Empty(t, pol, "no policy: only key policies and grants")
}

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(validConfig), "/etc/hsmkms")
	require.NoError(t, err)
	require.Equal(t, "/etc/hsmkms/tls/server.pem", cfg.TLS.CertFile, "relative paths are relative to the config file")
	require.Equal(t, "/etc/hsmkms/server-key.pem", cfg.TLS.KeyFile)
	require.Equal(t, "warn", cfg.LogLevel)
	require.Equal(t, 16, cfg.DefaultKeyStore.PoolSize)
	require.Equal(t, "/etc/hsmkms/softhsm2.conf", cfg.DefaultKeyStore.ModuleEnv["SOFTHSM2_CONF"])
	require.Len(t, cfg.Principals, 2)
	require.Equal(t, "/etc/hsmkms/secrets/admin", cfg.Principals[0].SecretFile)
	require.Equal(t, "444455556666", cfg.Principals[1].AccountID)
}

func TestParseConfigErrorsNameThePath(t *testing.T) {
	edit := func(old, new string) string {
		require.Contains(t, validConfig, old)
		return strings.Replace(validConfig, old, new, 1)
	}
	cases := map[string]struct{ doc, want string }{
		"unknown top-level key": {validConfig + "listen_addr: x\n", "listen_addr (line 26): unknown key"},
		"unknown nested key":    {edit("  pool_size: 16", "  pool_sise: 16"), "default_key_store.pool_sise (line 16): unknown key"},
		"unknown key in list":   {edit("    secret_env: HSMKMS_APP_SECRET", "    secret: hunter2"), "principals[1].secret (line 23): unknown key"},
		"wrong type":            {edit("pool_size: 16", "pool_size: many"), "default_key_store.pool_size (line 16): must be an integer"},
		"mapping expected":      {edit("database:\n  path: /var/lib/hsmkms/hsmkms.db", "database: /var/lib/hsmkms/hsmkms.db"), "database (line 8): must be a mapping"},
		"missing version":       {edit("version: 1\n", ""), "version: must be 1 (got 0)"},
		"future version":        {edit("version: 1", "version: 2"), "version: must be 1 (got 2)"},
		"plain http exposed":    {edit("tls:", "plain_http: true\ntls:"), `plain_http: only allowed on a loopback address; listen is "0.0.0.0:8443"`},
		"relative module":       {edit("module: /usr/lib/softhsm/libsofthsm2.so", "module: libsofthsm2.so"), `default_key_store.module: "libsofthsm2.so" is not an absolute path`},
		"label and serial":      {edit("  token_label: hsmkms-default", "  token_label: a\n  token_serial: b"), "default_key_store: exactly one of token_label and token_serial is required"},
		"two pin sources":       {edit("  pin_env: HSMKMS_USER_PIN", "  pin_env: HSMKMS_USER_PIN\n  pin_file: /x"), "default_key_store: exactly one of pin_file and pin_env is required"},
		"bad account":           {edit(`account_id: "111122223333"`, `account_id: "1111"`), "principals[0].account_id: must be 12 digits"},
		"arn of other account":  {edit("arn:aws:iam::111122223333:user/admin", "arn:aws:iam::999999999999:user/admin"), "principals[0].arn: account 999999999999 does not match account_id 111122223333"},
		"duplicate key id":      {edit("AKIAEXAMPLEAPP000001", "AKIAEXAMPLEADMIN0001"), "principals[1].access_key_id: AKIAEXAMPLEADMIN0001 is declared twice"},
		"no tls":                {edit("  cert_file: tls/server.pem\n", ""), "tls: cert_file and key_file are required"},
		"malformed policy": {edit("    arn: arn:aws:iam::444455556666:role/app", "    arn: arn:aws:iam::444455556666:role/app\n    policy: '{\"Statement\":[{\"Effect\":\"Allow\",\"Principal\":\"*\",\"Action\":\"kms:*\",\"Resource\":\"*\"}]}'"),
			"principals[1].policy: "},
		"two policy sources": {edit("    arn: arn:aws:iam::444455556666:role/app", "    arn: arn:aws:iam::444455556666:role/app\n    policy: '{}'\n    policy_file: p.json"),
			"principals[1]: at most one of policy and policy_file"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.doc), "/etc/hsmkms")
			require.Error(t, err)
			require.Contains(t, err.Error(), c.want)
		})
	}
}

func TestPlainHTTPOnLoopback(t *testing.T) {
	doc := strings.Replace(validConfig, "listen: 0.0.0.0:8443\ntls:", "listen: 127.0.0.1:8080\nplain_http: true\ntls:", 1)
	cfg, err := ParseConfig([]byte(doc), "/etc/hsmkms")
	require.NoError(t, err)
	require.True(t, cfg.PlainHTTP)
}

func TestSecretsComeFromFilesOrEnv(t *testing.T) {
	dir := t.TempDir()
	p := Principal{SecretFile: filepath.Join(dir, "s")}
	require.NoError(t, os.WriteFile(p.SecretFile, []byte("s3cret\n"), 0o644))
	_, err := p.Secret()
	require.ErrorContains(t, err, "must not be readable by group or others")
	require.NotContains(t, err.Error(), "s3cret")
	require.NoError(t, os.Chmod(p.SecretFile, 0o600))
	s, err := p.Secret()
	require.NoError(t, err)
	require.Equal(t, "s3cret", s)

	t.Setenv("HSMKMS_TEST_SECRET", "from-env")
	s, err = (&Principal{SecretEnv: "HSMKMS_TEST_SECRET"}).Secret()
	require.NoError(t, err)
	require.Equal(t, "from-env", s)
	_, err = (&Principal{SecretEnv: "HSMKMS_TEST_UNSET"}).Secret()
	require.ErrorContains(t, err, "HSMKMS_TEST_UNSET is not set")
}

// TestREADMEConfigExample keeps the documented example valid.
func TestREADMEConfigExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	m := regexp.MustCompile("(?s)<!-- config-example -->\\s*```yaml\n(.*?)```").FindSubmatch(readme)
	require.NotNil(t, m, "README has no config example block")
	_, err = ParseConfig(m[1], "/etc/hsmkms")
	require.NoError(t, err)
}

func TestClustersConfig(t *testing.T) {
	cluster := "\nclusters:\n  - id: cluster-234567abcdefg\n    module: /usr/lib/luna/libCryptoki2_64.so\n    token_label: partition1\n    manufacturer: Thales\n    pool_size: 4\n"
	cfg, err := ParseConfig([]byte(validConfig+cluster), "/etc/hsmkms")
	require.NoError(t, err)
	require.Equal(t, "Thales", cfg.Clusters[0].Manufacturer)
	for bad, want := range map[string]string{
		strings.Replace(cluster, "cluster-234567abcdefg", "cluster-1", 1):                             "clusters[0].id: \"cluster-1\" must match",
		strings.Replace(cluster, "token_label: partition1", "token_label: x\n    token_serial: y", 1): "clusters[0]: exactly one of token_label and token_serial",
		strings.Replace(cluster, "manufacturer", "vendor", 1):                                         "clusters[0].vendor (line 31): unknown key",
	} {
		_, err := ParseConfig([]byte(validConfig+bad), "/etc/hsmkms")
		require.ErrorContains(t, err, want)
	}
	same := strings.Replace(strings.Replace(cluster, "/usr/lib/luna/libCryptoki2_64.so", "/usr/lib/softhsm/libsofthsm2.so", 1), "partition1", "hsmkms-default", 1)
	_, err = ParseConfig([]byte(validConfig+same), "/etc/hsmkms")
	require.ErrorContains(t, err, "the default key store's token cannot also be a cluster")
}

func TestDatabaseConfig(t *testing.T) {
	pg := strings.Replace(validConfig, "database:\n  path: /var/lib/hsmkms/hsmkms.db",
		"node_id: kms-a\ndatabase:\n  postgres:\n    url_file: secrets/db-url\n  token_backups: backups", 1) + "\naudit:\n  directory: audit-kms-a\n"
	cfg, err := ParseConfig([]byte(pg), "/etc/hsmkms")
	require.NoError(t, err)
	require.Equal(t, "kms-a", cfg.NodeID)
	require.Equal(t, "/etc/hsmkms/secrets/db-url", cfg.Database.Postgres.URLFile)
	require.Equal(t, "/etc/hsmkms/backups", cfg.Database.TokenBackupDir())
	cfg, err = ParseConfig([]byte(validConfig), "/etc/hsmkms")
	require.NoError(t, err)
	require.Equal(t, "/var/lib/hsmkms/token-backups", cfg.Database.TokenBackupDir(), "beside the SQLite file by default")
	u, err := cfg.Database.URL()
	require.NoError(t, err)
	require.Empty(t, u, "SQLite: no URL")

	for name, c := range map[string]struct{ from, to, want string }{
		"neither": {"database:\n  path: /var/lib/hsmkms/hsmkms.db", "database:\n  token_backups: /x", "database: path (a SQLite file) or postgres is required"},
		"both": {"  path: /var/lib/hsmkms/hsmkms.db", "  path: /var/lib/hsmkms/hsmkms.db\n  postgres:\n    url_env: DB",
			"database: path and postgres are exclusive"},
		"no url":     {"  path: /var/lib/hsmkms/hsmkms.db", "  postgres: {}\n  token_backups: /x", "database.postgres: exactly one of url_file and url_env"},
		"two urls":   {"  path: /var/lib/hsmkms/hsmkms.db", "  postgres: {url_file: /f, url_env: DB}\n  token_backups: /x", "database.postgres: exactly one of url_file and url_env"},
		"inline url": {"  path: /var/lib/hsmkms/hsmkms.db", "  postgres:\n    url: postgres://u:p@h/db", "database.postgres.url (line 10): unknown key"},
		"no copies of SoftHSM2 tokens": {"  path: /var/lib/hsmkms/hsmkms.db", "  postgres:\n    url_env: DB",
			"database.token_backups: required with database.postgres when a token is SoftHSM2's"},
		"bad node id": {"log_level: warn", "log_level: warn\nnode_id: 'a b'", `node_id: "a b" must be`},
	} {
		t.Run(name, func(t *testing.T) {
			require.Contains(t, validConfig, c.from)
			_, err := ParseConfig([]byte(strings.Replace(validConfig, c.from, c.to, 1)), "/etc/hsmkms")
			require.ErrorContains(t, err, c.want)
			require.NotContains(t, err.Error(), "postgres://u:p")
		})
	}

	// The URL is a secret: from a private file or the environment, never
	// in an error.
	dir := t.TempDir()
	d := DatabaseConfig{Postgres: &PostgresConfig{URLFile: filepath.Join(dir, "url")}}
	require.NoError(t, os.WriteFile(d.Postgres.URLFile, []byte("postgres://hsmkms:s3cret@db/hsmkms\n"), 0o644))
	_, err = d.URL()
	require.ErrorContains(t, err, "database.postgres.url_file: ")
	require.ErrorContains(t, err, "must not be readable by group or others")
	require.NotContains(t, err.Error(), "s3cret")
	require.NoError(t, os.Chmod(d.Postgres.URLFile, 0o600))
	u, err = d.URL()
	require.NoError(t, err)
	require.Equal(t, "postgres://hsmkms:s3cret@db/hsmkms", u)
	t.Setenv("HSMKMS_TEST_DB_URL", "postgres://from-env")
	u, err = DatabaseConfig{Postgres: &PostgresConfig{URLEnv: "HSMKMS_TEST_DB_URL"}}.URL()
	require.NoError(t, err)
	require.Equal(t, "postgres://from-env", u)
}

func TestAuditAndEndpointsConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(validConfig), "/etc/hsmkms")
	require.NoError(t, err)
	a := cfg.Audit.Trail()
	require.NotNil(t, a, "on unless disabled")
	require.Equal(t, "/var/lib/hsmkms/audit", a.Dir, "beside the database")
	require.EqualValues(t, 100<<20, a.MaxFileSize)
	require.Equal(t, time.Hour, a.RotationInterval)
	require.Zero(t, a.Retention)
	require.False(t, a.OmitEncryptionContext, "encryption contexts are logged, as AWS logs them")
	require.Equal(t, kms.Endpoints{Healthz: true, Readyz: true, Metrics: true}, cfg.Endpoints.Endpoints())

	set := "\naudit:\n  directory: trail\n  max_file_size: 8MiB\n  rotation_interval: 15m\n  retention_days: 90\n  log_encryption_context: false\nendpoints:\n  metrics: false\n"
	cfg, err = ParseConfig([]byte(validConfig+set), "/etc/hsmkms")
	require.NoError(t, err)
	a = cfg.Audit.Trail()
	require.Equal(t, "/etc/hsmkms/trail", a.Dir, "relative to the configuration file")
	require.EqualValues(t, 8<<20, a.MaxFileSize)
	require.Equal(t, 15*time.Minute, a.RotationInterval)
	require.Equal(t, 90*24*time.Hour, a.Retention)
	require.True(t, a.OmitEncryptionContext)
	require.Equal(t, kms.Endpoints{Healthz: true, Readyz: true}, cfg.Endpoints.Endpoints())

	cfg, err = ParseConfig([]byte(validConfig+"\naudit:\n  enabled: false\n"), "/etc/hsmkms")
	require.NoError(t, err)
	require.Nil(t, cfg.Audit.Trail())
	require.Equal(t, "/var/lib/hsmkms/audit", cfg.AuditDir(), "where verify looks")

	for bad, want := range map[string]string{
		"\naudit:\n  max_file_size: 1KiB\n":     "audit.max_file_size: \"1KiB\" must be a size of at least 64KiB",
		"\naudit:\n  max_file_size: lots\n":     "audit.max_file_size",
		"\naudit:\n  rotation_interval: 2h\n":   "audit.rotation_interval: \"2h\" must be a duration from 1s to 1h",
		"\naudit:\n  retention_days: -1\n":      "audit.retention_days",
		"\naudit:\n  enabled: maybe\n":          "audit.enabled (line 28): must be true or false",
		"\naudit:\n  dir: x\n":                  "audit.dir (line 28): unknown key",
		"\nendpoints:\n  healthz: yes please\n": "endpoints.healthz (line 28): must be true or false",
		"\nendpoints:\n  pprof: true\n":         "endpoints.pprof (line 28): unknown key",
	} {
		_, err := ParseConfig([]byte(validConfig+bad), "/etc/hsmkms")
		require.ErrorContains(t, err, want, bad)
	}
}

func TestKeyMaterialConfig(t *testing.T) {
	doc := strings.Replace(validConfig, "  pool_size: 16", "  pool_size: 16\n  key_material: wrapped\n  unwrapped_keys:\n    max_keys: 100\n    max_memory_mib: 8", 1) +
		"domain_key_rotation_days: 90\nclusters:\n  - id: cluster-234567abcdefg\n    module: /usr/lib/luna/libCryptoki2_64.so\n    token_label: p1\n    key_material: wrapped\n"
	cfg, err := ParseConfig([]byte(doc), "/etc/hsmkms")
	require.NoError(t, err)
	require.Equal(t, KeyMaterialWrapped, cfg.DefaultKeyStore.KeyMaterial)
	require.Equal(t, UnwrappedKeysConfig{MaxKeys: 100, MaxMemoryMiB: 8}, cfg.DefaultKeyStore.UnwrappedKeys)
	require.Equal(t, 90, cfg.DomainKeyRotationDays)
	require.Equal(t, KeyMaterialWrapped, cfg.Clusters[0].KeyMaterial)

	cfg, err = ParseConfig([]byte(validConfig), "/etc/hsmkms")
	require.NoError(t, err)
	require.Empty(t, cfg.DefaultKeyStore.KeyMaterial, "absent: decided from the database")

	for bad, want := range map[string]string{
		strings.Replace(validConfig, "  pool_size: 16", "  pool_size: 16\n  key_material: blobs", 1):                           `default_key_store.key_material: must be wrapped or token_objects (got "blobs")`,
		strings.Replace(validConfig, "  pool_size: 16", "  pool_size: 16\n  unwrapped_keys:\n    max_keys: -1", 1):             "default_key_store.unwrapped_keys.max_keys: must be between",
		strings.Replace(validConfig, "  pool_size: 16", "  pool_size: 16\n  unwrapped_keys:\n    max_entries: 1", 1):           "default_key_store.unwrapped_keys.max_entries (line 18): unknown key",
		validConfig + "domain_key_rotation_days: -3\n":                                                                         "domain_key_rotation_days: must be between",
		validConfig + "clusters:\n  - id: cluster-234567abcdefg\n    module: /x.so\n    token_label: p\n    key_material: x\n": `clusters[0].key_material: must be wrapped or token_objects`,
	} {
		_, err := ParseConfig([]byte(bad), "/etc/hsmkms")
		require.ErrorContains(t, err, want)
	}
}
