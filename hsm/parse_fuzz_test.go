package hsm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"testing"

	"github.com/miekg/pkcs11"
)

// FuzzECDSARaw: a caller's DER signature is accepted only as the canonical
// encoding of two positive values that fit the curve, which become r||s of
// exactly the curve size.
func FuzzECDSARaw(f *testing.F) {
	valid, _ := asn1.Marshal(ecdsaSignature{big.NewInt(1), new(big.Int).Lsh(big.NewInt(1), 255)})
	f.Add(valid, uint8(32))
	f.Add([]byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}, uint8(66))
	f.Add([]byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x81}, uint8(32))
	f.Add([]byte{0x30, 0x80, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0, 0}, uint8(32))
	f.Fuzz(func(t *testing.T, der []byte, size uint8) {
		n := int(size)%80 + 1
		raw, ok := ecdsaRaw(der, n)
		if !ok {
			return
		}
		if len(raw) != 2*n {
			t.Fatalf("r||s is %d bytes for size %d", len(raw), n)
		}
		again, err := ecdsaDER(raw)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, der) {
			t.Fatalf("accepted a non-canonical encoding %x (canonical %x)", der, again)
		}
	})
}

// oaepEncode is EME-OAEP encoding with an empty label (RFC 8017 §7.1.1
// step 2), for the fuzz target only.
func oaepEncode(h crypto.Hash, k int, msg, seed []byte) []byte {
	hLen := h.Size()
	em := make([]byte, k)
	s, db := em[1:1+hLen], em[1+hLen:]
	copy(s, seed)
	w := h.New()
	copy(db, w.Sum(nil))
	db[len(db)-len(msg)-1] = 1
	copy(db[len(db)-len(msg):], msg)
	mgf1XOR(db, h.New(), s)
	mgf1XOR(s, h.New(), db)
	return em
}

// FuzzDecodeOAEP: whatever the token's raw RSA returns, decoding never
// panics and never returns more than a message can hold; what the encoder
// made decodes to the message.
func FuzzDecodeOAEP(f *testing.F) {
	f.Add([]byte("message"), []byte("seed"), false, []byte{})
	f.Add([]byte{}, []byte{}, true, []byte{0, 1, 2})
	f.Fuzz(func(t *testing.T, msg, seed []byte, useSHA1 bool, em []byte) {
		h := crypto.SHA256
		if useSHA1 {
			h = crypto.SHA1
		}
		const k = 256
		if out, err := decodeOAEP(h.New(), bytes.Clone(em)); err == nil && len(out) > len(em)-2*h.Size()-2 {
			t.Fatalf("decoded %d bytes from %d", len(out), len(em))
		}
		if len(msg) > k-2*h.Size()-2 {
			msg = msg[:k-2*h.Size()-2]
		}
		seed = append(bytes.Clone(seed), make([]byte, h.Size())...)[:h.Size()]
		got, err := decodeOAEP(h.New(), oaepEncode(h, k, msg, seed))
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("round trip: %x, %v; want %x", got, err, msg)
		}
	})
}

// FuzzPublicKeyTemplate: a public key read back from the metadata store is
// untrusted bytes. It becomes a template only when it is exactly one
// SubjectPublicKeyInfo of a kind hsm knows, and then always one that
// describes the same key again (publicKeyDER's encoding of it is the input,
// for the keys hsm makes).
func FuzzPublicKeyTemplate(f *testing.F) {
	p256Point := append([]byte{4}, bytes.Repeat([]byte{0}, 64)...)
	if spki, err := p256.spki(p256Point); err == nil {
		f.Add(spki)
	}
	if spki, err := ed25519SPKI(make([]byte, 32)); err == nil {
		f.Add(spki)
		f.Add(append(spki, 0))
	}
	if spki, err := rsaSPKI(bytes.Repeat([]byte{0xC3}, 256), []byte{1, 0, 1}); err == nil {
		f.Add(spki)
	}
	if spki, err := secp256k1.spki(p256Point); err == nil {
		f.Add(spki)
	}
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, spki []byte) {
		tmpl, err := publicKeyTemplate(spki)
		if err != nil {
			return
		}
		if len(tmpl) < 3 || ulong(tmpl[0].Value) != pkcs11.CKO_PUBLIC_KEY {
			t.Fatalf("template without class and key type: %v", tmpl)
		}
	})
}

// ed25519PKCS8 is der's RFC 5958 form with version and public key set.
func ed25519PKCS8(t testing.TB, version int, seed, pub []byte) []byte {
	inner, _ := asn1.Marshal(seed)
	outer, _ := asn1.Marshal(inner)
	k := oneAsymmetricKey{Version: version, Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidEd25519}, PrivateKey: asn1.RawValue{FullBytes: outer}}
	if pub != nil {
		k.PublicKey = asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)}
	}
	der, err := asn1.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestEd25519Seed: the seed of RFC 8410 PKCS#8, v1 or v2, and nothing
// from anything else.
func TestEd25519Seed(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	seed := priv.Seed()
	goV1, _ := x509.MarshalPKCS8PrivateKey(priv)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	inner, _ := asn1.Marshal(seed)
	outer, _ := asn1.Marshal(inner)
	withParams, _ := asn1.Marshal(oneAsymmetricKey{Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidEd25519, Parameters: asn1.NullRawValue},
		PrivateKey: asn1.RawValue{FullBytes: outer}})
	for name, tc := range map[string]struct {
		der []byte
		ok  bool
	}{
		"Go's v1":                      {goV1, true},
		"v1 built here":                {ed25519PKCS8(t, 0, seed, nil), true},
		"v2 with its public key":       {ed25519PKCS8(t, 1, seed, pub), true},
		"v2 without a public key":      {ed25519PKCS8(t, 1, seed, nil), true},
		"v2 with another public key":   {ed25519PKCS8(t, 1, seed, otherPub), false},
		"v1 with a public key":         {ed25519PKCS8(t, 0, seed, pub), false},
		"version 2":                    {ed25519PKCS8(t, 2, seed, nil), false},
		"short seed":                   {ed25519PKCS8(t, 0, seed[:31], nil), false},
		"trailing bytes":               {append(append([]byte(nil), goV1...), 0), false},
		"P-256 key":                    {ecDER, false},
		"algorithm with parameters":    {withParams, false},
		"the seed alone":               {seed, false},
		"empty":                        {nil, false},
		"public key of the wrong size": {ed25519PKCS8(t, 1, seed, pub[:31]), false},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ed25519Seed(tc.der)
			if !tc.ok {
				if !errors.Is(err, ErrIncorrectMaterial) {
					t.Fatalf("want ErrIncorrectMaterial, got %v", err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, seed) {
				t.Fatalf("got %x, %v", got, err)
			}
		})
	}
}

// FuzzEd25519Seed: a seed comes only out of Ed25519 PKCS#8, is 32 bytes
// of the input, and is the seed Go's crypto/x509 reads where it reads one.
func FuzzEd25519Seed(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	goV1, _ := x509.MarshalPKCS8PrivateKey(priv)
	f.Add(goV1)
	f.Add(ed25519PKCS8(f, 1, priv.Seed(), pub))
	f.Add(ed25519PKCS8(f, 1, priv.Seed(), make([]byte, 32)))
	f.Fuzz(func(t *testing.T, der []byte) {
		seed, err := ed25519Seed(der)
		if err != nil {
			if !errors.Is(err, ErrIncorrectMaterial) {
				t.Fatalf("not ErrIncorrectMaterial: %v", err)
			}
			return
		}
		if len(seed) != ed25519.SeedSize || !bytes.Contains(der, seed) {
			t.Fatalf("seed %x of %x", seed, der)
		}
		if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
			if e, ok := k.(ed25519.PrivateKey); !ok || !bytes.Equal(e.Seed(), seed) {
				t.Fatalf("crypto/x509 reads %T from %x", k, der)
			}
		}
	})
}
