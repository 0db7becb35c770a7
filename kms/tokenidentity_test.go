package kms_test

import (
	"database/sql"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/stretchr/testify/require"
)

// open is e.start's kms.Open, returning its error.
func (e *env) open() error {
	svc, err := kms.Open(bg(), kms.OpenConfig{
		DefaultToken: keystore.TokenConfig{Module: e.tok.Module, Label: e.tok.Label, PoolSize: 4},
		PIN:          e.tok.UserPIN,
		Database:     e.dbPath,
		Clusters:     e.clusters,
		Now:          e.clock.Now,
	})
	if err == nil {
		require.NoError(e.t, svc.Close(bg()))
	}
	return err
}

// forgetIdentities drops the token identity records, as in a database from
// before they existed.
func (e *env) forgetIdentities() {
	db, err := sql.Open("sqlite", e.dbPath)
	require.NoError(e.t, err)
	defer db.Close()
	_, err = db.Exec(`DELETE FROM token_identities`)
	require.NoError(e.t, err)
}

// TestDefaultTokenIdentity: the service starts only on the default token
// its database was made with.
func TestDefaultTokenIdentity(t *testing.T) {
	t.Run("a blank token in its place is refused", func(t *testing.T) {
		e := newEnv(t)
		e.createKey(e.admin())
		e.close()
		original := e.tok
		e.tok = hsmtest.NewToken(t)
		err := e.open()
		require.ErrorIs(t, err, keystore.ErrWrongToken)
		require.ErrorContains(t, err, "the default key store")
		require.ErrorContains(t, err, e.tok.Label)
		require.ErrorContains(t, err, "lacks the identity object")
		require.ErrorContains(t, err, `"Recovering a damaged token"`)
		e.tok = original
		e.start()
	})
	t.Run("a missing token is refused, naming it", func(t *testing.T) {
		e := newEnv(t)
		e.close()
		original := e.tok
		e.tok.Label = "hsmkms-gone"
		err := e.open()
		require.ErrorIs(t, err, hsm.ErrTokenNotFound)
		require.ErrorContains(t, err, `label "hsmkms-gone"`)
		require.ErrorContains(t, err, `"Recovering a damaged token"`)
		e.tok = original
		e.start()
	})
	t.Run("a database without the record adopts its token once", func(t *testing.T) {
		e := newEnv(t)
		c := e.admin()
		id := e.createKey(c)
		enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("adopted")})
		require.NoError(t, err)
		e.close()
		e.forgetIdentities()
		e.start()
		dec, err := e.admin().Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		require.NoError(t, err)
		require.Equal(t, "adopted", string(dec.Plaintext))
		e.close()
		original := e.tok
		e.tok = hsmtest.NewToken(t)
		require.ErrorIs(t, e.open(), keystore.ErrWrongToken, "adopted: recorded from then on")
		e.tok = original
		e.start()
	})
	t.Run("a database without the record refuses a token holding none of its keys", func(t *testing.T) {
		e := newEnv(t)
		e.createKey(e.admin())
		e.close()
		e.forgetIdentities()
		original := e.tok
		e.tok = hsmtest.NewToken(t)
		err := e.open()
		require.ErrorIs(t, err, keystore.ErrWrongToken)
		require.ErrorContains(t, err, "names 1 key objects on it and it holds none of them")
		e.tok = original
		e.start()
	})
}

// TestRestartReconnectsWithoutRotating: stores reconnected at start log in
// with the current password; only ConnectCustomKeyStore rotates it.
func TestRestartReconnectsWithoutRotating(t *testing.T) {
	var faults *hsm.Faults
	tok := hsmtest.NewToken(t)
	cluster := "cluster-norotationabc"
	e := newEnvWith(t, func(e *env) {
		e.addCluster(cluster, tok, func(p hsm.PKCS11) hsm.PKCS11 {
			if faults == nil {
				faults = hsm.NewFaults(p)
			}
			return faults
		})
	})
	c := e.admin()
	id := e.createStore(c, "steady", cluster, tok.UserPIN)
	_, err := c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState)
	require.Equal(t, 1, faults.Calls("C_SetPIN"))
	key, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
	require.NoError(t, err)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("steady")})
	require.NoError(t, err)

	for i := range 2 {
		e.restart()
		c = e.admin()
		require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState, "restart %d", i)
		require.Equal(t, 1, faults.Calls("C_SetPIN"), "restart %d rotated the password", i)
		dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		require.NoError(t, err)
		require.Equal(t, "steady", string(dec.Plaintext))
	}
	_, err = c.DisconnectCustomKeyStore(bg(), &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	_, err = c.ConnectCustomKeyStore(bg(), &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, e.waitState(c, id).ConnectionState)
	require.Equal(t, 2, faults.Calls("C_SetPIN"), "a user's connect rotates")
}
