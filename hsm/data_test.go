package hsm_test

import (
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDataObjects(t *testing.T) {
	tok, tt := open(t, nil, 2)
	const label = "test:data"
	t.Run("absent", func(t *testing.T) {
		_, err := tok.DataValue(ctx(t), label)
		require.ErrorIs(t, err, hsm.ErrObjectNotFound)
	})
	t.Run("created and read back", func(t *testing.T) {
		_, err := tok.CreateData(ctx(t), label, "hsmkms-test", []byte{1, 2, 3})
		require.NoError(t, err)
		v, err := tok.DataValue(ctx(t), label)
		require.NoError(t, err)
		assert.Equal(t, []byte{1, 2, 3}, v)
	})
	t.Run("listed beside keys", func(t *testing.T) {
		newKey(t, tok, "beside-data")
		objs, err := tok.ListObjects(ctx(t), 0)
		require.NoError(t, err, "a data object has no CKA_ID; listing must not ask it for one")
		classes := map[uint]string{}
		for _, o := range objs {
			classes[o.Class] = o.Label
		}
		assert.Equal(t, label, classes[pkcs11.CKO_DATA])
		assert.Equal(t, "beside-data", classes[pkcs11.CKO_SECRET_KEY])
	})
	t.Run("private: invisible without login", func(t *testing.T) {
		// A second Token shares the module, and with it the login: log
		// out through it to look as an unauthenticated session would.
		other, err := hsm.OpenToken(hsm.TokenConfig{Module: tt.Module, Label: tt.Label, PoolSize: 1})
		require.NoError(t, err)
		defer other.Close()
		require.NoError(t, other.Logout(ctx(t)))
		_, err = other.DataValue(ctx(t), label)
		require.ErrorIs(t, err, hsm.ErrObjectNotFound)
		require.NoError(t, tok.Login(ctx(t), tt.UserPIN))
	})
	t.Run("ambiguous", func(t *testing.T) {
		_, err := tok.CreateData(ctx(t), label, "hsmkms-test", []byte{4})
		require.NoError(t, err)
		fresh, err := hsm.OpenToken(hsm.TokenConfig{Module: tt.Module, Label: tt.Label, PoolSize: 1})
		require.NoError(t, err)
		defer fresh.Close()
		_, err = fresh.DataValue(ctx(t), label)
		require.ErrorIs(t, err, hsm.ErrObjectAmbiguous)
	})
}
