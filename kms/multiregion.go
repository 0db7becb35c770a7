package kms

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Multi-Region keys. A multi-Region key is a set of keys with one id
// ("mrk-" and 32 hex digits) in one account, one key per Region: a primary
// and its replicas. They share their key material (the same store.Material
// records: the same token objects, or the same material wrapped under the
// default key store's domain key), key spec, usage, origin and rotation;
// each has its own policy, aliases, tags, grants, description and state.
// One hsmkms deployment serves every Region from one default key store, so
// a replica's material is its primary's, on the same token: nothing is
// copied and nothing crosses a network when a key is replicated.
//
// What the keys share is written to every key of the set in one store
// transaction (store.UpdateKeySet): a rotation, the rotation schedule, the
// primary Region, a replica joining or leaving. Material is destroyed on
// the token only when the last key of the set is deleted (Reap).
//
// Imported material (Origin EXTERNAL) is the exception AWS makes: each key
// of the set imports it on its own, with its own expiry and state. The set
// still shares its versions and holds each once, wrapped; each key records
// its own import of each (sharedMaterials), and a version no key has
// imported is held by none (expireMaterial, reapFromSet).
//
// Two transitions finish after the call that starts them answers, as in
// AWS: a new replica is Creating and then Enabled, and UpdatePrimaryRegion
// shows both keys Updating until the primary has moved. Each is durable
// from its first step (the replica's row in Creating, NewPrimaryRegion on
// every key of the set); the Service finishes it at once in the
// background, and Reconcile finishes any that a crash interrupted.

type MultiRegionKey struct {
	Arn    string `json:"Arn"`
	Region string `json:"Region"`
}

type MultiRegionConfiguration struct {
	MultiRegionKeyType string           `json:"MultiRegionKeyType"`
	PrimaryKey         *MultiRegionKey  `json:"PrimaryKey"`
	ReplicaKeys        []MultiRegionKey `json:"ReplicaKeys"`
}

const (
	multiRegionPrimary = "PRIMARY"
	multiRegionReplica = "REPLICA"
)

// updating reports whether k is the old or the new primary of a set whose
// primary Region is moving: AWS shows both Updating.
func updating(k *store.Key) bool {
	return k.NewPrimaryRegion != "" && (k.Region == k.PrimaryRegion || k.Region == k.NewPrimaryRegion)
}

// describe is KeyMetadata with, for a multi-Region key, its configuration
// as the set is now.
func (s *Service) describe(ctx context.Context, k *store.Key) (*KeyMetadata, error) {
	m := s.metadata(k)
	if !k.MultiRegion {
		return m, nil
	}
	set, err := s.store.KeySet(ctx, k.Account, k.ID)
	if err != nil && !isNotFound(err) {
		return nil, err
	}
	m.MultiRegionConfiguration = multiRegionConfiguration(k, set)
	return m, nil
}

// multiRegionConfiguration describes k's set. While the primary moves, AWS
// may show both keys as replicas; here the old primary stays PRIMARY until
// the move commits.
func multiRegionConfiguration(k *store.Key, set []*store.Key) *MultiRegionConfiguration {
	c := &MultiRegionConfiguration{MultiRegionKeyType: multiRegionPrimary, ReplicaKeys: []MultiRegionKey{}}
	if k.IsReplica() {
		c.MultiRegionKeyType = multiRegionReplica
	}
	c.PrimaryKey = &MultiRegionKey{Arn: keyARN(k.PrimaryRegion, k.Account, k.ID), Region: k.PrimaryRegion}
	for _, o := range set {
		if o.Region != k.PrimaryRegion {
			c.ReplicaKeys = append(c.ReplicaKeys, MultiRegionKey{Arn: arnOf(o), Region: o.Region})
		}
	}
	return c
}

func notPrimary(k *store.Key) error {
	return wire.Errorf(wire.UnsupportedOperation, "%s is not a multi-Region primary key.", arnOf(k))
}

func notMultiRegion(k *store.Key) error {
	return wire.Errorf(wire.UnsupportedOperation, "%s is not a multi-Region key.", arnOf(k))
}

// primaryOnly refuses, on a replica, what only the primary of a set may
// change: the properties the set shares (rotation).
func primaryOnly(k *store.Key) error {
	if k.IsReplica() {
		return wire.Errorf(wire.UnsupportedOperation, "%s is a multi-Region replica key: this property is shared with its primary key %s and can be changed only there.",
			arnOf(k), keyARN(k.PrimaryRegion, k.Account, k.ID))
	}
	return nil
}

// syncShared copies what the keys of a set share from k, the key just
// changed, to o.
func syncShared(k, o *store.Key) {
	o.Materials = sharedMaterials(k, o)
	o.RotationEnabled, o.RotationPeriodDays, o.NextRotationDate = k.RotationEnabled, k.RotationPeriodDays, k.NextRotationDate
	o.PrimaryRegion, o.NewPrimaryRegion = k.PrimaryRegion, k.NewPrimaryRegion
}

// sharedMaterials is o's Materials once k's have changed. Keys made by
// hsmkms share them whole. Keys of imported material (Origin EXTERNAL)
// share the versions (their ids, order and rotation, and the material,
// wrapped under a domain key) but each keeps its own import of each: AWS
// has every Region's key import the material on its own, with its own
// expiry, and a version imported into no key of the set held by none
// (expireMaterial). A version new to o is pending import in o.
func sharedMaterials(k, o *store.Key) []store.Material {
	if k.Origin != originExternal {
		return k.Materials
	}
	out := make([]store.Material, len(k.Materials))
	for i, m := range k.Materials {
		own := &store.Import{PendingImport: true}
		for _, x := range o.Materials {
			if x.ID == m.ID && x.Import != nil {
				c := *x.Import
				own = &c
			}
		}
		own.PendingRotation = m.Import != nil && m.Import.PendingRotation
		m.Import = own
		out[i] = m
	}
	return out
}

// importedElsewhere reports whether a key of set other than k has version
// id imported: then the version's material stays held when k lets it go.
func importedElsewhere(k *store.Key, set []*store.Key, id string) bool {
	for _, o := range set {
		if o == k || o.Region == k.Region {
			continue
		}
		for _, m := range o.Materials {
			if m.ID == id && hasMaterial(m) {
				return true
			}
		}
	}
	return false
}

// writeKey applies fn to the key (account, region, id) inside one write
// transaction: for a multi-Region key, together with the rest of its set,
// to which what fn changed of the shared properties is copied. fn gets the
// set (just the key for a single-Region one).
func (s *Service) writeKey(ctx context.Context, k *store.Key, fn func(k *store.Key, set []*store.Key) error) (*store.Key, error) {
	if !k.MultiRegion {
		return s.store.UpdateKey(ctx, k.Account, k.Region, k.ID, func(k *store.Key) error { return fn(k, []*store.Key{k}) })
	}
	var out *store.Key
	_, err := s.store.UpdateKeySet(ctx, k.Account, k.ID, func(set []*store.Key) (store.SetChange, error) {
		var self *store.Key
		for _, o := range set {
			if o.Region == k.Region {
				self = o
			}
		}
		if self == nil {
			return store.SetChange{}, store.ErrNotFound
		}
		if err := fn(self, set); err != nil {
			return store.SetChange{}, err
		}
		for _, o := range set {
			if o != self {
				syncShared(self, o)
			}
		}
		out = self
		return store.SetChange{}, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

type ReplicateKeyInput struct {
	KeyId                          string
	ReplicaRegion                  string
	Policy                         *string
	BypassPolicyLockoutSafetyCheck bool
	Description                    string
	Tags                           []Tag
}

type ReplicateKeyOutput struct {
	ReplicaKeyMetadata *KeyMetadata
	ReplicaPolicy      string
	ReplicaTags        []Tag
}

// ReplicateKey makes a replica of a multi-Region primary key in another
// Region that hsmkms serves. The replica is written Creating, with its
// primary's material, in the transaction that checks its primary (still a
// primary, Enabled or Disabled) and that the Region has no key of the set;
// it becomes Enabled right after the answer (finishTransitions).
func (s *Service) ReplicateKey(ctx context.Context, r *Request, in *ReplicateKeyInput) (*ReplicateKeyOutput, error) {
	if err := checkTags(in.Tags); err != nil {
		return nil, err
	}
	a := access{cond: conditions("kms:ReplicaRegion", in.ReplicaRegion)}
	k, err := s.key(ctx, r, in.KeyId, a)
	if err != nil {
		return nil, err
	}
	if !k.MultiRegion || k.IsReplica() {
		return nil, notPrimary(k)
	}
	if !s.serves(in.ReplicaRegion) {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Region %s is not served by this hsmkms deployment: a replica can be made only in a Region it serves (its regions: configuration).", in.ReplicaRegion)
	}
	if in.ReplicaRegion == k.Region {
		return nil, replicaExists(k, in.ReplicaRegion)
	}
	// The replica is made as a key of the replica Region: kms:CreateKey
	// there, by the caller's identity policy, with the new key's
	// condition keys, as AWS authorizes the CreateKey it records there.
	cond := conditions("kms:KeySpec", k.KeySpec, "kms:CustomerMasterKeySpec", k.KeySpec, "kms:KeyUsage", k.KeyUsage,
		"kms:CustomerMasterKeyUsage", k.KeyUsage, "kms:KeyOrigin", k.Origin, "kms:MultiRegion", "true",
		"kms:MultiRegionKeyType", multiRegionReplica,
		"kms:BypassPolicyLockoutSafetyCheck", strconv.FormatBool(in.BypassPolicyLockoutSafetyCheck))
	if err := s.authorizeIdentity(ctx, r, requestTags(cond, in.Tags), "kms:CreateKey", "*", onNothing); err != nil {
		return nil, err
	}
	if len(in.Tags) > 0 {
		if err := s.authorizeIdentity(ctx, r, requestTags(conditions(), in.Tags), "kms:TagResource", "*", onNothing); err != nil {
			return nil, err
		}
	}
	replicaARN := keyARN(in.ReplicaRegion, k.Account, k.ID)
	policy := defaultPolicy(k.Account)
	if in.Policy != nil {
		pol, err := checkPolicy(*in.Policy)
		if err != nil {
			return nil, err
		}
		if !in.BypassPolicyLockoutSafetyCheck {
			if err := s.checkLockout(r, pol, k.Account, replicaARN); err != nil {
				return nil, err
			}
		}
		policy = *in.Policy
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	tags := make([]store.Tag, len(in.Tags))
	for i, t := range in.Tags {
		tags[i] = store.Tag{Key: t.TagKey, Value: t.TagValue}
	}
	var replica *store.Key
	set, err := s.store.UpdateKeySet(ctx, k.Account, k.ID, func(set []*store.Key) (store.SetChange, error) {
		var primary *store.Key
		for _, o := range set {
			if o.Region == in.ReplicaRegion {
				return store.SetChange{}, replicaExists(k, in.ReplicaRegion)
			}
			if o.Region == k.Region {
				primary = o
			}
		}
		if primary == nil {
			return store.SetChange{}, store.ErrNotFound
		}
		if primary.IsReplica() {
			return store.SetChange{}, notPrimary(primary)
		}
		if err := s.checkState(primary, r.op.states); err != nil {
			return store.SetChange{}, err
		}
		replica = &store.Key{
			Account: primary.Account, Region: in.ReplicaRegion, ID: primary.ID,
			Description: in.Description, KeyUsage: primary.KeyUsage, KeySpec: primary.KeySpec, Origin: primary.Origin,
			State: string(StateCreating), CreationDate: s.now().UTC(), Policy: policy,
			RotationEnabled: primary.RotationEnabled, RotationPeriodDays: primary.RotationPeriodDays,
			NextRotationDate: primary.NextRotationDate, MultiRegion: true,
			PrimaryRegion: primary.PrimaryRegion, NewPrimaryRegion: primary.NewPrimaryRegion,
		}
		// A replica of imported material has imported none yet: it
		// becomes PendingImport, not Enabled, once made.
		replica.Materials = sharedMaterials(primary, replica)
		return store.SetChange{Add: replica, AddTags: tags}, nil
	})
	switch {
	case isNotFound(err):
		return nil, keyNotFound(k.Region, k.Account, k.ID)
	case errors.Is(err, store.ErrAlreadyExists):
		return nil, replicaExists(k, in.ReplicaRegion)
	case err != nil:
		return nil, err
	}
	r.touched(arnOf(replica))
	keystore.Step(keystore.StepReplicaRecorded)
	s.transitions.add(replica.Account, replica.ID)
	m := s.metadata(replica)
	m.MultiRegionConfiguration = multiRegionConfiguration(replica, set)
	outTags := in.Tags
	if outTags == nil {
		outTags = []Tag{}
	}
	return &ReplicateKeyOutput{ReplicaKeyMetadata: m, ReplicaPolicy: policy, ReplicaTags: outTags}, nil
}

func replicaExists(k *store.Key, region string) error {
	return wire.Errorf(wire.AlreadyExists, "Multi-Region key %s already has a key in Region %s: %s.", arnOf(k), region, keyARN(region, k.Account, k.ID))
}

type UpdatePrimaryRegionInput struct {
	KeyId         string
	PrimaryRegion string
}

// UpdatePrimaryRegion makes the replica in PrimaryRegion the primary and
// the primary a replica. It records the move on every key of the set
// (both keys then show Updating) and answers; the move itself follows in
// one transaction (finishTransitions), after which both keys show their
// own states again.
func (s *Service) UpdatePrimaryRegion(ctx context.Context, r *Request, in *UpdatePrimaryRegionInput) (*Empty, error) {
	a := access{cond: conditions("kms:PrimaryRegion", in.PrimaryRegion)}
	k, err := s.key(ctx, r, in.KeyId, a)
	if err != nil {
		return nil, err
	}
	if !k.MultiRegion {
		return nil, notMultiRegion(k)
	}
	if k.IsReplica() {
		return nil, notPrimary(k)
	}
	if in.PrimaryRegion == k.Region {
		return nil, wire.Errorf(wire.UnsupportedOperation, "%s is already the primary key of its multi-Region key.", arnOf(k))
	}
	target, err := s.store.GetKey(ctx, k.Account, in.PrimaryRegion, k.ID)
	if isNotFound(err) || (err == nil && !target.MultiRegion) {
		return nil, keyNotFound(in.PrimaryRegion, k.Account, k.ID)
	}
	if err != nil {
		return nil, err
	}
	r.touched(arnOf(target))
	if err := s.authorizeKey(ctx, r, target, a); err != nil {
		return nil, err
	}
	if err := s.checkState(target, r.op.states); err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	_, err = s.store.UpdateKeySet(ctx, k.Account, k.ID, func(set []*store.Key) (store.SetChange, error) {
		found := false
		for _, o := range set {
			switch o.Region {
			case k.Region:
				if o.IsReplica() {
					return store.SetChange{}, notPrimary(o)
				}
			case in.PrimaryRegion:
				found = true
			default:
				continue
			}
			if err := s.checkState(o, r.op.states); err != nil {
				return store.SetChange{}, err
			}
		}
		if !found {
			return store.SetChange{}, keyNotFound(in.PrimaryRegion, k.Account, k.ID)
		}
		for _, o := range set {
			o.NewPrimaryRegion = in.PrimaryRegion
		}
		return store.SetChange{}, nil
	})
	if isNotFound(err) {
		return nil, keyNotFound(k.Region, k.Account, k.ID)
	}
	if err != nil {
		return nil, err
	}
	keystore.Step(keystore.StepPrimaryMoveRecorded)
	s.transitions.add(k.Account, k.ID)
	return &Empty{}, nil
}

// transitions are the multi-Region keys with a transition to finish (a
// replica Creating, a primary moving). Safe for concurrent use.
type transitions struct {
	mu      sync.Mutex
	pending map[[2]string]bool // account, id
	nudge   chan struct{}
	// paused holds the finishing back; tests use it to watch the
	// transient states and to stop the process in the middle.
	paused bool
}

func (t *transitions) init() { t.nudge = make(chan struct{}, 1) }

func (t *transitions) isPaused() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.paused
}

func (t *transitions) add(account, id string) {
	t.mu.Lock()
	if t.pending == nil {
		t.pending = map[[2]string]bool{}
	}
	t.pending[[2]string{account, id}] = true
	t.mu.Unlock()
	select {
	case t.nudge <- struct{}{}:
	default:
	}
}

func (t *transitions) take() [][2]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([][2]string, 0, len(t.pending))
	for k := range t.pending {
		out = append(out, k)
	}
	clear(t.pending)
	return out
}

// runTransitions finishes the transitions added, as they come, until ctx
// ends; what is left then is finished by the next start's Reconcile.
func (s *Service) runTransitions(ctx context.Context) {
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.transitions.nudge:
		case <-retry.C:
		}
		if s.transitions.isPaused() {
			continue
		}
		for _, k := range s.transitions.take() {
			if err := s.finishTransitions(ctx, k[0], k[1]); err != nil && !isNotFound(err) && ctx.Err() == nil {
				s.log.Error("finishing a multi-Region key's transition; retrying", "account", k[0], "key", k[1], "error", err)
				s.transitions.add(k[0], k[1])
			}
		}
	}
}

// finishTransitions completes, in one transaction, what is in flight for
// the multi-Region key (account, id): replicas Creating become Enabled, and
// a primary Region being moved moves.
func (s *Service) finishTransitions(ctx context.Context, account, id string) error {
	_, err := s.store.UpdateKeySet(ctx, account, id, func(set []*store.Key) (store.SetChange, error) {
		for _, o := range set {
			if o.State == string(StateCreating) && o.IsReplica() {
				o.State = string(StateEnabled)
				if o.Origin == originExternal && !allImported(o) {
					o.State = string(StatePendingImport)
				}
			}
			if o.NewPrimaryRegion != "" {
				o.PrimaryRegion, o.NewPrimaryRegion = o.NewPrimaryRegion, ""
			}
		}
		return store.SetChange{}, nil
	})
	return err
}

// finishStrayTransitions finishes the transitions recorded in the store
// that no goroutine of this process is finishing: those of a node (sharing
// PostgreSQL) that died after recording them. The deletion job runs it on
// every node; finishing a transition twice changes nothing.
func (s *Service) finishStrayTransitions(ctx context.Context) error {
	if s.transitions.isPaused() {
		return nil
	}
	keys, err := s.store.KeysInTransition(ctx)
	if err != nil {
		return err
	}
	done := map[[2]string]bool{}
	var errs []error
	for _, k := range keys {
		if done[[2]string{k.Account, k.ID}] {
			continue
		}
		done[[2]string{k.Account, k.ID}] = true
		if err := s.finishTransitions(ctx, k.Account, k.ID); err != nil && !isNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// serves reports whether region is one the service's handler serves.
func (s *Service) serves(region string) bool {
	set := s.regions.Load()
	if set == nil {
		return false
	}
	return (*set)[region]
}
