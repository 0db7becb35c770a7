package authz

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ctx builds a Context through Set, so keys are normalized as in use.
func ctx(kv map[string][]string) Context {
	c := Context{}
	for k, v := range kv {
		c.Set(k, v...)
	}
	return c
}

func TestConditionOperators(t *testing.T) {
	type kv = map[string][]string
	tests := []struct {
		name string
		cond string // the Condition element's value
		ctx  kv
		want bool
	}{
		// Strings.
		{"StringEquals hit", `{"StringEquals":{"kms:ViaService":"s3.us-east-1.amazonaws.com"}}`, kv{"kms:ViaService": {"s3.us-east-1.amazonaws.com"}}, true},
		{"StringEquals is case-sensitive", `{"StringEquals":{"kms:ViaService":"S3.us-east-1.amazonaws.com"}}`, kv{"kms:ViaService": {"s3.us-east-1.amazonaws.com"}}, false},
		{"StringEquals values are ORed", `{"StringEquals":{"kms:ViaService":["a","b"]}}`, kv{"kms:ViaService": {"b"}}, true},
		{"StringEquals absent key", `{"StringEquals":{"kms:ViaService":"a"}}`, kv{}, false},
		{"StringEquals key name case-insensitive", `{"StringEquals":{"KMS:VIASERVICE":"a"}}`, kv{"kms:viaservice": {"a"}}, true},
		{"StringNotEquals miss", `{"StringNotEquals":{"kms:ViaService":["a","b"]}}`, kv{"kms:ViaService": {"c"}}, true},
		{"StringNotEquals hit", `{"StringNotEquals":{"kms:ViaService":["a","b"]}}`, kv{"kms:ViaService": {"b"}}, false},
		{"StringNotEquals absent key is true", `{"StringNotEquals":{"kms:ViaService":"a"}}`, kv{}, true},
		{"StringEqualsIgnoreCase", `{"StringEqualsIgnoreCase":{"kms:ViaService":"S3.AMAZONAWS.COM"}}`, kv{"kms:ViaService": {"s3.amazonaws.com"}}, true},
		{"StringNotEqualsIgnoreCase", `{"StringNotEqualsIgnoreCase":{"kms:ViaService":"S3.AMAZONAWS.COM"}}`, kv{"kms:ViaService": {"s3.amazonaws.com"}}, false},
		{"StringLike star", `{"StringLike":{"kms:ViaService":"s3.*.amazonaws.com"}}`, kv{"kms:ViaService": {"s3.eu-west-1.amazonaws.com"}}, true},
		{"StringLike question mark", `{"StringLike":{"kms:ViaService":"s?.amazonaws.com"}}`, kv{"kms:ViaService": {"s3.amazonaws.com"}}, true},
		{"StringLike question mark is one char", `{"StringLike":{"kms:ViaService":"s?.amazonaws.com"}}`, kv{"kms:ViaService": {"s33.amazonaws.com"}}, false},
		{"StringNotLike", `{"StringNotLike":{"kms:ViaService":"s3.*"}}`, kv{"kms:ViaService": {"ebs.amazonaws.com"}}, true},

		// Encryption context and tag keys keep their case.
		{"encryption context value", `{"StringEquals":{"kms:EncryptionContext:Department":"IT"}}`, kv{"kms:EncryptionContext:Department": {"IT"}}, true},
		{"encryption context prefix case-insensitive", `{"StringEquals":{"KMS:encryptioncontext:Department":"IT"}}`, kv{"kms:EncryptionContext:Department": {"IT"}}, true},
		{"encryption context key case-sensitive", `{"StringEquals":{"kms:EncryptionContext:department":"IT"}}`, kv{"kms:EncryptionContext:Department": {"IT"}}, false},
		{"resource tag key case-sensitive", `{"StringEquals":{"aws:ResourceTag/Env":"prod"}}`, kv{"aws:resourcetag/env": {"prod"}}, false},
		{"request tag", `{"StringEquals":{"aws:RequestTag/Env":"prod"}}`, kv{"AWS:REQUESTTAG/Env": {"prod"}}, true},

		// A single-valued operator on a multi-valued key: any value.
		{"single operator on multi-valued key", `{"StringEquals":{"kms:GrantOperations":"Decrypt"}}`, kv{"kms:GrantOperations": {"Encrypt", "Decrypt"}}, true},
		{"negated single operator on multi-valued key", `{"StringNotEquals":{"kms:GrantOperations":"Decrypt"}}`, kv{"kms:GrantOperations": {"Encrypt", "Decrypt"}}, false},

		// Set qualifiers.
		{"ForAnyValue hit", `{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":["a","b"]}}`, kv{"kms:EncryptionContextKeys": {"x", "b"}}, true},
		{"ForAnyValue miss", `{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":["a","b"]}}`, kv{"kms:EncryptionContextKeys": {"x", "y"}}, false},
		{"ForAnyValue absent", `{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"a"}}`, kv{}, false},
		{"ForAnyValue negated: some value outside", `{"ForAnyValue:StringNotEquals":{"aws:TagKeys":["a","b"]}}`, kv{"aws:TagKeys": {"a", "z"}}, true},
		{"ForAnyValue negated: all inside", `{"ForAnyValue:StringNotEquals":{"aws:TagKeys":["a","b"]}}`, kv{"aws:TagKeys": {"a", "b"}}, false},
		{"ForAnyValue negated absent", `{"ForAnyValue:StringNotEquals":{"aws:TagKeys":"a"}}`, kv{}, false},
		{"ForAllValues subset", `{"ForAllValues:StringEquals":{"aws:TagKeys":["a","b","c"]}}`, kv{"aws:TagKeys": {"a", "c"}}, true},
		{"ForAllValues not subset", `{"ForAllValues:StringEquals":{"aws:TagKeys":["a","b"]}}`, kv{"aws:TagKeys": {"a", "z"}}, false},
		{"ForAllValues absent is true", `{"ForAllValues:StringEquals":{"aws:TagKeys":"a"}}`, kv{}, true},
		{"ForAllValues empty is true", `{"ForAllValues:StringEquals":{"aws:TagKeys":"a"}}`, kv{"aws:TagKeys": {}}, true},
		{"ForAllValues negated: none inside", `{"ForAllValues:StringNotLike":{"kms:ResourceAliases":"alias/secret-*"}}`, kv{"kms:ResourceAliases": {"alias/a", "alias/b"}}, true},
		{"ForAllValues negated: one inside", `{"ForAllValues:StringNotLike":{"kms:ResourceAliases":"alias/secret-*"}}`, kv{"kms:ResourceAliases": {"alias/a", "alias/secret-1"}}, false},
		{"ForAllValues with StringLike", `{"ForAllValues:StringLike":{"kms:EncryptionContextKeys":"app:*"}}`, kv{"kms:EncryptionContextKeys": {"app:a", "app:b"}}, true},

		// IfExists.
		{"IfExists absent", `{"StringEqualsIfExists":{"kms:ViaService":"a"}}`, kv{}, true},
		{"IfExists present miss", `{"StringEqualsIfExists":{"kms:ViaService":"a"}}`, kv{"kms:ViaService": {"b"}}, false},
		{"IfExists present hit", `{"StringEqualsIfExists":{"kms:ViaService":"a"}}`, kv{"kms:ViaService": {"a"}}, true},
		{"ForAnyValue IfExists absent", `{"ForAnyValue:StringEqualsIfExists":{"aws:TagKeys":"a"}}`, kv{}, true},
		{"NumericLessThanIfExists absent", `{"NumericLessThanIfExists":{"kms:X":"3"}}`, kv{}, true},

		// Null.
		{"Null true on absent", `{"Null":{"kms:GranteePrincipal":"true"}}`, kv{}, true},
		{"Null true on present", `{"Null":{"kms:GranteePrincipal":true}}`, kv{"kms:GranteePrincipal": {"x"}}, false},
		{"Null false on present", `{"Null":{"kms:GranteePrincipal":"false"}}`, kv{"kms:GranteePrincipal": {"x"}}, true},
		{"Null false on absent", `{"Null":{"kms:GranteePrincipal":false}}`, kv{}, false},

		// Bool.
		{"Bool json true", `{"Bool":{"kms:GrantIsForAWSResource":true}}`, kv{"kms:GrantIsForAWSResource": {"true"}}, true},
		{"Bool string case-insensitive", `{"Bool":{"kms:GrantIsForAWSResource":"TRUE"}}`, kv{"kms:GrantIsForAWSResource": {"True"}}, true},
		{"Bool mismatch", `{"Bool":{"kms:GrantIsForAWSResource":"false"}}`, kv{"kms:GrantIsForAWSResource": {"true"}}, false},
		{"Bool request not a bool", `{"Bool":{"kms:GrantIsForAWSResource":"true"}}`, kv{"kms:GrantIsForAWSResource": {"yes"}}, false},
		{"BoolIfExists absent", `{"BoolIfExists":{"aws:MultiFactorAuthPresent":"true"}}`, kv{}, true},

		// Numeric.
		{"NumericEquals float", `{"NumericEquals":{"kms:X":1.5}}`, kv{"kms:X": {"1.50"}}, true},
		{"NumericNotEquals", `{"NumericNotEquals":{"kms:X":"1"}}`, kv{"kms:X": {"2"}}, true},
		{"NumericLessThan", `{"NumericLessThan":{"kms:X":"10"}}`, kv{"kms:X": {"9"}}, true},
		{"NumericLessThan equal", `{"NumericLessThan":{"kms:X":"10"}}`, kv{"kms:X": {"10"}}, false},
		{"NumericLessThanEquals", `{"NumericLessThanEquals":{"kms:X":"10"}}`, kv{"kms:X": {"10"}}, true},
		{"NumericGreaterThan", `{"NumericGreaterThan":{"kms:X":"10"}}`, kv{"kms:X": {"10.1"}}, true},
		{"NumericGreaterThanEquals", `{"NumericGreaterThanEquals":{"kms:X":"10"}}`, kv{"kms:X": {"9"}}, false},
		{"Numeric request not a number", `{"NumericGreaterThan":{"kms:X":"1"}}`, kv{"kms:X": {"many"}}, false},

		// Dates.
		{"DateEquals across forms", `{"DateEquals":{"aws:CurrentTime":"2024-01-01T00:00:00Z"}}`, kv{"aws:CurrentTime": {"1704067200"}}, true},
		{"DateEquals zone offset", `{"DateEquals":{"aws:CurrentTime":"2024-01-01T01:00:00+01:00"}}`, kv{"aws:CurrentTime": {"2024-01-01T00:00:00Z"}}, true},
		{"DateNotEquals", `{"DateNotEquals":{"aws:CurrentTime":"2024-01-01"}}`, kv{"aws:CurrentTime": {"2024-01-02T00:00:00Z"}}, true},
		{"DateLessThan", `{"DateLessThan":{"aws:CurrentTime":"2024-01-01T00:00:00Z"}}`, kv{"aws:CurrentTime": {"2023-12-31T23:59:59Z"}}, true},
		{"DateLessThanEquals", `{"DateLessThanEquals":{"aws:CurrentTime":"2024-01-01"}}`, kv{"aws:CurrentTime": {"2024-01-01T00:00:00Z"}}, true},
		{"DateGreaterThan", `{"DateGreaterThan":{"aws:CurrentTime":"2024-01-01T00:00:00Z"}}`, kv{"aws:CurrentTime": {"2024-01-01T00:00:00Z"}}, false},
		{"DateGreaterThanEquals epoch policy", `{"DateGreaterThanEquals":{"aws:CurrentTime":1704067200}}`, kv{"aws:CurrentTime": {"2024-06-01T12:00:00.5Z"}}, true},
		{"Date request unparsable", `{"DateGreaterThan":{"aws:CurrentTime":"2024-01-01"}}`, kv{"aws:CurrentTime": {"soon"}}, false},

		// IP addresses.
		{"IpAddress in CIDR", `{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}`, kv{"aws:SourceIp": {"203.0.113.7"}}, true},
		{"IpAddress unmasked CIDR", `{"IpAddress":{"aws:SourceIp":"203.0.113.9/24"}}`, kv{"aws:SourceIp": {"203.0.113.7"}}, true},
		{"IpAddress outside", `{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}`, kv{"aws:SourceIp": {"198.51.100.1"}}, false},
		{"IpAddress plain IP", `{"IpAddress":{"aws:SourceIp":"198.51.100.1"}}`, kv{"aws:SourceIp": {"198.51.100.1"}}, true},
		{"IpAddress IPv6", `{"IpAddress":{"aws:SourceIp":"2001:db8::/32"}}`, kv{"aws:SourceIp": {"2001:db8::1"}}, true},
		{"IpAddress v4-mapped", `{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}`, kv{"aws:SourceIp": {"::ffff:10.1.2.3"}}, true},
		{"NotIpAddress", `{"NotIpAddress":{"aws:SourceIp":["10.0.0.0/8","192.168.0.0/16"]}}`, kv{"aws:SourceIp": {"203.0.113.7"}}, true},
		{"NotIpAddress inside", `{"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}`, kv{"aws:SourceIp": {"10.0.0.1"}}, false},

		// ARNs.
		{"ArnEquals exact", `{"ArnEquals":{"aws:PrincipalArn":"arn:aws:iam::111122223333:role/R"}}`, kv{"aws:PrincipalArn": {"arn:aws:iam::111122223333:role/R"}}, true},
		{"ArnLike per-part wildcard", `{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/Admin*"}}`, kv{"aws:PrincipalArn": {"arn:aws:iam::444455556666:role/AdminOps"}}, true},
		{"ArnLike wildcard stays in its part", `{"ArnLike":{"aws:PrincipalArn":"arn:aws:*:role/R"}}`, kv{"aws:PrincipalArn": {"arn:aws:iam::111122223333:role/R"}}, false},
		{"ArnLike resource with colons", `{"ArnLike":{"kms:X":"arn:aws:logs:*:*:log-group:app:*"}}`, kv{"kms:X": {"arn:aws:logs:us-east-1:111122223333:log-group:app:stream"}}, true},
		{"ArnLike not an arn", `{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/*"}}`, kv{"aws:PrincipalArn": {"role/R"}}, false},
		{"ArnNotEquals", `{"ArnNotEquals":{"aws:PrincipalArn":"arn:aws:iam::111122223333:role/R"}}`, kv{"aws:PrincipalArn": {"arn:aws:iam::111122223333:role/S"}}, true},
		{"ArnNotLike", `{"ArnNotLike":{"aws:PrincipalArn":"arn:aws:iam::111122223333:*"}}`, kv{"aws:PrincipalArn": {"arn:aws:iam::111122223333:role/S"}}, false},

		// Combination: keys and operators are ANDed.
		{"two keys both hold", `{"StringEquals":{"kms:CallerAccount":"111122223333","kms:ViaService":"ec2.us-east-1.amazonaws.com"}}`, kv{"kms:CallerAccount": {"111122223333"}, "kms:ViaService": {"ec2.us-east-1.amazonaws.com"}}, true},
		{"two keys one fails", `{"StringEquals":{"kms:CallerAccount":"111122223333","kms:ViaService":"ec2.us-east-1.amazonaws.com"}}`, kv{"kms:CallerAccount": {"111122223333"}}, false},
		{"two operators one fails", `{"StringEquals":{"kms:CallerAccount":"111122223333"},"Bool":{"aws:SecureTransport":"true"}}`, kv{"kms:CallerAccount": {"111122223333"}, "aws:SecureTransport": {"false"}}, false},
		{"unknown key is absent", `{"StringEquals":{"kms:NoSuchKey":"x"}}`, kv{"kms:ViaService": {"x"}}, false},
		{"policy variable compared literally", `{"StringEquals":{"kms:X":"${aws:username}"}}`, kv{"kms:X": {"${aws:username}"}, "aws:username": {"alice"}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := `{"Statement":{"Effect":"Allow","Action":"kms:*","Resource":"*","Condition":` + tt.cond + `}}`
			p, err := Parse([]byte(doc), IdentityPolicy)
			require.NoError(t, err)
			r := p.Evaluate(&Request{Action: "kms:Encrypt", Resource: "*", Context: ctx(tt.ctx)})
			want := NoMatch
			if tt.want {
				want = Allow
			}
			assert.Equal(t, want, r.Effect)
		})
	}
}

func TestContextHelpers(t *testing.T) {
	p, err := PrincipalFromARN("arn:aws:sts::111122223333:assumed-role/R/s")
	require.NoError(t, err)
	assert.Equal(t, Principal{ARN: "arn:aws:sts::111122223333:assumed-role/R/s", Account: "111122223333"}, p)
	for _, bad := range []string{"", "arn:aws:kms:us-east-1:111122223333:key/k", "arn:aws:iam::1:root", "arn:aws:iam::111122223333:"} {
		_, err := PrincipalFromARN(bad)
		assert.Error(t, err, bad)
	}

	req := NewRequest("kms:CreateKey", "*", p)
	req.Context.SetEncryptionContext(map[string]string{"b": "2", "A": "1"})
	req.Context.SetResourceTags(map[string]string{"Env": "prod"})
	req.Context.SetRequestTags(map[string]string{"Team": "x", "Cost": "y"})
	tests := []struct {
		key  string
		want []string
	}{
		{"aws:principalarn", []string{p.ARN}},
		{"AWS:PrincipalAccount", []string{"111122223333"}},
		{"kms:CallerAccount", []string{"111122223333"}},
		{"kms:EncryptionContext:A", []string{"1"}},
		{"kms:encryptioncontext:b", []string{"2"}},
		{"kms:EncryptionContextKeys", []string{"A", "b"}},
		{"aws:ResourceTag/Env", []string{"prod"}},
		{"aws:RequestTag/Team", []string{"x"}},
		{"aws:TagKeys", []string{"Cost", "Team"}},
	}
	for _, tt := range tests {
		got, ok := req.Context.Get(tt.key)
		assert.True(t, ok, tt.key)
		assert.Equal(t, tt.want, got, tt.key)
	}
	_, ok := req.Context.Get("kms:EncryptionContext:a")
	assert.False(t, ok, "encryption context keys are case-sensitive")

	req.Context.Add("kms:GrantOperations", "Encrypt")
	req.Context.Add("KMS:GRANTOPERATIONS", "Decrypt")
	got, _ := req.Context.Get("kms:GrantOperations")
	assert.Equal(t, []string{"Encrypt", "Decrypt"}, got)

	empty := NewRequest("kms:ListKeys", "*", Principal{})
	assert.Empty(t, empty.Context)
}
