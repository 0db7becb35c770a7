package kms

import (
	"crypto/tls"
	"strings"
	"time"

	"github.com/hsmkms/hsmkms/kms/wire"
)

// Caller is the authenticated principal of a request and the Region its
// signature addressed.
type Caller struct {
	AccessKeyID  string
	Account      string
	PrincipalARN string
	Region       string
}

// Request is one API call as an operation sees it: who calls, from where,
// in which Region, what the request carries for authorization (grant
// tokens, DryRun), and what authorization decided. The runner builds it
// from the protocol's wire.Call before the operation runs and reads its
// decisions after; operations pass it explicitly to everything that needs
// it. A Request belongs to its request's goroutine.
type Request struct {
	ID        string
	op        *operation
	Caller    Caller
	SourceIP  string
	Secure    bool // arrived over TLS
	UserAgent string
	// GrantTokens and DryRun are the request's members of those names,
	// set by the runner for every operation whose input has them.
	GrantTokens []string
	DryRun      bool

	decisions []decision
	// grant is the grant that allowed the request's action on its key, if
	// one did (CreateGrant holds a grant-allowed request to that grant).
	grant string
	// keys are the ARNs of the keys the request acted on, in order.
	keys []string

	// What the request's audit record is built from (auditing.go).
	start time.Time
	tls   *tls.ConnectionState
	host  string
	// input is the decoded input, once decoded.
	input any
	// intent, set by the runner for an operation that is not read-only,
	// writes the call's intent record; decoded calls it before the
	// handler acts.
	intent func() error
	// keyStore is the custom key store of a key the request acted on;
	// material the key material version it used.
	keyStore string
	material string
}

// decoded records the request's input, and, for an operation that is not
// read-only, writes its intent record to the audit trail: the operation's
// handler runs only once that is durable, so a call the trail cannot
// record changes nothing.
func (r *Request) decoded(in any) error {
	r.input = in
	if r.intent != nil {
		intent := r.intent
		r.intent = nil
		return intent()
	}
	return nil
}

// usedMaterial records the key material version the request used.
func (r *Request) usedMaterial(id string) { r.material = id }

// resourceKind is what an authorization decision was about.
type resourceKind int

const (
	onNothing resourceKind = iota // "*": operations without a resource
	onKey
	onAlias
)

// decision is one authorization decision taken for the request.
type decision struct {
	action, resource string
	kind             resourceKind
	allowed          bool
	by               string // the statement, grant or rule that decided
}

func (d decision) String() string {
	verdict := "deny"
	if d.allowed {
		verdict = "allow"
	}
	return verdict + " " + d.action + " on " + d.resource + " by " + d.by
}

func (r *Request) record(d decision) { r.decisions = append(r.decisions, d) }

// touched records that the request acted on the key arn.
func (r *Request) touched(arn string) {
	for _, k := range r.keys {
		if k == arn {
			return
		}
	}
	r.keys = append(r.keys, arn)
}

// action is the IAM action of the request's operation.
func (r *Request) action() string { return r.op.iamAction() }

// authorized reports whether the decisions recorded so far satisfy the
// operation's declared authorization: every required (action, resource
// kind) pair has its own allow decision and nothing was denied. It is
// the runner's fail-closed check, also made at proceed.
func (r *Request) authorized() bool {
	var few [8]bool
	var used []bool
	if len(r.decisions) > len(few) {
		used = make([]bool, len(r.decisions))
	} else {
		used = few[:len(r.decisions)]
	}
	for _, need := range r.op.requirements() {
		found := false
		for i, d := range r.decisions {
			if !used[i] && d.allowed && d.action == need.action && d.kind == need.kind {
				used[i], found = true, true
				break
			}
		}
		if !found {
			return false
		}
	}
	for _, d := range r.decisions {
		if !d.allowed {
			return false
		}
	}
	return true
}

// proceed is called by an operation right before it acts (touches a
// token or writes to the store). It fails closed if authorization is not
// complete, and stops a DryRun request there, having passed every check,
// as AWS answers it.
func (r *Request) proceed() error {
	if !r.authorized() {
		return errUnauthorized
	}
	if r.DryRun {
		return dryRun()
	}
	return nil
}

func dryRun() error {
	return wire.Errorf(wire.DryRunOperation, "The request would have succeeded, but the DryRun option is set.")
}

// logDecisions renders the decisions for the request's log line.
func (r *Request) logDecisions() string {
	parts := make([]string, len(r.decisions))
	for i, d := range r.decisions {
		parts[i] = d.String()
	}
	return strings.Join(parts, "; ")
}
