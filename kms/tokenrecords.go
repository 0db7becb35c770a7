package kms

import (
	"context"
	"errors"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
)

// tokenRecords is keystore.TokenRecords on the metadata store: the record
// of which token backs each key store, and the token objects the database
// says each one holds.
type tokenRecords struct{ db store.Store }

func (r tokenRecords) TokenIdentity(ctx context.Context, storeID string) (keystore.TokenIdentity, bool, error) {
	id, err := r.db.TokenIdentity(ctx, storeID)
	if errors.Is(err, store.ErrNotFound) {
		return keystore.TokenIdentity{}, false, nil
	}
	if err != nil {
		return keystore.TokenIdentity{}, false, err
	}
	return keystore.TokenIdentity{ClusterID: id.ClusterID, Marker: id.Marker, Serial: id.Serial, Label: id.Label, Recorded: id.Recorded}, true, nil
}

func (r tokenRecords) RecordTokenIdentity(ctx context.Context, storeID string, id keystore.TokenIdentity) error {
	return r.db.PutTokenIdentity(ctx, &store.TokenIdentity{KeyStoreID: storeID, ClusterID: id.ClusterID,
		Marker: id.Marker, Serial: id.Serial, Label: id.Label, Recorded: id.Recorded})
}

// KeyMaterial lists the references of the material of the store's keys
// held as token objects, but not of keys still Creating (a crash may have
// kept their material from ever being made). Wrapped material is on the
// token only through its domain key (DomainKeys).
func (r tokenRecords) KeyMaterial(ctx context.Context, storeID string) ([][]byte, error) {
	var ids [][]byte
	err := r.db.ForEachKey(ctx, func(k *store.Key) error {
		if materialStoreID(k) == storeID && k.State != string(StateCreating) {
			for _, m := range k.Materials {
				if len(m.Wrapped) == 0 && hasMaterial(m) {
					ids = append(ids, m.TokenID)
				}
			}
		}
		return nil
	})
	return ids, err
}

// SealsPasswords reports whether a custom key store has a sealed kmsuser
// password.
func (r tokenRecords) SealsPasswords(ctx context.Context) (bool, error) {
	stores, err := r.db.AllKeyStores(ctx)
	if err != nil {
		return false, err
	}
	for _, ks := range stores {
		if len(ks.Password) > 0 || len(ks.PendingPassword) > 0 {
			return true, nil
		}
	}
	return false, nil
}
