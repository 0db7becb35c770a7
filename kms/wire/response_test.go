package wire

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEncodeResponseIsMarshal holds the pooled response encoder to
// json.Marshal's bytes, on the shapes responses have, and on one buffer
// reused from a larger response to a smaller one.
func TestEncodeResponseIsMarshal(t *testing.T) {
	t.Parallel()
	type entry struct {
		AliasName    string
		TargetKeyId  string `json:",omitempty"`
		CreationDate *Time  `json:",omitempty"`
	}
	now := Time(time.UnixMilli(1_700_000_000_123).UTC())
	cases := map[string]any{
		"encrypt": &struct {
			CiphertextBlob      []byte
			EncryptionAlgorithm string
			KeyId               string
		}{[]byte(strings.Repeat("\x00\xff<>&", 300)), "SYMMETRIC_DEFAULT", "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"},
		"escapes": map[string]string{"<script>": "a&b", "\u2028": "\u2029", "bad": "\xff\xfe", "z": "\"\\\n\t"},
		"list": &struct {
			Aliases    []entry
			NextMarker string `json:",omitempty"`
			Truncated  bool
		}{Aliases: []entry{{AliasName: "alias/a", CreationDate: &now}, {AliasName: "alias/b", TargetKeyId: "k"}}, Truncated: true},
		"empty":   &struct{}{},
		"nil":     nil,
		"numbers": map[string]any{"i": 42, "f": 1.5, "big": int64(1) << 60, "time": now},
		"large":   map[string]string{"Policy": strings.Repeat("x", maxPooledResponse+1)},
	}
	// In this order, each on the buffer the one before used: "encrypt
	// again" reuses one that held a longer response.
	for _, c := range []struct{ name, value string }{{"large", "large"}, {"encrypt", "encrypt"}, {"escapes", "escapes"},
		{"list", "list"}, {"empty", "empty"}, {"nil", "nil"}, {"numbers", "numbers"}, {"encrypt again", "encrypt"}} {
		t.Run(c.name, func(t *testing.T) {
			want, err := json.Marshal(cases[c.value])
			require.NoError(t, err)
			got, err := encodeResponse(cases[c.value])
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got.body))
			got.release()
		})
	}
	t.Run("error", func(t *testing.T) {
		_, err := encodeResponse(map[string]any{"f": func() {}})
		assert.Error(t, err)
	})
}
