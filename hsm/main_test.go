package hsm_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// open opens a fresh token and logs in; wrap (may be nil) wraps its calls.
func open(t testing.TB, wrap func(hsm.PKCS11) hsm.PKCS11, pool int) (*hsm.Token, hsmtest.Token) {
	t.Helper()
	tt := hsmtest.NewToken(t)
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: tt.Module, Label: tt.Label, PoolSize: pool, Wrap: wrap})
	require.NoError(t, err)
	t.Cleanup(func() { tok.Close() })
	require.NoError(t, tok.Login(ctx(t), tt.UserPIN))
	return tok, tt
}

func TestTokensCreatedAfterInitializeAreFound(t *testing.T) {
	t.Parallel()
	a, _ := open(t, nil, 2)
	b, _ := open(t, nil, 2)
	ia, err := a.Info()
	require.NoError(t, err)
	ib, err := b.Info()
	require.NoError(t, err)
	require.NotEqual(t, ia.Serial, ib.Serial)
}

func hsmMod(tb testing.TB) string { return hsmtest.Module(tb) }
