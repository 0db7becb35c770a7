package keystore

import (
	"bytes"
	"testing"
)

// FuzzEnvelope: wrapped material read back from the database is parsed as
// untrusted bytes. What parses is exactly one envelope of the spec asked
// for, and writes back to the same bytes.
func FuzzEnvelope(f *testing.F) {
	for _, e := range []envelope{
		{spec: AES256, key: bytes.Repeat([]byte{1}, 40)},
		{spec: ECP256, key: bytes.Repeat([]byte{2}, 80), publicKey: bytes.Repeat([]byte{3}, 91)},
		{spec: HMAC512, key: bytes.Repeat([]byte{4}, 72)},
	} {
		b, err := e.marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(e.spec))
		f.Add(append(b, 0), uint8(e.spec))
		f.Add(b[:len(b)-1], uint8(e.spec))
	}
	f.Add([]byte{1, 1, 0, 0, 0, 0}, uint8(AES256))
	f.Fuzz(func(t *testing.T, b []byte, want uint8) {
		e, err := parseEnvelope(b, Spec(want))
		if err != nil {
			return
		}
		if e.spec != Spec(want) || len(e.key) == 0 || (len(e.publicKey) > 0) != e.spec.Asymmetric() {
			t.Fatalf("parsed an envelope that does not hold %v material: %+v", Spec(want), e)
		}
		again, err := e.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("%x parsed, but writes back as %x", b, again)
		}
	})
}
