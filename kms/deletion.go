package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

type ScheduleKeyDeletionInput struct {
	KeyId               string
	PendingWindowInDays int
}

type ScheduleKeyDeletionOutput struct {
	DeletionDate        *wire.Time `json:"DeletionDate,omitempty"`
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
	k, err := s.key(ctx, r, in.KeyId, a)
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	_, err = s.writeKey(ctx, k, func(k *store.Key, set []*store.Key) error {
		if err := s.checkState(k, r.op.states); err != nil {
			return err
		}
		k.PendingWindowDays = days
		out = &ScheduleKeyDeletionOutput{KeyId: arnOf(k), PendingWindowInDays: days}
		if k.MultiRegion && !k.IsReplica() && len(set) > 1 {
			// A primary outlives its replicas: its waiting period
			// begins when the last of them is deleted (Reap).
			k.State = string(StatePendingReplicaDeletion)
			out.KeyState = k.State
			return nil
		}
		when := s.now().UTC().Add(time.Duration(days) * 24 * time.Hour)
		k.State = string(StatePendingDeletion)
		k.DeletionDate = when
		d := wire.Time(when)
		out.DeletionDate, out.KeyState = &d, k.State
		return nil
	})
	if isNotFound(err) {
		return nil, keyNotFound(k.Region, k.Account, k.ID)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

type CancelKeyDeletionOutput struct {
	KeyId string
}

func (s *Service) CancelKeyDeletion(ctx context.Context, r *Request, in *KeyIDInput) (*CancelKeyDeletionOutput, error) {
	now := s.now()
	k, err := s.update(ctx, r, in.KeyId, access{}, func(k *store.Key) error {
		// Once its waiting period has ended the key belongs to the reaper,
		// which may be destroying its material right now: a cancel that
		// succeeded then would answer for a key that is about to vanish.
		if !k.DeletionDate.IsZero() && !k.DeletionDate.After(now) {
			return wire.Errorf(wire.KMSInvalidState, "%s is pending deletion and its waiting period has ended: it is being deleted.", arnOf(k))
		}
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

// Reap finishes multi-Region transitions left by another node
// (finishStrayTransitions), then deletes every key whose deletion date has
// passed: first its token
// objects, then its metadata (with its aliases and tags). The order makes a
// crash harmless: a key whose objects are gone but whose row remains is
// simply reaped again. A key whose token cannot be reached stays scheduled
// and is retried on the next pass. Every node reaps: each key is claimed
// (a mark) and read again before anything is done to it, so each is
// deleted once, by one node, and a node that dies mid-way leaves it to
// the next. It returns how many keys this node deleted.
func (s *Service) Reap(ctx context.Context) (int, error) {
	var errs []error
	if err := s.finishStrayTransitions(ctx); err != nil {
		errs = append(errs, err)
	}
	// A key is reaped a minute after its waiting period ends: by then
	// CancelKeyDeletion refuses it on every node whose clock is within a
	// minute of this one's, and any cancel that began in time has long
	// committed, so nothing cancelled is ever destroyed.
	now := s.now().Add(-reapGrace)
	due, err := s.store.KeysDueForDeletion(ctx, now)
	if err != nil {
		return 0, errors.Join(append(errs, err)...)
	}
	n := 0
	for _, k := range due {
		done, err := s.reapOne(ctx, k, now)
		if err != nil {
			errs = append(errs, err)
		}
		if done {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// reapGrace is how long after its deletion date a key is reaped.
const reapGrace = time.Minute

func reapMark(k *store.Key) string { return "reap/" + k.Account + "/" + k.Region + "/" + k.ID }

// reapOne deletes k if it is still due once claimed.
func (s *Service) reapOne(ctx context.Context, k *store.Key, now time.Time) (bool, error) {
	release, err := s.claim(ctx, reapMark(k), "")
	if errors.Is(err, store.ErrMarkHeld) {
		return false, nil // another node is on it
	}
	if err != nil {
		return false, err
	}
	defer release()
	k, err = s.cache.Store.GetKey(ctx, k.Account, k.Region, k.ID)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if k.State != string(StatePendingDeletion) || k.DeletionDate.After(now) {
		return false, nil // cancelled, or reaped, since the list was read
	}
	connected := true
	if materialStoreID(k) != "" {
		var usable bool
		connected, usable, err = s.customStoreFor(ctx, k.CustomKeyStoreID)
		if err != nil {
			return false, err
		}
		if connected && !usable {
			return false, nil // connected, but not from this node now: a node that is logged in reaps it
		}
	}
	// Claimed and read again: the record of the deletion is written by
	// this node, the one that performs it, once.
	if err := s.reapKey(ctx, k, connected); err != nil {
		if isNotFound(err) {
			return false, nil // changed since read (errNotDueNow), or gone
		}
		return false, err
	}
	return true, nil
}

// customStoreFor says whether the custom key store id is connected (its
// shared state; a store that is gone is not), and whether this node can
// use its token now.
func (s *Service) customStoreFor(ctx context.Context, id string) (connected, usable bool, err error) {
	ks, err := s.store.GetKeyStore(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	if keystore.ConnectionState(ks.ConnectionState) != keystore.Connected {
		return false, false, nil
	}
	st, _ := s.registered(ks).State()
	return true, st == keystore.Connected, nil
}

// errLastOfSet: the key is the only one of its set left, so its material
// goes with it.
var errLastOfSet = errors.New("kms: the last key of its multi-Region key")

// errNotDueNow: the key changed between the reaper's read and its write
// (cancelled, or already deleted); nothing to do.
// It is a store.ErrNotFound, which the reaper passes over.
var errNotDueNow = fmt.Errorf("kms: key no longer due for deletion: %w", store.ErrNotFound)

// reapFromSet deletes k, a multi-Region key due for deletion, if other keys
// of its set remain: they name its material, so only its row goes, in the
// transaction that sees them. If that leaves a primary waiting for its
// replicas (PendingReplicaDeletion) alone, its waiting period begins. It
// reports false, deleting nothing, when k is the last key of its set. A
// key can join a set only through a primary that is Enabled or Disabled,
// so a set whose only key is due for deletion stays so while its material
// is destroyed.
func (s *Service) reapFromSet(ctx context.Context, k *store.Key) (bool, error) {
	now := s.now().UTC()
	var released []store.Material
	_, err := s.store.UpdateKeySet(ctx, k.Account, k.ID, func(set []*store.Key) (store.SetChange, error) {
		var self *store.Key
		for _, o := range set {
			if o.Region == k.Region {
				self = o
			}
		}
		if self == nil || self.State != string(StatePendingDeletion) || self.DeletionDate.After(now) {
			return store.SetChange{}, store.ErrNotFound // changed since read: not due now
		}
		if len(set) == 1 {
			return store.SetChange{}, errLastOfSet
		}
		if !self.IsReplica() {
			// A primary with replicas is PendingReplicaDeletion, never
			// due; refuse rather than leave replicas without a primary.
			return store.SetChange{}, internalf("primary key %s is due for deletion while it has replicas", arnOf(self))
		}
		if len(set) == 2 {
			for _, o := range set {
				if o != self && o.State == string(StatePendingReplicaDeletion) {
					o.State = string(StatePendingDeletion)
					o.DeletionDate = now.Add(days(o.PendingWindowDays))
				}
			}
		}
		// Imported material that only this key had imported goes with
		// it, as its DeleteImportedKeyMaterial would take it.
		released = released[:0]
		for _, m := range self.Materials {
			if self.Origin == originExternal && hasMaterial(m) && !importedElsewhere(self, set, m.ID) {
				released = append(released, m)
				for _, o := range set {
					for i := range o.Materials {
						if o.Materials[i].ID == m.ID {
							o.Materials = slices.Clone(o.Materials)
							o.Materials[i].Wrapped, o.Materials[i].DomainKey = nil, ""
						}
					}
				}
			}
		}
		return store.SetChange{Delete: self.Region}, nil
	})
	for _, m := range released {
		if err == nil {
			s.destroyImported(ctx, k, m)
		}
	}
	switch {
	case errors.Is(err, errLastOfSet):
		return false, nil
	case isNotFound(err):
		return false, errNotDueNow
	case err == nil:
		keystore.Step(keystore.StepReplicaDeleted)
	}
	return err == nil, err
}

// reapKey deletes one key that is due, claimed and read again by
// reapOne: AWS's DeleteKey service event. connected says whether the
// custom key store holding its material, if any, is connected; if it is
// not, the key goes and its material is recorded as orphaned.
func (s *Service) reapKey(ctx context.Context, k *store.Key, connected bool) error {
	return s.serviceAction(ctx, "DeleteKey", k.Account, k.Region, keyResource(arnOf(k), k.Account),
		func() (audit.Fields, audit.Fields, error) {
			response := audit.Fields{{Name: "keyId", Value: arnOf(k)}}
			if k.MultiRegion {
				deleted, err := s.reapFromSet(ctx, k)
				if err != nil {
					return nil, nil, err
				}
				if deleted {
					s.log.Info("key deleted; its material stays, used by the other keys of its multi-Region key", "key", arnOf(k))
					return audit.Fields{{Name: "multiRegionKeyMaterialKept", Value: true}}, response, nil
				}
				// The last key of its set: deleted as any key, material first.
			}
			if materialStoreID(k) != "" && !connected {
				// AWS deletes the key anyway and leaves the key material in
				// the cluster; hsmkms records it as an orphan to report.
				if err := s.store.DeleteKeyOrphaning(ctx, k, s.now()); err != nil {
					return nil, nil, err
				}
				s.log.Warn("key deleted while its custom key store is disconnected; its token object is orphaned", "key", arnOf(k), "store", k.CustomKeyStoreID)
				return audit.Fields{{Name: "customKeyStoreId", Value: k.CustomKeyStoreID}, {Name: "keyMaterialOrphaned", Value: true}}, response, nil
			}
			if err := s.destroyMaterial(ctx, k); err != nil {
				return nil, nil, err
			}
			if err := s.store.DeleteKey(ctx, k.Account, k.Region, k.ID); err != nil {
				return nil, nil, err
			}
			s.log.Info("key deleted", "key", arnOf(k))
			return nil, response, nil
		})
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
	// Creating: keys in Creating left alone because, on a database other
	// nodes share, they may be being created now (younger than
	// creatingGrace); a later start removes them if they stay so.
	Creating []string
	// FinishedMigrations: token objects of material recorded wrapped by a
	// migration (MigrateToWrapped) that a crash cut short before it
	// destroyed them, now destroyed.
	FinishedMigrations []string
	// FinishedTransitions: multi-Region keys (account and id) with a
	// replica left Creating or a primary Region left moving, now finished.
	FinishedTransitions []string
}

// creatingGrace is how long a key may stay in Creating on a shared
// database before a starting node takes it for abandoned: far longer than
// any CreateKey takes (RSA-4096 on a slow HSM included).
const creatingGrace = 10 * time.Minute

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
	inFlight := map[[2]string]bool{}  // multi-Region keys with a transition to finish
	err = s.store.ForEachKey(ctx, func(k *store.Key) error {
		if (k.State == string(StateCreating) && k.IsReplica()) || k.NewPrimaryRegion != "" {
			inFlight[[2]string{k.Account, k.ID}] = true
		}
		if k.State == string(StateCreating) && !k.IsReplica() {
			creating = append(creating, k)
			return nil
		}
		if materialStoreID(k) != "" {
			return nil // its token is checked when its store connects, not here
		}
		if uuid, _, ok := keyIDBytes(k.ID); ok && keyIDs[string(uuid[:])] && (owners[string(uuid[:])] == nil || !k.IsReplica()) {
			// A multi-Region key's objects are its set's; its primary,
			// the key that rotates, stands for it.
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
	for k := range inFlight {
		// A replica written Creating, or a primary Region recorded as
		// moving, when the process stopped: finished now, as it would
		// have been.
		if err := s.finishTransitions(ctx, k[0], k[1]); err != nil && !isNotFound(err) {
			return nil, err
		}
		r.FinishedTransitions = append(r.FinishedTransitions, k[0]+" "+k[1])
	}
	for _, m := range migrated {
		if err := tok.Destroy(ctx, m); err != nil {
			return nil, internalf("destroying the token objects of migrated material: %w", err)
		}
	}
	for _, k := range creating {
		if s.shared && s.now().Sub(k.CreationDate) < creatingGrace {
			// Perhaps being created on another node now: left for a
			// later start to remove if it stays half-made.
			r.Creating = append(r.Creating, arnOf(k))
			continue
		}
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
// never committed. A rotation of k running now, on any node, is left
// alone (it records or destroys its object itself); once none runs, the
// key is read again so a rotation that committed after the walk read k is
// seen.
func (s *Service) destroyUnrecordedRotation(ctx context.Context, tok *keystore.Store, k *store.Key, id []byte) (bool, error) {
	if _, running, err := s.rotating(ctx, k); err != nil || running || s.imports.running(k.ID) || s.namesMaterial(ctx, k, id) {
		return false, err
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
