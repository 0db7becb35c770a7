package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// object is a decoded JSON object that remembers key order. encoding/json
// silently keeps the last of duplicate keys, which would let a policy say
// two things at once ("Effect":"Deny","Effect":"Allow") and have reviewers
// read the first; AWS rejects such documents, so we decode by token.
type object struct {
	keys []string
	vals map[string]any
}

// maxDepth bounds nesting so hostile documents cannot exhaust the stack;
// a valid policy is at most five levels deep.
const maxDepth = 32

var errDuplicateKey = errors.New("duplicate key")

// decodeStrict decodes one JSON value into nil, bool, json.Number, string,
// []any or *object, rejecting duplicate object keys and trailing data.
func decodeStrict(doc []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("too deeply nested")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := &object{vals: map[string]any{}}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, errors.New("object key is not a string")
				}
				if _, dup := obj.vals[k]; dup {
					return nil, errDuplicateKey
				}
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				obj.keys = append(obj.keys, k)
				obj.vals[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return obj, nil
		case '[':
			list := []any{}
			for dec.More() {
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return list, nil
		default:
			return nil, errors.New("unexpected delimiter")
		}
	default:
		return tok, nil
	}
}
