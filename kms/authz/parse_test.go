package authz

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const defaultKeyPolicy = `{"Version":"2012-10-17","Id":"key-default-1","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}`

func TestParseGrammar(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		doc  string
		want func(t *testing.T, p *Policy)
	}{
		{"default key policy", KeyPolicy, defaultKeyPolicy, func(t *testing.T, p *Policy) {
			assert.Equal(t, "2012-10-17", p.Version)
			assert.Equal(t, "key-default-1", p.ID)
			require.Len(t, p.Statements, 1)
			st := p.Statements[0]
			assert.Equal(t, "Enable IAM User Permissions", st.Sid)
			assert.Equal(t, Allow, st.Effect)
			assert.Equal(t, []string{"kms:*"}, st.Actions)
			assert.Equal(t, []string{"*"}, st.Resources)
		}},
		{"single statement object, no version, no sid", IdentityPolicy,
			`{"Statement":{"Effect":"Deny","Action":["kms:Encrypt","kms:Decrypt"],"Resource":["arn:aws:kms:*:*:key/*"]}}`,
			func(t *testing.T, p *Policy) {
				assert.Empty(t, p.Version)
				require.Len(t, p.Statements, 1)
				assert.Equal(t, "#0", p.Statements[0].Sid)
				assert.Equal(t, Deny, p.Statements[0].Effect)
				assert.Equal(t, []string{"kms:encrypt", "kms:decrypt"}, p.Statements[0].Actions)
			}},
		{"old version and Not forms", KeyPolicy,
			`{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Get*","Resource":"*"},{"Effect":"Deny","NotPrincipal":{"AWS":["111122223333","arn:aws:iam::111122223333:user/Alice"]},"NotAction":"kms:Describe*","NotResource":"arn:aws:kms:us-east-1:111122223333:key/k1"}]}`,
			func(t *testing.T, p *Policy) {
				require.Len(t, p.Statements, 2)
				assert.Equal(t, "#1", p.Statements[1].Sid)
				assert.True(t, p.Statements[1].NotPrincipal)
				assert.True(t, p.Statements[1].NotAction)
				assert.True(t, p.Statements[1].NotResource)
				assert.Len(t, p.Statements[1].principals, 2)
			}},
		{"every principal shape and service", KeyPolicy,
			`{"Statement":[{"Effect":"Allow","Principal":{"AWS":["*","111122223333","arn:aws:iam::111122223333:root","arn:aws:iam::111122223333:user/a/b/Carol","arn:aws:iam::111122223333:role/Admin","arn:aws:sts::111122223333:assumed-role/Admin/sess"],"Service":"logs.amazonaws.com"},"Action":"kms:*","Resource":"*"}]}`,
			func(t *testing.T, p *Policy) { assert.Len(t, p.Statements[0].principals, 7) }},
		{"condition values of every JSON scalar type", IdentityPolicy,
			`{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":true},"NumericLessThan":{"kms:X":[5, "6.5"]},"ForAnyValue:StringLike":{"kms:EncryptionContextKeys":"app*"},"StringEqualsIfExists":{"kms:ViaService":"s3.amazonaws.com"},"Null":{"kms:GranteePrincipal":"false"}}}]}`,
			func(t *testing.T, p *Policy) {
				conds := p.Statements[0].conditions
				require.Len(t, conds, 5)
				assert.Equal(t, []string{"true"}, conds[0].values)
				assert.Equal(t, []string{"5", "6.5"}, conds[1].values)
				assert.Equal(t, forAnyValue, conds[2].qual)
				assert.True(t, conds[3].ifExists)
				assert.True(t, conds[4].null)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.doc), tt.kind)
			require.NoError(t, err)
			assert.Equal(t, tt.kind, p.Kind)
			tt.want(t, p)
		})
	}
}

func TestParseMalformed(t *testing.T) {
	const st = `"Effect":"Allow","Action":"kms:*","Resource":"*"`
	tests := []struct {
		name   string
		kind   Kind
		doc    string
		reason string
	}{
		{"not JSON", KeyPolicy, `{"Statement":`, "Policy is not a valid JSON document."},
		{"trailing data", KeyPolicy, defaultKeyPolicy + `{}`, "Policy is not a valid JSON document."},
		{"not an object", KeyPolicy, `[]`, "Policy must be a JSON object."},
		{"missing statement", KeyPolicy, `{"Version":"2012-10-17"}`, "Policy is missing required element - Statement"},
		{"empty statement list", KeyPolicy, `{"Statement":[]}`, "Policy is missing required element - Statement"},
		{"statement is a string", KeyPolicy, `{"Statement":"x"}`, "Policy has an invalid Statement element."},
		{"duplicate top-level key", KeyPolicy, `{"Statement":[],"Statement":[]}`, "Policy contains a duplicate JSON key."},
		{"duplicate statement key", IdentityPolicy, `{"Statement":{"Effect":"Deny","Effect":"Allow","Action":"kms:*","Resource":"*"}}`, "Policy contains a duplicate JSON key."},
		{"unknown top-level element", KeyPolicy, `{"Statement":[],"Foo":1}`, "Policy contains an unknown element - Foo"},
		{"unknown statement element", IdentityPolicy, `{"Statement":{` + st + `,"Principals":"*"}}`, "Policy contains a statement with an unknown element - Principals"},
		{"element names are case-sensitive", IdentityPolicy, `{"Statement":{"effect":"Allow","Action":"kms:*","Resource":"*"}}`, "Policy contains a statement with an unknown element - effect"},
		{"bad version", IdentityPolicy, `{"Version":"2012-10-18","Statement":{` + st + `}}`, "Policy has an invalid Version."},
		{"no effect", IdentityPolicy, `{"Statement":{"Action":"kms:*","Resource":"*"}}`, "Policy contains a statement with no Effect."},
		{"bad effect", IdentityPolicy, `{"Statement":{"Effect":"allow","Action":"kms:*","Resource":"*"}}`, "Policy contains a statement with an invalid Effect."},
		{"key policy without principal", KeyPolicy, `{"Statement":{` + st + `}}`, "Policy contains a statement with no principal."},
		{"identity policy with principal", IdentityPolicy, `{"Statement":{` + st + `,"Principal":"*"}}`, "Policy document should not specify a principal."},
		{"identity policy with NotPrincipal", IdentityPolicy, `{"Statement":{` + st + `,"NotPrincipal":{"AWS":"111122223333"}}}`, "Policy document should not specify a principal."},
		{"principal string other than star", KeyPolicy, `{"Statement":{` + st + `,"Principal":"111122223333"}}`, "Policy contains a statement with one or more invalid principals."},
		{"short account id", KeyPolicy, `{"Statement":{` + st + `,"Principal":{"AWS":"11112222333"}}}`, "Policy contains a statement with one or more invalid principals."},
		{"group is not a principal", KeyPolicy, `{"Statement":{` + st + `,"Principal":{"AWS":"arn:aws:iam::111122223333:group/Admins"}}}`, "Policy contains a statement with one or more invalid principals."},
		{"wildcard in user arn", KeyPolicy, `{"Statement":{` + st + `,"Principal":{"AWS":"arn:aws:iam::111122223333:user/*"}}}`, "Policy contains a statement with one or more invalid principals."},
		{"unknown principal type", KeyPolicy, `{"Statement":{` + st + `,"Principal":{"Federated":"cognito-identity.amazonaws.com"}}}`, "Policy contains a statement with one or more invalid principals."},
		{"empty principal list", KeyPolicy, `{"Statement":{` + st + `,"Principal":{"AWS":[]}}}`, "Policy contains a statement with one or more invalid principals."},
		{"both Principal and NotPrincipal", KeyPolicy, `{"Statement":{` + st + `,"Principal":"*","NotPrincipal":{"AWS":"*"}}}`, "Policy contains a statement with more than one principal element."},
		{"no action", IdentityPolicy, `{"Statement":{"Effect":"Allow","Resource":"*"}}`, "Policy contains a statement with no action."},
		{"empty action list", IdentityPolicy, `{"Statement":{"Effect":"Allow","Action":[],"Resource":"*"}}`, "Policy contains a statement with an invalid or empty Action."},
		{"numeric action", IdentityPolicy, `{"Statement":{"Effect":"Allow","NotAction":[1],"Resource":"*"}}`, "Policy contains a statement with an invalid or empty NotAction."},
		{"action without service", IdentityPolicy, `{"Statement":{"Effect":"Allow","Action":"Encrypt","Resource":"*"}}`, "Policy contains a statement with an invalid action: Encrypt"},
		{"Action and NotAction", IdentityPolicy, `{"Statement":{"Effect":"Allow","Action":"kms:*","NotAction":"kms:Get*","Resource":"*"}}`, "Policy contains a statement with both Action and NotAction."},
		{"no resource", IdentityPolicy, `{"Statement":{"Effect":"Allow","Action":"kms:*"}}`, "Policy contains a statement with no resource."},
		{"empty resource", IdentityPolicy, `{"Statement":{"Effect":"Allow","Action":"kms:*","Resource":""}}`, "Policy contains a statement with an empty resource."},
		{"unknown operator", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"StringEqual":{"kms:ViaService":"x"}}}}`, "Policy has an invalid condition operator: StringEqual"},
		{"NullIfExists", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"NullIfExists":{"kms:ViaService":"true"}}}}`, "Policy has an invalid condition operator: NullIfExists"},
		{"bad qualifier", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"ForSomeValues:StringLike":{"aws:TagKeys":"x"}}}}`, "Policy has an invalid condition operator: ForSomeValues:StringLike"},
		{"condition not an object", IdentityPolicy, `{"Statement":{` + st + `,"Condition":[]}}`, "Policy contains a statement with an invalid Condition element."},
		{"empty operator block", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"StringEquals":{}}}}`, "Policy has an invalid condition block for operator: StringEquals"},
		{"empty value list", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"StringEquals":{"kms:ViaService":[]}}}}`, "Policy has an invalid value for condition key kms:ViaService under operator: StringEquals"},
		{"object value", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"StringEquals":{"kms:ViaService":{"a":"b"}}}}}`, "Policy has an invalid value for condition key kms:ViaService under operator: StringEquals"},
		{"non-numeric number", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"NumericLessThan":{"kms:X":"ten"}}}}`, "Policy has an invalid value for condition key kms:X under operator NumericLessThan: ten"},
		{"bad date", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"DateLessThan":{"aws:CurrentTime":"tomorrow"}}}}`, "Policy has an invalid value for condition key aws:CurrentTime under operator DateLessThan: tomorrow"},
		{"bad cidr", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"IpAddress":{"aws:SourceIp":"10.0.0.0/33"}}}}`, "Policy has an invalid value for condition key aws:SourceIp under operator IpAddress: 10.0.0.0/33"},
		{"bad bool", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"Bool":{"aws:SecureTransport":"yes"}}}}`, "Policy has an invalid value for condition key aws:SecureTransport under operator Bool: yes"},
		{"bad null", IdentityPolicy, `{"Statement":{` + st + `,"Condition":{"Null":{"aws:SecureTransport":1}}}}`, "Policy has an invalid value for condition key aws:SecureTransport under operator Null: 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.doc), tt.kind)
			require.Error(t, err)
			assert.Nil(t, p)
			var me *MalformedError
			require.True(t, errors.As(err, &me), "error %v is not a *MalformedError", err)
			assert.Equal(t, tt.reason, me.Reason)
			assert.Equal(t, "authz: malformed policy: "+tt.reason, err.Error())
		})
	}
}

func TestParseDeepNesting(t *testing.T) {
	doc := `{"Statement":{"Effect":"Allow","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"k":`
	for range 100 {
		doc += "["
	}
	_, err := Parse([]byte(doc), IdentityPolicy)
	var me *MalformedError
	require.ErrorAs(t, err, &me)
	assert.Equal(t, "Policy is not a valid JSON document.", me.Reason)
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		defaultKeyPolicy,
		`{"Statement":{"Effect":"Deny","NotAction":"kms:Describe*","NotResource":"arn:aws:kms:*:*:key/*","NotPrincipal":{"AWS":["111122223333","arn:aws:sts::111122223333:assumed-role/R/S"]}}}`,
		`{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/a/R","Service":"x"},"Action":["kms:Encrypt"],"Resource":"*","Condition":{"ForAllValues:StringLikeIfExists":{"kms:EncryptionContextKeys":["a*","b?"]},"Null":{"kms:GrantIsForAWSResource":true},"NumericLessThanEquals":{"n":1e3},"DateGreaterThan":{"aws:CurrentTime":"2020-01-01T00:00:00Z"},"NotIpAddress":{"aws:SourceIp":["10.0.0.0/8","::1"]},"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/*"}}}]}`,
		`{"Statement":[],"Statement":[]}`,
		`{"Statement":{"Effect":"Allow","Action":[],"Resource":"*","Principal":"*"}}`,
		`{"Statement":{"Effect":"Allow","Action":"kms:*","Resource":"*","Principal":{"AWS":"arn:aws:iam::12:root"}}}`,
		`{"Statement":`,
		`[[[[[[`,
		`null`,
		`{"Version":1}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		for _, kind := range []Kind{KeyPolicy, IdentityPolicy} {
			p, err := Parse(doc, kind)
			if err != nil {
				var me *MalformedError
				if !errors.As(err, &me) || me.Reason == "" || p != nil {
					t.Fatalf("Parse returned %v, %v: want a *MalformedError with a reason and no policy", p, err)
				}
				continue
			}
			if len(p.Statements) == 0 {
				t.Fatalf("accepted policy has no statements")
			}
			// Whatever was accepted must evaluate without panicking and
			// with a well-formed result.
			p1, _ := PrincipalFromARN("arn:aws:iam::111122223333:user/Alice")
			req := NewRequest("kms:Encrypt", "arn:aws:kms:us-east-1:111122223333:key/k1", p1)
			req.Context.SetEncryptionContext(map[string]string{"a": "1"})
			r := p.Evaluate(req)
			if r.Effect != NoMatch && r.Statement == "" {
				t.Fatalf("result %+v names no statement", r)
			}
		}
	})
}
