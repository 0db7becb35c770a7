package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/kms/store/pgtest"
	"github.com/stretchr/testify/require"
)

// testLimit is the limit tests pass where they do not test one: above
// anything they create.
const testLimit = 1000

// countAliases counts like ListAliases lists: keyID "" means all keys.
func countAliases(s Store, account, region, keyID string) (int, error) {
	as, _, err := s.ListAliases(ctx, account, region, keyID, "", 0)
	return len(as), err
}

func countTags(s Store, account, region, keyID string) (int, error) {
	tags, _, err := s.ListTags(ctx, account, region, keyID, "", 0)
	return len(tags), err
}

func newKey(acct, region, id string) *Key {
	now := time.Unix(1700000000, 123456789).UTC()
	return &Key{Account: acct, Region: region, ID: id, Description: "d", KeyUsage: "ENCRYPT_DECRYPT",
		KeySpec: "SYMMETRIC_DEFAULT", Origin: "AWS_KMS", State: "Enabled", CreationDate: now, Policy: `{"Version":"2012-10-17"}`,
		Materials: []Material{{ID: "aa", TokenID: []byte{1, 2, 3}, CreationDate: now}}}
}

func TestKeyRoundTripAndErrors(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		k := newKey("111122223333", "us-west-2", "k1")
		require.NoError(t, s.CreateKey(ctx, k, []Tag{{"a", "1"}, {"b", "2"}}))
		require.ErrorIs(t, s.CreateKey(ctx, k, nil), ErrAlreadyExists)
		got, err := s.GetKey(ctx, "111122223333", "us-west-2", "k1")
		require.NoError(t, err)
		require.Equal(t, k, got)
		_, err = s.GetKey(ctx, "111122223333", "eu-west-1", "k1")
		require.ErrorIs(t, err, ErrNotFound, "keys are regional")
		_, err = s.GetKey(ctx, "444455556666", "us-west-2", "k1")
		require.ErrorIs(t, err, ErrNotFound, "keys belong to an account")

		boom := errors.New("boom")
		_, err = s.UpdateKey(ctx, k.Account, k.Region, k.ID, func(k *Key) error { k.State = "Disabled"; return boom })
		require.ErrorIs(t, err, boom)
		got, _ = s.GetKey(ctx, k.Account, k.Region, k.ID)
		require.Equal(t, "Enabled", got.State, "a failed update writes nothing")

		del := time.Unix(1800000000, 0).UTC()
		_, err = s.UpdateKey(ctx, k.Account, k.Region, k.ID, func(k *Key) error {
			k.State, k.DeletionDate, k.PendingWindowDays = "PendingDeletion", del, 7
			k.Materials = append(k.Materials, Material{ID: "bb", TokenID: []byte{4}, CreationDate: del, RotationType: "ON_DEMAND"})
			return nil
		})
		require.NoError(t, err)
		require.NoError(t, s.Close())

		s = d.open(t) // persistence, and migrations are idempotent
		got, err = s.GetKey(ctx, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		require.Equal(t, del, got.DeletionDate)
		require.Len(t, got.Materials, 2)
		require.Equal(t, "ON_DEMAND", got.Materials[1].RotationType)

		due, err := s.KeysDueForDeletion(ctx, del.Add(-time.Second))
		require.NoError(t, err)
		require.Empty(t, due)
		due, err = s.KeysDueForDeletion(ctx, del)
		require.NoError(t, err)
		require.Len(t, due, 1)

		require.NoError(t, s.CreateAlias(ctx, &Alias{Account: k.Account, Region: k.Region, Name: "alias/x", TargetKeyID: k.ID}, testLimit))
		require.NoError(t, s.DeleteKey(ctx, k.Account, k.Region, k.ID))
		require.ErrorIs(t, s.DeleteKey(ctx, k.Account, k.Region, k.ID), ErrNotFound)
		_, err = s.GetAlias(ctx, k.Account, k.Region, "alias/x")
		require.ErrorIs(t, err, ErrNotFound, "aliases go with their key")
		n, err := countTags(s, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		require.Zero(t, n, "tags go with their key")
	})
}

func TestPagination(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		for i := range 5 {
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, fmt.Sprintf("k%d", i)), nil))
			require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: fmt.Sprintf("alias/a%d", i), TargetKeyID: fmt.Sprintf("k%d", i%2)}, testLimit))
		}
		require.NoError(t, s.CreateKey(ctx, newKey(acct, "eu-west-1", "other"), nil))
		for _, limit := range []int{1, 2, 5} {
			var ids []string
			marker := ""
			for {
				keys, next, err := s.ListKeys(ctx, acct, reg, marker, limit)
				require.NoError(t, err)
				for _, k := range keys {
					ids = append(ids, k.ID)
				}
				if next == "" {
					break
				}
				marker = next
			}
			require.Equal(t, []string{"k0", "k1", "k2", "k3", "k4"}, ids, "limit %d", limit)
		}
		as, next, err := s.ListAliases(ctx, acct, reg, "k1", "", 1)
		require.NoError(t, err)
		require.Equal(t, "alias/a1", as[0].Name)
		as, next, err = s.ListAliases(ctx, acct, reg, "k1", next, 1)
		require.NoError(t, err)
		require.Equal(t, "alias/a3", as[0].Name)
		require.Empty(t, next)
		n, err := countAliases(s, acct, reg, "k0")
		require.NoError(t, err)
		require.Equal(t, 3, n)

		require.NoError(t, s.TagKey(ctx, acct, reg, "k0", []Tag{{"b", "1"}, {"a", "1"}, {"c", "1"}}, testLimit))
		require.NoError(t, s.TagKey(ctx, acct, reg, "k0", []Tag{{"a", "2"}}, testLimit))
		tags, next, err := s.ListTags(ctx, acct, reg, "k0", "", 2)
		require.NoError(t, err)
		require.Equal(t, []Tag{{"a", "2"}, {"b", "1"}}, tags)
		tags, _, err = s.ListTags(ctx, acct, reg, "k0", next, 2)
		require.NoError(t, err)
		require.Equal(t, []Tag{{"c", "1"}}, tags)
		require.NoError(t, s.UntagKey(ctx, acct, reg, "k0", []string{"a", "zzz"}))
		n, _ = countTags(s, acct, reg, "k0")
		require.Equal(t, 2, n)
		require.ErrorIs(t, s.TagKey(ctx, acct, reg, "missing", []Tag{{"a", "1"}}, testLimit), ErrNotFound)

		for _, bad := range []string{"x", "m1.!!", "m1."} {
			_, _, err := s.ListKeys(ctx, acct, reg, bad, 1)
			require.ErrorIs(t, err, ErrInvalidMarker, bad)
		}
	})
}

func TestAliasErrors(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
		a := &Alias{Account: acct, Region: reg, Name: "alias/a", TargetKeyID: "k"}
		require.NoError(t, s.CreateAlias(ctx, a, testLimit))
		require.ErrorIs(t, s.CreateAlias(ctx, a, testLimit), ErrAlreadyExists)
		require.ErrorIs(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/b", TargetKeyID: "none"}, testLimit), ErrNotFound)
		require.ErrorIs(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/b", TargetKeyID: "k"}, 1), ErrLimitExceeded)
		require.ErrorIs(t, s.CreateAlias(ctx, a, 1), ErrLimitExceeded, "the limit is checked before the name, as before")
		require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k2"), nil))
		b := &Alias{Account: acct, Region: reg, Name: "alias/b", TargetKeyID: "k2"}
		require.NoError(t, s.CreateAlias(ctx, b, 1))
		require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/b", "k2", "k", time.Now(), 1), ErrLimitExceeded)
		require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/b", "k2", "none", time.Now(), 1), ErrNotFound)
		require.NoError(t, s.UpdateAlias(ctx, acct, reg, "alias/b", "k2", "k2", time.Now(), 1), "an alias on its own target takes no new place")
		require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/b", "k", "k2", time.Now(), testLimit), ErrNotFound, "it names k2, not k")
		require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/none", "k", "k", time.Now(), testLimit), ErrNotFound)
		require.ErrorIs(t, s.DeleteAlias(ctx, acct, reg, "alias/none", "k"), ErrNotFound)
		require.ErrorIs(t, s.DeleteAlias(ctx, acct, reg, "alias/a", "other"), ErrNotFound, "only the authorized target's alias goes")
		require.NoError(t, s.DeleteAlias(ctx, acct, reg, "alias/a", "k"))
	})
}

// concurrentRounds is how many writes each goroutine of the concurrency
// tests makes: enough for them to overlap from the first round, few enough
// for the race detector.
const concurrentRounds = 20

func TestConcurrentWriters(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range concurrentRounds {
					if err := s.TagKey(ctx, acct, reg, "k", []Tag{{fmt.Sprintf("g%d", g), fmt.Sprint(i)}}, testLimit); err != nil {
						t.Error(err)
						return
					}
					if _, err := s.UpdateKey(ctx, acct, reg, "k", func(k *Key) error { k.PendingWindowDays++; return nil }); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		k, err := s.GetKey(ctx, acct, reg, "k")
		require.NoError(t, err)
		require.Equal(t, 8*concurrentRounds, k.PendingWindowDays, "no lost update")
	})
}

func FuzzMarker(f *testing.F) {
	// Every engine, in each iteration: a marker is ErrInvalidMarker or a
	// page, never another error.
	var stores []Store
	for _, e := range engines {
		if e.name == "postgres" && pgtest.Skipped() {
			continue
		}
		stores = append(stores, (&db{engine: e, dsn: e.newDB(f)}).open(f))
	}
	f.Add("")
	f.Add(encodeMarker("k1"))
	f.Add("m1.////")
	f.Add(encodeMarker("alias/x"))
	f.Add("m1.AA")
	f.Add(encodeMarker("k\x00"))
	f.Add(encodeMarker("\xff"))
	f.Fuzz(func(t *testing.T, marker string) {
		// Each list answers ErrInvalidMarker or a page, never another
		// error, and every engine answers alike.
		var first []bool
		for i, s := range stores {
			var invalid []bool
			check := func(err error) {
				if err != nil && !errors.Is(err, ErrInvalidMarker) {
					t.Fatal(err)
				}
				invalid = append(invalid, err != nil)
			}
			_, _, err := s.ListKeys(ctx, "a", "r", marker, 10)
			check(err)
			_, _, err = s.ListAliases(ctx, "a", "r", "", marker, 10)
			check(err)
			_, _, err = s.ListTags(ctx, "a", "r", "k", marker, 10)
			check(err)
			_, _, err = s.ListGrants(ctx, "a", "r", "k", "", "", marker, 10)
			check(err)
			if i == 0 {
				first = invalid
			} else if !slices.Equal(first, invalid) {
				t.Fatalf("%s: marker %q invalid %v; %s: %v", engines[0].name, marker, first, engines[i].name, invalid)
			}
		}
	})
}

// The benchmarks run once per engine: go test -run '^$' -bench . ./kms/store/
// reports ns/op for each (ops/s = 1e9 / ns/op).

func BenchmarkGetKey(b *testing.B) {
	eachB(b, func(b *testing.B, d *db) {
		s := d.open(b)
		require.NoError(b, s.CreateKey(ctx, newKey("a", "r", "k"), nil))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.GetKey(ctx, "a", "r", "k"); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func TestKeyCache(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := WithKeyCache(d.open(t))
		const acct, reg = "111122223333", "us-west-2"
		require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
		k, err := s.GetKey(ctx, acct, reg, "k")
		require.NoError(t, err)
		k.State = "scribbled" // callers get copies
		k, _ = s.GetKey(ctx, acct, reg, "k")
		require.Equal(t, "Enabled", k.State)

		var wg sync.WaitGroup
		stop := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
						s.GetKey(ctx, acct, reg, "k")
					}
				}
			}()
		}
		for i := range 50 {
			_, err := s.UpdateKey(ctx, acct, reg, "k", func(k *Key) error { k.PendingWindowDays = i; return nil })
			require.NoError(t, err)
			k, err := s.GetKey(ctx, acct, reg, "k")
			require.NoError(t, err)
			require.Equal(t, i, k.PendingWindowDays, "a read after a write sees it")
		}
		close(stop)
		wg.Wait()
		require.NoError(t, s.DeleteKey(ctx, acct, reg, "k"))
		_, err = s.GetKey(ctx, acct, reg, "k")
		require.ErrorIs(t, err, ErrNotFound)
	})
}

func TestKeyStores(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		ks := &KeyStore{ID: "cks-1", Account: acct, Region: reg, Name: "one", Type: StoreTypeCloudHSM, ClusterID: "cluster-a", TrustAnchor: "pem",
			CreationDate: time.Unix(1700000000, 0).UTC(), Password: []byte{1, 2}}
		require.NoError(t, s.CreateKeyStore(ctx, ks, testLimit))
		dupName := *ks
		dupName.ID, dupName.ClusterID = "cks-2", "cluster-b"
		require.ErrorIs(t, s.CreateKeyStore(ctx, &dupName, testLimit), ErrAlreadyExists, "names are unique per account and region")
		dupCluster := *ks
		dupCluster.ID, dupCluster.Name = "cks-3", "three"
		require.ErrorIs(t, s.CreateKeyStore(ctx, &dupCluster, testLimit), ErrAlreadyExists, "a cluster backs one store")
		other := dupName
		other.Region = "eu-west-1"
		require.NoError(t, s.CreateKeyStore(ctx, &other, testLimit), "the same name in another region is fine")
		dupName.ClusterID = "cluster-free"
		require.ErrorIs(t, s.CreateKeyStore(ctx, &dupName, testLimit), ErrKeyStoreNameInUse)
		require.ErrorIs(t, s.CreateKeyStore(ctx, &dupCluster, testLimit), ErrClusterInUse)
		both := dupCluster
		both.Name = ks.Name
		require.ErrorIs(t, s.CreateKeyStore(ctx, &both, testLimit), ErrClusterInUse, "the cluster is checked first")
		full := dupName
		full.Name, full.ClusterID = "full", "cluster-full"
		require.ErrorIs(t, s.CreateKeyStore(ctx, &full, 1), ErrLimitExceeded, "one store in the account and region already")

		// An update is held to the same rules, and says which it broke.
		_, err := s.UpdateKeyStore(ctx, "cks-1", func(k *KeyStore) error { k.ClusterID = other.ClusterID; return nil })
		require.ErrorIs(t, err, ErrClusterInUse)
		_, err = s.UpdateKeyStore(ctx, other.ID, func(k *KeyStore) error { k.Name, k.ClusterID = "renamed", "cluster-c"; return nil })
		require.NoError(t, err, "the name is free in the other region")
		elsewhere := other
		elsewhere.ID, elsewhere.Name, elsewhere.ClusterID = "cks-4", "four", "cluster-d"
		require.NoError(t, s.CreateKeyStore(ctx, &elsewhere, testLimit))
		_, err = s.UpdateKeyStore(ctx, elsewhere.ID, func(k *KeyStore) error { k.Name, k.ClusterID = "renamed", "cluster-e"; return nil })
		require.ErrorIs(t, err, ErrKeyStoreNameInUse)
		require.NoError(t, s.DeleteKeyStore(ctx, elsewhere.ID))

		got, err := s.GetKeyStore(ctx, "cks-1")
		require.NoError(t, err)
		require.Equal(t, ks, got, "failed updates wrote nothing")
		_, err = s.UpdateKeyStore(ctx, "cks-1", func(k *KeyStore) error {
			k.Connect, k.PendingPassword = true, []byte{3}
			return nil
		})
		require.NoError(t, err)
		list, err := s.ListKeyStores(ctx, acct, reg)
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.True(t, list[0].Connect)
		all, err := s.AllKeyStores(ctx)
		require.NoError(t, err)
		require.Len(t, all, 2)

		k := newKey(acct, reg, "in-store")
		k.CustomKeyStoreID = "cks-1"
		require.NoError(t, s.CreateKey(ctx, k, nil))
		var notEmpty *KeyStoreNotEmptyError
		require.ErrorAs(t, s.DeleteKeyStore(ctx, "cks-1"), &notEmpty, "a store with keys stays")
		require.Equal(t, 1, notEmpty.Keys)
		gone := newKey(acct, reg, "in-no-store")
		gone.CustomKeyStoreID = "cks-none"
		require.ErrorIs(t, s.CreateKey(ctx, gone, nil), ErrNotFound, "a key's store must exist")
		require.NoError(t, s.DeleteKeyOrphaning(ctx, k, time.Unix(1800000000, 0)))
		orphans, err := s.Orphans(ctx)
		require.NoError(t, err)
		require.Equal(t, []Orphan{{KeyStoreID: "cks-1", KeyARN: "arn:aws:kms:us-west-2:111122223333:key/in-store", TokenID: []byte{1, 2, 3}, Deleted: time.Unix(1800000000, 0).UTC()}}, orphans)
		require.NoError(t, s.DeleteKeyStore(ctx, "cks-1"))
		require.ErrorIs(t, s.DeleteKeyStore(ctx, "cks-1"), ErrNotFound)
		require.NoError(t, s.Close())

		d.open(t) // reopening an up-to-date database is a no-op
	})
}

func BenchmarkUpdateKey(b *testing.B) {
	eachB(b, func(b *testing.B, d *db) {
		s := d.open(b)
		require.NoError(b, s.CreateKey(ctx, newKey("a", "r", "k"), nil))
		b.SetParallelism(4)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.UpdateKey(ctx, "a", "r", "k", func(k *Key) error { k.PendingWindowDays++; return nil }); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkCreateKey creates keys from 4 goroutines per CPU: a key and
// its two tags in one transaction, as CreateKey with Tags does.
func BenchmarkCreateKey(b *testing.B) {
	eachB(b, func(b *testing.B, d *db) {
		s := d.open(b)
		var n atomic.Int64
		b.SetParallelism(4)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				k := newKey("a", "r", fmt.Sprintf("k%d", n.Add(1)))
				if err := s.CreateKey(ctx, k, []Tag{{"env", "bench"}, {"team", "kms"}}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// collect pages through a list with the given limit and returns every item.
func collect[T any](t *testing.T, limit int, list func(marker string, limit int) ([]T, string, error)) []T {
	t.Helper()
	var all []T
	marker := ""
	for range 100 {
		page, next, err := list(marker, limit)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page), limit)
		all = append(all, page...)
		if next == "" {
			return all
		}
		require.Len(t, page, limit, "a page before the last is full")
		marker = next
	}
	t.Fatal("pagination does not end")
	return nil
}

func TestTimesAndMaterials(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		paris, err := time.LoadLocation("Europe/Paris")
		if err != nil {
			paris = time.FixedZone("UTC+1", 3600)
		}
		created := time.Date(2024, 2, 29, 23, 59, 59, 999999999, paris)
		k := newKey("111122223333", "us-west-2", "k")
		k.CreationDate = created
		k.Materials[0].CreationDate = created
		k.NextRotationDate = created.Add(365 * 24 * time.Hour)
		k.RotationEnabled, k.RotationPeriodDays, k.MultiRegion = true, 365, true
		k.Policy = "{\n  \"Version\" : \"2012-10-17\",\t\"x\": \"\u00e9\\u00e9\"\n}\n" // byte for byte, whitespace and escapes included
		k.CustomKeyStoreID = "cks-1234"
		require.NoError(t, s.CreateKeyStore(ctx, &KeyStore{ID: "cks-1234", Account: k.Account, Region: k.Region, Name: "s", ClusterID: "cluster-a"}, testLimit))
		require.NoError(t, s.CreateKey(ctx, k, nil))

		got, err := s.GetKey(ctx, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		require.True(t, got.CreationDate.Equal(created))
		require.Equal(t, time.UTC, got.CreationDate.Location())
		require.True(t, got.Materials[0].CreationDate.Equal(created))
		require.True(t, got.NextRotationDate.Equal(k.NextRotationDate))
		require.True(t, got.DeletionDate.IsZero())
		require.Equal(t, time.Time{}, got.DeletionDate, "the zero time comes back as the zero value")
		require.Equal(t, k.Policy, got.Policy)
		require.True(t, got.RotationEnabled)
		require.True(t, got.MultiRegion)
		require.Equal(t, 365, got.RotationPeriodDays)
		require.Equal(t, "cks-1234", got.CustomKeyStoreID)

		rotated := created.Add(time.Hour)
		for i, typ := range []string{"AUTOMATIC", "ON_DEMAND"} {
			out, err := s.UpdateKey(ctx, k.Account, k.Region, k.ID, func(k *Key) error {
				k.Materials = append(k.Materials, Material{ID: fmt.Sprintf("m%d", i), TokenID: []byte{byte(i), 0xff}, CreationDate: rotated, RotationType: typ})
				k.ID = "moved" // ignored: fn cannot move the key
				return nil
			})
			require.NoError(t, err)
			require.Equal(t, "k", out.ID)
			require.Len(t, out.Materials, i+2)
		}
		_, err = s.GetKey(ctx, k.Account, k.Region, "moved")
		require.ErrorIs(t, err, ErrNotFound)
		require.NoError(t, s.Close())

		s = d.open(t)
		got, err = s.GetKey(ctx, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		require.Len(t, got.Materials, 3)
		require.Equal(t, []string{"aa", "m0", "m1"}, []string{got.Materials[0].ID, got.Materials[1].ID, got.Materials[2].ID}, "oldest first")
		require.Equal(t, []string{"", "AUTOMATIC", "ON_DEMAND"}, []string{got.Materials[0].RotationType, got.Materials[1].RotationType, got.Materials[2].RotationType})
		require.Equal(t, []byte{1, 0xff}, got.Materials[2].TokenID)
		require.True(t, got.Materials[2].CreationDate.Equal(rotated))

		bare := newKey("111122223333", "us-west-2", "bare")
		bare.Materials = nil
		require.NoError(t, s.CreateKey(ctx, bare, nil))
		got, err = s.GetKey(ctx, bare.Account, bare.Region, bare.ID)
		require.NoError(t, err)
		require.Equal(t, bare, got)
	})
}

type callerError struct{ code string }

func (e *callerError) Error() string { return e.code }

func TestUpdateKeyErrors(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		k := newKey("111122223333", "us-west-2", "k")
		require.NoError(t, s.CreateKey(ctx, k, []Tag{{"t", "v"}}))

		called := false
		_, err := s.UpdateKey(ctx, k.Account, k.Region, "missing", func(*Key) error { called = true; return nil })
		require.ErrorIs(t, err, ErrNotFound)
		require.False(t, called)
		_, err = s.UpdateKey(ctx, "444455556666", k.Region, k.ID, func(*Key) error { called = true; return nil })
		require.ErrorIs(t, err, ErrNotFound, "another account's key is not found")
		require.False(t, called)

		want := &callerError{"KMSInvalidStateException"}
		out, err := s.UpdateKey(ctx, k.Account, k.Region, k.ID, func(k *Key) error {
			k.State, k.Description, k.Policy = "Disabled", "changed", "{}"
			k.Materials = append(k.Materials, Material{ID: "bb"})
			return want
		})
		require.Nil(t, out)
		require.True(t, err == error(want), "the error comes back unchanged, not wrapped")
		got, err := s.GetKey(ctx, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		require.Equal(t, k, got, "nothing written")
	})
}

func TestAliases(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		for _, id := range []string{"k1", "k2"} {
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, id), nil))
		}
		require.NoError(t, s.CreateKey(ctx, newKey(acct, "eu-west-1", "k1"), nil))
		require.NoError(t, s.CreateKey(ctx, newKey("444455556666", reg, "k1"), nil))

		created := time.Unix(1700000000, 5).UTC()
		var names []string
		for i := range 5 {
			name := fmt.Sprintf("alias/n%d", i)
			names = append(names, name)
			target := []string{"k1", "k2"}[i%2]
			require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: name, TargetKeyID: target, CreationDate: created, LastUpdatedDate: created}, testLimit))
		}
		// The same name elsewhere is another alias.
		require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: "eu-west-1", Name: "alias/n0", TargetKeyID: "k1"}, testLimit))
		require.NoError(t, s.CreateAlias(ctx, &Alias{Account: "444455556666", Region: reg, Name: "alias/n0", TargetKeyID: "k1"}, testLimit))
		require.ErrorIs(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/n0", TargetKeyID: "k2"}, testLimit), ErrAlreadyExists)

		a, err := s.GetAlias(ctx, acct, reg, "alias/n1")
		require.NoError(t, err)
		require.Equal(t, &Alias{Account: acct, Region: reg, Name: "alias/n1", TargetKeyID: "k2", CreationDate: created, LastUpdatedDate: created}, a)
		_, err = s.GetAlias(ctx, acct, "ap-south-1", "alias/n1")
		require.ErrorIs(t, err, ErrNotFound)

		updated := created.Add(time.Hour)
		require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/n1", "k1", "k1", updated, testLimit), ErrNotFound, "it names k2, not k1")
		require.NoError(t, s.UpdateAlias(ctx, acct, reg, "alias/n1", "k2", "k1", updated, testLimit))
		a, err = s.GetAlias(ctx, acct, reg, "alias/n1")
		require.NoError(t, err)
		require.Equal(t, "k1", a.TargetKeyID)
		require.True(t, a.CreationDate.Equal(created))
		require.True(t, a.LastUpdatedDate.Equal(updated))
		require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/n1", "k1", "missing", updated, testLimit), ErrNotFound, "the target must exist")
		require.ErrorIs(t, s.UpdateAlias(ctx, acct, "eu-west-1", "alias/n1", "k2", "k1", updated, testLimit), ErrNotFound)

		// n0,n1,n2,n4 → k1; n3 → k2.
		for _, limit := range []int{1, 2, 10} {
			all := collect(t, limit, func(m string, l int) ([]*Alias, string, error) { return s.ListAliases(ctx, acct, reg, "", m, l) })
			var got []string
			for _, a := range all {
				require.Equal(t, acct, a.Account)
				require.Equal(t, reg, a.Region)
				got = append(got, a.Name)
			}
			require.Equal(t, names, got, "limit %d", limit)
			k1 := collect(t, limit, func(m string, l int) ([]*Alias, string, error) { return s.ListAliases(ctx, acct, reg, "k1", m, l) })
			got = got[:0]
			for _, a := range k1 {
				require.Equal(t, "k1", a.TargetKeyID)
				got = append(got, a.Name)
			}
			require.Equal(t, []string{"alias/n0", "alias/n1", "alias/n2", "alias/n4"}, got, "limit %d", limit)
		}
		for keyID, want := range map[string]int{"": 5, "k1": 4, "k2": 1, "none": 0} {
			n, err := countAliases(s, acct, reg, keyID)
			require.NoError(t, err)
			require.Equal(t, want, n, "keyID %q", keyID)
		}
		_, _, err = s.ListAliases(ctx, acct, reg, "", "bogus", 1)
		require.ErrorIs(t, err, ErrInvalidMarker)

		require.NoError(t, s.DeleteAlias(ctx, acct, reg, "alias/n0", "k1"))
		require.ErrorIs(t, s.DeleteAlias(ctx, acct, reg, "alias/n0", "k1"), ErrNotFound)
		_, err = s.GetAlias(ctx, acct, "eu-west-1", "alias/n0")
		require.NoError(t, err, "deleting one region's alias leaves the other")
		_, err = s.GetAlias(ctx, "444455556666", reg, "alias/n0")
		require.NoError(t, err)

		// Deleting k1 takes its aliases and no others.
		require.NoError(t, s.DeleteKey(ctx, acct, reg, "k1"))
		n, err := countAliases(s, acct, reg, "")
		require.NoError(t, err)
		require.Equal(t, 1, n)
		_, err = s.GetAlias(ctx, acct, "eu-west-1", "alias/n0")
		require.NoError(t, err)
	})
}

func TestTags(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), []Tag{{"env", "prod"}}))
		require.NoError(t, s.CreateKey(ctx, newKey(acct, "eu-west-1", "k"), []Tag{{"other", "region"}}))

		var want []Tag
		for i := range 5 {
			want = append(want, Tag{fmt.Sprintf("t%d", i), fmt.Sprint(i)})
		}
		require.NoError(t, s.TagKey(ctx, acct, reg, "k", want, testLimit))
		require.NoError(t, s.TagKey(ctx, acct, reg, "k", []Tag{{"env", "dev"}}, testLimit), "upsert")
		want = append([]Tag{{"env", "dev"}}, want...)
		for _, limit := range []int{1, 2, 10} {
			got := collect(t, limit, func(m string, l int) ([]Tag, string, error) { return s.ListTags(ctx, acct, reg, "k", m, l) })
			require.Equal(t, want, got, "limit %d", limit)
		}
		n, err := countTags(s, acct, reg, "k")
		require.NoError(t, err)
		require.Equal(t, 6, n)
		n, err = countTags(s, acct, "eu-west-1", "k")
		require.NoError(t, err)
		require.Equal(t, 1, n, "tags are per region")

		require.NoError(t, s.UntagKey(ctx, acct, reg, "k", []string{"env", "t4", "never-set"}))
		got := collect(t, 10, func(m string, l int) ([]Tag, string, error) { return s.ListTags(ctx, acct, reg, "k", m, l) })
		require.Equal(t, want[1:5], got)
		require.ErrorIs(t, s.UntagKey(ctx, acct, reg, "missing", []string{"t0"}), ErrNotFound)
		require.ErrorIs(t, s.TagKey(ctx, "444455556666", reg, "k", []Tag{{"a", "b"}}, testLimit), ErrNotFound)
		_, _, err = s.ListTags(ctx, acct, reg, "k", "m1.%%%", 1)
		require.ErrorIs(t, err, ErrInvalidMarker)

		require.ErrorIs(t, s.CreateKey(ctx, newKey(acct, reg, "k"), []Tag{{"x", "y"}}), ErrAlreadyExists)
		n, _ = countTags(s, acct, reg, "k")
		require.Equal(t, 4, n, "a failed CreateKey writes none of its tags")
	})
}

func TestListKeysIsolationAndLimits(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		for _, acct := range []string{"111122223333", "444455556666"} {
			for _, reg := range []string{"us-west-2", "eu-west-1"} {
				for i := range 3 {
					require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, fmt.Sprintf("%s-%s-%d", acct, reg, i)), nil))
				}
			}
		}
		keys := collect(t, 2, func(m string, l int) ([]*Key, string, error) {
			return s.ListKeys(ctx, "444455556666", "eu-west-1", m, l)
		})
		require.Len(t, keys, 3)
		for _, k := range keys {
			require.Equal(t, "444455556666", k.Account)
			require.Equal(t, "eu-west-1", k.Region)
		}
		keys, next, err := s.ListKeys(ctx, "999999999999", "us-west-2", "", 5)
		require.NoError(t, err)
		require.Empty(t, keys)
		require.Empty(t, next)

		// A limit below 1 is not a page size; it must not panic or loop.
		for _, limit := range []int{0, -1} {
			keys, next, err = s.ListKeys(ctx, "111122223333", "us-west-2", "", limit)
			require.NoError(t, err)
			require.Len(t, keys, 3)
			require.Empty(t, next)
			as, next, err := s.ListAliases(ctx, "111122223333", "us-west-2", "", "", limit)
			require.NoError(t, err)
			require.Empty(t, as)
			require.Empty(t, next)
			tags, next, err := s.ListTags(ctx, "111122223333", "us-west-2", "x", "", limit)
			require.NoError(t, err)
			require.Empty(t, tags)
			require.Empty(t, next)
		}
	})
}

func TestForEachKeyAndDeletionSchedule(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		var want []string
		due := time.Unix(1800000000, 0).UTC()
		for i := range forEachPage + 50 { // more than a page
			acct := []string{"111122223333", "444455556666"}[i%2]
			reg := []string{"us-west-2", "eu-west-1", "ap-south-1"}[i%3]
			k := newKey(acct, reg, fmt.Sprintf("k%04d", i))
			if i%5 == 0 {
				k.State, k.DeletionDate, k.PendingWindowDays = "PendingDeletion", due.Add(time.Duration(i)*time.Second), 7
			}
			require.NoError(t, s.CreateKey(ctx, k, nil))
			want = append(want, acct+"/"+reg+"/"+k.ID)
		}
		slices.Sort(want)
		var got []string
		require.NoError(t, s.ForEachKey(ctx, func(k *Key) error {
			got = append(got, k.Account+"/"+k.Region+"/"+k.ID)
			return nil
		}))
		require.Equal(t, want, got, "every key once, in order")

		stop := errors.New("stop")
		calls := 0
		err := s.ForEachKey(ctx, func(k *Key) error {
			calls++
			return stop
		})
		require.True(t, err == stop, "fn's error comes back unchanged")
		require.Equal(t, 1, calls)

		// fn may write: the walk holds no transaction open.
		n := 0
		require.NoError(t, s.ForEachKey(ctx, func(k *Key) error {
			n++
			return s.TagKey(ctx, k.Account, k.Region, k.ID, []Tag{{"seen", "1"}}, testLimit)
		}))
		require.Equal(t, len(want), n)

		keys, err := s.KeysDueForDeletion(ctx, due.Add(100*time.Second))
		require.NoError(t, err)
		require.Len(t, keys, 21, "i = 0, 5, ..., 100, of both accounts")
		accounts := map[string]bool{}
		for _, k := range keys {
			require.Equal(t, "PendingDeletion", k.State)
			require.False(t, k.DeletionDate.After(due.Add(100*time.Second)))
			accounts[k.Account] = true
		}
		require.Len(t, accounts, 2)
		keys, err = s.KeysDueForDeletion(ctx, time.Time{})
		require.NoError(t, err)
		require.Empty(t, keys)
	})
}

func TestConcurrentReadersAndWriters(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		for i := range 4 {
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, fmt.Sprintf("k%d", i)), nil))
		}
		var wg sync.WaitGroup
		done := make(chan struct{})
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-done:
						return
					default:
					}
					if _, err := s.GetKey(ctx, acct, reg, "k0"); err != nil {
						t.Error(err)
						return
					}
					if _, _, err := s.ListKeys(ctx, acct, reg, "", 2); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		var writers sync.WaitGroup
		for g := range 8 {
			writers.Go(func() {
				id := fmt.Sprintf("k%d", g%4)
				for i := range concurrentRounds / 2 {
					name := fmt.Sprintf("alias/g%d-%d", g, i)
					steps := []func() error{
						func() error {
							return s.TagKey(ctx, acct, reg, id, []Tag{{fmt.Sprintf("g%d", g), fmt.Sprint(i)}}, testLimit)
						},
						func() error {
							_, err := s.UpdateKey(ctx, acct, reg, id, func(k *Key) error {
								k.Materials = append(k.Materials, Material{ID: fmt.Sprintf("g%d-%d", g, i)})
								return nil
							})
							return err
						},
						func() error {
							return s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: name, TargetKeyID: id}, testLimit)
						},
						func() error { return s.UpdateAlias(ctx, acct, reg, name, id, id, time.Now(), testLimit) },
						func() error { return s.DeleteAlias(ctx, acct, reg, name, id) },
						func() error { return s.UntagKey(ctx, acct, reg, id, []string{"nothing"}) },
					}
					for _, step := range steps {
						if err := step(); err != nil {
							t.Error(err)
							return
						}
					}
				}
			})
		}
		writers.Wait()
		close(done)
		wg.Wait()
		total := 0
		require.NoError(t, s.ForEachKey(ctx, func(k *Key) error { total += len(k.Materials) - 1; return nil }))
		require.Equal(t, 8*(concurrentRounds/2), total, "no lost material")
	})
}

func TestCanceledContext(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		require.NoError(t, s.CreateKey(ctx, newKey("a", "r", "k"), nil))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := s.UpdateKey(cctx, "a", "r", "k", func(k *Key) error { k.State = "Disabled"; return nil })
		require.ErrorIs(t, err, context.Canceled)
		k, err := s.GetKey(ctx, "a", "r", "k")
		require.NoError(t, err)
		require.Equal(t, "Enabled", k.State)
	})
}

func TestKeysDueForRotation(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		due := time.Unix(1800000000, 0).UTC()
		add := func(id, state string, enabled bool, next time.Time) {
			k := newKey("a", "r", id)
			k.State, k.RotationEnabled, k.RotationPeriodDays, k.NextRotationDate = state, enabled, 90, next
			require.NoError(t, s.CreateKey(ctx, k, nil))
		}
		add("later", "Enabled", true, due.Add(time.Second))
		add("due", "Enabled", true, due)
		add("overdue", "Enabled", true, due.Add(-time.Hour))
		add("off", "Enabled", false, time.Time{})
		add("disabled", "Disabled", true, due.Add(-time.Hour))
		add("pending", "PendingDeletion", true, due.Add(-time.Hour))
		add("creating", "Creating", true, due.Add(-time.Hour))

		keys, err := s.KeysDueForRotation(ctx, due)
		require.NoError(t, err)
		var got []string
		for _, k := range keys {
			got = append(got, k.ID)
		}
		require.Equal(t, []string{"overdue", "due"}, got, "Enabled keys with rotation on, most overdue first")

		// The scheduler's query is served by migration 3's index, not a scan.
		require.Contains(t, d.rotationPlan(t, s), "keys_rotation")
	})
}

func TestMigrations(t *testing.T) {
	require.Equal(t, len(migrations), len(pgMigrations), "schema version n is one schema on either engine")
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		require.Equal(t, len(d.migrations), d.version(t, d.dsn))
		require.NoError(t, s.CreateKey(ctx, newKey("a", "r", "k"), nil))
		require.NoError(t, s.Close())
		for range 2 {
			s := d.open(t)
			require.Equal(t, len(d.migrations), d.version(t, d.dsn))
			_, err := s.GetKey(ctx, "a", "r", "k")
			require.NoError(t, err)
			require.NoError(t, s.Close())
		}

		// A database written by an older hsmkms is brought up to date, keeping its rows.
		old := &db{engine: d.engine, dsn: d.newDB(t)}
		d.exec(t, old.dsn, d.atVersion1)
		s = old.open(t)
		require.Equal(t, len(d.migrations), d.version(t, old.dsn))
		k, err := s.GetKey(ctx, "a", "r", "k")
		require.NoError(t, err)
		require.Equal(t, "Enabled", k.State)
		_, err = s.AllKeyStores(ctx)
		require.NoError(t, err, "migration 2 ran")
		require.NoError(t, s.Close())

		// One from a newer hsmkms is refused rather than misread.
		d.exec(t, old.dsn, d.setVersion(len(d.migrations)+1))
		_, err = d.engine.open(old.dsn)
		require.ErrorContains(t, err, "newer")
	})
}

func TestConcurrentOpen(t *testing.T) {
	// Processes (nodes) starting at once on a fresh database must not
	// both migrate it.
	each(t, func(t *testing.T, d *db) {
		errs := race(4, func(int) error {
			s, err := d.engine.open(d.dsn)
			if err == nil {
				err = s.Close()
			}
			return err
		})
		for _, err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, len(d.migrations), d.version(t, d.dsn))
	})
}

func newGrant(acct, region, keyID string, n int) *Grant {
	return &Grant{Account: acct, Region: region, KeyID: keyID,
		GrantID: fmt.Sprintf("%064x", n), GrantToken: fmt.Sprintf("token-%d", n),
		GranteePrincipal: "arn:aws:iam::" + acct + ":role/app", IssuingAccount: "arn:aws:iam::" + acct + ":root",
		Operations: []string{"Encrypt", "Decrypt"}, CreationDate: time.Unix(1700000000, int64(n)).UTC()}
}

func TestGrants(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		for _, id := range []string{"k1", "k2"} {
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, id), nil))
		}
		g := newGrant(acct, reg, "k1", 1)
		g.Name, g.RetiringPrincipal = "retry-me", "arn:aws:iam::"+acct+":user/ops"
		g.Constraints = GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "a"}}
		got, err := s.CreateGrant(ctx, g, 10)
		require.NoError(t, err)
		require.Equal(t, g, got)
		_, err = s.CreateGrant(ctx, newGrant(acct, reg, "missing", 2), 10)
		require.ErrorIs(t, err, ErrNotFound, "a grant needs its key")

		// The same Name and parameters (operations in any order) is a retry:
		// the first grant comes back and nothing is stored.
		retry := *g
		retry.GrantID, retry.GrantToken, retry.Operations = fmt.Sprintf("%064x", 3), "token-3", []string{"Decrypt", "Encrypt"}
		got, err = s.CreateGrant(ctx, &retry, 10)
		require.NoError(t, err)
		require.Equal(t, g.GrantID, got.GrantID)
		require.Equal(t, g.GrantToken, got.GrantToken)
		// The same Name with other parameters is another grant.
		other := retry
		other.Constraints = GrantConstraints{}
		got, err = s.CreateGrant(ctx, &other, 10)
		require.NoError(t, err)
		require.Equal(t, other.GrantID, got.GrantID)

		byID, err := s.GetGrant(ctx, g.GrantID)
		require.NoError(t, err)
		require.Equal(t, g, byID)
		byToken, err := s.GetGrantByToken(ctx, "token-1")
		require.NoError(t, err)
		require.Equal(t, g, byToken)
		_, err = s.GetGrantByToken(ctx, "token-404")
		require.ErrorIs(t, err, ErrNotFound)

		// Grants survive a reopen.
		require.NoError(t, s.Close())
		s = d.open(t)
		byID, err = s.GetGrant(ctx, g.GrantID)
		require.NoError(t, err)
		require.Equal(t, g, byID)

		require.NoError(t, s.DeleteGrant(ctx, other.GrantID))
		require.ErrorIs(t, s.DeleteGrant(ctx, other.GrantID), ErrNotFound)
		_, err = s.GetGrant(ctx, other.GrantID)
		require.ErrorIs(t, err, ErrNotFound)
	})
}

func TestGrantLimitAndLists(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		for _, k := range []*Key{newKey(acct, reg, "k1"), newKey(acct, reg, "k2"), newKey("444455556666", reg, "k1"), newKey(acct, "eu-west-1", "k1")} {
			require.NoError(t, s.CreateKey(ctx, k, nil))
		}
		for i := range 5 {
			g := newGrant(acct, reg, "k1", i)
			if i%2 == 1 {
				g.GranteePrincipal = "arn:aws:iam::" + acct + ":user/odd"
				g.RetiringPrincipal = "arn:aws:iam::" + acct + ":user/ops"
			}
			_, err := s.CreateGrant(ctx, g, 5)
			require.NoError(t, err)
		}
		_, err := s.CreateGrant(ctx, newGrant(acct, reg, "k1", 5), 5)
		require.ErrorIs(t, err, ErrLimitExceeded)
		// The limit is per key, and a retry by name is no new grant.
		_, err = s.CreateGrant(ctx, newGrant(acct, reg, "k2", 6), 5)
		require.NoError(t, err)
		other := newGrant("444455556666", reg, "k1", 7)
		other.RetiringPrincipal = "arn:aws:iam::" + acct + ":user/ops"
		_, err = s.CreateGrant(ctx, other, 5)
		require.NoError(t, err)
		elsewhere := newGrant(acct, "eu-west-1", "k1", 8)
		elsewhere.RetiringPrincipal = "arn:aws:iam::" + acct + ":user/ops"
		_, err = s.CreateGrant(ctx, elsewhere, 5)
		require.NoError(t, err)

		ids := func(gs []*Grant) []string {
			var out []string
			for _, g := range gs {
				out = append(out, g.GrantID)
			}
			return out
		}
		all := collect(t, 2, func(m string, l int) ([]*Grant, string, error) {
			return s.ListGrants(ctx, acct, reg, "k1", "", "", m, l)
		})
		require.Equal(t, []string{fmt.Sprintf("%064x", 0), fmt.Sprintf("%064x", 1), fmt.Sprintf("%064x", 2), fmt.Sprintf("%064x", 3), fmt.Sprintf("%064x", 4)}, ids(all))
		odd := collect(t, 1, func(m string, l int) ([]*Grant, string, error) {
			return s.ListGrants(ctx, acct, reg, "k1", "", "arn:aws:iam::"+acct+":user/odd", m, l)
		})
		require.Equal(t, []string{fmt.Sprintf("%064x", 1), fmt.Sprintf("%064x", 3)}, ids(odd))
		one, next, err := s.ListGrants(ctx, acct, reg, "k1", fmt.Sprintf("%064x", 2), "", "", 50)
		require.NoError(t, err)
		require.Empty(t, next)
		require.Equal(t, []string{fmt.Sprintf("%064x", 2)}, ids(one))
		none, _, err := s.ListGrants(ctx, acct, reg, "k2", fmt.Sprintf("%064x", 2), "", "", 50)
		require.NoError(t, err)
		require.Empty(t, none, "a grant id filter does not reach another key's grants")
		_, _, err = s.ListGrants(ctx, acct, reg, "k1", "", "", "garbage", 50)
		require.ErrorIs(t, err, ErrInvalidMarker)

		// Retirable grants: one region, keys of any account.
		ret := collect(t, 1, func(m string, l int) ([]*Grant, string, error) {
			return s.ListRetirableGrants(ctx, reg, "arn:aws:iam::"+acct+":user/ops", m, l)
		})
		require.Equal(t, []string{fmt.Sprintf("%064x", 1), fmt.Sprintf("%064x", 3), fmt.Sprintf("%064x", 7)}, ids(ret))

		f, err := s.GrantsFor(ctx, acct, reg, "k1", []string{"arn:aws:iam::" + acct + ":user/odd", "arn:aws:iam::" + acct + ":root"})
		require.NoError(t, err)
		require.Equal(t, []string{fmt.Sprintf("%064x", 1), fmt.Sprintf("%064x", 3)}, ids(f))
		f, err = s.GrantsFor(ctx, acct, reg, "k1", nil)
		require.NoError(t, err)
		require.Empty(t, f)
	})
}

func TestDeletingAKeyDeletesItsGrants(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		for _, id := range []string{"k1", "k2"} {
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, id), nil))
		}
		for i, id := range []string{"k1", "k2", "k1", "k2"} {
			_, err := s.CreateGrant(ctx, newGrant(acct, reg, id, i), 10)
			require.NoError(t, err)
		}
		require.NoError(t, s.DeleteKey(ctx, acct, reg, "k1"))
		k2, err := s.GetKey(ctx, acct, reg, "k2")
		require.NoError(t, err)
		require.NoError(t, s.DeleteKeyOrphaning(ctx, k2, time.Now()))
		for i := range 4 {
			_, err := s.GetGrant(ctx, fmt.Sprintf("%064x", i))
			require.ErrorIs(t, err, ErrNotFound)
		}
		// A new key under an old id starts with no grants.
		require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k1"), nil))
		gs, _, err := s.ListGrants(ctx, acct, reg, "k1", "", "", "", 50)
		require.NoError(t, err)
		require.Empty(t, gs)
	})
}

// TestOddStrings: what callers write freely (descriptions, policies, tags,
// key store names and trust anchors) is kept byte for byte, NUL and
// invalid UTF-8 included; a lookup by an identifier no store can hold
// (NUL, invalid UTF-8) finds nothing, on every method, rather than failing.
func TestOddStrings(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		const odd = "a\x00b\xffc\u00e9"
		k := newKey(acct, reg, "k")
		k.Description, k.Policy = odd, odd+"{}"
		require.NoError(t, s.CreateKey(ctx, k, []Tag{{odd, odd}, {"\xfe", ""}, {"a", "\x00"}}))
		got, err := s.GetKey(ctx, acct, reg, "k")
		require.NoError(t, err)
		require.Equal(t, k, got)
		tags := collect(t, 1, func(m string, l int) ([]Tag, string, error) { return s.ListTags(ctx, acct, reg, "k", m, l) })
		require.Equal(t, []Tag{{"a", "\x00"}, {odd, odd}, {"\xfe", ""}}, tags, "by bytes")
		require.NoError(t, s.UntagKey(ctx, acct, reg, "k", []string{odd}))
		n, err := countTags(s, acct, reg, "k")
		require.NoError(t, err)
		require.Equal(t, 2, n)

		ks := &KeyStore{ID: "cks-1", Account: acct, Region: reg, Name: odd, ClusterID: "cluster-a", TrustAnchor: odd,
			CreationDate: time.Unix(1700000000, 0).UTC()}
		require.NoError(t, s.CreateKeyStore(ctx, ks, testLimit))
		gotKS, err := s.GetKeyStore(ctx, "cks-1")
		require.NoError(t, err)
		require.Equal(t, ks, gotKS)
		dup := *ks
		dup.ID, dup.ClusterID = "cks-2", "cluster-b"
		require.ErrorIs(t, s.CreateKeyStore(ctx, &dup, testLimit), ErrKeyStoreNameInUse)
		dup.Name = odd + "\x00"
		require.NoError(t, s.CreateKeyStore(ctx, &dup, testLimit))

		g := newGrant(acct, reg, "k", 1)
		g.Constraints.EncryptionContextEquals = map[string]string{odd: odd}
		_, err = s.CreateGrant(ctx, g, testLimit)
		require.NoError(t, err)
		require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/a", TargetKeyID: "k"}, testLimit))

		for _, bad := range []string{"k\x00", "k\xff", "\x00", "\xc3("} {
			t.Run(fmt.Sprintf("%q", bad), func(t *testing.T) {
				badKey := newKey(acct, reg, bad)
				_, err := s.GetKey(ctx, acct, reg, bad)
				require.ErrorIs(t, err, ErrNotFound)
				_, err = s.GetKey(ctx, bad, reg, "k")
				require.ErrorIs(t, err, ErrNotFound)
				_, err = s.UpdateKey(ctx, acct, bad, "k", func(*Key) error { return nil })
				require.ErrorIs(t, err, ErrNotFound)
				require.ErrorIs(t, s.DeleteKey(ctx, acct, reg, bad), ErrNotFound)
				require.ErrorIs(t, s.DeleteKeyOrphaning(ctx, badKey, time.Now()), ErrNotFound)
				inBadStore := newKey(acct, reg, "new")
				inBadStore.CustomKeyStoreID = bad
				require.ErrorIs(t, s.CreateKey(ctx, inBadStore, nil), ErrNotFound)

				require.ErrorIs(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/b", TargetKeyID: bad}, testLimit), ErrNotFound)
				_, err = s.GetAlias(ctx, acct, reg, "alias/"+bad)
				require.ErrorIs(t, err, ErrNotFound)
				require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/a", bad, "k", time.Now(), testLimit), ErrNotFound)
				require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/a", "k", bad, time.Now(), testLimit), ErrNotFound)
				require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/"+bad, "k", "k", time.Now(), testLimit), ErrNotFound)
				require.ErrorIs(t, s.DeleteAlias(ctx, acct, reg, "alias/a", bad), ErrNotFound)
				require.ErrorIs(t, s.DeleteAlias(ctx, acct, reg, "alias/"+bad, "k"), ErrNotFound)
				as, _, err := s.ListAliases(ctx, acct, reg, bad, "", 10)
				require.NoError(t, err)
				require.Empty(t, as)

				require.ErrorIs(t, s.TagKey(ctx, acct, reg, bad, []Tag{{"x", "y"}}, testLimit), ErrNotFound)
				require.ErrorIs(t, s.UntagKey(ctx, acct, reg, bad, []string{"a"}), ErrNotFound)
				tags, _, err := s.ListTags(ctx, acct, reg, bad, "", 10)
				require.NoError(t, err)
				require.Empty(t, tags)

				keys, _, err := s.ListKeys(ctx, bad, reg, "", 10)
				require.NoError(t, err)
				require.Empty(t, keys)
				stores, err := s.ListKeyStores(ctx, acct, bad)
				require.NoError(t, err)
				require.Empty(t, stores)
				_, err = s.GetKeyStore(ctx, bad)
				require.ErrorIs(t, err, ErrNotFound)
				_, err = s.UpdateKeyStore(ctx, bad, func(*KeyStore) error { return nil })
				require.ErrorIs(t, err, ErrNotFound)
				require.ErrorIs(t, s.DeleteKeyStore(ctx, bad), ErrNotFound)

				_, err = s.CreateGrant(ctx, newGrant(acct, reg, bad, 2), testLimit)
				require.ErrorIs(t, err, ErrNotFound)
				_, err = s.GetGrant(ctx, bad)
				require.ErrorIs(t, err, ErrNotFound)
				_, err = s.GetGrantByToken(ctx, bad)
				require.ErrorIs(t, err, ErrNotFound)
				require.ErrorIs(t, s.DeleteGrant(ctx, bad), ErrNotFound)
				for _, args := range [][3]string{{bad, "", ""}, {"k", bad, ""}, {"k", "", bad}} {
					gs, _, err := s.ListGrants(ctx, acct, reg, args[0], args[1], args[2], "", 10)
					require.NoError(t, err)
					require.Empty(t, gs)
				}
				gs, _, err := s.ListRetirableGrants(ctx, reg, bad, "", 10)
				require.NoError(t, err)
				require.Empty(t, gs)
				gs, err = s.GrantsFor(ctx, acct, reg, "k", []string{bad})
				require.NoError(t, err)
				require.Empty(t, gs)

				// An identifier marker that no store could have produced.
				_, _, err = s.ListKeys(ctx, acct, reg, encodeMarker(bad), 10)
				require.ErrorIs(t, err, ErrInvalidMarker)
				_, _, err = s.ListAliases(ctx, acct, reg, "", encodeMarker(bad), 10)
				require.ErrorIs(t, err, ErrInvalidMarker)
				_, _, err = s.ListGrants(ctx, acct, reg, "k", "", "", encodeMarker(bad), 10)
				require.ErrorIs(t, err, ErrInvalidMarker)
				_, _, err = s.ListTags(ctx, acct, reg, "k", encodeMarker(bad), 10)
				require.NoError(t, err, "tag keys may hold any bytes")
			})
		}
		got, err = s.GetKey(ctx, acct, reg, "k")
		require.NoError(t, err)
		require.Equal(t, k, got, "nothing above changed the key")
	})
}

func TestTokenIdentities(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		_, err := s.TokenIdentity(ctx, "")
		require.ErrorIs(t, err, ErrNotFound)

		def := &TokenIdentity{Marker: []byte{1, 2}, Serial: "0123456789abcdef", Label: "hsmkms-default", Recorded: time.Unix(1700000000, 0).UTC()}
		require.NoError(t, s.PutTokenIdentity(ctx, def))
		got, err := s.TokenIdentity(ctx, "")
		require.NoError(t, err)
		require.Equal(t, def, got)

		t.Run("a later record replaces the earlier", func(t *testing.T) {
			moved := *def
			moved.Serial = "fedcba9876543210"
			require.NoError(t, s.PutTokenIdentity(ctx, &moved))
			got, err := s.TokenIdentity(ctx, "")
			require.NoError(t, err)
			require.Equal(t, "fedcba9876543210", got.Serial)
		})
		t.Run("what a token reports is kept byte for byte", func(t *testing.T) {
			odd := &TokenIdentity{KeyStoreID: "cks-odd", ClusterID: "cluster-odd", Marker: []byte{0}, Serial: "\xff\x00", Label: "l\x00\xfe   ",
				Recorded: time.Unix(1700000000, 1).UTC()}
			require.NoError(t, s.PutTokenIdentity(ctx, odd))
			got, err := s.TokenIdentity(ctx, "cks-odd")
			require.NoError(t, err)
			require.Equal(t, odd, got)
			_, err = s.TokenIdentity(ctx, "cks-odd\x00")
			require.ErrorIs(t, err, ErrNotFound)
		})
		t.Run("deleting a key store deletes its record", func(t *testing.T) {
			require.NoError(t, s.CreateKeyStore(ctx, &KeyStore{ID: "cks-1", Account: "a", Region: "r", Name: "n", ClusterID: "cluster-a", TrustAnchor: "pem"}, testLimit))
			require.NoError(t, s.PutTokenIdentity(ctx, &TokenIdentity{KeyStoreID: "cks-1", ClusterID: "cluster-a", Marker: []byte{3}, Serial: "s", Label: "l"}))
			require.NoError(t, s.DeleteKeyStore(ctx, "cks-1"))
			_, err := s.TokenIdentity(ctx, "cks-1")
			require.ErrorIs(t, err, ErrNotFound)
			require.ErrorIs(t, s.DeleteKeyStore(ctx, "cks-1"), ErrNotFound)
			_, err = s.TokenIdentity(ctx, "")
			require.NoError(t, err, "the default key store's record stays")
		})
	})
}

func TestKeyUsage(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		require.NoError(t, s.Ping(ctx))
		start := time.Unix(1700000000, 5).UTC()
		u, err := s.StartUsageTracking(ctx, start)
		require.NoError(t, err)
		require.Equal(t, UsageTracking{Start: start}, *u)
		u, err = s.StartUsageTracking(ctx, start.Add(time.Hour))
		require.NoError(t, err)
		require.Equal(t, start, u.Start, "tracking starts once")

		k := newKey("111122223333", "us-west-2", "k1")
		require.NoError(t, s.CreateKey(ctx, k, nil))
		_, err = s.KeyUsage(ctx, k.Account, k.Region, k.ID)
		require.ErrorIs(t, err, ErrNotFound)

		t1 := time.Unix(1700000100, 7).UTC()
		use := KeyUsage{Account: k.Account, Region: k.Region, KeyID: k.ID, Operation: "Encrypt", Time: t1, EventID: "e1", RequestID: "r1"}
		gone := KeyUsage{Account: k.Account, Region: k.Region, KeyID: "no-such-key", Operation: "Decrypt", Time: t1, EventID: "e2", RequestID: "r2"}
		require.NoError(t, s.RecordKeyUsage(ctx, []KeyUsage{use, gone}, "trail-a", 42))
		got, err := s.KeyUsage(ctx, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		require.Equal(t, use, *got)
		_, err = s.KeyUsage(ctx, k.Account, k.Region, "no-such-key")
		require.ErrorIs(t, err, ErrNotFound, "a usage of a key that is gone is dropped")
		u, err = s.StartUsageTracking(ctx, start)
		require.NoError(t, err)
		require.Equal(t, UsageTracking{Start: start, Trail: "trail-a", Sequence: 42}, *u)

		older := use
		older.Operation, older.Time, older.EventID = "Sign", t1.Add(-time.Second), "e0"
		require.NoError(t, s.RecordKeyUsage(ctx, []KeyUsage{older}, "trail-a", 43))
		got, err = s.KeyUsage(ctx, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		require.Equal(t, "Encrypt", got.Operation, "an older usage never replaces a newer one")
		newer := use
		newer.Operation, newer.Time, newer.EventID = "Decrypt", t1.Add(time.Second), "e3"
		require.NoError(t, s.RecordKeyUsage(ctx, []KeyUsage{newer}, "trail-a", 44))
		got, err = s.KeyUsage(ctx, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		require.Equal(t, newer, *got)

		require.NoError(t, s.DeleteKey(ctx, k.Account, k.Region, k.ID))
		_, err = s.KeyUsage(ctx, k.Account, k.Region, k.ID)
		require.ErrorIs(t, err, ErrNotFound, "the usage goes with its key")
	})
}

// TestKeyCacheBound: the cache keeps at most its size, and what it keeps
// is right.
func TestKeyCacheBound(t *testing.T) {
	s, err := OpenSQLite(filepath.Join(t.TempDir(), "db"))
	require.NoError(t, err)
	defer s.Close()
	c := WithKeyCacheSize(s, 128)
	const acct, reg = "111122223333", "us-west-2"
	for i := range 500 {
		require.NoError(t, c.CreateKey(ctx, newKey(acct, reg, fmt.Sprint("k", i)), nil))
	}
	for round := range 3 {
		for i := range 500 {
			k, err := c.GetKey(ctx, acct, reg, fmt.Sprint("k", i))
			require.NoError(t, err)
			require.Equal(t, fmt.Sprint("k", i), k.ID)
			require.Equal(t, newKey(acct, reg, fmt.Sprint("k", i)), k, "round %d", round)
		}
		require.LessOrEqual(t, c.Len(), 128)
		require.Positive(t, c.Len())
	}
}
