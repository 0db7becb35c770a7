package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// KeyCache wraps a Store with an in-memory copy of keys read, because
// every Encrypt and Decrypt reads its key and a database round trip was the
// largest cost of the request after the token. Writes made through the
// wrapper invalidate the entry after they commit. It is only correct while
// this process is the database's only writer, which holds for the embedded
// SQLite file; nodes sharing a PostgreSQL database also need each other's
// invalidations, which that store announces on KeyChannel.
type KeyCache struct {
	Store
	keys sync.Map // account/region/id → *Key
	gen  atomic.Uint64
}

// WithKeyCache returns s with a key cache in front of it.
func WithKeyCache(s Store) *KeyCache { return &KeyCache{Store: s} }

func cacheKey(account, region, id string) string { return account + "/" + region + "/" + id }

// GetKey returns a copy the caller may change; Materials is shared and
// must not be modified in place.
func (c *KeyCache) GetKey(ctx context.Context, account, region, id string) (*Key, error) {
	ck := cacheKey(account, region, id)
	if k, ok := c.keys.Load(ck); ok {
		cp := *k.(*Key)
		return &cp, nil
	}
	gen := c.gen.Load()
	k, err := c.Store.GetKey(ctx, account, region, id)
	if err != nil {
		return nil, err
	}
	cp := *k
	c.keys.Store(ck, &cp)
	// A write that committed while we read may have invalidated before
	// our Store: then what we stored may be stale, so drop it.
	if c.gen.Load() != gen {
		c.keys.Delete(ck)
	}
	return k, nil
}

func (c *KeyCache) invalidate(account, region, id string) {
	c.gen.Add(1)
	c.keys.Delete(cacheKey(account, region, id))
}

func (c *KeyCache) CreateKey(ctx context.Context, k *Key, tags []Tag) error {
	defer c.invalidate(k.Account, k.Region, k.ID)
	return c.Store.CreateKey(ctx, k, tags)
}

func (c *KeyCache) UpdateKey(ctx context.Context, account, region, id string, fn func(*Key) error) (*Key, error) {
	defer c.invalidate(account, region, id)
	return c.Store.UpdateKey(ctx, account, region, id, fn)
}

func (c *KeyCache) DeleteKey(ctx context.Context, account, region, id string) error {
	defer c.invalidate(account, region, id)
	return c.Store.DeleteKey(ctx, account, region, id)
}

func (c *KeyCache) DeleteKeyOrphaning(ctx context.Context, k *Key, now time.Time) error {
	defer c.invalidate(k.Account, k.Region, k.ID)
	return c.Store.DeleteKeyOrphaning(ctx, k, now)
}
