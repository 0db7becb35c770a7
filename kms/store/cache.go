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
// wrapper invalidate the entry after they commit.
//
// On a store only this process writes (SQLite) that is all it takes. On a
// store several nodes share, the others' writes are learnt through the
// store's change feed (Watcher): Invalidate for each changed key, and
// SetLive for whether the feed is known to be complete. While it is not
// (before the first LISTEN, after the connection is lost, until it is
// back) the cache keeps nothing and every read goes to the database, so a
// node never serves a copy older than what it has been told; when the
// feed returns, everything cached before is dropped, since what changed
// in between is unknown.
type KeyCache struct {
	Store
	keys sync.Map // account/region/id → *Key
	// gen changes on every invalidation and every change of live, so a
	// read that raced one does not keep what it read.
	gen  atomic.Uint64
	live atomic.Bool
}

// WithKeyCache returns s with a key cache in front of it, live: for a
// store this process alone writes. A shared store's cache starts not live
// (SetLive(false)) until its watcher is listening.
func WithKeyCache(s Store) *KeyCache {
	c := &KeyCache{Store: s}
	c.live.Store(true)
	return c
}

func cacheKey(account, region, id string) string { return account + "/" + region + "/" + id }

// GetKey returns a copy the caller may change; Materials is shared and
// must not be modified in place.
func (c *KeyCache) GetKey(ctx context.Context, account, region, id string) (*Key, error) {
	ck := cacheKey(account, region, id)
	gen := c.gen.Load()
	live := c.live.Load()
	if live {
		if k, ok := c.keys.Load(ck); ok {
			cp := *k.(*Key)
			return &cp, nil
		}
	}
	k, err := c.Store.GetKey(ctx, account, region, id)
	if err != nil || !live {
		return k, err
	}
	cp := *k
	c.keys.Store(ck, &cp)
	// A write, an invalidation or a change of live that came while we read
	// may have come before our Store: then what we stored may be stale,
	// so drop it.
	if c.gen.Load() != gen {
		c.keys.Delete(ck)
	}
	return k, nil
}

// Invalidate drops the copy of a key: the change feed calls it for every
// key another node changed.
func (c *KeyCache) Invalidate(account, region, id string) {
	c.gen.Add(1)
	c.keys.Delete(cacheKey(account, region, id))
}

// SetLive says whether the change feed is complete. Either way every copy
// is dropped: going live, because changes made while it was not are
// unknown; going not live, because from now on none would be heard of.
func (c *KeyCache) SetLive(live bool) {
	if !live {
		c.live.Store(false)
	}
	c.gen.Add(1)
	c.keys.Clear()
	c.gen.Add(1)
	if live {
		c.live.Store(true)
	}
}

// Live reports whether the cache is serving copies.
func (c *KeyCache) Live() bool { return c.live.Load() }

func (c *KeyCache) CreateKey(ctx context.Context, k *Key, tags []Tag) error {
	defer c.Invalidate(k.Account, k.Region, k.ID)
	return c.Store.CreateKey(ctx, k, tags)
}

func (c *KeyCache) UpdateKey(ctx context.Context, account, region, id string, fn func(*Key) error) (*Key, error) {
	defer c.Invalidate(account, region, id)
	return c.Store.UpdateKey(ctx, account, region, id, fn)
}

func (c *KeyCache) DeleteKey(ctx context.Context, account, region, id string) error {
	defer c.Invalidate(account, region, id)
	return c.Store.DeleteKey(ctx, account, region, id)
}

func (c *KeyCache) DeleteKeyOrphaning(ctx context.Context, k *Key, now time.Time) error {
	defer c.Invalidate(k.Account, k.Region, k.ID)
	return c.Store.DeleteKeyOrphaning(ctx, k, now)
}
