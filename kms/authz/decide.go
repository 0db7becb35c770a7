package authz

import (
	"fmt"
	"strings"
)

// Input is everything KMS weighs for one request.
type Input struct {
	Request    *Request
	KeyPolicy  *Policy   // nil for operations without a key resource
	KeyAccount string    // account owning the key
	Identity   []*Policy // the caller's identity policies
	// GrantAllows is the id of a grant that allows this request, "" if none.
	GrantAllows string
}

// Decision is the outcome of Decide.
type Decision struct {
	Allowed      bool
	ExplicitDeny bool
	// Source is the kind of policy a denial rests on: where the explicit
	// Deny was, or which side failed to allow. Meaningless when Allowed.
	Source Kind
	// By names what decided: "key policy statement X", "identity policy
	// statement Y", both joined by " and " when delegation needed both,
	// "grant G", or "no policy allows".
	By string
}

// Decide combines the key policy, identity policies and grants with KMS's
// rules:
//   - an explicit Deny in the key policy or any identity policy denies,
//     and grants cannot override it;
//   - without a key, identity policies alone decide;
//   - with a key, a caller in the key's account is allowed if the key
//     policy allows it directly (its ARN or "*"), or allows its account
//     (delegation) and an identity policy allows too;
//   - a caller from another account needs both sides: the key policy must
//     allow it (directly or through its account) and an identity policy
//     must allow;
//   - otherwise a grant for the request allows it.
func Decide(in Input) Decision {
	req := in.Request
	var key Result
	if in.KeyPolicy != nil {
		key = in.KeyPolicy.Evaluate(req)
		if key.Effect == Deny {
			return Decision{ExplicitDeny: true, Source: KeyPolicy, By: "key policy statement " + key.Statement}
		}
	}
	var ident Result
	for _, p := range in.Identity {
		r := p.Evaluate(req)
		if r.Effect == Deny {
			return Decision{ExplicitDeny: true, Source: IdentityPolicy, By: "identity policy statement " + r.Statement}
		}
		if r.Effect == Allow && ident.Effect != Allow {
			ident = r
		}
	}
	if in.KeyPolicy == nil {
		if ident.Effect == Allow {
			return Decision{Allowed: true, By: "identity policy statement " + ident.Statement}
		}
		return Decision{Source: IdentityPolicy, By: "no policy allows"}
	}
	sameAccount := req.Principal.Account != "" && req.Principal.Account == in.KeyAccount
	if key.Effect == Allow {
		if sameAccount && !key.ViaAccount {
			return Decision{Allowed: true, By: "key policy statement " + key.Statement}
		}
		if ident.Effect == Allow {
			return Decision{Allowed: true, By: "key policy statement " + key.Statement + " and identity policy statement " + ident.Statement}
		}
	}
	if in.GrantAllows != "" {
		return Decision{Allowed: true, By: "grant " + in.GrantAllows}
	}
	if key.Effect == Allow {
		// The key policy let the caller in (or delegated); the identity
		// side is what is missing.
		return Decision{Source: IdentityPolicy, By: "no policy allows"}
	}
	return Decision{Source: KeyPolicy, By: "no policy allows"}
}

// Message is the AccessDeniedException message for a denied decision.
func (d Decision) Message(principalARN, action, resource string) string {
	return DeniedMessage(principalARN, action, resource, d.ExplicitDeny, d.Source == IdentityPolicy)
}

// DeniedMessage renders AWS's AccessDeniedException message. explicit
// selects the explicit-deny form; identityOnly names an identity-based
// policy (the Deny was there, or, for an implicit deny, no identity policy
// allowed, as for operations without a key) instead of a resource-based one.
// action may be given with or without its "kms:" prefix.
func DeniedMessage(principalARN, action, resource string, explicit bool, identityOnly bool) string {
	if !strings.Contains(action, ":") {
		action = "kms:" + action
	}
	kind := KeyPolicy
	article := "a"
	if identityOnly {
		kind, article = IdentityPolicy, "an"
	}
	if explicit {
		return fmt.Sprintf("User: %s is not authorized to perform: %s on resource: %s with an explicit deny in %s %s policy",
			principalARN, action, resource, article, kind)
	}
	return fmt.Sprintf("User: %s is not authorized to perform: %s on resource: %s because no %s policy allows the %s action",
		principalARN, action, resource, kind, action)
}

// LockoutCheck reports whether newPolicy, once installed, would still let
// the caller of in.Request call kms:PutKeyPolicy on the key: AWS's policy
// lockout safety check. Action and KeyPolicy of in are replaced and grants
// ignored (no grant can allow PutKeyPolicy). A policy that only delegates
// to the key's account passes only if in.Identity allows too; a caller
// wanting the looser, key-policy-only form of the check can instead accept
// newPolicy.Evaluate(req).ViaAccount for a caller in the key's account.
func LockoutCheck(newPolicy *Policy, in Input) Decision {
	req := *in.Request
	req.Action = "kms:PutKeyPolicy"
	in.Request = &req
	in.KeyPolicy = newPolicy
	in.GrantAllows = ""
	return Decide(in)
}
