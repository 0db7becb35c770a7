package kms

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

type ScheduleKeyDeletionInput struct {
	KeyId               string
	PendingWindowInDays int
}

type ScheduleKeyDeletionOutput struct {
	DeletionDate        wire.Time
	KeyId               string
	KeyState            string
	PendingWindowInDays int
}

func (s *Service) ScheduleKeyDeletion(ctx context.Context, r *Request, in *ScheduleKeyDeletionInput) (*ScheduleKeyDeletionOutput, error) {
	days := in.PendingWindowInDays
	if days == 0 {
		days = 30
	}
	if days < 7 || days > 30 {
		return nil, wire.Errorf(wire.Validation, "1 validation error detected: Value '%d' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30", days)
	}
	a := access{cond: conditions("kms:ScheduleKeyDeletionPendingWindowInDays", strconv.Itoa(days))}
	var out *ScheduleKeyDeletionOutput
	_, err := s.update(ctx, r, in.KeyId, a, func(k *store.Key) error {
		when := s.now().UTC().Add(time.Duration(days) * 24 * time.Hour)
		k.State = string(StatePendingDeletion)
		k.DeletionDate = when
		k.PendingWindowDays = days
		out = &ScheduleKeyDeletionOutput{DeletionDate: wire.Time(when), KeyId: arnOf(k), KeyState: k.State, PendingWindowInDays: days}
		return nil
	})
	return out, err
}

type CancelKeyDeletionOutput struct {
	KeyId string
}

func (s *Service) CancelKeyDeletion(ctx context.Context, r *Request, in *KeyIDInput) (*CancelKeyDeletionOutput, error) {
	k, err := s.update(ctx, r, in.KeyId, access{}, func(k *store.Key) error {
		k.State = string(StateDisabled)
		if k.Origin == originExternal && !allImported(k) {
			k.State = string(StatePendingImport) // as AWS: it has no usable material
		}
		k.DeletionDate = time.Time{}
		k.PendingWindowDays = 0
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &CancelKeyDeletionOutput{KeyId: arnOf(k)}, nil
}

// Reap deletes every key whose deletion date has passed: first its token
// objects, then its metadata (with its aliases and tags). The order makes a
// crash harmless: a key whose objects are gone but whose row remains is
// simply reaped again. A key whose token cannot be reached stays scheduled
// and is retried on the next pass. It returns how many keys were deleted.
func (s *Service) Reap(ctx context.Context) (int, error) {
	due, err := s.store.KeysDueForDeletion(ctx, s.now())
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, k := range due {
		if materialStoreID(k) != "" && !s.storeConnected(k.CustomKeyStoreID) {
			// AWS deletes the key anyway and leaves the key material in
			// the cluster; hsmkms records it as an orphan to report.
			if err := s.store.DeleteKeyOrphaning(ctx, k, s.now()); err != nil && !errors.Is(err, store.ErrNotFound) {
				errs = append(errs, err)
				continue
			}
			s.log.Warn("key deleted while its custom key store is disconnected; its token object is orphaned", "key", arnOf(k), "store", k.CustomKeyStoreID)
			n++
			continue
		}
		if err := s.destroyMaterial(ctx, k); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.store.DeleteKey(ctx, k.Account, k.Region, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		s.log.Info("key deleted", "key", arnOf(k))
		n++
	}
	return n, errors.Join(errs...)
}

func (s *Service) storeConnected(id string) bool {
	live, err := s.keystores.Get(id)
	if err != nil {
		return false
	}
	st, _ := live.State()
	return st == keystore.Connected
}

func (s *Service) destroyMaterial(ctx context.Context, k *store.Key) error {
	tok, err := s.token(k)
	if err != nil {
		return err
	}
	if err := destroyMaterials(ctx, tok, k); err != nil {
		return internalf("destroy material of %s: %w", arnOf(k), err)
	}
	return nil
}

// destroyMaterials destroys every material version of k; versions already
// gone are not an error, so it can be repeated.
func destroyMaterials(ctx context.Context, tok *keystore.Store, k *store.Key) error {
	for _, m := range k.Materials {
		if err := tok.Destroy(ctx, material(k, m)); err != nil {
			return err
		}
	}
	return nil
}

// RunReaper calls Reap every interval until ctx ends. Deletion dates live in
// the store, so a restart loses nothing: overdue keys go on the first pass.
func (s *Service) RunReaper(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.Reap(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("deletion reaper", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Report is what Reconcile found.
type Report struct {
	// Abandoned: keys left in Creating by a crash, now removed.
	Abandoned []string
	// MissingMaterial: material versions whose token object is gone.
	MissingMaterial []string
	// OrphanObjects: secret keys on a token that no key's metadata names.
	OrphanObjects []string
	// AbandonedRotations: token objects a crash left between making a
	// rotation's object and recording it, now destroyed (key ARN and the
	// material id the object would have had).
	AbandonedRotations []string
	// FinishedMigrations: token objects of material recorded wrapped by a
	// migration (MigrateToWrapped) that a crash cut short before it
	// destroyed them, now destroyed.
	FinishedMigrations []string
}

// Reconcile is the startup check between metadata and tokens. It removes
// keys a crash left half-created, rotation objects a crash left
// unrecorded and the token objects of material a migration recorded
// wrapped, and reports, without changing anything, material whose token
// object (or, wrapped, whose domain key) is missing and other token
// objects no metadata names (an operator decides about those).
func (s *Service) Reconcile(ctx context.Context) (*Report, error) {
	r := &Report{}
	tok := s.keystores.Default()
	if n, err := tok.CleanImportKeys(ctx, s.now()); err != nil {
		return nil, err
	} else if n > 0 {
		s.log.Info("destroyed expired import keys", "count", n)
	}
	objs, err := tok.Inventory(ctx)
	if err != nil {
		return nil, err
	}
	// What the walk keeps is bounded by the objects on the token, never
	// by the number of keys: a store holding 100,000 keys wrapped has a
	// handful of objects, and keeping every key the walk reads made the
	// garbage collector the start's main cost.
	onToken := map[string]bool{}
	keyIDs := map[string]bool{} // TokenObject.KeyID of the material-like objects
	for _, o := range objs {
		onToken[string(o.Ref)] = true
		if o.IsMaterial {
			keyIDs[string(o.KeyID[:])] = true
		}
	}
	known := map[string]bool{}
	var creating []*store.Key
	var migrated []keystore.Material
	owners := map[string]*store.Key{} // key uuid (TokenObject.KeyID) → key, for those on the token
	err = s.store.ForEachKey(ctx, func(k *store.Key) error {
		if k.State == string(StateCreating) {
			creating = append(creating, k)
			return nil
		}
		if materialStoreID(k) != "" {
			return nil // its token is checked when its store connects, not here
		}
		if uuid, ok := parseUUID(k.ID); ok && keyIDs[string(uuid[:])] {
			owners[string(uuid[:])] = k
		}
		for _, m := range k.Materials {
			if !hasMaterial(m) {
				continue // deleted or expired: its objects, if a crash left any, go below
			}
			if len(m.Wrapped) > 0 {
				if err := tok.Find(ctx, material(k, m)); err != nil {
					r.MissingMaterial = append(r.MissingMaterial, arnOf(k)+" material "+m.ID+" (wrapped under domain key "+m.DomainKey+", not on the token)")
				}
				if onToken[string(m.TokenID)] {
					migrated = append(migrated, material(k, store.Material{TokenID: m.TokenID}))
					r.FinishedMigrations = append(r.FinishedMigrations, arnOf(k)+" material "+m.ID)
					known[string(m.TokenID)] = true
				}
				continue
			}
			if onToken[string(m.TokenID)] {
				known[string(m.TokenID)] = true
			} else {
				r.MissingMaterial = append(r.MissingMaterial, arnOf(k)+" material "+m.ID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, m := range migrated {
		if err := tok.Destroy(ctx, m); err != nil {
			return nil, internalf("destroying the token objects of migrated material: %w", err)
		}
	}
	for _, k := range creating {
		if materialStoreID(k) != "" && !s.storeConnected(k.CustomKeyStoreID) {
			if err := s.store.DeleteKeyOrphaning(ctx, k, s.now()); err != nil {
				return nil, err
			}
			r.Abandoned = append(r.Abandoned, arnOf(k))
			continue
		}
		if err := s.destroyMaterial(ctx, k); err != nil {
			return nil, err
		}
		if err := s.store.DeleteKey(ctx, k.Account, k.Region, k.ID); err != nil {
			return nil, err
		}
		for _, m := range k.Materials {
			delete(onToken, string(m.TokenID))
		}
		r.Abandoned = append(r.Abandoned, arnOf(k))
	}
	for _, o := range objs {
		if known[string(o.Ref)] || !onToken[string(o.Ref)] {
			continue
		}
		if k := owners[string(o.KeyID[:])]; k != nil && o.IsMaterial {
			destroyed, err := s.destroyUnrecordedRotation(ctx, tok, k, o.Ref)
			if err != nil {
				return nil, err
			}
			if destroyed {
				r.AbandonedRotations = append(r.AbandonedRotations, arnOf(k)+" material "+hexID(o.MaterialID))
			}
			continue // else a rotation running now, or recorded since the walk read k
		}
		r.OrphanObjects = append(r.OrphanObjects, o.Label)
	}
	return r, nil
}

// destroyUnrecordedRotation destroys id, a material version on k's token
// that belongs to k (keystore.TokenObject.KeyID), if no material of k
// names it: a rotation that made its object and died before recording it.
// That is safe because nothing can have been encrypted under a material
// never committed. A rotation of k running in this process now is left
// alone (it records or destroys its object itself); once none runs, the
// key is read again so a rotation that committed after the walk read k is
// seen.
func (s *Service) destroyUnrecordedRotation(ctx context.Context, tok *keystore.Store, k *store.Key, id []byte) (bool, error) {
	if _, running := s.rotations.get(k); running || s.imports.running(k.ID) || s.namesMaterial(ctx, k, id) {
		return false, nil
	}
	m := material(k, store.Material{TokenID: id})
	if err := tok.Destroy(ctx, m); err != nil {
		return false, internalf("destroy unrecorded rotation of %s: %w", arnOf(k), err)
	}
	s.log.Warn("destroyed the token object of a rotation a crash left unrecorded", "key", arnOf(k), "material", hexID(m.ID()))
	return true, nil
}

// namesMaterial reports whether k, as stored now, has a material whose
// token object is id. A key that is gone or unreadable counts as naming
// it, so that nothing is destroyed on doubt.
func (s *Service) namesMaterial(ctx context.Context, k *store.Key, id []byte) bool {
	cur, err := s.store.GetKey(ctx, k.Account, k.Region, k.ID)
	if err != nil {
		return true
	}
	for _, m := range cur.Materials {
		if bytes.Equal(m.TokenID, id) && hasMaterial(m) {
			return true
		}
	}
	return false
}
