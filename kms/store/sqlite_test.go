package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var ctx = context.Background()

func open(t testing.TB) (*SQLite, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsmkms.db")
	s, err := OpenSQLite(path)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s, path
}

func newKey(acct, region, id string) *Key {
	now := time.Unix(1700000000, 123456789).UTC()
	return &Key{Account: acct, Region: region, ID: id, Description: "d", KeyUsage: "ENCRYPT_DECRYPT",
		KeySpec: "SYMMETRIC_DEFAULT", Origin: "AWS_KMS", State: "Enabled", CreationDate: now, Policy: `{"Version":"2012-10-17"}`,
		Materials: []Material{{ID: "aa", TokenID: []byte{1, 2, 3}, CreationDate: now}}}
}

func TestKeyRoundTripAndErrors(t *testing.T) {
	s, path := open(t)
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

	s, err = OpenSQLite(path) // persistence, and migrations are idempotent
	require.NoError(t, err)
	defer s.Close()
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

	require.NoError(t, s.CreateAlias(ctx, &Alias{Account: k.Account, Region: k.Region, Name: "alias/x", TargetKeyID: k.ID}))
	require.NoError(t, s.DeleteKey(ctx, k.Account, k.Region, k.ID))
	require.ErrorIs(t, s.DeleteKey(ctx, k.Account, k.Region, k.ID), ErrNotFound)
	_, err = s.GetAlias(ctx, k.Account, k.Region, "alias/x")
	require.ErrorIs(t, err, ErrNotFound, "aliases go with their key")
	n, err := s.CountTags(ctx, k.Account, k.Region, k.ID)
	require.NoError(t, err)
	require.Zero(t, n, "tags go with their key")

	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func TestPagination(t *testing.T) {
	s, _ := open(t)
	const acct, reg = "111122223333", "us-west-2"
	for i := range 5 {
		require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, fmt.Sprintf("k%d", i)), nil))
		require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: fmt.Sprintf("alias/a%d", i), TargetKeyID: fmt.Sprintf("k%d", i%2)}))
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
	n, err := s.CountAliases(ctx, acct, reg, "k0")
	require.NoError(t, err)
	require.Equal(t, 3, n)

	require.NoError(t, s.TagKey(ctx, acct, reg, "k0", []Tag{{"b", "1"}, {"a", "1"}, {"c", "1"}}))
	require.NoError(t, s.TagKey(ctx, acct, reg, "k0", []Tag{{"a", "2"}}))
	tags, next, err := s.ListTags(ctx, acct, reg, "k0", "", 2)
	require.NoError(t, err)
	require.Equal(t, []Tag{{"a", "2"}, {"b", "1"}}, tags)
	tags, _, err = s.ListTags(ctx, acct, reg, "k0", next, 2)
	require.NoError(t, err)
	require.Equal(t, []Tag{{"c", "1"}}, tags)
	require.NoError(t, s.UntagKey(ctx, acct, reg, "k0", []string{"a", "zzz"}))
	n, _ = s.CountTags(ctx, acct, reg, "k0")
	require.Equal(t, 2, n)
	require.ErrorIs(t, s.TagKey(ctx, acct, reg, "missing", []Tag{{"a", "1"}}), ErrNotFound)

	for _, bad := range []string{"x", "m1.!!", "m1."} {
		_, _, err := s.ListKeys(ctx, acct, reg, bad, 1)
		require.ErrorIs(t, err, ErrInvalidMarker, bad)
	}
}

func TestAliasErrors(t *testing.T) {
	s, _ := open(t)
	const acct, reg = "111122223333", "us-west-2"
	require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
	a := &Alias{Account: acct, Region: reg, Name: "alias/a", TargetKeyID: "k"}
	require.NoError(t, s.CreateAlias(ctx, a))
	require.ErrorIs(t, s.CreateAlias(ctx, a), ErrAlreadyExists)
	require.ErrorIs(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/b", TargetKeyID: "none"}), ErrNotFound)
	require.ErrorIs(t, s.UpdateAlias(ctx, acct, reg, "alias/none", "k", time.Now()), ErrNotFound)
	require.ErrorIs(t, s.DeleteAlias(ctx, acct, reg, "alias/none"), ErrNotFound)
	require.NoError(t, s.DeleteAlias(ctx, acct, reg, "alias/a"))
}

func TestConcurrentWriters(t *testing.T) {
	s, _ := open(t)
	const acct, reg = "111122223333", "us-west-2"
	require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if err := s.TagKey(ctx, acct, reg, "k", []Tag{{fmt.Sprintf("g%d", g), fmt.Sprint(i)}}); err != nil {
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
	require.Equal(t, 400, k.PendingWindowDays, "no lost update")
}

func FuzzMarker(f *testing.F) {
	s, _ := open(f)
	f.Add("")
	f.Add(encodeMarker("k1"))
	f.Add("m1.////")
	f.Fuzz(func(t *testing.T, marker string) {
		_, _, err := s.ListKeys(ctx, "a", "r", marker, 10)
		if err != nil && !errors.Is(err, ErrInvalidMarker) {
			t.Fatal(err)
		}
	})
}

func BenchmarkGetKey(b *testing.B) {
	s, _ := open(b)
	require.NoError(b, s.CreateKey(ctx, newKey("a", "r", "k"), nil))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.GetKey(ctx, "a", "r", "k"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestKeyCache(t *testing.T) {
	db, _ := open(t)
	s := WithKeyCache(db)
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
}

func TestKeyStores(t *testing.T) {
	s, path := open(t)
	const acct, reg = "111122223333", "us-west-2"
	ks := &KeyStore{ID: "cks-1", Account: acct, Region: reg, Name: "one", ClusterID: "cluster-a", TrustAnchor: "pem",
		CreationDate: time.Unix(1700000000, 0).UTC(), Password: []byte{1, 2}}
	require.NoError(t, s.CreateKeyStore(ctx, ks))
	dupName := *ks
	dupName.ID, dupName.ClusterID = "cks-2", "cluster-b"
	require.ErrorIs(t, s.CreateKeyStore(ctx, &dupName), ErrAlreadyExists, "names are unique per account and region")
	dupCluster := *ks
	dupCluster.ID, dupCluster.Name = "cks-3", "three"
	require.ErrorIs(t, s.CreateKeyStore(ctx, &dupCluster), ErrAlreadyExists, "a cluster backs one store")
	other := dupName
	other.Region = "eu-west-1"
	require.NoError(t, s.CreateKeyStore(ctx, &other), "the same name in another region is fine")

	got, err := s.GetKeyStore(ctx, "cks-1")
	require.NoError(t, err)
	require.Equal(t, ks, got)
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
	n, err := s.CountKeysInStore(ctx, "cks-1")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, s.DeleteKeyOrphaning(ctx, k, time.Unix(1800000000, 0)))
	orphans, err := s.Orphans(ctx)
	require.NoError(t, err)
	require.Equal(t, []Orphan{{KeyStoreID: "cks-1", KeyARN: "arn:aws:kms:us-west-2:111122223333:key/in-store", TokenID: []byte{1, 2, 3}, Deleted: time.Unix(1800000000, 0).UTC()}}, orphans)
	require.NoError(t, s.DeleteKeyStore(ctx, "cks-1"))
	require.ErrorIs(t, s.DeleteKeyStore(ctx, "cks-1"), ErrNotFound)
	require.NoError(t, s.Close())

	s2, err := OpenSQLite(path) // version 1 → 2 already applied; reopening is a no-op
	require.NoError(t, err)
	s2.Close()
}
