package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hsmkms/hsmkms/kms/authz"
)

// XKSProxyConfig is the `xks_proxy:` section: hsmkms serving as an AWS KMS
// external key store (XKS) proxy for keys on the tokens it names.
type XKSProxyConfig struct {
	// Listen is the proxy's HOST:PORT; it has a listener of its own, so
	// it can face AWS KMS while the KMS API stays private.
	Listen string `yaml:"listen"`
	// TLS is the proxy's certificate; absent means the top-level tls.
	TLS *TLSConfig `yaml:"tls,omitempty"`
	// Timeout bounds a request's token work ("200ms"; "" for the proxy's
	// default): past it the answer is DependencyTimeoutException.
	Timeout string `yaml:"timeout,omitempty"`
	// MaxInFlight bounds the requests served at once (0: 16).
	MaxInFlight int `yaml:"max_in_flight,omitempty"`
	// FleetSize is how many proxies serve the endpoint (0: 1).
	FleetSize int               `yaml:"fleet_size,omitempty"`
	Tokens    []XKSTokenConfig  `yaml:"tokens"`
	Prefixes  []XKSPrefixConfig `yaml:"prefixes"`

	timeout time.Duration
}

// TimeoutDuration is the per-request token deadline (0: the default).
func (x *XKSProxyConfig) TimeoutDuration() time.Duration { return x.timeout }

// XKSTokenConfig is one external key manager of the proxy: a token holding
// external keys.
type XKSTokenConfig struct {
	ID          string `yaml:"id"`
	Module      string `yaml:"module"`
	TokenLabel  string `yaml:"token_label,omitempty"`
	TokenSerial string `yaml:"token_serial,omitempty"`
	PINFile     string `yaml:"pin_file,omitempty"`
	PINEnv      string `yaml:"pin_env,omitempty"`
	PoolSize    int    `yaml:"pool_size,omitempty"`
}

// PIN reads the token user's PIN.
func (t *XKSTokenConfig) PIN() (string, error) { return ReadSecret("pin", t.PINFile, t.PINEnv) }

// XKSPrefixConfig is one URI path of the proxy (XksProxyUriPath: an
// optional prefix and /kms/xks/v1) with its credentials, its secondary
// authorization policy and its tokens.
type XKSPrefixConfig struct {
	Path        string          `yaml:"path"`
	Tokens      []string        `yaml:"tokens,omitempty"`
	Credentials []XKSCredential `yaml:"credentials"`
	Policy      string          `yaml:"policy,omitempty"`
	PolicyFile  string          `yaml:"policy_file,omitempty"`
}

// XKSCredential is a SigV4 access key AWS KMS signs with for a prefix.
type XKSCredential struct {
	AccessKeyID string `yaml:"access_key_id"`
	SecretFile  string `yaml:"secret_file,omitempty"`
	SecretEnv   string `yaml:"secret_env,omitempty"`
}

// Secret reads the secret access key and checks it is one AWS KMS takes
// (XksProxyAuthenticationRawSecretAccessKeyType: 43-64 of A-Z a-z 0-9 / + =).
func (c *XKSCredential) Secret() (string, error) {
	s, err := ReadSecret("secret", c.SecretFile, c.SecretEnv)
	if err != nil {
		return "", err
	}
	if !xksSecretRe.MatchString(s) {
		return "", errors.New("the secret access key must be 43 to 64 of A-Z a-z 0-9 / + = (what AWS KMS accepts)")
	}
	return s, nil
}

// PolicyDocument returns the prefix's secondary authorization policy, ""
// if it has none.
func (p *XKSPrefixConfig) PolicyDocument() (string, error) {
	if p.PolicyFile == "" {
		return p.Policy, nil
	}
	b, err := os.ReadFile(p.PolicyFile)
	if err != nil {
		return "", fmt.Errorf("policy_file: %w", err)
	}
	return string(b), nil
}

// ExternalKeyStoresConfig is the `external_key_stores:` section: how hsmkms
// reaches the proxies of its EXTERNAL_KEY_STORE custom key stores.
type ExternalKeyStoresConfig struct {
	// CAFile is a PEM file of the CAs a proxy's certificate must chain
	// to; without it no external key store can connect.
	CAFile string `yaml:"ca_file,omitempty"`
	// Timeout bounds each call to a proxy ("" for AWS's 250ms).
	Timeout string `yaml:"timeout,omitempty"`
	// ConnectTo maps an XksProxyUriEndpoint host to the HOST:PORT to dial
	// instead of HOST:443.
	ConnectTo map[string]string `yaml:"connect_to,omitempty"`

	timeout time.Duration
}

// TimeoutDuration is the call timeout (0: AWS's).
func (e *ExternalKeyStoresConfig) TimeoutDuration() time.Duration { return e.timeout }

// RootCAs reads CAFile (nil, nil when none is configured).
func (e *ExternalKeyStoresConfig) RootCAs() (*x509.CertPool, error) {
	if e.CAFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(e.CAFile)
	if err != nil {
		return nil, fmt.Errorf("external_key_stores.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("external_key_stores.ca_file: %s holds no PEM certificate", e.CAFile)
	}
	return pool, nil
}

var (
	xksAccessKeyIDRe = regexp.MustCompile(`^[A-Z2-7]{20,30}$`)
	xksSecretRe      = regexp.MustCompile(`^[A-Za-z0-9/+=]{43,64}$`)
	xksTokenIDRe     = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	xksPathRe        = regexp.MustCompile(`^(/[A-Za-z0-9_-]+)*/kms/xks/v1$`)
	hostRe           = regexp.MustCompile(`^[A-Za-z0-9.-]{1,253}$`)
)

var xksProxySchema = map[string]any{
	"listen": "!!str", "tls": map[string]any{"cert_file": "!!str", "key_file": "!!str"},
	"timeout": "duration", "max_in_flight": "!!int", "fleet_size": "!!int",
	"tokens": []any{map[string]any{
		"id": "!!str", "module": "!!str", "token_label": "!!str", "token_serial": "!!str",
		"pin_file": "!!str", "pin_env": "!!str", "pool_size": "!!int",
	}},
	"prefixes": []any{map[string]any{
		"path": "!!str", "tokens": []any{"!!str"}, "policy": "!!str", "policy_file": "!!str",
		"credentials": []any{map[string]any{"access_key_id": "!!str", "secret_file": "!!str", "secret_env": "!!str"}},
	}},
}

var externalKeyStoresSchema = map[string]any{"ca_file": "!!str", "timeout": "duration", "connect_to": "map"}

func (x *XKSProxyConfig) validate(c *Config, abs func(string) string) error {
	if _, _, err := net.SplitHostPort(x.Listen); err != nil {
		return fmt.Errorf("xks_proxy.listen: required (HOST:PORT): %v", err)
	}
	if x.Listen == c.Listen {
		return errors.New("xks_proxy.listen: the proxy needs a listener of its own, not the KMS API's")
	}
	if x.TLS != nil {
		if x.TLS.CertFile == "" || x.TLS.KeyFile == "" {
			return errors.New("xks_proxy.tls: cert_file and key_file are required")
		}
		x.TLS.CertFile, x.TLS.KeyFile = abs(x.TLS.CertFile), abs(x.TLS.KeyFile)
	} else if c.PlainHTTP {
		// AWS KMS speaks only HTTPS to a proxy.
		return errors.New("xks_proxy.tls: required when the KMS API is served over plain HTTP")
	}
	if x.Timeout != "" {
		d, err := time.ParseDuration(x.Timeout)
		if err != nil || d <= 0 || d > 10*time.Second {
			return fmt.Errorf("xks_proxy.timeout: %q must be a duration between 1ms and 10s (AWS KMS waits 250ms)", x.Timeout)
		}
		x.timeout = d
	}
	switch {
	case x.MaxInFlight < 0 || x.MaxInFlight > 4096:
		return errors.New("xks_proxy.max_in_flight: must be between 1 and 4096 (absent for 16)")
	case x.FleetSize < 0 || x.FleetSize > 1000:
		return errors.New("xks_proxy.fleet_size: must be between 1 and 1000 (absent for 1)")
	case len(x.Tokens) == 0:
		return errors.New("xks_proxy.tokens: at least one token is required")
	case len(x.Prefixes) == 0:
		return errors.New("xks_proxy.prefixes: at least one prefix is required")
	}
	tokens := map[string]bool{}
	for i := range x.Tokens {
		t := &x.Tokens[i]
		at := fmt.Sprintf("xks_proxy.tokens[%d]", i)
		switch {
		case !xksTokenIDRe.MatchString(t.ID):
			return fmt.Errorf("%s.id: %q must be 1-64 of A-Z a-z 0-9 . _ - (it names the token in health answers)", at, t.ID)
		case tokens[t.ID]:
			return fmt.Errorf("%s.id: %s is declared twice", at, t.ID)
		case !filepath.IsAbs(t.Module):
			return fmt.Errorf("%s.module: %q is not an absolute path", at, t.Module)
		case (t.TokenLabel == "") == (t.TokenSerial == ""):
			return fmt.Errorf("%s: exactly one of token_label and token_serial is required", at)
		case (t.PINFile == "") == (t.PINEnv == ""):
			return fmt.Errorf("%s: exactly one of pin_file and pin_env is required", at)
		case t.PINEnv != "" && !envNameRe.MatchString(t.PINEnv):
			return fmt.Errorf("%s.pin_env: %q is not an environment variable name", at, t.PINEnv)
		case t.PoolSize < 0 || t.PoolSize > 1024:
			return fmt.Errorf("%s.pool_size: must be between 1 and 1024 (0 for the default)", at)
		case t.Module == c.DefaultKeyStore.Module && sameToken(t.TokenLabel, t.TokenSerial, c.DefaultKeyStore.TokenLabel, c.DefaultKeyStore.TokenSerial):
			return fmt.Errorf("%s: the default key store's token cannot also hold external keys", at)
		}
		for _, cl := range c.Clusters {
			if t.Module == cl.Module && sameToken(t.TokenLabel, t.TokenSerial, cl.TokenLabel, cl.TokenSerial) {
				return fmt.Errorf("%s: the token of cluster %s cannot also hold external keys", at, cl.ID)
			}
		}
		tokens[t.ID] = true
		t.PINFile = abs(t.PINFile)
	}
	paths, keyIDs := map[string]bool{}, map[string]string{}
	for i := range x.Prefixes {
		p := &x.Prefixes[i]
		at := fmt.Sprintf("xks_proxy.prefixes[%d]", i)
		switch {
		case !xksPathRe.MatchString(p.Path) || len(p.Path) > 128:
			return fmt.Errorf("%s.path: %q must be [/PREFIX]/kms/xks/v1, at most 128 of A-Z a-z 0-9 / - _ (XksProxyUriPath)", at, p.Path)
		case paths[p.Path]:
			return fmt.Errorf("%s.path: %s is declared twice", at, p.Path)
		case len(p.Credentials) == 0:
			return fmt.Errorf("%s.credentials: at least one is required (two let you rotate them without downtime)", at)
		case p.Policy != "" && p.PolicyFile != "":
			return fmt.Errorf("%s: at most one of policy and policy_file", at)
		case len(p.Tokens) > 10 || (len(p.Tokens) == 0 && len(x.Tokens) > 10):
			return fmt.Errorf("%s.tokens: a prefix is served by at most 10 tokens (ekmFleetDetails)", at)
		}
		paths[p.Path] = true
		for j, id := range p.Tokens {
			if !tokens[id] {
				return fmt.Errorf("%s.tokens[%d]: no token %q is declared under xks_proxy.tokens", at, j, id)
			}
		}
		for j := range p.Credentials {
			cr := &p.Credentials[j]
			cat := fmt.Sprintf("%s.credentials[%d]", at, j)
			switch {
			case !xksAccessKeyIDRe.MatchString(cr.AccessKeyID):
				return fmt.Errorf("%s.access_key_id: must be 20-30 of A-Z and 2-7 (what AWS KMS accepts)", cat)
			case keyIDs[cr.AccessKeyID] != "":
				return fmt.Errorf("%s.access_key_id: %s is declared twice (also under %s)", cat, cr.AccessKeyID, keyIDs[cr.AccessKeyID])
			case (cr.SecretFile == "") == (cr.SecretEnv == ""):
				return fmt.Errorf("%s: exactly one of secret_file and secret_env is required", cat)
			case cr.SecretEnv != "" && !envNameRe.MatchString(cr.SecretEnv):
				return fmt.Errorf("%s.secret_env: %q is not an environment variable name", cat, cr.SecretEnv)
			}
			keyIDs[cr.AccessKeyID] = p.Path
			cr.SecretFile = abs(cr.SecretFile)
		}
		p.PolicyFile = abs(p.PolicyFile)
		doc, err := p.PolicyDocument()
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
	return nil
}

func sameToken(label, serial, otherLabel, otherSerial string) bool {
	return (label != "" && label == otherLabel) || (serial != "" && serial == otherSerial)
}

func (e *ExternalKeyStoresConfig) validate(abs func(string) string) error {
	e.CAFile = abs(e.CAFile)
	if e.Timeout != "" {
		d, err := time.ParseDuration(e.Timeout)
		if err != nil || d <= 0 || d > time.Minute {
			return fmt.Errorf("external_key_stores.timeout: %q must be a duration between 1ms and 1m (AWS KMS waits 250ms)", e.Timeout)
		}
		e.timeout = d
	}
	for host, addr := range e.ConnectTo {
		if !hostRe.MatchString(host) || strings.Contains(host, "..") {
			return fmt.Errorf("external_key_stores.connect_to: %q is not a host name", host)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("external_key_stores.connect_to.%s: %q is not HOST:PORT", host, addr)
		}
	}
	return nil
}
