package keystore_test

import (
	"context"
	"errors"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
)

// memRecords keeps domain keys as kms/store does: at most one ACTIVE per
// store, activation retires it, and a key some material names (named) is
// not retired.
type domainRecord struct {
	storeID string
	keystore.DomainKeyRecord
}

var errState = errors.New("domain key in the wrong state")

func (r *memRecords) DomainKeys(_ context.Context, storeID string) ([]keystore.DomainKeyRecord, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []keystore.DomainKeyRecord
	for _, d := range r.domain {
		if d.storeID == storeID {
			out = append(out, d.DomainKeyRecord)
		}
	}
	return out, nil
}

func (r *memRecords) find(storeID, id string) *domainRecord {
	for _, d := range r.domain {
		if d.storeID == storeID && d.ID == id {
			return d
		}
	}
	return nil
}

func (r *memRecords) AddDomainKey(_ context.Context, storeID, id string, created time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.find(storeID, id) != nil {
		return errState
	}
	r.domain = append(r.domain, &domainRecord{storeID, keystore.DomainKeyRecord{ID: id, State: "PENDING", Created: created}})
	return nil
}

func (r *memRecords) ActivateDomainKey(_ context.Context, storeID, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.find(storeID, id)
	if d == nil || (d.State != "PENDING" && d.State != "ACTIVE") {
		return errState
	}
	for _, o := range r.domain {
		if o.storeID == storeID && o.State == "ACTIVE" {
			o.State = "RETIRED"
		}
	}
	d.State = "ACTIVE"
	return nil
}

func (r *memRecords) RetireDomainKey(_ context.Context, storeID, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.find(storeID, id)
	switch {
	case d == nil || (d.State != "RETIRED" && d.State != "DESTROYING"):
		return errState
	case r.named[id]:
		return keystore.ErrDomainKeyInUse
	}
	d.State = "DESTROYING"
	return nil
}

func (r *memRecords) DeleteDomainKey(_ context.Context, storeID, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, d := range r.domain {
		if d.storeID == storeID && d.ID == id {
			if d.State != "PENDING" && d.State != "DESTROYING" {
				return errState
			}
			r.domain = append(r.domain[:i], r.domain[i+1:]...)
			return nil
		}
	}
	return errState
}

func (r *memRecords) setState(id, state string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.domain {
		if d.ID == id {
			d.State = state
		}
	}
}
