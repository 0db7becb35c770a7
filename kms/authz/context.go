package authz

import (
	"sort"
	"strings"
)

// Context holds the request's condition keys. Keys are normalized by Set
// and looked up by Get, so index it only through them. Multi-valued keys
// (kms:EncryptionContextKeys, aws:TagKeys, kms:GrantOperations,
// kms:ResourceAliases) hold several values; a key with no values is absent.
type Context map[string][]string

// caseSensitiveSuffix lists the prefixes after which AWS keeps the key
// name's case: encryption context keys and tag keys are data, not names.
var caseSensitiveSuffix = []string{
	"kms:encryptioncontext:",
	"aws:resourcetag/",
	"aws:requesttag/",
	"aws:principaltag/",
}

// normalizeKey lower-cases a condition key name except a case-sensitive
// suffix.
func normalizeKey(key string) string {
	lower := strings.ToLower(key)
	for _, p := range caseSensitiveSuffix {
		if strings.HasPrefix(lower, p) {
			return p + key[len(p):]
		}
	}
	return lower
}

// Set replaces key's values.
func (c Context) Set(key string, values ...string) {
	c[normalizeKey(key)] = values
}

// Add appends values to key.
func (c Context) Add(key string, values ...string) {
	k := normalizeKey(key)
	c[k] = append(c[k], values...)
}

// Get returns key's values; ok is false when the key is absent or empty.
func (c Context) Get(key string) ([]string, bool) {
	v := c[normalizeKey(key)]
	return v, len(v) > 0
}

// SetEncryptionContext sets kms:EncryptionContext:<k> for each pair and
// kms:EncryptionContextKeys to the sorted keys, as KMS does for
// cryptographic operations.
func (c Context) SetEncryptionContext(ec map[string]string) {
	keys := make([]string, 0, len(ec))
	for k, v := range ec {
		c.Set("kms:EncryptionContext:"+k, v)
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 {
		c.Set("kms:EncryptionContextKeys", keys...)
	}
}

// SetResourceTags sets aws:ResourceTag/<k> for the key's tags.
func (c Context) SetResourceTags(tags map[string]string) {
	for k, v := range tags {
		c.Set("aws:ResourceTag/"+k, v)
	}
}

// SetRequestTags sets aws:RequestTag/<k> and aws:TagKeys for tags carried
// by the request (CreateKey, TagResource).
func (c Context) SetRequestTags(tags map[string]string) {
	keys := make([]string, 0, len(tags))
	for k, v := range tags {
		c.Set("aws:RequestTag/"+k, v)
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 {
		c.Set("aws:TagKeys", keys...)
	}
}

// Request is what is being authorized.
type Request struct {
	Action    string // "kms:Encrypt"
	Resource  string // key ARN, or "*" for operations without a key
	Principal Principal
	Context   Context
}

// NewRequest builds a request whose context already carries the keys AWS
// sets for every KMS call: aws:PrincipalArn, aws:PrincipalAccount and
// kms:CallerAccount.
func NewRequest(action, resource string, p Principal) *Request {
	ctx := Context{}
	if p.ARN != "" {
		ctx.Set("aws:PrincipalArn", p.ARN)
	}
	if p.Account != "" {
		ctx.Set("aws:PrincipalAccount", p.Account)
		ctx.Set("kms:CallerAccount", p.Account)
	}
	return &Request{Action: action, Resource: resource, Principal: p, Context: ctx}
}
