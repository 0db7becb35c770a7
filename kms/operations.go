package kms

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/hsmkms/hsmkms/kms/wire"
)

// The operation table: every operation of the KMS API, with its handler
// and its contract. The runner (Service.route) enforces the contract, so a
// handler cannot forget it:
//
//   - auth says how the operation is authorized; the runner authorizes
//     key-less operations itself before the handler runs, and after the
//     handler returns it checks that the decisions the contract requires
//     were taken and all allowed (Request.authorized). A handler that
//     returns success without them is answered AccessDeniedException and
//     logged as a server bug: authorization fails closed.
//   - crossAccount: whether a key of another account may be named.
//   - grantable: whether a grant can allow the operation's actions; the
//     set of grant operations CreateGrant accepts is derived from it.
//   - states: which key states allow it, applied to the key the request
//     names after authorization (Service.key) and again inside the write
//     transaction (Service.update).
//   - aliases: whether its KeyId may name an alias.
//   - origin: the key origin the operation needs, if any; checked after
//     the key state, as AWS checks a key's type after its state.
//   - readOnly: CloudTrail's readOnly for the operation's events. A call
//     of an operation that is not read-only gets a durable intent record
//     in the audit trail before its handler runs (see auditing.go): no
//     state changes without a record of the call that changed it.
//   - tracked: a successful call counts as the key's last use
//     (GetKeyLastUsage), for both keys of a ReEncrypt.
//   - Operations without a handler are authorized like the real call and
//     then answer UnsupportedOperationException.
//
// Whether an operation takes GrantTokens and DryRun is not declared: the
// runner reads them from any input that has them, and a test checks the
// inputs against the AWS model.

// authKind is how an operation is authorized.
type authKind int

const (
	// authKeyless: by the caller's identity policy alone, on resource "*".
	authKeyless authKind = iota
	// authKey: on the key the request names (or, for Decrypt, the
	// ciphertext names), by key policy, identity policy and grants.
	authKey
	// authAlias: on the alias (identity policy) and on each key the alias
	// names before and after the call (key policy), as AWS requires for
	// CreateAlias, UpdateAlias and DeleteAlias.
	authAlias
	// authCreateKey: by the identity policy on "*", with the condition
	// keys of the key to be made.
	authCreateKey
	// authRetireGrant: by the grant being retired (its retiring principal,
	// its grantee if it allows RetireGrant, or its key's account).
	authRetireGrant
)

// handler runs an operation: it decodes body and does the work. input
// makes an empty input value, so tests can check the inputs against the
// model.
type handler struct {
	run   func(ctx context.Context, r *Request, body []byte) (any, error)
	input func() any
}

type operation struct {
	name   string
	handle *handler // nil: authorized, then UnsupportedOperationException
	auth   authKind
	// actions are the IAM actions checked on keys, when not "kms:"+name
	// (ReEncrypt's kms:ReEncryptFrom and kms:ReEncryptTo).
	actions []string
	// aliasKeys is how many key decisions an alias operation needs: the
	// new target (CreateAlias), the old and the new (UpdateAlias), or the
	// current one (DeleteAlias).
	aliasKeys int
	// also are decisions required besides those on keys (ReplicateKey's
	// kms:CreateKey in the replica Region).
	also         []requirement
	crossAccount bool
	grantable    bool
	aliases      bool
	states       stateRule
	origin       string
	readOnly     bool
	tracked      bool

	// action and requires are "kms:"+name and required(), computed once
	// when the table is built (every request reads them); iamAction and
	// requirements fall back to computing them for a row built elsewhere.
	action   string
	requires []requirement
}

// iamAction is the operation's own IAM action, "kms:"+name.
func (op *operation) iamAction() string {
	if op.action == "" {
		return "kms:" + op.name
	}
	return op.action
}

// requirements is required(), computed once.
func (op *operation) requirements() []requirement {
	if op.requires == nil {
		return op.required()
	}
	return op.requires
}

// requirement is one authorization decision an operation's contract
// requires.
type requirement struct {
	action string
	kind   resourceKind
}

// required lists the decisions the operation's contract requires.
func (op *operation) required() []requirement {
	switch op.auth {
	case authKeyless, authCreateKey:
		return []requirement{{"kms:" + op.name, onNothing}}
	case authAlias:
		out := []requirement{{"kms:" + op.name, onAlias}}
		for range op.aliasKeys {
			out = append(out, requirement{"kms:" + op.name, onKey})
		}
		return out
	}
	var out []requirement
	for _, a := range op.keyActions() {
		out = append(out, requirement{a, onKey})
	}
	return append(out, op.also...)
}

// keyActions are the IAM actions authorized on keys.
func (op *operation) keyActions() []string {
	if op.actions != nil {
		return op.actions
	}
	return []string{"kms:" + op.name}
}

// operations is the table, built once per Service because handlers are
// its methods.
func (s *Service) operations() []*operation {
	crypto := func(name string, h *handler) *operation {
		return &operation{name: name, handle: h, auth: authKey, crossAccount: true, grantable: true, aliases: true, states: usable, readOnly: true}
	}
	// tracked marks an operation whose success is a key's last use:
	// exactly AWS's KeyLastUsageTrackingOperation values.
	tracked := func(op *operation) *operation {
		op.tracked = true
		return op
	}
	keyless := func(name string, h *handler) *operation {
		return &operation{name: name, handle: h, auth: authKeyless}
	}
	onKeyOp := func(name string, h *handler, states stateRule) *operation {
		return &operation{name: name, handle: h, auth: authKey, states: states}
	}
	reEncrypt := crypto("ReEncrypt", typed(s.ReEncrypt))
	reEncrypt.actions = []string{"kms:ReEncryptFrom", "kms:ReEncryptTo"}
	reEncrypt.aliases = true
	describe := onKeyOp("DescribeKey", typed(s.DescribeKey), anyState)
	describe.crossAccount, describe.grantable, describe.aliases = true, true, true
	createGrant := onKeyOp("CreateGrant", typed(s.CreateGrant), manageable)
	createGrant.crossAccount, createGrant.grantable = true, true
	crossRead := func(name string, h *handler) *operation {
		op := onKeyOp(name, h, anyState)
		op.crossAccount = true
		return op
	}
	// ReplicateKey: kms:ReplicateKey on the primary (key policy) and
	// kms:CreateKey in the replica Region (identity policy).
	// UpdatePrimaryRegion: kms:UpdatePrimaryRegion on the primary and on
	// the replica that becomes primary, as AWS documents them.
	replicate := onKeyOp("ReplicateKey", typed(s.ReplicateKey), enableDisable)
	replicate.also = []requirement{{"kms:CreateKey", onNothing}}
	updatePrimary := onKeyOp("UpdatePrimaryRegion", typed(s.UpdatePrimaryRegion), enableDisable)
	updatePrimary.actions = []string{"kms:UpdatePrimaryRegion", "kms:UpdatePrimaryRegion"}
	// needs sets the key origin an operation needs: rotation is for keys
	// whose material AWS KMS made, import for EXTERNAL ones.
	needs := func(origin string, op *operation) *operation {
		op.origin = origin
		return op
	}
	ops := []*operation{
		// Keys.
		{name: "CreateKey", handle: typed(s.CreateKey), auth: authCreateKey},
		describe,
		keyless("ListKeys", typed(s.ListKeys)),
		onKeyOp("EnableKey", typed(s.EnableKey), enableDisable),
		onKeyOp("DisableKey", typed(s.DisableKey), enableDisable),
		onKeyOp("UpdateKeyDescription", typed(s.UpdateKeyDescription), manageable),
		onKeyOp("ScheduleKeyDeletion", typed(s.ScheduleKeyDeletion), schedulable),
		onKeyOp("CancelKeyDeletion", typed(s.CancelKeyDeletion), pendingDeletion),
		// Aliases.
		{name: "CreateAlias", handle: typed(s.CreateAlias), auth: authAlias, aliasKeys: 1, states: manageable},
		{name: "UpdateAlias", handle: typed(s.UpdateAlias), auth: authAlias, aliasKeys: 2, states: manageable},
		{name: "DeleteAlias", handle: typed(s.DeleteAlias), auth: authAlias, aliasKeys: 1, states: anyState},
		keyless("ListAliases", typed(s.ListAliases)),
		// Tags and policies.
		onKeyOp("TagResource", typed(s.TagResource), manageable),
		onKeyOp("UntagResource", typed(s.UntagResource), manageable),
		onKeyOp("ListResourceTags", typed(s.ListResourceTags), anyState),
		onKeyOp("GetKeyPolicy", typed(s.GetKeyPolicy), anyState),
		onKeyOp("PutKeyPolicy", typed(s.PutKeyPolicy), anyState),
		onKeyOp("ListKeyPolicies", typed(s.ListKeyPolicies), anyState),
		// Cryptography.
		tracked(crypto("Encrypt", typed(s.Encrypt))),
		tracked(crypto("Decrypt", typed(s.Decrypt))),
		tracked(reEncrypt),
		tracked(crypto("GenerateDataKey", typed(s.GenerateDataKey))),
		tracked(crypto("GenerateDataKeyWithoutPlaintext", typed(s.GenerateDataKeyWithoutPlaintext))),
		tracked(crypto("GenerateDataKeyPair", typed(s.GenerateDataKeyPair))),
		tracked(crypto("GenerateDataKeyPairWithoutPlaintext", typed(s.GenerateDataKeyPairWithoutPlaintext))),
		tracked(crypto("Sign", typed(s.Sign))),
		tracked(crypto("Verify", typed(s.Verify))),
		crypto("GetPublicKey", typed(s.GetPublicKey)),
		tracked(crypto("GenerateMac", typed(s.GenerateMac))),
		tracked(crypto("VerifyMac", typed(s.VerifyMac))),
		tracked(crypto("DeriveSharedSecret", typed(s.DeriveSharedSecret))),
		keyless("GenerateRandom", typed(s.GenerateRandom)),
		// Rotation.
		needs(originAWSKMS, onKeyOp("EnableKeyRotation", typed(s.EnableKeyRotation), rotating)),
		needs(originAWSKMS, onKeyOp("DisableKeyRotation", typed(s.DisableKeyRotation), rotating)),
		needs(originAWSKMS, crossRead("GetKeyRotationStatus", typed(s.GetKeyRotationStatus))),
		needs(originRotatable, onKeyOp("RotateKeyOnDemand", typed(s.RotateKeyOnDemand), rotating)),
		needs(originRotatable, onKeyOp("ListKeyRotations", typed(s.ListKeyRotations), anyState)),
		// Grants.
		createGrant,
		crossRead("ListGrants", typed(s.ListGrants)),
		keyless("ListRetirableGrants", typed(s.ListRetirableGrants)),
		{name: "RetireGrant", handle: typed(s.RetireGrant), auth: authRetireGrant, crossAccount: true, grantable: true},
		crossRead("RevokeGrant", typed(s.RevokeGrant)),
		// Custom key stores.
		keyless("CreateCustomKeyStore", typed(s.CreateCustomKeyStore)),
		keyless("DescribeCustomKeyStores", typed(s.DescribeCustomKeyStores)),
		keyless("ConnectCustomKeyStore", typed(s.ConnectCustomKeyStore)),
		keyless("DisconnectCustomKeyStore", typed(s.DisconnectCustomKeyStore)),
		keyless("UpdateCustomKeyStore", typed(s.UpdateCustomKeyStore)),
		keyless("DeleteCustomKeyStore", typed(s.DeleteCustomKeyStore)),
		// Usage.
		onKeyOp("GetKeyLastUsage", typed(s.GetKeyLastUsage), anyState),
		// Importing key material: EXTERNAL keys only.
		needs(originExternal, onKeyOp("GetParametersForImport", typed(s.GetParametersForImport), manageable)),
		needs(originExternal, onKeyOp("ImportKeyMaterial", typed(s.ImportKeyMaterial), manageable)),
		needs(originExternal, onKeyOp("DeleteImportedKeyMaterial", typed(s.DeleteImportedKeyMaterial), importedMaterial)),
		// Multi-Region keys.
		replicate,
		updatePrimary,
	}
	// CloudTrail marks the reads read-only: Describe*, Get*, List*, and
	// GenerateRandom, besides the cryptographic operations.
	for _, op := range ops {
		for _, p := range []string{"Describe", "Get", "List"} {
			if strings.HasPrefix(op.name, p) {
				op.readOnly = true
			}
		}
	}
	s.op0(ops, "GenerateRandom").readOnly = true
	for _, op := range ops {
		op.action = "kms:" + op.name
		op.requires = op.required()
	}
	return ops
}

// op0 is the row of ops named name.
func (s *Service) op0(ops []*operation, name string) *operation {
	for _, o := range ops {
		if o.name == name {
			return o
		}
	}
	panic("kms: no operation " + name)
}

// errUnauthorized is what proceed and the runner return for a request
// whose operation did not take the decisions its contract requires: a bug
// in hsmkms, answered as a denial.
var errUnauthorized = errors.New("kms: operation acted without the authorization its contract requires")

// route runs op for one request: it builds the Request, authorizes a
// key-less operation, runs the handler, enforces the contract on what
// comes back, and writes the call's audit record before the answer goes
// out (auditing.go).
func (s *Service) route(op *operation) wire.Route {
	return wire.Route{Handle: func(ctx context.Context, c *wire.Call, body []byte) (any, error) {
		caller, _ := c.Identity.(Caller)
		r := &Request{ID: c.RequestID, op: op, Caller: caller, SourceIP: c.SourceIP, Secure: c.Secure, UserAgent: c.UserAgent,
			start: s.now(), tls: c.TLS, host: c.Host}
		if !op.readOnly && s.trail != nil {
			r.intent = func() error { return s.writeIntent(ctx, r) }
		}
		defer func() {
			c.Log("principal", caller.PrincipalARN, "key", strings.Join(r.keys, ","), "authz", r.logDecisions())
		}()
		s.calls.Add(1)
		defer s.calls.Add(-1)
		out, err := s.run(ctx, r, body)
		return s.audited(ctx, r, out, err)
	}}
}

// run authorizes and runs the request's operation.
func (s *Service) run(ctx context.Context, r *Request, body []byte) (any, error) {
	op := r.op
	if r.Caller.PrincipalARN == "" {
		// Authentication names every caller; an identity without one
		// is a wiring bug, refused rather than run as nobody.
		s.log.Error("server bug: request without a caller", "operation", op.name, "request_id", r.ID)
		return nil, s.accessDenied(r)
	}
	run := s.unsupported
	if op.handle != nil {
		run = op.handle.run
	}
	if op.auth == authKeyless {
		if err := s.authorizeIdentity(ctx, r, nil, r.action(), "*", onNothing); err != nil {
			return nil, err
		}
	}
	out, err := run(ctx, r, body)
	if mapped := dependencyError(err); mapped != err {
		s.log.Warn("request timed out waiting for a dependency", "operation", op.name, "request_id", r.ID, "error", err)
		err = mapped
	}
	if errors.Is(err, errUnauthorized) || (err == nil && !r.authorized()) {
		s.log.Error("server bug: operation returned without the authorization its contract requires",
			"operation", op.name, "request_id", r.ID, "authz", r.logDecisions())
		return nil, s.accessDenied(r)
	}
	return out, err
}

// dependencyError answers a request that timed out waiting for what the
// service depends on (the metadata database, mostly: the token's timeouts
// are tokenError's) as AWS does, with DependencyTimeoutException (503,
// retried by the SDKs). Other failures of the database stay errors the
// wire layer answers with KMSInternalException (500), as AWS answers an
// internal failure; an AWS exception passes unchanged.
func dependencyError(err error) error {
	var we *wire.Error
	if err == nil || errors.As(err, &we) {
		return err
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return wire.Errorf(wire.DependencyTimeout, "The system timed out while trying to fulfill the request. The request can be retried.")
	}
	return err
}

// accessDenied is the answer to a request that fails closed.
func (s *Service) accessDenied(r *Request) error {
	return wire.Errorf(wire.AccessDenied, "User: %s is not authorized to perform: %s", r.Caller.PrincipalARN, r.action())
}

// unsupported answers an operation hsmkms does not implement yet, once the
// caller is authorized for it on the key it names, with AWS's
// UnsupportedOperationException: never a fake success. The README's
// support table lists them.
func (s *Service) unsupported(ctx context.Context, r *Request, body []byte) (any, error) {
	var in struct{ KeyId string }
	if err := wire.Decode(body, &in); err != nil {
		return nil, err
	}
	if err := r.decoded(&in); err != nil {
		return nil, err
	}
	if _, err := s.key(ctx, r, in.KeyId, access{}); err != nil {
		return nil, err
	}
	return nil, wire.Errorf(wire.UnsupportedOperation, "%s is not supported by hsmkms.", r.op.name)
}

// grantTokens and dryRunner are implemented by the inputs that carry those
// members, by embedding GrantTokensField and DryRunField.
type grantTokens interface{ grantTokens() []string }
type dryRunner interface{ dryRun() bool }

// GrantTokensField is the GrantTokens member of an input.
type GrantTokensField struct {
	GrantTokens []string
}

func (g GrantTokensField) grantTokens() []string { return g.GrantTokens }

// DryRunField is the DryRun member of an input.
type DryRunField struct {
	DryRun bool
}

func (d DryRunField) dryRun() bool { return d.DryRun }

// typed adapts an operation written against Go types to a handler: it
// decodes the body and copies the members the runner owns (GrantTokens,
// DryRun) onto the Request.
func typed[In, Out any](fn func(context.Context, *Request, *In) (*Out, error)) *handler {
	return &handler{input: func() any { return new(In) }, run: func(ctx context.Context, r *Request, body []byte) (any, error) {
		in := new(In)
		if err := wire.Decode(body, in); err != nil {
			return nil, err
		}
		if g, ok := any(in).(grantTokens); ok {
			r.GrantTokens = g.grantTokens()
		}
		if d, ok := any(in).(dryRunner); ok {
			r.DryRun = d.dryRun()
		}
		if err := r.decoded(in); err != nil {
			return nil, err
		}
		out, err := fn(ctx, r, in)
		if err != nil {
			return nil, err
		}
		return out, nil
	}}
}

// op returns the table's row for name, or nil.
func (s *Service) op(name string) *operation { return s.opsByName[name] }
