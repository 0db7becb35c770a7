package store

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// wrappedKey is a key whose one material is wrapped under domain key dk of
// the default key store.
func wrappedKey(id, dk string) *Key {
	k := newKey("111122223333", "us-west-2", id)
	k.Materials[0].Wrapped = []byte{0xAA, 0xBB}
	k.Materials[0].DomainKey = dk
	return k
}

func states(t *testing.T, s Store, keyStoreID string) map[string]string {
	t.Helper()
	dks, err := s.DomainKeys(ctx, keyStoreID)
	require.NoError(t, err)
	out := map[string]string{}
	for _, dk := range dks {
		out[dk.ID] = dk.State
	}
	return out
}

// TestDomainKeyLifecycle walks a domain key through its states, with the
// checks each write makes in its transaction.
func TestDomainKeyLifecycle(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		now := time.Unix(1700000000, 0).UTC()
		require.NoError(t, s.AddDomainKey(ctx, &DomainKey{ID: "d1", Created: now}))
		require.ErrorIs(t, s.AddDomainKey(ctx, &DomainKey{ID: "d1", Created: now}), ErrAlreadyExists)
		require.Equal(t, map[string]string{"d1": DomainKeyPending}, states(t, s, ""))

		t.Run("a pending key wraps nothing", func(t *testing.T) {
			require.ErrorIs(t, s.CreateKey(ctx, wrappedKey("k0", "d1"), nil), ErrDomainKeyUnusable)
			require.ErrorIs(t, s.CreateKey(ctx, wrappedKey("k0", "unknown"), nil), ErrDomainKeyUnusable)
		})

		require.NoError(t, s.ActivateDomainKey(ctx, "", "d1"))
		require.NoError(t, s.ActivateDomainKey(ctx, "", "d1"), "activating the active key again is a no-op")
		require.NoError(t, s.CreateKey(ctx, wrappedKey("k1", "d1"), nil))
		got, err := s.GetKey(ctx, "111122223333", "us-west-2", "k1")
		require.NoError(t, err)
		require.Equal(t, wrappedKey("k1", "d1"), got, "wrapped bytes and domain key round-trip")

		require.NoError(t, s.AddDomainKey(ctx, &DomainKey{ID: "d2", Created: now.Add(time.Hour)}))
		require.NoError(t, s.ActivateDomainKey(ctx, "", "d2"))
		require.Equal(t, map[string]string{"d1": DomainKeyRetired, "d2": DomainKeyActive}, states(t, s, ""))
		require.ErrorIs(t, s.ActivateDomainKey(ctx, "", "d1"), ErrDomainKeyState, "a retired key never wraps again")
		require.NoError(t, s.CreateKey(ctx, wrappedKey("k2", "d1"), nil), "a retired key is still usable: a write may have wrapped under it just before")

		t.Run("retire refused while named", func(t *testing.T) {
			require.ErrorIs(t, s.RetireDomainKey(ctx, "", "d1"), ErrDomainKeyInUse)
			require.ErrorIs(t, s.RetireDomainKey(ctx, "", "d2"), ErrDomainKeyState, "the active key")
			require.ErrorIs(t, s.DeleteDomainKey(ctx, "", "d1"), ErrDomainKeyState)
		})
		for _, id := range []string{"k1", "k2"} {
			_, err := s.UpdateKey(ctx, "111122223333", "us-west-2", id, func(k *Key) error {
				k.Materials[0].Wrapped, k.Materials[0].DomainKey = []byte{0xCC}, "d2"
				return nil
			})
			require.NoError(t, err)
		}
		require.NoError(t, s.RetireDomainKey(ctx, "", "d1"))
		require.NoError(t, s.RetireDomainKey(ctx, "", "d1"), "again: already destroying")
		require.Equal(t, DomainKeyDestroying, states(t, s, "")["d1"])

		t.Run("nothing names a key being destroyed", func(t *testing.T) {
			require.ErrorIs(t, s.CreateKey(ctx, wrappedKey("k3", "d1"), nil), ErrDomainKeyUnusable)
			_, err := s.UpdateKey(ctx, "111122223333", "us-west-2", "k1", func(k *Key) error {
				k.Materials = append(k.Materials, Material{ID: "bb", TokenID: []byte{9}, Wrapped: []byte{1}, DomainKey: "d1"})
				return nil
			})
			require.ErrorIs(t, err, ErrDomainKeyUnusable)
			_, err = s.UpdateKey(ctx, "111122223333", "us-west-2", "k1", func(k *Key) error { k.Description = "x"; return nil })
			require.NoError(t, err, "writes that name no new domain key are not checked")
		})
		require.NoError(t, s.DeleteDomainKey(ctx, "", "d1"))
		require.ErrorIs(t, s.DeleteDomainKey(ctx, "", "d1"), ErrNotFound)
		require.Equal(t, map[string]string{"d2": DomainKeyActive}, states(t, s, ""))

		t.Run("per key store", func(t *testing.T) {
			require.Empty(t, states(t, s, "cks-1"))
			k := wrappedKey("k4", "d2")
			k.CustomKeyStoreID = "cks-1"
			require.NoError(t, s.CreateKeyStore(ctx, &KeyStore{ID: "cks-1", Account: k.Account, Region: k.Region, Name: "n", ClusterID: "c"}, testLimit))
			require.ErrorIs(t, s.CreateKey(ctx, k, nil), ErrDomainKeyUnusable, "d2 is the default key store's")
			require.NoError(t, s.AddDomainKey(ctx, &DomainKey{KeyStoreID: "cks-1", ID: "d2", Created: now}))
			require.NoError(t, s.ActivateDomainKey(ctx, "cks-1", "d2"))
			require.Equal(t, map[string]string{"d2": DomainKeyActive}, states(t, s, ""), "another store's activation leaves this one alone")
			require.NoError(t, s.CreateKey(ctx, k, nil))
			require.NoError(t, s.DeleteKeyOrphaning(ctx, k, now))
			orphans, err := s.Orphans(ctx)
			require.NoError(t, err)
			require.Empty(t, orphans, "wrapped material leaves nothing on the token to orphan")
			require.NoError(t, s.DeleteKeyStore(ctx, "cks-1"))
			require.Empty(t, states(t, s, "cks-1"), "a deleted store's domain keys go with it")
		})
	})
}

// TestRetireRacesWriters: of a RetireDomainKey racing writers that name
// the key, either the writer fails or the retire does; never both succeed.
func TestRetireRacesWriters(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		now := time.Unix(1700000000, 0).UTC()
		for _, id := range []string{"old", "new"} {
			require.NoError(t, s.AddDomainKey(ctx, &DomainKey{ID: id, Created: now}))
			require.NoError(t, s.ActivateDomainKey(ctx, "", id))
		}
		var wg sync.WaitGroup
		created := make([]bool, 16)
		var retireErr error
		wg.Go(func() { retireErr = s.RetireDomainKey(ctx, "", "old") })
		for i := range created {
			wg.Go(func() {
				created[i] = s.CreateKey(ctx, wrappedKey(string(rune('a'+i)), "old"), nil) == nil
			})
		}
		wg.Wait()
		anyCreated := false
		for _, c := range created {
			anyCreated = anyCreated || c
		}
		if retireErr == nil {
			require.False(t, anyCreated, "a key was written under a domain key whose destruction began")
		} else {
			require.ErrorIs(t, retireErr, ErrDomainKeyInUse)
			require.True(t, anyCreated)
		}
	})
}

// TestDomainKeyNamedByExternalKeyStoreKey: a key of an external key store
// holds its material in the default key store, wrapped under that store's
// domain key: the key is checked against the default store's domain keys,
// and keeps the domain key from being destroyed.
func TestDomainKeyNamedByExternalKeyStoreKey(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		now := time.Unix(1700000000, 0).UTC()
		require.NoError(t, s.CreateKeyStore(ctx, newXKSStore("cks-x", "111122223333", "us-west-2", "x", "https://proxy.example", "/p"), 10))
		require.NoError(t, s.AddDomainKey(ctx, &DomainKey{ID: "d1", Created: now}))
		require.NoError(t, s.ActivateDomainKey(ctx, "", "d1"))
		k := wrappedKey("kx", "d1")
		k.CustomKeyStoreID, k.Origin, k.XksKeyID = "cks-x", "EXTERNAL_KEY_STORE", "ext-1"
		require.NoError(t, s.CreateKey(ctx, k, nil))
		require.NoError(t, s.AddDomainKey(ctx, &DomainKey{ID: "d2", Created: now}))
		require.NoError(t, s.ActivateDomainKey(ctx, "", "d2"))
		require.ErrorIs(t, s.RetireDomainKey(ctx, "", "d1"), ErrDomainKeyInUse)
	})
}
