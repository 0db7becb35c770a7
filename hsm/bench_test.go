package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
)

// benchToken opens a token with a 4-session pool and an AES key.
func benchToken(b *testing.B) (*hsm.Token, hsm.ObjectRef, *hsm.Faults) {
	var raw *hsm.Faults
	tok, _ := open(b, func(p hsm.PKCS11) hsm.PKCS11 { raw = hsm.NewFaults(p); return raw }, 4)
	ref, err := tok.GenerateAESKey(context.Background(), []byte("bench"), "bench", hsm.UsageEncrypt|hsm.UsageDecrypt)
	if err != nil {
		b.Fatal(err)
	}
	return tok, ref, raw
}

// parallel runs op b.N times spread over g goroutines.
func parallel(b *testing.B, g int, op func() error) {
	var wg sync.WaitGroup
	per := b.N / g
	b.ResetTimer()
	for i := range g {
		n := per
		if i == 0 {
			n += b.N % g
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkEncryptGCM4KiB(b *testing.B) {
	tok, ref, _ := benchToken(b)
	plain := bytes.Repeat([]byte{0x5a}, 4096)
	for _, g := range []int{1, 4} {
		b.Run(map[int]string{1: "goroutines=1", 4: "goroutines=4"}[g], func(b *testing.B) {
			b.SetBytes(4096)
			parallel(b, g, func() error {
				_, _, err := tok.EncryptGCM(context.Background(), ref, plain, nil)
				return err
			})
		})
	}
}

// BenchmarkRawEncryptGCM4KiB is the baseline: bare miekg/pkcs11 calls on one
// session per goroutine, no pool and no cache, same token and key.
func BenchmarkRawEncryptGCM4KiB(b *testing.B) {
	tok, _, _ := benchToken(b)
	info, err := tok.Info()
	if err != nil {
		b.Fatal(err)
	}
	ctx := pkcs11.New(hsmMod(b))
	if err := ctx.Initialize(); err != nil {
		if code, _ := hsm.Code(err); code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			b.Fatal(err)
		}
	}
	slots, _ := ctx.GetSlotList(true)
	var slot uint
	for _, s := range slots {
		if ti, _ := ctx.GetTokenInfo(s); ti.SerialNumber == info.Serial {
			slot = s
		}
	}
	plain := bytes.Repeat([]byte{0x5a}, 4096)
	for _, g := range []int{1, 4} {
		b.Run(map[int]string{1: "goroutines=1", 4: "goroutines=4"}[g], func(b *testing.B) {
			sessions := make(chan pkcs11.SessionHandle, g)
			var key pkcs11.ObjectHandle
			for range g {
				s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
				if err != nil {
					b.Fatal(err)
				}
				ctx.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, []byte("bench"))})
				hs, _, _ := ctx.FindObjects(s, 1)
				ctx.FindObjectsFinal(s)
				if len(hs) != 1 {
					b.Fatal("bench key not visible")
				}
				key = hs[0]
				sessions <- s
			}
			b.SetBytes(4096)
			parallel(b, g, func() error {
				s := <-sessions
				defer func() { sessions <- s }()
				iv := make([]byte, 12)
				rand.Read(iv)
				params := pkcs11.NewGCMParams(iv, nil, 128)
				defer params.Free()
				if err := ctx.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
					return err
				}
				_, err := ctx.Encrypt(s, plain)
				return err
			})
			b.StopTimer()
			for range g {
				ctx.CloseSession(<-sessions)
			}
		})
	}
}

func BenchmarkGenerateRandom32(b *testing.B) {
	tok, _, _ := benchToken(b)
	for range b.N {
		if _, err := tok.GenerateRandom(context.Background(), 32); err != nil {
			b.Fatal(err)
		}
	}
}

// benchPair opens a token with a 4-session pool and a key pair of spec.
func benchPair(b *testing.B, spec hsm.KeyPairSpec, usage hsm.Usage) (*hsm.Token, []byte) {
	tok, _ := open(b, nil, 4)
	id := []byte("bench-" + spec.String())
	if err := tok.GenerateKeyPair(context.Background(), id, "bench", spec, usage); err != nil {
		b.Fatal(err)
	}
	return tok, id
}

func BenchmarkSignECDSAP256(b *testing.B) {
	tok, id := benchPair(b, hsm.ECP256, hsm.UsageSign|hsm.UsageVerify)
	d := sha256.Sum256([]byte("message"))
	b.ResetTimer()
	for range b.N {
		if _, err := tok.Sign(context.Background(), hsm.PrivateKeyByID(id), hsm.ECDSA, crypto.SHA256, d[:]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyECDSAP256(b *testing.B) {
	tok, id := benchPair(b, hsm.ECP256, hsm.UsageSign|hsm.UsageVerify)
	d := sha256.Sum256([]byte("message"))
	sig, err := tok.Sign(context.Background(), hsm.PrivateKeyByID(id), hsm.ECDSA, crypto.SHA256, d[:])
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if ok, err := tok.Verify(context.Background(), hsm.PublicKeyByID(id), hsm.ECDSA, crypto.SHA256, d[:], sig); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

func BenchmarkMACSHA256(b *testing.B) {
	tok, _ := open(b, nil, 4)
	id := []byte("bench-hmac")
	if err := tok.GenerateHMACKey(context.Background(), id, "bench", 256); err != nil {
		b.Fatal(err)
	}
	msg := bytes.Repeat([]byte{0x5a}, 256)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		if _, err := tok.MAC(context.Background(), hsm.SecretKeyByID(id), crypto.SHA256, msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGenerateDataKeyPairECP256(b *testing.B) {
	tok, _ := open(b, nil, 4)
	b.ResetTimer()
	for range b.N {
		if _, _, err := tok.GenerateDataKeyPair(context.Background(), hsm.ECP256); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecryptOAEPSHA256RSA2048(b *testing.B) {
	tok, id := benchPair(b, hsm.RSA2048, hsm.UsageEncrypt|hsm.UsageDecrypt)
	der, err := tok.PublicKeyDER(context.Background(), hsm.PublicKeyByID(id))
	if err != nil {
		b.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		b.Fatal(err)
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), make([]byte, 32), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := tok.DecryptOAEP(context.Background(), hsm.PrivateKeyByID(id), crypto.SHA256, ct); err != nil {
			b.Fatal(err)
		}
	}
}
