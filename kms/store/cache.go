package store

import (
	"context"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unique"
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
//
// It holds a bounded number of keys (DefaultKeyCacheSize unless the
// node's limits.cached_keys says otherwise): with 100,000 keys in use a
// copy of each (about 1.4 KB) took the live heap past the server's soft
// memory limit and the garbage collector ran without rest. Past the bound
// a key read evicts one at random, in its shard; the strings most keys
// share (account, region, policy, spec...) are held once (unique.Make).
// Reads take one shard's read lock. Safe for concurrent use.
type KeyCache struct {
	Store
	shards   [keyCacheShards]keyShard
	seed     maphash.Seed
	perShard int
	// gen changes on every invalidation and every change of live, so a
	// read that raced one does not keep what it read.
	gen  atomic.Uint64
	live atomic.Bool
}

// DefaultKeyCacheSize bounds the keys a KeyCache holds: about 12 MB of
// them, and every key of most deployments.
const DefaultKeyCacheSize = 16384

const keyCacheShards = 64

type keyShard struct {
	mu   sync.RWMutex
	keys map[string]*Key // account/region/id → key
}

// WithKeyCache returns s with a key cache of DefaultKeyCacheSize keys in
// front of it, live: for a store this process alone writes. A shared
// store's cache starts not live (SetLive(false)) until its watcher is
// listening.
func WithKeyCache(s Store) *KeyCache { return WithKeyCacheSize(s, DefaultKeyCacheSize) }

// WithKeyCacheSize returns s with a cache of up to size keys in front.
func WithKeyCacheSize(s Store, size int) *KeyCache {
	c := &KeyCache{Store: s, seed: maphash.MakeSeed(), perShard: max(1, size/keyCacheShards)}
	for i := range c.shards {
		c.shards[i].keys = map[string]*Key{}
	}
	c.live.Store(true)
	return c
}

func cacheKey(account, region, id string) string { return account + "/" + region + "/" + id }

func (c *KeyCache) shard(ck string) *keyShard {
	return &c.shards[maphash.String(c.seed, ck)%keyCacheShards]
}

// GetKey returns a copy the caller may change; Materials is shared and
// must not be modified in place.
func (c *KeyCache) GetKey(ctx context.Context, account, region, id string) (*Key, error) {
	ck := cacheKey(account, region, id)
	sh := c.shard(ck)
	gen := c.gen.Load()
	live := c.live.Load()
	if live {
		sh.mu.RLock()
		k, ok := sh.keys[ck]
		sh.mu.RUnlock()
		if ok {
			cp := *k
			return &cp, nil
		}
	}
	k, err := c.Store.GetKey(ctx, account, region, id)
	if err != nil || !live {
		return k, err
	}
	cp := compact(*k)
	sh.mu.Lock()
	// A write, an invalidation or a change of live that came while we
	// read may have come before we got here: then what we read may be
	// stale, and is not kept.
	if c.gen.Load() == gen {
		if _, had := sh.keys[ck]; !had && len(sh.keys) >= c.perShard {
			for victim := range sh.keys { // a random one: map order is
				delete(sh.keys, victim)
				break
			}
		}
		sh.keys[ck] = &cp
	}
	sh.mu.Unlock()
	return k, nil
}

// compact shares the strings keys have in common, so that a cached key
// costs little beyond its id and material.
func compact(k Key) Key {
	in := func(s string) string { return unique.Make(s).Value() }
	k.Materials = slices.Clone(k.Materials)
	k.Account, k.Region, k.KeyUsage, k.KeySpec, k.Origin, k.State = in(k.Account), in(k.Region), in(k.KeyUsage), in(k.KeySpec), in(k.Origin), in(k.State)
	k.Policy, k.Description, k.CustomKeyStoreID = in(k.Policy), in(k.Description), in(k.CustomKeyStoreID)
	for i := range k.Materials {
		k.Materials[i].DomainKey, k.Materials[i].RotationType = in(k.Materials[i].DomainKey), in(k.Materials[i].RotationType)
	}
	return k
}

// Len is how many keys the cache holds.
func (c *KeyCache) Len() int {
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.RLock()
		n += len(sh.keys)
		sh.mu.RUnlock()
	}
	return n
}

// Invalidate drops the copy of a key: the change feed calls it for every
// key another node changed, and every write through the cache after it
// commits.
func (c *KeyCache) Invalidate(account, region, id string) {
	c.gen.Add(1)
	ck := cacheKey(account, region, id)
	sh := c.shard(ck)
	sh.mu.Lock()
	delete(sh.keys, ck)
	sh.mu.Unlock()
}

// SetLive says whether the change feed is complete. Either way every copy
// is dropped: going live, because changes made while it was not are
// unknown; going not live, because from now on none would be heard of.
func (c *KeyCache) SetLive(live bool) {
	if !live {
		c.live.Store(false)
	}
	c.gen.Add(1)
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		clear(sh.keys)
		sh.mu.Unlock()
	}
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
