package main

import (
	"context"
	"runtime/metrics"
	"time"

	"github.com/hsmkms/hsmkms/kms/store"
)

// maxHeaderBytes bounds a request's headers, which net/http reads before
// any handler (and so before the in-flight bound) runs: its default, 1 MiB
// per connection, is far beyond a SigV4 request's few hundred bytes.
const maxHeaderBytes = 64 << 10

// memoryLimit is the Go runtime's soft memory limit for a server that
// serves maxInFlight requests of at most maxBody bytes at once and caches
// the metadata of up to cachedKeys keys: a request's body and the copies
// its validation makes (about twice the body), cachedKeysBytes for each
// key cached past the default number, plus 64 MiB for everything else
// (the default cache included). serve raises GOGC for CPU's sake; without
// a limit the heap of a burst of large requests grew to 1+GOGC/100 times
// what was live, and with a limit below the live heap of a larger key
// cache the garbage collector ran without rest.
func memoryLimit(maxInFlight int, maxBody int64, cachedKeys int) int64 {
	extra := int64(max(0, cachedKeys-store.DefaultKeyCacheSize)) * cachedKeyBytes
	return 64<<20 + int64(maxInFlight)*2*maxBody + extra
}

// cachedKeyBytes is what a cached key's metadata takes on the heap,
// measured: about 1.4 KB live (store.KeyCache), doubled for the garbage
// collector's headroom.
const cachedKeyBytes = 3 << 10

// releaseAfterBursts gives the heap a burst leaves behind back to the
// operating system once the burst is over: every interval, if the server
// allocated almost nothing since the last look (it is quiet), the heap
// holds more than keep bytes, and more than keep bytes were allocated
// since the last release (so a large live heap is not collected again and
// again), it calls release (debug.FreeOSMemory: collect, and return the
// free pages at once). Left alone, the runtime collects an idle heap only
// every two minutes. It runs until ctx ends.
func releaseAfterBursts(ctx context.Context, interval time.Duration, keep uint64, release func()) {
	samples := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	const quiet = 1 << 20 // bytes allocated in an interval by an idle server
	metrics.Read(samples)
	lastAllocs := samples[0].Value.Uint64()
	released := lastAllocs
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		metrics.Read(samples)
		allocs := samples[0].Value.Uint64()
		held := samples[1].Value.Uint64() + samples[2].Value.Uint64() + samples[3].Value.Uint64()
		if allocs-lastAllocs < quiet && held > keep && allocs-released > keep {
			release()
			released = allocs
		}
		lastAllocs = allocs
	}
}
