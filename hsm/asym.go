package hsm

import (
	"context"
	"crypto/ecdh"
	"encoding/asn1"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Cryptoki 3.0 values miekg/pkcs11 v1.1.2 does not name.
const (
	ckkECEdwards           = 0x00000040
	ckmECEdwardsKeyPairGen = 0x00001055
	ckmEdDSA               = 0x00001057
)

// KeyPairSpec names the key pairs hsm can generate.
type KeyPairSpec int

const (
	RSA2048 KeyPairSpec = iota + 1
	RSA3072
	RSA4096
	ECP256
	ECP384
	ECP521
	ECSecp256k1
	Ed25519
)

func (s KeyPairSpec) String() string {
	switch s {
	case RSA2048:
		return "RSA2048"
	case RSA3072:
		return "RSA3072"
	case RSA4096:
		return "RSA4096"
	case ECP256:
		return "ECP256"
	case ECP384:
		return "ECP384"
	case ECP521:
		return "ECP521"
	case ECSecp256k1:
		return "ECSecp256k1"
	case Ed25519:
		return "Ed25519"
	}
	return fmt.Sprintf("KeyPairSpec(%d)", int(s))
}

// rsaBits is the modulus size of an RSA spec, 0 for the others.
func (s KeyPairSpec) rsaBits() int {
	switch s {
	case RSA2048:
		return 2048
	case RSA3072:
		return 3072
	case RSA4096:
		return 4096
	}
	return 0
}

func (s KeyPairSpec) curve() *curve {
	switch s {
	case ECP256:
		return &p256
	case ECP384:
		return &p384
	case ECP521:
		return &p521
	case ECSecp256k1:
		return &secp256k1
	}
	return nil
}

// curve is a short Weierstrass curve hsm knows by its namedCurve OID.
type curve struct {
	name string
	oid  asn1.ObjectIdentifier
	size int        // bytes of a field element, and of the group order
	ecdh ecdh.Curve // nil where Go has none (secp256k1)
}

var (
	p256      = curve{"P-256", asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}, 32, ecdh.P256()}
	p384      = curve{"P-384", asn1.ObjectIdentifier{1, 3, 132, 0, 34}, 48, ecdh.P384()}
	p521      = curve{"P-521", asn1.ObjectIdentifier{1, 3, 132, 0, 35}, 66, ecdh.P521()}
	secp256k1 = curve{"secp256k1", asn1.ObjectIdentifier{1, 3, 132, 0, 10}, 32, nil}
	curves    = []*curve{&p256, &p384, &p521, &secp256k1}

	oidECPublicKey = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidEd25519     = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// params is the DER of the curve's OID, as CKA_EC_PARAMS wants it.
func (c *curve) params() []byte {
	b, err := asn1.Marshal(c.oid)
	if err != nil {
		panic(err) // constant input
	}
	return b
}

// curveByParams finds the curve of a CKA_EC_PARAMS value.
func curveByParams(params []byte) (*curve, error) {
	var oid asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(params, &oid); err == nil && len(rest) == 0 {
		for _, c := range curves {
			if c.oid.Equal(oid) {
				return c, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: unknown EC parameters on the token", ErrMechanismNotSupported)
}

// ecPoint returns the uncompressed point of a CKA_EC_POINT value. Cryptoki
// says the value is a DER OCTET STRING; some tokens give the bare point.
// The two cannot be confused: a bare point is exactly 1+2·size bytes.
func (c *curve) ecPoint(v []byte) ([]byte, error) {
	n := 1 + 2*c.size
	if len(v) != n {
		var inner []byte
		if rest, err := asn1.Unmarshal(v, &inner); err != nil || len(rest) != 0 {
			return nil, fmt.Errorf("hsm: malformed CKA_EC_POINT on the token")
		}
		v = inner
	}
	if len(v) != n || v[0] != 4 {
		return nil, fmt.Errorf("hsm: CKA_EC_POINT is not an uncompressed %s point", c.name)
	}
	if c.ecdh != nil {
		if _, err := c.ecdh.NewPublicKey(v); err != nil {
			return nil, fmt.Errorf("hsm: CKA_EC_POINT is not on %s", c.name)
		}
	}
	return v, nil
}

// edPoint returns the 32-byte Ed25519 public key of a CKA_EC_POINT value,
// DER OCTET STRING-wrapped or bare.
func edPoint(v []byte) ([]byte, error) {
	if len(v) != 32 {
		var inner []byte
		if rest, err := asn1.Unmarshal(v, &inner); err != nil || len(rest) != 0 {
			return nil, fmt.Errorf("hsm: malformed CKA_EC_POINT on the token")
		}
		v = inner
	}
	if len(v) != 32 {
		return nil, fmt.Errorf("hsm: CKA_EC_POINT is not a 32-byte Ed25519 key")
	}
	return v, nil
}

// The usage attributes each half of a key pair carries. Every one is set,
// false unless asked for: a token default never grants a usage.
var (
	privateUsages = []struct {
		u    Usage
		attr uint
	}{
		{UsageDecrypt, pkcs11.CKA_DECRYPT}, {UsageSign, pkcs11.CKA_SIGN},
		{UsageUnwrap, pkcs11.CKA_UNWRAP}, {UsageDerive, pkcs11.CKA_DERIVE},
		{0, pkcs11.CKA_SIGN_RECOVER},
	}
	publicUsages = []struct {
		u    Usage
		attr uint
	}{
		{UsageEncrypt, pkcs11.CKA_ENCRYPT}, {UsageVerify, pkcs11.CKA_VERIFY},
		{UsageWrap, pkcs11.CKA_WRAP}, {0, pkcs11.CKA_DERIVE},
		{0, pkcs11.CKA_VERIFY_RECOVER},
	}
)

// pairTemplates returns the templates and mechanism that generate spec.
// The key type specific parts are shared by GenerateKeyPair and
// GenerateDataKeyPair; the caller adds storage and usage attributes.
func pairTemplates(spec KeyPairSpec) (mech uint, pub, priv []*pkcs11.Attribute, err error) {
	pub = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)}
	priv = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}
	switch {
	case spec.rsaBits() != 0:
		mech = pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
		pub = append(pub,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, spec.rsaBits()),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}))
		priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA))
	case spec.curve() != nil:
		mech = pkcs11.CKM_EC_KEY_PAIR_GEN
		pub = append(pub,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, spec.curve().params()))
		priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC))
	case spec == Ed25519:
		mech = ckmECEdwardsKeyPairGen
		oid, _ := asn1.Marshal(oidEd25519)
		pub = append(pub,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oid))
		priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards))
	default:
		return 0, nil, nil, fmt.Errorf("hsm: unknown key pair spec %v", spec)
	}
	return mech, pub, priv, nil
}

// GenerateKeyPair makes a key pair of kind spec on the token, both halves
// with CKA_ID id and CKA_LABEL label. The private key is a private,
// sensitive, never extractable token object; the public key a private
// token object (it is no secret, but hiding it keeps the set of key ids
// invisible without a login). Decrypt, Sign, Unwrap and Derive go on the
// private key, Encrypt, Verify and Wrap on the public key; every other
// usage attribute is false. A token without the generation mechanism fails
// with ErrMechanismNotSupported before anything is generated.
func (t *Token) GenerateKeyPair(ctx context.Context, id []byte, label string, spec KeyPairSpec, usage Usage) error {
	if len(id) == 0 {
		return fmt.Errorf("hsm: a key needs a CKA_ID")
	}
	mech, pub, priv, err := pairTemplates(spec)
	if err != nil {
		return err
	}
	if err := t.requireMechanism(ctx, mech, pkcs11.CKF_GENERATE_KEY_PAIR, spec.String()+" key generation"); err != nil {
		return err
	}
	common := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	pub = append(pub, common...)
	priv = append(priv, common...)
	priv = append(priv,
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false))
	for _, a := range privateUsages {
		priv = append(priv, pkcs11.NewAttribute(a.attr, a.u != 0 && usage&a.u != 0))
	}
	for _, a := range publicUsages {
		pub = append(pub, pkcs11.NewAttribute(a.attr, a.u != 0 && usage&a.u != 0))
	}
	var hpub, hpriv pkcs11.ObjectHandle
	err = t.do(ctx, makeTokenObject, func(s pkcs11.SessionHandle) error {
		var err error
		hpub, hpriv, err = t.p11.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
		return wrap("C_GenerateKeyPair", err)
	})
	if err != nil {
		return err
	}
	t.handles.Store(PublicKeyByID(id).cacheKey(), hpub)
	t.handles.Store(PrivateKeyByID(id).cacheKey(), hpriv)
	return nil
}

// hmacByBits is the HMAC mechanism an HMAC key of each size is used with.
var hmacByBits = map[int]uint{224: pkcs11.CKM_SHA224_HMAC, 256: pkcs11.CKM_SHA256_HMAC, 384: pkcs11.CKM_SHA384_HMAC, 512: pkcs11.CKM_SHA512_HMAC}

// GenerateHMACKey makes a CKK_GENERIC_SECRET key of bits bits (224, 256,
// 384 or 512) on the token with CKA_ID id and CKA_LABEL label, with the
// template of GenerateAESKey, usable to sign and verify (MAC) only.
func (t *Token) GenerateHMACKey(ctx context.Context, id []byte, label string, bits int) error {
	if len(id) == 0 {
		return fmt.Errorf("hsm: a key needs a CKA_ID")
	}
	switch bits {
	case 224, 256, 384, 512:
	default:
		return fmt.Errorf("hsm: HMAC keys are 224, 256, 384 or 512 bits, not %d", bits)
	}
	// A key the token could make but not use would be a key in name only.
	if err := t.requireMechanism(ctx, pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKF_GENERATE, "HMAC key generation"); err != nil {
		return err
	}
	if err := t.requireMechanism(ctx, hmacByBits[bits], pkcs11.CKF_SIGN, fmt.Sprintf("HMAC with a %d-bit key", bits)); err != nil {
		return err
	}
	tmpl := append(secretTemplate(id, label),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, bits/8),
	)
	tmpl = append(tmpl, (UsageSign | UsageVerify).attributes()...)
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}
	var h pkcs11.ObjectHandle
	err := t.do(ctx, makeTokenObject, func(s pkcs11.SessionHandle) error {
		var err error
		h, err = t.p11.GenerateKey(s, mech, tmpl)
		return wrap("C_GenerateKey", err)
	})
	if err != nil {
		return err
	}
	t.handles.Store(SecretKeyByID(id).cacheKey(), h)
	return nil
}
