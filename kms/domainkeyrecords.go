package kms

import (
	"context"
	"errors"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
)

// tokenRecords is also keystore.DomainKeyRecords on the metadata store:
// the domain keys of each key store, with the store's transactional rules
// (kms/store: DomainKey).

func (r tokenRecords) DomainKeys(ctx context.Context, storeID string) ([]keystore.DomainKeyRecord, error) {
	dks, err := r.db.DomainKeys(ctx, storeID)
	if err != nil {
		return nil, err
	}
	out := make([]keystore.DomainKeyRecord, len(dks))
	for i, dk := range dks {
		out[i] = keystore.DomainKeyRecord{ID: dk.ID, State: dk.State, Created: dk.Created}
	}
	return out, nil
}

func (r tokenRecords) AddDomainKey(ctx context.Context, storeID, id string, created time.Time) error {
	return r.db.AddDomainKey(ctx, &store.DomainKey{KeyStoreID: storeID, ID: id, Created: created})
}

func (r tokenRecords) ActivateDomainKey(ctx context.Context, storeID, id string) error {
	return r.db.ActivateDomainKey(ctx, storeID, id)
}

func (r tokenRecords) RetireDomainKey(ctx context.Context, storeID, id string) error {
	err := r.db.RetireDomainKey(ctx, storeID, id)
	if errors.Is(err, store.ErrDomainKeyInUse) {
		return errors.Join(keystore.ErrDomainKeyInUse, err)
	}
	return err
}

func (r tokenRecords) DeleteDomainKey(ctx context.Context, storeID, id string) error {
	return r.db.DeleteDomainKey(ctx, storeID, id)
}
