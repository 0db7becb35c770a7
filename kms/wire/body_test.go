package wire

import (
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadBody(t *testing.T) {
	const max = 1 << 20
	body := strings.Repeat("x", max)
	cases := []struct {
		name    string
		body    string
		length  int64 // -1: not declared (chunked)
		want    string
		tooBig  bool
		invalid bool
	}{
		{"declared", body, max, body, false, false},
		{"empty", "", 0, "", false, false},
		{"undeclared", body, -1, body, false, false},
		{"declared too large", body + "x", max + 1, "", true, false},
		{"undeclared too large", body + "x", -1, "", true, false},
		{"shorter than declared", "abc", 10, "", false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", io.NopCloser(strings.NewReader(tc.body)))
			r.ContentLength = tc.length
			got, err := readBody(r, max)
			var tooBig *http.MaxBytesError
			switch {
			case tc.tooBig:
				require.True(t, errors.As(err, &tooBig), "%v", err)
			case tc.invalid:
				require.Error(t, err)
			default:
				require.NoError(t, err)
				assert.Equal(t, tc.want, string(got))
			}
		})
	}
}

// TestReadBodyAllocatesOnce pins the fix: a 1 MiB body costs one 1 MiB
// buffer, not the 3 MiB bytes.Buffer took.
func TestReadBodyAllocatesOnce(t *testing.T) {
	const size = 1 << 20
	body := strings.Repeat("x", size)
	allocated := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
			readBody(r, size)
		}
	}).AllocedBytesPerOp()
	assert.Less(t, allocated, int64(size+size/8), "bytes allocated to read a 1 MiB body")
}

func TestBase64Len(t *testing.T) {
	long := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("abc", 5000)))
	cases := map[string]string{
		"empty":                  "",
		"padded":                 "aGk=",
		"long":                   long,
		"padding mid-way":        "aGk=aGk=",
		"padding at a block end": long[:4092] + "aGk=" + long[4096:],
		"line breaks":            long[:100] + "\r\n" + long[100:],
		"bad character":          long[:5000] + "*" + long[5001:],
		"truncated":              long[:len(long)-1],
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			requireSameAsDecoder(t, s)
		})
	}
	t.Run("padding or junk around a block boundary", func(t *testing.T) {
		for i := 4080; i < 4112; i++ {
			for _, ins := range []string{"=", "==", "*", "A"} {
				requireSameAsDecoder(t, long[:i]+ins+long[i:])
				requireSameAsDecoder(t, long[:i]+ins)
			}
		}
	})
}

func requireSameAsDecoder(t *testing.T, s string) {
	t.Helper()
	want, wantErr := base64.StdEncoding.DecodeString(s)
	n, err := base64Len([]byte(s))
	if wantErr != nil {
		require.Error(t, err, "%q decodes with encoding/base64's error %v", s, wantErr)
		return
	}
	require.NoError(t, err)
	require.Equal(t, len(want), n)
}

// FuzzBase64Len holds the block-wise length to encoding/base64's verdict,
// which encoding/json applies when the operation decodes the blob.
func FuzzBase64Len(f *testing.F) {
	f.Add("aGk=")
	f.Add("aGk=aGk=")
	f.Add(strings.Repeat("QUJD", 1024) + "aGk=")
	f.Add(strings.Repeat("QUJD", 1023) + "aGk=" + "QUJD")
	f.Fuzz(func(t *testing.T, s string) {
		requireSameAsDecoder(t, s)
	})
}
