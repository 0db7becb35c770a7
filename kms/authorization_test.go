package kms_test

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEveryOperationDeniesAPrincipalNoPolicyNames calls each of the 54
// operations with valid arguments against the admin's resources as a
// principal of the same account that no policy names: each answers
// AccessDeniedException, and nothing changed.
func TestEveryOperationDeniesAPrincipalNoPolicyNames(t *testing.T) {
	e := newEnvWith(t, func(e *env) {
		e.principals = []kms.Principal{outsider, keyAdmin, keyUser}
		e.addCluster("cluster-aaaaaaaaaaa", hsmtest.NewToken(t), nil)
		e.addCluster("cluster-bbbbbbbbbbb", hsmtest.NewToken(t), nil)
	})
	c := e.admin()
	sym := e.createKey(c)
	sym2 := e.createKey(c)
	_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/prod"), TargetKeyId: &sym})
	require.NoError(t, err)
	newKey := func(spec types.KeySpec, usage types.KeyUsageType) string {
		out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
		require.NoError(t, err)
		return *out.KeyMetadata.KeyId
	}
	sign := newKey(types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
	mac := newKey(types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac)
	agree := newKey(types.KeySpecEccNistP256, types.KeyUsageTypeKeyAgreement)
	pending := e.createKey(c)
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &pending, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &sym, Plaintext: []byte("secret")})
	require.NoError(t, err)
	sig, err := c.Sign(bg(), &awskms.SignInput{KeyId: &sign, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	tag, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &mac, Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	require.NoError(t, err)
	grant := e.createGrant(c, &awskms.CreateGrantInput{KeyId: &sym, GranteePrincipal: aws.String(keyUser.ARN),
		RetiringPrincipal: aws.String(keyAdmin.ARN), Operations: []types.GrantOperation{types.GrantOperationDecrypt}})
	storeID := e.createStore(c, "store", "cluster-aaaaaaaaaaa", "kmsuser-password")
	peer, err := ecdh.P256().GenerateKey(rand.Reader)
	require.NoError(t, err)
	peerDER, err := x509.MarshalPKIXPublicKey(peer.PublicKey())
	require.NoError(t, err)
	policy, err := c.GetKeyPolicy(bg(), &awskms.GetKeyPolicyInput{KeyId: &sym, PolicyName: aws.String("default")})
	require.NoError(t, err)

	o := e.client(outsider, region)
	calls := map[string]func() error{
		"CancelKeyDeletion": func() error {
			_, err := o.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &pending})
			return err
		},
		"ConnectCustomKeyStore": func() error {
			_, err := o.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &storeID})
			return err
		},
		"CreateAlias": func() error {
			_, err := o.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/bee"), TargetKeyId: &sym})
			return err
		},
		"CreateCustomKeyStore": func() error {
			_, err := o.CreateCustomKeyStore(bg(), &awskms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String("mine"),
				CloudHsmClusterId: aws.String("cluster-bbbbbbbbbbb"), TrustAnchorCertificate: aws.String(trustAnchor(t)),
				KeyStorePassword: aws.String("kmsuser-password")})
			return err
		},
		"CreateGrant": func() error {
			_, err := o.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &sym, GranteePrincipal: aws.String(outsider.ARN),
				Operations: []types.GrantOperation{types.GrantOperationEncrypt}})
			return err
		},
		"CreateKey": func() error {
			_, err := o.CreateKey(bg(), &awskms.CreateKeyInput{})
			return err
		},
		"Decrypt": func() error {
			_, err := o.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
			return err
		},
		"DeleteAlias": func() error {
			_, err := o.DeleteAlias(bg(), &awskms.DeleteAliasInput{AliasName: aws.String("alias/prod")})
			return err
		},
		"DeleteCustomKeyStore": func() error {
			_, err := o.DeleteCustomKeyStore(bg(), &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: &storeID})
			return err
		},
		"DeleteImportedKeyMaterial": func() error {
			_, err := o.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: &sym})
			return err
		},
		"DeriveSharedSecret": func() error {
			_, err := o.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &agree,
				KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: peerDER})
			return err
		},
		"DescribeCustomKeyStores": func() error {
			_, err := o.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{})
			return err
		},
		"DescribeKey": func() error {
			_, err := o.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &sym})
			return err
		},
		"DisableKey": func() error {
			_, err := o.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &sym})
			return err
		},
		"DisableKeyRotation": func() error {
			_, err := o.DisableKeyRotation(bg(), &awskms.DisableKeyRotationInput{KeyId: &sym})
			return err
		},
		"DisconnectCustomKeyStore": func() error {
			_, err := o.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &storeID})
			return err
		},
		"EnableKey": func() error {
			_, err := o.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &sym})
			return err
		},
		"EnableKeyRotation": func() error {
			_, err := o.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &sym})
			return err
		},
		"Encrypt": func() error {
			_, err := o.Encrypt(bg(), &awskms.EncryptInput{KeyId: &sym, Plaintext: []byte("x")})
			return err
		},
		"GenerateDataKey": func() error {
			_, err := o.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &sym, KeySpec: types.DataKeySpecAes256})
			return err
		},
		"GenerateDataKeyPair": func() error {
			_, err := o.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: &sym, KeyPairSpec: types.DataKeyPairSpecEccNistP256})
			return err
		},
		"GenerateDataKeyPairWithoutPlaintext": func() error {
			_, err := o.GenerateDataKeyPairWithoutPlaintext(bg(), &awskms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: &sym,
				KeyPairSpec: types.DataKeyPairSpecEccNistP256})
			return err
		},
		"GenerateDataKeyWithoutPlaintext": func() error {
			_, err := o.GenerateDataKeyWithoutPlaintext(bg(), &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: &sym,
				KeySpec: types.DataKeySpecAes256})
			return err
		},
		"GenerateMac": func() error {
			_, err := o.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &mac, Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			return err
		},
		"GenerateRandom": func() error {
			_, err := o.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(32)})
			return err
		},
		"GetKeyLastUsage": func() error {
			_, err := o.GetKeyLastUsage(bg(), &awskms.GetKeyLastUsageInput{KeyId: &sym})
			return err
		},
		"GetKeyPolicy": func() error {
			_, err := o.GetKeyPolicy(bg(), &awskms.GetKeyPolicyInput{KeyId: &sym})
			return err
		},
		"GetKeyRotationStatus": func() error {
			_, err := o.GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &sym})
			return err
		},
		"GetParametersForImport": func() error {
			_, err := o.GetParametersForImport(bg(), &awskms.GetParametersForImportInput{KeyId: &sym,
				WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
			return err
		},
		"GetPublicKey": func() error {
			_, err := o.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &sign})
			return err
		},
		"ImportKeyMaterial": func() error {
			_, err := o.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: &sym, ImportToken: []byte("token"),
				EncryptedKeyMaterial: []byte("material")})
			return err
		},
		"ListAliases": func() error {
			_, err := o.ListAliases(bg(), &awskms.ListAliasesInput{})
			return err
		},
		"ListGrants": func() error {
			_, err := o.ListGrants(bg(), &awskms.ListGrantsInput{KeyId: &sym})
			return err
		},
		"ListKeyPolicies": func() error {
			_, err := o.ListKeyPolicies(bg(), &awskms.ListKeyPoliciesInput{KeyId: &sym})
			return err
		},
		"ListKeyRotations": func() error {
			_, err := o.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &sym})
			return err
		},
		"ListKeys": func() error {
			_, err := o.ListKeys(bg(), &awskms.ListKeysInput{})
			return err
		},
		"ListResourceTags": func() error {
			_, err := o.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: &sym})
			return err
		},
		"ListRetirableGrants": func() error {
			_, err := o.ListRetirableGrants(bg(), &awskms.ListRetirableGrantsInput{RetiringPrincipal: aws.String(keyAdmin.ARN)})
			return err
		},
		"PutKeyPolicy": func() error {
			_, err := o.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &sym, Policy: policy.Policy, PolicyName: aws.String("default")})
			return err
		},
		"ReEncrypt": func() error {
			_, err := o.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, DestinationKeyId: &sym2})
			return err
		},
		"ReplicateKey": func() error {
			_, err := o.ReplicateKey(bg(), &awskms.ReplicateKeyInput{KeyId: &sym, ReplicaRegion: aws.String("us-east-2")})
			return err
		},
		"RetireGrant": func() error {
			_, err := o.RetireGrant(bg(), &awskms.RetireGrantInput{KeyId: &sym, GrantId: grant.GrantId})
			return err
		},
		"RevokeGrant": func() error {
			_, err := o.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &sym, GrantId: grant.GrantId})
			return err
		},
		"RotateKeyOnDemand": func() error {
			_, err := o.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &sym})
			return err
		},
		"ScheduleKeyDeletion": func() error {
			_, err := o.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &sym})
			return err
		},
		"Sign": func() error {
			_, err := o.Sign(bg(), &awskms.SignInput{KeyId: &sign, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		},
		"TagResource": func() error {
			_, err := o.TagResource(bg(), &awskms.TagResourceInput{KeyId: &sym, Tags: []types.Tag{{TagKey: aws.String("k"), TagValue: aws.String("v")}}})
			return err
		},
		"UntagResource": func() error {
			_, err := o.UntagResource(bg(), &awskms.UntagResourceInput{KeyId: &sym, TagKeys: []string{"k"}})
			return err
		},
		"UpdateAlias": func() error {
			_, err := o.UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: aws.String("alias/prod"), TargetKeyId: &sym2})
			return err
		},
		"UpdateCustomKeyStore": func() error {
			_, err := o.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &storeID,
				NewCustomKeyStoreName: aws.String("renamed")})
			return err
		},
		"UpdateKeyDescription": func() error {
			_, err := o.UpdateKeyDescription(bg(), &awskms.UpdateKeyDescriptionInput{KeyId: &sym, Description: aws.String("mine")})
			return err
		},
		"UpdatePrimaryRegion": func() error {
			_, err := o.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &sym, PrimaryRegion: aws.String("us-east-2")})
			return err
		},
		"Verify": func() error {
			_, err := o.Verify(bg(), &awskms.VerifyInput{KeyId: &sign, Message: []byte("m"), Signature: sig.Signature,
				SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		},
		"VerifyMac": func() error {
			_, err := o.VerifyMac(bg(), &awskms.VerifyMacInput{KeyId: &mac, Message: []byte("m"), Mac: tag.Mac,
				MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			return err
		},
	}
	var names []string
	for name := range calls {
		names = append(names, name)
	}
	slices.Sort(names)
	require.Equal(t, wire.Operations(), names, "one call per operation of the model")
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			requireAPIError(t, calls[name](), "AccessDeniedException", "")
		})
	}

	// Nothing changed.
	d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String("alias/prod")})
	require.NoError(t, err)
	assert.Equal(t, sym, *d.KeyMetadata.KeyId, "alias/prod still names its key")
	assert.Equal(t, types.KeyStateEnabled, d.KeyMetadata.KeyState)
	assert.Empty(t, *d.KeyMetadata.Description)
	d, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &pending})
	require.NoError(t, err)
	assert.Equal(t, types.KeyStatePendingDeletion, d.KeyMetadata.KeyState)
	aliases, err := c.ListAliases(bg(), &awskms.ListAliasesInput{})
	require.NoError(t, err)
	assert.Len(t, aliases.Aliases, 1, "no alias/bee")
	assert.Len(t, e.listGrants(sym), 1)
	tags, err := c.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: &sym})
	require.NoError(t, err)
	assert.Empty(t, tags.Tags)
	stores, err := c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{})
	require.NoError(t, err)
	require.Len(t, stores.CustomKeyStores, 1)
	assert.Equal(t, "store", *stores.CustomKeyStores[0].CustomKeyStoreName)
	assert.Equal(t, types.ConnectionStateTypeDisconnected, stores.CustomKeyStores[0].ConnectionState)
	keys, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
	require.NoError(t, err)
	assert.Len(t, keys.Keys, 6, "no key created")
}

// Alias principals: one whose identity policy allows the alias operations
// on the account's aliases (and nothing on keys), one with no policy.
var (
	aliasAdmin = kms.Principal{AccessKeyID: "AKIAALIASADMIN000001", Secret: "aliasadmin-secret-00000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":user/aliasadmin",
		Policy: `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["kms:CreateAlias","kms:UpdateAlias","kms:DeleteAlias"],
			"Resource":"arn:aws:kms:*:` + account + `:alias/*"}}`}
	aliasNobody = kms.Principal{AccessKeyID: "AKIAALIASNOBODY00001", Secret: "aliasnobody-secret-0000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":user/aliasnobody"}
)

// aliasKeyPolicy lets the alias principals run the alias operations on
// the key, by the key policy alone.
const aliasKeyPolicy = `{"Version":"2012-10-17","Statement":[
  {"Sid":"Root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
  {"Sid":"Aliases","Effect":"Allow","Principal":{"AWS":["arn:aws:iam::111122223333:user/aliasadmin","arn:aws:iam::111122223333:user/aliasnobody"]},
   "Action":["kms:CreateAlias","kms:UpdateAlias","kms:DeleteAlias"],"Resource":"*"}]}`

// TestAliasAuthorization is AWS's rule for the alias operations, over
// every combination of rights: CreateAlias needs the action on the alias
// (identity policy) and on the target key (key policy); UpdateAlias on the
// alias, the current target and the new one; DeleteAlias on the alias and
// its key.
func TestAliasAuthorization(t *testing.T) {
	e := newEnvWith(t, func(e *env) { e.principals = []kms.Principal{aliasAdmin, aliasNobody} })
	c := e.admin()
	keyWith := func(policy *string) string {
		out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{Policy: policy})
		require.NoError(t, err)
		return *out.KeyMetadata.KeyId
	}
	yes, no := keyWith(aws.String(aliasKeyPolicy)), keyWith(nil) // no: the default policy, delegating to IAM
	yes2, no2 := keyWith(aws.String(aliasKeyPolicy)), keyWith(nil)
	aliasARN := func(name string) string { return "arn:aws:kms:" + region + ":" + account + ":" + name }
	caller := func(alias bool) kms.Principal {
		if alias {
			return aliasAdmin
		}
		return aliasNobody
	}
	pick := func(ok bool, a, b string) string {
		if ok {
			return a
		}
		return b
	}
	n := 0
	newAlias := func(target string) string {
		n++
		name := fmt.Sprintf("alias/a%d", n)
		_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: &name, TargetKeyId: &target})
		require.NoError(t, err)
		return name
	}
	target := func(name string) string {
		out, err := c.ListAliases(bg(), &awskms.ListAliasesInput{})
		require.NoError(t, err)
		for _, a := range out.Aliases {
			if *a.AliasName == name {
				return *a.TargetKeyId
			}
		}
		return ""
	}
	for _, aliasRight := range []bool{true, false} {
		for _, keyRight := range []bool{true, false} {
			t.Run(fmt.Sprintf("CreateAlias/alias=%v/key=%v", aliasRight, keyRight), func(t *testing.T) {
				n++
				name := fmt.Sprintf("alias/new%d", n)
				k := pick(keyRight, yes, no)
				_, err := e.client(caller(aliasRight), region).CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: &name, TargetKeyId: &k})
				switch {
				case !aliasRight:
					requireAPIError(t, err, "AccessDeniedException", denied(caller(aliasRight), "kms:CreateAlias", aliasARN(name),
						"because no identity-based policy allows the kms:CreateAlias action"))
					assert.Empty(t, target(name))
				case !keyRight:
					requireAPIError(t, err, "AccessDeniedException", denied(caller(aliasRight), "kms:CreateAlias", arn(k),
						"because no identity-based policy allows the kms:CreateAlias action"))
					assert.Empty(t, target(name))
				default:
					require.NoError(t, err)
					assert.Equal(t, k, target(name))
				}
			})
			t.Run(fmt.Sprintf("DeleteAlias/alias=%v/key=%v", aliasRight, keyRight), func(t *testing.T) {
				k := pick(keyRight, yes, no)
				name := newAlias(k)
				_, err := e.client(caller(aliasRight), region).DeleteAlias(bg(), &awskms.DeleteAliasInput{AliasName: &name})
				if aliasRight && keyRight {
					require.NoError(t, err)
					assert.Empty(t, target(name))
					return
				}
				requireAPIError(t, err, "AccessDeniedException", "")
				assert.Equal(t, k, target(name), "the alias is still there")
			})
			for _, newRight := range []bool{true, false} {
				t.Run(fmt.Sprintf("UpdateAlias/alias=%v/current=%v/new=%v", aliasRight, keyRight, newRight), func(t *testing.T) {
					from, to := pick(keyRight, yes, no), pick(newRight, yes2, no2)
					name := newAlias(from)
					_, err := e.client(caller(aliasRight), region).UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: &name, TargetKeyId: &to})
					if aliasRight && keyRight && newRight {
						require.NoError(t, err)
						assert.Equal(t, to, target(name))
						return
					}
					requireAPIError(t, err, "AccessDeniedException", "")
					assert.Equal(t, from, target(name), "the alias did not move")
				})
			}
		}
	}
}

// TestRetireGrantAuthorization is AWS's rule for RetireGrant: the grant
// decides (its retiring principal; its grantee if it allows RetireGrant;
// the key's account, whose principals need kms:RetireGrant in their
// identity policy), and an explicit deny wins.
func TestRetireGrantAuthorization(t *testing.T) {
	root := kms.Principal{AccessKeyID: "AKIAROOT000000000001", Secret: "root-secret-000000000000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":root"}
	retirer := kms.Principal{AccessKeyID: "AKIARETIRER000000001", Secret: "retirer-secret-00000000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":user/retirer"}
	deniedRetirer := kms.Principal{AccessKeyID: "AKIADENIED0000000001", Secret: "denied-secret-000000000000000000000000",
		Account: account, ARN: "arn:aws:iam::" + account + ":user/denied",
		Policy: `{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"kms:RetireGrant","Resource":"*"}}`}
	e := newEnvWith(t, func(e *env) {
		e.principals = []kms.Principal{outsider, keyUser, root, retirer, deniedRetirer, partner}
	})
	c := e.admin()
	id := e.createKey(c)
	other := principals[1] // the other account's admin
	for _, tc := range []struct {
		name      string
		grantee   string
		retiring  string
		ops       []types.GrantOperation
		caller    kms.Principal
		byToken   bool
		wantAllow bool
	}{
		{"retiring principal", keyUser.ARN, retirer.ARN, []types.GrantOperation{"Decrypt"}, retirer, false, true},
		{"retiring principal by token", keyUser.ARN, retirer.ARN, []types.GrantOperation{"Decrypt"}, retirer, true, true},
		{"grantee without RetireGrant", keyUser.ARN, retirer.ARN, []types.GrantOperation{"Decrypt"}, keyUser, false, false},
		{"grantee with RetireGrant", keyUser.ARN, "", []types.GrantOperation{"Decrypt", "RetireGrant"}, keyUser, false, true},
		{"same account, no policy", keyUser.ARN, retirer.ARN, []types.GrantOperation{"Decrypt"}, outsider, true, false},
		{"same account, identity policy allows", keyUser.ARN, "", []types.GrantOperation{"Decrypt"}, principals[0], false, true},
		{"the key's account root", keyUser.ARN, "", []types.GrantOperation{"Decrypt"}, root, false, true},
		{"retiring principal with an explicit deny", keyUser.ARN, deniedRetirer.ARN, []types.GrantOperation{"Decrypt"}, deniedRetirer, false, false},
		{"another account, not named", keyUser.ARN, retirer.ARN, []types.GrantOperation{"Decrypt"}, other, true, false},
		{"retiring account, its admin", keyUser.ARN, "arn:aws:iam::" + otherAccount + ":root", []types.GrantOperation{"Decrypt"}, other, true, true},
		{"retiring account, principal without kms:RetireGrant", keyUser.ARN, "arn:aws:iam::" + otherAccount + ":root",
			[]types.GrantOperation{"Decrypt"}, partner, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: &tc.grantee, Operations: tc.ops}
			if tc.retiring != "" {
				in.RetiringPrincipal = &tc.retiring
			}
			g := e.createGrant(c, in)
			req := &awskms.RetireGrantInput{KeyId: aws.String(arn(id)), GrantId: g.GrantId}
			if tc.byToken {
				req = &awskms.RetireGrantInput{GrantToken: g.GrantToken}
			}
			_, err := e.client(tc.caller, region).RetireGrant(bg(), req)
			var left []string
			for _, lg := range e.listGrants(id) {
				left = append(left, *lg.GrantId)
			}
			if tc.wantAllow {
				require.NoError(t, err)
				assert.NotContains(t, left, *g.GrantId)
				return
			}
			requireAPIError(t, err, "AccessDeniedException", "")
			assert.Contains(t, left, *g.GrantId)
			_, err = c.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: g.GrantId})
			require.NoError(t, err)
		})
	}
}
