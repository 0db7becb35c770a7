package keystore_test

import (
	"context"
	"os"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

func TestDefaultStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt := hsmtest.NewToken(t)
	cfg := hsm.TokenConfig{Module: tt.Module, Label: tt.Label}

	_, err := keystore.OpenDefault(ctx, cfg, "wrong-pin")
	require.ErrorIs(t, err, hsm.ErrPINIncorrect)

	def, err := keystore.OpenDefault(ctx, cfg, tt.UserPIN)
	require.NoError(t, err)
	m := keystore.NewManager(def)
	got, err := m.Get(keystore.DefaultID)
	require.NoError(t, err)
	require.Same(t, def, got)
	tok, err := got.Token()
	require.NoError(t, err)
	_, err = tok.GenerateAESKey(ctx, []byte("k"), "k", hsm.UsageEncrypt)
	require.NoError(t, err, "the default store's token is logged in")

	_, err = m.Get("cks-1234567890abcdef0")
	require.ErrorIs(t, err, keystore.ErrNotFound)

	require.NoError(t, m.Close(ctx))
	_, err = def.Token()
	require.ErrorIs(t, err, keystore.ErrNotConnected)
}
