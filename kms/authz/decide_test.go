package authz

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecide(t *testing.T) {
	const (
		// A key policy without the delegation statement: only Alice.
		aliceOnly = `{"Statement":[{"Sid":"alice","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/Alice"},"Action":"kms:*","Resource":"*"}]}`
		// Delegation plus a statement shared with account B.
		shareB = `{"Statement":[
			{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
			{"Sid":"account B","Effect":"Allow","Principal":{"AWS":"444455556666"},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}`
		shareCarol  = `{"Statement":[{"Sid":"carol","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::444455556666:user/Carol"},"Action":"kms:Decrypt","Resource":"*"}]}`
		denyDecrypt = `{"Statement":[
			{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
			{"Sid":"no decrypt","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*"}]}`
		publicDescribe = `{"Statement":[{"Sid":"anyone","Effect":"Allow","Principal":"*","Action":"kms:DescribeKey","Resource":"*"}]}`

		allowKMS    = `{"Statement":{"Sid":"kms","Effect":"Allow","Action":"kms:*","Resource":"*"}}`
		allowDec    = `{"Statement":{"Sid":"dec","Effect":"Allow","Action":"kms:Decrypt","Resource":"arn:aws:kms:us-east-1:111122223333:key/*"}}`
		denyDec     = `{"Statement":{"Sid":"iam no decrypt","Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}}`
		allowCreate = `{"Statement":{"Sid":"create","Effect":"Allow","Action":["kms:CreateKey","kms:List*"],"Resource":"*"}}`
	)
	tests := []struct {
		name      string
		keyPolicy string // "" for a key-less operation
		identity  []string
		principal string
		action    string
		grant     string
		want      Decision
	}{
		// Same account, default key policy: IAM decides.
		{"default policy + identity allow", defaultKeyPolicy, []string{allowKMS}, alice, "kms:Encrypt", "",
			Decision{Allowed: true, By: "key policy statement Enable IAM User Permissions and identity policy statement kms"}},
		{"default policy, no identity policy", defaultKeyPolicy, nil, alice, "kms:Encrypt", "",
			Decision{Source: IdentityPolicy, By: "no policy allows"}},
		{"default policy, identity allows another action", defaultKeyPolicy, []string{allowDec}, alice, "kms:Encrypt", "",
			Decision{Source: IdentityPolicy, By: "no policy allows"}},
		{"default policy, second identity policy allows", defaultKeyPolicy, []string{allowCreate, allowDec}, alice, "kms:Decrypt", "",
			Decision{Allowed: true, By: "key policy statement Enable IAM User Permissions and identity policy statement dec"}},
		{"root user needs no identity policy", defaultKeyPolicy, nil, rootA, "kms:Encrypt", "",
			Decision{Allowed: true, By: "key policy statement Enable IAM User Permissions"}},

		// Same account, no delegation: identity policies do not count.
		{"named user allowed by key policy alone", aliceOnly, nil, alice, "kms:Encrypt", "",
			Decision{Allowed: true, By: "key policy statement alice"}},
		{"identity policy cannot open a key that does not delegate", aliceOnly, []string{allowKMS}, bob, "kms:Encrypt", "",
			Decision{Source: KeyPolicy, By: "no policy allows"}},
		{"star principal allows same-account caller alone", publicDescribe, nil, bob, "kms:DescribeKey", "",
			Decision{Allowed: true, By: "key policy statement anyone"}},

		// Cross account: both sides.
		{"cross-account via account, identity allows", shareB, []string{allowDec}, carolB, "kms:Decrypt", "",
			Decision{Allowed: true, By: "key policy statement account B and identity policy statement dec"}},
		{"cross-account via account, no identity policy", shareB, nil, carolB, "kms:Decrypt", "",
			Decision{Source: IdentityPolicy, By: "no policy allows"}},
		{"cross-account named directly still needs identity", shareCarol, nil, carolB, "kms:Decrypt", "",
			Decision{Source: IdentityPolicy, By: "no policy allows"}},
		{"cross-account named directly with identity", shareCarol, []string{allowKMS}, carolB, "kms:Decrypt", "",
			Decision{Allowed: true, By: "key policy statement carol and identity policy statement kms"}},
		{"cross-account star principal still needs identity", publicDescribe, nil, carolB, "kms:DescribeKey", "",
			Decision{Source: IdentityPolicy, By: "no policy allows"}},
		{"cross-account, key policy shares nothing", defaultKeyPolicy, []string{allowKMS}, carolB, "kms:Decrypt", "",
			Decision{Source: KeyPolicy, By: "no policy allows"}},
		{"cross-account, action outside the share", shareB, []string{allowKMS}, carolB, "kms:ScheduleKeyDeletion", "",
			Decision{Source: KeyPolicy, By: "no policy allows"}},

		// Explicit denies.
		{"deny in key policy beats identity allow", denyDecrypt, []string{allowKMS}, alice, "kms:Decrypt", "",
			Decision{ExplicitDeny: true, Source: KeyPolicy, By: "key policy statement no decrypt"}},
		{"deny in identity policy beats key policy allow", aliceOnly, []string{denyDec}, alice, "kms:Decrypt", "",
			Decision{ExplicitDeny: true, Source: IdentityPolicy, By: "identity policy statement iam no decrypt"}},
		{"deny in identity policy among allows", defaultKeyPolicy, []string{allowKMS, denyDec}, alice, "kms:Decrypt", "",
			Decision{ExplicitDeny: true, Source: IdentityPolicy, By: "identity policy statement iam no decrypt"}},
		{"grant does not override a deny", denyDecrypt, nil, alice, "kms:Decrypt", "grant-1",
			Decision{ExplicitDeny: true, Source: KeyPolicy, By: "key policy statement no decrypt"}},

		// Grants.
		{"grant allows without any policy", aliceOnly, nil, bob, "kms:Decrypt", "grant-1",
			Decision{Allowed: true, By: "grant grant-1"}},
		{"grant allows cross-account without identity policy", defaultKeyPolicy, nil, carolB, "kms:Decrypt", "grant-2",
			Decision{Allowed: true, By: "grant grant-2"}},
		{"policy allow reported before grant", aliceOnly, nil, alice, "kms:Decrypt", "grant-1",
			Decision{Allowed: true, By: "key policy statement alice"}},

		// Operations without a key.
		{"key-less allowed by identity", "", []string{allowCreate}, alice, "kms:CreateKey", "",
			Decision{Allowed: true, By: "identity policy statement create"}},
		{"key-less wildcard action", "", []string{allowCreate}, alice, "kms:ListAliases", "",
			Decision{Allowed: true, By: "identity policy statement create"}},
		{"key-less not allowed", "", []string{allowDec}, alice, "kms:CreateKey", "",
			Decision{Source: IdentityPolicy, By: "no policy allows"}},
		{"key-less explicit deny", "", []string{allowKMS, `{"Statement":{"Sid":"no create","Effect":"Deny","Action":"kms:CreateKey","Resource":"*"}}`}, alice, "kms:CreateKey", "",
			Decision{ExplicitDeny: true, Source: IdentityPolicy, By: "identity policy statement no create"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{KeyAccount: acctA, GrantAllows: tt.grant}
			resource := "*"
			if tt.keyPolicy != "" {
				in.KeyPolicy = mustParse(t, tt.keyPolicy, KeyPolicy)
				resource = keyARN
			}
			for _, doc := range tt.identity {
				in.Identity = append(in.Identity, mustParse(t, doc, IdentityPolicy))
			}
			in.Request = request(t, tt.principal, tt.action, resource)
			assert.Equal(t, tt.want, Decide(in))
		})
	}
}

func TestDeniedMessage(t *testing.T) {
	tests := []struct {
		name         string
		action       string
		resource     string
		explicit     bool
		identityOnly bool
		want         string
	}{
		{"implicit, key policy", "kms:Decrypt", keyARN, false, false,
			"User: arn:aws:iam::111122223333:user/Alice is not authorized to perform: kms:Decrypt on resource: " + keyARN + " because no resource-based policy allows the kms:Decrypt action"},
		{"implicit, identity side", "Decrypt", keyARN, false, true,
			"User: arn:aws:iam::111122223333:user/Alice is not authorized to perform: kms:Decrypt on resource: " + keyARN + " because no identity-based policy allows the kms:Decrypt action"},
		{"key-less", "kms:CreateKey", "*", false, true,
			"User: arn:aws:iam::111122223333:user/Alice is not authorized to perform: kms:CreateKey on resource: * because no identity-based policy allows the kms:CreateKey action"},
		{"explicit, key policy", "kms:Decrypt", keyARN, true, false,
			"User: arn:aws:iam::111122223333:user/Alice is not authorized to perform: kms:Decrypt on resource: " + keyARN + " with an explicit deny in a resource-based policy"},
		{"explicit, identity policy", "kms:Decrypt", keyARN, true, true,
			"User: arn:aws:iam::111122223333:user/Alice is not authorized to perform: kms:Decrypt on resource: " + keyARN + " with an explicit deny in an identity-based policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, DeniedMessage(alice, tt.action, tt.resource, tt.explicit, tt.identityOnly))
		})
	}
}

func TestDecisionMessage(t *testing.T) {
	in := Input{
		Request:    request(t, alice, "kms:Decrypt", keyARN),
		KeyPolicy:  mustParse(t, defaultKeyPolicy, KeyPolicy),
		KeyAccount: acctA,
		Identity:   []*Policy{mustParse(t, `{"Statement":{"Effect":"Deny","Action":"kms:*","Resource":"*"}}`, IdentityPolicy)},
	}
	d := Decide(in)
	assert.Equal(t, DeniedMessage(alice, "kms:Decrypt", keyARN, true, true), d.Message(alice, "kms:Decrypt", keyARN))
}

func TestLockoutCheck(t *testing.T) {
	const admins = `{"Statement":[{"Sid":"admins","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/ops/Admin"},"Action":["kms:PutKeyPolicy","kms:Describe*"],"Resource":"*"}]}`
	allowAll := `{"Statement":{"Sid":"kms","Effect":"Allow","Action":"kms:*","Resource":"*"}}`
	tests := []struct {
		name      string
		policy    string
		identity  []string
		principal string
		allowed   bool
		via       bool // Evaluate's ViaAccount for the key-policy-only form
	}{
		{"default policy, caller's IAM allows", defaultKeyPolicy, []string{allowAll}, alice, true, true},
		{"default policy, caller's IAM silent", defaultKeyPolicy, nil, alice, false, true},
		{"admin role session keeps access", admins, nil, sessA, true, false},
		{"caller locks itself out", admins, []string{allowAll}, alice, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, tt.policy, KeyPolicy)
			in := Input{
				// The action of the request being served does not matter.
				Request:     request(t, tt.principal, "kms:CreateKey", keyARN),
				KeyAccount:  acctA,
				GrantAllows: "grant-ignored",
			}
			for _, doc := range tt.identity {
				in.Identity = append(in.Identity, mustParse(t, doc, IdentityPolicy))
			}
			d := LockoutCheck(p, in)
			assert.Equal(t, tt.allowed, d.Allowed, d.By)
			r := p.Evaluate(&Request{Action: "kms:PutKeyPolicy", Resource: keyARN, Principal: in.Request.Principal, Context: in.Request.Context})
			assert.Equal(t, tt.via, r.ViaAccount)
			assert.Equal(t, "kms:CreateKey", in.Request.Action, "the caller's request is not modified")
		})
	}
}

func TestConditionKeys(t *testing.T) {
	p, err := Parse([]byte(`{"Statement":[
	  {"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"},
	  {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
	   "Condition":{"StringEquals":{"kms:EncryptionContext:Dept":"x","aws:ResourceTag/Team":"y"},"Bool":{"aws:SecureTransport":"false"}}}]}`), KeyPolicy)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"kms:encryptioncontext:Dept", "aws:resourcetag/Team", "aws:securetransport"}, p.ConditionKeys())
	p, err = Parse([]byte(`{"Statement":{"Effect":"Allow","Action":"kms:*","Resource":"*"}}`), IdentityPolicy)
	require.NoError(t, err)
	assert.Empty(t, p.ConditionKeys())
}
