package store

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// racers is how many writers race for a limit's last places: more than
// any limit below, so that some must lose. They are spread over nodes
// stores opened on one database, as nodes (or processes) sharing it; on
// PostgreSQL each store's pool gives them separate connections.
const (
	racers = 60
	nodes  = 3
)

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

// outcomes counts errs by kind: "ok" for nil, else the error's text.
func outcomes(errs []error) map[string]int {
	got := map[string]int{}
	for _, err := range errs {
		if err == nil {
			got["ok"]++
		} else {
			got[err.Error()]++
		}
	}
	return got
}

// requireOutcomes asserts exactly ok calls succeeded and the rest failed
// with want.
func requireOutcomes(t *testing.T, errs []error, ok int, want error) {
	t.Helper()
	exp := map[string]int{"ok": ok}
	if ok < len(errs) {
		exp[want.Error()] = len(errs) - ok
	}
	require.Equal(t, exp, outcomes(errs), "outcomes of %d racing writers", len(errs))
	for _, err := range errs {
		if err != nil {
			require.ErrorIs(t, err, want)
		}
	}
}

// TestLimitsHoldUnderConcurrency races more writers than each limit allows
// against one key or account, from several nodes, and checks that exactly
// the limit holds: the count and the write are one transaction, and the
// transactions of different nodes exclude each other.
func TestLimitsHoldUnderConcurrency(t *testing.T) {
	const acct, reg = "111122223333", "us-west-2"

	t.Run("AliasesPerKey", func(t *testing.T) {
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				return s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: fmt.Sprintf("alias/a%02d", i), TargetKeyID: "k"}, 50)
			})
			requireOutcomes(t, errs, 50, ErrLimitExceeded)
			n, err := countAliases(s, acct, reg, "k")
			require.NoError(t, err)
			require.Equal(t, 50, n)
		})
	})

	t.Run("AliasesPerKeyByUpdate", func(t *testing.T) {
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			for _, id := range []string{"full", "other"} {
				require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, id), nil))
			}
			for i := range 45 {
				require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: fmt.Sprintf("alias/f%02d", i), TargetKeyID: "full"}, 50))
			}
			for i := range racers {
				require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: fmt.Sprintf("alias/o%02d", i), TargetKeyID: "other"}, racers))
			}
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				return s.UpdateAlias(ctx, acct, reg, fmt.Sprintf("alias/o%02d", i), "other", "full", time.Now(), 50)
			})
			requireOutcomes(t, errs, 5, ErrLimitExceeded)
			n, err := countAliases(s, acct, reg, "full")
			require.NoError(t, err)
			require.Equal(t, 50, n)
			require.NoError(t, s.UpdateAlias(ctx, acct, reg, "alias/f00", "full", "full", time.Now(), 50),
				"re-pointing an alias at the key it is on takes no place")
		})
	})

	t.Run("AliasName", func(t *testing.T) {
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				return s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/one", TargetKeyID: "k"}, testLimit)
			})
			requireOutcomes(t, errs, 1, ErrAlreadyExists)
		})
	})

	t.Run("TagsPerKey", func(t *testing.T) {
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), []Tag{{"t00", "created"}}))
			// Racer 0 replaces the existing tag key's value: it takes no
			// place, so it succeeds whoever wins; 49 of the other 59 do.
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				return s.TagKey(ctx, acct, reg, "k", []Tag{{fmt.Sprintf("t%02d", i), "raced"}}, 50)
			})
			requireOutcomes(t, errs, 50, ErrLimitExceeded)
			require.NoError(t, errs[0])
			n, err := countTags(s, acct, reg, "k")
			require.NoError(t, err)
			require.Equal(t, 50, n)
			require.ErrorIs(t, s.TagKey(ctx, acct, reg, "k", []Tag{{"t00", "again"}, {"new", "x"}}, 50), ErrLimitExceeded)
			tags, _, err := s.ListTags(ctx, acct, reg, "k", "", 1)
			require.NoError(t, err)
			require.Equal(t, []Tag{{"t00", "raced"}}, tags, "a refused request writes none of its tags")
		})
	})

	t.Run("GrantsPerKey", func(t *testing.T) {
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				_, err := s.CreateGrant(ctx, newGrant(acct, reg, "k", i), 50)
				return err
			})
			requireOutcomes(t, errs, 50, ErrLimitExceeded)
			gs, _, err := s.ListGrants(ctx, acct, reg, "k", "", "", "", 0)
			require.NoError(t, err)
			require.Len(t, gs, 50)
		})
	})

	t.Run("GrantNameRetries", func(t *testing.T) {
		// Retries by Name are one grant, however they interleave.
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
			ids := make([]string, racers)
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				g := newGrant(acct, reg, "k", i)
				g.Name = "retried"
				out, err := s.CreateGrant(ctx, g, 50)
				if err == nil {
					ids[i] = out.GrantID
				}
				return err
			})
			requireOutcomes(t, errs, racers, nil)
			gs, _, err := s.ListGrants(ctx, acct, reg, "k", "", "", "", 0)
			require.NoError(t, err)
			require.Len(t, gs, 1)
			for _, id := range ids {
				require.Equal(t, gs[0].GrantID, id)
			}
		})
	})

	t.Run("KeyStoresPerRegion", func(t *testing.T) {
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				return s.CreateKeyStore(ctx, &KeyStore{ID: fmt.Sprintf("cks-%02d", i), Account: acct, Region: reg,
					Name: fmt.Sprintf("store-%02d", i), ClusterID: fmt.Sprintf("cluster-%02d", i)}, 10)
			})
			requireOutcomes(t, errs, 10, ErrLimitExceeded)
			list, err := s.ListKeyStores(ctx, acct, reg)
			require.NoError(t, err)
			require.Len(t, list, 10)
			require.NoError(t, s.CreateKeyStore(ctx, &KeyStore{ID: "cks-elsewhere", Account: acct, Region: "eu-west-1",
				Name: "store-00", ClusterID: "cluster-elsewhere"}, 10), "the limit is per account and region")
		})
	})

	t.Run("KeyStoreCluster", func(t *testing.T) {
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				return s.CreateKeyStore(ctx, &KeyStore{ID: fmt.Sprintf("cks-%02d", i), Account: acct, Region: reg,
					Name: fmt.Sprintf("store-%02d", i), ClusterID: "cluster-one"}, testLimit)
			})
			requireOutcomes(t, errs, 1, ErrClusterInUse)
		})
	})

	t.Run("KeyStoreClusterAcrossAccounts", func(t *testing.T) {
		// A cluster backs one store in any account or region: writers
		// that share no account still exclude each other.
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				return s.CreateKeyStore(ctx, &KeyStore{ID: fmt.Sprintf("cks-%02d", i), Account: fmt.Sprintf("1111222233%02d", i),
					Region: []string{"us-west-2", "eu-west-1"}[i%2], Name: "same", ClusterID: "cluster-one"}, testLimit)
			})
			requireOutcomes(t, errs, 1, ErrClusterInUse)
			all, err := ss[0].AllKeyStores(ctx)
			require.NoError(t, err)
			require.Len(t, all, 1)
		})
	})

	t.Run("KeyStoreName", func(t *testing.T) {
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				return s.CreateKeyStore(ctx, &KeyStore{ID: fmt.Sprintf("cks-%02d", i), Account: acct, Region: reg,
					Name: "one", ClusterID: fmt.Sprintf("cluster-%02d", i)}, testLimit)
			})
			requireOutcomes(t, errs, 1, ErrKeyStoreNameInUse)
		})
	})

	t.Run("AliasMovesOnce", func(t *testing.T) {
		// UpdateAlias and DeleteAlias act only if the alias names the key
		// the caller authorized: of racers that all saw it on k1, one
		// acts and the others find it gone from k1.
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			for _, id := range []string{"k1", "k2", "k3"} {
				require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, id), nil))
			}
			require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/moving", TargetKeyID: "k1"}, testLimit))
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				switch i % 3 {
				case 0:
					return s.DeleteAlias(ctx, acct, reg, "alias/moving", "k1")
				default:
					return s.UpdateAlias(ctx, acct, reg, "alias/moving", "k1", []string{"", "k2", "k3"}[i%3], time.Now(), testLimit)
				}
			})
			requireOutcomes(t, errs, 1, ErrNotFound)
			n, err := countAliases(s, acct, reg, "k1")
			require.NoError(t, err)
			require.Zero(t, n)
		})
	})

	t.Run("OnDemandRotationsPerKey", func(t *testing.T) {
		// kms checks the on-demand rotation limit in UpdateKey's fn, which
		// sees the stored row inside the write transaction.
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, "k"), nil))
			errLimit := errors.New("limit")
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				_, err := s.UpdateKey(ctx, acct, reg, "k", func(k *Key) error {
					if len(k.Materials)-1 >= 25 {
						return errLimit
					}
					k.Materials = append(k.Materials, Material{ID: fmt.Sprintf("r%02d", i), RotationType: "ON_DEMAND"})
					return nil
				})
				return err
			})
			requireOutcomes(t, errs, 25, errLimit)
			k, err := s.GetKey(ctx, acct, reg, "k")
			require.NoError(t, err)
			require.Len(t, k.Materials, 26)
		})
	})

	t.Run("DeleteKeyStoreAgainstCreateKey", func(t *testing.T) {
		// A store is deleted only while empty, and a key is added only to
		// a store that exists: whatever the interleaving, no key is left
		// in a deleted store.
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			s := ss[0]
			require.NoError(t, s.CreateKeyStore(ctx, &KeyStore{ID: "cks-1", Account: acct, Region: reg, Name: "s", ClusterID: "cluster-a"}, 10))
			errs := race(racers, func(i int) error {
				s := ss[i%nodes] // racers spread over the nodes
				if i == racers/2 {
					return s.DeleteKeyStore(ctx, "cks-1")
				}
				k := newKey(acct, reg, fmt.Sprintf("k%02d", i))
				k.CustomKeyStoreID = "cks-1"
				return s.CreateKey(ctx, k, nil)
			})
			var inStore int
			require.NoError(t, s.ForEachKey(ctx, func(k *Key) error {
				if k.CustomKeyStoreID == "cks-1" {
					inStore++
				}
				return nil
			}))
			_, err := s.GetKeyStore(ctx, "cks-1")
			var notEmpty *KeyStoreNotEmptyError
			switch del := errs[racers/2]; {
			case del == nil:
				require.ErrorIs(t, err, ErrNotFound)
				require.Zero(t, inStore, "no key in the deleted store")
				for i, err := range errs {
					if i != racers/2 {
						require.ErrorIs(t, err, ErrNotFound, "every key came after the deletion")
					}
				}
			case errors.As(del, &notEmpty):
				require.NoError(t, err, "the store stays")
				require.Positive(t, notEmpty.Keys)
				require.Equal(t, racers-1, inStore)
			default:
				t.Fatalf("DeleteKeyStore: %v", del)
			}
		})
	})

	t.Run("DeleteKeyStoreAgainstFirstKeys", func(t *testing.T) {
		// The same, with the deletion racing the store's first keys,
		// round after round: the window where a key has seen the store
		// but not yet committed is where an unlocked check would let it
		// into a deleted store.
		each(t, func(t *testing.T, d *db) {
			ss := d.nodes(t, nodes)
			for round := range 20 {
				id := fmt.Sprintf("cks-%02d", round)
				require.NoError(t, ss[0].CreateKeyStore(ctx, &KeyStore{ID: id, Account: acct, Region: reg, Name: id, ClusterID: id}, testLimit))
				errs := race(4, func(i int) error {
					s := ss[i%nodes]
					if i == 0 {
						return s.DeleteKeyStore(ctx, id)
					}
					k := newKey(acct, reg, fmt.Sprintf("k%02d-%d", round, i))
					k.CustomKeyStoreID = id
					return s.CreateKey(ctx, k, nil)
				})
				created := 0
				for _, err := range errs[1:] {
					if err == nil {
						created++
					} else {
						require.ErrorIs(t, err, ErrNotFound)
					}
				}
				var notEmpty *KeyStoreNotEmptyError
				if errs[0] == nil {
					require.Zero(t, created, "round %d: a key went into a deleted store", round)
				} else {
					require.ErrorAs(t, errs[0], &notEmpty)
					require.Positive(t, created)
				}
			}
		})
	})
}
