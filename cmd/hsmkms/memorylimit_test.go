package main

import (
	"testing"

	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/assert"
)

// TestMemoryLimitCountsCachedKeys: a key cache larger than the default
// raises the soft memory limit by what its keys take, so the collector
// does not run without rest to keep a live heap under a limit it cannot
// reach.
func TestMemoryLimitCountsCachedKeys(t *testing.T) {
	base := memoryLimit(16, kms.DefaultMaxBody, store.DefaultKeyCacheSize)
	t.Run("the default cache is in the base", func(t *testing.T) {
		assert.Equal(t, int64(64<<20+16*2*kms.DefaultMaxBody), base)
		assert.Equal(t, base, memoryLimit(16, kms.DefaultMaxBody, 100), "a smaller cache does not lower it")
	})
	t.Run("a larger cache raises it", func(t *testing.T) {
		got := memoryLimit(16, kms.DefaultMaxBody, 131072)
		assert.Equal(t, base+int64(131072-store.DefaultKeyCacheSize)*cachedKeyBytes, got)
	})
}
