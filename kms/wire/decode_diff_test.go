package wire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// goType is the Go type an operation's handler decodes shape s into, as
// kms declares its inputs: built from the model, so that every input
// shape is covered.
func goType(s *shape, depth int) reflect.Type {
	switch s.Type {
	case "string":
		return reflect.TypeFor[string]()
	case "blob":
		return reflect.TypeFor[[]byte]()
	case "integer":
		return reflect.TypeFor[int]()
	case "long":
		return reflect.TypeFor[int64]()
	case "boolean":
		return reflect.TypeFor[bool]()
	case "timestamp":
		return reflect.TypeFor[*Time]()
	case "list":
		return reflect.SliceOf(goType(s.elem, depth+1))
	case "map":
		return reflect.MapOf(reflect.TypeFor[string](), goType(kmsModel.Shapes[s.Value], depth+1))
	case "structure":
		if depth > 8 {
			return reflect.TypeFor[*struct{}]()
		}
		var fields []reflect.StructField
		for i, m := range s.Members {
			fields = append(fields, reflect.StructField{Name: m.Name, Type: goType(s.children[i], depth+1)})
		}
		return reflect.PointerTo(reflect.StructOf(fields))
	}
	return reflect.TypeFor[any]()
}

// TestDecodeMatchesEncodingJSON: Decode fills an input exactly as
// encoding/json does, and refuses what it refuses with its words, for
// the generated bodies of every operation that pass Validate.
func TestDecodeMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, op := range Operations() {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			typ := goType(kmsModel.inputs[op], 0).Elem()
			checked := 0
			for _, body := range generated(op, uint64(len(op))+7, 300) {
				if Validate(op, body) != nil {
					continue
				}
				checked++
				got, want := reflect.New(typ), reflect.New(typ)
				err := Decode(body, got.Interface())
				var wantErr error
				if len(bytes.TrimSpace(body)) == 0 {
					// Nothing to decode.
				} else if err := json.Unmarshal(body, want.Interface()); err != nil {
					wantErr = serialization("Malformed request body: " + describeJSONError(err))
				}
				if wantErr != nil {
					if err == nil || err.Error() != wantErr.Error() {
						t.Fatalf("%q: got %v, want %v", body, err, wantErr)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%q: %v", body, err)
				}
				if !reflect.DeepEqual(got.Interface(), want.Interface()) {
					t.Fatalf("%q:\n got %+v\nwant %+v", body, got.Elem().Interface(), want.Elem().Interface())
				}
			}
			if checked == 0 {
				t.Fatal("no generated body passed Validate")
			}
		})
	}
}
