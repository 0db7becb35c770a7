package kms

import (
	"bytes"
	"testing"
)

func sampleXKSBlob() []byte {
	var id [16]byte
	id[0] = 9
	header := appendHeader(nil, xksBlobVersion, "111122223333", "us-west-2", id, bytes.Repeat([]byte{7}, materialIDSize))
	return marshalXKSBlob(header, &xksSealed{meta: []byte{1}, iv: bytes.Repeat([]byte{3}, 12), tag: bytes.Repeat([]byte{4}, 16),
		ct: bytes.Repeat([]byte{5}, 12+5+16)})
}

func TestParseXKSBlob(t *testing.T) {
	b := sampleXKSBlob()
	bl, err := parseXKSBlob(b)
	if err != nil {
		t.Fatal(err)
	}
	if bl.Account != "111122223333" || bl.Region != "us-west-2" || !bytes.Equal(bl.xks.meta, []byte{1}) || len(bl.xks.ct) != 33 {
		t.Fatalf("parsed %+v", bl)
	}
	if _, err := parseBlob(b); err == nil {
		t.Fatal("a format-2 blob parsed as format 1")
	}
	for n := range len(b) - 33 + 28 {
		if _, err := parseXKSBlob(b[:n]); err == nil {
			t.Fatalf("accepted a blob cut to %d bytes", n)
		}
	}
}

// FuzzParseXKSBlob: the format-2 parser never panics, and what it accepts
// marshals back to the same bytes.
func FuzzParseXKSBlob(f *testing.F) {
	f.Add(sampleXKSBlob())
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := parseXKSBlob(in)
		if err != nil {
			return
		}
		out := marshalXKSBlob(b.header, b.xks)
		if !bytes.Equal(in, out) {
			t.Fatalf("round trip changed the blob")
		}
		if len(b.xks.meta) > 20 || (len(b.xks.iv) != 12 && len(b.xks.iv) != 16) || len(b.xks.tag) != 16 {
			t.Fatalf("accepted fields out of range")
		}
	})
}
