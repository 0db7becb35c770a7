package store

import (
	"encoding/base64"
	"strconv"
)

// decodeMaterialsFast reads the materials column as encoding/json writes
// it ([]material, fields in their order, omitempty ones absent, strings
// without escapes) without reflection: every GetKey the key cache misses,
// and the start-up walk over every key, decode it, and encoding/json was
// most of the walk's cost with 100,000 keys. Anything else it does not
// recognise (ok false) goes to encoding/json, which decides; FuzzMaterials
// checks the two agree.
func decodeMaterialsFast(js string) (out []material, ok bool) {
	p := matParser{s: js}
	if !p.lit("[") {
		return nil, false
	}
	if p.lit("]") {
		return nil, p.end()
	}
	for {
		m, ok := p.object()
		if !ok {
			return nil, false
		}
		out = append(out, m)
		if p.lit("]") {
			return out, p.end()
		}
		if !p.lit(",") {
			return nil, false
		}
	}
}

type matParser struct {
	s string
	i int
}

func (p *matParser) lit(l string) bool {
	if len(p.s)-p.i >= len(l) && p.s[p.i:p.i+len(l)] == l {
		p.i += len(l)
		return true
	}
	return false
}

func (p *matParser) end() bool { return p.i == len(p.s) }

// str reads a JSON string without escapes or control characters.
func (p *matParser) str() (string, bool) {
	if !p.lit(`"`) {
		return "", false
	}
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			v := p.s[start:p.i]
			p.i++
			return v, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return "", false // escapes and non-ASCII: encoding/json's business
		}
		p.i++
	}
	return "", false
}

// bytesField reads a base64 string or null.
func (p *matParser) bytesField() ([]byte, bool) {
	if p.lit("null") {
		return nil, true
	}
	s, ok := p.str()
	if !ok {
		return nil, false
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, false
	}
	return b, true
}

func (p *matParser) int64Field() (int64, bool) {
	start := p.i
	if p.i < len(p.s) && p.s[p.i] == '-' {
		p.i++
	}
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	n, err := strconv.ParseInt(p.s[start:p.i], 10, 64)
	if err != nil || (p.s[start] == '0' && p.i-start > 1) || (p.s[start] == '-' && p.i-start > 2 && p.s[start+1] == '0') {
		return 0, false
	}
	return n, true
}

// object reads one material; the fields must come in encoding/json's order.
func (p *matParser) object() (m material, ok bool) {
	if !p.lit(`{"id":`) {
		return m, false
	}
	if m.ID, ok = p.str(); !ok {
		return m, false
	}
	if !p.lit(`,"token_id":`) {
		return m, false
	}
	if m.TokenID, ok = p.bytesField(); !ok {
		return m, false
	}
	if !p.lit(`,"created":`) {
		return m, false
	}
	if m.CreationDate, ok = p.int64Field(); !ok {
		return m, false
	}
	if p.lit(`,"rotation_type":`) {
		if m.RotationType, ok = p.str(); !ok || m.RotationType == "" {
			return m, false
		}
	}
	if p.lit(`,"wrapped":`) {
		if m.Wrapped, ok = p.bytesField(); !ok || len(m.Wrapped) == 0 {
			return m, false
		}
	}
	if p.lit(`,"domain_key":`) {
		if m.DomainKey, ok = p.str(); !ok || m.DomainKey == "" {
			return m, false
		}
	}
	return m, p.lit("}")
}
