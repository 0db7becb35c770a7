package store

import (
	"context"
	"errors"
	"time"
)

var (
	ErrNotFound      = errors.New("store: not found")
	ErrAlreadyExists = errors.New("store: already exists")
	ErrInvalidMarker = errors.New("store: invalid pagination marker")
)

// Material is one version of a key's material: a token object.
type Material struct {
	ID           string // hex; AWS's KeyMaterialId
	TokenID      []byte // CKA_ID of the token object
	CreationDate time.Time
	RotationType string // "" for the original material, else AUTOMATIC or ON_DEMAND
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

// KeyStore is a custom key store. Its ID is unique across accounts (keys
// refer to it by ID alone), and a cluster backs at most one store.
type KeyStore struct {
	ID, Account, Region string
	Name                string
	ClusterID           string
	TrustAnchor         string
	CreationDate        time.Time
	// Connect records that the store should be connected: set by
	// ConnectCustomKeyStore, cleared by DisconnectCustomKeyStore, so a
	// restart reconnects what was connected.
	Connect bool
	// Password and PendingPassword are the kmsuser password, encrypted by
	// the caller; the store never sees them in clear. PendingPassword is
	// set while a rotation is in flight.
	Password, PendingPassword []byte
}

// Orphan is a token object left behind when its key was deleted while its
// key store was disconnected.
type Orphan struct {
	KeyStoreID string
	KeyARN     string
	TokenID    []byte
	Deleted    time.Time
}

// Store is the metadata store. Lists page in a stable order with opaque
// markers; a marker the store did not produce is ErrInvalidMarker.
type Store interface {
	// CreateKey stores k with its tags atomically.
	CreateKey(ctx context.Context, k *Key, tags []Tag) error
	GetKey(ctx context.Context, account, region, id string) (*Key, error)
	// UpdateKey applies fn to the key inside a write transaction and
	// stores what fn changed. If fn fails nothing is written and its error
	// is returned unchanged.
	UpdateKey(ctx context.Context, account, region, id string, fn func(*Key) error) (*Key, error)
	// DeleteKey removes the key with its aliases and tags.
	DeleteKey(ctx context.Context, account, region, id string) error
	ListKeys(ctx context.Context, account, region, marker string, limit int) (keys []*Key, next string, err error)
	// ForEachKey visits every key of every account and region.
	ForEachKey(ctx context.Context, fn func(*Key) error) error
	// KeysDueForDeletion returns keys PendingDeletion whose date is not after now.
	KeysDueForDeletion(ctx context.Context, now time.Time) ([]*Key, error)
	// KeysDueForRotation returns keys Enabled, with automatic rotation on,
	// whose next rotation date is not after now, the most overdue first.
	KeysDueForRotation(ctx context.Context, now time.Time) ([]*Key, error)

	CreateAlias(ctx context.Context, a *Alias) error
	GetAlias(ctx context.Context, account, region, name string) (*Alias, error)
	UpdateAlias(ctx context.Context, account, region, name, targetKeyID string, now time.Time) error
	DeleteAlias(ctx context.Context, account, region, name string) error
	// ListAliases lists by name; keyID "" means all keys.
	ListAliases(ctx context.Context, account, region, keyID, marker string, limit int) (aliases []*Alias, next string, err error)
	CountAliases(ctx context.Context, account, region, keyID string) (int, error)

	// TagKey sets each tag, replacing the value of an existing tag key.
	TagKey(ctx context.Context, account, region, keyID string, tags []Tag) error
	UntagKey(ctx context.Context, account, region, keyID string, tagKeys []string) error
	ListTags(ctx context.Context, account, region, keyID, marker string, limit int) (tags []Tag, next string, err error)
	CountTags(ctx context.Context, account, region, keyID string) (int, error)

	CreateKeyStore(ctx context.Context, ks *KeyStore) error // ErrAlreadyExists for a taken name or cluster
	GetKeyStore(ctx context.Context, id string) (*KeyStore, error)
	// ListKeyStores lists one account and region's stores by creation.
	ListKeyStores(ctx context.Context, account, region string) ([]*KeyStore, error)
	AllKeyStores(ctx context.Context) ([]*KeyStore, error)
	UpdateKeyStore(ctx context.Context, id string, fn func(*KeyStore) error) (*KeyStore, error)
	DeleteKeyStore(ctx context.Context, id string) error
	// CountKeysInStore counts keys in any state in the store.
	CountKeysInStore(ctx context.Context, id string) (int, error)
	// DeleteKeyOrphaning deletes a key and records its token objects as
	// orphans, in one transaction.
	DeleteKeyOrphaning(ctx context.Context, k *Key, now time.Time) error
	Orphans(ctx context.Context) ([]Orphan, error)

	Close() error
}
