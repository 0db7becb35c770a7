package kms_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/stretchr/testify/require"
)

// racers is how many calls race for a quota's last places: more than any
// quota below, so that some must lose.
const racers = 60

// race starts n calls of fn at once and returns each call's error.
func race(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = fn(i)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// requireQuotaHeld asserts that exactly quota calls succeeded and every
// other one got LimitExceededException with AWS's message msg.
func requireQuotaHeld(t *testing.T, errs []error, quota int, msg string) {
	t.Helper()
	requireQuotaHeldWith(t, errs, quota, "LimitExceededException", msg)
}

// requireQuotaHeldWith is requireQuotaHeld for a quota AWS answers with
// another exception (TagException for the tags of a key).
func requireQuotaHeldWith(t *testing.T, errs []error, quota int, code, msg string) {
	t.Helper()
	got := map[string]int{}
	for _, err := range errs {
		var ae smithy.APIError
		switch {
		case err == nil:
			got["ok"]++
		case errors.As(err, &ae):
			got[ae.ErrorCode()+": "+ae.ErrorMessage()]++
		default:
			got[err.Error()]++
		}
	}
	want := map[string]int{"ok": quota, code + ": " + msg: len(errs) - quota}
	require.Equal(t, want, got, "outcomes of %d racing calls", len(errs))
}

// TestQuotasHoldUnderConcurrency races more calls than a quota allows and
// checks that exactly the quota is reached: the count and the insert are
// one transaction in the store, so no two calls can both take the last
// place.
func TestQuotasHoldUnderConcurrency(t *testing.T) {
	e := newEnv(t)
	c := e.admin()

	t.Run("CreateAlias", func(t *testing.T) {
		key := e.createKey(c)
		errs := race(racers, func(i int) error {
			_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String(fmt.Sprintf("alias/race-%02d", i)), TargetKeyId: &key})
			return err
		})
		requireQuotaHeld(t, errs, 50, "Cannot exceed quota for AliasesPerCMK: 50")
		out, err := c.ListAliases(bg(), &awskms.ListAliasesInput{KeyId: &key, Limit: aws.Int32(100)})
		require.NoError(t, err)
		require.Len(t, out.Aliases, 50, "aliases on the key")
	})

	t.Run("UpdateAlias", func(t *testing.T) {
		// Moving aliases onto a key counts against its quota as creating
		// them there does.
		full, other := e.createKey(c), e.createKey(c)
		for i := range 45 {
			_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String(fmt.Sprintf("alias/full-%02d", i)), TargetKeyId: &full})
			require.NoError(t, err)
		}
		for i := range 20 {
			_, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String(fmt.Sprintf("alias/move-%02d", i)), TargetKeyId: &other})
			require.NoError(t, err)
		}
		errs := race(20, func(i int) error {
			_, err := c.UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: aws.String(fmt.Sprintf("alias/move-%02d", i)), TargetKeyId: &full})
			return err
		})
		requireQuotaHeld(t, errs, 5, "Cannot exceed quota for AliasesPerCMK: 50")
		out, err := c.ListAliases(bg(), &awskms.ListAliasesInput{KeyId: &full, Limit: aws.Int32(100)})
		require.NoError(t, err)
		require.Len(t, out.Aliases, 50, "aliases on the key")
		_, err = c.UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: aws.String("alias/full-00"), TargetKeyId: &full})
		require.NoError(t, err, "an alias of a full key may be pointed at it again")
	})

	t.Run("TagResource", func(t *testing.T) {
		key := e.createKey(c)
		errs := race(racers, func(i int) error {
			_, err := c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &key, Tags: []types.Tag{{TagKey: aws.String(fmt.Sprintf("race-%02d", i)), TagValue: aws.String("v")}}})
			return err
		})
		requireQuotaHeldWith(t, errs, 50, "TagException", "Too many tags")
		out, err := c.ListResourceTags(bg(), &awskms.ListResourceTagsInput{KeyId: &key, Limit: aws.Int32(50)})
		require.NoError(t, err)
		require.Len(t, out.Tags, 50, "tags on the key")
		require.False(t, out.Truncated)
		// At the quota, replacing a value adds no tag key and still works.
		_, err = c.TagResource(bg(), &awskms.TagResourceInput{KeyId: &key, Tags: []types.Tag{{TagKey: out.Tags[0].TagKey, TagValue: aws.String("new")}}})
		require.NoError(t, err)
	})

	t.Run("CreateGrant", func(t *testing.T) {
		kms.SetMaxGrantsPerKey(t, 10)
		key := e.createKey(c)
		errs := race(racers, func(i int) error {
			_, err := c.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &key, Operations: []types.GrantOperation{types.GrantOperationDecrypt},
				GranteePrincipal: aws.String(fmt.Sprintf("arn:aws:iam::%s:user/grantee-%02d", account, i))})
			return err
		})
		requireQuotaHeld(t, errs, 10, "The request was rejected because a quota was exceeded. You can have at most 10 grants per KMS key.")
		out, err := c.ListGrants(bg(), &awskms.ListGrantsInput{KeyId: &key, Limit: aws.Int32(100)})
		require.NoError(t, err)
		require.Len(t, out.Grants, 10, "grants on the key")
	})
}

// racerCluster is the id of racer i's cluster, in AWS's form
// (cluster-[2-7a-zA-Z]{11,16}).
func racerCluster(i int) string {
	return fmt.Sprintf("cluster-racer%c%cquota", 'a'+i/26, 'a'+i%26)
}

// TestCustomKeyStoreQuotaUnderConcurrency races CreateCustomKeyStore calls,
// each on its own declared cluster, for the ten stores an account may have
// in a Region. The clusters share one token: only creation is exercised.
func TestCustomKeyStoreQuotaUnderConcurrency(t *testing.T) {
	e := newEnvWith(t, func(e *env) {
		tok := hsmtest.NewToken(t)
		for i := range racers {
			e.addCluster(racerCluster(i), tok, nil)
		}
	})
	c := e.admin()
	anchor := trustAnchor(t)
	errs := race(racers, func(i int) error {
		_, err := c.CreateCustomKeyStore(bg(), &awskms.CreateCustomKeyStoreInput{
			CustomKeyStoreName: aws.String(fmt.Sprintf("store-%02d", i)), CloudHsmClusterId: aws.String(racerCluster(i)),
			TrustAnchorCertificate: &anchor, KeyStorePassword: aws.String("password1"),
		})
		return err
	})
	requireQuotaHeld(t, errs, 10, "Cannot exceed quota for CustomKeyStoresPerAccount: 10")
	out, err := c.DescribeCustomKeyStores(bg(), &awskms.DescribeCustomKeyStoresInput{})
	require.NoError(t, err)
	require.Len(t, out.CustomKeyStores, 10, "stores in the account and Region")

	t.Run("UpdateUniqueness", func(t *testing.T) {
		// An update that would take another store's name or cluster is
		// refused with the rule it broke.
		a, b := out.CustomKeyStores[0], out.CustomKeyStores[1]
		_, err := c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: b.CustomKeyStoreId, NewCustomKeyStoreName: a.CustomKeyStoreName})
		requireAPIError(t, err, "CustomKeyStoreNameInUseException", "A custom key store named "+*a.CustomKeyStoreName+" already exists in this account and Region.")
		_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: b.CustomKeyStoreId, CloudHsmClusterId: a.CloudHsmClusterId})
		requireAPIError(t, err, "CloudHsmClusterInUseException", "The cluster "+*a.CloudHsmClusterId+" is already associated with a custom key store.")
	})

	t.Run("OtherRegion", func(t *testing.T) {
		// The quota is per account and Region: a free cluster still makes
		// a store elsewhere.
		var free string
		for i, err := range errs {
			if err != nil {
				free = racerCluster(i)
				break
			}
		}
		_, err := e.client(principals[0], "eu-west-1").CreateCustomKeyStore(bg(), &awskms.CreateCustomKeyStoreInput{
			CustomKeyStoreName: aws.String("store-00"), CloudHsmClusterId: &free,
			TrustAnchorCertificate: &anchor, KeyStorePassword: aws.String("password1"),
		})
		require.NoError(t, err)
	})
}
