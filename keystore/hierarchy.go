package keystore

// The key hierarchy: how a key store holds material wrapped instead of as
// token objects, as HSM-backed KMSs do (AWS KMS keeps HSM backing keys
// encrypted under domain keys; nShield keeps key blobs on the host).
//
// Each store holding material wrapped has domain keys on its token:
// wrapping keys (hsm.GenerateWrappingKey: AES-256, never extractable,
// wrap and unwrap only, CKA_UNWRAP_TEMPLATE forcing CKA_SENSITIVE), with
// CKA_ID domainKeyPrefix ‖ id. The database records them (DomainKeyRecords)
// and which one wraps each material version (Material.DomainKey). A new
// version is generated on the token, wrapped under the ACTIVE domain key
// and destroyed there; only the envelope (envelope.go) reaches the
// database. To be used it is unwrapped into a session object kept in the
// store's objectCache.
//
// Domain key rotation, each step durable before the next:
//
//  1. record a new domain key, PENDING
//  2. make it on the token
//  3. in one transaction: it ACTIVE, the ACTIVE one RETIRED
//  4. (kms, in the background) rewrap every material under a RETIRED key
//     and record each under the ACTIVE one
//  5. once nothing names a RETIRED key: DESTROYING (the store checks that
//     in the same transaction), destroy its token object, forget it
//
// A crash anywhere is finished at the next attach: a PENDING key wrapped
// nothing (only the ACTIVE one wraps), so it is destroyed if it was made
// and forgotten; a DESTROYING key is destroyed (again) and forgotten; a
// RETIRED one waits for step 4 to resume. A domain key the database names
// as ACTIVE or RETIRED but the token lacks is a refused attach: material
// under it could not be used, as for a missing token.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
)

// KeyMaterial is how a key store holds the material of the keys it makes.
type KeyMaterial string

const (
	// TokenObjects: every material version is token objects.
	TokenObjects KeyMaterial = "token_objects"
	// Wrapped: material is wrapped under the store's domain key and held
	// in the database; nothing per key is left on the token.
	Wrapped KeyMaterial = "wrapped"
)

// Defaults of MaterialConfig's cache bounds. The SoftHSM2 2.6.1 figure
// behind the estimates: an unwrapped AES-256 key costs it about 8 KiB of
// memory (measured over 5,000 session objects).
const (
	DefaultCacheKeys  = 8192
	DefaultCacheBytes = 64 << 20
)

// MaterialConfig is how a key store holds material.
type MaterialConfig struct {
	// Mode is what new material is made as. A store holding material of
	// both kinds (a deployment that changed modes) uses each as it is.
	Mode KeyMaterial
	// CacheKeys and CacheBytes bound the material kept unwrapped on the
	// token (objects, and their estimated token memory); 0 means the
	// default.
	CacheKeys  int
	CacheBytes int64
}

// DomainKeyRecord is a domain key as the database records it; its state
// is one of the store package's (PENDING, ACTIVE, RETIRED, DESTROYING).
type DomainKeyRecord struct {
	ID      string
	State   string
	Created time.Time
}

const (
	domainKeyPending    = "PENDING"
	domainKeyActive     = "ACTIVE"
	domainKeyRetired    = "RETIRED"
	domainKeyDestroying = "DESTROYING"
)

// DomainKeyRecords is where domain keys are recorded (the metadata
// database), by key store ID ("" for the default key store), with the
// store's guarantees (kms/store): at most one ACTIVE, activation retires
// the ACTIVE one in the same transaction, and RetireDomainKey fails with
// ErrDomainKeyInUse while any material names the key.
type DomainKeyRecords interface {
	DomainKeys(ctx context.Context, storeID string) ([]DomainKeyRecord, error)
	AddDomainKey(ctx context.Context, storeID, id string, created time.Time) error
	ActivateDomainKey(ctx context.Context, storeID, id string) error
	RetireDomainKey(ctx context.Context, storeID, id string) error
	DeleteDomainKey(ctx context.Context, storeID, id string) error
}

var (
	// ErrDomainKeyMissing: the database records a domain key the token
	// does not hold.
	ErrDomainKeyMissing = errors.New("keystore: a domain key the database records is not on the token")
	// ErrDomainKeyInUse: material is still wrapped under the domain key.
	ErrDomainKeyInUse = errors.New("keystore: material is still wrapped under the domain key")
)

// domainKeyPrefix begins the CKA_ID of every domain key; the domain key's
// id (32 hex digits) follows.
const domainKeyPrefix = "hsmkms:domain-key:"

func domainKeyRef(id string) hsm.ObjectRef { return hsm.SecretKeyByID([]byte(domainKeyPrefix + id)) }

// isDomainKey reports whether a token object is a domain key.
func isDomainKey(o hsm.ObjectInfo) bool { return strings.HasPrefix(string(o.ID), domainKeyPrefix) }

type hierarchy struct {
	storeID string
	tok     *hsm.Token
	rec     DomainKeyRecords
	log     hclog.Logger
	wrapNew bool
	cache   *objectCache

	// steps serialises the changes of domain keys (rotate, destroy,
	// reload), which read records and act on them.
	steps sync.Mutex

	mu     sync.RWMutex
	keys   map[string]*domainKey // ACTIVE and RETIRED
	active *domainKey

	// notWrappable holds the specs the token refused to wrap (Ed25519 on
	// SoftHSM2 2.6.1): their material is made as token objects.
	notWrappable sync.Map
}

// refuseWrapping records that the token of the store storeID refused to
// wrap material of spec: from now on it is made as token objects.
func (h *hierarchy) refuseWrapping(storeID string, spec Spec) {
	if _, known := h.notWrappable.LoadOrStore(spec, struct{}{}); !known {
		h.log.Warn("the token cannot wrap this kind of key; its keys are made as token objects", "store", storeName(storeID), "spec", spec.String())
	}
}

type domainKey struct {
	id      string
	state   string
	created time.Time
	trusted bool // CKA_TRUSTED: material under it is CKA_WRAP_WITH_TRUSTED

	mu  sync.Mutex
	use hsm.ObjectRef // its session copy, the zero ObjectRef until made
}

// attachHierarchy brings up the hierarchy of the store storeID on tok:
// finishes what a crash cut short, checks that every domain key the
// database names is on the token, and, if cfg makes material wrapped and
// the store has no ACTIVE domain key, makes one.
func attachHierarchy(ctx context.Context, tok *hsm.Token, storeID string, cfg MaterialConfig, rec DomainKeyRecords, log hclog.Logger) (*hierarchy, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if cfg.CacheKeys <= 0 {
		cfg.CacheKeys = DefaultCacheKeys
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = DefaultCacheBytes
	}
	h := &hierarchy{storeID: storeID, tok: tok, rec: rec, log: log, wrapNew: cfg.Mode == Wrapped, keys: map[string]*domainKey{}}
	h.cache = newObjectCache(cfg.CacheKeys, cfg.CacheBytes, func(o hsm.ObjectRef) {
		if err := tok.DestroyObject(context.Background(), o); err != nil {
			log.Warn("could not destroy an unwrapped key leaving the cache", "store", storeName(storeID), "error", err)
		}
	})
	unlock, err := h.lockSteps(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := h.load(ctx); err != nil {
		return nil, err
	}
	if h.wrapNew {
		if err := tok.RequireWrapping(ctx); err != nil {
			return nil, fmt.Errorf("keystore: %s cannot hold key material wrapped: %w", StoreDescription(storeID), classify(err))
		}
		if h.active == nil {
			if _, err := h.rotate(ctx); err != nil {
				return nil, err
			}
		}
	}
	return h, nil
}

// reload reads the records again, as attach did: for domain keys another
// process (hsmkms domain-keys) rotated.
func (h *hierarchy) reload(ctx context.Context) error {
	unlock, err := h.lockSteps(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return h.load(ctx)
}

// Several processes may share a store's domain keys (hsmkms nodes on one
// database and one token, or an admin command beside a server). Each
// change of them (attach, rotate, destroy, reload, which finishes a
// PENDING or DESTROYING key it finds) is one process's at a time: under
// steps within the process and, when the records can lock (the metadata
// database's Lock, released if its holder dies), a lock of the store's
// across processes, so that no process takes the half-made key of
// another for one a crash left, and two processes attaching a store
// without domain keys make one. The others learn of a change by refresh
// (kms calls it when the database announces one, and every few seconds)
// or at once when they meet material under a domain key they do not know
// (keyFor).

// lockSteps takes steps and, if the records can lock, the store's lock.
func (h *hierarchy) lockSteps(ctx context.Context) (func(), error) {
	h.steps.Lock()
	l, ok := h.rec.(interface {
		Lock(ctx context.Context, name string) (func(), error)
	})
	if !ok {
		return h.steps.Unlock, nil
	}
	unlock, err := l.Lock(ctx, "domain-keys/"+h.storeID)
	if err != nil {
		h.steps.Unlock()
		return nil, err
	}
	return func() { unlock(); h.steps.Unlock() }, nil
}

// refresh reloads the records if the usable domain keys (ACTIVE and
// RETIRED, with their states) differ from what this process holds: a
// read of the records, and the store's lock only when something changed.
func (h *hierarchy) refresh(ctx context.Context) error {
	recs, err := h.rec.DomainKeys(ctx, h.storeID)
	if err != nil {
		return err
	}
	h.mu.RLock()
	same := true
	n := 0
	for _, r := range recs {
		if r.State != domainKeyActive && r.State != domainKeyRetired {
			continue
		}
		n++
		if dk := h.keys[r.ID]; dk == nil || dk.state != r.State {
			same = false
		}
	}
	same = same && n == len(h.keys)
	h.mu.RUnlock()
	if same {
		return nil
	}
	return h.reload(ctx)
}

// keyFor is key, reloading the records first if id is not known here: a
// domain key another process made.
func (h *hierarchy) keyFor(ctx context.Context, id string) (*domainKey, error) {
	if dk, err := h.key(id); err == nil {
		return dk, nil
	}
	if err := h.reload(ctx); err != nil {
		return nil, err
	}
	return h.key(id)
}

// load reads the records, finishes interrupted steps and checks the
// token; the caller holds steps.
func (h *hierarchy) load(ctx context.Context) error {
	recs, err := h.rec.DomainKeys(ctx, h.storeID)
	if err != nil {
		return err
	}
	keys := map[string]*domainKey{}
	states := map[string]string{}
	var active *domainKey
	for _, r := range recs {
		switch r.State {
		case domainKeyPending, domainKeyDestroying:
			if err := h.forget(ctx, r); err != nil {
				return err
			}
			continue
		case domainKeyActive, domainKeyRetired:
		default:
			return fmt.Errorf("keystore: domain key %s of %s is in unknown state %q", r.ID, StoreDescription(h.storeID), r.State)
		}
		h.mu.RLock()
		dk := h.keys[r.ID]
		h.mu.RUnlock()
		if dk == nil {
			info, err := h.tok.CheckWrappingKey(ctx, domainKeyRef(r.ID))
			if errors.Is(err, hsm.ErrObjectNotFound) {
				return fmt.Errorf("%w: %s, domain key %s (%s since %s): the material wrapped under it cannot be used; "+
					"restore the token (see \"Recovering a damaged token\")", ErrDomainKeyMissing, StoreDescription(h.storeID),
					r.ID, strings.ToLower(r.State), r.Created.UTC().Format(time.RFC3339))
			}
			if err != nil {
				return fmt.Errorf("keystore: domain key %s of %s: %w", r.ID, StoreDescription(h.storeID), classify(err))
			}
			dk = &domainKey{id: r.ID, created: r.Created, trusted: info.Trusted}
		}
		keys[r.ID] = dk
		states[r.ID] = r.State
		if r.State == domainKeyActive {
			active = dk
		}
	}
	// A domain key's state is read under mu: set it there.
	h.mu.Lock()
	for id, st := range states {
		keys[id].state = st
	}
	old := h.keys
	h.keys, h.active = keys, active
	h.mu.Unlock()
	// A domain key another process destroyed: nothing unwrapped from it,
	// nor its session copy, stays here.
	for id, dk := range old {
		if keys[id] != nil {
			continue
		}
		h.cache.dropWhere(func(key string) bool { return strings.HasSuffix(key, "/"+id) })
		dk.mu.Lock()
		use := dk.use
		dk.use = hsm.ObjectRef{}
		dk.mu.Unlock()
		if use.IsSessionObject() {
			_ = h.tok.DestroyObject(ctx, use)
		}
	}
	return nil
}

// forget finishes a PENDING or DESTROYING domain key: its token object
// (if made) destroyed, its record deleted. Neither wraps anything.
func (h *hierarchy) forget(ctx context.Context, r DomainKeyRecord) error {
	if err := h.tok.DestroyObject(ctx, domainKeyRef(r.ID)); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
		return fmt.Errorf("keystore: destroying domain key %s of %s: %w", r.ID, StoreDescription(h.storeID), classify(err))
	}
	if r.State == domainKeyDestroying {
		Step(StepDomainKeyDestroyed)
	}
	if err := h.rec.DeleteDomainKey(ctx, h.storeID, r.ID); err != nil {
		return err
	}
	if r.State == domainKeyPending {
		h.log.Warn("removed a domain key a crash left half made", "store", storeName(h.storeID), "domain_key", r.ID)
	} else {
		h.log.Info("domain key destroyed", "store", storeName(h.storeID), "domain_key", r.ID)
	}
	return nil
}

// rotateNow is rotate for callers that do not hold steps.
func (h *hierarchy) rotateNow(ctx context.Context) (string, error) {
	unlock, err := h.lockSteps(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another process may have rotated since this one last read.
	if err := h.load(ctx); err != nil {
		return "", err
	}
	return h.rotate(ctx)
}

// rotate makes a new domain key and makes it the ACTIVE one (steps 1-3);
// the caller holds steps.
func (h *hierarchy) rotate(ctx context.Context) (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b)
	now := time.Now().UTC()
	if err := h.rec.AddDomainKey(ctx, h.storeID, id, now); err != nil {
		return "", err
	}
	Step(StepDomainKeyRecorded)
	if err := h.tok.GenerateWrappingKey(ctx, domainKeyRef(id).ID, "hsmkms domain key "+id); err != nil {
		return "", fmt.Errorf("keystore: making a domain key for %s: %w", StoreDescription(h.storeID), classify(err))
	}
	Step(StepDomainKeyMade)
	info, err := h.tok.CheckWrappingKey(ctx, domainKeyRef(id))
	if err != nil {
		return "", classify(err)
	}
	if err := h.rec.ActivateDomainKey(ctx, h.storeID, id); err != nil {
		return "", err
	}
	Step(StepDomainKeyActive)
	dk := &domainKey{id: id, state: domainKeyActive, created: now, trusted: info.Trusted}
	h.mu.Lock()
	if h.active != nil {
		h.active.state = domainKeyRetired
	}
	h.keys[id], h.active = dk, dk
	h.mu.Unlock()
	h.log.Info("domain key made active", "store", storeName(h.storeID), "domain_key", id, "trusted", info.Trusted)
	return id, nil
}

// destroy destroys the RETIRED domain key id once nothing names it (step
// 5): ErrDomainKeyInUse while something does.
func (h *hierarchy) destroy(ctx context.Context, id string) error {
	unlock, err := h.lockSteps(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := h.load(ctx); err != nil {
		return err
	}
	h.mu.RLock()
	dk := h.keys[id]
	retired := dk != nil && dk.state == domainKeyRetired
	h.mu.RUnlock()
	if !retired {
		return fmt.Errorf("keystore: domain key %s of %s is not retired", id, StoreDescription(h.storeID))
	}
	if err := h.rec.RetireDomainKey(ctx, h.storeID, id); err != nil {
		return err
	}
	Step(StepDomainKeyDestroying)
	h.mu.Lock()
	delete(h.keys, id)
	h.mu.Unlock()
	h.cache.dropWhere(func(key string) bool { return strings.HasSuffix(key, "/"+id) })
	dk.mu.Lock()
	use := dk.use
	dk.use = hsm.ObjectRef{}
	dk.mu.Unlock()
	if use.IsSessionObject() {
		_ = h.tok.DestroyObject(ctx, use)
	}
	return h.forget(ctx, DomainKeyRecord{ID: id, State: domainKeyDestroying})
}

// domainKeys lists the usable domain keys, the ACTIVE one last.
func (h *hierarchy) domainKeys() []DomainKeyRecord {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]DomainKeyRecord, 0, len(h.keys))
	for _, dk := range h.keys {
		out = append(out, DomainKeyRecord{ID: dk.id, State: dk.state, Created: dk.created})
	}
	slices.SortFunc(out, func(a, b DomainKeyRecord) int {
		if (a.State == domainKeyActive) != (b.State == domainKeyActive) {
			if a.State == domainKeyActive {
				return 1
			}
			return -1
		}
		return a.Created.Compare(b.Created)
	})
	return out
}

// key returns the usable domain key id, or ErrMaterialNotFound.
func (h *hierarchy) key(id string) (*domainKey, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if dk := h.keys[id]; dk != nil {
		return dk, nil
	}
	return nil, fmt.Errorf("%w: domain key %s of %s is not usable", ErrMaterialNotFound, id, StoreDescription(h.storeID))
}

// withDomainKey runs fn with dk's session copy, making the copy first if
// needed, and once more with a fresh copy if the token lost it.
func (h *hierarchy) withDomainKey(ctx context.Context, dk *domainKey, fn func(hsm.ObjectRef) error) error {
	for attempt := 0; ; attempt++ {
		dk.mu.Lock()
		use := dk.use
		if !use.IsSessionObject() {
			c, err := h.tok.SessionCopy(ctx, domainKeyRef(dk.id))
			if err != nil {
				dk.mu.Unlock()
				return err
			}
			dk.use, use = c, c
		}
		dk.mu.Unlock()
		err := fn(use)
		if errors.Is(err, hsm.ErrSessionObjectLost) && attempt == 0 {
			dk.mu.Lock()
			if dk.use.Same(use) {
				dk.use = hsm.ObjectRef{}
			}
			dk.mu.Unlock()
			continue
		}
		return err
	}
}

// wrapNewMaterial generates material of spec with usage on the token and
// returns it wrapped under the ACTIVE domain key, with that key's id.
func (h *hierarchy) wrapNewMaterial(ctx context.Context, spec Spec, usage Usage) (wrapped []byte, domainKeyID string, err error) {
	h.mu.RLock()
	dk := h.active
	h.mu.RUnlock()
	if dk == nil {
		return nil, "", fmt.Errorf("keystore: %s has no active domain key", StoreDescription(h.storeID))
	}
	var w hsm.Wrapped
	err = h.withDomainKey(ctx, dk, func(use hsm.ObjectRef) error {
		var err error
		w, err = h.tok.GenerateWrapped(ctx, use, spec.material(), usage.hsm(), dk.trusted)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	b, err := envelope{spec: spec, key: w.Key, publicKey: w.PublicKey}.marshal()
	return b, dk.id, err
}

// rewrap returns m's material wrapped under the ACTIVE domain key.
func (h *hierarchy) rewrap(ctx context.Context, m Material) (wrapped []byte, domainKeyID string, err error) {
	env, err := parseEnvelope(m.wrapped, m.spec)
	if err != nil {
		return nil, "", err
	}
	from, err := h.keyFor(ctx, m.domainKey)
	if err != nil {
		return nil, "", err
	}
	h.mu.RLock()
	to := h.active
	h.mu.RUnlock()
	if to == nil {
		return nil, "", fmt.Errorf("keystore: %s has no active domain key", StoreDescription(h.storeID))
	}
	if to == from {
		return m.wrapped, from.id, nil
	}
	var key []byte
	err = h.withDomainKey(ctx, from, func(f hsm.ObjectRef) error {
		return h.withDomainKey(ctx, to, func(t hsm.ObjectRef) error {
			var err error
			key, err = h.tok.Rewrap(ctx, f, t, env.key, m.spec.material(), m.usage.hsm(), to.trusted)
			return err
		})
	})
	if err != nil {
		return nil, "", err
	}
	b, err := envelope{spec: m.spec, key: key, publicKey: env.publicKey}.marshal()
	return b, to.id, err
}

// Estimated token memory of an unwrapped object, from SoftHSM2 2.6.1.
func objectCost(spec Spec, public bool) int64 {
	switch {
	case public:
		return 8 << 10
	case spec >= RSA2048 && spec <= RSA4096:
		return 16 << 10
	case spec.Asymmetric():
		return 12 << 10
	}
	return 8 << 10
}

// object returns the session object to use for m, wrapped material (its
// public key if public), from the cache or unwrapped into it, and the
// function that releases it. ErrMaterialNotFound if its domain key is
// not (or no longer) usable.
func (h *hierarchy) object(ctx context.Context, m Material, public bool) (hsm.ObjectRef, func(), error) {
	env, err := parseEnvelope(m.wrapped, m.spec)
	if err != nil {
		return hsm.ObjectRef{}, nil, err
	}
	return h.cache.acquire(cacheKey(m, public), objectCost(m.spec, public), func() (hsm.ObjectRef, error) {
		if public {
			return h.tok.CreatePublicKey(ctx, env.publicKey, m.usage.hsm())
		}
		dk, err := h.keyFor(ctx, m.domainKey)
		if err != nil {
			return hsm.ObjectRef{}, err
		}
		var obj hsm.ObjectRef
		err = h.withDomainKey(ctx, dk, func(use hsm.ObjectRef) error {
			var err error
			obj, err = h.tok.Unwrap(ctx, use, env.key, m.spec.material(), m.usage.hsm())
			return err
		})
		return obj, err
	})
}

// cacheKey is what m's unwrapped key (or its public key) is cached under:
// the version and the domain key its blob is under, so that once a domain
// key is gone nothing unwrapped from it is served.
func cacheKey(m Material, public bool) string {
	if public {
		return string(m.ref) + "/public"
	}
	return string(m.ref) + "/" + m.domainKey
}

// forgetMaterial takes m's objects out of the cache.
func (h *hierarchy) forgetMaterial(m Material) {
	h.cache.dropKey(cacheKey(m, false))
	h.cache.dropKey(cacheKey(m, true))
}

func (h *hierarchy) close() { h.cache.clear() }

// material is the hsm spec of material of s.
func (s Spec) material() hsm.MaterialSpec {
	return hsm.MaterialSpec{Pair: s.pair(), HMACBits: s.hmacBits()}
}
