package authz

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	acctA   = "111122223333"
	acctB   = "444455556666"
	keyARN  = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	alice   = "arn:aws:iam::111122223333:user/Alice"
	bob     = "arn:aws:iam::111122223333:user/team/Bob"
	rootA   = "arn:aws:iam::111122223333:root"
	roleA   = "arn:aws:iam::111122223333:role/ops/Admin"
	sessA   = "arn:aws:sts::111122223333:assumed-role/Admin/alice-session"
	carolB  = "arn:aws:iam::444455556666:user/Carol"
	sessOth = "arn:aws:sts::111122223333:assumed-role/Other/alice-session"
)

func mustParse(t testing.TB, doc string, kind Kind) *Policy {
	t.Helper()
	p, err := Parse([]byte(doc), kind)
	require.NoError(t, err)
	return p
}

func request(t testing.TB, principalARN, action, resource string) *Request {
	t.Helper()
	p, err := PrincipalFromARN(principalARN)
	require.NoError(t, err)
	return NewRequest(action, resource, p)
}

func TestEvaluateKeyPolicy(t *testing.T) {
	tests := []struct {
		name      string
		policy    string
		principal string
		action    string
		resource  string
		want      Result
	}{
		{"default policy delegates to the account", defaultKeyPolicy, alice, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "Enable IAM User Permissions", ViaAccount: true}},
		{"default policy names the root user directly", defaultKeyPolicy, rootA, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "Enable IAM User Permissions"}},
		{"default policy: other account", defaultKeyPolicy, carolB, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"bare account id is the root", `{"Statement":{"Sid":"a","Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kms:*","Resource":"*"}}`, bob, "kms:Decrypt", keyARN,
			Result{Effect: Allow, Statement: "a", ViaAccount: true}},
		{"user named directly", `{"Statement":{"Sid":"u","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/Alice"},"Action":"kms:Encrypt","Resource":"*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "u"}},
		{"other user not matched", `{"Statement":{"Sid":"u","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/Alice"},"Action":"kms:Encrypt","Resource":"*"}}`, bob, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"star principal", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:Describe*","Resource":"*"}}`, carolB, "kms:DescribeKey", keyARN,
			Result{Effect: Allow, Statement: "#0"}},
		{"AWS star principal", `{"Statement":{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:Describe*","Resource":"*"}}`, carolB, "kms:DescribeKey", keyARN,
			Result{Effect: Allow, Statement: "#0"}},
		{"role matches its session", `{"Statement":{"Sid":"r","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/ops/Admin"},"Action":"kms:*","Resource":"*"}}`, sessA, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "r"}},
		{"role does not match another role's session", `{"Statement":{"Sid":"r","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/ops/Admin"},"Action":"kms:*","Resource":"*"}}`, sessOth, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"role matches itself", `{"Statement":{"Sid":"r","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/ops/Admin"},"Action":"kms:*","Resource":"*"}}`, roleA, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "r"}},
		{"session named exactly", `{"Statement":{"Sid":"s","Effect":"Allow","Principal":{"AWS":"arn:aws:sts::111122223333:assumed-role/Admin/alice-session"},"Action":"kms:*","Resource":"*"}}`, sessA, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "s"}},
		{"service principal never matches", `{"Statement":{"Effect":"Allow","Principal":{"Service":"logs.amazonaws.com"},"Action":"kms:*","Resource":"*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"direct allow preferred over account allow", `{"Statement":[` +
			`{"Sid":"acct","Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kms:*","Resource":"*"},` +
			`{"Sid":"alice","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/Alice"},"Action":"kms:Encrypt","Resource":"*"}]}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "alice"}},
		{"deny wins over earlier allow", `{"Statement":[` +
			`{"Sid":"all","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"},` +
			`{"Sid":"no-decrypt","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*"}]}`, alice, "kms:Decrypt", keyARN,
			Result{Effect: Deny, Statement: "no-decrypt"}},
		{"deny for another action does not apply", `{"Statement":[` +
			`{"Sid":"all","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"},` +
			`{"Sid":"no-decrypt","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*"}]}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "all"}},
		{"NotPrincipal deny spares the named user", `{"Statement":{"Sid":"d","Effect":"Deny","NotPrincipal":{"AWS":["arn:aws:iam::111122223333:user/Alice"]},"Action":"kms:*","Resource":"*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"NotPrincipal deny hits everyone else", `{"Statement":{"Sid":"d","Effect":"Deny","NotPrincipal":{"AWS":["arn:aws:iam::111122223333:user/Alice"]},"Action":"kms:*","Resource":"*"}}`, bob, "kms:Encrypt", keyARN,
			Result{Effect: Deny, Statement: "d"}},
		{"NotPrincipal account spares its members", `{"Statement":{"Sid":"d","Effect":"Deny","NotPrincipal":{"AWS":"111122223333"},"Action":"kms:*","Resource":"*"}}`, bob, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"NotPrincipal account hits other accounts", `{"Statement":{"Sid":"d","Effect":"Deny","NotPrincipal":{"AWS":"111122223333"},"Action":"kms:*","Resource":"*"}}`, carolB, "kms:Encrypt", keyARN,
			Result{Effect: Deny, Statement: "d"}},
		{"action is case-insensitive", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"KMS:encrypt","Resource":"*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "#0"}},
		{"action wildcards", `{"Statement":{"Effect":"Allow","Principal":"*","Action":["kms:ReEncrypt*","kms:GenerateDataKey?ithoutPlaintext"],"Resource":"*"}}`, alice, "kms:GenerateDataKeyWithoutPlaintext", keyARN,
			Result{Effect: Allow, Statement: "#0"}},
		{"action star", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}`, alice, "kms:ScheduleKeyDeletion", keyARN,
			Result{Effect: Allow, Statement: "#0"}},
		{"action of another service", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"NotAction", `{"Statement":{"Effect":"Allow","Principal":"*","NotAction":["kms:ScheduleKeyDeletion","kms:Disable*"],"Resource":"*"}}`, alice, "kms:DisableKey", keyARN,
			Result{Effect: NoMatch}},
		{"NotAction allows the rest", `{"Statement":{"Effect":"Allow","Principal":"*","NotAction":["kms:ScheduleKeyDeletion","kms:Disable*"],"Resource":"*"}}`, alice, "kms:EnableKey", keyARN,
			Result{Effect: Allow, Statement: "#0"}},
		{"resource wildcard", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"arn:aws:kms:us-east-1:111122223333:key/*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "#0"}},
		{"resource in another region", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"arn:aws:kms:eu-west-1:111122223333:key/*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"resource is case-sensitive", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"arn:aws:kms:us-east-1:111122223333:KEY/*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"NotResource", `{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:*","NotResource":"arn:aws:kms:us-east-1:111122223333:key/*"}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
		{"NotResource denies elsewhere", `{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:*","NotResource":"arn:aws:kms:us-east-1:111122223333:key/*"}}`, alice, "kms:CreateKey", "*",
			Result{Effect: Deny, Statement: "#0"}},
		{"condition on caller account", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"kms:CallerAccount":"444455556666"}}}}`, carolB, "kms:Encrypt", keyARN,
			Result{Effect: Allow, Statement: "#0"}},
		{"condition on caller account fails", `{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"kms:CallerAccount":"444455556666"}}}}`, alice, "kms:Encrypt", keyARN,
			Result{Effect: NoMatch}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, tt.policy, KeyPolicy)
			assert.Equal(t, tt.want, p.Evaluate(request(t, tt.principal, tt.action, tt.resource)))
		})
	}
}

func TestEvaluateIdentityPolicyIgnoresPrincipal(t *testing.T) {
	p := mustParse(t, `{"Version":"2012-10-17","Statement":[{"Sid":"use","Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"arn:aws:kms:*:111122223333:key/*"}]}`, IdentityPolicy)
	for _, who := range []string{alice, carolB, sessA} {
		r := p.Evaluate(request(t, who, "kms:Decrypt", keyARN))
		assert.Equal(t, Result{Effect: Allow, Statement: "use"}, r, who)
	}
	assert.Equal(t, NoMatch, p.Evaluate(request(t, alice, "kms:PutKeyPolicy", keyARN)).Effect)
}

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"*", "", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"*a", "bbbba", true},
		{"??", "ab", true},
		{"??", "abc", false},
		{"a**", "a", true},
		{"*x*x*x*x*x*x*x*x*y", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, glob(tt.pattern, tt.s), "%q ~ %q", tt.pattern, tt.s)
	}
}
