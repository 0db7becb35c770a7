package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/xks/proxy"
)

// xksTokenConfig is the key store layer's view of a proxy token.
func xksTokenConfig(t config.XKSTokenConfig, log hclog.Logger) keystore.TokenConfig {
	tc := keystore.TokenConfig{Module: t.Module, Label: t.TokenLabel, Serial: t.TokenSerial, PoolSize: t.PoolSize}
	if log != nil {
		tc.Logger = log.Named("hsm").With("xks_token", t.ID)
	}
	return tc
}

// xksTokenConfigs are the proxy's tokens, for the SoftHSM2 safeguards.
func xksTokenConfigs(cfg *config.Config, log hclog.Logger) []keystore.TokenConfig {
	if cfg.XKSProxy == nil {
		return nil
	}
	var out []keystore.TokenConfig
	for _, t := range cfg.XKSProxy.Tokens {
		out = append(out, xksTokenConfig(t, log))
	}
	return out
}

// xksClientConfig is how the service's external key stores reach proxies.
func xksClientConfig(cfg *config.Config) (kms.XKSConfig, error) {
	e := cfg.ExternalKeyStores
	if e == nil {
		return kms.XKSConfig{}, nil
	}
	pool, err := e.RootCAs()
	if err != nil {
		return kms.XKSConfig{}, err
	}
	return kms.XKSConfig{RootCAs: pool, ConnectTo: e.ConnectTo, Timeout: e.TimeoutDuration()}, nil
}

// xksServer is the proxy as serve runs it: its tokens, its handler and its
// HTTP server.
type xksServer struct {
	tokens map[string]*proxy.Token
	conf   []config.XKSTokenConfig // what the tokens were opened from
	proxy  *proxy.Proxy
	srv    *http.Server
	ln     net.Listener
	log    hclog.Logger
}

// startXKS opens the proxy's tokens (logging in under the service's
// safeguards) and listens; Serve serves.
func startXKS(ctx context.Context, cfg *config.Config, svc *kms.Service, log hclog.Logger) (_ *xksServer, err error) {
	x := cfg.XKSProxy
	s := &xksServer{tokens: map[string]*proxy.Token{}, conf: x.Tokens, log: log}
	defer func() {
		if err != nil {
			s.closeTokens()
		}
	}()
	for i, t := range x.Tokens {
		pin, err := t.PIN()
		if err != nil {
			return nil, fmt.Errorf("xks_proxy.tokens[%d]: %w", i, err)
		}
		keys, err := keystore.OpenExternalKeys(ctx, xksTokenConfig(t, log), pin, svc.Safeguards())
		if err != nil {
			return nil, fmt.Errorf("xks_proxy.tokens[%d] (%s): %w", i, t.ID, err)
		}
		s.tokens[t.ID] = &proxy.Token{ID: t.ID, Keys: keys}
	}
	prefixes, err := s.prefixes(cfg)
	if err != nil {
		return nil, err
	}
	s.proxy, err = proxy.New(proxy.Config{Prefixes: prefixes, Regions: cfg.Regions, Logger: log.Named("xks"),
		Timeout: x.TimeoutDuration(), MaxInFlight: x.MaxInFlight, FleetSize: x.FleetSize, Version: version,
		Audit: svc.AuditXKSProxyCall})
	if err != nil {
		return nil, err
	}
	certFile, keyFile := cfg.TLS.CertFile, cfg.TLS.KeyFile
	if x.TLS != nil {
		certFile, keyFile = x.TLS.CertFile, x.TLS.KeyFile
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("xks_proxy.tls: %w", err)
	}
	ln, err := net.Listen("tcp", x.Listen)
	if err != nil {
		return nil, fmt.Errorf("xks_proxy.listen: %w", err)
	}
	// TLS 1.2 or later, with the suites the specification names among
	// Go's defaults; HTTP/1.1 (and HTTP/2 where the client asks).
	s.ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}})
	s.srv = &http.Server{
		Handler:           s.proxy,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.Named("xks-http").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	return s, nil
}

// prefixes builds the proxy's prefixes from cfg, reading each secret.
func (s *xksServer) prefixes(cfg *config.Config) ([]proxy.Prefix, error) {
	x := cfg.XKSProxy
	var out []proxy.Prefix
	for i, p := range x.Prefixes {
		at := fmt.Sprintf("xks_proxy.prefixes[%d]", i)
		pre := proxy.Prefix{Path: p.Path[:len(p.Path)-len("/kms/xks/v1")]}
		for j, c := range p.Credentials {
			secret, err := c.Secret()
			if err != nil {
				return nil, fmt.Errorf("%s.credentials[%d]: %w", at, j, err)
			}
			pre.Credentials = append(pre.Credentials, proxy.Credential{AccessKeyID: c.AccessKeyID, Secret: secret})
		}
		doc, err := p.PolicyDocument()
		if err != nil {
			return nil, fmt.Errorf("%s.%w", at, err)
		}
		if doc != "" {
			if pre.Policy, err = authz.Parse([]byte(doc), authz.IdentityPolicy); err != nil {
				return nil, fmt.Errorf("%s.policy: %w", at, err)
			}
		}
		ids := p.Tokens
		if len(ids) == 0 {
			for _, t := range x.Tokens {
				ids = append(ids, t.ID)
			}
		}
		for _, id := range ids {
			t := s.tokens[id]
			if t == nil {
				return nil, fmt.Errorf("%s.tokens: token %s is not open (changing xks_proxy.tokens needs a restart)", at, id)
			}
			pre.Tokens = append(pre.Tokens, t)
		}
		out = append(out, pre)
	}
	return out, nil
}

// reload re-reads the configuration file and replaces the proxy's
// prefixes, credentials and policies without a restart: how credentials
// rotate. The tokens stay as opened; a changed token list is refused.
func (s *xksServer) reload(path string) {
	cfg, err := config.LoadConfig(path)
	if err == nil && cfg.XKSProxy == nil {
		err = errors.New("xks_proxy: removed from the configuration; restart to stop the proxy")
	}
	if err == nil && !reflect.DeepEqual(cfg.XKSProxy.Tokens, s.conf) {
		err = errors.New("xks_proxy.tokens: changed; restart to change the proxy's tokens")
	}
	var prefixes []proxy.Prefix
	if err == nil {
		prefixes, err = s.prefixes(cfg)
	}
	if err == nil {
		err = s.proxy.Reload(prefixes)
	}
	if err != nil {
		s.log.Error("xks proxy: configuration not reloaded; the proxy keeps serving the previous one", "error", err)
		return
	}
	s.log.Info("xks proxy: configuration reloaded", "prefixes", len(prefixes))
}

func (s *xksServer) closeTokens() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for id, t := range s.tokens {
		if err := t.Keys.Close(ctx); err != nil {
			s.log.Warn("closing an XKS proxy token", "token", id, "error", err)
		}
	}
}

// serveXKS serves until shutdown.
func (s *xksServer) serve(errc chan<- error) {
	go func() {
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("xks proxy: %w", err)
		}
	}()
}

func (s *xksServer) shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	s.closeTokens()
	return err
}
