package hsm

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
)

// GenerateDataKeyPair generates a key pair of kind spec for the caller to
// take away: the token's RNG and key generation, with the private key
// returned as PKCS#8 DER (RSA with its CRT values; EC as an RFC 5915
// ECPrivateKey with the curve and public point) and the public key as DER
// SubjectPublicKeyInfo. That the private key leaves the token is the point:
// the pair is made as session objects (not CKA_TOKEN, not sensitive,
// extractable, no usages), read and destroyed before this returns.
// Ed25519 is not offered.
func (t *Token) GenerateDataKeyPair(ctx context.Context, spec KeyPairSpec) (privatePKCS8, publicSPKI []byte, err error) {
	if spec == Ed25519 {
		return nil, nil, fmt.Errorf("hsm: no Ed25519 data key pairs")
	}
	mech, pub, priv, err := pairTemplates(spec)
	if err != nil {
		return nil, nil, err
	}
	if err := t.requireMechanism(ctx, mech, pkcs11.CKF_GENERATE_KEY_PAIR, spec.String()+" key generation"); err != nil {
		return nil, nil, err
	}
	pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false))
	priv = append(priv,
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true))
	for _, a := range privateUsages {
		priv = append(priv, pkcs11.NewAttribute(a.attr, false))
	}
	for _, a := range publicUsages {
		pub = append(pub, pkcs11.NewAttribute(a.attr, false))
	}
	err = t.do(ctx, hotPath, func(s pkcs11.SessionHandle) error {
		hpub, hpriv, err := t.p11.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
		if err != nil {
			return wrap("C_GenerateKeyPair", err)
		}
		defer t.p11.DestroyObject(s, hpub)
		defer t.p11.DestroyObject(s, hpriv)
		if spec.rsaBits() != 0 {
			privatePKCS8, publicSPKI, err = t.readRSAPair(s, hpriv)
		} else {
			privatePKCS8, publicSPKI, err = t.readECPair(s, spec.curve(), hpub, hpriv)
		}
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return privatePKCS8, publicSPKI, nil
}

func (t *Token) readRSAPair(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, []byte, error) {
	types := []uint{pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT, pkcs11.CKA_PRIVATE_EXPONENT,
		pkcs11.CKA_PRIME_1, pkcs11.CKA_PRIME_2, pkcs11.CKA_EXPONENT_1, pkcs11.CKA_EXPONENT_2, pkcs11.CKA_COEFFICIENT}
	q := make([]*pkcs11.Attribute, len(types))
	for i, ty := range types {
		q[i] = pkcs11.NewAttribute(ty, nil)
	}
	a, err := t.p11.GetAttributeValue(s, h, q)
	if err != nil {
		return nil, nil, wrap("C_GetAttributeValue", err)
	}
	defer func() {
		for _, v := range a {
			clear(v.Value)
		}
	}()
	n := func(i int) *big.Int { return new(big.Int).SetBytes(a[i].Value) }
	e := n(1)
	if !e.IsInt64() || e.Int64() > 1<<31-1 {
		return nil, nil, fmt.Errorf("hsm: unusable RSA public exponent from the token")
	}
	key := &rsa.PrivateKey{
		PublicKey:   rsa.PublicKey{N: n(0), E: int(e.Int64())},
		D:           n(2),
		Primes:      []*big.Int{n(3), n(4)},
		Precomputed: rsa.PrecomputedValues{Dp: n(5), Dq: n(6), Qinv: n(7)},
	}
	if err := key.Validate(); err != nil {
		return nil, nil, fmt.Errorf("hsm: token generated an inconsistent RSA key")
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("hsm: RSA PKCS#8: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("hsm: RSA SPKI: %w", err)
	}
	return privDER, pubDER, nil
}

func (t *Token) readECPair(s pkcs11.SessionHandle, c *curve, hpub, hpriv pkcs11.ObjectHandle) ([]byte, []byte, error) {
	_, point, err := t.ecPublic(s, hpub)
	if err != nil {
		return nil, nil, err
	}
	a, err := t.p11.GetAttributeValue(s, hpriv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return nil, nil, wrap("C_GetAttributeValue", err)
	}
	defer clear(a[0].Value)
	if len(a[0].Value) > c.size {
		return nil, nil, fmt.Errorf("hsm: token returned a %d-byte %s private key", len(a[0].Value), c.name)
	}
	d := make([]byte, c.size)
	copy(d[c.size-len(a[0].Value):], a[0].Value)
	defer clear(d)
	if c.ecdh != nil { // the token's pair must be a pair
		k, err := c.ecdh.NewPrivateKey(d)
		if err != nil || string(k.PublicKey().Bytes()) != string(point) {
			return nil, nil, fmt.Errorf("hsm: token generated an inconsistent %s key pair", c.name)
		}
	}
	privDER, err := c.pkcs8(d, point)
	if err != nil {
		return nil, nil, err
	}
	pubDER, err := c.spki(point)
	if err != nil {
		return nil, nil, err
	}
	return privDER, pubDER, nil
}
