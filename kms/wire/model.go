package wire

import (
	_ "embed"
	"encoding/json"
	"regexp"
	"sort"
	"strings"
)

//go:generate python3 ../../scripts/gen-kms-model.py model.json

// model.json is generated from the botocore KMS model: every operation's
// input shape and the constraints AWS validates requests against.
//
//go:embed model.json
var modelJSON []byte

type member struct {
	Name      string `json:"name"`
	Shape     string `json:"shape"`
	Sensitive bool   `json:"sensitive"`
	path      string // Name with a lower-case first letter, as AWS names it in messages
}

type shape struct {
	Type      string   `json:"type"`
	Members   []member `json:"members"`
	Required  []string `json:"required"`
	Min       *int64   `json:"min"`
	Max       *int64   `json:"max"`
	Enum      []string `json:"enum"`
	Pattern   string   `json:"pattern"`
	Sensitive bool     `json:"sensitive"`
	Member    string   `json:"member"`
	Key       string   `json:"key"`
	Value     string   `json:"value"`

	required map[string]bool
	enum     map[string]bool
	enumText string
	re       *regexp.Regexp
	elem     *shape // list member
	children []*shape
}

type model struct {
	Operations map[string]string `json:"operations"`
	Shapes     map[string]*shape `json:"shapes"`

	inputs map[string]*shape
	names  []string
}

var kmsModel = loadModel()

func loadModel() *model {
	var m model
	if err := json.Unmarshal(modelJSON, &m); err != nil {
		panic("wire: embedded model.json: " + err.Error())
	}
	for name, s := range m.Shapes {
		s.required = make(map[string]bool, len(s.Required))
		for _, r := range s.Required {
			s.required[r] = true
		}
		if len(s.Enum) > 0 {
			s.enum = make(map[string]bool, len(s.Enum))
			for _, e := range s.Enum {
				s.enum[e] = true
			}
			order := s.Enum
			if aws := awsEnumOrder[name]; sameSet(aws, s.Enum) {
				order = aws
			}
			s.enumText = "[" + strings.Join(order, ", ") + "]"
		}
		if s.Pattern != "" {
			// AWS matches the whole value (Java's String.matches), and
			// writes code points as \uXXXX, which Go spells \x{XXXX}.
			p := regexp.MustCompile(`\\u([0-9A-Fa-f]{4})`).ReplaceAllString(s.Pattern, `\x{$1}`)
			s.re, _ = regexp.Compile(`^(?:` + p + `)$`) // a pattern Go cannot compile is not checked
		}
		for i := range s.Members {
			mb := &s.Members[i]
			mb.path = strings.ToLower(mb.Name[:1]) + mb.Name[1:]
			s.children = append(s.children, m.Shapes[mb.Shape])
		}
		if s.Member != "" {
			s.elem = m.Shapes[s.Member]
		}
	}
	m.inputs = make(map[string]*shape, len(m.Operations))
	for op, in := range m.Operations {
		m.inputs[op] = m.Shapes[in]
		m.names = append(m.names, op)
	}
	sort.Strings(m.names)
	return &m
}

// awsEnumOrder is the order in which AWS lists an enum's values in its
// "Member must satisfy enum value set" messages, where it differs from the
// model's and was recorded against AWS with the same set of values
// (localstack's validated KMS snapshots). AWS's order follows no rule that
// could be derived for sets never recorded, so every other enum keeps the
// model's order; an entry whose set no longer matches the model (after a
// model update) is ignored, and a test says so.
var awsEnumOrder = map[string][]string{
	"MacAlgorithmSpec": {"HMAC_SHA_384", "HMAC_SHA_256", "HMAC_SHA_224", "HMAC_SHA_512"},
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	in := make(map[string]bool, len(a))
	for _, v := range a {
		in[v] = true
	}
	for _, v := range b {
		if !in[v] {
			return false
		}
	}
	return true
}

// InputMembers returns the member names of op's input shape, as the model
// lists them.
func InputMembers(op string) []string {
	in := kmsModel.inputs[op]
	if in == nil {
		return nil
	}
	out := make([]string, len(in.Members))
	for i, m := range in.Members {
		out[i] = m.Name
	}
	return out
}

// EnumValues returns the values of the model's enum shape name, in the
// model's order.
func EnumValues(name string) []string {
	if sh := kmsModel.Shapes[name]; sh != nil {
		return append([]string(nil), sh.Enum...)
	}
	return nil
}

// Operations returns the names of every operation in the KMS model, sorted.
func Operations() []string { return append([]string(nil), kmsModel.names...) }
