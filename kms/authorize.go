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

// authorize decides whether the caller may perform c.IAMAction() on k (nil
// for operations without a key resource), with AWS's rules: an explicit
// deny anywhere wins; otherwise the key policy, the key policy's
// delegation to the account together with the caller's identity policy
// (both sides for another account's caller), or a grant must allow it.
// Each decision is recorded on c for the request's log line.
func (s *Service) authorize(ctx context.Context, c *wire.Call, k *store.Key) error {
	if err := checkGrantTokens(c.GrantTokens); err != nil {
		return err
	}
	action := c.IAMAction()
	resource := "*"
	if k != nil {
		resource = arnOf(k)
	}
	principal := authz.Principal{ARN: c.Caller.PrincipalARN, Account: c.Caller.Account}
	in := authz.Input{Request: &authz.Request{Action: action, Resource: resource, Principal: principal}}
	var keys []string // the condition keys the policies test
	if id := s.identityOf(c.Caller.PrincipalARN); id != nil {
		in.Identity, keys = id.policies, id.keys
	}
	if k != nil {
		kp, err := s.policies.get(k.Policy)
		if err != nil {
			return internalf("key policy of %s: %w", arnOf(k), err)
		}
		in.KeyPolicy, in.KeyAccount = kp.policy, k.Account
		keys = append(keys[:len(keys):len(keys)], kp.keys...)
	}
	// Only conditions read the context, and most policies have none: the
	// request's context is built only for those that do.
	if len(keys) > 0 {
		in.Request = authz.NewRequest(action, resource, principal)
		s.requestContext(ctx, c, k, keys, in.Request.Context)
	}
	d := authz.Decide(in)
	if !d.Allowed && !d.ExplicitDeny && k != nil {
		// Grants are read only when the policies say no: the common
		// case never touches the store.
		grant, viaAccount, err := s.grantAllows(ctx, k, c.Caller.PrincipalARN, c.Op, encryptionContextOf(c))
		if err != nil {
			return err
		}
		if viaAccount && !authz.Decide(authz.Input{Request: in.Request, Identity: in.Identity}).Allowed {
			grant = "" // a grant to the account needs the account's IAM to pass it on
		}
		if grant != "" {
			in.GrantAllows = grant
			d = authz.Decide(in)
			c.Grant = grant
		}
	}
	c.Decisions = append(c.Decisions, decisionLog(d, action, resource))
	if d.Allowed {
		return nil
	}
	return wire.Errorf(wire.AccessDenied, "%s", d.Message(c.Caller.PrincipalARN, action, resource))
}

func decisionLog(d authz.Decision, action, resource string) string {
	verdict := "deny"
	if d.Allowed {
		verdict = "allow"
	}
	return verdict + " " + action + " on " + resource + " by " + d.By
}

// requestContext fills the condition keys AWS sets for a KMS request:
// global keys, the key's own (kms:KeySpec, aws:ResourceTag/…), and what the
// operation put on c.
func (s *Service) requestContext(ctx context.Context, c *wire.Call, k *store.Key, keys []string, rc authz.Context) {
	rc.Set("aws:CurrentTime", s.now().UTC().Format(time.RFC3339))
	rc.Set("aws:EpochTime", fmt.Sprint(s.now().Unix()))
	rc.Set("aws:SecureTransport", fmt.Sprint(c.Secure))
	rc.Set("aws:RequestedRegion", c.Caller.Region)
	if c.SourceIP != "" {
		rc.Set("aws:SourceIp", c.SourceIP)
	}
	for key, v := range c.Conditions {
		rc.Set(key, v...)
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

// encryptionContextOf recovers the request's encryption context from its
// condition keys, for grant constraints.
func encryptionContextOf(c *wire.Call) map[string]string {
	const prefix = "kms:EncryptionContext:"
	var ec map[string]string
	for key, v := range c.Conditions {
		if strings.HasPrefix(key, prefix) && len(v) == 1 {
			if ec == nil {
				ec = map[string]string{}
			}
			ec[key[len(prefix):]] = v[0]
		}
	}
	return ec
}

// setCondition records a request condition key on c.
func setCondition(c *wire.Call, key string, values ...string) {
	if c.Conditions == nil {
		c.Conditions = map[string][]string{}
	}
	c.Conditions[key] = values
}

// setRequestTags records the tags a request adds, as aws:RequestTag/<k>
// and aws:TagKeys.
func setRequestTags(c *wire.Call, tags []Tag) {
	if len(tags) == 0 {
		return
	}
	keys := make([]string, len(tags))
	for i, t := range tags {
		setCondition(c, "aws:RequestTag/"+t.TagKey, t.TagValue)
		keys[i] = t.TagKey
	}
	setCondition(c, "aws:TagKeys", keys...)
}

// keylessOps are authorized with resource "*" before they run: AWS decides
// them by the caller's identity policy alone (ListAliases too, even when
// it names a key). CreateKey authorizes itself, once its condition keys
// are known.
var keylessOps = map[string]bool{
	"ListKeys": true, "ListAliases": true, "GenerateRandom": true, "ListRetirableGrants": true,
	"CreateCustomKeyStore": true, "DescribeCustomKeyStores": true, "ConnectCustomKeyStore": true,
	"DisconnectCustomKeyStore": true, "UpdateCustomKeyStore": true, "DeleteCustomKeyStore": true,
}

// authorized wraps a key-less operation's route with its authorization.
func (s *Service) authorized(r wire.Route) wire.Route {
	return wire.Route{Handle: func(ctx context.Context, c *wire.Call, body []byte) (any, error) {
		if err := s.authorize(ctx, c, nil); err != nil {
			return nil, err
		}
		return r.Handle(ctx, c, body)
	}}
}

// setEncryptionContext records ec as AWS's condition keys.
func setEncryptionContext(c *wire.Call, ec map[string]string) {
	if len(ec) == 0 {
		return
	}
	keys := make([]string, 0, len(ec))
	for k, v := range ec {
		setCondition(c, "kms:EncryptionContext:"+k, v)
		keys = append(keys, k)
	}
	setCondition(c, "kms:EncryptionContextKeys", keys...)
}
