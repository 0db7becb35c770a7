package kms

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// KeyMetadata is AWS's KeyMetadata structure.
type KeyMetadata struct {
	AWSAccountId                string                    `json:"AWSAccountId"`
	Arn                         string                    `json:"Arn"`
	CreationDate                wire.Time                 `json:"CreationDate"`
	CurrentKeyMaterialId        string                    `json:"CurrentKeyMaterialId,omitempty"`
	CustomKeyStoreId            string                    `json:"CustomKeyStoreId,omitempty"`
	CloudHsmClusterId           string                    `json:"CloudHsmClusterId,omitempty"`
	CustomerMasterKeySpec       string                    `json:"CustomerMasterKeySpec"`
	DeletionDate                *wire.Time                `json:"DeletionDate,omitempty"`
	Description                 string                    `json:"Description"`
	Enabled                     bool                      `json:"Enabled"`
	EncryptionAlgorithms        []string                  `json:"EncryptionAlgorithms,omitempty"`
	ExpirationModel             string                    `json:"ExpirationModel,omitempty"`
	KeyId                       string                    `json:"KeyId"`
	KeyManager                  string                    `json:"KeyManager"`
	KeySpec                     string                    `json:"KeySpec"`
	KeyState                    string                    `json:"KeyState"`
	KeyAgreementAlgorithms      []string                  `json:"KeyAgreementAlgorithms,omitempty"`
	KeyUsage                    string                    `json:"KeyUsage"`
	MacAlgorithms               []string                  `json:"MacAlgorithms,omitempty"`
	MultiRegion                 bool                      `json:"MultiRegion"`
	MultiRegionConfiguration    *MultiRegionConfiguration `json:"MultiRegionConfiguration,omitempty"`
	Origin                      string                    `json:"Origin"`
	PendingDeletionWindowInDays int                       `json:"PendingDeletionWindowInDays,omitempty"`
	SigningAlgorithms           []string                  `json:"SigningAlgorithms,omitempty"`
	ValidTo                     *wire.Time                `json:"ValidTo,omitempty"`
	XksKeyConfiguration         *XksKeyConfiguration      `json:"XksKeyConfiguration,omitempty"`
}

// XksKeyConfiguration names the external key of a key in an external key
// store.
type XksKeyConfiguration struct {
	Id string `json:"Id"`
}

func (s *Service) metadata(k *store.Key) *KeyMetadata {
	m := &KeyMetadata{
		AWSAccountId:          k.Account,
		Arn:                   arnOf(k),
		CreationDate:          wire.Time(k.CreationDate),
		CustomKeyStoreId:      k.CustomKeyStoreID,
		CustomerMasterKeySpec: k.KeySpec,
		Description:           k.Description,
		Enabled:               k.State == string(StateEnabled),
		KeyId:                 k.ID,
		KeyManager:            "CUSTOMER",
		KeySpec:               k.KeySpec,
		KeyState:              string(s.effectiveState(k)),
		KeyUsage:              k.KeyUsage,
		MultiRegion:           k.MultiRegion,
		Origin:                k.Origin,
	}
	if k.Origin == originXKS {
		m.XksKeyConfiguration = &XksKeyConfiguration{Id: k.XksKeyID}
	}
	if k.CustomKeyStoreID != "" {
		if live, err := s.keystores.Get(k.CustomKeyStoreID); err == nil && k.Origin != originXKS {
			m.CloudHsmClusterId = live.ClusterID()
		}
		if st := s.effectiveState(k); st == StateUnavailable {
			m.KeyState, m.Enabled = string(st), false
		}
	}
	m.EncryptionAlgorithms, m.SigningAlgorithms, m.MacAlgorithms, m.KeyAgreementAlgorithms = keySpecs[k.KeySpec].algorithms(k.KeyUsage)
	// AWS names the current material only of keys that rotate: symmetric
	// encryption keys whose material it made or that was imported.
	if i := currentIndex(k); i >= 0 && k.KeySpec == specSymmetric && k.CustomKeyStoreID == "" {
		m.CurrentKeyMaterialId = k.Materials[i].ID
	}
	if k.Origin == originExternal {
		m.ExpirationModel, m.ValidTo = expiration(k)
	}
	if k.State == string(StatePendingDeletion) {
		d := wire.Time(k.DeletionDate)
		m.DeletionDate = &d
		m.PendingDeletionWindowInDays = k.PendingWindowDays
	}
	if k.State == string(StatePendingReplicaDeletion) {
		// No date until the last replica is deleted, as AWS shows it.
		m.PendingDeletionWindowInDays = k.PendingWindowDays
	}
	return m
}

const (
	specSymmetric  = "SYMMETRIC_DEFAULT"
	usageEncrypt   = "ENCRYPT_DECRYPT"
	algSymmetric   = "SYMMETRIC_DEFAULT"
	originAWSKMS   = "AWS_KMS"
	originExternal = "EXTERNAL"
	// originRotatable is the operation table's origin rule of on-demand
	// rotation and ListKeyRotations: AWS_KMS or EXTERNAL.
	originRotatable = "AWS_KMS|EXTERNAL"
	maxPolicyBytes  = 32 * 1024
)

type Tag struct {
	TagKey   string `json:"TagKey"`
	TagValue string `json:"TagValue"`
}

type CreateKeyInput struct {
	BypassPolicyLockoutSafetyCheck bool
	CustomKeyStoreId               string
	CustomerMasterKeySpec          string
	Description                    string
	KeySpec                        string
	KeyUsage                       string
	MultiRegion                    bool
	Origin                         string
	Policy                         *string
	Tags                           []Tag
	XksKeyId                       string
}

type CreateKeyOutput struct {
	KeyMetadata *KeyMetadata
}

// CreateKey makes a key in the default key store or a custom one.
//
// Crash safety. Material held wrapped (keystore.Material.OnToken false) is
// generated and wrapped on the token before anything is written, and
// nothing of it stays there: the key is written once, Enabled, with its
// wrapped material, and a crash before that commit leaves nothing at all.
// Material held as token objects needs its record first: the metadata row
// is written in state Creating (never visible to clients), then the token
// object is generated, then the row becomes Enabled. A crash at any point
// leaves either nothing or a Creating row, which Reconcile removes together
// with any token object it names, so no half-made key is ever usable.
func (s *Service) CreateKey(ctx context.Context, r *Request, in *CreateKeyInput) (*CreateKeyOutput, error) {
	spec := in.KeySpec
	if spec == "" {
		spec = in.CustomerMasterKeySpec
	} else if in.CustomerMasterKeySpec != "" && in.CustomerMasterKeySpec != in.KeySpec {
		return nil, wire.Errorf(wire.Validation, "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec is deprecated.")
	}
	if spec == "" {
		spec = specSymmetric
	}
	usage := in.KeyUsage
	if usage == "" {
		if spec != specSymmetric {
			return nil, wire.Errorf(wire.Validation, "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.")
		}
		usage = usageEncrypt
	}
	origin := in.Origin
	if origin == "" {
		origin = originAWSKMS
	}
	ksp, known := keySpecs[spec]
	if !known {
		return nil, wire.Errorf(wire.Validation, "KeySpec %s is not valid.", spec)
	}
	// What is wrong with the request alone (the spec and usage together,
	// the tags) is refused before anything is authorized or looked up, as
	// AWS validates a request before acting on it.
	if !slices.Contains(ksp.usages, usage) {
		return nil, wire.Errorf(wire.Validation, "KeyUsage %s is not compatible with KeySpec %s", usage, spec)
	}
	if err := checkTags(in.Tags); err != nil {
		return nil, err
	}
	cond := conditions("kms:KeySpec", spec, "kms:CustomerMasterKeySpec", spec, "kms:KeyUsage", usage,
		"kms:CustomerMasterKeyUsage", usage, "kms:KeyOrigin", origin, "kms:MultiRegion", strconv.FormatBool(in.MultiRegion),
		"kms:BypassPolicyLockoutSafetyCheck", strconv.FormatBool(in.BypassPolicyLockoutSafetyCheck))
	if err := s.authorizeIdentity(ctx, r, requestTags(cond, in.Tags), r.action(), "*", onNothing); err != nil {
		return nil, err
	}
	if in.XksKeyId != "" && in.Origin != originXKS {
		return nil, wire.Errorf(wire.Validation, "XksKeyId is valid only for a KMS key with Origin EXTERNAL_KEY_STORE.")
	}
	if in.MultiRegion && in.CustomKeyStoreId != "" {
		return nil, wire.Errorf(wire.UnsupportedOperation, "You cannot create a multi-Region key in a custom key store.")
	}
	var ks *keystore.Store
	xksKey := ""
	if in.CustomKeyStoreId != "" {
		if in.Origin != originCloudHSM && in.Origin != originXKS {
			return nil, wire.Errorf(wire.UnsupportedOperation, "A key in custom key store %s must have Origin AWS_CLOUDHSM or EXTERNAL_KEY_STORE.", in.CustomKeyStoreId)
		}
		if spec != specSymmetric || usage != usageEncrypt {
			return nil, wire.Errorf(wire.UnsupportedOperation, "Keys in a custom key store are SYMMETRIC_DEFAULT ENCRYPT_DECRYPT keys only.")
		}
		if in.Origin == originXKS && in.XksKeyId == "" {
			return nil, wire.Errorf(wire.Validation, "XksKeyId is required for a KMS key with Origin EXTERNAL_KEY_STORE.")
		}
		kst, live, err := s.keyStore(ctx, r, in.CustomKeyStoreId)
		if err != nil {
			return nil, err
		}
		if (kst.Type == storeTypeExternal) != (in.Origin == originXKS) {
			return nil, wire.Errorf(wire.UnsupportedOperation, "A key in custom key store %s must have Origin %s.", in.CustomKeyStoreId, kst.Type)
		}
		if live == nil {
			// The external key must be there, AES-256, ENCRYPT and
			// DECRYPT, and ENABLED: the proxy says so, for this key.
			if err := s.checkExternalKey(ctx, r, kst, in.XksKeyId); err != nil {
				return nil, err
			}
			ks, xksKey = s.keystores.Default(), in.XksKeyId
		} else {
			if st, _ := live.State(); st != keystore.Connected {
				return nil, keyStoreInvalidState(in.CustomKeyStoreId, st, "CONNECTED")
			}
			ks = live
		}
		origin = originAWSKMS // checked below as the default origin
	} else if in.Origin == originCloudHSM || in.Origin == originXKS {
		return nil, wire.Errorf(wire.Validation, "Origin %s requires a CustomKeyStoreId.", in.Origin)
	}
	switch {
	case origin == originExternal && in.MultiRegion && s.keystores.Default().KeyMaterial() != keystore.Wrapped:
		// The keys of a set import one material each on its own and hold
		// it once, wrapped (sharedMaterials); as token objects, one key's
		// import would make objects another's deletion destroys.
		return nil, wire.Errorf(wire.UnsupportedOperation, "Multi-Region keys with imported key material (Origin EXTERNAL) need the default key store to hold key material wrapped (key_material: wrapped); this deployment's holds it as token objects.")
	case origin != originAWSKMS && origin != originExternal:
		return nil, wire.Errorf(wire.UnsupportedOperation, "Origin %s is not supported by hsmkms.", origin)
	case ksp.unsupported != "":
		return nil, wire.Errorf(wire.UnsupportedOperation, "%s", ksp.unsupported)
	}
	id, uuid := newKeyID()
	primaryRegion := ""
	if in.MultiRegion {
		id, uuid = newMultiRegionKeyID()
		primaryRegion = r.Caller.Region
	}
	policy := defaultPolicy(r.Caller.Account)
	if in.Policy != nil {
		pol, err := checkPolicy(*in.Policy)
		if err != nil {
			return nil, err
		}
		if !in.BypassPolicyLockoutSafetyCheck {
			if err := s.checkLockout(r, pol, r.Caller.Account, keyARN(r.Caller.Region, r.Caller.Account, id)); err != nil {
				return nil, err
			}
		}
		policy = *in.Policy
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	switch {
	case xksKey != "":
		origin = originXKS
	case ks == nil:
		ks = s.keystores.Default()
	default:
		origin = originCloudHSM
	}
	if origin == originExternal {
		return s.createExternalKey(ctx, r, in, id, spec, usage, policy, primaryRegion)
	}
	mat, err := ks.NewMaterial(ctx, uuid, ksp.material, keyUsage(usage), keyARN(r.Caller.Region, r.Caller.Account, id))
	if err != nil {
		// Wrapped material is generated here: a missing mechanism is the
		// spec's, as from Generate.
		return nil, tokenError(err, tokenCall{storeID: ks.ID(), what: "KeySpec " + spec})
	}
	now := s.now().UTC()
	state := StateCreating
	if !mat.OnToken() {
		state = StateEnabled
	}
	k := &store.Key{
		Account: r.Caller.Account, Region: r.Caller.Region, ID: id,
		Description: in.Description, KeyUsage: usage, KeySpec: spec, Origin: origin, CustomKeyStoreID: in.CustomKeyStoreId,
		State: string(state), CreationDate: now, Policy: policy,
		Materials: []store.Material{{ID: hexID(mat.ID()), TokenID: mat.Ref(), CreationDate: now,
			Wrapped: mat.Wrapped(), DomainKey: mat.DomainKey()}},
		XksKeyID:    xksKey,
		MultiRegion: in.MultiRegion, PrimaryRegion: primaryRegion,
	}
	tags := make([]store.Tag, len(in.Tags))
	for i, t := range in.Tags {
		tags[i] = store.Tag{Key: t.TagKey, Value: t.TagValue}
	}
	if err := s.store.CreateKey(ctx, k, tags); errors.Is(err, store.ErrNotFound) {
		// The custom key store was deleted since it was looked up.
		return nil, keyStoreNotFound(in.CustomKeyStoreId)
	} else if errors.Is(err, store.ErrXksKeyInUse) {
		return nil, wire.Errorf(wire.XksKeyAlreadyInUse, "The external key %s is already associated with another KMS key in custom key store %s.", xksKey, in.CustomKeyStoreId)
	} else if err != nil {
		return nil, err
	}
	r.touched(arnOf(k))
	if !mat.OnToken() {
		return &CreateKeyOutput{KeyMetadata: createdMetadata(s, k)}, nil
	}
	if err := ks.Generate(ctx, mat); err != nil {
		s.abandon(ctx, k, false)
		return nil, tokenError(err, tokenCall{key: k, what: "KeySpec " + spec})
	}
	k, err = s.store.UpdateKey(ctx, k.Account, k.Region, k.ID, func(k *store.Key) error {
		k.State = string(StateEnabled)
		return nil
	})
	if err != nil {
		s.abandon(ctx, k, true)
		return nil, err
	}
	return &CreateKeyOutput{KeyMetadata: createdMetadata(s, k)}, nil
}

// createdMetadata is a new key's metadata; a new multi-Region key is a
// primary without replicas.
func createdMetadata(s *Service, k *store.Key) *KeyMetadata {
	m := s.metadata(k)
	if k.MultiRegion {
		m.MultiRegionConfiguration = multiRegionConfiguration(k, []*store.Key{k})
	}
	return m
}

// abandon undoes a CreateKey that failed half way. If it fails too, the row
// stays in Creating and Reconcile finishes the job at the next start.
func (s *Service) abandon(ctx context.Context, k *store.Key, destroy bool) {
	if destroy {
		if tok, err := s.token(k); err == nil {
			if err := destroyMaterials(ctx, tok, k); err != nil {
				s.log.Error("abandoning key: destroy token objects", "key", arnOf(k), "error", err)
				return
			}
		}
	}
	if err := s.store.DeleteKey(ctx, k.Account, k.Region, k.ID); err != nil {
		s.log.Error("abandoning key: delete metadata", "key", arnOf(k), "error", err)
	}
}

type KeyIDInput struct {
	KeyId string
}

type DescribeKeyInput struct {
	KeyId string
	GrantTokensField
}

type DescribeKeyOutput struct {
	KeyMetadata *KeyMetadata
}

func (s *Service) DescribeKey(ctx context.Context, r *Request, in *DescribeKeyInput) (*DescribeKeyOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	m, err := s.describe(ctx, k)
	if err != nil {
		return nil, err
	}
	return &DescribeKeyOutput{KeyMetadata: m}, nil
}

type ListInput struct {
	Limit  int
	Marker string
}

type KeyListEntry struct {
	KeyArn string
	KeyId  string
}

type ListKeysOutput struct {
	Keys       []KeyListEntry
	NextMarker string `json:"NextMarker,omitempty"`
	Truncated  bool
}

func (s *Service) ListKeys(ctx context.Context, r *Request, in *ListInput) (*ListKeysOutput, error) {
	keys, next, err := s.store.ListKeys(ctx, r.Caller.Account, r.Caller.Region, in.Marker, limit(in.Limit, 1000))
	if err != nil {
		return nil, listError(err)
	}
	out := &ListKeysOutput{Keys: []KeyListEntry{}, NextMarker: next, Truncated: next != ""}
	for _, k := range keys {
		if k.State != string(StateCreating) || k.IsReplica() {
			out.Keys = append(out.Keys, KeyListEntry{KeyArn: arnOf(k), KeyId: k.ID})
		}
	}
	return out, nil
}

// limit applies AWS's default page size (100) and its maximum.
func limit(n, max int) int {
	if n <= 0 {
		return 100
	}
	return min(n, max)
}

func listError(err error) error {
	if errors.Is(err, store.ErrInvalidMarker) {
		return wire.Errorf(wire.InvalidMarker, "Invalid marker")
	}
	return err
}

type Empty struct{}

func (s *Service) EnableKey(ctx context.Context, r *Request, in *KeyIDInput) (*Empty, error) {
	return s.setEnabled(ctx, r, in.KeyId, StateEnabled)
}

func (s *Service) DisableKey(ctx context.Context, r *Request, in *KeyIDInput) (*Empty, error) {
	return s.setEnabled(ctx, r, in.KeyId, StateDisabled)
}

func (s *Service) setEnabled(ctx context.Context, r *Request, keyID string, state KeyState) (*Empty, error) {
	_, err := s.update(ctx, r, keyID, access{}, func(k *store.Key) error {
		k.State = string(state)
		return nil
	})
	return &Empty{}, err
}

// update resolves and authorizes the key keyID names (Service.key), then
// applies fn to it atomically, checking the operation's key-state rule
// again against the stored (not a cached) state inside the transaction.
func (s *Service) update(ctx context.Context, r *Request, keyID string, a access, fn func(*store.Key) error) (*store.Key, error) {
	k, err := s.key(ctx, r, keyID, a)
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	out, err := s.writeKey(ctx, k, func(k *store.Key, _ []*store.Key) error {
		if err := s.checkState(k, r.op.states); err != nil {
			return err
		}
		return fn(k)
	})
	if isNotFound(err) {
		return nil, keyNotFound(k.Region, k.Account, k.ID)
	}
	return out, err
}

type UpdateKeyDescriptionInput struct {
	KeyId       string
	Description string
}

func (s *Service) UpdateKeyDescription(ctx context.Context, r *Request, in *UpdateKeyDescriptionInput) (*Empty, error) {
	_, err := s.update(ctx, r, in.KeyId, access{}, func(k *store.Key) error {
		k.Description = in.Description
		return nil
	})
	return &Empty{}, err
}

func isReservedTagKey(k string) bool { return strings.HasPrefix(strings.ToLower(k), "aws:") }
