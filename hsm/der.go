package hsm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
)

// DER built by hand where Go's crypto/x509 cannot help: it knows no
// secp256k1, and one code path for every curve is simpler than two.

type subjectPublicKeyInfo struct {
	Algorithm pkix.AlgorithmIdentifier
	PublicKey asn1.BitString
}

// RFC 5208 PrivateKeyInfo.
type privateKeyInfo struct {
	Version    int
	Algorithm  pkix.AlgorithmIdentifier
	PrivateKey []byte
}

// RFC 5915 ECPrivateKey.
type ecPrivateKey struct {
	Version    int
	PrivateKey []byte
	Params     asn1.ObjectIdentifier `asn1:"optional,explicit,tag:0"`
	PublicKey  asn1.BitString        `asn1:"optional,explicit,tag:1"`
}

func (c *curve) algorithm() pkix.AlgorithmIdentifier {
	return pkix.AlgorithmIdentifier{Algorithm: oidECPublicKey, Parameters: asn1.RawValue{FullBytes: c.params()}}
}

// ecSPKI is the SubjectPublicKeyInfo of an uncompressed point on c.
func (c *curve) spki(point []byte) ([]byte, error) {
	return asn1.Marshal(subjectPublicKeyInfo{
		Algorithm: c.algorithm(),
		PublicKey: asn1.BitString{Bytes: point, BitLength: 8 * len(point)},
	})
}

// pkcs8 is the PKCS#8 PrivateKeyInfo of the private scalar d (big-endian,
// padded here to the size of the group order) with its public point.
func (c *curve) pkcs8(d, point []byte) ([]byte, error) {
	if len(d) > c.size {
		return nil, fmt.Errorf("hsm: token returned a %d-byte %s private key", len(d), c.name)
	}
	padded := make([]byte, c.size)
	copy(padded[c.size-len(d):], d)
	defer clear(padded)
	inner, err := asn1.Marshal(ecPrivateKey{
		Version:    1,
		PrivateKey: padded,
		Params:     c.oid,
		PublicKey:  asn1.BitString{Bytes: point, BitLength: 8 * len(point)},
	})
	if err != nil {
		return nil, err
	}
	defer clear(inner)
	return asn1.Marshal(privateKeyInfo{Algorithm: c.algorithm(), PrivateKey: inner})
}

func ed25519SPKI(pub []byte) ([]byte, error) {
	return asn1.Marshal(subjectPublicKeyInfo{
		Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidEd25519},
		PublicKey: asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)},
	})
}

// oneAsymmetricKey is RFC 5958's OneAsymmetricKey (PKCS#8), with the
// private key kept as the DER it is: asn1 would copy an OCTET STRING into
// a new slice, and every copy of a seed must be cleared.
type oneAsymmetricKey struct {
	Version    int
	Algorithm  pkix.AlgorithmIdentifier
	PrivateKey asn1.RawValue
	Attributes asn1.RawValue  `asn1:"optional,tag:0"`
	PublicKey  asn1.BitString `asn1:"optional,tag:1"`
}

// ed25519Seed returns the 32-byte seed of der, an Ed25519 private key in
// PKCS#8 as RFC 8410 §7 has it (version v1, or v2 with the public key,
// which must be the seed's), as a slice of der: nothing else holds it.
// Anything else is errNotEd25519.
func ed25519Seed(der []byte) ([]byte, error) {
	var k oneAsymmetricKey
	rest, err := asn1.Unmarshal(der, &k)
	if err != nil || len(rest) != 0 || (k.Version != 0 && k.Version != 1) ||
		!k.Algorithm.Algorithm.Equal(oidEd25519) || len(k.Algorithm.Parameters.FullBytes) != 0 || !isOctetString(k.PrivateKey) {
		return nil, errNotEd25519
	}
	var curvePrivateKey asn1.RawValue
	rest, err = asn1.Unmarshal(k.PrivateKey.Bytes, &curvePrivateKey)
	if err != nil || len(rest) != 0 || !isOctetString(curvePrivateKey) || len(curvePrivateKey.Bytes) != ed25519.SeedSize {
		return nil, errNotEd25519
	}
	seed := curvePrivateKey.Bytes
	if len(k.PublicKey.Bytes) != 0 || k.PublicKey.BitLength != 0 {
		if k.Version != 1 || k.PublicKey.BitLength != 8*ed25519.PublicKeySize {
			return nil, errNotEd25519
		}
		priv := ed25519.NewKeyFromSeed(seed)
		same := bytes.Equal(priv[ed25519.SeedSize:], k.PublicKey.Bytes)
		clear(priv)
		if !same {
			return nil, fmt.Errorf("%w: its public key is not its private key's", errNotEd25519)
		}
	}
	return seed, nil
}

func isOctetString(v asn1.RawValue) bool {
	return v.Class == asn1.ClassUniversal && v.Tag == asn1.TagOctetString && !v.IsCompound
}

func rsaSPKI(modulus, exponent []byte) ([]byte, error) {
	e := new(big.Int).SetBytes(exponent)
	if !e.IsInt64() || e.Int64() > 1<<31-1 || e.Int64() < 3 {
		return nil, fmt.Errorf("hsm: unusable RSA public exponent on the token")
	}
	return x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: new(big.Int).SetBytes(modulus), E: int(e.Int64())})
}

// PublicKeyDER returns the DER SubjectPublicKeyInfo of the public key key:
// RSA, EC on P-256, P-384, P-521 or secp256k1 (namedCurve,
// uncompressed point), or Ed25519.
func (t *Token) PublicKeyDER(ctx context.Context, key ObjectRef) ([]byte, error) {
	var out []byte
	err := t.withObject(ctx, key, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		var err error
		out, err = t.publicKeyDER(s, h)
		return err
	})
	return out, err
}

func (t *Token) publicKeyDER(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, error) {
	kt, err := t.p11.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
	if err != nil {
		return nil, wrap("C_GetAttributeValue", err)
	}
	switch ulong(kt[0].Value) {
	case pkcs11.CKK_RSA:
		a, err := t.p11.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		})
		if err != nil {
			return nil, wrap("C_GetAttributeValue", err)
		}
		return rsaSPKI(a[0].Value, a[1].Value)
	case pkcs11.CKK_EC:
		c, point, err := t.ecPublic(s, h)
		if err != nil {
			return nil, err
		}
		return c.spki(point)
	case ckkECEdwards:
		a, err := t.p11.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			return nil, wrap("C_GetAttributeValue", err)
		}
		pub, err := edPoint(a[0].Value)
		if err != nil {
			return nil, err
		}
		return ed25519SPKI(pub)
	}
	return nil, fmt.Errorf("%w: key type 0x%X", ErrMechanismNotSupported, ulong(kt[0].Value))
}

// ecPublic reads the curve and uncompressed point of an EC public key.
func (t *Token) ecPublic(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) (*curve, []byte, error) {
	a, err := t.p11.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
	})
	if err != nil {
		return nil, nil, wrap("C_GetAttributeValue", err)
	}
	c, err := curveByParams(a[0].Value)
	if err != nil {
		return nil, nil, err
	}
	point, err := c.ecPoint(a[1].Value)
	return c, point, err
}

// ecCurve reads the curve of an EC key, public or private.
// cachedCurve is ecCurve remembered per object: Verify needs the curve's
// size on every call, and reading it cost a token round trip each time.
func (t *Token) cachedCurve(s pkcs11.SessionHandle, h pkcs11.ObjectHandle, ref ObjectRef) (*curve, error) {
	if c, ok := t.curves.Load(ref.cacheKey()); ok {
		return c.(*curve), nil
	}
	c, err := t.ecCurve(s, h)
	if err == nil {
		t.curves.Store(ref.cacheKey(), c)
	}
	return c, err
}

func (t *Token) ecCurve(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) (*curve, error) {
	a, err := t.p11.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil)})
	if code, _ := Code(err); code == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID {
		return nil, fmt.Errorf("hsm: not an EC key: %w", wrap("C_GetAttributeValue", err))
	}
	if err != nil {
		return nil, wrap("C_GetAttributeValue", err)
	}
	return curveByParams(a[0].Value)
}

// publicKeyTemplate is the attributes of a public key object holding spki
// (DER SubjectPublicKeyInfo), the reverse of publicKeyDER: CKA_CLASS,
// CKA_KEY_TYPE and the key's values. It takes RSA keys, EC keys on the
// curves hsm knows (named, uncompressed point on the curve) and Ed25519
// keys, and refuses anything else, trailing bytes included.
func publicKeyTemplate(spki []byte) ([]*pkcs11.Attribute, error) {
	var info subjectPublicKeyInfo
	rest, err := asn1.Unmarshal(spki, &info)
	if err != nil || len(rest) != 0 || info.PublicKey.BitLength%8 != 0 {
		return nil, fmt.Errorf("hsm: malformed public key")
	}
	attrs := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)}
	point := info.PublicKey.Bytes
	switch alg := info.Algorithm.Algorithm; {
	case alg.Equal(oidRSAEncryption):
		pub, err := x509.ParsePKIXPublicKey(spki)
		if err != nil {
			return nil, fmt.Errorf("hsm: malformed RSA public key")
		}
		rsaPub, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("hsm: malformed RSA public key")
		}
		return append(attrs,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, rsaPub.N.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(rsaPub.E)).Bytes())), nil
	case alg.Equal(oidECPublicKey):
		c, err := curveByParams(info.Algorithm.Parameters.FullBytes)
		if err != nil {
			return nil, err
		}
		if point, err = c.ecPoint(point); err != nil {
			return nil, err
		}
		wrapped, err := asn1.Marshal(point)
		if err != nil {
			return nil, err
		}
		return append(attrs,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, c.params()),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, wrapped)), nil
	case alg.Equal(oidEd25519):
		if len(info.Algorithm.Parameters.FullBytes) != 0 || len(point) != 32 {
			return nil, fmt.Errorf("hsm: malformed Ed25519 public key")
		}
		params, _ := asn1.Marshal(oidEd25519)
		wrapped, err := asn1.Marshal(point)
		if err != nil {
			return nil, err
		}
		return append(attrs,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, wrapped)), nil
	}
	return nil, fmt.Errorf("%w: public key algorithm %v", ErrMechanismNotSupported, info.Algorithm.Algorithm)
}

var oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
