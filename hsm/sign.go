package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// SignAlgorithm is a signature scheme of Sign and Verify.
type SignAlgorithm int

const (
	// RSAPKCS1v15 signs a digest: the token gets CKM_RSA_PKCS over the
	// DigestInfo of hash and the digest.
	RSAPKCS1v15 SignAlgorithm = iota + 1
	// RSAPSS signs a digest with CKM_RSA_PKCS_PSS, MGF1 with the same
	// hash and a salt as long as the hash.
	RSAPSS
	// ECDSA signs a digest with CKM_ECDSA. Signatures are ASN.1 DER
	// SEQUENCE{r, s}; the token's raw r||s never reaches the caller.
	ECDSA
	// EdDSA signs the message itself: pure Ed25519 (CKM_EDDSA).
	EdDSA
	// EdDSAPh signs the SHA-512 digest of the message: Ed25519ph
	// (CKM_EDDSA with phFlag set).
	EdDSAPh
)

func (a SignAlgorithm) String() string {
	switch a {
	case RSAPKCS1v15:
		return "RSAPKCS1v15"
	case RSAPSS:
		return "RSAPSS"
	case ECDSA:
		return "ECDSA"
	case EdDSA:
		return "EdDSA"
	case EdDSAPh:
		return "EdDSAPh"
	}
	return fmt.Sprintf("SignAlgorithm(%d)", int(a))
}

// DigestInfo prefixes (RFC 8017 §9.2, note 1).
var digestInfoPrefix = map[crypto.Hash][]byte{
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

// hashMechs maps a hash to its Cryptoki digest mechanism, MGF1 generator
// and HMAC mechanism.
var hashMechs = map[crypto.Hash]struct{ digest, mgf, hmac uint }{
	crypto.SHA1:   {pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKM_SHA_1_HMAC},
	crypto.SHA224: {pkcs11.CKM_SHA224, pkcs11.CKG_MGF1_SHA224, pkcs11.CKM_SHA224_HMAC},
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, pkcs11.CKM_SHA256_HMAC},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384, pkcs11.CKM_SHA384_HMAC},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512, pkcs11.CKM_SHA512_HMAC},
}

// ckEdDSAParams mirrors CK_EDDSA_PARAMS. With no context data the pointer
// is NULL, so the bytes can be handed to the token as they are.
type ckEdDSAParams struct {
	phFlag         byte
	contextDataLen uint
	contextData    uintptr
}

func eddsaPhParams() []byte {
	p := ckEdDSAParams{phFlag: 1}
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&p)), unsafe.Sizeof(p))...)
}

// signInput checks alg, hash and data, and returns the mechanism and the
// bytes the token signs. Nothing here reaches the token.
func signInput(alg SignAlgorithm, hash crypto.Hash, data []byte) (*pkcs11.Mechanism, []byte, error) {
	switch alg {
	case RSAPKCS1v15, RSAPSS, ECDSA:
		if _, ok := digestInfoPrefix[hash]; !ok {
			return nil, nil, fmt.Errorf("hsm: %v signs SHA-256, SHA-384 or SHA-512 digests, not %v", alg, hash)
		}
		if len(data) != hash.Size() {
			return nil, nil, fmt.Errorf("hsm: %v digest is %d bytes, not %d", hash, len(data), hash.Size())
		}
	case EdDSA, EdDSAPh:
		if hash != crypto.SHA512 {
			return nil, nil, fmt.Errorf("hsm: %v uses SHA-512, not %v", alg, hash)
		}
		if alg == EdDSAPh && len(data) != hash.Size() {
			return nil, nil, fmt.Errorf("hsm: %v digest is %d bytes, not %d", hash, len(data), hash.Size())
		}
	default:
		return nil, nil, fmt.Errorf("hsm: unknown signature algorithm %v", alg)
	}
	switch alg {
	case RSAPKCS1v15:
		return pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil), append(append([]byte(nil), digestInfoPrefix[hash]...), data...), nil
	case RSAPSS:
		m := hashMechs[hash]
		return pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(m.digest, m.mgf, uint(hash.Size()))), data, nil
	case ECDSA:
		return pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil), data, nil
	case EdDSA:
		return pkcs11.NewMechanism(ckmEdDSA, nil), data, nil
	default:
		return pkcs11.NewMechanism(ckmEdDSA, eddsaPhParams()), data, nil
	}
}

// Sign signs data on the token with the private key key. For the
// digest algorithms data is the hash.Size()-byte digest; for EdDSA it is
// the message and hash must be crypto.SHA512.
func (t *Token) Sign(ctx context.Context, key ObjectRef, alg SignAlgorithm, hash crypto.Hash, data []byte) ([]byte, error) {
	mech, in, err := signInput(alg, hash, data)
	if err != nil {
		return nil, err
	}
	if alg == EdDSAPh {
		if err := t.requireEd25519ph(ctx); err != nil {
			return nil, err
		}
	}
	var sig []byte
	err = t.withKey(ctx, key, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if err := t.p11.SignInit(s, []*pkcs11.Mechanism{mech}, h); err != nil {
			return wrap("C_SignInit", err)
		}
		var err error
		sig, err = t.p11.Sign(s, in)
		return wrap("C_Sign", err)
	})
	if err != nil {
		return nil, err
	}
	if alg == ECDSA {
		return ecdsaDER(sig)
	}
	return sig, nil
}

type ecdsaSignature struct{ R, S *big.Int }

// ecdsaDER turns the token's r||s into DER SEQUENCE{r, s}.
func ecdsaDER(raw []byte) ([]byte, error) {
	if len(raw) == 0 || len(raw)%2 != 0 {
		return nil, fmt.Errorf("hsm: token returned a %d-byte ECDSA signature", len(raw))
	}
	n := len(raw) / 2
	return asn1.Marshal(ecdsaSignature{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
}

// ecdsaRaw turns DER SEQUENCE{r, s} into r||s of size bytes each. ok is
// false for anything that cannot be a signature on the curve: other than
// the one DER encoding (encoding/asn1 alone lets bytes trail inside the
// SEQUENCE), non-positive or oversized values.
func ecdsaRaw(der []byte, size int) (raw []byte, ok bool) {
	var sig ecdsaSignature
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 || sig.R == nil || sig.S == nil {
		return nil, false
	}
	if canonical, err := asn1.Marshal(sig); err != nil || !bytes.Equal(canonical, der) {
		return nil, false
	}
	if sig.R.Sign() <= 0 || sig.S.Sign() <= 0 || sig.R.BitLen() > 8*size || sig.S.BitLen() > 8*size {
		return nil, false
	}
	raw = make([]byte, 2*size)
	sig.R.FillBytes(raw[:size])
	sig.S.FillBytes(raw[size:])
	return raw, true
}

// errBadSignature ends a Verify that the token need not see.
var errBadSignature = errors.New("hsm: signature does not verify")

// Verify checks sig over data with the public key key, on the token.
// data is as for Sign. A signature that does not verify, whatever the
// reason (the token's CKR_SIGNATURE_INVALID or CKR_SIGNATURE_LEN_RANGE,
// malformed DER, r or s out of range), is (false, nil); errors are for
// requests that could not be checked.
func (t *Token) Verify(ctx context.Context, key ObjectRef, alg SignAlgorithm, hash crypto.Hash, data, sig []byte) (bool, error) {
	mech, in, err := signInput(alg, hash, data)
	if err != nil {
		return false, err
	}
	if alg == EdDSAPh {
		if err := t.requireEd25519ph(ctx); err != nil {
			return false, err
		}
	}
	ref := key
	err = t.withKey(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		tokenSig := sig
		if alg == ECDSA {
			c, err := t.cachedCurve(s, h, ref)
			if err != nil {
				return err
			}
			var ok bool
			if tokenSig, ok = ecdsaRaw(sig, c.size); !ok {
				return errBadSignature
			}
		}
		if err := t.p11.VerifyInit(s, []*pkcs11.Mechanism{mech}, h); err != nil {
			return wrap("C_VerifyInit", err)
		}
		return wrap("C_Verify", t.p11.Verify(s, in, tokenSig))
	})
	if errors.Is(err, errBadSignature) {
		return false, nil
	}
	if code, ok := Code(err); ok && (code == pkcs11.CKR_SIGNATURE_INVALID || code == pkcs11.CKR_SIGNATURE_LEN_RANGE) {
		return false, nil
	}
	return err == nil, err
}

// MAC computes the HMAC of msg on the token with the secret key key and
// hash SHA-224, SHA-256, SHA-384 or SHA-512.
func (t *Token) MAC(ctx context.Context, key ObjectRef, hash crypto.Hash, msg []byte) ([]byte, error) {
	m, ok := hashMechs[hash]
	if !ok || hash == crypto.SHA1 {
		return nil, fmt.Errorf("hsm: HMAC with SHA-224, SHA-256, SHA-384 or SHA-512, not %v", hash)
	}
	var mac []byte
	err := t.withKey(ctx, key, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if err := t.p11.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.hmac, nil)}, h); err != nil {
			return wrap("C_SignInit", err)
		}
		var err error
		mac, err = t.p11.Sign(s, msg)
		return wrap("C_Sign", err)
	})
	return mac, err
}

// VerifyMAC recomputes the HMAC of msg on the token and compares it with
// mac in constant time.
func (t *Token) VerifyMAC(ctx context.Context, key ObjectRef, hash crypto.Hash, msg, mac []byte) (bool, error) {
	want, err := t.MAC(ctx, key, hash, msg)
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(want, mac) == 1, nil
}

// requireEd25519ph fails with ErrMechanismNotSupported unless the token
// really does Ed25519ph. Mechanism flags cannot tell: SoftHSM2 2.6.1
// offers CKM_EDDSA, accepts CK_EDDSA_PARAMS with phFlag set, ignores it and
// signs the digest as a pure Ed25519 message, which verifies nowhere as
// Ed25519ph (and would make Verify answer for the wrong scheme). So the
// first use asks the token for an Ed25519ph signature with a throwaway
// session key pair and checks it here; the verdict is kept with the other
// mechanism facts of the token state.
func (t *Token) requireEd25519ph(ctx context.Context) error {
	st, err := t.state()
	if err != nil {
		return err
	}
	c := st.mechs
	c.edPhMu.Lock()
	defer c.edPhMu.Unlock()
	if c.edPh == 0 {
		ok, err := t.probeEd25519ph(ctx)
		if err != nil {
			return err
		}
		c.edPh = edPhIgnored
		if ok {
			c.edPh = edPhHonoured
		}
	}
	if c.edPh != edPhHonoured {
		return fmt.Errorf("%w: the token does not do Ed25519ph (CKM_EDDSA ignores phFlag)", ErrMechanismNotSupported)
	}
	return nil
}

func (t *Token) probeEd25519ph(ctx context.Context) (bool, error) {
	if ok, err := t.SupportsMechanism(ctx, ckmEdDSA, pkcs11.CKF_SIGN); err != nil || !ok {
		return false, err
	}
	if ok, err := t.SupportsMechanism(ctx, ckmECEdwardsKeyPairGen, pkcs11.CKF_GENERATE_KEY_PAIR); err != nil || !ok {
		return false, err
	}
	_, pub, priv, err := pairTemplates(Ed25519)
	if err != nil {
		return false, err
	}
	pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true))
	priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false))
	digest := sha512.Sum512([]byte("hsm: Ed25519ph probe"))
	var honoured bool
	err = t.do(ctx, hotPath, func(s pkcs11.SessionHandle) error {
		hpub, hpriv, err := t.p11.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmECEdwardsKeyPairGen, nil)}, pub, priv)
		if err != nil {
			return wrap("C_GenerateKeyPair", err)
		}
		defer t.p11.DestroyObject(s, hpub)
		defer t.p11.DestroyObject(s, hpriv)
		if err := t.p11.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, eddsaPhParams())}, hpriv); err != nil {
			if code, _ := Code(err); code == pkcs11.CKR_MECHANISM_PARAM_INVALID || code == pkcs11.CKR_MECHANISM_INVALID {
				return nil // refused outright: not honoured
			}
			return wrap("C_SignInit", err)
		}
		sig, err := t.p11.Sign(s, digest[:])
		if err != nil {
			return wrap("C_Sign", err)
		}
		a, err := t.p11.GetAttributeValue(s, hpub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			return wrap("C_GetAttributeValue", err)
		}
		key, err := edPoint(a[0].Value)
		if err != nil {
			return err
		}
		honoured = ed25519.VerifyWithOptions(key, digest[:], sig, &ed25519.Options{Hash: crypto.SHA512}) == nil
		return nil
	})
	if err == nil && !honoured {
		t.log.Info("token ignores the Ed25519ph flag of CKM_EDDSA; Ed25519ph disabled", "token", t.describe())
	}
	return honoured, err
}
