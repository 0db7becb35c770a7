package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"
)

var (
	ErrNotFound      = errors.New("store: not found")
	ErrAlreadyExists = errors.New("store: already exists")
	ErrInvalidMarker = errors.New("store: invalid pagination marker")
	// ErrLimitExceeded: creating the item would pass a count limit.
	ErrLimitExceeded = errors.New("store: limit exceeded")

	// ErrClusterInUse and ErrKeyStoreNameInUse say which uniqueness rule
	// of key stores a write broke; both are ErrAlreadyExists.
	ErrClusterInUse      = fmt.Errorf("%w: the cluster backs another key store", ErrAlreadyExists)
	ErrKeyStoreNameInUse = fmt.Errorf("%w: the key store name is taken in its account and region", ErrAlreadyExists)
	// ErrXksProxyURIInUse: another external key store of the account and
	// region has the same proxy endpoint and path.
	ErrXksProxyURIInUse = fmt.Errorf("%w: the external key store proxy URI is taken in its account and region", ErrAlreadyExists)
	// ErrXksKeyInUse: another key of the external key store has the same
	// external key.
	ErrXksKeyInUse = fmt.Errorf("%w: the external key backs another key of the key store", ErrAlreadyExists)

	// ErrDomainKeyUnusable: a material written names a domain key of its
	// key store that is not ACTIVE or RETIRED (or none at all).
	ErrDomainKeyUnusable = errors.New("store: key material names a domain key that is being destroyed or unknown")
	// ErrDomainKeyInUse: RetireDomainKey found material still wrapped under
	// the domain key.
	ErrDomainKeyInUse = errors.New("store: key material is still wrapped under the domain key")
	// ErrDomainKeyState: the domain key is not in a state that allows the
	// change.
	ErrDomainKeyState = errors.New("store: the domain key is not in a state that allows this")
)

// KeyStoreNotEmptyError is DeleteKeyStore's refusal: Keys keys, in any
// state, are still in the store.
type KeyStoreNotEmptyError struct{ Keys int }

func (e *KeyStoreNotEmptyError) Error() string {
	return fmt.Sprintf("store: key store holds %d keys", e.Keys)
}

// Material is one version of a key's material: token objects, or material
// wrapped under one of its key store's domain keys.
type Material struct {
	ID           string // hex; AWS's KeyMaterialId
	TokenID      []byte // the key store's reference to the version (for token objects, their CKA_ID)
	CreationDate time.Time
	RotationType string // "" for the original material, else AUTOMATIC or ON_DEMAND
	// Wrapped is the material wrapped under the domain key DomainKey, as
	// the key store gives it (opaque here); both are empty for material
	// held as token objects. Every write checks, in its transaction, that
	// a domain key a material newly names is ACTIVE or RETIRED
	// (ErrDomainKeyUnusable), so that none is named once its destruction
	// has begun.
	Wrapped   []byte
	DomainKey string
	// Import is set for material imported into a key of Origin EXTERNAL
	// (it is kept, PendingImport, after the material is deleted or
	// expires, so that the same material can be imported again).
	Import *Import
}

// Import is what is recorded of an imported material version.
type Import struct {
	// PendingImport: the material was deleted (DeleteImportedKeyMaterial)
	// or expired; TokenID names nothing, Wrapped is empty.
	PendingImport bool
	// PendingRotation: imported for RotateKeyOnDemand and not yet
	// current; a key's current material is its last one that is not.
	PendingRotation bool
	Description     string
	// ValidTo is when the material expires; zero if it does not.
	ValidTo time.Time
}

// Key is a KMS key's metadata. (Account, Region, ID) identifies it.
type Key struct {
	Account, Region, ID string
	Description         string
	KeyUsage            string
	KeySpec             string
	Origin              string
	State               string
	CreationDate        time.Time
	DeletionDate        time.Time // zero unless PendingDeletion
	PendingWindowDays   int
	Policy              string // byte for byte as the client sent it
	CustomKeyStoreID    string
	RotationEnabled     bool
	RotationPeriodDays  int
	NextRotationDate    time.Time
	MultiRegion         bool
	Materials           []Material // oldest first; the last is current
	// XksKeyID is, for a key of an external key store, the id of its
	// external key (unique within the store); "" for every other key.
	XksKeyID string
	// PrimaryRegion is, for a multi-Region key, the Region of the set's
	// primary key (every key of the set names the same); "" for a
	// single-Region key. NewPrimaryRegion is set, on every key of the set,
	// while UpdatePrimaryRegion moves the primary there.
	PrimaryRegion    string
	NewPrimaryRegion string
}

// IsReplica reports whether k is a multi-Region replica key.
func (k *Key) IsReplica() bool { return k.MultiRegion && k.Region != k.PrimaryRegion }

// MaterialStoreID is the key store whose token holds k's material: its
// own, except for a key of an external key store, whose material (the
// inner layer of its double encryption) is the default key store's.
func (k *Key) MaterialStoreID() string {
	if k.XksKeyID != "" {
		return ""
	}
	return k.CustomKeyStoreID
}

// Alias names a key within one account and region.
type Alias struct {
	Account, Region string
	Name            string // including the "alias/" prefix
	TargetKeyID     string
	CreationDate    time.Time
	LastUpdatedDate time.Time
}

type Tag struct{ Key, Value string }

// The types of custom key store.
const (
	StoreTypeCloudHSM = "AWS_CLOUDHSM"
	StoreTypeExternal = "EXTERNAL_KEY_STORE"
)

// KeyStore is a custom key store. Its ID is unique across accounts (keys
// refer to it by ID alone), a cluster backs at most one store, and an
// external key store's proxy URI (endpoint and path) is unique in its
// account and region.
type KeyStore struct {
	ID, Account, Region string
	Name                string
	// Type is StoreTypeCloudHSM or StoreTypeExternal; it never changes.
	Type string
	// ClusterID and TrustAnchor are an AWS_CLOUDHSM store's; "" for an
	// external key store.
	ClusterID    string
	TrustAnchor  string
	CreationDate time.Time
	// XKS is an external key store's proxy; zero for a CloudHSM store.
	XKS XKSProxy
	// Connect records that the store should be connected: set by
	// ConnectCustomKeyStore, cleared by DisconnectCustomKeyStore, so a
	// restart reconnects what was connected.
	Connect bool
	// Password and PendingPassword are the kmsuser password, encrypted by
	// the caller; the store never sees them in clear. PendingPassword is
	// set while a rotation is in flight. For an external key store,
	// Password is its proxy credential's secret access key, encrypted
	// alike, and PendingPassword is unused.
	Password, PendingPassword []byte
	// ConnectionState is the store's state as every node reports it
	// (DISCONNECTED, CONNECTING, CONNECTED or FAILED; "" reads as
	// DISCONNECTED), and ConnectionError the ConnectionErrorCode when
	// FAILED. The node that connects the store sets them; see kms.
	ConnectionState, ConnectionError string
}

// XKSProxy is how an external key store reaches its proxy (AWS's
// XksProxyConfiguration, less the secret, which is the store's Password).
type XKSProxy struct {
	Connectivity            string // PUBLIC_ENDPOINT or VPC_ENDPOINT_SERVICE
	URIEndpoint             string // https://host
	URIPath                 string // [/prefix]/kms/xks/v1
	AccessKeyID             string
	VpcEndpointServiceName  string
	VpcEndpointServiceOwner string
}

// TokenIdentity is what is recorded of the token behind a key store, to
// know it again: the value of the identity object hsmkms put on it, and its
// serial and label when recorded.
type TokenIdentity struct {
	KeyStoreID string // "" for the default key store
	ClusterID  string // the cluster it was recorded for ("" for the default key store)
	Marker     []byte
	Serial     string
	Label      string
	Recorded   time.Time
}

// DomainKey is a key store's domain key as recorded: the key on its token
// that wraps the material of its keys held wrapped. At most one per store
// is ACTIVE. The states, in the order a key goes through them:
//
//	PENDING     recorded before it is made on the token; wraps nothing
//	ACTIVE      wraps new material
//	RETIRED     a newer key is ACTIVE; material still under this one is
//	            being rewrapped
//	DESTROYING  nothing names it (checked in the transaction that set the
//	            state); its token object is being destroyed, then the row
type DomainKey struct {
	KeyStoreID string // "" for the default key store
	ID         string // what materials record (Material.DomainKey)
	State      string
	Created    time.Time
}

const (
	DomainKeyPending    = "PENDING"
	DomainKeyActive     = "ACTIVE"
	DomainKeyRetired    = "RETIRED"
	DomainKeyDestroying = "DESTROYING"
)

// Orphan is a token object left behind when its key was deleted while its
// key store was disconnected.
type Orphan struct {
	KeyStoreID string
	KeyARN     string
	TokenID    []byte
	Deleted    time.Time
}

// KeyUsage is a key's last successful cryptographic use, as
// GetKeyLastUsage reports it.
type KeyUsage struct {
	Account, Region, KeyID string
	Operation              string // Encrypt, Decrypt, ... (AWS's tracked operations)
	Time                   time.Time
	EventID                string // the audit event's eventID
	RequestID              string // the request's x-amzn-RequestId
}

// UsageTracking is where the tracking of keys' last use stands.
type UsageTracking struct {
	// Start is when this database began tracking: GetKeyLastUsage's
	// TrackingStartDate for keys created before it.
	Start time.Time
	// Trail and Sequence say how far the stored usage goes: every
	// successful call the audit trail Trail (its id) recorded up to
	// record Sequence is in it. "" and 0 before any.
	Trail    string
	Sequence uint64
}

// GrantConstraints are a grant's encryption context constraints; a nil map
// is no constraint.
type GrantConstraints struct {
	EncryptionContextEquals map[string]string
	EncryptionContextSubset map[string]string
}

// Grant lets GranteePrincipal perform Operations on one key. GrantID is
// unique across accounts and regions.
type Grant struct {
	Account, Region, KeyID string // the key's identity
	GrantID                string // 64 hex characters
	// GrantToken is the token issued with the grant (opaque to the store).
	GrantToken        string
	Name              string // "" when none was given
	GranteePrincipal  string
	RetiringPrincipal string // "" when none was given
	IssuingAccount    string // arn:aws:iam::<account>:root of the creator
	Operations        []string
	Constraints       GrantConstraints
	CreationDate      time.Time
}

// SameParameters reports whether g and o were created with the same
// parameters, apart from id, token and date: what makes a CreateGrant with a
// Name a retry of an earlier one. Operations compare as sets.
func (g *Grant) SameParameters(o *Grant) bool {
	if g.Account != o.Account || g.Region != o.Region || g.KeyID != o.KeyID || g.Name != o.Name ||
		g.GranteePrincipal != o.GranteePrincipal || g.RetiringPrincipal != o.RetiringPrincipal ||
		g.IssuingAccount != o.IssuingAccount {
		return false
	}
	if !sameSet(g.Operations, o.Operations) {
		return false
	}
	// An empty constraint map is no constraint, as in AWS.
	return maps.Equal(g.Constraints.EncryptionContextEquals, o.Constraints.EncryptionContextEquals) &&
		maps.Equal(g.Constraints.EncryptionContextSubset, o.Constraints.EncryptionContextSubset)
}

func sameSet(a, b []string) bool {
	in := func(x []string) map[string]bool {
		m := make(map[string]bool, len(x))
		for _, v := range x {
			m[v] = true
		}
		return m
	}
	return maps.Equal(in(a), in(b))
}

// Store is the metadata store. Lists page in a stable order with opaque
// markers; a marker the store did not produce is ErrInvalidMarker.
//
// Every count limit and uniqueness rule is checked by the store inside the
// write transaction that would break it, so that concurrent writers cannot
// both pass a check and then both write; callers pass the limit and map
// the error. The calls that enforce one:
//
//	CreateAlias, UpdateAlias  aliases per key (limit): ErrLimitExceeded; alias names: ErrAlreadyExists
//	TagKey                    tag keys per key (limit): ErrLimitExceeded
//	CreateGrant               grants per key (limit): ErrLimitExceeded
//	CreateKeyStore            key stores per account and region (limit): ErrLimitExceeded;
//	                          one store per cluster: ErrClusterInUse; names: ErrKeyStoreNameInUse
//	UpdateKeyStore            ErrClusterInUse, ErrKeyStoreNameInUse
//	DeleteKeyStore            only an empty store: *KeyStoreNotEmptyError
//	                          external key stores' proxy URIs: ErrXksProxyURIInUse
//	CreateKey                 a key's custom key store exists: ErrNotFound; its external key
//	                          backs no other key of the store: ErrXksKeyInUse; its materials'
//	                          domain keys are ACTIVE or RETIRED: ErrDomainKeyUnusable
//	UpdateKey                 whatever fn checks (on-demand rotations per key, key states); the
//	                          domain keys materials newly name, as CreateKey
//	RetireDomainKey           no material of the store names the key: ErrDomainKeyInUse
//	UpdateKeySet              whatever fn checks; one key of the set per Region: ErrAlreadyExists
type Store interface {
	Coordination

	keySetStore
	// CreateKey stores k with its tags atomically, or ErrNotFound if k
	// names a custom key store that does not exist, or ErrXksKeyInUse if
	// another key of that store has k's XksKeyID. It enforces no tag limit.
	CreateKey(ctx context.Context, k *Key, tags []Tag) error
	GetKey(ctx context.Context, account, region, id string) (*Key, error)
	// UpdateKey applies fn to the key inside a write transaction and
	// stores what fn changed. If fn fails nothing is written and its error
	// is returned unchanged.
	UpdateKey(ctx context.Context, account, region, id string, fn func(*Key) error) (*Key, error)
	// DeleteKey removes the key with its aliases, tags and grants.
	DeleteKey(ctx context.Context, account, region, id string) error
	ListKeys(ctx context.Context, account, region, marker string, limit int) (keys []*Key, next string, err error)
	// ForEachKey visits every key of every account and region.
	ForEachKey(ctx context.Context, fn func(*Key) error) error
	// KeysDueForDeletion returns keys PendingDeletion whose date is not after now.
	KeysDueForDeletion(ctx context.Context, now time.Time) ([]*Key, error)
	// KeysDueForRotation returns keys Enabled, with automatic rotation on,
	// whose next rotation date is not after now, the most overdue first.
	KeysDueForRotation(ctx context.Context, now time.Time) ([]*Key, error)
	// KeysOfOrigin returns the keys of one origin (EXTERNAL: the keys
	// whose imported material may expire), in every state.
	KeysOfOrigin(ctx context.Context, origin string) ([]*Key, error)

	// CreateAlias stores a. Checked in its transaction, in this order: the
	// target key exists (ErrNotFound), has fewer than limit aliases
	// (ErrLimitExceeded), and the name is free (ErrAlreadyExists).
	CreateAlias(ctx context.Context, a *Alias, limit int) error
	GetAlias(ctx context.Context, account, region, name string) (*Alias, error)
	// UpdateAlias points the alias at toKeyID if it names fromKeyID now:
	// what the caller authorized is what changes. ErrNotFound if the alias
	// does not name fromKeyID (or is gone) or toKeyID does not exist,
	// ErrLimitExceeded if toKeyID already has limit aliases (an alias
	// already on it does not count twice).
	UpdateAlias(ctx context.Context, account, region, name, fromKeyID, toKeyID string, now time.Time, limit int) error
	// DeleteAlias deletes the alias if it names keyID now; ErrNotFound
	// otherwise.
	DeleteAlias(ctx context.Context, account, region, name, keyID string) error
	// ListAliases lists by name; keyID "" means all keys.
	ListAliases(ctx context.Context, account, region, keyID, marker string, limit int) (aliases []*Alias, next string, err error)

	// TagKey sets each tag, replacing the value of an existing tag key, or
	// nothing: ErrNotFound if the key does not exist, ErrLimitExceeded if
	// the key would then have more than limit tag keys.
	TagKey(ctx context.Context, account, region, keyID string, tags []Tag, limit int) error
	UntagKey(ctx context.Context, account, region, keyID string, tagKeys []string) error
	ListTags(ctx context.Context, account, region, keyID, marker string, limit int) (tags []Tag, next string, err error)

	// CreateKeyStore stores ks. Checked in its transaction, in this order:
	// its cluster backs no store (ErrClusterInUse), its name is free in its
	// account and region (ErrKeyStoreNameInUse), an external key store's
	// proxy URI is free there (ErrXksProxyURIInUse), and they have fewer
	// than limit stores (ErrLimitExceeded).
	CreateKeyStore(ctx context.Context, ks *KeyStore, limit int) error
	GetKeyStore(ctx context.Context, id string) (*KeyStore, error)
	// ListKeyStores lists one account and region's stores by creation.
	ListKeyStores(ctx context.Context, account, region string) ([]*KeyStore, error)
	AllKeyStores(ctx context.Context) ([]*KeyStore, error)
	// UpdateKeyStore applies fn to the store inside a write transaction, as
	// UpdateKey does; ErrClusterInUse, ErrKeyStoreNameInUse or
	// ErrXksProxyURIInUse if fn gave it another store's cluster, name or
	// proxy URI. fn cannot change ID, Account, Region, Type.
	UpdateKeyStore(ctx context.Context, id string, fn func(*KeyStore) error) (*KeyStore, error)
	// DeleteKeyStore deletes an empty store: *KeyStoreNotEmptyError if
	// keys, in any state, are in it. Its token identity and domain key
	// records go with it.
	DeleteKeyStore(ctx context.Context, id string) error
	// DeleteKeyOrphaning deletes a key (with its aliases, tags and grants)
	// and records its token objects (not its wrapped materials, which
	// leave nothing on the token) as orphans, in one transaction.
	DeleteKeyOrphaning(ctx context.Context, k *Key, now time.Time) error
	Orphans(ctx context.Context) ([]Orphan, error)

	// DomainKeys lists a key store's domain keys ("" for the default key
	// store), oldest first.
	DomainKeys(ctx context.Context, keyStoreID string) ([]*DomainKey, error)
	// AddDomainKey records dk as PENDING (its State is ignored);
	// ErrAlreadyExists if the store has a key with its ID.
	AddDomainKey(ctx context.Context, dk *DomainKey) error
	// ActivateDomainKey makes the PENDING (or already ACTIVE) key id the
	// store's ACTIVE one and every other ACTIVE one RETIRED, in one
	// transaction. ErrNotFound, or ErrDomainKeyState for a RETIRED or
	// DESTROYING key.
	ActivateDomainKey(ctx context.Context, keyStoreID, id string) error
	// RetireDomainKey moves the RETIRED key id to DESTROYING if no
	// material of the store's keys names it (ErrDomainKeyInUse otherwise),
	// checked in the transaction that moves it. A key DESTROYING already
	// is left so; ErrDomainKeyState for a PENDING or ACTIVE one.
	RetireDomainKey(ctx context.Context, keyStoreID, id string) error
	// DeleteDomainKey forgets a PENDING or DESTROYING key (ErrNotFound if
	// there is none; ErrDomainKeyState otherwise).
	DeleteDomainKey(ctx context.Context, keyStoreID, id string) error

	// TokenIdentity returns what is recorded of a key store's token ("" for
	// the default key store), or ErrNotFound.
	TokenIdentity(ctx context.Context, keyStoreID string) (*TokenIdentity, error)
	// PutTokenIdentity records it, replacing any earlier record.
	PutTokenIdentity(ctx context.Context, id *TokenIdentity) error

	// CreateGrant stores g unless a grant with the same non-empty Name and
	// the same parameters (SameParameters) exists on the key, in which case
	// it returns that grant and stores nothing. Otherwise it returns g, or
	// ErrLimitExceeded if the key already has limit grants, or ErrNotFound
	// if the key does not exist. The check and the insert are one
	// transaction.
	CreateGrant(ctx context.Context, g *Grant, limit int) (*Grant, error)
	GetGrant(ctx context.Context, grantID string) (*Grant, error)
	GetGrantByToken(ctx context.Context, token string) (*Grant, error)
	// ListGrants lists a key's grants by grant id; grantID and grantee ""
	// mean no filter.
	ListGrants(ctx context.Context, account, region, keyID, grantID, grantee, marker string, limit int) (grants []*Grant, next string, err error)
	// ListRetirableGrants lists the grants of one region, on keys of any
	// account, whose retiring principal is retiringPrincipal.
	ListRetirableGrants(ctx context.Context, region, retiringPrincipal, marker string, limit int) (grants []*Grant, next string, err error)
	DeleteGrant(ctx context.Context, grantID string) error
	// GrantsFor returns the key's grants whose grantee is one of grantees.
	GrantsFor(ctx context.Context, account, region, keyID string, grantees []string) ([]*Grant, error)

	// StartUsageTracking returns the usage tracking record, making it
	// with Start = now if there is none yet.
	StartUsageTracking(ctx context.Context, now time.Time) (*UsageTracking, error)
	// RecordKeyUsage stores, in one transaction, each usage that is not
	// older than the one stored for its key (usages of keys that no
	// longer exist are dropped), and records that usage is stored up to
	// record seq of the audit trail trail. A key's usage goes with the key.
	RecordKeyUsage(ctx context.Context, usages []KeyUsage, trail string, seq uint64) error
	// KeyUsage returns the stored last use of a key, or ErrNotFound.
	KeyUsage(ctx context.Context, account, region, keyID string) (*KeyUsage, error)

	// Ping reports whether the database answers now (/readyz).
	Ping(ctx context.Context) error

	Close() error
}
