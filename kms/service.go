package kms

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Config is what a Service needs.
type Config struct {
	// Store is wrapped in a store.KeyCache: the Service must be the only
	// writer of the keys in it.
	Store     store.Store
	KeyStores *keystore.Manager
	Logger    hclog.Logger
	// Now is the clock for dates and the deletion schedule; tests inject one.
	Now func() time.Time
	// Clusters are the tokens that may back custom key stores.
	Clusters []keystore.Cluster
}

// Service implements the KMS operations. Safe for concurrent use; it holds
// no lock of its own: the store serialises writes and the token pool bounds
// concurrency on the token.
type Service struct {
	store     store.Store
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
	report      *Report
	reconnect   []*keystore.Store // connected at the last stop; Start reconnects them
	// rotations marks the keys being rotated now (see rotation.go).
	rotations rotations
	// identities are the principals' identity policies by ARN, set by
	// Handler; policies caches parsed key policies.
	identities atomic.Pointer[map[string]*identity]
	policies   keyPolicies
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
	s := &Service{store: store.WithKeyCache(cfg.Store), keystores: cfg.KeyStores, log: cfg.Logger, now: cfg.Now, clusters: clusters}
	s.life, s.stop = context.WithCancel(context.Background())
	return s
}

// handlers are the operations implemented here, by operation name.
func (s *Service) handlers() map[string]wire.Route {
	return map[string]wire.Route{
		"CreateKey":                           wire.Typed(s.CreateKey),
		"DescribeKey":                         wire.Typed(s.DescribeKey),
		"ListKeys":                            wire.Typed(s.ListKeys),
		"EnableKey":                           wire.Typed(s.EnableKey),
		"DisableKey":                          wire.Typed(s.DisableKey),
		"UpdateKeyDescription":                wire.Typed(s.UpdateKeyDescription),
		"ScheduleKeyDeletion":                 wire.Typed(s.ScheduleKeyDeletion),
		"CancelKeyDeletion":                   wire.Typed(s.CancelKeyDeletion),
		"CreateAlias":                         wire.Typed(s.CreateAlias),
		"UpdateAlias":                         wire.Typed(s.UpdateAlias),
		"DeleteAlias":                         wire.Typed(s.DeleteAlias),
		"ListAliases":                         wire.Typed(s.ListAliases),
		"TagResource":                         wire.Typed(s.TagResource),
		"UntagResource":                       wire.Typed(s.UntagResource),
		"ListResourceTags":                    wire.Typed(s.ListResourceTags),
		"Encrypt":                             wire.Typed(s.Encrypt),
		"Decrypt":                             wire.Typed(s.Decrypt),
		"ReEncrypt":                           wire.Typed(s.ReEncrypt),
		"GenerateDataKey":                     wire.Typed(s.GenerateDataKey),
		"GenerateDataKeyWithoutPlaintext":     wire.Typed(s.GenerateDataKeyWithoutPlaintext),
		"GenerateRandom":                      wire.Typed(s.GenerateRandom),
		"GetKeyPolicy":                        wire.Typed(s.GetKeyPolicy),
		"PutKeyPolicy":                        wire.Typed(s.PutKeyPolicy),
		"ListKeyPolicies":                     wire.Typed(s.ListKeyPolicies),
		"EnableKeyRotation":                   wire.Typed(s.EnableKeyRotation),
		"DisableKeyRotation":                  wire.Typed(s.DisableKeyRotation),
		"GetKeyRotationStatus":                wire.Typed(s.GetKeyRotationStatus),
		"RotateKeyOnDemand":                   wire.Typed(s.RotateKeyOnDemand),
		"ListKeyRotations":                    wire.Typed(s.ListKeyRotations),
		"CreateCustomKeyStore":                wire.Typed(s.CreateCustomKeyStore),
		"DescribeCustomKeyStores":             wire.Typed(s.DescribeCustomKeyStores),
		"ConnectCustomKeyStore":               wire.Typed(s.ConnectCustomKeyStore),
		"DisconnectCustomKeyStore":            wire.Typed(s.DisconnectCustomKeyStore),
		"UpdateCustomKeyStore":                wire.Typed(s.UpdateCustomKeyStore),
		"DeleteCustomKeyStore":                wire.Typed(s.DeleteCustomKeyStore),
		"CreateGrant":                         wire.Typed(s.CreateGrant),
		"ListGrants":                          wire.Typed(s.ListGrants),
		"ListRetirableGrants":                 wire.Typed(s.ListRetirableGrants),
		"RetireGrant":                         wire.Typed(s.RetireGrant),
		"RevokeGrant":                         wire.Typed(s.RevokeGrant),
		"GenerateDataKeyPair":                 wire.Typed(s.GenerateDataKeyPair),
		"GenerateDataKeyPairWithoutPlaintext": wire.Typed(s.GenerateDataKeyPairWithoutPlaintext),
		"Sign":                                wire.Typed(s.Sign),
		"Verify":                              wire.Typed(s.Verify),
		"GetPublicKey":                        wire.Typed(s.GetPublicKey),
		"GenerateMac":                         wire.Typed(s.GenerateMac),
		"VerifyMac":                           wire.Typed(s.VerifyMac),
		"DeriveSharedSecret":                  wire.Typed(s.DeriveSharedSecret),
	}
}

// Routes is the explicit route table, keyed by X-Amz-Target: every
// operation of the KMS model, those not implemented answering
// UnsupportedOperationException.
func (s *Service) Routes() map[string]wire.Route {
	r := s.handlers()
	out := make(map[string]wire.Route, len(wire.Operations()))
	for _, op := range wire.Operations() {
		if route, ok := r[op]; ok {
			if keylessOps[op] {
				route = s.authorized(route)
			}
			out["TrentService."+op] = route
		} else {
			out["TrentService."+op] = unsupported(op)
		}
	}
	return out
}

// Supported reports whether op is implemented here (for the README table).
func (s *Service) Supported(op string) bool {
	_, ok := s.handlers()[op]
	return ok
}

// token returns the key store holding k's material, or the exception AWS
// gives for a key whose store cannot be used now.
func (s *Service) token(k *store.Key) (*keystore.Store, error) {
	ks, err := s.keystores.Get(k.CustomKeyStoreID)
	if err != nil {
		return nil, err
	}
	if err := ks.Available(); err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	return ks, nil
}

// tokenFor is token for an operation that is about to use k's material:
// a DryRun request stops here, having passed every check, as AWS answers it.
func (s *Service) tokenFor(k *store.Key, dry bool) (*keystore.Store, error) {
	if dry {
		return nil, dryRun()
	}
	return s.token(k)
}
