// Package uuid makes and writes the random (version 4) UUIDs that AWS uses
// for key ids, request ids and CloudTrail event ids: one definition for
// the three, so they cannot drift apart.
package uuid

import (
	"crypto/rand"
	"encoding/hex"
)

// New returns a random version 4 UUID, as bytes and in its canonical form.
func New() (string, [16]byte) {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand panics rather than return short)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return Format(b), b
}

// String is New's canonical form alone.
func String() string {
	s, _ := New()
	return s
}

// Format writes b as 8-4-4-4-12 lower-case hex digits.
func Format(b [16]byte) string {
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}
