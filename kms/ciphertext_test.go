package kms

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sampleBlob() []byte { return sampleBlobOf(false) }

func sampleBlobOf(multiRegion bool) []byte {
	var id [16]byte
	copy(id[:], "0123456789abcdef")
	header := appendBlobHeader(nil, "111122223333", "us-west-2", id, multiRegion, bytes.Repeat([]byte{7}, materialIDSize))
	return marshalBlob(header, bytes.Repeat([]byte{1}, 12), bytes.Repeat([]byte{2}, 40))
}

// A multi-Region key's blob is format 3, its key id the mrk id's bytes;
// a version 1 blob is read exactly as before.
func TestMultiRegionBlob(t *testing.T) {
	t.Parallel()
	b, err := parseBlob(sampleBlobOf(true))
	require.NoError(t, err)
	assert.Equal(t, byte(mrkBlobVersion), b.header[0])
	assert.True(t, b.multiRegion)
	assert.Equal(t, "mrk-30313233343536373839616263646566", formatKeyID(b.KeyID, b.multiRegion))
	old, err := parseBlob(sampleBlob())
	require.NoError(t, err)
	assert.False(t, old.multiRegion)
	assert.Equal(t, "30313233-3435-3637-3839-616263646566", formatKeyID(old.KeyID, old.multiRegion))
	id, mrk, ok := keyIDBytes("mrk-30313233343536373839616263646566")
	assert.True(t, ok && mrk)
	assert.Equal(t, b.KeyID, id)
	for _, bad := range []string{"mrk-", "mrk-3031", "mrk-zz313233343536373839616263646566", "not-a-key"} {
		_, _, ok := keyIDBytes(bad)
		assert.False(t, ok, bad)
	}
}

func TestBlobRoundTrip(t *testing.T) {
	t.Parallel()
	b, err := parseBlob(sampleBlob())
	require.NoError(t, err)
	assert.Equal(t, "111122223333", b.Account)
	assert.Equal(t, "us-west-2", b.Region)
	assert.Equal(t, "0123456789abcdef", string(b.KeyID[:]))
	assert.Equal(t, bytes.Repeat([]byte{1}, 12), b.IV)
	assert.Equal(t, bytes.Repeat([]byte{2}, 40), b.Sealed)
}

func TestBlobRejectsMalformed(t *testing.T) {
	t.Parallel()
	good := sampleBlob()
	for name, b := range map[string][]byte{
		"empty":         nil,
		"wrong version": append([]byte{2}, good[1:]...),
		"truncated":     good[:len(good)-30],
		"zero account":  append([]byte{1, 0}, good[2:]...),
		"long account":  append([]byte{1, 200}, good[2:]...),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseBlob(b)
			assert.ErrorIs(t, err, errBadBlob, name)
		})
	}
}

func TestEncryptionContextIsOrderIndependentAndUnambiguous(t *testing.T) {
	t.Parallel()
	h := []byte("hdr")
	a := additionalData(h, map[string]string{"a": "1", "b": "2"})
	b := additionalData(h, map[string]string{"b": "2", "a": "1"})
	assert.Equal(t, a, b)
	assert.NotEqual(t, additionalData(h, map[string]string{"ab": "c"}), additionalData(h, map[string]string{"a": "bc"}))
	assert.NotEqual(t, additionalData(h, nil), additionalData(h, map[string]string{"": ""}))
}

func FuzzParseBlob(f *testing.F) {
	f.Add(sampleBlob())
	f.Add(sampleBlobOf(true))
	f.Add([]byte{1, 12})
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := parseBlob(in)
		if err != nil {
			return
		}
		// A blob that parses re-marshals to exactly the input.
		out := marshalBlob(appendBlobHeader(nil, b.Account, b.Region, b.KeyID, b.multiRegion, b.MaterialID), b.IV, b.Sealed)
		if !bytes.Equal(out, in) {
			t.Fatalf("round trip changed the blob")
		}
		if !bytes.HasPrefix(in, b.header) || len(b.Sealed) < 16 {
			t.Fatalf("bad split")
		}
	})
}
