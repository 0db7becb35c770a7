package keystore

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeObjects stands in for the token: objects made and destroyed, and a
// check that nothing in use is destroyed.
type fakeObjects struct {
	mu        sync.Mutex
	live      map[string]bool
	inUse     map[string]int
	n         int
	made      atomic.Int64
	violation atomic.Value
}

func newFakeObjects() *fakeObjects {
	return &fakeObjects{live: map[string]bool{}, inUse: map[string]int{}}
}

func (f *fakeObjects) make() (hsm.ObjectRef, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.made.Add(1)
	ref := hsm.SecretKeyByLabel(fmt.Sprint(f.n))
	f.live[ref.Label] = true
	return ref, nil
}

func (f *fakeObjects) destroy(o hsm.ObjectRef) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inUse[o.Label] > 0 {
		f.violation.Store("destroyed object " + o.Label + " while in use")
	}
	if !f.live[o.Label] {
		f.violation.Store("destroyed object " + o.Label + " twice")
	}
	delete(f.live, o.Label)
}

func (f *fakeObjects) use(o hsm.ObjectRef, delta int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.live[o.Label] {
		f.violation.Store("used object " + o.Label + " after it was destroyed")
	}
	f.inUse[o.Label] += delta
}

func (f *fakeObjects) liveCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.live)
}

func TestObjectCacheBounds(t *testing.T) {
	t.Run("count", func(t *testing.T) {
		f := newFakeObjects()
		c := newObjectCache(8, 1<<30, f.destroy)
		for i := range 1000 {
			_, release, err := c.acquire(fmt.Sprint(i%100), 1, f.make)
			require.NoError(t, err)
			release()
			require.LessOrEqual(t, c.stats().Objects, 8)
			require.LessOrEqual(t, f.liveCount(), 8, "what leaves the cache is destroyed")
		}
		assert.Nil(t, f.violation.Load())
	})
	t.Run("memory", func(t *testing.T) {
		f := newFakeObjects()
		c := newObjectCache(1000, 16<<10, f.destroy)
		for i := range 200 {
			_, release, err := c.acquire(fmt.Sprint(i), 8<<10, f.make)
			require.NoError(t, err)
			release()
			require.LessOrEqual(t, c.stats().Bytes, int64(16<<10))
		}
		assert.LessOrEqual(t, f.liveCount(), 2)
	})
	t.Run("hot keys stay", func(t *testing.T) {
		f := newFakeObjects()
		c := newObjectCache(4, 1<<30, f.destroy)
		for i := range 400 {
			key := "hot"
			if i%2 == 1 {
				key = fmt.Sprint(i) // a stream of one-off keys
			}
			_, release, err := c.acquire(key, 1, f.make)
			require.NoError(t, err)
			release()
		}
		// With one shard per bound slot the hot key keeps its place
		// unless its shard fills with one-offs; it is made again at most
		// a few times, against 200 for the cold keys.
		st := c.stats()
		assert.Greater(t, st.Hits, int64(150), "the hot key is served from the cache")
	})
}

// TestObjectCacheNeverDestroysWhatIsInUse: many goroutines acquire, use
// and release objects of more keys than the cache holds; eviction takes
// objects out while others use them, and the fake token checks that no
// object is destroyed while in use or used once destroyed.
func TestObjectCacheNeverDestroysWhatIsInUse(t *testing.T) {
	f := newFakeObjects()
	c := newObjectCache(4, 1<<30, f.destroy)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for range 500 {
				key := fmt.Sprint(rand.IntN(50))
				obj, release, err := c.acquire(key, 1, f.make)
				if err != nil {
					t.Error(err)
					return
				}
				f.use(obj, 1)
				f.use(obj, -1)
				release()
				release() // a second release is a no-op
			}
		})
	}
	wg.Wait()
	require.Nil(t, f.violation.Load())
	require.LessOrEqual(t, c.stats().Objects, 4)
	require.Equal(t, c.stats().Objects, f.liveCount(), "everything evicted and released is destroyed")
	c.clear()
	require.Zero(t, f.liveCount())
}

func TestObjectCacheDrop(t *testing.T) {
	f := newFakeObjects()
	c := newObjectCache(8, 1<<30, f.destroy)
	obj, release, err := c.acquire("k", 1, f.make)
	require.NoError(t, err)
	c.drop("k", obj)
	require.Equal(t, 1, f.liveCount(), "dropped while in use: kept until released")
	other, release2, err := c.acquire("k", 1, f.make)
	require.NoError(t, err)
	require.False(t, other.Same(obj), "a dropped object is never handed out again")
	release()
	require.Equal(t, 1, f.liveCount())
	release2()
	c.dropKey("k")
	require.Zero(t, f.liveCount())
	require.Nil(t, f.violation.Load())
}
