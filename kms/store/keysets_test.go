package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mrkKey(region, primary string) *Key {
	k := newKey("111122223333", region, "mrk-0123456789abcdef0123456789abcdef")
	k.MultiRegion, k.PrimaryRegion = true, primary
	return k
}

func TestKeySets(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		ctx := context.Background()
		p := mrkKey("us-east-1", "us-east-1")
		require.NoError(t, s.CreateKey(ctx, p, nil))
		// A single-Region key with the same id elsewhere is not of the set.
		other := newKey("111122223333", "us-west-2", p.ID)
		require.NoError(t, s.CreateKey(ctx, other, nil))

		t.Run("add a replica with tags", func(t *testing.T) {
			set, err := s.UpdateKeySet(ctx, p.Account, p.ID, func(keys []*Key) (SetChange, error) {
				require.Len(t, keys, 1)
				return SetChange{Add: mrkKey("eu-west-1", "us-east-1"), AddTags: []Tag{{"a", "b"}}}, nil
			})
			require.NoError(t, err)
			assert.Len(t, set, 2)
			got, err := s.KeySet(ctx, p.Account, p.ID)
			require.NoError(t, err)
			require.Len(t, got, 2)
			assert.Equal(t, "eu-west-1", got[0].Region)
			assert.Equal(t, "us-east-1", got[0].PrimaryRegion)
			assert.True(t, got[0].IsReplica())
			assert.False(t, got[1].IsReplica())
			tags, _, err := s.ListTags(ctx, p.Account, "eu-west-1", p.ID, "", 10)
			require.NoError(t, err)
			assert.Equal(t, []Tag{{"a", "b"}}, tags)
		})
		t.Run("one key per Region", func(t *testing.T) {
			_, err := s.UpdateKeySet(ctx, p.Account, p.ID, func([]*Key) (SetChange, error) {
				return SetChange{Add: mrkKey("eu-west-1", "us-east-1")}, nil
			})
			assert.ErrorIs(t, err, ErrAlreadyExists)
		})
		t.Run("every key written in one transaction", func(t *testing.T) {
			_, err := s.UpdateKeySet(ctx, p.Account, p.ID, func(keys []*Key) (SetChange, error) {
				for _, k := range keys {
					k.Materials = append(k.Materials, Material{ID: "bb", TokenID: []byte{4}})
					k.NewPrimaryRegion = "eu-west-1"
					k.Region = "moved" // ignored: identities are the rows'
				}
				return SetChange{}, nil
			})
			require.NoError(t, err)
			for _, r := range []string{"us-east-1", "eu-west-1"} {
				k, err := s.GetKey(ctx, p.Account, r, p.ID)
				require.NoError(t, err)
				assert.Len(t, k.Materials, 2)
				assert.Equal(t, "eu-west-1", k.NewPrimaryRegion)
			}
		})
		t.Run("an error of fn writes nothing", func(t *testing.T) {
			boom := errors.New("boom")
			_, err := s.UpdateKeySet(ctx, p.Account, p.ID, func(keys []*Key) (SetChange, error) {
				keys[0].Description = "changed"
				return SetChange{Add: mrkKey("ap-south-1", "us-east-1")}, boom
			})
			assert.ErrorIs(t, err, boom)
			set, err := s.KeySet(ctx, p.Account, p.ID)
			require.NoError(t, err)
			assert.Len(t, set, 2)
			assert.Equal(t, "d", set[0].Description)
		})
		t.Run("keys in transition", func(t *testing.T) {
			// The move recorded above is one, on both keys.
			keys, err := s.KeysInTransition(ctx)
			require.NoError(t, err)
			assert.Len(t, keys, 2)
		})
		t.Run("delete one key", func(t *testing.T) {
			set, err := s.UpdateKeySet(ctx, p.Account, p.ID, func(keys []*Key) (SetChange, error) {
				keys[1].State = "PendingDeletion"
				return SetChange{Delete: "eu-west-1"}, nil
			})
			require.NoError(t, err)
			require.Len(t, set, 1)
			_, err = s.GetKey(ctx, p.Account, "eu-west-1", p.ID)
			assert.ErrorIs(t, err, ErrNotFound)
			k, err := s.GetKey(ctx, p.Account, "us-east-1", p.ID)
			require.NoError(t, err)
			assert.Equal(t, "PendingDeletion", k.State)
			creating := mrkKey("ap-south-1", "us-east-1")
			creating.State = "Creating"
			_, err = s.UpdateKeySet(ctx, p.Account, p.ID, func(keys []*Key) (SetChange, error) {
				for _, k := range keys {
					k.NewPrimaryRegion = ""
				}
				return SetChange{Add: creating}, nil
			})
			require.NoError(t, err)
			keys, err := s.KeysInTransition(ctx)
			require.NoError(t, err)
			require.Len(t, keys, 1, "a replica Creating; a primary Creating is not one")
			assert.Equal(t, "ap-south-1", keys[0].Region)
		})
		t.Run("unknown", func(t *testing.T) {
			_, err := s.KeySet(ctx, p.Account, "mrk-ffffffffffffffffffffffffffffffff")
			assert.ErrorIs(t, err, ErrNotFound)
			_, err = s.UpdateKeySet(ctx, p.Account, "mrk-ffffffffffffffffffffffffffffffff", func([]*Key) (SetChange, error) { return SetChange{}, nil })
			assert.ErrorIs(t, err, ErrNotFound)
		})
		t.Run("concurrent replicas to one Region: one wins", func(t *testing.T) {
			var wg sync.WaitGroup
			errs := make([]error, 4)
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = s.UpdateKeySet(ctx, p.Account, p.ID, func([]*Key) (SetChange, error) {
						return SetChange{Add: mrkKey("sa-east-1", "us-east-1")}, nil
					})
				}()
			}
			wg.Wait()
			ok := 0
			for _, err := range errs {
				if err == nil {
					ok++
				} else {
					assert.ErrorIs(t, err, ErrAlreadyExists)
				}
			}
			assert.Equal(t, 1, ok)
		})
	})
}

// The partial index's condition is KeysInTransition's, word for word.
func TestKeysInTransitionIndex(t *testing.T) {
	t.Parallel()
	has := func(ms []string, cond string) bool {
		for _, m := range ms {
			if strings.Contains(m, "keys_in_transition") && strings.Contains(m, "WHERE "+cond+";") {
				return true
			}
		}
		return false
	}
	assert.True(t, has(migrations, inTransition))
	assert.True(t, has(pgMigrations, pgInTransition))
}

func TestKeyCacheDropsTheWholeSet(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		c := WithKeyCache(d.open(t))
		ctx := context.Background()
		p := mrkKey("us-east-1", "us-east-1")
		require.NoError(t, c.CreateKey(ctx, p, nil))
		_, err := c.UpdateKeySet(ctx, p.Account, p.ID, func([]*Key) (SetChange, error) {
			return SetChange{Add: mrkKey("eu-west-1", "us-east-1")}, nil
		})
		require.NoError(t, err)
		for _, r := range []string{"us-east-1", "eu-west-1"} {
			_, err := c.GetKey(ctx, p.Account, r, p.ID) // cached now
			require.NoError(t, err)
		}
		_, err = c.UpdateKeySet(ctx, p.Account, p.ID, func(keys []*Key) (SetChange, error) {
			for _, k := range keys {
				k.Description = "new"
			}
			return SetChange{}, nil
		})
		require.NoError(t, err)
		for _, r := range []string{"us-east-1", "eu-west-1"} {
			k, err := c.GetKey(ctx, p.Account, r, p.ID)
			require.NoError(t, err)
			assert.Equal(t, "new", k.Description, r)
		}
	})
}
