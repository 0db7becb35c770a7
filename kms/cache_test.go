package kms_test

import (
	"testing"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCachedKeysBound: the node keeps no more keys' metadata than
// limits.cached_keys says, and a key it dropped is read again from the
// database, whole.
func TestCachedKeysBound(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.cachedKeys = 64 })
	c := e.admin()
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = e.createKey(c)
	}
	for _, id := range ids {
		_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
		require.NoError(t, err)
	}
	n := e.svc.CachedKeyCount()
	assert.Positive(t, n)
	assert.LessOrEqual(t, n, 64)
	for _, id := range ids {
		assert.Equal(t, id, *describe(t, c, id).KeyId)
	}
}
