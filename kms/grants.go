package kms

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"slices"
	"strings"

	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
// RevokeGrant, and grantAllows, which the authorizer asks whether a grant
// lets a principal perform an operation on a key.
//
// hsmkms grants are strongly consistent: a grant is usable as soon as
// CreateGrant returns, so grant tokens carry no authority of their own;
// they are checked for form (as AWS does) and name their grant for
// RetireGrant.

// maxGrantsPerKey is AWS's "Grants per KMS key" quota (50,000, Resource
// quotas in the KMS Developer Guide). A variable so tests can lower it.
var maxGrantsPerKey = 50000

// Encryption context constraints: at most 8 pairs each, values at most 384
// characters (CreateGrant, Constraints, in the KMS API Reference).
const (
	maxConstraintPairs = 8
	maxConstraintValue = 384
)

// Grant operations by key type. AWS refuses a grant for an operation the
// key does not support (CreateGrant, in the KMS API Reference).
var (
	grantOpsAnyKey    = []string{"DescribeKey", "CreateGrant", "RetireGrant"}
	grantOpsSymmetric = []string{"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GenerateDataKey",
		"GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"}
	grantOpsByUsage = map[string][]string{
		"ENCRYPT_DECRYPT":     {"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey"}, // asymmetric
		"SIGN_VERIFY":         {"Sign", "Verify", "GetPublicKey"},
		"GENERATE_VERIFY_MAC": {"GenerateMac", "VerifyMac"},
		"KEY_AGREEMENT":       {"DeriveSharedSecret", "GetPublicKey"},
	}
	// ecOperations take an encryption context: the only operations grant
	// constraints apply to (GrantConstraints, in the KMS API Reference).
	ecOperations = []string{"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GenerateDataKey",
		"GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"}
)

// grantOperationsFor is what a grant on k may allow.
func grantOperationsFor(k *store.Key) []string {
	if k.KeySpec == specSymmetric {
		return slices.Concat(grantOpsAnyKey, grantOpsSymmetric)
	}
	return slices.Concat(grantOpsAnyKey, grantOpsByUsage[k.KeyUsage])
}

// principalAccount returns the account of a well-formed principal ARN (a
// grantee or retiring principal), by authz's one principal grammar.
func principalAccount(p string) (string, bool) {
	pa, ok := authz.ParsePrincipalARN(p)
	return pa.Account, ok
}

func invalidPrincipal(p string) error {
	return wire.Errorf(wire.InvalidArn, "ARN does not refer to a valid principal: %s", p)
}

// principalsFor are the grantee principals that stand for caller: itself,
// its account, and for an assumed-role session the role (without a path,
// which the session ARN does not carry).
func principalsFor(caller string) []string {
	out := []string{caller}
	pa, ok := authz.ParsePrincipalARN(caller)
	if !ok {
		return out
	}
	out = append(out, accountRoot(pa.Account))
	if pa.Type == authz.AssumedRole {
		out = append(out, "arn:aws:iam::"+pa.Account+":role/"+pa.Role)
	}
	return out
}

func accountRoot(account string) string { return "arn:aws:iam::" + account + ":root" }

// grantNames reports how a grant's principal p (grantee or retiring)
// covers caller: directly (the caller, or the role of its session), or
// only through the caller's account (p is the account's root), which
// needs the account's IAM to pass it on.
func grantNames(p, caller string) (direct, viaAccount bool) {
	if p == "" {
		return false, false
	}
	for _, c := range principalsFor(caller) {
		if p == c {
			if strings.HasSuffix(p, ":root") && p != caller {
				return false, true
			}
			return true, false
		}
	}
	return false, false
}

// Grant ids are 32 random bytes in hex, the form of AWS grant ids.
const grantIDBytes = 32

func newGrantID() string {
	var b [grantIDBytes]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func validGrantID(id string) bool {
	if len(id) != 2*grantIDBytes {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// A grant token is base64url (no padding) of a version byte, the grant id
// and 32 random bytes: recognisable as hsmkms's, and not guessable from
// the grant id that ListGrants shows.
const (
	grantTokenVersion = 0x01
	grantTokenBytes   = 1 + grantIDBytes + 32
)

func newGrantToken(grantID string) string {
	b := make([]byte, 1, grantTokenBytes)
	b[0] = grantTokenVersion
	id, _ := hex.DecodeString(grantID)
	b = append(b, id...)
	b = append(b, make([]byte, 32)...)
	rand.Read(b[1+grantIDBytes:])
	return base64.RawURLEncoding.EncodeToString(b)
}

func validGrantToken(t string) bool {
	b, err := base64.RawURLEncoding.DecodeString(t)
	return err == nil && len(b) == grantTokenBytes && b[0] == grantTokenVersion
}

func invalidGrantToken() error {
	return wire.Errorf(wire.InvalidGrantToken, "Grant token is not valid.")
}

// checkGrantTokens returns InvalidGrantTokenException if any token is not
// one hsmkms issued (by form). A well-formed token of a grant that no longer
// exists is ignored, as AWS does: grants are found by principal, not token.
func checkGrantTokens(tokens []string) error {
	for _, t := range tokens {
		if !validGrantToken(t) {
			return invalidGrantToken()
		}
	}
	return nil
}

func invalidGrantID(id string) error {
	return wire.Errorf(wire.InvalidGrantID, "Invalid grant ID: %s", id)
}

func grantNotFound(id string) error {
	return wire.Errorf(wire.NotFound, "Grant ID %s not found", id)
}

// ecConstraint is an encryption context constraint with its keys folded
// to lower case: AWS matches constraint keys case-insensitively and values
// exactly (GrantConstraints, in the KMS API Reference).
type ecConstraint map[string]string

func foldKeys(m map[string]string) ecConstraint {
	if m == nil {
		return nil
	}
	out := make(ecConstraint, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}

// contains reports whether every pair of sub is in c.
func (c ecConstraint) contains(sub ecConstraint) bool {
	for k, v := range sub {
		if got, ok := c[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (c ecConstraint) equals(o ecConstraint) bool { return len(c) == len(o) && c.contains(o) }

// constraintsMatch reports whether ec satisfies the grant's constraints.
func constraintsMatch(gc store.GrantConstraints, ec map[string]string) bool {
	req := foldKeys(ec)
	if eq := foldKeys(gc.EncryptionContextEquals); eq != nil && !req.equals(eq) {
		return false
	}
	if sub := foldKeys(gc.EncryptionContextSubset); sub != nil && !req.contains(sub) {
		return false
	}
	return true
}

// atLeastAsStrict reports whether every encryption context child accepts,
// parent accepts too: what a grantee with a constrained CreateGrant grant
// may create ("an equally strict or stricter encryption context
// constraint").
func atLeastAsStrict(child, parent store.GrantConstraints) bool {
	ceq, csub := foldKeys(child.EncryptionContextEquals), foldKeys(child.EncryptionContextSubset)
	if peq := foldKeys(parent.EncryptionContextEquals); peq != nil && (ceq == nil || !ceq.equals(peq)) {
		return false
	}
	if psub := foldKeys(parent.EncryptionContextSubset); psub != nil {
		if !(ceq != nil && ceq.contains(psub)) && !(csub != nil && csub.contains(psub)) {
			return false
		}
	}
	return true
}

func constraintTypes(gc store.GrantConstraints) []string {
	var out []string
	if gc.EncryptionContextEquals != nil {
		out = append(out, "EncryptionContextEquals")
	}
	if gc.EncryptionContextSubset != nil {
		out = append(out, "EncryptionContextSubset")
	}
	return out
}

// grantAllows returns the id of a grant on key k that lets principalARN
// perform op (an operation name like "Decrypt", not "kms:Decrypt") given the
// request's encryption context ec, or "" if none does. Constraints apply only
// to operations that take an encryption context; for the others (DescribeKey,
// RetireGrant, CreateGrant itself, Sign, …) a constrained grant allows as an
// unconstrained one does, as AWS documents. A CreateGrant so allowed is then
// held to the grant's constraints by CreateGrant (c.Grant).
//
// viaAccount reports that the grant names the caller's account
// (arn:aws:iam::<account>:root) rather than the caller: as with a key
// policy that delegates to an account, the caller's identity policy must
// then allow the operation too. A grant naming the caller is preferred.
func (s *Service) grantAllows(ctx context.Context, k *store.Key, principalARN, op string, ec map[string]string) (id string, viaAccount bool, err error) {
	grants, err := s.store.GrantsFor(ctx, k.Account, k.Region, k.ID, principalsFor(principalARN))
	if err != nil {
		return "", false, err
	}
	takesEC := slices.Contains(ecOperations, op)
	for _, g := range grants {
		if !slices.Contains(g.Operations, op) {
			continue
		}
		if takesEC && !constraintsMatch(g.Constraints, ec) {
			continue
		}
		direct, via := grantNames(g.GranteePrincipal, principalARN)
		if direct {
			return g.GrantID, false, nil
		}
		if via && id == "" {
			id, viaAccount = g.GrantID, true
		}
	}
	return id, viaAccount, nil
}

type GrantConstraints struct {
	EncryptionContextEquals map[string]string `json:"EncryptionContextEquals,omitempty"`
	EncryptionContextSubset map[string]string `json:"EncryptionContextSubset,omitempty"`
}

type CreateGrantInput struct {
	KeyId             string
	GranteePrincipal  string
	RetiringPrincipal string
	Operations        []string
	Constraints       *GrantConstraints
	Name              string
	GrantTokensField
	DryRunField
}

type CreateGrantOutput struct {
	GrantId    string
	GrantToken string
}

func (s *Service) CreateGrant(ctx context.Context, r *Request, in *CreateGrantInput) (*CreateGrantOutput, error) {
	var gc store.GrantConstraints
	if in.Constraints != nil {
		// An empty map is no constraint.
		if len(in.Constraints.EncryptionContextEquals) > 0 {
			gc.EncryptionContextEquals = in.Constraints.EncryptionContextEquals
		}
		if len(in.Constraints.EncryptionContextSubset) > 0 {
			gc.EncryptionContextSubset = in.Constraints.EncryptionContextSubset
		}
	}
	ops := slices.Compact(slices.Sorted(slices.Values(in.Operations)))
	cond := conditions("kms:GranteePrincipal", in.GranteePrincipal, "kms:GrantIsForAWSResource", "false")
	cond.Set("kms:GrantOperations", ops...)
	if in.RetiringPrincipal != "" {
		cond.Set("kms:RetiringPrincipal", in.RetiringPrincipal)
	}
	if t := constraintTypes(gc); t != nil {
		cond.Set("kms:GrantConstraintType", t...)
	}
	if err := checkCreateGrantInput(in, ops, gc); err != nil {
		return nil, err
	}
	k, err := s.key(ctx, r, in.KeyId, access{cond: cond})
	if err != nil {
		return nil, err
	}
	allowed := grantOperationsFor(k)
	var bad []string
	for _, op := range ops {
		if !slices.Contains(allowed, op) {
			bad = append(bad, op)
		}
	}
	if bad != nil {
		return nil, wire.Errorf(wire.Validation, "Grant operations [%s] are not valid for KMS key %s with KeySpec %s and KeyUsage %s.",
			strings.Join(bad, ", "), arnOf(k), k.KeySpec, k.KeyUsage)
	}
	if (gc.EncryptionContextEquals != nil || gc.EncryptionContextSubset != nil) && k.KeySpec != specSymmetric {
		return nil, wire.Errorf(wire.Validation, "Grant constraints are not supported for KMS key %s: only symmetric encryption keys take an encryption context.", arnOf(k))
	}
	if r.grant != "" {
		if err := s.checkNarrower(ctx, r.grant, k, ops, gc); err != nil {
			return nil, err
		}
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	id := newGrantID()
	g, err := s.store.CreateGrant(ctx, &store.Grant{
		Account: k.Account, Region: k.Region, KeyID: k.ID, GrantID: id, GrantToken: newGrantToken(id),
		Name: in.Name, GranteePrincipal: in.GranteePrincipal, RetiringPrincipal: in.RetiringPrincipal,
		IssuingAccount: accountRoot(r.Caller.Account), Operations: ops, Constraints: gc,
		CreationDate: s.now().UTC(),
	}, maxGrantsPerKey)
	switch {
	case errors.Is(err, store.ErrLimitExceeded):
		return nil, wire.Errorf(wire.LimitExceeded, "The request was rejected because a quota was exceeded. You can have at most %d grants per KMS key.", maxGrantsPerKey)
	case errors.Is(err, store.ErrNotFound):
		return nil, keyNotFound(k.Region, k.Account, k.ID)
	case err != nil:
		return nil, err
	}
	return &CreateGrantOutput{GrantId: g.GrantID, GrantToken: g.GrantToken}, nil
}

// checkCreateGrantInput applies the rules that need no key.
func checkCreateGrantInput(in *CreateGrantInput, ops []string, gc store.GrantConstraints) error {
	if len(ops) == 0 {
		return wire.Errorf(wire.Validation, "1 validation error detected: Value '[]' at 'operations' failed to satisfy constraint: Member must have length greater than or equal to 1")
	}
	if _, ok := principalAccount(in.GranteePrincipal); !ok {
		return invalidPrincipal(in.GranteePrincipal)
	}
	if in.RetiringPrincipal != "" {
		if _, ok := principalAccount(in.RetiringPrincipal); !ok {
			return invalidPrincipal(in.RetiringPrincipal)
		}
	}
	for _, m := range []map[string]string{gc.EncryptionContextEquals, gc.EncryptionContextSubset} {
		if len(m) > maxConstraintPairs {
			return wire.Errorf(wire.Validation, "A grant constraint can include at most %d encryption context pairs.", maxConstraintPairs)
		}
		for _, v := range m {
			if len(v) > maxConstraintValue {
				return wire.Errorf(wire.Validation, "An encryption context value in a grant constraint cannot exceed %d characters.", maxConstraintValue)
			}
		}
	}
	return checkGrantTokens(in.GrantTokens)
}

// checkNarrower holds a CreateGrant allowed by grant parentID to the
// parent's permissions: "the grantee can create grants with the same or
// fewer permissions", with constraints at least as strict.
func (s *Service) checkNarrower(ctx context.Context, parentID string, k *store.Key, ops []string, gc store.GrantConstraints) error {
	denied := wire.Errorf(wire.AccessDenied, "A grant can only create grants with the same or fewer operations and equally strict or stricter constraints.")
	parent, err := s.store.GetGrant(ctx, parentID)
	if errors.Is(err, store.ErrNotFound) {
		return denied
	}
	if err != nil {
		return err
	}
	if parent.Account != k.Account || parent.Region != k.Region || parent.KeyID != k.ID {
		return denied
	}
	for _, op := range ops {
		if !slices.Contains(parent.Operations, op) {
			return denied
		}
	}
	if !atLeastAsStrict(gc, parent.Constraints) {
		return denied
	}
	return nil
}

type GrantListEntry struct {
	KeyId             string
	GrantId           string
	Name              string `json:"Name,omitempty"`
	CreationDate      wire.Time
	GranteePrincipal  string
	RetiringPrincipal string `json:"RetiringPrincipal,omitempty"`
	IssuingAccount    string
	Operations        []string
	Constraints       *GrantConstraints `json:"Constraints,omitempty"`
}

type ListGrantsInput struct {
	KeyId            string
	GrantId          string
	GranteePrincipal string
	Limit            int
	Marker           string
}

type ListGrantsOutput struct {
	Grants     []GrantListEntry
	NextMarker string `json:"NextMarker,omitempty"`
	Truncated  bool
}

// grantsLimit applies the grant lists' page size: default 50, at most 100.
func grantsLimit(n int) int {
	if n <= 0 {
		return 50
	}
	return min(n, 100)
}

func listEntries(gs []*store.Grant, next string) *ListGrantsOutput {
	out := &ListGrantsOutput{Grants: make([]GrantListEntry, 0, len(gs)), NextMarker: next, Truncated: next != ""}
	for _, g := range gs {
		e := GrantListEntry{
			KeyId: keyARN(g.Region, g.Account, g.KeyID), GrantId: g.GrantID, Name: g.Name,
			CreationDate: wire.Time(g.CreationDate), GranteePrincipal: g.GranteePrincipal,
			RetiringPrincipal: g.RetiringPrincipal, IssuingAccount: g.IssuingAccount, Operations: g.Operations,
		}
		if g.Constraints.EncryptionContextEquals != nil || g.Constraints.EncryptionContextSubset != nil {
			e.Constraints = &GrantConstraints{
				EncryptionContextEquals: g.Constraints.EncryptionContextEquals,
				EncryptionContextSubset: g.Constraints.EncryptionContextSubset,
			}
		}
		out.Grants = append(out.Grants, e)
	}
	return out
}

func (s *Service) ListGrants(ctx context.Context, r *Request, in *ListGrantsInput) (*ListGrantsOutput, error) {
	if in.GrantId != "" && !validGrantID(in.GrantId) {
		return nil, invalidGrantID(in.GrantId)
	}
	k, err := s.key(ctx, r, in.KeyId, access{cond: conditions("kms:GrantIsForAWSResource", "false")})
	if err != nil {
		return nil, err
	}
	gs, next, err := s.store.ListGrants(ctx, k.Account, k.Region, k.ID, in.GrantId, in.GranteePrincipal, in.Marker, grantsLimit(in.Limit))
	if err != nil {
		return nil, listError(err)
	}
	return listEntries(gs, next), nil
}

type ListRetirableGrantsInput struct {
	RetiringPrincipal string
	Limit             int
	Marker            string
}

// ListRetirableGrants lists the grants of the caller's region, on keys of
// any account, that RetiringPrincipal may retire. The principal must be in
// the caller's account, as AWS requires: another account's retirable grants
// are that account's business.
func (s *Service) ListRetirableGrants(ctx context.Context, r *Request, in *ListRetirableGrantsInput) (*ListGrantsOutput, error) {
	acct, ok := principalAccount(in.RetiringPrincipal)
	if !ok {
		return nil, invalidPrincipal(in.RetiringPrincipal)
	}
	if acct != r.Caller.Account {
		return nil, wire.Errorf(wire.AccessDenied, "The retiring principal %s is not in your account %s.", in.RetiringPrincipal, r.Caller.Account)
	}
	gs, next, err := s.store.ListRetirableGrants(ctx, r.Caller.Region, in.RetiringPrincipal, in.Marker, grantsLimit(in.Limit))
	if err != nil {
		return nil, listError(err)
	}
	return listEntries(gs, next), nil
}

type RetireGrantInput struct {
	GrantToken string
	KeyId      string
	GrantId    string
	DryRunField
}

// RetireGrant deletes a grant named by its token, or by key and grant id.
// Who may retire is decided by the grant (authorizeRetire). The key may be
// another account's, so it is not resolved as the caller's.
func (s *Service) RetireGrant(ctx context.Context, r *Request, in *RetireGrantInput) (*Empty, error) {
	var g *store.Grant
	var err error
	switch {
	case in.GrantToken != "":
		if !validGrantToken(in.GrantToken) {
			return nil, invalidGrantToken()
		}
		g, err = s.store.GetGrantByToken(ctx, in.GrantToken)
		if isNotFound(err) {
			return nil, wire.Errorf(wire.NotFound, "Grant not found for the specified grant token.")
		}
	case in.KeyId != "" && in.GrantId != "":
		var ref keyRef
		ref, err = parseKeyID(r, in.KeyId, false)
		if err != nil {
			return nil, err
		}
		if !validGrantID(in.GrantId) {
			return nil, invalidGrantID(in.GrantId)
		}
		g, err = s.store.GetGrant(ctx, in.GrantId)
		if isNotFound(err) || (err == nil && (g.Account != ref.Account || g.Region != ref.Region || g.KeyID != ref.ID)) {
			return nil, grantNotFound(in.GrantId)
		}
	default:
		return nil, wire.Errorf(wire.Validation, "Either GrantToken, or both KeyId and GrantId, must be specified.")
	}
	if err != nil {
		return nil, err
	}
	if err := s.authorizeRetire(ctx, r, g); err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	if err := s.store.DeleteGrant(ctx, g.GrantID); isNotFound(err) {
		return nil, grantNotFound(g.GrantID)
	} else if err != nil {
		return nil, err
	}
	return &Empty{}, nil
}

// authorizeRetire is AWS's rule for RetireGrant ("Retiring and revoking
// grants", KMS Developer Guide): the grant decides. The caller may retire
// it if it is the grant's retiring principal, or its grantee and the grant
// allows RetireGrant, or the root user of the key's account. A principal
// of the account a grant names by its root (the key's account, a retiring
// account, a grantee account) may retire it when its identity policy
// allows kms:RetireGrant: the account delegating, as AWS allows. An
// explicit Deny of kms:RetireGrant in the caller's identity policy wins.
// Key policies play no part. The decision is recorded on r.
func (s *Service) authorizeRetire(ctx context.Context, r *Request, g *store.Grant) error {
	keyARN := keyARN(g.Region, g.Account, g.KeyID)
	r.touched(keyARN)
	caller := r.Caller.PrincipalARN
	in := s.decisionInput(ctx, r, nil, r.action(), keyARN, func() authz.Context { return nil }, nil)
	ident := authz.Decide(in)
	by := ""
	if !ident.ExplicitDeny {
		retiring, retiringAccount := grantNames(g.RetiringPrincipal, caller)
		grantee, granteeAccount := grantNames(g.GranteePrincipal, caller)
		if !slices.Contains(g.Operations, "RetireGrant") {
			grantee, granteeAccount = false, false
		}
		keyAccount := r.Caller.Account == g.Account
		switch {
		case retiring:
			by = "grant " + g.GrantID + " (retiring principal)"
		case grantee:
			by = "grant " + g.GrantID + " (grantee allowed RetireGrant)"
		case caller == accountRoot(g.Account):
			by = "grant " + g.GrantID + " (the key's account)"
		case (keyAccount || retiringAccount || granteeAccount) && ident.Allowed:
			by = "grant " + g.GrantID + " (account delegates by " + ident.By + ")"
		}
	}
	if by == "" {
		why := "because no grant allows it"
		if ident.ExplicitDeny {
			why = "with an explicit deny in an identity-based policy"
		}
		r.record(decision{action: r.action(), resource: keyARN, kind: onKey, by: "grant rules"})
		return wire.Errorf(wire.AccessDenied, "User: %s is not authorized to perform: kms:RetireGrant on resource: %s %s", caller, keyARN, why)
	}
	r.record(decision{action: r.action(), resource: keyARN, kind: onKey, allowed: true, by: by})
	return nil
}

type RevokeGrantInput struct {
	KeyId   string
	GrantId string
	DryRunField
}

func (s *Service) RevokeGrant(ctx context.Context, r *Request, in *RevokeGrantInput) (*Empty, error) {
	if !validGrantID(in.GrantId) {
		return nil, invalidGrantID(in.GrantId)
	}
	k, err := s.key(ctx, r, in.KeyId, access{cond: conditions("kms:GrantIsForAWSResource", "false")})
	if err != nil {
		return nil, err
	}
	g, err := s.store.GetGrant(ctx, in.GrantId)
	if errors.Is(err, store.ErrNotFound) || (err == nil && (g.Account != k.Account || g.Region != k.Region || g.KeyID != k.ID)) {
		return nil, grantNotFound(in.GrantId)
	}
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	if err := s.store.DeleteGrant(ctx, g.GrantID); errors.Is(err, store.ErrNotFound) {
		return nil, grantNotFound(g.GrantID)
	} else if err != nil {
		return nil, err
	}
	return &Empty{}, nil
}
