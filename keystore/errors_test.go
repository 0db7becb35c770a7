package keystore_test

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var classes = []error{keystore.ErrUnavailable, keystore.ErrInvalidCiphertext, keystore.ErrUnsupported,
	keystore.ErrMaterialNotFound, keystore.ErrNotRelated, context.DeadlineExceeded}

// requireClass checks that err is of class want and of no other class.
func requireClass(t *testing.T, err error, want error) {
	t.Helper()
	require.Error(t, err)
	for _, c := range classes {
		if c == want {
			assert.ErrorIs(t, err, c)
		} else {
			assert.NotErrorIs(t, err, c)
		}
	}
}

// tokenOp is one operation of a Store and the Cryptoki call it cannot do
// without, for injecting a failure there.
type tokenOp struct {
	name, call string
	run        func(context.Context, *storeEnv, *opMaterials) error
}

var tokenOps = []tokenOp{
	{"EncryptGCM", "C_EncryptInit", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		_, _, err := e.store.EncryptGCM(ctx, m.aes, []byte("x"), nil)
		return err
	}},
	{"DecryptGCM", "C_DecryptInit", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		_, err := e.store.DecryptGCM(ctx, m.aes, make([]byte, 12), make([]byte, 17), nil)
		return err
	}},
	{"Sign", "C_SignInit", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		d := sha256.Sum256(nil)
		_, err := e.store.Sign(ctx, m.ecSign, keystore.ECDSA, crypto.SHA256, d[:])
		return err
	}},
	{"Verify", "C_VerifyInit", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		d := sha256.Sum256(nil)
		// An r||s-sized garbage signature: DER that parses, so the token is asked.
		sig := []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}
		_, err := e.store.Verify(ctx, m.ecSign, keystore.ECDSA, crypto.SHA256, d[:], sig)
		return err
	}},
	{"MAC", "C_SignInit", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		_, err := e.store.MAC(ctx, m.hmac, crypto.SHA256, []byte("x"))
		return err
	}},
	{"DeriveECDH", "C_DeriveKey", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		peer, _ := ecdh.P256().GenerateKey(rand.Reader)
		_, err := e.store.DeriveECDH(ctx, m.ecdh, peer.PublicKey().Bytes())
		return err
	}},
	{"PublicKey", "C_GetAttributeValue", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		_, err := e.store.PublicKey(ctx, m.ecSign)
		return err
	}},
	{"GenerateRandom", "C_GenerateRandom", func(ctx context.Context, e *storeEnv, _ *opMaterials) error {
		_, err := e.store.GenerateRandom(ctx, 16)
		return err
	}},
	{"Generate", "C_GenerateKey", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		return e.store.Generate(ctx, m.unmade)
	}},
	{"GenerateDataKeyPair", "C_GenerateKeyPair", func(ctx context.Context, e *storeEnv, _ *opMaterials) error {
		_, _, err := e.store.GenerateDataKeyPair(ctx, keystore.ECP256)
		return err
	}},
	{"Find", "C_FindObjectsInit", func(ctx context.Context, e *storeEnv, _ *opMaterials) error {
		id := newKeyID()
		return e.store.Find(ctx, keystore.MaterialOf(keystore.AES256, keystore.UsageEncrypt, append(id[:], make([]byte, 32)...), nil, ""))
	}},
	{"Destroy", "C_DestroyObject", func(ctx context.Context, e *storeEnv, m *opMaterials) error {
		return e.store.Destroy(ctx, m.aes)
	}},
	{"Inventory", "C_FindObjectsInit", func(ctx context.Context, e *storeEnv, _ *opMaterials) error {
		_, err := e.store.Inventory(ctx)
		return err
	}},
	{"SealPassword", "C_EncryptInit", func(ctx context.Context, e *storeEnv, _ *opMaterials) error {
		_, err := e.m.SealPassword(ctx, storeA, "password")
		return err
	}},
}

// opMaterials are the versions the operations work on; unmade is named
// but not yet made, for Generate.
type opMaterials struct{ aes, ecSign, hmac, ecdh, unmade keystore.Material }

// opEnv is a fresh store with one version of each kind an operation needs.
func opEnv(t *testing.T) (*storeEnv, *opMaterials) {
	e := newStore(t, 2)
	m := &opMaterials{
		aes:    e.material(t, keystore.AES256, keystore.UsageEncrypt),
		ecSign: e.material(t, keystore.ECP256, keystore.UsageSign),
		hmac:   e.material(t, keystore.HMAC256, keystore.UsageMAC),
		ecdh:   e.material(t, keystore.ECP256, keystore.UsageKeyAgreement),
	}
	var err error
	m.unmade, err = e.store.NewMaterial(bg(t), newKeyID(), keystore.AES256, keystore.UsageEncrypt, "label")
	require.NoError(t, err)
	return e, m
}

// TestDeviceFailuresAreUnavailable: every operation reports a device the
// token lost (CKR_DEVICE_REMOVED, which SoftHSM2 cannot produce) as
// ErrUnavailable, and the token's code stays reachable for the log.
func TestDeviceFailuresAreUnavailable(t *testing.T) {
	for _, op := range tokenOps {
		t.Run(op.name, func(t *testing.T) {
			t.Parallel() // each case has its own token
			e, m := opEnv(t)
			before := e.faults.Calls(op.call)
			e.faults.Fail(op.call, pkcs11.CKR_DEVICE_REMOVED, 1)
			err := op.run(bg(t), e, m)
			requireClass(t, err, keystore.ErrUnavailable)
			var code pkcs11.Error
			require.True(t, errors.As(err, &code))
			assert.Equal(t, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED), code)
			assert.Equal(t, before+1, e.faults.Calls(op.call), "the failure happened where injected, and was not retried")
		})
	}
}

// TestErrorClasses: one case per row of the classification.
func TestErrorClasses(t *testing.T) {
	encrypt := tokenOps[0]
	codes := []struct {
		name  string
		code  uint
		times int
		class error // nil: a fault, no class
	}{
		{"CKR_DEVICE_ERROR", pkcs11.CKR_DEVICE_ERROR, 1, keystore.ErrUnavailable},
		{"CKR_DEVICE_MEMORY", pkcs11.CKR_DEVICE_MEMORY, 1, keystore.ErrUnavailable},
		{"CKR_TOKEN_NOT_PRESENT", pkcs11.CKR_TOKEN_NOT_PRESENT, 1, keystore.ErrUnavailable},
		// hsm logs in again once; refused twice, the login is gone.
		{"CKR_USER_NOT_LOGGED_IN twice", pkcs11.CKR_USER_NOT_LOGGED_IN, 2, keystore.ErrUnavailable},
		{"CKR_MECHANISM_INVALID", pkcs11.CKR_MECHANISM_INVALID, 1, keystore.ErrUnsupported},
		{"CKR_FUNCTION_FAILED", pkcs11.CKR_FUNCTION_FAILED, 1, nil},
		{"CKR_ARGUMENTS_BAD", pkcs11.CKR_ARGUMENTS_BAD, 1, nil},
	}
	for _, c := range codes {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // each case has its own token
			e, m := opEnv(t)
			e.faults.Fail(encrypt.call, c.code, c.times)
			err := encrypt.run(bg(t), e, m)
			requireClass(t, err, c.class)
		})
	}
	t.Run("CKR_USER_NOT_LOGGED_IN once is handled below", func(t *testing.T) {
		e, m := opEnv(t)
		e.faults.Fail(encrypt.call, pkcs11.CKR_USER_NOT_LOGGED_IN, 1)
		require.NoError(t, encrypt.run(bg(t), e, m))
	})
	t.Run("invalid ciphertext", func(t *testing.T) {
		e, m := opEnv(t)
		_, err := e.store.DecryptGCM(bg(t), m.aes, make([]byte, 12), make([]byte, 32), nil)
		requireClass(t, err, keystore.ErrInvalidCiphertext)
	})
	t.Run("material gone", func(t *testing.T) {
		e, m := opEnv(t)
		err := encrypt.run(bg(t), e, &opMaterials{aes: m.unmade})
		requireClass(t, err, keystore.ErrMaterialNotFound)
	})
	t.Run("timeout", func(t *testing.T) {
		e, _ := opEnv(t)
		ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer cancel()
		m, err := e.store.NewMaterial(bg(t), newKeyID(), keystore.RSA2048, keystore.UsageSign, "label")
		require.NoError(t, err)
		requireClass(t, e.store.Generate(ctx, m), context.DeadlineExceeded)
	})
	t.Run("closed store", func(t *testing.T) {
		e, m := opEnv(t)
		require.NoError(t, e.m.Close(bg(t)))
		for _, op := range tokenOps {
			err := op.run(bg(t), e, m)
			requireClass(t, err, keystore.ErrUnavailable)
			assert.ErrorIs(t, err, keystore.ErrNotConnected, op.name)
		}
		assert.ErrorIs(t, e.store.Available(), keystore.ErrNotConnected)
	})
	t.Run("custom store not connected", func(t *testing.T) {
		tok := hsmtest.NewToken(t)
		s := keystore.NewManager(nil).AddCustom("cks-1", keystore.Cluster{ID: "cluster-234567abcdefg",
			Token: keystore.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 1}})
		_, err := s.GenerateRandom(bg(t), 8)
		requireClass(t, err, keystore.ErrUnavailable)
		assert.ErrorIs(t, err, keystore.ErrNotConnected)
	})
}

// TestErrorsCarryNoSecrets: a refused PIN is not in the error.
func TestErrorsCarryNoSecrets(t *testing.T) {
	tok := hsmtest.NewToken(t)
	_, err := keystore.OpenDefault(bg(t), hsm.TokenConfig{Module: tok.Module, Label: tok.Label}, "secret-pin-123")
	require.ErrorIs(t, err, hsm.ErrPINIncorrect)
	assert.NotContains(t, err.Error(), "secret-pin-123")
}
