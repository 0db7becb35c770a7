package kms

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Config is what a Service needs.
type Config struct {
	// Store is wrapped in a store.KeyCache. A store other processes write
	// too must be a store.Watcher (PostgreSQL), whose change feed keeps the
	// cache right once Start runs it.
	Store     store.Store
	KeyStores *keystore.Manager
	Logger    hclog.Logger
	// Now is the clock for dates and the deletion schedule; tests inject one.
	Now func() time.Time
	// Clusters are the tokens that may back custom key stores.
	Clusters []keystore.Cluster
	// NodeID names this node among those sharing the store (logs, marks,
	// logins); "" is DefaultNodeID().
	NodeID string
	// SyncInterval is how often the node records its heartbeat and looks
	// at the custom key stores; 0 is defaultSyncInterval.
	SyncInterval time.Duration
	// XKS is how external key stores reach their proxies.
	XKS XKSConfig
	// Metrics, if set, count what the service does (see NewMetrics).
	Metrics *Metrics
	// CachedKeys bounds the keys' metadata the node keeps in memory; 0 is
	// store.DefaultKeyCacheSize.
	CachedKeys int
}

// Service implements the KMS operations. Safe for concurrent use; it holds
// no lock of its own: the store serialises writes and the token pool bounds
// concurrency on the token.
type Service struct {
	store     store.Store
	cache     *store.KeyCache // store, as a KeyCache
	keystores *keystore.Manager
	log       hclog.Logger
	now       func() time.Time
	clusters  map[string]keystore.Cluster
	// life ends when Close begins; bg counts the goroutines started on
	// it (connects, reaper, rotator), which Close waits for.
	life        context.Context
	stop        context.CancelFunc
	bg          sync.WaitGroup
	jobInterval time.Duration
	// domainKeyRotation is how old an active domain key may grow before
	// the domain key job replaces it; 0: never.
	domainKeyRotation time.Duration
	report            *Report
	// xksCfg is how external key stores reach their proxies; xksStores
	// holds this node's side of each one's connection (*xksLive by store
	// id; xksstores.go).
	xksCfg    XKSConfig
	xksStores sync.Map
	ops       []*operation // the operation table
	opsByName map[string]*operation
	// node is this node's id and started when this run of it began;
	// shared says other nodes write the store too (it is a Watcher).
	node         string
	started      time.Time
	shared       bool
	syncInterval time.Duration
	kick         chan struct{} // a key store changed: look now
	// ks is what the key store sync knows, per store (customkeystores.go).
	ks keyStoreSync
	// rotations marks the keys being rotated now (see rotation.go).
	rotations rotations
	// transitions are the multi-Region keys with a replica Creating or a
	// primary moving, for the background job to finish (multiregion.go);
	// regions are the Regions the handler serves, set by Handler.
	transitions transitions
	regions     atomic.Pointer[map[string]bool]
	// imports marks the keys being imported into now (import.go).
	imports importsRunning
	// identities are the principals' identity policies by ARN, set by
	// Handler; policies caches parsed key policies.
	identities atomic.Pointer[map[string]*identity]
	policies   keyPolicies

	// trail is the audit trail (nil: none); omitEC leaves encryption
	// contexts out of its records. usage keeps keys' last use; metrics
	// are what /metrics shows (nil: none).
	trail         *audit.Trail
	omitEC        bool
	usage         *usageTracker
	usageInterval time.Duration
	metrics       *Metrics
	// calls counts the calls in the runner, and edge is the HTTP edge's
	// in-flight limit (set by Handler): the requests that will write an
	// audit record soon, which the trail's group commit waits for.
	calls atomic.Int64
	edge  atomic.Pointer[wire.Limiter]
}

// underWay is how many calls will write an audit record soon: every
// request the HTTP edge is serving, or, before Handler, those in the
// runner.
func (s *Service) underWay() int {
	if l := s.edge.Load(); l != nil {
		return l.InFlight()
	}
	return int(s.calls.Load())
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	clusters := make(map[string]keystore.Cluster, len(cfg.Clusters))
	for _, c := range cfg.Clusters {
		clusters[c.ID] = c
	}
	if cfg.NodeID == "" {
		cfg.NodeID = DefaultNodeID()
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = defaultSyncInterval
	}
	if cfg.CachedKeys <= 0 {
		cfg.CachedKeys = store.DefaultKeyCacheSize
	}
	cache := store.WithKeyCacheSize(cfg.Store, cfg.CachedKeys)
	_, shared := cfg.Store.(store.Watcher)
	if shared {
		cache.SetLive(false) // until Start's watcher listens
	}
	s := &Service{store: cache, cache: cache, keystores: cfg.KeyStores, log: cfg.Logger, now: cfg.Now, clusters: clusters,
		node: cfg.NodeID, started: time.Now(), shared: shared, syncInterval: cfg.SyncInterval, kick: make(chan struct{}, 1), xksCfg: cfg.XKS,
		metrics: cfg.Metrics, usageInterval: DefaultUsageFlushInterval}
	s.life, s.stop = context.WithCancel(context.Background())
	s.ops = s.operations()
	s.transitions.init()
	s.opsByName = make(map[string]*operation, len(s.ops))
	for _, op := range s.ops {
		s.opsByName[op.name] = op
	}
	s.usage = newUsageTracker(s.store, s.log.Named("usage"), s.ops)
	return s
}

// Routes is the explicit route table, keyed by X-Amz-Target: every
// operation of the operation table, run by the runner that enforces its
// contract.
func (s *Service) Routes() map[string]wire.Route {
	out := map[string]wire.Route{}
	for _, op := range s.ops {
		out["TrentService."+op.name] = s.route(op)
	}
	return out
}

// Supported reports whether op is implemented here (for the README table).
func (s *Service) Supported(op string) bool {
	o := s.op(op)
	return o != nil && o.handle != nil
}

// token returns the key store holding k's material, or the exception AWS
// gives for a key whose store cannot be used now. A key of an external key
// store has its material of hsmkms's own on the default key store.
func (s *Service) token(k *store.Key) (*keystore.Store, error) {
	ks, err := s.keystores.Get(materialStoreID(k))
	if err != nil {
		return nil, err
	}
	if err := ks.Available(); err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	return ks, nil
}

// materialStoreID is the key store whose token holds k's material.
func materialStoreID(k *store.Key) string {
	return k.MaterialStoreID()
}

// tokenFor is token for an operation that is about to use k's material:
// the request must be allowed to proceed (and a DryRun stops here).
func (s *Service) tokenFor(r *Request, k *store.Key) (*keystore.Store, error) {
	if err := r.proceed(); err != nil {
		return nil, err
	}
	return s.token(k)
}
