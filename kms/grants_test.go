package kms_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	appRole   = "arn:aws:iam::" + account + ":role/app"
	opsUser   = "arn:aws:iam::" + account + ":user/ops"
	otherUser = "arn:aws:iam::" + otherAccount + ":user/other"
)

func (e *env) createGrant(c *awskms.Client, in *awskms.CreateGrantInput) *awskms.CreateGrantOutput {
	e.t.Helper()
	out, err := c.CreateGrant(bg(), in)
	require.NoError(e.t, err)
	return out
}

func (e *env) listGrants(keyID string) []types.GrantListEntry {
	e.t.Helper()
	out, err := e.admin().ListGrants(bg(), &awskms.ListGrantsInput{KeyId: &keyID})
	require.NoError(e.t, err)
	return out.Grants
}

func TestGrantLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	out := e.createGrant(c, &awskms.CreateGrantInput{
		KeyId: &id, GranteePrincipal: aws.String(appRole), RetiringPrincipal: aws.String(opsUser),
		Operations:  []types.GrantOperation{types.GrantOperationEncrypt, types.GrantOperationDecrypt, types.GrantOperationDescribeKey},
		Constraints: &types.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "a"}},
		Name:        aws.String("app-grant"),
	})
	require.Regexp(t, "^[0-9a-f]{64}$", *out.GrantId)
	require.NotEmpty(t, *out.GrantToken)

	gs := e.listGrants(arn(id))
	require.Len(t, gs, 1)
	g := gs[0]
	assert.Equal(t, arn(id), *g.KeyId)
	assert.Equal(t, *out.GrantId, *g.GrantId)
	assert.Equal(t, "app-grant", *g.Name)
	assert.Equal(t, appRole, *g.GranteePrincipal)
	assert.Equal(t, opsUser, *g.RetiringPrincipal)
	assert.Equal(t, "arn:aws:iam::"+account+":root", *g.IssuingAccount)
	assert.ElementsMatch(t, []types.GrantOperation{"Encrypt", "Decrypt", "DescribeKey"}, g.Operations)
	assert.Equal(t, map[string]string{"tenant": "a"}, g.Constraints.EncryptionContextSubset)
	assert.Nil(t, g.Constraints.EncryptionContextEquals)
	assert.WithinDuration(t, e.clock.Now(), *g.CreationDate, 2*time.Second)

	// Grants are durable.
	e.restart()
	c = e.admin()
	require.Len(t, e.listGrants(id), 1)

	// RevokeGrant: DryRun changes nothing; then the grant is gone.
	_, err := c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: out.GrantId, DryRun: aws.Bool(true)})
	requireAPIError(t, err, "DryRunOperationException", "")
	require.Len(t, e.listGrants(id), 1)
	_, err = c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: out.GrantId})
	require.NoError(t, err)
	require.Empty(t, e.listGrants(id))
	_, err = c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: out.GrantId})
	requireAPIError(t, err, "NotFoundException", "Grant ID "+*out.GrantId+" not found")
	_, err = c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: aws.String("not-a-grant-id")})
	requireAPIError(t, err, "InvalidGrantIdException", "")
}

func TestRetireGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	ops := []types.GrantOperation{types.GrantOperationDecrypt}
	byToken := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), Operations: ops})
	byID := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), Operations: ops})

	_, err := c.RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: byToken.GrantToken, DryRun: aws.Bool(true)})
	requireAPIError(t, err, "DryRunOperationException", "")
	_, err = c.RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: byToken.GrantToken})
	require.NoError(t, err)
	_, err = c.RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: byToken.GrantToken})
	requireAPIError(t, err, "NotFoundException", "")
	_, err = c.RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: aws.String("not a token")})
	requireAPIError(t, err, "InvalidGrantTokenException", "")

	_, err = c.RetireGrant(bg(), &awskms.RetireGrantInput{KeyId: aws.String(arn(id)), GrantId: byID.GrantId})
	require.NoError(t, err)
	require.Empty(t, e.listGrants(id))
	_, err = c.RetireGrant(bg(), &awskms.RetireGrantInput{KeyId: aws.String(arn(id)), GrantId: byID.GrantId})
	requireAPIError(t, err, "NotFoundException", "")
	_, err = c.RetireGrant(bg(), &awskms.RetireGrantInput{KeyId: aws.String(arn(id))})
	requireAPIError(t, err, "ValidationException", "")
}

// The retiring principal may retire a grant on another account's key; a
// stranger may not.
func TestRetireGrantAcrossAccounts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	other := e.client(principals[1], region)
	id := e.createKey(c)
	ops := []types.GrantOperation{types.GrantOperationDecrypt}
	mine := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), Operations: ops})
	_, err := other.RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: mine.GrantToken})
	requireAPIError(t, err, "AccessDeniedException", "")

	theirs := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(otherUser),
		RetiringPrincipal: aws.String(otherUser), Operations: ops})
	list, err := other.ListRetirableGrants(bg(), &awskms.ListRetirableGrantsInput{RetiringPrincipal: aws.String(otherUser)})
	require.NoError(t, err)
	require.Len(t, list.Grants, 1)
	assert.Equal(t, *theirs.GrantId, *list.Grants[0].GrantId)
	assert.Equal(t, arn(id), *list.Grants[0].KeyId)
	_, err = other.ListRetirableGrants(bg(), &awskms.ListRetirableGrantsInput{RetiringPrincipal: aws.String(opsUser)})
	requireAPIError(t, err, "AccessDeniedException", "")
	_, err = other.RetireGrant(bg(), &awskms.RetireGrantInput{KeyId: aws.String(arn(id)), GrantId: theirs.GrantId})
	require.NoError(t, err)

	// A grantee whose grant includes RetireGrant may retire it.
	self := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(otherUser),
		Operations: []types.GrantOperation{types.GrantOperationDecrypt, types.GrantOperationRetireGrant}})
	_, err = other.RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: self.GrantToken})
	require.NoError(t, err)
	require.Len(t, e.listGrants(id), 1)
}

func TestCreateGrantIdempotentName(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	in := &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), Name: aws.String("once"),
		Operations: []types.GrantOperation{types.GrantOperationEncrypt, types.GrantOperationDecrypt}}
	first := e.createGrant(c, in)
	in.Operations = []types.GrantOperation{types.GrantOperationDecrypt, types.GrantOperationEncrypt}
	again := e.createGrant(c, in)
	assert.Equal(t, *first.GrantId, *again.GrantId)
	require.Len(t, e.listGrants(id), 1)
	// A name is not unique: other parameters make another grant.
	in.Operations = []types.GrantOperation{types.GrantOperationDecrypt}
	other := e.createGrant(c, in)
	assert.NotEqual(t, *first.GrantId, *other.GrantId)
	require.Len(t, e.listGrants(id), 2)
	// Without a name every call is a new grant.
	in.Name = nil
	e.createGrant(c, in)
	e.createGrant(c, in)
	require.Len(t, e.listGrants(id), 4)
}

func TestCreateGrantValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	ok := []types.GrantOperation{types.GrantOperationDecrypt}
	for _, tc := range []struct {
		name string
		in   awskms.CreateGrantInput
		code string
	}{
		{"sign on a symmetric key", awskms.CreateGrantInput{Operations: []types.GrantOperation{types.GrantOperationSign}}, "ValidationException"},
		{"mac on a symmetric key", awskms.CreateGrantInput{Operations: []types.GrantOperation{types.GrantOperationDecrypt, types.GrantOperationGenerateMac}}, "ValidationException"},
		{"no operations", awskms.CreateGrantInput{Operations: []types.GrantOperation{}}, "ValidationException"},
		{"grantee not an ARN", awskms.CreateGrantInput{GranteePrincipal: aws.String("someone")}, "InvalidArnException"},
		{"grantee not a principal", awskms.CreateGrantInput{GranteePrincipal: aws.String(arn(id))}, "InvalidArnException"},
		{"retiring principal", awskms.CreateGrantInput{RetiringPrincipal: aws.String("arn:aws:iam::12:root")}, "InvalidArnException"},
		{"bad grant token", awskms.CreateGrantInput{GrantTokens: []string{"forged"}}, "InvalidGrantTokenException"},
		{"too many pairs", awskms.CreateGrantInput{Constraints: &types.GrantConstraints{EncryptionContextEquals: pairs(9)}}, "ValidationException"},
		{"alias", awskms.CreateGrantInput{KeyId: aws.String("alias/x")}, "NotFoundException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if in.KeyId == nil {
				in.KeyId = &id
			}
			if in.GranteePrincipal == nil {
				in.GranteePrincipal = aws.String(appRole)
			}
			if in.Operations == nil {
				in.Operations = ok
			}
			_, err := c.CreateGrant(bg(), &in)
			requireAPIError(t, err, tc.code, "")
		})
	}
	require.Empty(t, e.listGrants(id))

	for _, p := range []string{"arn:aws:iam::" + otherAccount + ":root", "arn:aws:iam::" + account + ":user/path/to/u",
		"arn:aws:sts::" + account + ":assumed-role/app/session-1", "arn:aws:sts::" + account + ":federated-user/bob"} {
		_, err := c.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: &p, Operations: ok})
		require.NoError(t, err, p)
	}

	// Key states: Disabled keys take grants, keys pending deletion do not.
	_, err := c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	require.NoError(t, err)
	e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), Operations: ok})
	_, err = c.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), Operations: ok, DryRun: aws.Bool(true)})
	requireAPIError(t, err, "DryRunOperationException", "")
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	_, err = c.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), Operations: ok})
	requireAPIError(t, err, "KMSInvalidStateException", arn(id)+" is pending deletion.")
	// Grants can still be listed and revoked.
	gs := e.listGrants(id)
	require.Len(t, gs, 5)
	_, err = c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: gs[0].GrantId})
	require.NoError(t, err)
}

func pairs(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

// TestGrantLimit is not parallel: it lowers the package-wide quota, which
// every other test's grants read.
func TestGrantLimit(t *testing.T) {
	kms.SetMaxGrantsPerKey(t, 3)
	e := newEnv(t)
	c := e.admin()
	a, b := e.createKey(c), e.createKey(c)
	in := func(key string, name string) *awskms.CreateGrantInput {
		return &awskms.CreateGrantInput{KeyId: &key, GranteePrincipal: aws.String(appRole), Name: aws.String(name),
			Operations: []types.GrantOperation{types.GrantOperationDecrypt}}
	}
	for i := range 3 {
		e.createGrant(c, in(a, fmt.Sprint("g", i)))
	}
	_, err := c.CreateGrant(bg(), in(a, "g3"))
	requireAPIError(t, err, "LimitExceededException", "The request was rejected because a quota was exceeded. You can have at most 3 grants per KMS key.")
	e.createGrant(c, in(a, "g0")) // a retry is no new grant
	e.createGrant(c, in(b, "g3")) // the quota is per key
}

func TestListGrantsPagingAndFilters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	var ids []string
	for i := range 5 {
		grantee := appRole
		if i%2 == 1 {
			grantee = opsUser
		}
		out := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: &grantee, Operations: []types.GrantOperation{types.GrantOperationDecrypt}})
		ids = append(ids, *out.GrantId)
	}
	var seen []string
	p := awskms.NewListGrantsPaginator(c, &awskms.ListGrantsInput{KeyId: &id, Limit: aws.Int32(2)})
	for p.HasMorePages() {
		page, err := p.NextPage(bg())
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Grants), 2)
		for _, g := range page.Grants {
			seen = append(seen, *g.GrantId)
		}
	}
	assert.ElementsMatch(t, ids, seen)

	out, err := c.ListGrants(bg(), &awskms.ListGrantsInput{KeyId: &id, GranteePrincipal: aws.String(opsUser)})
	require.NoError(t, err)
	assert.Len(t, out.Grants, 2)
	out, err = c.ListGrants(bg(), &awskms.ListGrantsInput{KeyId: &id, GrantId: &ids[2]})
	require.NoError(t, err)
	require.Len(t, out.Grants, 1)
	assert.Equal(t, ids[2], *out.Grants[0].GrantId)
	assert.Nil(t, out.Grants[0].Name)
	assert.Nil(t, out.Grants[0].Constraints)

	_, err = c.ListGrants(bg(), &awskms.ListGrantsInput{KeyId: &id, Marker: aws.String("not-ours")})
	requireAPIError(t, err, "InvalidMarkerException", "Invalid marker")
	_, err = c.ListGrants(bg(), &awskms.ListGrantsInput{KeyId: &id, GrantId: aws.String("xyz")})
	requireAPIError(t, err, "InvalidGrantIdException", "")
	// Another account may list only if the key policy lets it.
	_, err = e.client(principals[1], region).ListGrants(bg(), &awskms.ListGrantsInput{KeyId: aws.String(arn(id))})
	requireAPIError(t, err, "AccessDeniedException", "")
}

func TestDeletingAKeyDeletesItsGrants(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	g := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), RetiringPrincipal: aws.String(opsUser),
		Operations: []types.GrantOperation{types.GrantOperationDecrypt}})
	_, err := c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	e.clock.Advance(8 * 24 * time.Hour)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	list, err := c.ListRetirableGrants(bg(), &awskms.ListRetirableGrantsInput{RetiringPrincipal: aws.String(opsUser)})
	require.NoError(t, err)
	assert.Empty(t, list.Grants)
	_, err = c.RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: g.GrantToken})
	requireAPIError(t, err, "NotFoundException", "")
}

func TestGrantAllows(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	create := func(grantee string, ops []types.GrantOperation, gc *types.GrantConstraints) string {
		return *e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: &grantee, Operations: ops, Constraints: gc}).GrantId
	}
	plain := create(appRole, []types.GrantOperation{"Encrypt"}, nil)
	equals := create(opsUser, []types.GrantOperation{"Decrypt", "DescribeKey"}, &types.GrantConstraints{EncryptionContextEquals: map[string]string{"Tenant": "a"}})
	subset := create(otherUser, []types.GrantOperation{"GenerateDataKey"}, &types.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "a"}})
	whole := create("arn:aws:iam::"+account+":root", []types.GrantOperation{"ReEncryptFrom"}, nil)

	session := "arn:aws:sts::" + account + ":assumed-role/app/s1"
	for _, tc := range []struct {
		principal, op string
		ec            map[string]string
		want          string
	}{
		{appRole, "Encrypt", nil, plain},
		{appRole, "Encrypt", map[string]string{"any": "thing"}, plain},
		{session, "Encrypt", nil, plain},                               // an assumed-role session is its role
		{appRole, "Decrypt", nil, ""},                                  // not a granted operation
		{opsUser, "Encrypt", nil, ""},                                  // not the grantee
		{opsUser, "Decrypt", map[string]string{"tenant": "a"}, equals}, // keys fold case
		{opsUser, "Decrypt", map[string]string{"tenant": "A"}, ""},     // values do not
		{opsUser, "Decrypt", map[string]string{"tenant": "a", "x": "y"}, ""},
		{opsUser, "Decrypt", nil, ""},
		{opsUser, "DescribeKey", nil, equals}, // constraints do not apply
		{otherUser, "GenerateDataKey", map[string]string{"tenant": "a", "x": "y"}, subset},
		{otherUser, "GenerateDataKey", map[string]string{"x": "y"}, ""},
		{"arn:aws:iam::" + account + ":user/anyone", "ReEncryptFrom", nil, whole}, // an account grant covers its principals
		{"arn:aws:iam::" + otherAccount + ":user/anyone", "ReEncryptFrom", nil, ""},
	} {
		got, err := e.svc.GrantAllows(bg(), account, region, id, tc.principal, tc.op, tc.ec)
		require.NoError(t, err)
		assert.Equal(t, tc.want, got, "%s %s %v", tc.principal, tc.op, tc.ec)
	}

	_, err := c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: &plain})
	require.NoError(t, err)
	got, err := e.svc.GrantAllows(bg(), account, region, id, appRole, "Encrypt", nil)
	require.NoError(t, err)
	assert.Empty(t, got, "a revoked grant allows nothing")
}

// A grantee allowed CreateGrant by a grant may only create narrower grants.
func TestCreateGrantFromAGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	parent := *e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole),
		Operations:  []types.GrantOperation{"Encrypt", "Decrypt", "CreateGrant"},
		Constraints: &types.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "a"}}}).GrantId
	// appRole has no policy of its own: the parent grant is what allows it
	// to call CreateGrant, and what CreateGrant then holds it to.
	call := func() *kms.Request {
		return e.svc.RequestAs("CreateGrant", kms.Caller{Account: account, Region: region, PrincipalARN: appRole})
	}
	for _, tc := range []struct {
		name string
		ops  []string
		gc   *kms.GrantConstraints
		ok   bool
	}{
		{"same", []string{"Encrypt", "Decrypt", "CreateGrant"}, &kms.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "a"}}, true},
		{"fewer operations, stricter subset", []string{"Decrypt"}, &kms.GrantConstraints{EncryptionContextSubset: map[string]string{"Tenant": "a", "app": "x"}}, true},
		{"equals within the subset", []string{"Decrypt"}, &kms.GrantConstraints{EncryptionContextEquals: map[string]string{"tenant": "a"}}, true},
		{"more operations", []string{"Decrypt", "GenerateDataKey"}, &kms.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "a"}}, false},
		{"no constraint", []string{"Decrypt"}, nil, false},
		{"other constraint", []string{"Decrypt"}, &kms.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "b"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.svc.CreateGrant(bg(), call(), &kms.CreateGrantInput{KeyId: id, GranteePrincipal: opsUser, Operations: tc.ops, Constraints: tc.gc})
			if tc.ok {
				assert.NoError(t, err, tc.name)
			} else {
				var we *wire.Error
				require.ErrorAs(t, err, &we, tc.name)
				assert.Equal(t, wire.AccessDenied, we.Type, tc.name)
			}
		})
	}
	// A parent grant that is gone allows nothing.
	_, err := c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: &parent})
	require.NoError(t, err)
	_, err = e.svc.CreateGrant(bg(), call(), &kms.CreateGrantInput{KeyId: id, GranteePrincipal: opsUser, Operations: []string{"Decrypt"},
		Constraints: &kms.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "a"}}})
	var we *wire.Error
	require.ErrorAs(t, err, &we)
	assert.Equal(t, wire.AccessDenied, we.Type)
}

func TestCheckGrantTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	g := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(appRole), Operations: []types.GrantOperation{"Decrypt"}})
	require.NoError(t, kms.CheckGrantTokens(nil))
	require.NoError(t, kms.CheckGrantTokens([]string{*g.GrantToken}))
	_, err := c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: g.GrantId})
	require.NoError(t, err)
	require.NoError(t, kms.CheckGrantTokens([]string{*g.GrantToken}), "a token of a grant that is gone is ignored")
	for _, bad := range []string{"x", *g.GrantToken + "AA", "AQ", *g.GrantToken + "=="} {
		var we *wire.Error
		require.ErrorAs(t, kms.CheckGrantTokens([]string{*g.GrantToken, bad}), &we, bad)
		assert.Equal(t, wire.InvalidGrantToken, we.Type)
	}
}
