package audit

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var testTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// The trail's readers take files anyone with access to the directory may
// have written: each parser of them has a fuzz target.

func FuzzParseRecord(f *testing.F) {
	body, _ := Marshal(event("Encrypt", 1))
	line, _ := appendChain(nil, body, 7, [32]byte{1})
	f.Add(line)
	f.Add([]byte(`{"hsmkms":{"sequence":1,"previousHash":"` + hex.EncodeToString(genesis[:]) + `"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRecord(b)
		if err != nil {
			return
		}
		if r.Sequence == 0 {
			t.Fatal("a record numbered 0")
		}
		// What parses is what the writer writes: its chain re-encodes
		// to the same line.
		i := bytes.LastIndex(b, []byte(chainPrefix))
		again, _ := appendChain(nil, append(append([]byte(nil), b[:i]...), '}'), r.Sequence, r.Previous)
		if !bytes.Equal(again, b) {
			t.Fatalf("parsed %q, re-encoded %q", b, again)
		}
	})
}

func FuzzParseDigest(f *testing.F) {
	d, _ := encodeDigest(&Digest{TrailID: "t", DigestSequence: 1, DigestFile: digestName(1, testTime),
		LogFiles: []LogFile{{File: trailName(1, testTime), Records: 2}}})
	f.Add(d)
	f.Add([]byte(`{"trailId":"x","digestSequence":3}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseDigest(b)
		if err != nil {
			return
		}
		if d.DigestSequence == 0 || d.TrailID == "" {
			t.Fatal("a digest without sequence or trail")
		}
	})
}

// FuzzVerify runs Verify over a directory holding one trail file and one
// digest of arbitrary bytes: it must answer, never panic.
func FuzzVerify(f *testing.F) {
	body, _ := Marshal(event("Encrypt", 1))
	line, _ := appendChain(nil, body, 1, genesis)
	f.Add(append(line, '\n'), []byte(`{}`))
	f.Add([]byte("{\"x\":1}\n{"), []byte(`{"trailId":"t","digestSequence":1}`))
	f.Fuzz(func(t *testing.T, trail, digest []byte) {
		dir := t.TempDir()
		tn := trailName(1, testTime)
		dn := digestName(1, testTime)
		if err := os.WriteFile(filepath.Join(dir, tn), trail, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dn), digest, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dn+".sig"), []byte{0x30, 0}, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _ = Verify(dir, VerifyOptions{})
		_, _ = scanFile(dir, tn, nil)
	})
}
