package hsm

import (
	"context"
	"crypto"
	"crypto/subtle"
	"fmt"
	"hash"
	"math/big"

	"github.com/miekg/pkcs11"
)

// DecryptOAEP decrypts an RSAES-OAEP ciphertext (hash SHA-1 or SHA-256, MGF1
// with the same hash, empty label) with the private key key.
//
// The token does the whole job with CKM_RSA_PKCS_OAEP when it accepts the
// parameters. SoftHSM2 2.6.1 accepts only SHA-1, so when C_DecryptInit
// refuses them (CKR_MECHANISM_PARAM_INVALID, CKR_ARGUMENTS_BAD or
// CKR_MECHANISM_INVALID: a verdict on the parameters, never on the
// ciphertext) that is remembered for the token and hash, and from then on the
// token does only the private-key operation (CKM_RSA_X_509) and the OAEP
// decoding happens here, in constant time. The private key never leaves the
// token either way.
//
// Every ciphertext that does not decrypt, for whatever reason the token or
// the decoding found, is exactly ErrInvalidCiphertext: a caller that could
// tell the causes apart would have a padding oracle.
func (t *Token) DecryptOAEP(ctx context.Context, key ObjectRef, hash crypto.Hash, ciphertext []byte) ([]byte, error) {
	m, ok := hashMechs[hash]
	if !ok || (hash != crypto.SHA1 && hash != crypto.SHA256) {
		return nil, fmt.Errorf("hsm: RSAES-OAEP with SHA-1 or SHA-256 only, not %v", hash)
	}
	ref := key
	if !t.oaepRefused(hash) {
		var plain []byte
		refused := false
		err := t.withKey(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
			params := pkcs11.NewOAEPParams(m.digest, m.mgf, pkcs11.CKZ_DATA_SPECIFIED, nil)
			if err := t.p11.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, h); err != nil {
				switch code, _ := Code(err); code {
				case pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_MECHANISM_INVALID:
					refused = true
					return nil
				}
				return wrap("C_DecryptInit", err)
			}
			var err error
			plain, err = t.p11.Decrypt(s, ciphertext)
			return decryptError(err)
		})
		if !refused {
			return plain, err
		}
		t.refuseOAEP(hash)
		t.log.Debug("token refuses CKM_RSA_PKCS_OAEP parameters; decoding OAEP in the process", "token", t.describe(), "hash", hash.String())
	}

	var em []byte
	err := t.withKey(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		k, err := t.modulusSize(s, h, ref)
		if err != nil {
			return err
		}
		if len(ciphertext) != k { // RFC 8017 §7.1.2 step 1b; the length is public
			return ErrInvalidCiphertext
		}
		if err := t.p11.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil)}, h); err != nil {
			return wrap("C_DecryptInit", err)
		}
		out, err := t.p11.Decrypt(s, ciphertext)
		if err != nil {
			return decryptError(err)
		}
		if len(out) > k {
			clear(out)
			return ErrInvalidCiphertext
		}
		em = make([]byte, k)
		copy(em[k-len(out):], out)
		clear(out)
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer clear(em)
	return decodeOAEP(hash.New(), em)
}

// modulusSize is the byte length of the RSA key's modulus, read from the
// token once per key: it never changes, and the fallback path needs it on
// every decryption.
func (t *Token) modulusSize(s pkcs11.SessionHandle, h pkcs11.ObjectHandle, ref ObjectRef) (int, error) {
	if k, ok := t.moduli.Load(ref.cacheKey()); ok {
		return k.(int), nil
	}
	a, err := t.p11.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil)})
	if err != nil {
		return 0, wrap("C_GetAttributeValue", err)
	}
	k := (new(big.Int).SetBytes(a[0].Value).BitLen() + 7) / 8
	t.moduli.Store(ref.cacheKey(), k)
	return k, nil
}

// decryptError maps what C_Decrypt says about a bad ciphertext to
// ErrInvalidCiphertext, with nothing that tells one cause from another.
// SoftHSM2 says CKR_GENERAL_ERROR for an OAEP padding failure.
func decryptError(err error) error {
	code, ok := Code(err)
	if !ok {
		return err
	}
	switch code {
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_GENERAL_ERROR:
		return ErrInvalidCiphertext
	}
	return wrap("C_Decrypt", err)
}

// decodeOAEP is EME-OAEP decoding (RFC 8017 §7.1.2 step 3) with an empty
// label of the k-byte encoded message em, which it overwrites. It follows
// Go's crypto/rsa decryptOAEP: every byte is looked at and every check is
// folded into one flag, so the time taken depends only on len(em) and, at
// the very end, on whether the message was valid and how long it is.
func decodeOAEP(h hash.Hash, em []byte) ([]byte, error) {
	hLen := h.Size()
	k := len(em)
	if k < 2*hLen+2 {
		return nil, ErrInvalidCiphertext
	}
	lHash := h.Sum(nil) // of the empty label

	firstByteIsZero := subtle.ConstantTimeByteEq(em[0], 0)
	seed := em[1 : hLen+1]
	db := em[hLen+1:]
	mgf1XOR(seed, h, db)
	mgf1XOR(db, h, seed)
	lHash2Good := subtle.ConstantTimeCompare(lHash, db[:hLen])

	// The remainder of db is PS (zeros), 0x01, then the message: find the
	// first 0x01 without branching on any byte.
	var lookingForIndex, index, invalid int
	lookingForIndex = 1
	rest := db[hLen:]
	for i := range rest {
		equals0 := subtle.ConstantTimeByteEq(rest[i], 0)
		equals1 := subtle.ConstantTimeByteEq(rest[i], 1)
		index = subtle.ConstantTimeSelect(lookingForIndex&equals1, i, index)
		lookingForIndex = subtle.ConstantTimeSelect(equals1, 0, lookingForIndex)
		invalid = subtle.ConstantTimeSelect(lookingForIndex&^equals0, 1, invalid)
	}
	if firstByteIsZero&lHash2Good&^invalid&^lookingForIndex != 1 {
		return nil, ErrInvalidCiphertext
	}
	return append([]byte(nil), rest[index+1:]...), nil
}

// mgf1XOR XORs out with MGF1(seed) built on h (RFC 8017 §B.2.1).
func mgf1XOR(out []byte, h hash.Hash, seed []byte) {
	var counter [4]byte
	var digest []byte
	for done := 0; done < len(out); {
		h.Reset()
		h.Write(seed)
		h.Write(counter[:])
		digest = h.Sum(digest[:0])
		for i := 0; i < len(digest) && done < len(out); i++ {
			out[done] ^= digest[i]
			done++
		}
		for i := 3; i >= 0; i-- {
			counter[i]++
			if counter[i] != 0 {
				break
			}
		}
	}
	clear(digest)
}
