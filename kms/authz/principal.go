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

// PrincipalFromARN builds a Principal from an IAM or STS principal ARN,
// taking the account from it.
func PrincipalFromARN(arn string) (Principal, error) {
	p, ok := ParsePrincipalARN(arn)
	if !ok {
		return Principal{}, errors.New("authz: not an IAM or STS principal ARN")
	}
	return Principal{ARN: arn, Account: p.Account}, nil
}

// PrincipalType is the kind of identity a principal ARN names.
type PrincipalType int

const (
	AccountRoot   PrincipalType = iota + 1 // arn:aws:iam::A:root
	IAMUser                                // arn:aws:iam::A:user/[path/]name
	IAMRole                                // arn:aws:iam::A:role/[path/]name
	AssumedRole                            // arn:aws:sts::A:assumed-role/role/session
	FederatedUser                          // arn:aws:sts::A:federated-user/name
)

// PrincipalARN is a parsed principal ARN.
type PrincipalARN struct {
	Type    PrincipalType
	Account string
	// Role is the role's name (without path) for IAMRole and AssumedRole:
	// a session's ARN carries no path, so a role and its sessions are
	// matched by account and name.
	Role string
}

// ParsePrincipalARN is the one grammar of principal ARNs in hsmkms: key
// and identity policy principals, grantee and retiring principals, and
// the callers the configuration declares. Names and path segments are
// IAM's characters (letters, digits, _+=,.@-); no wildcards.
func ParsePrincipalARN(s string) (PrincipalARN, bool) {
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || !validPartition(parts[1]) || parts[3] != "" || !isAccountID(parts[4]) {
		return PrincipalARN{}, false
	}
	p := PrincipalARN{Account: parts[4]}
	res := parts[5]
	switch parts[2] {
	case "iam":
		switch {
		case res == "root":
			p.Type = AccountRoot
			return p, true
		case validPathName(res, "user/"):
			p.Type = IAMUser
			return p, true
		case validPathName(res, "role/"):
			p.Type, p.Role = IAMRole, res[strings.LastIndexByte(res, '/')+1:]
			return p, true
		}
	case "sts":
		if rest, ok := strings.CutPrefix(res, "assumed-role/"); ok {
			role, session, found := strings.Cut(rest, "/")
			if found && validName(role) && validName(session) {
				p.Type, p.Role = AssumedRole, role
				return p, true
			}
		}
		if name, ok := strings.CutPrefix(res, "federated-user/"); ok && validName(name) {
			p.Type = FederatedUser
			return p, true
		}
	}
	return PrincipalARN{}, false
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
		if cp, ok := ParsePrincipalARN(c.ARN); ok && cp.Type == AssumedRole && cp.Account == p.account && cp.Role == p.role {
			return matchDirect
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
	p, ok := ParsePrincipalARN(v)
	if !ok {
		return principal{}, false
	}
	switch p.Type {
	case AccountRoot:
		return principal{kind: accountRoot, account: p.Account, arn: v}, true
	case IAMRole:
		return principal{kind: roleARN, account: p.Account, arn: v, role: p.Role}, true
	}
	return principal{kind: exactARN, account: p.Account, arn: v}, true
}

// validPathName accepts prefix + optional path + a name.
func validPathName(res, prefix string) bool {
	rest, ok := strings.CutPrefix(res, prefix)
	if !ok {
		return false
	}
	for _, seg := range strings.Split(rest, "/") {
		if !validName(seg) {
			return false
		}
	}
	return true
}

// validName is a non-empty IAM name: letters, digits and _+=,.@-.
func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("_+=,.@-", r):
		default:
			return false
		}
	}
	return true
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
