package kms

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
)

// The service lifecycle, one path for `hsmkms serve` and the tests:
//
//	Open   SoftHSM2 tokens damaged by a crash restored from hsmkms's copies
//	       (before the module loads), the metadata store, the default token
//	       (logged in, and refused unless it is the token the database was
//	       made with), the start-up check between them (Reconcile), the
//	       orphan report, and the custom key stores registered DISCONNECTED
//	Start  starts the change feed (shared store), the heartbeat and custom
//	       key store sync (which logs in to the stores that are connected,
//	       with the current password, without rotating it), the deletion
//	       reaper and the key rotator
//	Close  stops the background work and waits for it, then logs out,
//	       closes the token sessions and the store
//
// Every goroutine the Service starts is joined by Close, so nothing uses
// a token or the store after Close has closed them.

// OpenConfig is what Open needs to bring a Service up.
type OpenConfig struct {
	// DefaultToken is the token of the default key store and PIN its user
	// PIN.
	DefaultToken keystore.TokenConfig
	PIN          string
	// Database is the SQLite file of the metadata store, created if
	// missing: the embedded default.
	Database string
	// DatabaseURL, if set instead, is the PostgreSQL database of the
	// metadata store (a postgres:// URL, which may hold a password: never
	// logged or put in an error), for several nodes sharing their keys.
	// Its schema is created or brought up to date on open.
	DatabaseURL string
	// Clusters are the tokens that may back custom key stores.
	Clusters []keystore.Cluster
	// XKS is how external key stores reach their proxies.
	XKS    XKSConfig
	Logger hclog.Logger
	// Now is the clock; tests inject one. Nil means time.Now.
	Now func() time.Time
	// JobInterval is how often the deletion reaper and the key rotator run
	// after Start; 0 runs neither (tests drive Reap and RotateDue).
	JobInterval time.Duration
	// TokenBackups is the directory of hsmkms's copies of SoftHSM2
	// token.object files (see keystore.TokenBackups), kept only when a
	// token's module is SoftHSM2 with a file store; "" keeps none. Nodes
	// sharing a SoftHSM2 token store should share it too.
	TokenBackups string
	// NodeID names this node among those sharing the database; "" is
	// DefaultNodeID(). Each node needs its own.
	NodeID string
	// SyncInterval is how often the node records its heartbeat and looks
	// at the custom key stores; 0 is 2 s (tests shorten it).
	SyncInterval time.Duration
	// OtherTokens are tokens the process logs in to besides the key
	// stores' (the XKS proxy's): restored and copied like them.
	OtherTokens []keystore.TokenConfig
	// KeyMaterial is how the default key store holds the material of new
	// keys, and bounds its cache of unwrapped material. A Mode of ""
	// decides from the database (DefaultKeyMaterial): wrapped for a new
	// deployment, token objects for one that has made keys so.
	KeyMaterial keystore.MaterialConfig
	// DomainKeyRotation, if positive, is how old a store's active domain
	// key may grow before the domain key job (JobInterval) replaces it.
	DomainKeyRotation time.Duration
	// Audit, if set, writes the audit trail there (see auditing.go).
	Audit *AuditConfig
	// Metrics, if set, count what the service and its tokens do.
	Metrics *Metrics
	// UsageFlushInterval is how often keys' last use is written to the
	// store; 0 means DefaultUsageFlushInterval.
	UsageFlushInterval time.Duration
	// CachedKeys bounds the keys' metadata kept in memory (Config).
	CachedKeys int
}

// Open brings up the token, the metadata store and the service, checks
// them against each other and logs what the check found. On error
// everything it opened is closed again.
func Open(ctx context.Context, cfg OpenConfig) (_ *Service, err error) {
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	db, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	guard := &keystore.Safeguards{Records: tokenRecords{db}, Locker: tokensLocker{db}}
	if cfg.Metrics != nil {
		cfg.Clusters = slices.Clone(cfg.Clusters)
		cfg.DefaultToken.Observer = cfg.Metrics.token("default")
		for i := range cfg.Clusters {
			cfg.Clusters[i].Token.Observer = cfg.Metrics.token(cfg.Clusters[i].ID)
		}
	}
	def, err := openDefault(ctx, db, cfg, guard, log)
	if err != nil {
		db.Close()
		return nil, guard.Explain(ctx, keystore.DefaultID, cfg.DefaultToken, err)
	}
	keystores := keystore.NewManager(def)
	keystores.SetSafeguards(guard)
	keystores.SetLocker(db)
	s := New(Config{Store: db, KeyStores: keystores, Logger: log, Now: cfg.Now, Clusters: cfg.Clusters, XKS: cfg.XKS,
		NodeID: cfg.NodeID, SyncInterval: cfg.SyncInterval, Metrics: cfg.Metrics, CachedKeys: cfg.CachedKeys})
	s.jobInterval = cfg.JobInterval
	if cfg.UsageFlushInterval > 0 {
		s.usageInterval = cfg.UsageFlushInterval
	}
	defer func() {
		if err != nil {
			s.closeResources(context.WithoutCancel(ctx))
		}
	}()
	if err := s.joinCluster(ctx); err != nil {
		return nil, err
	}
	if err := def.VerifyIdentity(ctx, "", guard, log); err != nil {
		return nil, guard.Explain(ctx, keystore.DefaultID, cfg.DefaultToken, err)
	}
	material := cfg.KeyMaterial
	if material.Mode == "" {
		if material.Mode, err = DefaultKeyMaterial(ctx, db); err != nil {
			return nil, err
		}
	}
	keystores.SetDomainKeyRecords(tokenRecords{db})
	s.domainKeyRotation = cfg.DomainKeyRotation
	if err := def.AttachHierarchy(ctx, material, tokenRecords{db}, log.Named("keystore")); err != nil {
		return nil, fmt.Errorf("kms: the default key store's key hierarchy: %w", err)
	}
	log.Info("default key store", "key_material", def.KeyMaterial(), "domain_keys", len(def.DomainKeys()))
	report, err := s.Reconcile(ctx)
	if err != nil {
		return nil, fmt.Errorf("kms: start-up check: %w", err)
	}
	s.report = report
	report.log(log)
	orphans, err := s.Orphans(ctx)
	if err != nil {
		return nil, err
	}
	for _, o := range orphans {
		log.Warn("token object orphaned by deleting a key while its custom key store was disconnected",
			"store", o.KeyStoreID, "key", o.KeyARN, "cka_id", hex.EncodeToString(o.TokenID))
	}
	if err := s.registerKeyStores(ctx); err != nil {
		return nil, err
	}
	if err := s.openUsage(ctx, cfg.Audit); err != nil {
		return nil, err
	}
	// The external key stores' proxy clients, before the first request.
	s.syncXKSStores(ctx)
	return s, nil
}

// tokensLock is the database lock under which every node does what reads
// or writes a SoftHSM2 token's token.object: restoring damaged tokens,
// loading the module, logging in (the default token, custom key stores),
// changing a PIN, probing a cluster. SoftHSM2 rewrites the file in place at
// every login and PIN change, and a process reading it half-written at
// the same moment fails, or loses the token until it restarts, or writes
// an older PIN back over the change (see the README, "Running several
// nodes", for what hsm's tests show). A network HSM needs none of it; the
// lock costs what it guards (start-ups, connects) a little waiting.
const tokensLock = "tokens"

// tokensLocker is the store's Lock with every name mapped to tokensLock:
// what the key stores lock (token identities, the vault, logins) all
// touch token.object.
type tokensLocker struct{ db store.Store }

func (l tokensLocker) Lock(ctx context.Context, _ string) (func(), error) {
	return l.db.Lock(ctx, tokensLock)
}

// openDefault restores the SoftHSM2 tokens a crash damaged (before the
// module loads) and opens and logs in to the default key store's token,
// under tokensLock.
func openDefault(ctx context.Context, db store.Store, cfg OpenConfig, guard *keystore.Safeguards, log hclog.Logger) (*keystore.Store, error) {
	unlock, err := db.Lock(ctx, tokensLock)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if guard.Backups, err = repairSoftHSM(cfg, log); err != nil {
		return nil, err
	}
	return keystore.OpenDefault(ctx, cfg.DefaultToken, cfg.PIN)
}

// openUsage opens the audit trail, if configured, and brings keys' last
// use up to date: the store's record, and what the trail holds past it.
func (s *Service) openUsage(ctx context.Context, audit *AuditConfig) error {
	tracking, err := s.store.StartUsageTracking(ctx, s.now())
	if err != nil {
		return fmt.Errorf("kms: usage tracking: %w", err)
	}
	s.usage.start = tracking.Start
	if audit == nil {
		return nil
	}
	if err := s.openTrail(ctx, audit); err != nil {
		return err
	}
	after := uint64(0)
	if tracking.Trail == s.trail.ID() {
		after = tracking.Sequence
	}
	s.usage.mu.Lock()
	s.usage.trail = s.trail.ID()
	s.usage.mu.Unlock()
	if err := s.usage.replay(audit.Dir, after); err != nil {
		return fmt.Errorf("kms: replaying keys' last use from the audit trail: %w", err)
	}
	return s.usage.flush(ctx)
}

// DefaultKeyMaterial is how the default key store holds new material when
// the configuration does not say: wrapped for a new deployment (no key of
// the default key store yet) or one that has domain keys already; token
// objects for a deployment that made its keys so, which keeps working as
// it did.
func DefaultKeyMaterial(ctx context.Context, db store.Store) (keystore.KeyMaterial, error) {
	dks, err := db.DomainKeys(ctx, keystore.DefaultID)
	if err != nil {
		return "", err
	}
	if len(dks) > 0 {
		return keystore.Wrapped, nil
	}
	errFound := errors.New("found")
	err = db.ForEachKey(ctx, func(k *store.Key) error {
		if materialStoreID(k) == keystore.DefaultID {
			return errFound
		}
		return nil
	})
	switch {
	case errors.Is(err, errFound):
		return keystore.TokenObjects, nil
	case err != nil:
		return "", err
	}
	return keystore.Wrapped, nil
}

// openStore opens the metadata store cfg names: exactly one of a SQLite
// file and a PostgreSQL URL.
func openStore(ctx context.Context, cfg OpenConfig) (store.Store, error) {
	switch {
	case cfg.Database != "" && cfg.DatabaseURL != "":
		return nil, errors.New("kms: the metadata store is a SQLite file or a PostgreSQL database, not both")
	case cfg.DatabaseURL != "":
		return store.OpenPostgreSQL(ctx, cfg.DatabaseURL)
	case cfg.Database != "":
		return store.OpenSQLite(cfg.Database)
	default:
		return nil, errors.New("kms: no metadata store: set a SQLite file or a PostgreSQL URL")
	}
}

// repairSoftHSM restores, before any module is loaded, the SoftHSM2 tokens
// a crash damaged, and refreshes the copies of the tokens this service
// uses; it returns the keeper of the copies (nil when no token is a
// SoftHSM2 one in a file store).
func repairSoftHSM(cfg OpenConfig, log hclog.Logger) (*keystore.TokenBackups, error) {
	tokens := []keystore.TokenConfig{cfg.DefaultToken}
	for _, c := range cfg.Clusters {
		tokens = append(tokens, c.Token)
	}
	tokens = append(tokens, cfg.OtherTokens...)
	if cfg.TokenBackups == "" || !slices.ContainsFunc(tokens, func(t keystore.TokenConfig) bool { return keystore.IsSoftHSM(t.Module) }) {
		return nil, nil
	}
	b, err := keystore.NewTokenBackups(cfg.TokenBackups)
	if err != nil {
		return nil, err
	}
	rep, err := b.Repair(tokens)
	if err != nil {
		return nil, err
	}
	rep.Log(log)
	return b, nil
}

func (r *Report) log(log hclog.Logger) {
	for _, k := range r.Abandoned {
		log.Warn("removed a key left half-created by a crash", "key", k)
	}
	for _, m := range r.MissingMaterial {
		log.Error("key material missing from the token", "material", m)
	}
	for _, m := range r.AbandonedRotations {
		log.Warn("destroyed the token object of a rotation left unrecorded by a crash", "material", m)
	}
	for _, o := range r.OrphanObjects {
		log.Warn("token object with no key metadata", "label", o)
	}
	for _, k := range r.Creating {
		log.Info("key still being created, perhaps by another node: left alone", "key", k)
	}
	for _, m := range r.FinishedMigrations {
		log.Warn("destroyed the token objects of material a migration left behind, now held wrapped", "material", m)
	}
}

// Safeguards are what protects the tokens this service uses (copies of
// SoftHSM2 token.object files, token identity records), for the other
// tokens of the process to log in under the same protection.
func (s *Service) Safeguards() *keystore.Safeguards { return s.keystores.Safeguards() }

// StartupReport is what Open's start-up check found.
func (s *Service) StartupReport() *Report { return s.report }

// Start starts what runs in the background: on a shared store the change
// feed that keeps the key cache right, the heartbeat and the custom key
// store sync (which logs in to the stores that are connected, the
// reconnection after a restart included), and the deletion reaper and
// the key rotator. Call it once, after Open; Close stops what it started.
func (s *Service) Start() {
	if w, ok := s.cache.Store.(store.Watcher); ok {
		s.goBackground(func() {
			w.Watch(s.life, store.Changes{
				Key:      s.keyChanged,
				KeyStore: func(string) { s.kickSync() },
				Live: func(live bool) {
					s.cache.SetLive(live)
					if live {
						s.log.Info("listening to the other nodes' changes: serving keys from the cache")
						s.kickSync()
					} else if s.life.Err() == nil {
						s.log.Warn("lost the change feed of the metadata database: reading every key from the database until it is back")
					}
				},
			})
		})
	}
	s.goBackground(func() { s.runCluster(s.life) })
	s.goBackground(func() { s.runTransitions(s.life) })
	s.goBackground(func() { s.usage.run(s.life, s.usageInterval) })
	if s.jobInterval > 0 {
		s.goBackground(func() { s.RunReaper(s.life, s.jobInterval) })
		s.goBackground(func() { s.RunRotator(s.life, s.jobInterval) })
		s.goBackground(func() { s.RunDomainKeys(s.life, s.jobInterval) })
		s.goBackground(func() { s.RunImportExpiry(s.life, s.jobInterval) })
	}
}

// keyChanged is what a node does when the change feed says another node
// changed a key: its cached metadata is dropped, and so is its material
// unwrapped here (a key deleted there leaves no copy of its material on
// this node's token; one still in use is unwrapped again at its next use).
func (s *Service) keyChanged(account, region, id string) {
	s.cache.Invalidate(account, region, id)
	uuid, ok := parseUUID(id)
	if !ok {
		return
	}
	for _, storeID := range append([]string{keystore.DefaultID}, s.keystores.CustomIDs()...) {
		if ks, err := s.keystores.Get(storeID); err == nil {
			ks.ForgetKey(uuid)
		}
	}
}

// goBackground runs fn on a goroutine that Close waits for.
func (s *Service) goBackground(fn func()) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		fn()
	}()
}

// Close stops the background jobs and connects and waits for them, then
// logs out of every token, closes their sessions and closes the store.
// ctx bounds the logouts.
func (s *Service) Close(ctx context.Context) error {
	s.stop()
	s.bg.Wait()
	s.leaveCluster(ctx)
	s.closeXKS()
	return s.closeResources(ctx)
}

// closeResources closes, in order: the audit trail (its stop record, the
// last digest), keys' last use (all of it, with the trail's end), the
// tokens and the store.
func (s *Service) closeResources(ctx context.Context) error {
	var errs []error
	if s.trail != nil {
		if err := s.trail.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("kms: closing the audit trail: %w", err))
		}
	}
	if err := s.usage.flush(ctx); err != nil {
		errs = append(errs, fmt.Errorf("kms: writing keys' last use: %w", err))
	}
	if err := s.keystores.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("kms: closing key stores: %w", err))
	}
	if err := s.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("kms: closing the store: %w", err))
	}
	return errors.Join(errs...)
}
