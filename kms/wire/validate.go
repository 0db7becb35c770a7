package wire

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Validate checks a request body against op's input shape in the KMS model,
// the way AWS does before an operation runs: malformed JSON, a value of the
// wrong JSON type, or a null inside a list or map (the model's collections
// are all dense) is a SerializationException; missing required
// members and values outside their length, range, enum or pattern are one
// ValidationException listing every violation in AWS's words. Members the
// model does not know are ignored, as AWS ignores them. An operation not in
// the model is not validated.
//
// The body is read once into a flat tree (document) whose strings alias
// it, and the tree is walked by shape: no value is copied or decoded
// unless a constraint needs it, and the tree's memory is reused from
// request to request. JSON is read as encoding/json reads it into an
// interface value: duplicate names (the last wins), invalid UTF-8 (as
// U+FFFD) and numbers beyond float64 (malformed) alike.
func Validate(op string, body []byte) *Error {
	in, ok := kmsModel.inputs[op]
	if !ok {
		return nil
	}
	d := getDocument()
	defer putDocument(d)
	if len(bytes.TrimSpace(body)) == 0 {
		d.nodes = append(d.nodes, node{kind: '{', end: 1})
	} else if err := d.parse(body); err != nil {
		return serialization("Malformed request body: not a single JSON document.")
	}
	if d.nodes[0].kind != '{' {
		return serialization("Start of structure or map found where not expected.")
	}
	c := checker{d: d, path: d.path[:0], scratch: d.scratch[:0]}
	c.walk(in, 0)
	d.path, d.scratch = c.path[:0], c.scratch[:0] // kept for the next request
	if c.serial != nil {
		return c.serial
	}
	switch len(c.errs) {
	case 0:
		return nil
	case 1:
		return Errorf(Validation, "1 validation error detected: %s", c.errs[0])
	}
	return Errorf(Validation, "%d validation errors detected: %s", len(c.errs), strings.Join(c.errs, "; "))
}

func serialization(msg string) *Error { return &Error{Type: SerializationException, Message: msg} }

type checker struct {
	d      *document
	errs   []string
	serial *Error
	// path is where the value being checked is, as AWS names it in
	// messages ("tags.1.member.tagKey"): built as the walk descends, and
	// turned into a string only for a message.
	path []byte
	// scratch holds an unquoted string that needed unescaping; reused.
	scratch []byte
}

// fail records a constraint violation of the value at c.path; value is
// how the message shows it ("" for values AWS does not echo).
func (c *checker) fail(value, constraint string) {
	if value == "" {
		c.errs = append(c.errs, fmt.Sprintf("Value at '%s' failed to satisfy constraint: Member must %s", c.path, constraint))
		return
	}
	c.errs = append(c.errs, fmt.Sprintf("Value %s at '%s' failed to satisfy constraint: Member must %s", value, c.path, constraint))
}

// wrongType records the first value of the wrong JSON type; want is the
// message, whose %s is the path.
func (c *checker) wrongType(want string) {
	if c.serial == nil {
		c.serial = serialization(fmt.Sprintf(want, c.path))
	}
}

// push descends into seg, a member of the value at c.path; pop(mark)
// comes back.
func (c *checker) push(seg ...string) (mark int) {
	mark = len(c.path)
	for _, s := range seg {
		if len(c.path) > 0 {
			c.path = append(c.path, '.')
		}
		c.path = append(c.path, s...)
	}
	return mark
}

func (c *checker) pop(mark int) { c.path = c.path[:mark] }

// walk checks node i, the whole request, against s.
func (c *checker) walk(s *shape, i int) {
	c.check(s, i, false)
}

// text is the string node i unquoted: the body's own bytes when it needs
// no unescaping, else c.scratch's, valid until the next call.
func (c *checker) text(i int) []byte {
	raw := c.d.nodes[i].raw
	if s, ok := verbatim(raw); ok {
		return s
	}
	c.scratch = unquote(c.scratch[:0], raw)
	return c.scratch
}

// check checks node i, the value at c.path, against s. A value AWS does
// not echo in messages (blobs, containers, sensitive data) is shown as "".
func (c *checker) check(s *shape, i int, sensitive bool) {
	if c.serial != nil {
		return
	}
	sensitive = sensitive || s.Sensitive
	n := &c.d.nodes[i]
	switch s.Type {
	case "structure":
		if n.kind != '{' {
			c.wrongType("Expected a JSON object at '%s'.")
			return
		}
		for m := range s.Members {
			mb := &s.Members[m]
			mark := c.push(mb.path)
			v := c.d.member(i, mb.Name)
			if v < 0 || c.d.nodes[v].kind == 'n' {
				if s.required[mb.Name] {
					c.errs = append(c.errs, fmt.Sprintf("Value null at '%s' failed to satisfy constraint: Member must not be null", c.path))
				}
			} else {
				c.check(s.children[m], v, sensitive || mb.Sensitive)
			}
			c.pop(mark)
		}
	case "string":
		if n.kind != '"' {
			c.wrongType("Expected a JSON string at '%s'.")
			return
		}
		c.str(s, c.text(i), sensitive)
	case "blob":
		if n.kind != '"' {
			c.wrongType("Expected a base64-encoded JSON string at '%s'.")
			return
		}
		size, err := base64Len(c.text(i))
		if err != nil {
			c.wrongType("Invalid base64 data at '%s'.")
			return
		}
		c.length(s, int64(size), nil)
	case "integer", "long":
		if n.kind != '0' {
			c.wrongType("Expected a JSON number at '%s'.")
			return
		}
		f, _ := strconv.ParseFloat(string(n.raw), 64) // parse checked it
		if f != math.Trunc(f) || math.Abs(f) > 1<<53 || (s.Type == "integer" && (f < -1<<31 || f > 1<<31-1)) {
			c.wrongType("Expected an integer at '%s'.")
			return
		}
		v := int64(f)
		shown := func() string { return "'" + strconv.FormatInt(v, 10) + "'" }
		if s.Min != nil && v < *s.Min {
			c.fail(shown(), fmt.Sprintf("have value greater than or equal to %d", *s.Min))
		}
		if s.Max != nil && v > *s.Max {
			c.fail(shown(), fmt.Sprintf("have value less than or equal to %d", *s.Max))
		}
	case "boolean":
		if n.kind != 't' && n.kind != 'f' {
			c.wrongType("Expected a JSON boolean at '%s'.")
		}
	case "timestamp":
		if n.kind != '0' {
			c.wrongType("Expected a timestamp in epoch seconds at '%s'.")
		}
	case "list":
		if n.kind != '[' {
			c.wrongType("Expected a JSON array at '%s'.")
			return
		}
		c.length(s, int64(n.count), nil)
		item := 0
		for v := i + 1; v < int(n.end) && c.serial == nil; v = int(c.d.nodes[v].end) {
			item++
			mark := c.push(strconv.Itoa(item), "member")
			if c.d.nodes[v].kind == 'n' {
				// Every list of the KMS model is dense: a null element is
				// malformed JSON for the shape, not a missing value.
				c.wrongType("Unexpected null at '%s'.")
			} else {
				c.check(s.elem, v, sensitive)
			}
			c.pop(mark)
		}
	case "map":
		if n.kind != '{' {
			c.wrongType("Expected a JSON object at '%s'.")
			return
		}
		var buf [8]int
		entries := c.d.entries(i, buf[:0])
		c.length(s, int64(len(entries)), nil)
		key, val := kmsModel.Shapes[s.Key], kmsModel.Shapes[s.Value]
		for _, v := range entries {
			name := c.d.nodes[v].name
			mark := c.push("key")
			c.str(key, name, sensitive)
			c.pop(mark)
			mark = c.push(string(name))
			if c.d.nodes[v].kind == 'n' {
				// Dense, as the lists: a null value would otherwise reach
				// the operation as "" (an encryption context that
				// differs from the one the client meant).
				c.wrongType("Unexpected null at '%s'.")
			} else {
				c.check(val, v, sensitive)
			}
			c.pop(mark)
			if c.serial != nil {
				return
			}
		}
	}
}

// str checks a string value (or a map's key), at c.path, against the
// string shape s.
func (c *checker) str(s *shape, str []byte, sensitive bool) {
	if c.serial != nil {
		return
	}
	sensitive = sensitive || s.Sensitive
	shown := func() string {
		if sensitive {
			return ""
		}
		return "'" + string(str) + "'"
	}
	c.length(s, int64(utf8.RuneCount(str)), shown)
	if s.enum != nil && !s.enum[string(str)] {
		c.fail(shown(), "satisfy enum value set: "+s.enumText)
	}
	if s.re != nil && !s.re.Match(str) {
		c.fail(shown(), "satisfy regular expression pattern: "+s.Pattern)
	}
}

// length checks a length n against s's bounds; shown, if not nil, is how
// the message shows the value.
func (c *checker) length(s *shape, n int64, shown func() string) {
	value := func() string {
		if shown == nil {
			return ""
		}
		return shown()
	}
	if s.Min != nil && n < *s.Min {
		c.fail(value(), fmt.Sprintf("have length greater than or equal to %d", *s.Min))
	}
	if s.Max != nil && n > *s.Max {
		c.fail(value(), fmt.Sprintf("have length less than or equal to %d", *s.Max))
	}
}

// base64Len is the decoded length of standard base64, checking it the way
// encoding/json will decode it later. It decodes into a fixed buffer, a
// block at a time, so a blob of any size costs no allocation: most blobs
// this checks are refused for their length.
func base64Len(s []byte) (int, error) {
	if bytes.IndexByte(s, '\r') >= 0 || bytes.IndexByte(s, '\n') >= 0 {
		// The decoder skips line breaks, so blocks would not align on
		// quantums; such input is rare enough to decode whole.
		b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
		n, err := base64.StdEncoding.Decode(b, s)
		return n, err
	}
	const block = 4096 // whole quantums: only the last may carry padding
	var dst [block / 4 * 3]byte
	total := 0
	for off := 0; off < len(s) || off == 0; off += block {
		end := min(off+block, len(s))
		chunk := s[off:end]
		if end < len(s) && bytes.IndexByte(chunk, '=') >= 0 {
			return 0, base64.CorruptInputError(off + bytes.IndexByte(chunk, '='))
		}
		n, err := base64.StdEncoding.Decode(dst[:], chunk)
		if err != nil {
			if ce, ok := err.(base64.CorruptInputError); ok {
				return 0, base64.CorruptInputError(off + int(ce))
			}
			return 0, err
		}
		total += n
		if end == len(s) {
			break
		}
	}
	return total, nil
}
