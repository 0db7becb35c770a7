package authz

// Result is one policy's verdict on a request.
type Result struct {
	Effect Effect
	// Statement names the deciding statement: its Sid, or "#<index>".
	Statement string
	// ViaAccount is set on an Allow that matched the caller only as a
	// member of an account (an account id or :root principal). In a key
	// policy that is a delegation to the account's IAM policies, not a
	// permission by itself. It is false if any direct statement allows.
	ViaAccount bool
}

// Evaluate applies the policy to req. A matching Deny wins over every
// Allow; among Allows a direct principal match wins over an account match.
func (p *Policy) Evaluate(req *Request) Result {
	allow := Result{Effect: NoMatch}
	for i := range p.Statements {
		st := &p.Statements[i]
		m := st.applies(p.Kind, req)
		if m == matchNone {
			continue
		}
		if st.Effect == Deny {
			return Result{Effect: Deny, Statement: st.Sid}
		}
		if allow.Effect != Allow || (allow.ViaAccount && m == matchDirect) {
			allow = Result{Effect: Allow, Statement: st.Sid, ViaAccount: m == matchAccount}
		}
	}
	return allow
}

// applies reports whether the statement covers req and how the principal
// matched. Identity-policy statements match the caller directly.
func (st *Statement) applies(kind Kind, req *Request) matchKind {
	if matchAction(st.Actions, req.Action) == st.NotAction {
		return matchNone
	}
	if matchResource(st.Resources, req.Resource) == st.NotResource {
		return matchNone
	}
	m := matchDirect
	if kind == KeyPolicy {
		m = st.matchPrincipal(req.Principal)
		if m == matchNone {
			return matchNone
		}
	}
	for _, c := range st.conditions {
		if !c.eval(req.Context) {
			return matchNone
		}
	}
	return m
}

func (st *Statement) matchPrincipal(c Principal) matchKind {
	best := matchNone
	for _, p := range st.principals {
		best = max(best, p.match(c))
	}
	if st.NotPrincipal {
		// NotPrincipal covers everyone the list does not name; an account
		// in the list excludes all of its principals.
		if best != matchNone {
			return matchNone
		}
		return matchDirect
	}
	return best
}
