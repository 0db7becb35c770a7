package kms

import (
	"encoding/hex"
	"strings"
	"testing"
)

// FuzzGrantToken: grant tokens arrive from clients in every request that
// takes GrantTokens. Checking one never panics, every token hsmkms issues
// passes, and a request's tokens are refused exactly when one is malformed.
func FuzzGrantToken(f *testing.F) {
	f.Add(newGrantToken(strings.Repeat("ab", grantIDBytes)), []byte("0123456789abcdef0123456789abcdef"))
	f.Add("", []byte{})
	f.Add("not-a-grant-token", []byte{1})
	f.Fuzz(func(t *testing.T, token string, id []byte) {
		if err := checkGrantTokens([]string{newGrantToken(strings.Repeat("00", grantIDBytes)), token}); (err == nil) != validGrantToken(token) {
			t.Fatalf("checkGrantTokens and validGrantToken disagree on %q", token)
		}
		if len(id) == grantIDBytes && !validGrantToken(newGrantToken(hex.EncodeToString(id))) {
			t.Fatalf("an issued token for %x does not validate", id)
		}
	})
}
