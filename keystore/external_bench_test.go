package keystore_test

import (
	"context"
	"testing"

	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
)

// BenchmarkExternalKeys: what the proxy's token work costs per request:
// the status read every use makes, and the operations.
func BenchmarkExternalKeys(b *testing.B) {
	tok := hsmtest.NewToken(b)
	x, err := keystore.OpenExternalKeys(context.Background(), keystore.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 8}, tok.UserPIN, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close(context.Background())
	ctx := context.Background()
	if _, err := x.CreateExternalKey(ctx, "k", keystore.ExternalAES256, true, true); err != nil {
		b.Fatal(err)
	}
	msg, aad := make([]byte, 1024), make([]byte, 64)
	b.Run("status", func(b *testing.B) {
		for b.Loop() {
			if _, err := x.ExternalKey(ctx, "k"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encrypt", func(b *testing.B) {
		for b.Loop() {
			if _, _, _, err := x.ExternalEncrypt(ctx, "k", msg, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	iv, ct, tag, _ := x.ExternalEncrypt(ctx, "k", msg, aad)
	b.Run("decrypt", func(b *testing.B) {
		for b.Loop() {
			if _, err := x.ExternalDecrypt(ctx, "k", iv, ct, tag, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
}
