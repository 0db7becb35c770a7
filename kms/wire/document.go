package wire

import (
	"bytes"
	"io"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// document is a JSON value read into a flat tree, in document order: a
// container's members follow it, up to its end. Strings and numbers keep
// their raw bytes, which alias the input; nothing is unquoted or decoded
// until a check needs it. Validate walks it by shape.
type document struct {
	nodes []node
	dec   *jsontext.Decoder
	in    bytes.Buffer
	body  []byte
	// path and scratch are the checker's buffers, kept with the tree.
	path, scratch []byte
}

type node struct {
	kind  byte   // '{', '[', '"', '0' (number), 't', 'f', 'n'
	raw   []byte // strings (quoted) and numbers: the value as sent
	name  []byte // members of objects: the name, unquoted
	end   int32  // index one past the node's last descendant
	count int32  // containers: how many members or elements
}

var documents = sync.Pool{New: func() any {
	d := new(document)
	d.dec = jsontext.NewDecoder(&d.in)
	return d
}}

// maxPooledNodes bounds the trees kept for reuse: one huge body should not
// pin its tree for ever.
const maxPooledNodes = 256

// maxPooledScratch bounds the unescaping buffer kept likewise.
const maxPooledScratch = 8 << 10

func getDocument() *document { return documents.Get().(*document) }

func putDocument(d *document) {
	if cap(d.nodes) > maxPooledNodes || cap(d.scratch) > maxPooledScratch {
		return
	}
	clear(d.nodes) // drop references to the body
	d.nodes, d.body = d.nodes[:0], nil
	d.in.Reset()
	documents.Put(d)
}

// parse reads body, which must hold exactly one JSON value, into d. It
// accepts and refuses what encoding/json's Unmarshal into an interface
// value does: duplicate names (the last wins), invalid UTF-8, but not a
// number beyond float64's range.
func (d *document) parse(body []byte) error {
	d.body = body
	d.in = *bytes.NewBuffer(body) // the decoder reads a bytes.Buffer in place
	d.dec.Reset(&d.in, jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	if err := d.value(nil); err != nil {
		return err
	}
	// Nothing but white space may follow the value.
	if _, err := d.dec.ReadToken(); err != io.EOF {
		return errTrailing
	}
	return nil
}

type parseError string

func (e parseError) Error() string { return string(e) }

const (
	errTrailing = parseError("wire: data after the JSON value")
	errNumber   = parseError("wire: number out of range")
)

// value reads the next value, a member of an object named name if name is
// not nil.
func (d *document) value(name []byte) error {
	i := len(d.nodes)
	switch k := d.dec.PeekKind(); k {
	case '{', '[':
		if _, err := d.dec.ReadToken(); err != nil {
			return err
		}
		d.nodes = append(d.nodes, node{kind: byte(k), name: name})
		closing := jsontext.Kind(']')
		if k == '{' {
			closing = '}'
		}
		count := int32(0)
		for d.dec.PeekKind() != closing {
			var member []byte
			if k == '{' {
				raw, err := d.raw()
				if err != nil {
					return err
				}
				member = unquoteName(raw)
			}
			if err := d.value(member); err != nil {
				return err
			}
			count++
		}
		if _, err := d.dec.ReadToken(); err != nil {
			return err
		}
		d.nodes[i].count = count
	default:
		raw, err := d.raw()
		if err != nil {
			return err
		}
		if k == '0' {
			// encoding/json refuses a number a float64 cannot hold.
			if _, err := strconv.ParseFloat(string(raw), 64); err != nil {
				return errNumber
			}
		}
		d.nodes = append(d.nodes, node{kind: byte(k), raw: raw, name: name})
	}
	d.nodes[i].end = int32(len(d.nodes))
	return nil
}

// raw reads the next value or object name and returns its bytes within
// the body.
func (d *document) raw() ([]byte, error) {
	v, err := d.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	end := int(d.dec.InputOffset())
	return d.body[end-len(v) : end : end], nil
}

// member returns the index of object i's last member named name (the one
// encoding/json would keep), or -1.
func (d *document) member(i int, name string) int {
	found := -1
	for v := i + 1; v < int(d.nodes[i].end); v = int(d.nodes[v].end) {
		if string(d.nodes[v].name) == name {
			found = v
		}
	}
	return found
}

// entries appends to out the members of object i as a map holds them:
// one per name, the last of each.
func (d *document) entries(i int, out []int) []int {
	var seen map[string]int // position in out, for long objects
	for v := i + 1; v < int(d.nodes[i].end); v = int(d.nodes[v].end) {
		name := d.nodes[v].name
		at := -1
		if seen != nil {
			if p, ok := seen[string(name)]; ok {
				at = p
			}
		} else {
			for p, o := range out {
				if bytes.Equal(d.nodes[o].name, name) {
					at = p
					break
				}
			}
		}
		if at >= 0 {
			out[at] = v
			continue
		}
		out = append(out, v)
		if seen == nil && len(out) > 16 {
			seen = make(map[string]int, d.nodes[i].count)
			for p, o := range out {
				seen[string(d.nodes[o].name)] = p
			}
		} else if seen != nil {
			seen[string(name)] = len(out) - 1
		}
	}
	return out
}

// verbatim returns the content of the quoted string raw when it needs no
// unescaping and is valid UTF-8.
func verbatim(raw []byte) ([]byte, bool) {
	s := raw[1 : len(raw)-1]
	if bytes.IndexByte(s, '\\') >= 0 || !utf8.Valid(s) {
		return nil, false
	}
	return s, true
}

// unquote appends the quoted string raw, unescaped, to dst, with each
// invalid UTF-8 byte as U+FFFD, as encoding/json reads it.
func unquote(dst, raw []byte) []byte {
	out, _ := jsontext.AppendUnquote(dst, raw) // parse checked the syntax; invalid UTF-8 is replaced
	return out
}

// unquoteName is an object member's name unquoted, in the body itself
// when it needs no unescaping.
func unquoteName(raw []byte) []byte {
	if s, ok := verbatim(raw); ok {
		return s
	}
	return unquote(nil, raw)
}
