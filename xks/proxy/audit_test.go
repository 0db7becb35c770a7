package proxy_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/xks"
	"github.com/hsmkms/hsmkms/xks/proxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProxyAuditsEveryCall: each request (but /ping and the throttled) is
// given to the auditor before it is answered, with what it named and its
// outcome and nothing secret; a call the auditor cannot record is answered
// InternalException, so an Encrypt's ciphertext or a Decrypt's plaintext
// never leaves unrecorded.
func TestProxyAuditsEveryCall(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var calls []proxy.Call
	var fail error
	e := newEnv(t, withConfig(func(c *proxy.Config) {
		c.Audit = func(_ context.Context, call *proxy.Call) error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, *call)
			return fail
		}
	}))
	last := func() proxy.Call {
		mu.Lock()
		defer mu.Unlock()
		require.NotEmpty(t, calls)
		return calls[len(calls)-1]
	}
	c := e.main()
	ctx := context.Background()

	sealed, err := c.Encrypt(ctx, "foo", md("Encrypt"), []byte("secret plaintext"), nil)
	require.NoError(t, err)
	got := last()
	assert.Equal(t, "Encrypt", got.Operation)
	assert.Equal(t, "foo", got.KeyID)
	assert.Equal(t, "/example/prefix", got.Prefix)
	assert.Equal(t, md("Encrypt"), got.Metadata)
	assert.Equal(t, credA.AccessKeyID, got.AccessKeyID)
	assert.Equal(t, region, got.Region)
	assert.Equal(t, xks.EncryptionAlgorithm, got.EncryptionAlgorithm)
	assert.Empty(t, got.ErrorName)
	assert.NotEmpty(t, got.RequestID)
	assert.NotNil(t, got.TLS)

	_, err = c.GetKeyMetadata(ctx, "no-such-key", md("CreateKey"))
	requireProxyError(t, err, xks.KeyNotFoundException)
	got = last()
	assert.Equal(t, xks.KeyNotFoundException, got.ErrorName)
	assert.Equal(t, "GetKeyMetadata", got.Operation)

	_, err = e.client("/example/prefix", credOther).Health(ctx, xks.RequestMetadata{KmsOperation: "KmsHealthCheck", KmsRequestID: "r"})
	requireProxyError(t, err, xks.AuthenticationFailedException)
	got = last()
	assert.Equal(t, xks.AuthenticationFailedException, got.ErrorName)
	assert.Equal(t, credOther.AccessKeyID, got.AccessKeyID, "the key the request claimed")

	status, _, _ := e.raw(http.MethodGet, "/example/prefix/kms/xks/v1/health", "", nil, time.Now(), nil)
	assert.Equal(t, http.StatusMethodNotAllowed, status)
	assert.Equal(t, "MethodNotAllowed", last().ErrorName)

	mu.Lock()
	n := len(calls)
	fail = errors.New("disk gone")
	mu.Unlock()
	_, err = c.Decrypt(ctx, "foo", md("Decrypt"), sealed, nil)
	requireProxyError(t, err, xks.InternalException)
	mu.Lock()
	assert.Len(t, calls, n+1)
	mu.Unlock()
}
