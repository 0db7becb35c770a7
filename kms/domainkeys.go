package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
)

// Domain keys: the kms side of keystore's key hierarchy. keystore makes,
// retires and destroys domain keys; kms finds the material under a retired
// one and records it rewrapped under the active one, one key at a time,
// in the background (RunDomainKeys), so that a retired domain key can be
// destroyed once nothing names it.

// RotateDomainKey makes a new domain key the active one of the key store
// storeID ("" for the default key store), which must hold material
// wrapped and be connected. Material under the one it replaces keeps
// working, and is rewrapped by the domain key job (RewrapDomainKeys), which
// then destroys the old key.
func (s *Service) RotateDomainKey(ctx context.Context, storeID string) (string, error) {
	ks, err := s.keystores.Get(storeID)
	if err != nil {
		return "", err
	}
	return s.rotateDomainKey(ctx, ks, "requested")
}

// rotateDomainKey makes a new domain key ks's active one, as an internal
// action in the audit trail (RotateDomainKey, from HierarchySource), and
// says why: "requested" (hsmkms domain-keys --rotate) or "age" (the
// domain key job, domain_key_rotation_days).
func (s *Service) rotateDomainKey(ctx context.Context, ks *keystore.Store, reason string) (string, error) {
	var id string
	err := s.hierarchyAction(ctx, "RotateDomainKey", func() (audit.Fields, error) {
		details := audit.Fields{{Name: "keyStoreId", Value: keyStoreName(ks.ID())}, {Name: "reason", Value: reason}}
		if dks := ks.DomainKeys(); len(dks) > 0 {
			details.Add("previousDomainKeyId", dks[len(dks)-1].ID)
		}
		var err error
		if id, err = ks.RotateDomainKey(ctx); err == nil {
			details.Add("domainKeyId", id)
		}
		return details, err
	})
	return id, err
}

// keyStoreName is how records name a key store: "default" for the
// default key store, else its id.
func keyStoreName(id string) string {
	if id == keystore.DefaultID {
		return "default"
	}
	return id
}

// DomainKeyState is one domain key of a key store, for reports.
type DomainKeyState struct {
	KeyStoreID string
	ID         string
	State      string // ACTIVE or RETIRED
	Created    time.Time
	// Materials is how many material versions it wraps.
	Materials int
}

// DomainKeys lists the usable domain keys of every key store that has
// them (the default one, and the custom ones connected), with how many
// material versions each wraps.
func (s *Service) DomainKeys(ctx context.Context) ([]DomainKeyState, error) {
	var out []DomainKeyState
	index := map[[2]string]int{}
	for _, ks := range s.hierarchyStores() {
		for _, dk := range ks.DomainKeys() {
			index[[2]string{ks.ID(), dk.ID}] = len(out)
			out = append(out, DomainKeyState{KeyStoreID: ks.ID(), ID: dk.ID, State: dk.State, Created: dk.Created})
		}
	}
	err := s.store.ForEachKey(ctx, func(k *store.Key) error {
		for _, m := range k.Materials {
			if i, ok := index[[2]string{materialStoreID(k), m.DomainKey}]; ok && m.DomainKey != "" {
				out[i].Materials++
			}
		}
		return nil
	})
	return out, err
}

// hierarchyStores are the key stores with domain keys now: the default one
// and the connected custom ones.
func (s *Service) hierarchyStores() []*keystore.Store {
	var out []*keystore.Store
	ids := []string{keystore.DefaultID}
	stores, err := s.store.AllKeyStores(context.Background())
	if err == nil {
		for _, ks := range stores {
			ids = append(ids, ks.ID)
		}
	}
	for _, id := range ids {
		ks, err := s.keystores.Get(id)
		if err != nil || ks.Available() != nil || len(ks.DomainKeys()) == 0 {
			continue
		}
		out = append(out, ks)
	}
	return out
}

// DomainKeyPass is what one pass of the domain key job did.
type DomainKeyPass struct {
	Rotated   []string // domain keys made active because the old one was too old
	Rewrapped int      // material versions moved to their store's active domain key
	Destroyed []string // retired domain keys destroyed
}

// RewrapDomainKeys is one pass of the domain key job: for each key store
// with domain keys it reads their records again (another process may have
// rotated them), replaces an active domain key older than the rotation
// period, rewraps every material version under a retired one, and
// destroys the retired ones nothing names any more. Each rewrapped version
// is recorded in its own write, which changes it only if it still holds
// what was rewrapped, so a crash or a concurrent write loses nothing: the
// next pass does what is left.
func (s *Service) RewrapDomainKeys(ctx context.Context) (DomainKeyPass, error) {
	var pass DomainKeyPass
	var errs []error
	for _, ks := range s.hierarchyStores() {
		release, err := s.claim(ctx, domainKeysMark(ks.ID()), "")
		if errors.Is(err, store.ErrMarkHeld) {
			continue // another node is on it
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = s.domainKeysPass(ctx, ks, &pass)
		release()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return pass, errors.Join(errs...)
}

// domainKeysMark names the claim on a key store's domain key work: one
// node at a time rotates, rewraps and destroys a store's domain keys
// (the rewrap walks every key), and a node that dies mid-way leaves the
// claim to be taken over (node.go).
func domainKeysMark(storeID string) string { return "domain-keys/" + storeID }

// domainKeysPass is RewrapDomainKeys for one key store; the caller holds
// its claim.
func (s *Service) domainKeysPass(ctx context.Context, ks *keystore.Store, pass *DomainKeyPass) error {
	var errs []error
	if err := ks.ReloadDomainKeys(ctx); err != nil {
		return fmt.Errorf("%s: %w", keystore.StoreDescription(ks.ID()), err)
	}
	dks := ks.DomainKeys()
	if len(dks) == 0 {
		return nil
	}
	if active := dks[len(dks)-1]; s.domainKeyRotation > 0 && active.State == "ACTIVE" && s.now().Sub(active.Created) >= s.domainKeyRotation {
		id, err := s.rotateDomainKey(ctx, ks, "age")
		if err != nil {
			return err
		}
		pass.Rotated = append(pass.Rotated, id)
		dks = ks.DomainKeys()
	}
	var retired []string
	for _, dk := range dks {
		if dk.State == "RETIRED" {
			retired = append(retired, dk.ID)
		}
	}
	if len(retired) == 0 {
		return nil
	}
	// Each pass that finds retired domain keys is an internal action in
	// the audit trail (RewrapKeyMaterial: how many material versions moved
	// to which domain key), as is each destroy; the node that holds the
	// store's claim writes them.
	err := s.hierarchyAction(ctx, "RewrapKeyMaterial", func() (audit.Fields, error) {
		n, err := s.rewrapUnder(ctx, ks, retired)
		pass.Rewrapped += n
		return audit.Fields{{Name: "keyStoreId", Value: keyStoreName(ks.ID())}, {Name: "retiredDomainKeyIds", Value: retired},
			{Name: "domainKeyId", Value: dks[len(dks)-1].ID}, {Name: "materialVersionsRewrapped", Value: n}}, err
	})
	if err != nil {
		return err
	}
	for _, id := range retired {
		destroyed := false
		err := s.hierarchyAction(ctx, "DestroyDomainKey", func() (audit.Fields, error) {
			details := audit.Fields{{Name: "keyStoreId", Value: keyStoreName(ks.ID())}, {Name: "domainKeyId", Value: id}}
			err := ks.DestroyDomainKey(ctx, id)
			if errors.Is(err, keystore.ErrDomainKeyInUse) {
				// Written under it since the walk (a request that
				// wrapped just before the rotation): the next pass
				// moves it.
				details.Add("destroyed", false)
				details.Add("reason", "material written under it since the pass began; the next pass moves it")
				return details, nil
			}
			destroyed = err == nil
			details.Add("destroyed", destroyed)
			return details, err
		})
		switch {
		case err != nil:
			errs = append(errs, err)
		case destroyed:
			pass.Destroyed = append(pass.Destroyed, id)
			s.log.Info("retired domain key destroyed", "store", ks.ID(), "domain_key", id)
		}
	}
	return errors.Join(errs...)
}

// rewrapUnder rewraps every material version of ks's keys that is under
// one of the domain keys retired.
func (s *Service) rewrapUnder(ctx context.Context, ks *keystore.Store, retired []string) (int, error) {
	n := 0
	err := s.store.ForEachKey(ctx, func(k *store.Key) error {
		if materialStoreID(k) != ks.ID() {
			return nil
		}
		for _, m := range k.Materials {
			if !slices.Contains(retired, m.DomainKey) {
				continue
			}
			moved, err := ks.Rewrap(ctx, material(k, m))
			if err != nil {
				return fmt.Errorf("kms: rewrapping material %s of %s: %w", m.ID, arnOf(k), err)
			}
			done, err := s.replaceMaterial(ctx, k, m, moved)
			if err != nil {
				return err
			}
			if done {
				n++
				keystore.Step(keystore.StepMaterialRewrapped)
			}
		}
		return nil
	})
	return n, err
}

// replaceMaterial records now, in place of the material version was of k,
// the same version held otherwise, if k still holds was as it was; it
// reports whether it did. A key gone meanwhile is not an error.
func (s *Service) replaceMaterial(ctx context.Context, k *store.Key, was store.Material, now keystore.Material) (bool, error) {
	done := false
	// A multi-Region key's material is every key of its set's: it is
	// replaced in all of them in one write, or, if one of them still
	// names was's token objects otherwise, in none (the caller destroys
	// those objects when done).
	_, err := s.writeKey(ctx, k, func(self *store.Key, set []*store.Key) error {
		done = false
		replaced := false
		for _, cur := range set {
			for i, m := range cur.Materials {
				if m.ID != was.ID {
					continue
				}
				if m.DomainKey == was.DomainKey && bytes.Equal(m.Wrapped, was.Wrapped) && bytes.Equal(m.TokenID, was.TokenID) {
					cur.Materials = slices.Clone(cur.Materials)
					cur.Materials[i].Wrapped, cur.Materials[i].DomainKey = now.Wrapped(), now.DomainKey()
					replaced = replaced || cur == self
				} else if len(was.Wrapped) == 0 && len(m.Wrapped) == 0 && bytes.Equal(m.TokenID, was.TokenID) {
					return errMaterialDiverged
				}
			}
		}
		done = replaced
		return nil
	})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, errMaterialDiverged) {
		return false, nil
	}
	return done, err
}

// errMaterialDiverged: keys of one multi-Region key record one material
// version differently; the replacement is left for another run.
var errMaterialDiverged = errors.New("kms: the keys of a multi-Region key record a material version differently")

// RunDomainKeys runs RewrapDomainKeys every interval until ctx ends.
func (s *Service) RunDomainKeys(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if pass, err := s.RewrapDomainKeys(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("domain key job", "error", err)
		} else if pass.Rewrapped > 0 || len(pass.Rotated) > 0 {
			s.log.Info("domain key job", "rotated", len(pass.Rotated), "rewrapped", pass.Rewrapped, "destroyed", len(pass.Destroyed))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// MigrationReport is what MigrateToWrapped did.
type MigrationReport struct {
	// Migrated are the material versions now held wrapped ("<key ARN>
	// material <id>"), whose token objects were destroyed.
	Migrated []string
	// Refused are those the token would not wrap, with why: material
	// made non-extractable (every version hsmkms made as token objects),
	// which no PKCS#11 token lets become extractable again.
	Refused []string
}

// MigrateToWrapped moves the material of the key store storeID's keys
// held as token objects into its key hierarchy, where the token allows:
// wrap the version under the active domain key, record it wrapped, then
// destroy its token objects (a crash before the destroy leaves objects
// the material no longer needs, which Reconcile destroys at the next
// start). Run it with no other hsmkms process using the store: a process
// holding the old record in its cache would go on using the objects.
func (s *Service) MigrateToWrapped(ctx context.Context, storeID string) (*MigrationReport, error) {
	ks, err := s.keystores.Get(storeID)
	if err != nil {
		return nil, err
	}
	if ks.KeyMaterial() != keystore.Wrapped {
		return nil, fmt.Errorf("kms: %s does not hold material wrapped (key_material: wrapped)", keystore.StoreDescription(storeID))
	}
	rep := &MigrationReport{}
	// The migration is an internal action in the audit trail
	// (MigrateKeyMaterial, from HierarchySource): not run if it cannot be
	// recorded, and its outcome recorded.
	err = s.hierarchyAction(ctx, "MigrateKeyMaterial", func() (audit.Fields, error) {
		err := s.migrate(ctx, ks, storeID, rep)
		return audit.Fields{{Name: "keyStoreId", Value: keyStoreName(storeID)}, {Name: "materialVersionsMigrated", Value: len(rep.Migrated)},
			{Name: "materialVersionsRefused", Value: len(rep.Refused)}}, err
	})
	return rep, err
}

// migrate is MigrateToWrapped's walk.
func (s *Service) migrate(ctx context.Context, ks *keystore.Store, storeID string, rep *MigrationReport) error {
	return s.store.ForEachKey(ctx, func(k *store.Key) error {
		if materialStoreID(k) != storeID || k.State == string(StateCreating) {
			return nil
		}
		for _, m := range k.Materials {
			if len(m.Wrapped) > 0 || !hasMaterial(m) {
				continue
			}
			name := arnOf(k) + " material " + m.ID
			orig := material(k, m)
			moved, err := ks.Wrap(ctx, orig)
			if errors.Is(err, keystore.ErrUnsupported) {
				rep.Refused = append(rep.Refused, name+": the token will not wrap it (made non-extractable)")
				continue
			}
			if err != nil {
				return fmt.Errorf("kms: wrapping %s: %w", name, err)
			}
			done, err := s.replaceMaterial(ctx, k, m, moved)
			if err != nil {
				return err
			}
			if !done {
				continue // changed meanwhile: left for another run
			}
			if err := ks.Destroy(ctx, orig); err != nil {
				return fmt.Errorf("kms: %s is wrapped now, but its token objects could not be destroyed (the next start does): %w", name, err)
			}
			rep.Migrated = append(rep.Migrated, name)
		}
		return nil
	})
}

// MaterialCache says what the key store storeID keeps unwrapped on its
// token now, and has done since it started.
func (s *Service) MaterialCache(storeID string) (keystore.CacheStats, error) {
	ks, err := s.keystores.Get(storeID)
	if err != nil {
		return keystore.CacheStats{}, err
	}
	return ks.CacheStats(), nil
}

// KeyMaterial is how the key store storeID makes new material now.
func (s *Service) KeyMaterial(storeID string) (keystore.KeyMaterial, error) {
	ks, err := s.keystores.Get(storeID)
	if err != nil {
		return "", err
	}
	return ks.KeyMaterial(), nil
}
