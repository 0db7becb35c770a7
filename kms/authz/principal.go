package authz

import (
	"errors"
	"strings"
)

// Principal is the authenticated caller.
type Principal struct {
	ARN     string // arn:aws:iam::A:user/U, arn:aws:sts::A:assumed-role/R/S, ...
	Account string // the 12-digit account id in ARN
}

// PrincipalFromARN builds a Principal from an IAM or STS ARN, taking the
// account from it.
func PrincipalFromARN(arn string) (Principal, error) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || (parts[2] != "iam" && parts[2] != "sts") || !isAccountID(parts[4]) || parts[5] == "" {
		return Principal{}, errors.New("authz: not an IAM or STS principal ARN")
	}
	return Principal{ARN: arn, Account: parts[4]}, nil
}

type principalKind int

const (
	anyone      principalKind = iota // "*"
	accountRoot                      // 12-digit id or arn:...:root
	exactARN                         // user, role or assumed-role session
	roleARN                          // also matches the role's sessions
	service                          // never matches a caller here
)

type principal struct {
	kind    principalKind
	account string
	arn     string // for accountRoot, the canonical root ARN
	role    string // role name, for roleARN
}

// match says how p covers the caller: not at all, directly, or only as a
// member of an account (which in a key policy delegates to IAM).
func (p principal) match(c Principal) matchKind {
	switch p.kind {
	case anyone:
		return matchDirect
	case accountRoot:
		if c.ARN == p.arn {
			// The root user itself is named, not delegated to.
			return matchDirect
		}
		if c.Account == p.account {
			return matchAccount
		}
	case exactARN:
		if c.ARN == p.arn {
			return matchDirect
		}
	case roleARN:
		if c.ARN == p.arn {
			return matchDirect
		}
		// A session arn:aws:sts::A:assumed-role/R/S carries no role path,
		// so the role is identified by account and name.
		parts := strings.SplitN(c.ARN, ":", 6)
		if len(parts) == 6 && parts[2] == "sts" && parts[4] == p.account {
			rest, ok := strings.CutPrefix(parts[5], "assumed-role/")
			if name, _, found := strings.Cut(rest, "/"); ok && found && name == p.role {
				return matchDirect
			}
		}
	}
	return matchNone
}

type matchKind int

const (
	matchNone matchKind = iota
	matchAccount
	matchDirect
)

var errInvalidPrincipal = malformed("Policy contains a statement with one or more invalid principals.")

func parsePrincipals(raw any) ([]principal, error) {
	if s, ok := raw.(string); ok {
		if s != "*" {
			return nil, errInvalidPrincipal
		}
		return []principal{{kind: anyone}}, nil
	}
	obj, ok := raw.(*object)
	if !ok || len(obj.keys) == 0 {
		return nil, errInvalidPrincipal
	}
	var out []principal
	for _, k := range obj.keys {
		vals, ok := stringList(obj.vals[k])
		if !ok || len(vals) == 0 {
			return nil, errInvalidPrincipal
		}
		for _, v := range vals {
			var p principal
			var ok bool
			switch k {
			case "AWS":
				p, ok = parseAWSPrincipal(v)
			case "Service":
				p, ok = principal{kind: service, arn: v}, v != ""
			}
			if !ok {
				return nil, errInvalidPrincipal
			}
			out = append(out, p)
		}
	}
	return out, nil
}

func parseAWSPrincipal(v string) (principal, bool) {
	if v == "*" {
		return principal{kind: anyone}, true
	}
	if isAccountID(v) {
		return principal{kind: accountRoot, account: v, arn: "arn:aws:iam::" + v + ":root"}, true
	}
	parts := strings.SplitN(v, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || !validPartition(parts[1]) || parts[3] != "" || !isAccountID(parts[4]) {
		return principal{}, false
	}
	acct, res := parts[4], parts[5]
	switch parts[2] {
	case "iam":
		switch {
		case res == "root":
			return principal{kind: accountRoot, account: acct, arn: v}, true
		case validPathName(res, "user/"):
			return principal{kind: exactARN, account: acct, arn: v}, true
		case validPathName(res, "role/"):
			path := strings.TrimPrefix(res, "role/")
			return principal{kind: roleARN, account: acct, arn: v, role: path[strings.LastIndexByte(path, '/')+1:]}, true
		}
	case "sts":
		rest, ok := strings.CutPrefix(res, "assumed-role/")
		role, session, found := strings.Cut(rest, "/")
		if ok && found && role != "" && session != "" {
			return principal{kind: exactARN, account: acct, arn: v}, true
		}
	}
	return principal{}, false
}

// validPathName accepts prefix + optional path + non-empty name.
func validPathName(res, prefix string) bool {
	rest, ok := strings.CutPrefix(res, prefix)
	if !ok || rest == "" || strings.HasSuffix(rest, "/") {
		return false
	}
	return !strings.ContainsAny(rest, "*?")
}

func validPartition(p string) bool {
	switch p {
	case "aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b":
		return true
	}
	return false
}

func isAccountID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
