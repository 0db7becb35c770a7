package keystore

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/hsmkms/hsmkms/hsm"
)

// objectCache keeps wrapped material unwrapped on a store's token, as
// session objects, so that a key in use costs no unwrap: bounded by count
// and by an estimate of the token memory the objects take, least recently
// used first out.
//
// A request holds the object it uses (acquire, then release) and an object
// is destroyed only once nobody holds it: eviction takes an entry out of
// the cache at once, so that no new user finds it, but destroys it only
// when its last user releases it. So the bound is on what the cache keeps;
// evicted objects still in use are extra, at most one or two per request
// in flight.
//
// The cache is split into shards, each with its own lock and its own share
// of the bounds, so that requests on different keys do not queue on one
// lock; LRU order is per shard. Safe for concurrent use.
type objectCache struct {
	shards  []cacheShard
	seed    maphash.Seed
	destroy func(hsm.ObjectRef)

	hits, misses, evictions atomic.Int64
}

const maxCacheShards = 16

type cacheShard struct {
	mu         sync.Mutex
	m          map[string]*cacheEntry
	head, tail *cacheEntry // most and least recently used
	maxKeys    int
	maxBytes   int64
	bytes      int64
}

type cacheEntry struct {
	key        string
	obj        hsm.ObjectRef
	cost       int64
	refs       int
	evicted    bool
	prev, next *cacheEntry
}

// newObjectCache bounds the cache to maxKeys objects and maxBytes
// (estimated; one object is kept whatever its size); destroy is called,
// outside any lock, for every object that leaves it for good. Small caches
// get fewer shards, so that a shard's share of the bounds stays useful.
func newObjectCache(maxKeys int, maxBytes int64, destroy func(hsm.ObjectRef)) *objectCache {
	n := min(maxCacheShards, max(1, maxKeys/64), max(1, int(maxBytes>>20)))
	c := &objectCache{shards: make([]cacheShard, n), seed: maphash.MakeSeed(), destroy: destroy}
	for i := range c.shards {
		c.shards[i] = cacheShard{m: map[string]*cacheEntry{}, maxKeys: max(1, maxKeys/n), maxBytes: max(1, maxBytes/int64(n))}
	}
	return c
}

func (c *objectCache) shard(key string) *cacheShard {
	return &c.shards[maphash.String(c.seed, key)%uint64(len(c.shards))]
}

// acquire returns the object cached under key, or makes one with make
// (outside any lock; a cost of its estimated size) and caches it. The
// caller must call release once it no longer uses the object.
func (c *objectCache) acquire(key string, cost int64, make func() (hsm.ObjectRef, error)) (hsm.ObjectRef, func(), error) {
	sh := c.shard(key)
	sh.mu.Lock()
	if e := sh.m[key]; e != nil {
		e.refs++
		sh.toFront(e)
		sh.mu.Unlock()
		c.hits.Add(1)
		return e.obj, c.releaser(sh, e), nil
	}
	sh.mu.Unlock()
	c.misses.Add(1)
	obj, err := make()
	if err != nil {
		return hsm.ObjectRef{}, nil, err
	}
	sh.mu.Lock()
	if e := sh.m[key]; e != nil {
		// Another request made it meanwhile: use theirs.
		e.refs++
		sh.toFront(e)
		sh.mu.Unlock()
		c.destroy(obj)
		return e.obj, c.releaser(sh, e), nil
	}
	e := &cacheEntry{key: key, obj: obj, cost: cost, refs: 1}
	sh.m[key] = e
	sh.bytes += cost
	sh.pushFront(e)
	var dead []hsm.ObjectRef
	for (len(sh.m) > sh.maxKeys || sh.bytes > sh.maxBytes) && sh.tail != e {
		v := sh.tail
		sh.remove(v)
		c.evictions.Add(1)
		if v.refs == 0 {
			dead = append(dead, v.obj)
		}
	}
	sh.mu.Unlock()
	for _, o := range dead {
		c.destroy(o)
	}
	return obj, c.releaser(sh, e), nil
}

func (c *objectCache) releaser(sh *cacheShard, e *cacheEntry) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			sh.mu.Lock()
			e.refs--
			dead := e.evicted && e.refs == 0
			sh.mu.Unlock()
			if dead {
				c.destroy(e.obj)
			}
		})
	}
}

// drop takes obj, cached under key, out of the cache (the token lost it,
// or its material is being destroyed); it is destroyed once unused.
func (c *objectCache) drop(key string, obj hsm.ObjectRef) {
	sh := c.shard(key)
	sh.mu.Lock()
	e := sh.m[key]
	if e == nil || !e.obj.Same(obj) {
		sh.mu.Unlock()
		return
	}
	sh.remove(e)
	dead := e.refs == 0
	sh.mu.Unlock()
	if dead {
		c.destroy(e.obj)
	}
}

// dropKey is drop for whatever is cached under key.
func (c *objectCache) dropKey(key string) {
	sh := c.shard(key)
	sh.mu.Lock()
	e := sh.m[key]
	sh.mu.Unlock()
	if e != nil {
		c.drop(key, e.obj)
	}
}

// dropWhere is drop for every object cached under a key match accepts.
func (c *objectCache) dropWhere(match func(key string) bool) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		var dead []hsm.ObjectRef
		for key, e := range sh.m {
			if match(key) {
				sh.remove(e)
				if e.refs == 0 {
					dead = append(dead, e.obj)
				}
			}
		}
		sh.mu.Unlock()
		for _, o := range dead {
			c.destroy(o)
		}
	}
}

// clear empties the cache.
func (c *objectCache) clear() {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		var dead []hsm.ObjectRef
		for sh.tail != nil {
			v := sh.tail
			sh.remove(v)
			if v.refs == 0 {
				dead = append(dead, v.obj)
			}
		}
		sh.mu.Unlock()
		for _, o := range dead {
			c.destroy(o)
		}
	}
}

// CacheStats says what a store's cache of unwrapped material holds and has
// done.
type CacheStats struct {
	Objects                 int
	Bytes                   int64 // estimated
	Hits, Misses, Evictions int64
}

func (c *objectCache) stats() CacheStats {
	st := CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load()}
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		st.Objects += len(sh.m)
		st.Bytes += sh.bytes
		sh.mu.Unlock()
	}
	return st
}

// remove unlinks e and marks it evicted; the caller holds sh.mu.
func (sh *cacheShard) remove(e *cacheEntry) {
	delete(sh.m, e.key)
	sh.bytes -= e.cost
	e.evicted = true
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		sh.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		sh.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (sh *cacheShard) pushFront(e *cacheEntry) {
	e.next = sh.head
	if sh.head != nil {
		sh.head.prev = e
	}
	sh.head = e
	if sh.tail == nil {
		sh.tail = e
	}
}

func (sh *cacheShard) toFront(e *cacheEntry) {
	if sh.head == e {
		return
	}
	// e is linked and not the head, so it has a prev.
	e.prev.next = e.next
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		sh.tail = e.prev
	}
	e.prev = nil
	sh.pushFront(e)
}
