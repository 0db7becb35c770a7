package hsm

import (
	"bytes"
	"crypto"
	"encoding/asn1"
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
