package hsmtest

import (
	"crypto/aes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"hash"
)

// WrapKeyPad wraps key under kek with AES key wrap with padding (RFC
// 5649), as a client wraps material for import (what openssl's
// -id-aes256-wrap-pad does).
func WrapKeyPad(kek, key []byte) []byte {
	b, err := aes.NewCipher(kek)
	if err != nil {
		panic(err)
	}
	aiv := make([]byte, 8)
	copy(aiv, []byte{0xA6, 0x59, 0x59, 0xA6})
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(key)))
	padded := append([]byte(nil), key...)
	for len(padded)%8 != 0 {
		padded = append(padded, 0)
	}
	if len(padded) == 8 {
		out := make([]byte, 16)
		b.Encrypt(out, append(aiv, padded...))
		return out
	}
	n := len(padded) / 8
	r := make([][]byte, n)
	for i := range r {
		r[i] = padded[8*i : 8*i+8]
	}
	a := aiv
	buf := make([]byte, 16)
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(buf, a)
			copy(buf[8:], r[i])
			b.Encrypt(buf, buf)
			t := uint64(n*j + i + 1)
			a = append([]byte(nil), buf[:8]...)
			binary.BigEndian.PutUint64(a, binary.BigEndian.Uint64(a)^t)
			r[i] = append([]byte(nil), buf[8:]...)
		}
	}
	out := append([]byte(nil), a...)
	for _, x := range r {
		out = append(out, x...)
	}
	return out
}

// Random is n random bytes.
func Random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// WrapForImport wraps material for import under the import public key
// spki (DER SubjectPublicKeyInfo) as AWS's wrapping algorithms do:
// RSAES-OAEP with h, or (aesKeyWrap) a random AES-256 key under RSAES-OAEP
// followed by the material under it with RFC 5649.
func WrapForImport(spki []byte, h func() hash.Hash, aesKeyWrap bool, material []byte) []byte {
	pk, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		panic(err)
	}
	if !aesKeyWrap {
		out, err := rsa.EncryptOAEP(h(), rand.Reader, pk.(*rsa.PublicKey), material, nil)
		if err != nil {
			panic(err)
		}
		return out
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	head, err := rsa.EncryptOAEP(h(), rand.Reader, pk.(*rsa.PublicKey), kek, nil)
	if err != nil {
		panic(err)
	}
	return append(head, WrapKeyPad(kek, material)...)
}
