package wire

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// The Validate that reads bodies with jsontext must answer every body as
// the encoding/json one did (referenceValidate), error for error and
// message for message: these tests hold them together on generated
// requests that stress what differs between the two readers (escapes,
// invalid UTF-8, duplicate names, big numbers, nulls, trailing data).

// requireSameAsReference checks op and body against the reference. The
// reference visits map entries in Go's random map order, so when several
// entries are at fault its message may list them in another order: it is
// asked again until it gives Validate's.
func requireSameAsReference(t testing.TB, op string, body []byte) {
	t.Helper()
	got := Validate(op, body)
	var want *Error
	for range 64 {
		if want = referenceValidate(op, body); sameError(got, want) {
			return
		}
	}
	t.Fatalf("%s %q:\n got %v\nwant %v", op, body, describe(got), describe(want))
}

func sameError(a, b *Error) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Type == b.Type && a.Message == b.Message
}

func describe(e *Error) string {
	if e == nil {
		return "<nil>"
	}
	return e.Type + ": " + e.Message
}

// bodyGen writes random request bodies for a shape: mostly valid, with
// faults of every kind mixed in.
type bodyGen struct {
	r *rand.Rand
	b strings.Builder
}

func (g *bodyGen) chance(p float64) bool { return g.r.Float64() < p }

func (g *bodyGen) space() {
	if g.chance(0.1) {
		g.b.WriteString([]string{" ", "\n", "\t", "\r\n  "}[g.r.IntN(4)])
	}
}

func (g *bodyGen) value(s *shape, depth int) {
	g.space()
	defer g.space()
	if depth > 6 || g.chance(0.04) {
		g.junk(depth)
		return
	}
	switch s.Type {
	case "structure":
		g.structure(s, depth)
	case "string":
		g.str(s)
	case "blob":
		g.blob(s)
	case "integer", "long":
		g.number(s)
	case "boolean":
		g.b.WriteString([]string{"true", "false"}[g.r.IntN(2)])
	case "timestamp":
		g.b.WriteString([]string{"1732406400", "1732406400.123", "-1", "1e3"}[g.r.IntN(4)])
	case "list":
		n := g.size(s)
		g.b.WriteByte('[')
		for i := range n {
			if i > 0 {
				g.b.WriteByte(',')
			}
			if g.chance(0.03) {
				g.b.WriteString("null")
				continue
			}
			g.value(s.elem, depth+1)
		}
		g.b.WriteByte(']')
	case "map":
		n := g.size(s)
		g.b.WriteByte('{')
		key, val := kmsModel.Shapes[s.Key], kmsModel.Shapes[s.Value]
		var names []string
		for i := range n {
			if i > 0 {
				g.b.WriteByte(',')
			}
			if len(names) > 0 && g.chance(0.1) {
				g.b.WriteString(names[g.r.IntN(len(names))]) // a duplicate
			} else {
				start := g.b.Len()
				g.str(key)
				names = append(names, g.b.String()[start:])
			}
			g.b.WriteByte(':')
			if g.chance(0.03) {
				g.b.WriteString("null")
				continue
			}
			g.value(val, depth+1)
		}
		g.b.WriteByte('}')
	default:
		g.junk(depth)
	}
}

func (g *bodyGen) structure(s *shape, depth int) {
	g.b.WriteByte('{')
	first := true
	sep := func() {
		if !first {
			g.b.WriteByte(',')
		}
		first = false
		g.space()
	}
	for _, i := range g.r.Perm(len(s.Members)) {
		m := s.Members[i]
		if !s.required[m.Name] && g.chance(0.4) || g.chance(0.05) {
			continue
		}
		for range 1 + b2i(g.chance(0.05)) { // sometimes twice
			sep()
			g.name(m.Name)
			g.b.WriteByte(':')
			if g.chance(0.05) {
				g.b.WriteString("null")
				continue
			}
			g.value(s.children[i], depth+1)
		}
	}
	if g.chance(0.2) {
		sep()
		g.b.WriteString(`"Unknown":`)
		g.junk(depth + 1)
	}
	g.b.WriteByte('}')
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// name writes a member name, now and then escaped or mis-cased.
func (g *bodyGen) name(n string) {
	switch {
	case g.chance(0.05):
		g.b.WriteString(`"\u` + fmt.Sprintf("%04x", n[0]) + n[1:] + `"`)
	case g.chance(0.03):
		g.b.WriteString(strconv.Quote(strings.ToLower(n)))
	default:
		g.b.WriteString(`"` + n + `"`)
	}
}

func (g *bodyGen) size(s *shape) int {
	max := 3
	if s.Max != nil && *s.Max < 40 {
		max = int(*s.Max) + 2
	}
	return g.r.IntN(max + 1)
}

var oddStrings = []string{
	`""`, `"a"`, `"é"`, `"\u00e9"`, `"\n"`, `"a\"b"`, `"\ud800"`, `"\ud83d\ude00"`, "\"\xff\xfe\"", "\"a\xc3\"",
	`"alias/a b"`, `"alias/ok"`, `"AES_256"`, `"SYMMETRIC_DEFAULT"`, `"\/"`, `"\u0000"`,
}

// sample is patternSamples' value for s, if any.
func sample(s *shape) (string, bool) {
	for name, sh := range kmsModel.Shapes {
		if sh == s {
			v, ok := patternSamples[name]
			return v, ok
		}
	}
	return "", false
}

func (g *bodyGen) str(s *shape) {
	if v, ok := sample(s); ok && g.chance(0.7) {
		g.b.WriteString(strconv.Quote(v))
		return
	}
	switch {
	case len(s.Enum) > 0 && g.chance(0.6):
		g.b.WriteString(strconv.Quote(s.Enum[g.r.IntN(len(s.Enum))]))
	case g.chance(0.3):
		g.b.WriteString(oddStrings[g.r.IntN(len(oddStrings))])
	default:
		n := g.r.IntN(8)
		if s.Max != nil && g.chance(0.3) {
			n = int(*s.Max) + g.r.IntN(3) - 1
		}
		if s.Min != nil && g.chance(0.2) {
			n = int(*s.Min) + g.r.IntN(3) - 1
		}
		n = max(0, min(n, 9000))
		alphabet := "abcXYZ019:/_-.é"
		var b strings.Builder
		for b.Len() < n {
			b.WriteByte(alphabet[g.r.IntN(len(alphabet)-2)])
		}
		g.b.WriteString(strconv.Quote(b.String()))
	}
}

func (g *bodyGen) blob(s *shape) {
	switch {
	case g.chance(0.15):
		g.b.WriteString([]string{`"***"`, `"aGk"`, `"aGk=aGk="`, `"aG\nk="`, `"aGk\u003d"`, `"a\/8="`, `""`, `"===="`}[g.r.IntN(8)])
	default:
		n := g.r.IntN(40)
		if s.Max != nil && g.chance(0.2) {
			n = int(*s.Max) + g.r.IntN(3) - 1
		}
		if s.Min != nil && g.chance(0.2) {
			n = int(*s.Min) + g.r.IntN(3) - 1
		}
		n = max(0, n)
		raw := make([]byte, n)
		for i := range raw {
			raw[i] = byte(g.r.IntN(256))
		}
		g.b.WriteString(`"` + b64(raw) + `"`)
	}
}

func (g *bodyGen) number(s *shape) {
	switch {
	case g.chance(0.3):
		g.b.WriteString([]string{"1.5", "1e3", "1E+2", "-0", "0.0", "1e400", "-1e400", "1e-400", "2147483648", "9007199254740993", "-2147483649", "12345678901234567890"}[g.r.IntN(12)])
	default:
		v := int64(g.r.IntN(100))
		if s.Min != nil && g.chance(0.3) {
			v = *s.Min + int64(g.r.IntN(3)) - 1
		}
		if s.Max != nil && g.chance(0.3) {
			v = *s.Max + int64(g.r.IntN(3)) - 1
		}
		g.b.WriteString(strconv.FormatInt(v, 10))
	}
}

// junk is any JSON value, or now and then something that is not JSON.
func (g *bodyGen) junk(depth int) {
	opts := []string{"null", "true", "false", "0", "-1.25e2", `"x"`, `[]`, `{}`, `[1,"a",null]`, `{"a":{"b":[null]}}`, "1e999"}
	if depth > 0 && g.chance(0.1) {
		opts = append(opts, "nul", "[1,]", `{"a"}`, "01", `"\x"`, "\"\x01\"")
	}
	g.b.WriteString(opts[g.r.IntN(len(opts))])
}

func b64(b []byte) string {
	const enc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	var out strings.Builder
	for i := 0; i < len(b); i += 3 {
		var v uint32
		n := min(3, len(b)-i)
		for j := range 3 {
			v <<= 8
			if j < n {
				v |= uint32(b[i+j])
			}
		}
		for j := range 4 {
			if j <= n {
				out.WriteByte(enc[v>>(18-6*j)&63])
			} else {
				out.WriteByte('=')
			}
		}
	}
	return out.String()
}

// generated returns count random bodies for op, and the seed's wrappers
// around whole documents (trailing data, truncation, other top levels).
func generated(op string, seed uint64, count int) [][]byte {
	g := &bodyGen{r: rand.New(rand.NewPCG(seed, 15))}
	var out [][]byte
	for range count {
		g.b.Reset()
		g.value(kmsModel.inputs[op], 0)
		body := g.b.String()
		switch {
		case g.chance(0.02):
			body += "{}"
		case g.chance(0.02):
			body += " x"
		case g.chance(0.02) && len(body) > 2:
			body = body[:g.r.IntN(len(body))]
		case g.chance(0.02):
			body = "[" + body + "]"
		}
		out = append(out, []byte(body))
	}
	return out
}

func TestValidateMatchesReference(t *testing.T) {
	t.Parallel()
	for _, op := range Operations() {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			for _, body := range generated(op, uint64(len(op)), 300) {
				requireSameAsReference(t, op, body)
			}
		})
	}
	t.Run("edges", func(t *testing.T) {
		for _, body := range []string{
			"", " ", "\u00a0", "\t\n", "null", "1", `"s"`, "[]", "{}", "{} ", "{}\n{}", "{}x", "{", "}", `{"KeyId":"k",}`,
			`{"KeyId":"k","KeyId":null}`, `{"KeyId":null,"KeyId":"k"}`, `{"\u004beyId":"k"}`, `{"keyid":"k"}`,
			`{"EncryptionContext":{"a":"1","a":null}}`, `{"EncryptionContext":{"a":null,"a":"1"}}`,
			"{\"EncryptionContext\":{\"\xff\":\"1\",\"\xfe\":\"2\"}}",
			`{"Plaintext":"aGk=","KeyId":"` + strings.Repeat("k", 2049) + `"}`,
			`{"KeyId":"k","Plaintext":"aGk=","Big":1e400}`, `{"KeyId":"k","Plaintext":"aGk=","Small":1e-400}`,
			strings.Repeat("[", 10001) + strings.Repeat("]", 10001), `{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`,
		} {
			for _, op := range []string{"Encrypt", "GenerateRandom", "CreateKey"} {
				requireSameAsReference(t, op, []byte(body))
			}
		}
	})
}

// FuzzValidateMatchesReference: whatever the bytes, Validate answers as
// the encoding/json reference does.
func FuzzValidateMatchesReference(f *testing.F) {
	ops := Operations()
	for i, op := range ops {
		for _, body := range generated(op, uint64(i), 3) {
			f.Add(uint8(i), body)
		}
	}
	f.Fuzz(func(t *testing.T, op uint8, body []byte) {
		requireSameAsReference(t, ops[int(op)%len(ops)], body)
	})
}
