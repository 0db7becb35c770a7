package keystore

import (
	"context"
	"errors"
	"fmt"
	"github.com/hashicorp/go-hclog"
	"sync"
	"sync/atomic"

	"github.com/hsmkms/hsmkms/hsm"
)

// DefaultID is the ID of the default key store: keys created without a
// CustomKeyStoreId live there.
const DefaultID = ""

var (
	// ErrNotFound: no key store with that ID.
	ErrNotFound = errors.New("keystore: no such key store")
	// ErrNotConnected: the store exists but has no token now (a custom
	// store not connected, a closed store). It is an ErrUnavailable.
	ErrNotConnected = fmt.Errorf("%w: not connected", ErrUnavailable)
)

// TokenConfig says which token backs a key store and how to open it; an
// alias so that packages above keystore never name hsm.
type TokenConfig = hsm.TokenConfig

// Store is one key store and the token behind it. Safe for concurrent use.
type Store struct {
	id     string
	tok    atomic.Pointer[hsm.Token] // nil while disconnected
	custom *custom                   // nil for the default store
	// publicKeys caches public keys as DER SPKI by Material.Ref: they are
	// public, never change, and reading one costs a token call.
	publicKeys sync.Map
	// hier is the key hierarchy of a store whose token has domain keys
	// (see hierarchy.go); nil for one that holds only token objects.
	hier atomic.Pointer[hierarchy]
}

// ID is the key store's ID ("" for the default store).
func (s *Store) ID() string { return s.id }

// token returns the store's logged-in token, or ErrNotConnected. The token
// never leaves the package: kms works through the Store's methods.
func (s *Store) token() (*hsm.Token, error) {
	if t := s.tok.Load(); t != nil {
		return t, nil
	}
	return nil, ErrNotConnected
}

// Available is nil while the store has a token to work with, else
// ErrNotConnected. The token may still fail the next call.
func (s *Store) Available() error {
	_, err := s.token()
	return err
}

// OpenDefault opens the default store's token and logs in with pin.
func OpenDefault(ctx context.Context, cfg hsm.TokenConfig, pin string) (*Store, error) {
	tok, err := hsm.OpenToken(cfg)
	if err != nil {
		return nil, fmt.Errorf("keystore: default key store: %w", err)
	}
	if err := tok.Login(ctx, pin); err != nil {
		tok.Close()
		return nil, fmt.Errorf("keystore: default key store: %w", err)
	}
	s := &Store{id: DefaultID}
	s.tok.Store(tok)
	return s, nil
}

// VerifyIdentity checks that the store's token, logged in, is the one
// recorded for it (VerifyToken), recording it at first use, under g's
// lock.
func (s *Store) VerifyIdentity(ctx context.Context, clusterID string, g *Safeguards, log hclog.Logger) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	if g == nil || g.Records == nil {
		return errors.New("keystore: no token records to verify against")
	}
	unlock, err := g.lockIdentity(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	return g.verify(ctx, tok, s.id, clusterID, log)
}

// Check makes one call on a pooled session of the store's token (one
// random byte): nil when the token answers now. A token marked failing is
// rebuilt by the call once its backoff has passed, so Check also notices
// recovery.
func (s *Store) Check(ctx context.Context) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	_, err = tok.GenerateRandom(ctx, 1)
	return classify(err)
}

// PoolStats is what a store's session pool holds now.
type PoolStats struct {
	Size, Open, InUse int
}

// Pool reports the store's session pool; false while it has no token.
func (s *Store) Pool() (PoolStats, bool) {
	tok, err := s.token()
	if err != nil {
		return PoolStats{}, false
	}
	return PoolStats{Size: tok.PoolSize(), Open: tok.OpenSessions(), InUse: tok.SessionsInUse()}, true
}

// Close logs out and closes the store's token.
func (s *Store) Close(ctx context.Context) error {
	if h := s.hier.Swap(nil); h != nil {
		h.close()
	}
	t := s.tok.Swap(nil)
	if t == nil {
		return nil
	}
	lerr := t.Logout(ctx)
	return errors.Join(lerr, t.Close())
}

// Manager maps key store IDs to stores. Lookups are lock-free (they run on
// every request); the map is copied on the rare change.
type Manager struct {
	mu     sync.Mutex // serialises writers
	stores atomic.Pointer[map[string]*Store]
	guard  *Safeguards      // given to the custom stores it registers; guarded by mu
	domain DomainKeyRecords // likewise
	vault  vault            // the kmsuser password vault on the default store's token
	locker Locker           // set before use; nil: this process is alone
}

// SetDomainKeyRecords gives the custom key stores m registers from now on
// the records of their domain keys, without which none can hold material
// wrapped. Call it before AddCustom.
func (m *Manager) SetDomainKeyRecords(rec DomainKeyRecords) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.domain = rec
}

// Locker serialises, between every process sharing the metadata database,
// what must happen once although any of them may try it at the same
// moment: making the password vault's key, recording a token's identity.
// The metadata store provides it (its Lock).
type Locker interface {
	Lock(ctx context.Context, name string) (unlock func(), err error)
}

// SetLocker makes m take l's locks around what must happen once across
// processes. Call it before the manager is used.
func (m *Manager) SetLocker(l Locker) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.locker = l
}

// NewManager returns a manager holding the default store.
func NewManager(def *Store) *Manager {
	m := &Manager{}
	stores := map[string]*Store{DefaultID: def}
	m.stores.Store(&stores)
	return m
}

// Get returns the store with id, or ErrNotFound.
func (m *Manager) Get(id string) (*Store, error) {
	if s, ok := (*m.stores.Load())[id]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
}

// All returns every key store, the default one included, in no order.
func (m *Manager) All() []*Store {
	stores := *m.stores.Load()
	out := make([]*Store, 0, len(stores))
	for _, s := range stores {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Default returns the default key store.
func (m *Manager) Default() *Store { return (*m.stores.Load())[DefaultID] }

// Close closes every store.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, s := range *m.stores.Load() {
		if s != nil {
			errs = append(errs, s.Close(ctx))
		}
	}
	return errors.Join(errs...)
}
