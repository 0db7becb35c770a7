package kms

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTokenErrorTable: one case per row and column of tokenError's table.
// want "" means the error passes through as is (KMSInternalException at
// the wire edge, detail logged).
func TestTokenErrorTable(t *testing.T) {
	def := &store.Key{Account: "111122223333", Region: "us-east-1", ID: "1234abcd-12ab-34cd-56ef-1234567890ab"}
	custom := &store.Key{Account: "111122223333", Region: "us-east-1", ID: "1234abcd-12ab-34cd-56ef-1234567890ab", CustomKeyStoreID: "cks-1234567890abcdef0"}
	device := fmt.Errorf("%w: hsm: device removed: C_Encrypt (CKR_DEVICE_REMOVED)", keystore.ErrUnavailable)
	timeout := fmt.Errorf("hsm: waiting for a session: %w", context.DeadlineExceeded)
	bad := fmt.Errorf("%w: C_Decrypt", keystore.ErrInvalidCiphertext)
	unsupported := fmt.Errorf("%w: no CKM_ECDSA", keystore.ErrUnsupported)
	gone := fmt.Errorf("%w: id …", keystore.ErrMaterialNotFound)
	fault := errors.New("hsm: C_Encrypt: CKR_FUNCTION_FAILED")
	arn := arnOf(custom)
	cases := []struct {
		name      string
		err       error
		call      tokenCall
		want, msg string
	}{
		{"timeout, key", timeout, tokenCall{key: custom}, wire.DependencyTimeout, "The system timed out while trying to fulfill the request. The request can be retried."},
		{"timeout, default token alone", timeout, tokenCall{}, wire.DependencyTimeout, ""},
		{"unavailable, custom store key", device, tokenCall{key: custom}, wire.KMSInvalidState, arn + " is unavailable."},
		{"not connected, custom store key", keystore.ErrNotConnected, tokenCall{key: custom}, wire.KMSInvalidState, arn + " is unavailable."},
		{"unavailable, custom store alone", device, tokenCall{storeID: "cks-1234567890abcdef0"}, wire.CustomKeyStoreInvalidState,
			"The token of custom key store cks-1234567890abcdef0 is not available; the operation requires the store to be CONNECTED."},
		{"unavailable, default store key", device, tokenCall{key: def}, "", ""},
		{"unavailable, default store alone", device, tokenCall{}, "", ""},
		{"invalid ciphertext, key", bad, tokenCall{key: def}, wire.InvalidCiphertext, ""},
		{"invalid ciphertext, sealed password", bad, tokenCall{}, "", ""},
		{"unsupported, named", unsupported, tokenCall{key: def, what: "ECDSA_SHA_256"}, wire.UnsupportedOperation,
			"ECDSA_SHA_256 is not supported by this key store's token."},
		{"unsupported, nothing named", unsupported, tokenCall{key: def}, "", ""},
		{"material gone", gone, tokenCall{key: custom}, "", ""},
		{"fault", fault, tokenCall{key: custom, what: "KeySpec HMAC_512"}, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := tokenError(c.err, c.call)
			var we *wire.Error
			if c.want == "" {
				require.False(t, errors.As(got, &we), "got %v", got)
				assert.Same(t, c.err, got, "passed through for the log")
				return
			}
			require.True(t, errors.As(got, &we), "got %v", got)
			assert.Equal(t, c.want, we.Type)
			if c.msg != "" {
				assert.Equal(t, c.msg, we.Message)
			}
		})
	}
	t.Run("no error", func(t *testing.T) {
		assert.NoError(t, tokenError(nil, tokenCall{key: def}))
	})
}
