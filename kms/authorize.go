package kms

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// AdminPolicy is the identity policy of a principal allowed everything, as
// `serve --data-dir` gives its admin.
const AdminPolicy = `{"Version":"2012-10-17","Statement":[{"Sid":"Admin","Effect":"Allow","Action":"kms:*","Resource":"*"}]}`

// identity is a caller's identity policies, parsed, and the condition
// keys they test.
type identity struct {
	policies []*authz.Policy
	keys     []string
}

// parseIdentities parses each principal's identity policy; a principal
// without one has none, and so only what key policies give it directly.
func parseIdentities(ps []Principal) (map[string]*identity, error) {
	out := map[string]*identity{}
	for _, p := range ps {
		if p.Policy == "" {
			continue
		}
		pol, err := authz.Parse([]byte(p.Policy), authz.IdentityPolicy)
		if err != nil {
			return nil, fmt.Errorf("identity policy of %s: %w", p.ARN, err)
		}
		id := out[p.ARN]
		if id == nil {
			id = &identity{}
			out[p.ARN] = id
		}
		id.policies = append(id.policies, pol)
		id.keys = append(id.keys, pol.ConditionKeys()...)
	}
	return out, nil
}

// keyPolicies caches parsed key policies by their text: most keys share
// the default one, and parsing on every request would cost more than
// evaluating. Bounded so PutKeyPolicy churn cannot grow it for ever.
type keyPolicies struct {
	mu sync.RWMutex
	m  map[string]*keyPolicy
}

// keyPolicy is a parsed key policy and the condition keys it tests.
type keyPolicy struct {
	policy *authz.Policy
	keys   []string
}

const maxCachedPolicies = 4096

func (kp *keyPolicies) get(doc string) (*keyPolicy, error) {
	kp.mu.RLock()
	p, ok := kp.m[doc]
	kp.mu.RUnlock()
	if ok {
		return p, nil
	}
	pol, err := authz.Parse([]byte(doc), authz.KeyPolicy)
	if err != nil {
		return nil, err
	}
	p = &keyPolicy{policy: pol, keys: pol.ConditionKeys()}
	kp.mu.Lock()
	if kp.m == nil || len(kp.m) >= maxCachedPolicies {
		kp.m = map[string]*keyPolicy{}
	}
	kp.m[doc] = p
	kp.mu.Unlock()
	return p, nil
}

// identityOf returns the caller's identity policies (nil: none).
func (s *Service) identityOf(arn string) *identity {
	m := s.identities.Load()
	if m == nil {
		return nil
	}
	return (*m)[arn]
}

// access is what authorizing one action on a key takes from the request
// beyond its caller.
type access struct {
	// action is the IAM action; "" means the operation's own.
	action string
	// cond holds the request's condition keys for the action
	// (kms:EncryptionContext:…, kms:GrantOperations, …).
	cond authz.Context
	// ec is the request's encryption context, which grant constraints
	// are matched against.
	ec map[string]string
	// crypto says ec and alg are condition keys too
	// (kms:EncryptionContext:…, kms:EncryptionContextKeys,
	// kms:EncryptionAlgorithm), set by cryptoAccess. They are put in a
	// context only when a policy tests conditions: most test none.
	crypto bool
	alg    string
}

// conditions is the request's condition keys for the action.
func (a access) conditions() authz.Context {
	if !a.crypto {
		return a.cond
	}
	cond := authz.Context{}
	cond.SetEncryptionContext(a.ec)
	cond.Set("kms:EncryptionAlgorithm", a.alg)
	for k, v := range a.cond {
		cond[k] = v // already normalized by a.cond's Set
	}
	return cond
}

func (a access) actionFor(r *Request) string {
	if a.action != "" {
		return a.action
	}
	return r.action()
}

// key finds the key keyID names, authorizes a's action on it for r, and
// applies the operation's key-state rule and then the origin it needs: the
// one way an operation on a key gets its key. Keys are regional: an ARN
// for another Region is refused as invalid (parseKeyID). Another account's
// key is found only for the operations AWS allows across accounts, and
// then, whether it exists or not, a caller its policies do not admit
// learns nothing but AccessDeniedException.
func (s *Service) key(ctx context.Context, r *Request, keyID string, a access) (*store.Key, error) {
	k, alias, err := s.lookupKey(ctx, r, keyID, r.op.aliases, a)
	if err != nil {
		return nil, err
	}
	if alias != "" {
		if a.cond == nil {
			a.cond = authz.Context{}
		}
		a.cond.Set("kms:RequestAlias", alias)
	}
	if err := s.authorizeKey(ctx, r, k, a); err != nil {
		return nil, err
	}
	if err := s.checkState(k, r.op.states); err != nil {
		return nil, err
	}
	if r.op.origin == originRotatable {
		if k.Origin != originAWSKMS && k.Origin != originExternal {
			return nil, wrongOrigin(k)
		}
	} else if r.op.origin != "" && k.Origin != r.op.origin {
		return nil, wrongOrigin(k)
	}
	return k, nil
}

// lookupKey finds the key keyID names, without authorizing anything: for
// key-less operations that filter by a key (ListAliases) and for the
// operations that authorize what they found themselves (aliases). It
// returns the alias name when keyID named one. Keys still being created
// do not exist yet.
func (s *Service) lookupKey(ctx context.Context, r *Request, keyID string, allowAlias bool, a access) (*store.Key, string, error) {
	ref, err := parseKeyID(r, keyID, allowAlias)
	if err != nil {
		return nil, "", err
	}
	cross := ref.Account != r.Caller.Account
	if ref.Alias != "" {
		if cross && !r.op.crossAccount {
			return nil, "", aliasNotFound(r, ref.Alias)
		}
		al, err := s.store.GetAlias(ctx, ref.Account, ref.Region, ref.Alias)
		if isNotFound(err) {
			if cross {
				return nil, "", s.deniedUnseen(r, a, aliasARN(ref.Region, ref.Account, ref.Alias))
			}
			return nil, "", aliasNotFound(r, ref.Alias)
		}
		if err != nil {
			return nil, "", err
		}
		ref.ID = al.TargetKeyID
	}
	if cross && !r.op.crossAccount {
		return nil, "", keyNotFound(ref.Region, ref.Account, ref.ID)
	}
	k, err := s.store.GetKey(ctx, ref.Account, ref.Region, ref.ID)
	if isNotFound(err) || (err == nil && k.State == string(StateCreating) && !k.IsReplica()) {
		if cross {
			return nil, "", s.deniedUnseen(r, a, keyARN(ref.Region, ref.Account, ref.ID))
		}
		return nil, "", keyNotFound(ref.Region, ref.Account, ref.ID)
	}
	if err != nil {
		return nil, "", err
	}
	r.touched(arnOf(k))
	if k.CustomKeyStoreID != "" {
		r.keyStore = k.CustomKeyStoreID
	}
	return k, ref.Alias, nil
}

// deniedUnseen is the answer about another account's key that does not
// exist: the same AccessDeniedException a caller without access gets, so
// the answer does not tell which.
func (s *Service) deniedUnseen(r *Request, a access, resource string) error {
	action := a.actionFor(r)
	r.record(decision{action: action, resource: resource, kind: onKey, by: "no such key"})
	return wire.Errorf(wire.AccessDenied, "%s", authz.DeniedMessage(r.Caller.PrincipalARN, action, resource, false, false))
}

// authorizeKey decides whether r's caller may perform a's action on k,
// with AWS's rules: an explicit deny anywhere wins; otherwise the key
// policy, the key policy's delegation to the account together with the
// caller's identity policy (both sides for another account's caller), or
// (for operations a grant can allow) a grant must allow it. The decision
// is recorded on r.
func (s *Service) authorizeKey(ctx context.Context, r *Request, k *store.Key, a access) error {
	if err := checkGrantTokens(r.GrantTokens); err != nil {
		return err
	}
	action, resource := a.actionFor(r), arnOf(k)
	kp, err := s.policies.get(k.Policy)
	if err != nil {
		return internalf("key policy of %s: %w", resource, err)
	}
	in := s.decisionInput(ctx, r, k, action, resource, a.conditions, kp)
	d := authz.Decide(in)
	if !d.Allowed && !d.ExplicitDeny && r.op.grantable {
		// Grants are read only when the policies say no: the common
		// case never touches the store.
		grant, viaAccount, err := s.grantAllows(ctx, k, r.Caller.PrincipalARN, strings.TrimPrefix(action, "kms:"), a.ec)
		if err != nil {
			return err
		}
		if viaAccount && !authz.Decide(authz.Input{Request: in.Request, Identity: in.Identity}).Allowed {
			grant = "" // a grant to the account needs the account's IAM to pass it on
		}
		if grant != "" {
			in.GrantAllows = grant
			d = authz.Decide(in)
			r.grant = grant
		}
	}
	return s.decided(r, d, action, resource, onKey)
}

// authorizeIdentity decides r's caller's action on resource by its
// identity policies alone: operations without a key, and aliases.
func (s *Service) authorizeIdentity(ctx context.Context, r *Request, cond authz.Context, action, resource string, kind resourceKind) error {
	d := authz.Decide(s.decisionInput(ctx, r, nil, action, resource, func() authz.Context { return cond }, nil))
	return s.decided(r, d, action, resource, kind)
}

// decided records d on r and turns a denial into AWS's exception.
func (s *Service) decided(r *Request, d authz.Decision, action, resource string, kind resourceKind) error {
	r.record(decision{action: action, resource: resource, kind: kind, allowed: d.Allowed, by: d.By})
	if d.Allowed {
		return nil
	}
	return wire.Errorf(wire.AccessDenied, "%s", d.Message(r.Caller.PrincipalARN, action, resource))
}

// decisionInput gathers the policies for a decision and, only when they
// test conditions, the request's condition context, with the request's
// own condition keys from cond.
func (s *Service) decisionInput(ctx context.Context, r *Request, k *store.Key, action, resource string, cond func() authz.Context, kp *keyPolicy) authz.Input {
	principal := authz.Principal{ARN: r.Caller.PrincipalARN, Account: r.Caller.Account}
	in := authz.Input{Request: &authz.Request{Action: action, Resource: resource, Principal: principal}}
	var keys []string // the condition keys the policies test
	if id := s.identityOf(r.Caller.PrincipalARN); id != nil {
		in.Identity, keys = id.policies, id.keys
	}
	if kp != nil {
		in.KeyPolicy, in.KeyAccount = kp.policy, k.Account
		keys = append(keys[:len(keys):len(keys)], kp.keys...)
	}
	// Only conditions read the context, and most policies have none: the
	// request's context is built only for those that do.
	if len(keys) > 0 {
		in.Request = authz.NewRequest(action, resource, principal)
		s.requestContext(ctx, r, k, keys, cond(), in.Request.Context)
	}
	return in
}

// requestContext fills the condition keys AWS sets for a KMS request:
// global keys, the request's own (cond), and the key's (kms:KeySpec,
// aws:ResourceTag/…).
func (s *Service) requestContext(ctx context.Context, r *Request, k *store.Key, keys []string, cond, rc authz.Context) {
	now := s.now()
	rc.Set("aws:CurrentTime", now.UTC().Format(time.RFC3339))
	rc.Set("aws:EpochTime", fmt.Sprint(now.Unix()))
	rc.Set("aws:SecureTransport", fmt.Sprint(r.Secure))
	rc.Set("aws:RequestedRegion", r.Caller.Region)
	if r.SourceIP != "" {
		rc.Set("aws:SourceIp", r.SourceIP)
	}
	for key, v := range cond {
		rc[key] = v // already normalized by cond's Set
	}
	if k == nil {
		return
	}
	rc.Set("kms:KeySpec", k.KeySpec)
	rc.Set("kms:CustomerMasterKeySpec", k.KeySpec)
	rc.Set("kms:KeyUsage", k.KeyUsage)
	rc.Set("kms:CustomerMasterKeyUsage", k.KeyUsage)
	rc.Set("kms:KeyOrigin", k.Origin)
	rc.Set("kms:MultiRegion", "false")
	// Tags and aliases cost a store read each: read them only when a
	// policy that will be evaluated tests them.
	if tests(keys, "aws:resourcetag/") {
		if tags, _, err := s.store.ListTags(ctx, k.Account, k.Region, k.ID, "", 0); err == nil {
			m := make(map[string]string, len(tags))
			for _, t := range tags {
				m[t.Key] = t.Value
			}
			rc.SetResourceTags(m)
		}
	}
	if tests(keys, "kms:resourcealiases") {
		if aliases, _, err := s.store.ListAliases(ctx, k.Account, k.Region, k.ID, "", 0); err == nil {
			names := make([]string, len(aliases))
			for i, a := range aliases {
				names[i] = a.Name
			}
			rc.Set("kms:ResourceAliases", names...)
		}
	}
}

// tests reports whether any of keys (normalized condition keys) starts
// with prefix.
func tests(keys []string, prefix string) bool {
	for _, k := range keys {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// cryptoAccess is the access of an operation that encrypts or decrypts:
// its encryption context and algorithm (AWS's default when the request
// names none) as condition keys.
func cryptoAccess(action string, ec map[string]string, alg string) access {
	if alg == "" {
		alg = algSymmetric
	}
	return access{action: action, ec: ec, crypto: true, alg: alg}
}

// requestTags are the condition keys of a request that adds tags.
func requestTags(cond authz.Context, tags []Tag) authz.Context {
	if len(tags) == 0 {
		return cond
	}
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		m[t.TagKey] = t.TagValue
	}
	cond.SetRequestTags(m)
	return cond
}

// conditions builds a condition context from key/value pairs.
func conditions(kv ...string) authz.Context {
	c := authz.Context{}
	for i := 0; i+1 < len(kv); i += 2 {
		c.Set(kv[i], kv[i+1])
	}
	return c
}
