package keystore_test

import (
	"context"
	"sync"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memRecords is an in-memory keystore.TokenRecords.
type memRecords struct {
	mu       sync.Mutex
	ids      map[string]keystore.TokenIdentity
	material map[string][][]byte
	domain   []*domainRecord // domainrecords_test.go
	named    map[string]bool // domain keys some material names
}

func newRecords() *memRecords {
	return &memRecords{ids: map[string]keystore.TokenIdentity{}, material: map[string][][]byte{}, named: map[string]bool{}}
}

func (r *memRecords) TokenIdentity(_ context.Context, id string) (keystore.TokenIdentity, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.ids[id]
	return v, ok, nil
}

func (r *memRecords) RecordTokenIdentity(_ context.Context, id string, v keystore.TokenIdentity) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids[id] = v
	return nil
}

func (r *memRecords) KeyMaterial(_ context.Context, id string) ([][]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.material[id], nil
}

func (r *memRecords) SealsPasswords(context.Context) (bool, error) { return false, nil }

// loggedIn opens tok and logs in.
func loggedIn(t *testing.T, tok hsmtest.Token) *hsm.Token {
	t.Helper()
	h, err := hsm.OpenToken(hsm.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 1})
	require.NoError(t, err)
	require.NoError(t, h.Login(context.Background(), tok.UserPIN))
	t.Cleanup(func() { h.Logout(context.Background()); h.Close() })
	return h
}

func TestVerifyToken(t *testing.T) {
	ctx := context.Background()
	const store = "cks-1"
	t.Run("first use records; the same token passes again", func(t *testing.T) {
		rec := newRecords()
		tok := loggedIn(t, hsmtest.NewToken(t))
		require.NoError(t, keystore.VerifyToken(ctx, tok, store, "cluster-a", rec, nil))
		id, ok, _ := rec.TokenIdentity(ctx, store)
		require.True(t, ok)
		info, _ := tok.Info()
		assert.Equal(t, info.Serial, id.Serial)
		assert.Equal(t, info.Label, id.Label)
		assert.Len(t, id.Marker, 16)
		v, err := tok.DataValue(ctx, keystore.IdentityObjectLabel)
		require.NoError(t, err)
		assert.Equal(t, id.Marker, v)
		require.NoError(t, keystore.VerifyToken(ctx, tok, store, "cluster-a", rec, nil))
		objs, err := tok.ListObjects(ctx, 0)
		require.NoError(t, err)
		require.Len(t, objs, 1, "one identity object, made once")
		assert.True(t, keystore.IsIdentityObject(objs[0]))
	})
	t.Run("a blank token in its place is refused", func(t *testing.T) {
		rec := newRecords()
		require.NoError(t, keystore.VerifyToken(ctx, loggedIn(t, hsmtest.NewToken(t)), store, "cluster-a", rec, nil))
		blank := loggedIn(t, hsmtest.NewToken(t))
		err := keystore.VerifyToken(ctx, blank, store, "cluster-a", rec, nil)
		require.ErrorIs(t, err, keystore.ErrWrongToken)
		require.ErrorContains(t, err, "lacks the identity object")
		_, err = blank.DataValue(ctx, keystore.IdentityObjectLabel)
		require.ErrorIs(t, err, hsm.ErrObjectNotFound, "nothing is put on a refused token")
	})
	t.Run("a token of another deployment is refused", func(t *testing.T) {
		rec, other := newRecords(), newRecords()
		require.NoError(t, keystore.VerifyToken(ctx, loggedIn(t, hsmtest.NewToken(t)), store, "cluster-a", rec, nil))
		foreign := loggedIn(t, hsmtest.NewToken(t))
		require.NoError(t, keystore.VerifyToken(ctx, foreign, store, "cluster-a", other, nil))
		require.ErrorIs(t, keystore.VerifyToken(ctx, foreign, store, "cluster-a", rec, nil), keystore.ErrWrongToken)
	})
	t.Run("a deployment from before the record is adopted", func(t *testing.T) {
		rec := newRecords()
		tok := loggedIn(t, hsmtest.NewToken(t))
		_, err := tok.GenerateAESKey(ctx, []byte("key-1"), "k", hsm.UsageEncrypt)
		require.NoError(t, err)
		rec.material[store] = [][]byte{[]byte("key-gone"), []byte("key-1")}
		require.NoError(t, keystore.VerifyToken(ctx, tok, store, "cluster-a", rec, nil))
		_, ok, _ := rec.TokenIdentity(ctx, store)
		require.True(t, ok)
	})
	t.Run("a token holding none of the key material the database names is refused", func(t *testing.T) {
		rec := newRecords()
		rec.material[store] = [][]byte{[]byte("key-1"), []byte("key-2")}
		err := keystore.VerifyToken(ctx, loggedIn(t, hsmtest.NewToken(t)), store, "cluster-a", rec, nil)
		require.ErrorIs(t, err, keystore.ErrWrongToken)
		require.ErrorContains(t, err, "names 2 key objects on it and it holds none of them")
		_, ok, _ := rec.TokenIdentity(ctx, store)
		require.False(t, ok)
	})
	t.Run("a store moved to another cluster is checked afresh", func(t *testing.T) {
		rec := newRecords()
		require.NoError(t, keystore.VerifyToken(ctx, loggedIn(t, hsmtest.NewToken(t)), store, "cluster-a", rec, nil))
		related := loggedIn(t, hsmtest.NewToken(t))
		_, err := related.GenerateAESKey(ctx, []byte("key-1"), "k", hsm.UsageEncrypt)
		require.NoError(t, err)
		rec.material[store] = [][]byte{[]byte("key-1")}
		require.NoError(t, keystore.VerifyToken(ctx, related, store, "cluster-b", rec, nil))
		id, _, _ := rec.TokenIdentity(ctx, store)
		assert.Equal(t, "cluster-b", id.ClusterID)
	})
}

// TestConnectRefusesAnotherToken: a store whose cluster now answers with
// another token (one that even accepts the store's password) goes FAILED
// with CLUSTER_NOT_FOUND, and its password is not rotated on that token.
func TestConnectRefusesAnotherToken(t *testing.T) {
	ctx := context.Background()
	tok := hsmtest.NewToken(t)
	f := newGuardedFixture(t, tok, &keystore.Safeguards{Records: newRecords()})
	require.Empty(t, f.connect(t))
	require.NoError(t, f.store.Disconnect(ctx))
	rotated, _ := f.pw.get()

	impostor := hsmtest.NewToken(t)
	h, err := hsm.OpenToken(hsm.TokenConfig{Module: impostor.Module, Label: impostor.Label, PoolSize: 1})
	require.NoError(t, err)
	require.NoError(t, h.InitPIN(ctx, impostor.SOPIN, rotated))
	h.Close()
	moved := f.cluster
	moved.Token.Label = impostor.Label
	require.NoError(t, f.store.SetCluster(moved))
	require.Equal(t, keystore.ClusterNotFound, f.connect(t))
	require.Zero(t, f.faults.Calls("C_SetPIN"), "no rotation on a token that is not the store's")
	require.NoError(t, loginDirect(t, impostor, rotated))
}

// TestReconnectDoesNotRotate: Reconnect (a store hsmkms reconnects at
// start) logs in with the current password and leaves it.
func TestReconnectDoesNotRotate(t *testing.T) {
	ctx := context.Background()
	tok := hsmtest.NewToken(t)
	f := newFixture(t, tok)
	require.Empty(t, f.connect(t))
	require.NoError(t, f.store.Disconnect(ctx))
	rotated, _ := f.pw.get()

	t.Run("no C_SetPIN", func(t *testing.T) {
		_, err := f.store.BeginConnect()
		require.NoError(t, err)
		require.Empty(t, f.store.Reconnect(ctx, f.pw, nil))
		st, _ := f.store.State()
		require.Equal(t, keystore.Connected, st)
		require.Zero(t, f.faults.Calls("C_SetPIN"))
		cur, pending := f.pw.get()
		require.Equal(t, rotated, cur)
		require.Empty(t, pending)
		htok, err := f.store.Token()
		require.NoError(t, err)
		_, err = htok.GenerateRandom(ctx, 8)
		require.NoError(t, err)
		require.NoError(t, f.store.Disconnect(ctx))
	})
	t.Run("a pending password the token never took is forgotten", func(t *testing.T) {
		f.pw.pending = "never-reached-the-token"
		_, err := f.store.BeginConnect()
		require.NoError(t, err)
		require.Empty(t, f.store.Reconnect(ctx, f.pw, nil))
		require.Equal(t, 2, f.faults.Calls("C_Login"), "pending refused, current accepted")
		cur, pending := f.pw.get()
		require.Equal(t, rotated, cur)
		require.Empty(t, pending, "the next connect spends no attempt on it")
		require.Zero(t, f.faults.Calls("C_SetPIN"))
		require.NoError(t, f.store.Disconnect(ctx))
	})
	require.NoError(t, loginDirect(t, tok, rotated))
}
