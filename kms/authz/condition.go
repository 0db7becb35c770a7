package authz

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// opFunc is the positive form of an operator: does one request value match
// one policy value.
type opFunc func(req, pol string) bool

type operator struct {
	match   opFunc
	negated bool
	// valid checks a policy value at parse time, so a typo such as
	// NumericLessThan "ten" is reported instead of silently never matching.
	valid func(string) bool
}

var operators = map[string]operator{
	"StringEquals":              {match: func(r, p string) bool { return r == p }},
	"StringNotEquals":           {match: func(r, p string) bool { return r == p }, negated: true},
	"StringEqualsIgnoreCase":    {match: strings.EqualFold},
	"StringNotEqualsIgnoreCase": {match: strings.EqualFold, negated: true},
	"StringLike":                {match: func(r, p string) bool { return glob(p, r) }},
	"StringNotLike":             {match: func(r, p string) bool { return glob(p, r) }, negated: true},
	"ArnEquals":                 {match: func(r, p string) bool { return arnLike(p, r) }},
	"ArnNotEquals":              {match: func(r, p string) bool { return arnLike(p, r) }, negated: true},
	"ArnLike":                   {match: func(r, p string) bool { return arnLike(p, r) }},
	"ArnNotLike":                {match: func(r, p string) bool { return arnLike(p, r) }, negated: true},
	"Bool":                      {match: boolEquals, valid: isBool},
	"NumericEquals":             {match: numeric(func(r, p float64) bool { return r == p }), valid: isNumber},
	"NumericNotEquals":          {match: numeric(func(r, p float64) bool { return r == p }), valid: isNumber, negated: true},
	"NumericLessThan":           {match: numeric(func(r, p float64) bool { return r < p }), valid: isNumber},
	"NumericLessThanEquals":     {match: numeric(func(r, p float64) bool { return r <= p }), valid: isNumber},
	"NumericGreaterThan":        {match: numeric(func(r, p float64) bool { return r > p }), valid: isNumber},
	"NumericGreaterThanEquals":  {match: numeric(func(r, p float64) bool { return r >= p }), valid: isNumber},
	"DateEquals":                {match: date(func(r, p time.Time) bool { return r.Equal(p) }), valid: isDate},
	"DateNotEquals":             {match: date(func(r, p time.Time) bool { return r.Equal(p) }), valid: isDate, negated: true},
	"DateLessThan":              {match: date(func(r, p time.Time) bool { return r.Before(p) }), valid: isDate},
	"DateLessThanEquals":        {match: date(func(r, p time.Time) bool { return !r.After(p) }), valid: isDate},
	"DateGreaterThan":           {match: date(func(r, p time.Time) bool { return r.After(p) }), valid: isDate},
	"DateGreaterThanEquals":     {match: date(func(r, p time.Time) bool { return !r.Before(p) }), valid: isDate},
	"IpAddress":                 {match: ipIn, valid: isPrefix},
	"NotIpAddress":              {match: ipIn, valid: isPrefix, negated: true},
}

type qualifier int

const (
	single qualifier = iota
	forAnyValue
	forAllValues
)

// condition is one (operator, key) pair of a Condition block.
type condition struct {
	name     string // as written, for diagnostics
	op       operator
	null     bool
	qual     qualifier
	ifExists bool
	key      string // normalized
	values   []string
}

func parseConditions(raw any) ([]condition, error) {
	block, ok := raw.(*object)
	if !ok {
		return nil, malformed("Policy contains a statement with an invalid Condition element.")
	}
	var out []condition
	for _, name := range block.keys {
		c := condition{name: name}
		base := name
		if rest, ok := strings.CutPrefix(base, "ForAnyValue:"); ok {
			base, c.qual = rest, forAnyValue
		} else if rest, ok := strings.CutPrefix(base, "ForAllValues:"); ok {
			base, c.qual = rest, forAllValues
		}
		if base == "Null" {
			c.null = true
			c.op = operator{valid: isBool}
		} else {
			if rest, ok := strings.CutSuffix(base, "IfExists"); ok {
				base, c.ifExists = rest, true
			}
			op, ok := operators[base]
			if !ok {
				return nil, malformed("Policy has an invalid condition operator: %s", name)
			}
			c.op = op
		}
		keys, ok := block.vals[name].(*object)
		if !ok || len(keys.keys) == 0 {
			return nil, malformed("Policy has an invalid condition block for operator: %s", name)
		}
		for _, key := range keys.keys {
			kc := c
			if key == "" {
				return nil, malformed("Policy has an empty condition key under operator: %s", name)
			}
			kc.key = normalizeKey(key)
			vals, ok := conditionValues(keys.vals[key])
			if !ok {
				return nil, malformed("Policy has an invalid value for condition key %s under operator: %s", key, name)
			}
			for _, v := range vals {
				if kc.op.valid != nil && !kc.op.valid(v) {
					return nil, malformed("Policy has an invalid value for condition key %s under operator %s: %s", key, name, v)
				}
			}
			kc.values = vals
			out = append(out, kc)
		}
	}
	return out, nil
}

// conditionValues accepts a scalar or a non-empty list of scalars.
func conditionValues(raw any) ([]string, bool) {
	if s, ok := jsonScalar(raw); ok {
		return []string{s}, true
	}
	list, ok := raw.([]any)
	if !ok || len(list) == 0 {
		return nil, false
	}
	out := make([]string, 0, len(list))
	for _, item := range list {
		s, ok := jsonScalar(item)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// eval reports whether the condition holds for ctx.
func (c condition) eval(ctx Context) bool {
	req, present := ctx.Get(c.key)
	if c.null {
		// Null: "true" asks for the key to be absent, "false" present.
		for _, v := range c.values {
			if strings.EqualFold(v, "true") != present {
				return true
			}
		}
		return false
	}
	if !present {
		switch {
		case c.ifExists:
			return true
		case c.qual == forAllValues:
			// Vacuously true: every one of no values matches.
			return true
		case c.qual == forAnyValue:
			return false
		default:
			// AWS: a negated operator on a missing key is true, since the
			// key cannot equal anything; a positive one is false.
			return c.op.negated
		}
	}
	// matches: does one request value satisfy the operator, taking
	// negation per value (matches none of the policy values).
	matches := func(r string) bool {
		hit := false
		for _, p := range c.values {
			if c.op.match(r, p) {
				hit = true
				break
			}
		}
		return hit != c.op.negated
	}
	switch c.qual {
	case forAllValues:
		for _, r := range req {
			if !matches(r) {
				return false
			}
		}
		return true
	case forAnyValue:
		for _, r := range req {
			if matches(r) {
				return true
			}
		}
		return false
	}
	// Without a qualifier a multi-valued key behaves as a set: a positive
	// operator holds if any request value matches any policy value, a
	// negated one if no request value matches any policy value.
	for _, r := range req {
		hit := false
		for _, p := range c.values {
			if c.op.match(r, p) {
				hit = true
				break
			}
		}
		if hit {
			return !c.op.negated
		}
	}
	return c.op.negated
}

func isBool(s string) bool { return strings.EqualFold(s, "true") || strings.EqualFold(s, "false") }

func boolEquals(r, p string) bool { return isBool(r) && strings.EqualFold(r, p) }

func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

func numeric(cmp func(r, p float64) bool) opFunc {
	return func(r, p string) bool {
		rf, err1 := strconv.ParseFloat(r, 64)
		pf, err2 := strconv.ParseFloat(p, 64)
		return err1 == nil && err2 == nil && cmp(rf, pf)
	}
}

var dateLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05Z0700",
	"2006-01-02T15:04Z07:00",
	"2006-01-02T15:04:05",
	"2006-01-02",
}

// parseDate accepts the ISO 8601 forms AWS documents and epoch seconds.
func parseDate(s string) (time.Time, bool) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0), true
	}
	for _, l := range dateLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

func isDate(s string) bool {
	_, ok := parseDate(s)
	return ok
}

func date(cmp func(r, p time.Time) bool) opFunc {
	return func(r, p string) bool {
		rt, ok1 := parseDate(r)
		pt, ok2 := parseDate(p)
		return ok1 && ok2 && cmp(rt, pt)
	}
}

// parsePrefix accepts a CIDR or a bare address (a single-host prefix).
func parsePrefix(s string) (netip.Prefix, bool) {
	if pfx, err := netip.ParsePrefix(s); err == nil {
		return pfx.Masked(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

func isPrefix(s string) bool {
	_, ok := parsePrefix(s)
	return ok
}

func ipIn(r, p string) bool {
	pfx, ok := parsePrefix(p)
	if !ok {
		return false
	}
	a, err := netip.ParseAddr(r)
	if err != nil {
		return false
	}
	return pfx.Contains(a.Unmap())
}
