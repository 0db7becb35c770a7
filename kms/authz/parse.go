package authz

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Kind says which side of KMS's authorization a policy sits on; it decides
// whether statements name principals.
type Kind int

const (
	// KeyPolicy is a resource policy attached to a key: every statement
	// must have Principal or NotPrincipal.
	KeyPolicy Kind = iota
	// IdentityPolicy is attached to the caller: statements must not name
	// principals, since the caller is the principal.
	IdentityPolicy
)

func (k Kind) String() string {
	if k == IdentityPolicy {
		return "identity-based"
	}
	return "resource-based"
}

// MalformedError is why Parse rejected a document. Reason is a sentence fit
// for the MalformedPolicyDocumentException message.
type MalformedError struct {
	Reason string
}

func (e *MalformedError) Error() string { return "authz: malformed policy: " + e.Reason }

func malformed(format string, args ...any) error {
	return &MalformedError{Reason: fmt.Sprintf(format, args...)}
}

// Policy is a parsed policy document. It is immutable and safe for
// concurrent use.
type Policy struct {
	Kind       Kind
	Version    string
	ID         string
	Statements []Statement
}

// Statement is one parsed statement. The plain fields are exported for
// inspection (listing who a key is shared with, say); principals and
// conditions stay internal because only Policy.Evaluate should interpret
// them.
type Statement struct {
	Sid    string // "#<index>" when the document has none
	Effect Effect // Allow or Deny

	principals   []principal // nil when the statement has no Principal
	NotPrincipal bool
	Actions      []string // lower-cased patterns
	NotAction    bool
	Resources    []string
	NotResource  bool
	conditions   []condition
}

// Effect is the outcome of a statement or of a whole policy.
type Effect int

const (
	NoMatch Effect = iota
	Allow
	Deny
)

func (e Effect) String() string {
	switch e {
	case Allow:
		return "Allow"
	case Deny:
		return "Deny"
	}
	return "NoMatch"
}

var topLevel = map[string]bool{"Version": true, "Id": true, "Statement": true}

var statementElements = map[string]bool{
	"Sid": true, "Effect": true, "Principal": true, "NotPrincipal": true,
	"Action": true, "NotAction": true, "Resource": true, "NotResource": true,
	"Condition": true,
}

// Parse parses and validates a policy document of the given kind. Every
// error it returns is a *MalformedError.
func Parse(doc []byte, kind Kind) (*Policy, error) {
	v, err := decodeStrict(doc)
	if errors.Is(err, errDuplicateKey) {
		return nil, malformed("Policy contains a duplicate JSON key.")
	}
	if err != nil {
		return nil, malformed("Policy is not a valid JSON document.")
	}
	root, ok := v.(*object)
	if !ok {
		return nil, malformed("Policy must be a JSON object.")
	}
	for _, k := range root.keys {
		if !topLevel[k] {
			return nil, malformed("Policy contains an unknown element - %s", k)
		}
	}
	p := &Policy{Kind: kind}
	if raw, ok := root.vals["Version"]; ok {
		s, ok := raw.(string)
		if !ok || (s != "2012-10-17" && s != "2008-10-17") {
			return nil, malformed("Policy has an invalid Version.")
		}
		p.Version = s
	}
	if raw, ok := root.vals["Id"]; ok {
		s, ok := raw.(string)
		if !ok {
			return nil, malformed("Policy has an invalid Id.")
		}
		p.ID = s
	}
	raw, ok := root.vals["Statement"]
	if !ok {
		return nil, malformed("Policy is missing required element - Statement")
	}
	var list []any
	switch s := raw.(type) {
	case *object:
		list = []any{s}
	case []any:
		list = s
	default:
		return nil, malformed("Policy has an invalid Statement element.")
	}
	if len(list) == 0 {
		return nil, malformed("Policy is missing required element - Statement")
	}
	for i, item := range list {
		obj, ok := item.(*object)
		if !ok {
			return nil, malformed("Policy has an invalid Statement element.")
		}
		st, err := parseStatement(obj, kind)
		if err != nil {
			return nil, err
		}
		if st.Sid == "" {
			st.Sid = fmt.Sprintf("#%d", i)
		}
		p.Statements = append(p.Statements, st)
	}
	return p, nil
}

func parseStatement(obj *object, kind Kind) (Statement, error) {
	var st Statement
	for _, k := range obj.keys {
		if !statementElements[k] {
			return st, malformed("Policy contains a statement with an unknown element - %s", k)
		}
	}
	if raw, ok := obj.vals["Sid"]; ok {
		s, ok := raw.(string)
		if !ok {
			return st, malformed("Policy contains a statement with an invalid Sid.")
		}
		st.Sid = s
	}
	switch obj.vals["Effect"] {
	case "Allow":
		st.Effect = Allow
	case "Deny":
		st.Effect = Deny
	case nil:
		return st, malformed("Policy contains a statement with no Effect.")
	default:
		return st, malformed("Policy contains a statement with an invalid Effect.")
	}

	if err := exactlyOne(obj, "Principal", "NotPrincipal"); err != nil {
		if kind == IdentityPolicy {
			return st, malformed("Policy document should not specify a principal.")
		}
		return st, malformed("Policy contains a statement with more than one principal element.")
	}
	rawP, isP := obj.vals["Principal"]
	rawNP, isNP := obj.vals["NotPrincipal"]
	switch {
	case kind == IdentityPolicy && (isP || isNP):
		return st, malformed("Policy document should not specify a principal.")
	case kind == KeyPolicy && !isP && !isNP:
		return st, malformed("Policy contains a statement with no principal.")
	case isP:
		ps, err := parsePrincipals(rawP)
		if err != nil {
			return st, err
		}
		st.principals = ps
	case isNP:
		ps, err := parsePrincipals(rawNP)
		if err != nil {
			return st, err
		}
		st.principals, st.NotPrincipal = ps, true
	}

	if err := exactlyOne(obj, "Action", "NotAction"); err != nil {
		return st, malformed("Policy contains a statement with both Action and NotAction.")
	}
	act, isNot, err := stringsElement(obj, "Action", "NotAction")
	if err != nil {
		return st, err
	}
	if act == nil {
		return st, malformed("Policy contains a statement with no action.")
	}
	for _, a := range act {
		if a != "*" && !validAction(a) {
			return st, malformed("Policy contains a statement with an invalid action: %s", a)
		}
		st.Actions = append(st.Actions, strings.ToLower(a))
	}
	st.NotAction = isNot

	if err := exactlyOne(obj, "Resource", "NotResource"); err != nil {
		return st, malformed("Policy contains a statement with both Resource and NotResource.")
	}
	res, isNot, err := stringsElement(obj, "Resource", "NotResource")
	if err != nil {
		return st, err
	}
	if res == nil {
		return st, malformed("Policy contains a statement with no resource.")
	}
	for _, r := range res {
		if r == "" {
			return st, malformed("Policy contains a statement with an empty resource.")
		}
	}
	st.Resources, st.NotResource = res, isNot

	if raw, ok := obj.vals["Condition"]; ok {
		conds, err := parseConditions(raw)
		if err != nil {
			return st, err
		}
		st.conditions = conds
	}
	return st, nil
}

// exactlyOne fails when both the element and its Not form are present.
func exactlyOne(obj *object, a, b string) error {
	_, hasA := obj.vals[a]
	_, hasB := obj.vals[b]
	if hasA && hasB {
		return errors.New("both")
	}
	return nil
}

// stringsElement reads whichever of name or notName is present as a
// non-empty list of strings; a single string counts as a list of one.
func stringsElement(obj *object, name, notName string) ([]string, bool, error) {
	raw, ok := obj.vals[name]
	isNot := false
	if !ok {
		raw, ok = obj.vals[notName]
		isNot, name = true, notName
	}
	if !ok {
		return nil, false, nil
	}
	list, ok := stringList(raw)
	if !ok || len(list) == 0 {
		return nil, false, malformed("Policy contains a statement with an invalid or empty %s.", name)
	}
	return list, isNot, nil
}

// stringList accepts a string or a list of strings.
func stringList(raw any) ([]string, bool) {
	switch v := raw.(type) {
	case string:
		return []string{v}, true
	case []any:
		out := make([]string, 0, len(v))
		for _, item := range v {
			s, ok := item.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}

// validAction accepts "service:pattern" with a service prefix of letters,
// digits and dashes, which is the shape IAM requires.
func validAction(a string) bool {
	svc, name, ok := strings.Cut(a, ":")
	if !ok || svc == "" || name == "" {
		return false
	}
	for _, r := range svc {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// jsonScalar renders a condition value: AWS accepts true and "true", 5 and
// "5" alike, so everything is compared as its string form.
func jsonScalar(v any) (string, bool) {
	switch t := v.(type) {
	case string:
		return t, true
	case bool:
		if t {
			return "true", true
		}
		return "false", true
	case json.Number:
		return t.String(), true
	}
	return "", false
}

// ConditionKeys returns the condition keys the policy's statements test,
// normalized as Context stores them (lower case but for a case-sensitive
// suffix). A caller can gather only these: building a request's whole
// context costs more than evaluating most policies, and most policies
// (the default key policy among them) test none.
func (p *Policy) ConditionKeys() []string {
	var keys []string
	for i := range p.Statements {
		for _, c := range p.Statements[i].conditions {
			keys = append(keys, c.key)
		}
	}
	return keys
}
