package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/internal/datadir"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
)

// serve runs the key service until SIGINT or SIGTERM.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "run on embedded defaults, keeping everything under this directory (created on first run)")
	listen := fs.String("listen", "127.0.0.1:4599", "HOST:PORT to listen on (with --data-dir)")
	xksListen := fs.String("xks-listen", "", "HOST:PORT of the XKS proxy (with --data-dir; default: --listen's port + 1)")
	configPath := fs.String("config", "", "configuration file (for real deployments)")
	dbURLFile := fs.String("database-url-file", "", "with --data-dir: keep the metadata in the PostgreSQL database whose URL this file (0600) holds, shared with other nodes")
	nodeID := fs.String("node-id", "", "with --data-dir: this node's id among the nodes sharing the database (default: the host name)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*dbURLFile != "" || *nodeID != "") && *dataDir == "" {
		return errors.New("serve: --database-url-file and --node-id go with --data-dir (a --config file says the same in database.postgres and node_id)")
	}
	var info *datadir.BootstrapInfo
	switch {
	case *configPath != "" && *dataDir != "":
		return errors.New("serve: give --config or --data-dir, not both")
	case *dataDir != "":
		var err error
		blog := hclog.New(&hclog.LoggerOptions{Name: "hsmkms", Output: os.Stderr})
		*configPath, info, err = datadir.BootstrapWith(*dataDir, datadir.Options{Listen: *listen, XKSListen: *xksListen, DatabaseURLFile: *dbURLFile, NodeID: *nodeID}, blog)
		if err != nil {
			return err
		}
	case *configPath == "":
		return errors.New("serve: --config FILE or --data-dir DIR is required")
	}
	cfg, err := config.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	// A request allocates a few KiB that die at once, and the live heap is
	// small (key metadata, sessions): the default GOGC=100 spent a tenth of
	// the server's CPU collecting. GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// With GOGC raised, a burst of large requests grew the heap to five
	// times what was live; the soft limit keeps it near what the in-flight
	// bound allows. GOMEMLIMIT in the environment still wins.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit(cfg.Limits.MaxInFlight, kms.DefaultMaxBody, cfg.Limits.CachedKeys))
	}
	node := cfg.NodeID
	if node == "" {
		node = kms.DefaultNodeID()
	}
	// Every line names the node: several nodes' logs end up side by side.
	log := hclog.New(&hclog.LoggerOptions{Name: "hsmkms", Level: hclog.LevelFromString(cfg.LogLevel), Output: os.Stderr}).With("node", node)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var metrics *kms.Metrics
	if cfg.Endpoints.Endpoints().Metrics {
		metrics = kms.NewMetrics()
	}
	svc, err := open(ctx, cfg, node, log, metrics)
	if err != nil {
		return err
	}
	defer func() {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := svc.Close(c); err != nil {
			log.Error("closing", "error", err)
		}
	}()

	var xksSrv *xksServer
	if cfg.XKSProxy != nil {
		if xksSrv, err = startXKS(ctx, cfg, svc, log); err != nil {
			return err
		}
		defer func() {
			c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := xksSrv.shutdown(c); err != nil {
				log.Error("stopping the XKS proxy", "error", err)
			}
		}()
	}

	principals := make([]kms.Principal, 0, len(cfg.Principals))
	for i, p := range cfg.Principals {
		secret, err := p.Secret()
		if err != nil {
			return fmt.Errorf("principals[%d]: %w", i, err)
		}
		policy, err := p.IdentityPolicy()
		if err != nil {
			return fmt.Errorf("principals[%d]: %w", i, err)
		}
		principals = append(principals, kms.Principal{AccessKeyID: p.AccessKeyID, Secret: secret, Account: p.AccountID, ARN: p.ARN, Policy: policy})
	}
	queueWait := cfg.Limits.Wait()
	if queueWait == 0 {
		queueWait = -1 // HandlerConfig's "none"
	}
	// The request log, a line per request, is written in batches (see
	// lineBuffer); every other line goes out at once.
	requestLog := newLineBuffer(os.Stderr, 64<<10, 100*time.Millisecond)
	defer requestLog.Close()
	apiLog := hclog.New(&hclog.LoggerOptions{Name: "hsmkms", Level: hclog.LevelFromString(cfg.LogLevel), Output: requestLog}).Named("api")
	handler, err := svc.Handler(kms.HandlerConfig{Principals: principals, Logger: apiLog,
		MaxInFlight: cfg.Limits.MaxInFlight, QueueWait: queueWait, Regions: cfg.Regions, Endpoints: cfg.Endpoints.Endpoints()})
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           handler,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.Named("http").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	if !cfg.PlainHTTP {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("tls: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	svc.Start()
	go releaseAfterBursts(ctx, 2*time.Second, 32<<20, debug.FreeOSMemory)
	log.Info("limits", "max_in_flight", cfg.Limits.MaxInFlight, "queue_wait", cfg.Limits.Wait(), "cached_keys", cfg.Limits.CachedKeys,
		"go_memory_limit_mib", debug.SetMemoryLimit(-1)>>20, "regions", len(cfg.Regions))

	scheme := "https"
	if cfg.PlainHTTP {
		scheme = "http"
	}
	log.Info("listening", "endpoint", scheme+"://"+ln.Addr().String())
	errc := make(chan error, 2)
	if xksSrv != nil {
		log.Info("XKS proxy listening", "endpoint", "https://"+xksSrv.ln.Addr().String(), "prefixes", len(cfg.XKSProxy.Prefixes))
		xksSrv.serve(errc)
		// SIGHUP re-reads the configuration's xks_proxy credentials and
		// policies: how the proxy's credentials rotate without a restart.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-hup:
					xksSrv.reload(*configPath)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	if info != nil {
		fmt.Fprintf(os.Stdout, "\nhsmkms is serving at %s\n\nPaste this into your shell:\n\n%s\n", info.Endpoint, datadir.PasteBlock(info))
	}

	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

// open brings up the service on cfg's token, database, clusters and audit
// trail, as node.
func open(ctx context.Context, cfg *config.Config, node string, log hclog.Logger, metrics *kms.Metrics) (*kms.Service, error) {
	ks := cfg.DefaultKeyStore
	for k, v := range ks.ModuleEnv {
		if err := os.Setenv(k, v); err != nil {
			return nil, err
		}
	}
	pin, err := ks.PIN()
	if err != nil {
		return nil, fmt.Errorf("default_key_store: %w", err)
	}
	oc, err := openConfig(cfg, pin, log)
	if err != nil {
		return nil, err
	}
	oc.NodeID = node
	oc.Metrics = metrics
	return kms.Open(ctx, oc)
}

// openConfig is what kms.Open needs from cfg, as serve and the admin
// commands that open the service use it.
func openConfig(cfg *config.Config, pin string, log hclog.Logger) (kms.OpenConfig, error) {
	ks := cfg.DefaultKeyStore
	dbURL, err := cfg.Database.URL()
	if err != nil {
		return kms.OpenConfig{}, err
	}
	xksCfg, err := xksClientConfig(cfg)
	if err != nil {
		return kms.OpenConfig{}, err
	}
	return kms.OpenConfig{
		DefaultToken: keystore.TokenConfig{
			Module: ks.Module, Label: ks.TokenLabel, Serial: ks.TokenSerial, PoolSize: ks.PoolSize,
			Logger: log.Named("hsm"),
		},
		PIN:               pin,
		Database:          cfg.Database.Path,
		DatabaseURL:       dbURL,
		Clusters:          clusterConfigs(cfg, log),
		Logger:            log.Named("kms"),
		JobInterval:       time.Minute,
		TokenBackups:      cfg.Database.TokenBackupDir(),
		XKS:               xksCfg,
		OtherTokens:       xksTokenConfigs(cfg, log),
		KeyMaterial:       materialConfig(ks.KeyMaterial, ks.UnwrappedKeys),
		DomainKeyRotation: time.Duration(cfg.DomainKeyRotationDays) * 24 * time.Hour,
		Audit:             cfg.Audit.Trail(),
		CachedKeys:        cfg.Limits.CachedKeys,
	}, nil
}

// materialConfig is the key store layer's form of a key_material and an
// unwrapped_keys setting.
func materialConfig(mode string, cache config.UnwrappedKeysConfig) keystore.MaterialConfig {
	return keystore.MaterialConfig{Mode: keystore.KeyMaterial(mode), CacheKeys: cache.MaxKeys, CacheBytes: int64(cache.MaxMemoryMiB) << 20}
}

// clusterConfigs turns the clusters section into the key store layer's
// declarations.
func clusterConfigs(cfg *config.Config, log hclog.Logger) []keystore.Cluster {
	out := make([]keystore.Cluster, len(cfg.Clusters))
	for i, c := range cfg.Clusters {
		mode := c.KeyMaterial
		if mode == "" {
			mode = config.KeyMaterialTokenObjects
		}
		out[i] = keystore.Cluster{
			ID: c.ID, Manufacturer: c.Manufacturer, Model: c.Model, Serial: c.Serial,
			Token:    hsm.TokenConfig{Module: c.Module, Label: c.TokenLabel, Serial: c.TokenSerial, PoolSize: c.PoolSize},
			Material: materialConfig(mode, c.UnwrappedKeys),
		}
		if log != nil {
			out[i].Token.Logger = log.Named("hsm").With("cluster", c.ID)
		}
	}
	return out
}
