package kms

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Key rotation. A rotation adds a material version: a new AES-256 object on
// the token, appended to the key's Materials. Encrypt uses the newest;
// Decrypt finds the version a ciphertext names, so every version keeps
// decrypting until the key is deleted.
//
// Crash safety: the token object is made first, then named in the metadata
// in one write. If the write fails the object is destroyed at once; if the
// process dies in between, Reconcile destroys the object at the next start:
// no ciphertext can name a material that was never committed.

const (
	defaultRotationDays = 365
	minRotationDays     = 90
	maxRotationDays     = 2560
	// maxOnDemandRotations is AWS's quota per key, not adjustable.
	maxOnDemandRotations = 25
	// rotationConflictWindow: AWS refuses an on-demand rotation while an
	// automatic one is due within this window (ConflictException).
	rotationConflictWindow = 20 * time.Minute

	rotationAutomatic = "AUTOMATIC"
	rotationOnDemand  = "ON_DEMAND"

	materialCurrent = "CURRENT"
	// materialPendingRotation: imported for an on-demand rotation to come.
	materialPendingRotation = "PENDING_ROTATION"
	// materialPendingMultiRegion: imported for an on-demand rotation of a
	// multi-Region key, and not yet into every key of its set.
	materialPendingMultiRegion = "PENDING_MULTI_REGION_IMPORT_AND_ROTATION"
	materialNonCurrent         = "NON_CURRENT"
)

// A rotation in progress is marked in the database (a store.Mark named
// after the key), so that every node refuses a second rotation of the same
// key (ConflictException) rather than queueing it, shows
// OnDemandRotationStartDate in GetKeyRotationStatus, and leaves the token
// object of a rotation running on another node alone at start-up
// (Reconcile). Two rotations that raced anyway would still both be
// recorded, since each appends inside one store transaction; the
// scheduler's check inside that transaction makes an automatic rotation
// happen once. A node that dies mid-rotation leaves its mark to be taken
// over as soon as its heartbeat stops.

// rotations holds the test hook; the marks themselves are in the store.
type rotations struct {
	mu sync.Mutex
	// hook, if set, runs between making the token object and writing the
	// metadata; an error is treated as a failed write. Tests only.
	hook func(keyARN string) error
}

// rotation is what a rotation mark says.
type rotation struct {
	start    time.Time
	onDemand bool
}

func rotationMark(k *store.Key) string { return "rotate/" + k.Account + "/" + k.Region + "/" + k.ID }

// detail is the mark's Detail: the type, and the start date clients see.
func (r rotation) detail() string {
	typ := rotationAutomatic
	if r.onDemand {
		typ = rotationOnDemand
	}
	return typ + "@" + r.start.UTC().Format(time.RFC3339Nano)
}

func parseRotation(detail string) (rotation, bool) {
	typ, date, ok := strings.Cut(detail, "@")
	start, err := time.Parse(time.RFC3339Nano, date)
	if !ok || err != nil {
		return rotation{}, false
	}
	return rotation{start: start, onDemand: typ == rotationOnDemand}, true
}

// beginRotation marks k as rotating, or reports false if a live node
// (this one included) is rotating it.
func (s *Service) beginRotation(ctx context.Context, k *store.Key, rot rotation) (end func(), ok bool, err error) {
	end, err = s.claim(ctx, rotationMark(k), rot.detail())
	if errors.Is(err, store.ErrMarkHeld) {
		return nil, false, nil
	}
	return end, err == nil, err
}

// rotating returns the rotation of k a live node is running, if any.
func (s *Service) rotating(ctx context.Context, k *store.Key) (rotation, bool, error) {
	m, err := s.liveMark(ctx, rotationMark(k))
	if err != nil || m == nil {
		return rotation{}, false, err
	}
	rot, ok := parseRotation(m.Detail)
	return rot, ok, nil
}

func (r *rotations) hookFn() func(string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hook
}

// rotatable refuses keys AWS does not rotate, with AWS's answers: a key
// of another origin (imported, custom key store) by its origin, and an
// asymmetric or HMAC key with UnsupportedOperationException and no message.
// The operation table already refuses other origins (after the key state)
// for the rotation operations; the scheduler relies on this.
func rotatable(k *store.Key) error {
	if (k.Origin != originAWSKMS && k.Origin != originExternal) || k.CustomKeyStoreID != "" {
		return wrongOrigin(k)
	}
	if k.KeySpec != specSymmetric {
		return &wire.Error{Type: wire.UnsupportedOperation}
	}
	return nil
}

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

type EnableKeyRotationInput struct {
	KeyId                string
	RotationPeriodInDays int
}

// EnableKeyRotation turns automatic rotation on: the first rotation comes
// a period after now. On a key whose rotation is already on it changes
// the period, keeping the date the current period counts from (the last
// automatic rotation, or when rotation was enabled).
func (s *Service) EnableKeyRotation(ctx context.Context, r *Request, in *EnableKeyRotationInput) (*Empty, error) {
	n := in.RotationPeriodInDays
	if n == 0 {
		n = defaultRotationDays
	}
	if n < minRotationDays || n > maxRotationDays {
		// The wire layer checks the model's range first; this is for
		// callers that bypass it, in the same words.
		if n < minRotationDays {
			return nil, wire.Errorf(wire.Validation, "1 validation error detected: Value '%d' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value greater than or equal to %d", n, minRotationDays)
		}
		return nil, wire.Errorf(wire.Validation, "1 validation error detected: Value '%d' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value less than or equal to %d", n, maxRotationDays)
	}
	a := access{cond: conditions("kms:RotationPeriodInDays", strconv.Itoa(n))}
	_, err := s.update(ctx, r, in.KeyId, a, func(k *store.Key) error {
		if err := rotatable(k); err != nil {
			return err
		}
		if err := primaryOnly(k); err != nil {
			return err
		}
		if k.RotationEnabled && !k.NextRotationDate.IsZero() {
			k.NextRotationDate = k.NextRotationDate.Add(-days(k.RotationPeriodDays)).Add(days(n))
		} else {
			k.NextRotationDate = s.now().UTC().Add(days(n))
		}
		k.RotationEnabled = true
		k.RotationPeriodDays = n
		return nil
	})
	return &Empty{}, err
}

func (s *Service) DisableKeyRotation(ctx context.Context, r *Request, in *KeyIDInput) (*Empty, error) {
	_, err := s.update(ctx, r, in.KeyId, access{}, func(k *store.Key) error {
		if err := rotatable(k); err != nil {
			return err
		}
		if err := primaryOnly(k); err != nil {
			return err
		}
		k.RotationEnabled = false
		k.NextRotationDate = time.Time{}
		return nil
	})
	return &Empty{}, err
}

type GetKeyRotationStatusOutput struct {
	KeyId                     string
	KeyRotationEnabled        bool
	NextRotationDate          *wire.Time `json:"NextRotationDate,omitempty"`
	OnDemandRotationStartDate *wire.Time `json:"OnDemandRotationStartDate,omitempty"`
	RotationPeriodInDays      int        `json:"RotationPeriodInDays,omitempty"`
}

// GetKeyRotationStatus reports the stored schedule. As AWS, a disabled key
// keeps its status (it is not rotated while disabled, and rotates at once
// when re-enabled if it fell due), and a key pending deletion reports false
// (its stored status returns if the deletion is cancelled).
func (s *Service) GetKeyRotationStatus(ctx context.Context, r *Request, in *KeyIDInput) (*GetKeyRotationStatusOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	if err := rotatable(k); err != nil {
		return nil, err
	}
	out := &GetKeyRotationStatusOutput{KeyId: arnOf(k)}
	if k.RotationEnabled && k.State != string(StatePendingDeletion) {
		out.KeyRotationEnabled = true
		d := wire.Time(k.NextRotationDate)
		out.NextRotationDate = &d
		out.RotationPeriodInDays = k.RotationPeriodDays
	}
	rot, ok, err := s.rotating(ctx, k)
	if err != nil {
		return nil, err
	}
	if ok && rot.onDemand {
		d := wire.Time(rot.start)
		out.OnDemandRotationStartDate = &d
	}
	return out, nil
}

type RotateKeyOnDemandOutput struct {
	KeyId string
}

// RotateKeyOnDemand rotates at once, whether or not automatic rotation is
// on, without moving the automatic schedule. AWS finishes the rotation in
// the background; here it is done when the call returns, so
// OnDemandRotationStartDate is visible only to concurrent callers.
func (s *Service) RotateKeyOnDemand(ctx context.Context, r *Request, in *KeyIDInput) (*RotateKeyOnDemandOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	check := func(k *store.Key) error {
		if err := s.checkState(k, r.op.states); err != nil {
			return err
		}
		if err := rotatable(k); err != nil {
			return err
		}
		if err := primaryOnly(k); err != nil {
			return err
		}
		if onDemandCount(k) >= maxOnDemandRotations {
			return wire.Errorf(wire.LimitExceeded, "The on-demand rotations limit has been reached for the given keyId. No more on-demand rotations can be performed for this key: %s", arnOf(k))
		}
		if k.RotationEnabled && k.NextRotationDate.Sub(now) < rotationConflictWindow {
			return conflict()
		}
		return nil
	}
	if err := check(k); err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	if k.Origin == originExternal {
		return s.rotateImported(ctx, r, k, check)
	}
	end, ok, err := s.beginRotation(ctx, k, rotation{start: now, onDemand: true})
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, conflict()
	}
	defer end()
	if _, err := s.rotate(ctx, k, rotationOnDemand, check); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, keyNotFound(k.Region, k.Account, k.ID)
		}
		return nil, err
	}
	return &RotateKeyOnDemandOutput{KeyId: arnOf(k)}, nil
}

func conflict() error {
	return wire.Errorf(wire.Conflict, "An automatic rotation of this key is currently in progress or scheduled to begin within the next 20 minutes.")
}

func onDemandCount(k *store.Key) int {
	n := 0
	for _, m := range k.Materials {
		if m.RotationType == rotationOnDemand {
			n++
		}
	}
	return n
}

// errNotDue: the key changed between the scheduler's read and its write.
var errNotDue = errors.New("kms: key no longer due for rotation")

// RotateDue rotates every key whose automatic rotation is due, and returns
// how many it rotated. Schedules live in the store, so a restart loses
// nothing: overdue keys go on the first pass. Disabled and PendingDeletion
// keys are not rotated; re-enabled, a key that fell due meanwhile rotates
// on the next pass. A key with an on-demand rotation running is left for
// the next pass.
func (s *Service) RotateDue(ctx context.Context) (int, error) {
	now := s.now().UTC()
	due, err := s.store.KeysDueForRotation(ctx, now)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	stillDue := func(k *store.Key) error {
		if !k.RotationEnabled || k.State != string(StateEnabled) || k.NextRotationDate.After(now) {
			return errNotDue
		}
		return nil
	}
	for _, k := range due {
		// A replica shares its primary's schedule and is rotated with it.
		if rotatable(k) != nil || k.IsReplica() {
			continue
		}
		end, ok, err := s.beginRotation(ctx, k, rotation{start: now})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue // another node is rotating it
		}
		// Claimed: look again, from the database, so that a key another
		// node rotated since the list was read costs no token object and
		// no record; the node that rotates writes the RotateKey record.
		cur, err := s.cache.Store.GetKey(ctx, k.Account, k.Region, k.ID)
		if err == nil {
			err = stillDue(cur)
		}
		if errors.Is(err, errNotDue) {
			end()
			continue
		}
		if err == nil {
			err = s.serviceAction(ctx, "RotateKey", cur.Account, cur.Region, keyResource(arnOf(cur), cur.Account),
				func() (audit.Fields, audit.Fields, error) {
					out, err := s.rotate(ctx, cur, rotationAutomatic, stillDue)
					if errors.Is(err, errNotDue) {
						err = wire.Errorf(wire.Conflict, "%s is no longer due for rotation.", arnOf(cur))
					}
					if err != nil {
						return nil, nil, err
					}
					details := audit.Fields{{Name: "keyId", Value: cur.ID}, {Name: "rotationType", Value: rotationAutomatic}}
					if n := len(out.Materials); n > 0 {
						details.Add("keyMaterialId", out.Materials[n-1].ID)
					}
					return details, nil, nil
				})
		}
		end()
		switch {
		case err == nil:
			s.log.Info("key rotated", "key", arnOf(k), "type", rotationAutomatic)
			n++
		case isConflict(err), errors.Is(err, store.ErrNotFound):
		default:
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// isConflict is a rotation RotateDue found no longer due.
func isConflict(err error) bool {
	var we *wire.Error
	return errors.As(err, &we) && we.Type == wire.Conflict
}

// RunRotator calls RotateDue every interval until ctx ends.
func (s *Service) RunRotator(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.RotateDue(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("key rotator", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rotate adds a material version to k: the material first (a token object,
// or material wrapped, which leaves nothing on the token), then the
// metadata naming it, where check re-reads the key's rules against the
// stored row. The caller holds k's rotation mark.
func (s *Service) rotate(ctx context.Context, k *store.Key, typ string, check func(*store.Key) error) (*store.Key, error) {
	uuid, _, ok := keyIDBytes(k.ID)
	if !ok {
		return nil, internalf("key %s has a malformed id", arnOf(k))
	}
	tok, err := s.token(k)
	if err != nil {
		return nil, err
	}
	mat, err := tok.NewMaterial(ctx, uuid, keySpecs[k.KeySpec].material, keyUsage(k.KeyUsage), arnOf(k))
	if err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	if err := tok.Generate(ctx, mat); err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	if hook := s.rotations.hookFn(); hook != nil {
		err = hook(arnOf(k))
	}
	var out *store.Key
	if err == nil {
		now := s.now().UTC()
		// A multi-Region key's rotation is its whole set's: every key
		// of it gets the version in this one write.
		out, err = s.writeKey(ctx, k, func(k *store.Key, _ []*store.Key) error {
			if err := check(k); err != nil {
				return err
			}
			k.Materials = append(k.Materials, store.Material{ID: hexID(mat.ID()), TokenID: mat.Ref(), CreationDate: now, RotationType: typ,
				Wrapped: mat.Wrapped(), DomainKey: mat.DomainKey()})
			if typ == rotationAutomatic {
				k.NextRotationDate = now.Add(days(k.RotationPeriodDays))
			}
			return nil
		})
	}
	if err != nil {
		// Not committed: no ciphertext can name this material.
		if derr := tok.Destroy(context.WithoutCancel(ctx), mat); derr != nil {
			s.log.Error("rotation failed and its token object could not be destroyed; the next start removes it", "key", arnOf(k), "error", derr)
		}
		return nil, err
	}
	return out, nil
}

type ListKeyRotationsInput struct {
	KeyId              string
	IncludeKeyMaterial string
	Limit              int
	Marker             string
}

// RotationsListEntry carries the members that apply to AWS_KMS keys; the
// model's KeyMaterialDescription, ImportState, ExpirationModel and ValidTo
// are for imported (EXTERNAL) key material only.
type RotationsListEntry struct {
	KeyId            string
	KeyMaterialId    string
	KeyMaterialState string
	RotationDate     *wire.Time `json:"RotationDate,omitempty"`
	RotationType     string     `json:"RotationType,omitempty"`
	// Imported material's (EXTERNAL keys) only.
	KeyMaterialDescription string     `json:"KeyMaterialDescription,omitempty"`
	ImportState            string     `json:"ImportState,omitempty"`
	ExpirationModel        string     `json:"ExpirationModel,omitempty"`
	ValidTo                *wire.Time `json:"ValidTo,omitempty"`
}

type ListKeyRotationsOutput struct {
	Rotations  []RotationsListEntry
	NextMarker string `json:"NextMarker,omitempty"`
	Truncated  bool
}

// rotationMarkerPrefix tells a marker ListKeyRotations made from garbage;
// what follows is the last material id returned.
const rotationMarkerPrefix = "r1."

// ListKeyRotations lists a key's material versions oldest first: by
// default the rotations (every version after the original), with
// IncludeKeyMaterial ALL_KEY_MATERIAL the original too.
func (s *Service) ListKeyRotations(ctx context.Context, r *Request, in *ListKeyRotationsInput) (*ListKeyRotationsOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	if err := rotatable(k); err != nil {
		return nil, err
	}
	first := 1
	all := in.IncludeKeyMaterial == "ALL_KEY_MATERIAL"
	if all {
		first = 0
	}
	current := currentIndex(k)
	// The keys of a multi-Region key of imported material import each
	// version on their own; a version pending rotation waits for all.
	var set []*store.Key
	if k.MultiRegion && k.Origin == originExternal {
		if set, err = s.store.KeySet(ctx, k.Account, k.ID); err != nil && !isNotFound(err) {
			return nil, err
		}
	}
	if in.Marker != "" {
		after, ok := strings.CutPrefix(in.Marker, rotationMarkerPrefix)
		i := -1
		for j := first; ok && j < len(k.Materials); j++ {
			if k.Materials[j].ID == after {
				i = j
			}
		}
		if i < 0 {
			return nil, listError(store.ErrInvalidMarker)
		}
		first = i + 1
	}
	out := &ListKeyRotationsOutput{Rotations: []RotationsListEntry{}}
	n := limit(in.Limit, 1000)
	for i := first; i < len(k.Materials); i++ {
		if len(out.Rotations) == n {
			out.Truncated = true
			out.NextMarker = rotationMarkerPrefix + k.Materials[i-1].ID
			break
		}
		m := k.Materials[i]
		pendingRotation := m.Import != nil && m.Import.PendingRotation
		if pendingRotation && !all {
			continue
		}
		e := RotationsListEntry{KeyId: k.ID, KeyMaterialId: m.ID, KeyMaterialState: materialNonCurrent}
		switch {
		case pendingRotation && !hasMaterial(m):
			// Not imported into this key (a replica) yet.
			e.KeyMaterialState = materialPendingMultiRegion
		case pendingRotation && lacking(k, set, m.ID) != nil:
			e.KeyMaterialState = materialPendingMultiRegion
		case pendingRotation:
			e.KeyMaterialState = materialPendingRotation
		case i == current:
			e.KeyMaterialState = materialCurrent
		}
		if i > 0 && !pendingRotation {
			d := wire.Time(m.CreationDate)
			e.RotationDate, e.RotationType = &d, m.RotationType
		}
		if m.Import != nil {
			e.KeyMaterialDescription, e.ImportState, e.ExpirationModel = m.Import.Description, "IMPORTED", doesNotExpire
			if m.Import.PendingImport {
				e.ImportState = "PENDING_IMPORT"
			}
			if !m.Import.ValidTo.IsZero() {
				t := wire.Time(m.Import.ValidTo)
				e.ExpirationModel, e.ValidTo = expires, &t
			}
		}
		out.Rotations = append(out.Rotations, e)
	}
	return out, nil
}
