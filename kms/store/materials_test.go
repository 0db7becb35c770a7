package store

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzMaterials: whatever the fast decoder of the materials column
// accepts, encoding/json reads the same way.
func FuzzMaterials(f *testing.F) {
	now := time.Unix(1700000000, 5).UTC()
	for _, ms := range [][]Material{
		nil,
		{{ID: "aa", TokenID: []byte{1, 2, 3}, CreationDate: now}},
		{{ID: "aa", TokenID: []byte{1}, CreationDate: now}, {ID: "bb", TokenID: nil, RotationType: "ON_DEMAND", Wrapped: []byte{9, 9}, DomainKey: "d1"}},
	} {
		vals, err := keyValues(&Key{Materials: ms})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(vals[len(vals)-1].(string))
	}
	f.Add(`[{"id":"a","token_id":"","created":-0}]`)
	f.Add(`[{"ID":"a","token_id":null,"created":1}]`)
	f.Fuzz(func(t *testing.T, js string) {
		fast, ok := decodeMaterialsFast(js)
		if !ok {
			return
		}
		var slow []material
		if err := json.Unmarshal([]byte(js), &slow); err != nil {
			t.Fatalf("fast decoded %q, encoding/json refuses it: %v", js, err)
		}
		if len(fast) == 0 && len(slow) == 0 {
			return
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", js, fast, slow)
		}
	})
}

// TestMaterialsRoundTrip: what keyValues writes, the fast decoder reads.
func TestMaterialsRoundTrip(t *testing.T) {
	ms := []Material{{ID: "aa", TokenID: []byte{1, 2, 3}, CreationDate: time.Unix(1, 2).UTC()},
		{ID: "bb", TokenID: []byte{4}, CreationDate: time.Unix(3, 4).UTC(), RotationType: "AUTOMATIC", Wrapped: []byte{5, 6}, DomainKey: "dk"}}
	vals, err := keyValues(&Key{Materials: ms})
	if err != nil {
		t.Fatal(err)
	}
	js := vals[slices.Index(strings.Fields(strings.ReplaceAll(keyColumns, ",", " ")), "materials")].(string)
	got, ok := decodeMaterialsFast(js)
	if !ok {
		t.Fatalf("the fast decoder does not read %s", js)
	}
	back := make([]Material, len(got))
	for i, m := range got {
		back[i] = m.Material()
	}
	if !reflect.DeepEqual(ms, back) {
		t.Fatalf("round trip: %+v, want %+v", back, ms)
	}
}
