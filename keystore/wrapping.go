package keystore

import (
	"context"
	"fmt"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
)

// The Store's side of the key hierarchy (hierarchy.go): attaching it, and
// what kms does with domain keys.

// AttachHierarchy brings up the store's key hierarchy with cfg: it
// finishes domain key steps a crash cut short, refuses a token that lacks
// a domain key the database records (ErrDomainKeyMissing) and, if cfg
// makes material wrapped, checks the token's mechanisms (ErrUnsupported)
// and makes the first domain key. A token_objects store with no domain key
// recorded needs no hierarchy, and gets none.
func (s *Store) AttachHierarchy(ctx context.Context, cfg MaterialConfig, rec DomainKeyRecords, log hclog.Logger) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	if cfg.Mode != Wrapped {
		recs, err := rec.DomainKeys(ctx, s.id)
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			return nil
		}
	}
	h, err := attachHierarchy(ctx, tok, s.id, cfg, rec, log)
	if err != nil {
		return err
	}
	if old := s.hier.Swap(h); old != nil {
		old.close()
	}
	return nil
}

// hierarchy returns the store's hierarchy, or an error saying it has none.
func (s *Store) hierarchy() (*hierarchy, error) {
	if h := s.hier.Load(); h != nil {
		return h, nil
	}
	if _, err := s.token(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("keystore: %s holds no key material wrapped", StoreDescription(s.id))
}

// KeyMaterial is how the store makes new material now.
func (s *Store) KeyMaterial() KeyMaterial {
	if h := s.hier.Load(); h != nil && h.wrapNew {
		return Wrapped
	}
	return TokenObjects
}

// DomainKeys lists the store's usable domain keys (ACTIVE and RETIRED),
// the ACTIVE one last; none for a store without a hierarchy.
func (s *Store) DomainKeys() []DomainKeyRecord {
	if h := s.hier.Load(); h != nil {
		return h.domainKeys()
	}
	return nil
}

// RotateDomainKey makes a new domain key the store's ACTIVE one; the one
// it replaces is RETIRED until the material under it is rewrapped (Rewrap)
// and it is destroyed (DestroyDomainKey).
func (s *Store) RotateDomainKey(ctx context.Context) (string, error) {
	h, err := s.hierarchy()
	if err != nil {
		return "", err
	}
	return h.rotateNow(ctx)
}

// ReloadDomainKeys reads the domain key records again (another process
// may have rotated them) and finishes what it finds cut short.
func (s *Store) ReloadDomainKeys(ctx context.Context) error {
	h := s.hier.Load()
	if h == nil {
		return nil
	}
	return h.reload(ctx)
}

// Rewrap returns m, wrapped material, wrapped under the store's ACTIVE
// domain key: the same version (Ref), with the Wrapped and DomainKey kms
// must record in place of m's. m itself is returned if it is under the
// ACTIVE key already.
func (s *Store) Rewrap(ctx context.Context, m Material) (Material, error) {
	if m.OnToken() {
		return Material{}, fmt.Errorf("keystore: material of %v held as token objects is not wrapped", m.spec)
	}
	h, err := s.hierarchy()
	if err != nil {
		return Material{}, err
	}
	wrapped, dk, err := h.rewrap(ctx, m)
	if err != nil {
		return Material{}, classify(err)
	}
	m.wrapped, m.domainKey = wrapped, dk
	return m, nil
}

// DestroyDomainKey destroys the RETIRED domain key id if no material names
// it any more (ErrDomainKeyInUse otherwise): the records first
// (DESTROYING, checked against every material in one transaction), then
// the token object, then the record.
func (s *Store) DestroyDomainKey(ctx context.Context, id string) error {
	h, err := s.hierarchy()
	if err != nil {
		return err
	}
	return h.destroy(ctx, id)
}

// Wrap moves m, material held as token objects, into the store's
// hierarchy: it returns the same version wrapped under the ACTIVE domain
// key, for kms to record, after which Destroy(m) removes the token
// objects. Only extractable objects can be wrapped, and hsmkms makes none:
// the token refuses the others (ErrUnsupported), which is final, as PKCS#11
// never lets CKA_EXTRACTABLE become true again.
func (s *Store) Wrap(ctx context.Context, m Material) (Material, error) {
	if !m.OnToken() {
		return m, nil
	}
	h, err := s.hierarchy()
	if err != nil {
		return Material{}, err
	}
	h.mu.RLock()
	dk := h.active
	h.mu.RUnlock()
	if dk == nil {
		return Material{}, fmt.Errorf("keystore: %s has no active domain key", StoreDescription(s.id))
	}
	refs := m.objects()
	key, public := refs[0], refs[0]
	public.Class = 0
	if len(refs) == 2 {
		public = refs[1]
	}
	var wrapped []byte
	err = h.withDomainKey(ctx, dk, func(use hsm.ObjectRef) error {
		w, err := h.tok.WrapExisting(ctx, use, key, public)
		if err != nil {
			return err
		}
		wrapped, err = envelope{spec: m.spec, key: w.Key, publicKey: w.PublicKey}.marshal()
		return err
	})
	if err != nil {
		return Material{}, classify(err)
	}
	out := m
	out.wrapped, out.domainKey = wrapped, dk.id
	return out, nil
}

// CacheStats says what the store keeps unwrapped on its token.
func (s *Store) CacheStats() CacheStats {
	if h := s.hier.Load(); h != nil {
		return h.cache.stats()
	}
	return CacheStats{}
}
