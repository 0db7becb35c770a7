package kms_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The cast of the access-control tests: in the key's account a key
// administrator and a key user with no identity policy (so only key
// policies and grants give them anything), an outsider with no access at
// all, and in the other account a user whose identity policy allows
// kms:Encrypt and kms:Decrypt on any key, and one with no identity policy.
var (
	keyAdmin = kms.Principal{AccessKeyID: "AKIAKEYADMIN00000001", Secret: "keyadmin-secret-000000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":user/keyadmin"}
	keyUser = kms.Principal{AccessKeyID: "AKIAKEYUSER000000001", Secret: "keyuser-secret-0000000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":role/app"}
	outsider = kms.Principal{AccessKeyID: "AKIAOUTSIDER00000001", Secret: "outsider-secret-000000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":user/outsider"}
	partner = kms.Principal{AccessKeyID: "AKIAPARTNER000000001", Secret: "partner-secret-0000000000000000000000",
		Account: otherAccount, ARN: "arn:aws:iam::" + otherAccount + ":role/partner",
		Policy: `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt","kms:DescribeKey"],"Resource":"*"}}`}
	partnerNoPolicy = kms.Principal{AccessKeyID: "AKIAPARTNER000000002", Secret: "partner2-secret-000000000000000000000",
		Account: otherAccount, ARN: "arn:aws:iam::" + otherAccount + ":user/nopolicy"}
)

func newAccessEnv(t *testing.T) *env {
	return newEnvWith(t, func(e *env) {
		e.principals = []kms.Principal{keyAdmin, keyUser, outsider, partner, partnerNoPolicy}
	})
}

// separationOfDuties lets the admin principal (which creates the key and
// must keep control of its policy) and the key administrator manage the key
// but not use it, and the key user use it but not manage it.
const separationOfDuties = `{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "Administrators", "Effect": "Allow",
     "Principal": {"AWS": ["arn:aws:iam::111122223333:user/keyadmin", "arn:aws:iam::111122223333:user/admin"]},
     "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*", "kms:Revoke*",
                "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource",
                "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"],
     "Resource": "*"},
    {"Sid": "Users", "Effect": "Allow",
     "Principal": {"AWS": "arn:aws:iam::111122223333:role/app"},
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
     "Resource": "*"},
    {"Sid": "FinanceOnly", "Effect": "Deny",
     "Principal": {"AWS": "arn:aws:iam::111122223333:role/app"},
     "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"StringNotEquals": {"kms:EncryptionContext:dept": "finance"}}}
  ]
}`

func denied(user kms.Principal, action, resource, why string) string {
	return "User: " + user.ARN + " is not authorized to perform: " + action + " on resource: " + resource + " " + why
}

func TestDefaultKeyPolicyDelegatesToIdentityPolicies(t *testing.T) {
	t.Parallel()
	e := newAccessEnv(t)
	id := e.createKey(e.admin())
	for _, p := range []kms.Principal{keyAdmin, keyUser, outsider} {
		_, err := e.client(p, region).Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
		requireAPIError(t, err, "AccessDeniedException", denied(p, "kms:Encrypt", arn(id), "because no identity-based policy allows the kms:Encrypt action"))
	}
	// Operations without a key are the identity policy's alone.
	_, err := e.client(outsider, region).ListKeys(bg(), &awskms.ListKeysInput{})
	requireAPIError(t, err, "AccessDeniedException", denied(outsider, "kms:ListKeys", "*", "because no identity-based policy allows the kms:ListKeys action"))
	_, err = e.client(outsider, region).CreateKey(bg(), &awskms.CreateKeyInput{})
	requireAPIError(t, err, "AccessDeniedException", "")
	// A key that does not exist in one's own account is still NotFound.
	_, err = e.client(outsider, region).DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String("1234abcd-12ab-34cd-56ef-1234567890ab")})
	requireAPIError(t, err, "NotFoundException", "")
}

func TestSeparationOfDuties(t *testing.T) {
	t.Parallel()
	e := newAccessEnv(t)
	out, err := e.admin().CreateKey(bg(), &awskms.CreateKeyInput{Policy: aws.String(separationOfDuties)})
	require.NoError(t, err)
	id := *out.KeyMetadata.KeyId
	admin, user := e.client(keyAdmin, region), e.client(keyUser, region)

	// The administrator manages but cannot use the key.
	_, err = admin.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	require.NoError(t, err)
	_, err = admin.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &id})
	require.NoError(t, err)
	_, err = admin.TagResource(bg(), &awskms.TagResourceInput{KeyId: &id, Tags: []types.Tag{{TagKey: aws.String("owner"), TagValue: aws.String("sec")}}})
	require.NoError(t, err)
	_, err = admin.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	requireAPIError(t, err, "AccessDeniedException", denied(keyAdmin, "kms:Encrypt", arn(id), "because no resource-based policy allows the kms:Encrypt action"))

	// The user uses but cannot manage it, and decrypts only finance data.
	enc, err := user.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("salaries"), EncryptionContext: map[string]string{"dept": "finance"}})
	require.NoError(t, err)
	dec, err := user.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"dept": "finance"}})
	require.NoError(t, err)
	assert.Equal(t, []byte("salaries"), dec.Plaintext)
	other, err := user.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("menu"), EncryptionContext: map[string]string{"dept": "canteen"}})
	require.NoError(t, err)
	_, err = user.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: other.CiphertextBlob, EncryptionContext: map[string]string{"dept": "canteen"}})
	requireAPIError(t, err, "AccessDeniedException", denied(keyUser, "kms:Decrypt", arn(id), "with an explicit deny in a resource-based policy"))
	_, err = user.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	requireAPIError(t, err, "AccessDeniedException", denied(keyUser, "kms:DisableKey", arn(id), "because no resource-based policy allows the kms:DisableKey action"))
	_, err = user.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: aws.String(separationOfDuties), PolicyName: aws.String("default")})
	requireAPIError(t, err, "AccessDeniedException", "")

	// DryRun is authorized like the real call.
	_, err = user.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x"), DryRun: aws.Bool(true)})
	requireAPIError(t, err, "DryRunOperationException", "")
	_, err = admin.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x"), DryRun: aws.Bool(true)})
	requireAPIError(t, err, "AccessDeniedException", "")

	// The outsider can do nothing with it, and the log says why.
	_, err = e.client(outsider, region).DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	requireAPIError(t, err, "AccessDeniedException", "")
	log := e.log.String()
	assert.Contains(t, log, `"authz":"allow kms:Encrypt on `+arn(id)+` by key policy statement Users"`)
	assert.Contains(t, log, `"authz":"deny kms:Decrypt on `+arn(id)+` by key policy statement FinanceOnly"`)
	assert.NotContains(t, log, "salaries")

	// Survives a restart: the policy is the key's, on disk.
	e.restart()
	_, err = e.client(keyUser, region).Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)
	_, err = e.client(keyAdmin, region).Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	requireAPIError(t, err, "AccessDeniedException", "")
}

func TestPolicyLockoutSafetyCheck(t *testing.T) {
	t.Parallel()
	e := newAccessEnv(t)
	c := e.admin()
	usersOnly := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/app"},"Action":"kms:*","Resource":"*"}]}`
	const lockout = "The new key policy will not allow you to update the key policy in the future."
	_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{Policy: aws.String(usersOnly)})
	requireAPIError(t, err, "MalformedPolicyDocumentException", lockout)
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{Policy: aws.String(usersOnly), BypassPolicyLockoutSafetyCheck: true})
	require.NoError(t, err)
	// Bypassed: the admin is now locked out, as AWS warns.
	_, err = c.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: out.KeyMetadata.KeyId, Policy: aws.String(usersOnly), PolicyName: aws.String("default")})
	requireAPIError(t, err, "AccessDeniedException", "")

	id := e.createKey(c)
	_, err = c.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: aws.String(usersOnly), PolicyName: aws.String("default")})
	requireAPIError(t, err, "MalformedPolicyDocumentException", lockout)
	_, err = c.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: aws.String(`{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}`), PolicyName: aws.String("default")})
	requireAPIError(t, err, "MalformedPolicyDocumentException", "")
	got, err := c.GetKeyPolicy(bg(), &awskms.GetKeyPolicyInput{KeyId: &id, PolicyName: aws.String("default")})
	require.NoError(t, err)
	assert.Contains(t, *got.Policy, "Enable IAM User Permissions", "a refused policy changes nothing")
	_, err = c.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: aws.String(separationOfDuties), PolicyName: aws.String("default")})
	require.NoError(t, err)
	got, err = c.GetKeyPolicy(bg(), &awskms.GetKeyPolicyInput{KeyId: &id, PolicyName: aws.String("default")})
	require.NoError(t, err)
	assert.Equal(t, separationOfDuties, *got.Policy, "byte for byte")
}

func TestCrossAccountNeedsBothSides(t *testing.T) {
	t.Parallel()
	e := newAccessEnv(t)
	c := e.admin()
	id := e.createKey(c)
	keyArn := arn(id)
	p, np := e.client(partner, region), e.client(partnerNoPolicy, region)

	// The default policy trusts only the key's own account.
	_, err := p.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyArn, Plaintext: []byte("x")})
	requireAPIError(t, err, "AccessDeniedException", denied(partner, "kms:Encrypt", keyArn, "because no resource-based policy allows the kms:Encrypt action"))
	// A key that does not exist looks the same from outside.
	missing := "arn:aws:kms:" + region + ":" + account + ":key/1234abcd-12ab-34cd-56ef-1234567890ab"
	_, err = p.Encrypt(bg(), &awskms.EncryptInput{KeyId: &missing, Plaintext: []byte("x")})
	requireAPIError(t, err, "AccessDeniedException", denied(partner, "kms:Encrypt", missing, "because no resource-based policy allows the kms:Encrypt action"))
	// Only ARNs reach another account; a bare id is the caller's own.
	_, err = p.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	requireAPIError(t, err, "NotFoundException", "")

	shared := `{"Version":"2012-10-17","Statement":[
 {"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
 {"Sid":"Partner","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::444455556666:root"},"Action":["kms:Encrypt","kms:Decrypt","kms:DescribeKey"],"Resource":"*"}]}`
	_, err = c.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: aws.String(shared), PolicyName: aws.String("default")})
	require.NoError(t, err)
	enc, err := p.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyArn, Plaintext: []byte("shared secret")})
	require.NoError(t, err)
	// Decrypt needs no KeyId: the ciphertext names the other account's key.
	dec, err := p.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, []byte("shared secret"), dec.Plaintext)
	// Both sides: the partner account's user without an identity policy
	// gets nothing, however the key policy trusts its account.
	_, err = np.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyArn, Plaintext: []byte("x")})
	requireAPIError(t, err, "AccessDeniedException", denied(partnerNoPolicy, "kms:Encrypt", keyArn, "because no identity-based policy allows the kms:Encrypt action"))
	// Management never crosses accounts.
	_, err = p.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &keyArn})
	requireAPIError(t, err, "NotFoundException", "")
	// And the key's own account keeps its delegation.
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
}

func TestIdentityPolicyExplicitDeny(t *testing.T) {
	t.Parallel()
	deny := kms.Principal{AccessKeyID: "AKIADENIED0000000001", Secret: "denied-secret-00000000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":user/denied",
		Policy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"},
		          {"Effect":"Deny","Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:level":"secret"}}}]}`}
	e := newEnvWith(t, func(e *env) { e.principals = []kms.Principal{deny} })
	c := e.client(deny, region)
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{})
	require.NoError(t, err)
	id := *out.KeyMetadata.KeyId
	for _, level := range []string{"public", "secret"} {
		t.Run(level, func(t *testing.T) {
			ec := map[string]string{"level": level}
			enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte(level), EncryptionContext: ec})
			require.NoError(t, err)
			_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
			if level == "secret" {
				requireAPIError(t, err, "AccessDeniedException", denied(deny, "kms:Decrypt", arn(id), "with an explicit deny in an identity-based policy"))
			} else {
				require.NoError(t, err)
			}
		})
	}
}

func TestReEncryptAuthorizesEachSide(t *testing.T) {
	t.Parallel()
	e := newAccessEnv(t)
	c := e.admin()
	src := e.createKey(c)
	only := `{"Version":"2012-10-17","Statement":[
 {"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
 {"Sid":"From","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/app"},"Action":["kms:ReEncryptFrom"],"Resource":"*"}]}`
	_, err := c.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &src, Policy: aws.String(only), PolicyName: aws.String("default")})
	require.NoError(t, err)
	dst := e.createKey(c)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &src, Plaintext: []byte("x")})
	require.NoError(t, err)
	_, err = e.client(keyUser, region).ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, DestinationKeyId: &dst})
	requireAPIError(t, err, "AccessDeniedException", denied(keyUser, "kms:ReEncryptTo", arn(dst), "because no identity-based policy allows the kms:ReEncryptTo action"))
	assert.True(t, strings.Contains(e.log.String(), "allow kms:ReEncryptFrom on "+arn(src)))
}

func TestGrantsAllowWhatPoliciesDoNot(t *testing.T) {
	t.Parallel()
	e := newAccessEnv(t)
	c := e.admin()
	id := e.createKey(c)
	o := e.client(outsider, region)
	hr := map[string]string{"dept": "hr"}
	_, err := o.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x"), EncryptionContext: hr})
	requireAPIError(t, err, "AccessDeniedException", "")

	g := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(outsider.ARN),
		RetiringPrincipal: aws.String(keyAdmin.ARN),
		Operations:        []types.GrantOperation{types.GrantOperationEncrypt, types.GrantOperationDecrypt, types.GrantOperationCreateGrant},
		Constraints:       &types.GrantConstraints{EncryptionContextSubset: hr}})
	// Used with its token and without: grants here take effect at once.
	for _, tokens := range [][]string{{*g.GrantToken}, nil} {
		enc, err := o.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("payroll"), GrantTokens: tokens,
			EncryptionContext: map[string]string{"dept": "hr", "year": "2026"}})
		require.NoError(t, err)
		dec, err := o.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, GrantTokens: tokens,
			EncryptionContext: map[string]string{"dept": "hr", "year": "2026"}})
		require.NoError(t, err)
		assert.Equal(t, []byte("payroll"), dec.Plaintext)
	}
	assert.Contains(t, e.log.String(), "allow kms:Encrypt on "+arn(id)+" by grant "+*g.GrantId)
	// The constraint holds: another department's context is not granted.
	_, err = o.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x"), EncryptionContext: map[string]string{"dept": "it"}})
	requireAPIError(t, err, "AccessDeniedException", "")
	// Nor are operations the grant does not list.
	_, err = o.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	requireAPIError(t, err, "AccessDeniedException", "")
	_, err = o.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x"), EncryptionContext: hr, GrantTokens: []string{"not-a-grant-token"}})
	requireAPIError(t, err, "InvalidGrantTokenException", "")

	// A grant for CreateGrant delegates only what it has.
	_, err = o.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(keyUser.ARN),
		Operations: []types.GrantOperation{types.GrantOperationEncrypt}, Constraints: &types.GrantConstraints{EncryptionContextSubset: hr}})
	require.NoError(t, err)
	_, err = o.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(keyUser.ARN),
		Operations: []types.GrantOperation{types.GrantOperationGenerateDataKey}, Constraints: &types.GrantConstraints{EncryptionContextSubset: hr}})
	requireAPIError(t, err, "AccessDeniedException", "")

	// Retired by its retiring principal, the grant no longer allows.
	_, err = e.client(keyAdmin, region).RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: g.GrantToken})
	require.NoError(t, err)
	_, err = o.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x"), EncryptionContext: hr})
	requireAPIError(t, err, "AccessDeniedException", "")

	// Revoked by the key's administrator: the same.
	g2 := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(outsider.ARN),
		Operations: []types.GrantOperation{types.GrantOperationEncrypt}})
	_, err = o.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)
	_, err = c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: g2.GrantId})
	require.NoError(t, err)
	_, err = o.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	requireAPIError(t, err, "AccessDeniedException", "")

	// A grant to another account's principal is enough on the key's side;
	// grants survive a restart.
	g3 := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(partner.ARN),
		Operations: []types.GrantOperation{types.GrantOperationEncrypt}})
	e.restart()
	keyArn := arn(id)
	_, err = e.client(partner, region).Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyArn, Plaintext: []byte("x"), GrantTokens: []string{*g3.GrantToken}})
	require.NoError(t, err)
	// An explicit deny still beats a grant.
	denyUser := `{"Version":"2012-10-17","Statement":[
 {"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
 {"Sid":"NoPartner","Effect":"Deny","Principal":{"AWS":"arn:aws:iam::444455556666:role/partner"},"Action":"kms:*","Resource":"*"}]}`
	_, err = e.admin().PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: aws.String(denyUser), PolicyName: aws.String("default")})
	require.NoError(t, err)
	_, err = e.client(partner, region).Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyArn, Plaintext: []byte("x")})
	requireAPIError(t, err, "AccessDeniedException", denied(partner, "kms:Encrypt", keyArn, "with an explicit deny in a resource-based policy"))
}

// TestDryRun: every operation with DryRun in the model is authorized and
// validated in full and then does nothing.
func TestDryRun(t *testing.T) {
	t.Parallel()
	e := newAccessEnv(t)
	c := e.admin()
	ks := &keys{e: e, m: map[string]string{}}
	sym := ks.get(types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	ecc := ks.get(types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
	agree := ks.get(types.KeySpecEccNistP256, types.KeyUsageTypeKeyAgreement)
	mac := ks.get(types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &sym, Plaintext: []byte("x")})
	require.NoError(t, err)
	sig, err := c.Sign(bg(), &awskms.SignInput{KeyId: &ecc, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	m, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &mac, Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	require.NoError(t, err)
	pk, err := c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &agree})
	require.NoError(t, err)
	g := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &sym, GranteePrincipal: aws.String(keyUser.ARN), Operations: []types.GrantOperation{types.GrantOperationDecrypt}})
	yes := aws.Bool(true)
	calls := map[string]func(*awskms.Client) error{
		"Encrypt": func(c *awskms.Client) error {
			_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &sym, Plaintext: []byte("x"), DryRun: yes})
			return err
		},
		"Decrypt": func(c *awskms.Client) error {
			_, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, DryRun: yes})
			return err
		},
		"ReEncrypt": func(c *awskms.Client) error {
			_, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, DestinationKeyId: &sym, DryRun: yes})
			return err
		},
		"GenerateDataKey": func(c *awskms.Client) error {
			_, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &sym, NumberOfBytes: aws.Int32(32), DryRun: yes})
			return err
		},
		"GenerateDataKeyWithoutPlaintext": func(c *awskms.Client) error {
			_, err := c.GenerateDataKeyWithoutPlaintext(bg(), &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: &sym, NumberOfBytes: aws.Int32(32), DryRun: yes})
			return err
		},
		"GenerateDataKeyPair": func(c *awskms.Client) error {
			_, err := c.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: &sym, KeyPairSpec: types.DataKeyPairSpecEccNistP256, DryRun: yes})
			return err
		},
		"GenerateDataKeyPairWithoutPlaintext": func(c *awskms.Client) error {
			_, err := c.GenerateDataKeyPairWithoutPlaintext(bg(), &awskms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: &sym, KeyPairSpec: types.DataKeyPairSpecEccNistP256, DryRun: yes})
			return err
		},
		"Sign": func(c *awskms.Client) error {
			_, err := c.Sign(bg(), &awskms.SignInput{KeyId: &ecc, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256, DryRun: yes})
			return err
		},
		"Verify": func(c *awskms.Client) error {
			_, err := c.Verify(bg(), &awskms.VerifyInput{KeyId: &ecc, Message: []byte("m"), Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256, DryRun: yes})
			return err
		},
		"GenerateMac": func(c *awskms.Client) error {
			_, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &mac, Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256, DryRun: yes})
			return err
		},
		"VerifyMac": func(c *awskms.Client) error {
			_, err := c.VerifyMac(bg(), &awskms.VerifyMacInput{KeyId: &mac, Message: []byte("m"), Mac: m.Mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256, DryRun: yes})
			return err
		},
		"DeriveSharedSecret": func(c *awskms.Client) error {
			_, err := c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &agree, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: pk.PublicKey, DryRun: yes})
			return err
		},
		"CreateGrant": func(c *awskms.Client) error {
			_, err := c.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &sym, GranteePrincipal: aws.String(outsider.ARN), Operations: []types.GrantOperation{types.GrantOperationEncrypt}, DryRun: yes})
			return err
		},
		"RetireGrant": func(c *awskms.Client) error {
			_, err := c.RetireGrant(bg(), &awskms.RetireGrantInput{GrantToken: g.GrantToken, DryRun: yes})
			return err
		},
		"RevokeGrant": func(c *awskms.Client) error {
			_, err := c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &sym, GrantId: g.GrantId, DryRun: yes})
			return err
		},
	}
	var withDryRun, names []string
	for _, op := range wire.Operations() {
		if slices.Contains(wire.InputMembers(op), "DryRun") {
			withDryRun = append(withDryRun, op)
		}
	}
	for op := range calls {
		names = append(names, op)
	}
	slices.Sort(names)
	require.Equal(t, withDryRun, names, "one call per operation with DryRun")
	for op, call := range calls {
		t.Run(op, func(t *testing.T) {
			requireAPIError(t, call(c), "DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
			// Authorization comes first: a DryRun of a caller without
			// access is a denial, also for RetireGrant.
			requireAPIError(t, call(e.client(outsider, region)), "AccessDeniedException", "")
		})
	}
	assert.Len(t, e.listGrants(sym), 1, "DryRun created, retired or revoked nothing")
}

// A grant to an account, like a key policy statement for one, passes the
// permission to the account: its principals need their identity policy too.
func TestGrantToAnAccountNeedsItsIdentityPolicy(t *testing.T) {
	t.Parallel()
	e := newAccessEnv(t)
	c := e.admin()
	id := e.createKey(c)
	keyArn := arn(id)
	e.createGrant(c, &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String("arn:aws:iam::" + otherAccount + ":root"),
		Operations: []types.GrantOperation{types.GrantOperationEncrypt}})
	_, err := e.client(partner, region).Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyArn, Plaintext: []byte("x")})
	require.NoError(t, err)
	_, err = e.client(partnerNoPolicy, region).Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyArn, Plaintext: []byte("x")})
	requireAPIError(t, err, "AccessDeniedException", "")
}
