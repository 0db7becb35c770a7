package uuid

import (
	"regexp"
	"testing"
)

var canonical = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewIsAVersion4UUID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		s, b := New()
		if !canonical.MatchString(s) {
			t.Fatalf("%q is not a canonical version 4 UUID", s)
		}
		if Format(b) != s {
			t.Fatalf("Format(%x) = %q, New said %q", b, Format(b), s)
		}
		if seen[s] {
			t.Fatalf("%q twice", s)
		}
		seen[s] = true
	}
}
