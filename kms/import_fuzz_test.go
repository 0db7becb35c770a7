package kms

import (
	"bytes"
	"testing"
	"time"
)

// FuzzImportToken: the import token parser, which reads bytes any client
// sends, never panics and accepts only what has the token's frame; the
// claims decoder gives back exactly what it decoded.
func FuzzImportToken(f *testing.F) {
	c := importClaims{Account: "111122223333", Region: "us-east-1", KeyID: "1234abcd-12ab-34cd-56ef-1234567890ab",
		ImportKey: "00112233445566778899aabbccddeeff:1800000000", Algorithm: "RSAES_OAEP_SHA_256", WrappingKeySpec: "RSA_2048",
		ValidTo: time.Unix(1800000000, 0).UTC()}
	f.Add(append(append([]byte(nil), importTokenMagic...), make([]byte, 40)...))
	f.Add(c.marshal())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if sealed, err := parseImportToken(b); err == nil {
			if !bytes.HasPrefix(b, importTokenMagic) || len(sealed) < 28 {
				t.Fatalf("accepted a token without its frame: %x", b)
			}
		}
		got, err := parseImportClaims(b)
		if err != nil {
			return
		}
		if again, err := parseImportClaims(got.marshal()); err != nil || again != got {
			t.Fatalf("claims do not round-trip: %+v, %+v, %v", got, again, err)
		}
	})
}

func TestImportClaimsRoundTrip(t *testing.T) {
	t.Parallel()
	c := importClaims{Account: "a", Region: "r", KeyID: "k", ImportKey: "i:1", Algorithm: "RSAES_OAEP_SHA_1", WrappingKeySpec: "RSA_4096",
		ValidTo: time.Unix(1800000000, 0).UTC()}
	got, err := parseImportClaims(c.marshal())
	if err != nil || got != c {
		t.Fatalf("got %+v, %v", got, err)
	}
	if _, err := parseImportClaims(append(c.marshal(), 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
}
