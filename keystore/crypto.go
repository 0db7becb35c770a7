package keystore

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/hsmkms/hsmkms/hsm"
)

// The AES-GCM parameters of every EncryptGCM: a fresh random 12-byte IV and
// a 128-bit tag.
const (
	GCMIVSize  = hsm.GCMIVSize
	GCMTagSize = hsm.GCMTagSize
)

// SignAlgorithm is a signature scheme of Sign and Verify.
type SignAlgorithm = hsm.SignAlgorithm

const (
	// RSAPKCS1v15 signs a digest with RSASSA-PKCS1-v1_5.
	RSAPKCS1v15 = hsm.RSAPKCS1v15
	// RSAPSS signs a digest with RSASSA-PSS, MGF1 with the same hash and a
	// salt as long as the hash.
	RSAPSS = hsm.RSAPSS
	// ECDSA signs a digest; signatures are ASN.1 DER SEQUENCE{r, s}.
	ECDSA = hsm.ECDSA
	// EdDSA signs the message itself: pure Ed25519.
	EdDSA = hsm.EdDSA
	// EdDSAPh signs the SHA-512 digest of the message: Ed25519ph.
	EdDSAPh = hsm.EdDSAPh
)

// part is which object of a material version an operation uses.
type part int

const (
	secretPart part = iota
	privatePart
	publicPart
)

func (p part) tokenRef(ref []byte) hsm.ObjectRef {
	switch p {
	case privatePart:
		return hsm.PrivateKeyByID(ref)
	case publicPart:
		return hsm.PublicKeyByID(ref)
	}
	return hsm.SecretKeyByID(ref)
}

// withMaterial runs fn with the token and the object to use for part p of
// m: its token object, or, for wrapped material, its unwrapped copy from
// the store's cache, held (never destroyed) until fn returns. A copy the
// token lost meanwhile is unwrapped again, once.
func (s *Store) withMaterial(ctx context.Context, m Material, p part, fn func(tok *hsm.Token, key hsm.ObjectRef) error) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	if m.OnToken() {
		return classify(fn(tok, p.tokenRef(m.ref)))
	}
	h := s.hier.Load()
	if h == nil {
		return fmt.Errorf("%w: %s holds no wrapped material", ErrMaterialNotFound, StoreDescription(s.id))
	}
	for attempt := 0; ; attempt++ {
		obj, release, err := h.object(ctx, m, p == publicPart)
		if err != nil {
			return classify(err)
		}
		err = fn(h.tok, obj)
		release()
		if errors.Is(err, hsm.ErrSessionObjectLost) && attempt == 0 {
			h.cache.drop(cacheKey(m, p == publicPart), obj)
			continue
		}
		return classify(err)
	}
}

// EncryptGCM encrypts plaintext with AES-256-GCM under m, authenticating
// aad too, and returns the IV and the ciphertext with its tag.
func (s *Store) EncryptGCM(ctx context.Context, m Material, plaintext, aad []byte) (iv, sealed []byte, err error) {
	err = s.withMaterial(ctx, m, secretPart, func(tok *hsm.Token, key hsm.ObjectRef) error {
		var err error
		iv, sealed, err = tok.EncryptGCM(ctx, key, plaintext, aad)
		return err
	})
	return iv, sealed, err
}

// DecryptGCM reverses EncryptGCM. Whatever is wrong with iv, sealed or aad
// is ErrInvalidCiphertext, with no hint of which.
func (s *Store) DecryptGCM(ctx context.Context, m Material, iv, sealed, aad []byte) (plain []byte, err error) {
	err = s.withMaterial(ctx, m, secretPart, func(tok *hsm.Token, key hsm.ObjectRef) error {
		var err error
		plain, err = tok.DecryptGCM(ctx, key, iv, sealed, aad)
		return err
	})
	return plain, err
}

// DecryptOAEP decrypts an RSAES-OAEP ciphertext (hash SHA-1 or SHA-256,
// MGF1 with the same hash, no label) with m's private key. Every
// ciphertext that does not decrypt is exactly ErrInvalidCiphertext.
func (s *Store) DecryptOAEP(ctx context.Context, m Material, hash crypto.Hash, ciphertext []byte) (plain []byte, err error) {
	err = s.withMaterial(ctx, m, privatePart, func(tok *hsm.Token, key hsm.ObjectRef) error {
		var err error
		plain, err = tok.DecryptOAEP(ctx, key, hash, ciphertext)
		return err
	})
	return plain, err
}

// PublicKey is m's public key as DER SubjectPublicKeyInfo. A public key
// never changes, so each is read from the token once and kept (until
// Destroy); the hot path (RSA encryption, GetPublicKey) never asks the
// token again. Wrapped material carries its public key in clear.
func (s *Store) PublicKey(ctx context.Context, m Material) ([]byte, error) {
	if !m.OnToken() {
		env, err := parseEnvelope(m.wrapped, m.spec)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMaterialNotFound, err)
		}
		if len(env.publicKey) == 0 {
			return nil, fmt.Errorf("keystore: %v material has no public key", m.spec)
		}
		return env.publicKey, nil
	}
	if der, ok := s.publicKeys.Load(string(m.ref)); ok {
		return der.([]byte), nil
	}
	tok, err := s.token()
	if err != nil {
		return nil, err
	}
	der, err := tok.PublicKeyDER(ctx, hsm.PublicKeyByID(m.ref))
	if err != nil {
		return nil, classify(err)
	}
	s.publicKeys.Store(string(m.ref), der)
	return der, nil
}

// Sign signs with m's private key. For the digest algorithms data is the
// hash.Size()-byte digest; for EdDSA it is the message, with crypto.SHA512.
func (s *Store) Sign(ctx context.Context, m Material, alg SignAlgorithm, hash crypto.Hash, data []byte) (sig []byte, err error) {
	err = s.withMaterial(ctx, m, privatePart, func(tok *hsm.Token, key hsm.ObjectRef) error {
		var err error
		sig, err = tok.Sign(ctx, key, alg, hash, data)
		return err
	})
	return sig, err
}

// Verify checks sig over data (as for Sign) with m's public key, on the
// token. A signature that does not verify is (false, nil).
func (s *Store) Verify(ctx context.Context, m Material, alg SignAlgorithm, hash crypto.Hash, data, sig []byte) (ok bool, err error) {
	err = s.withMaterial(ctx, m, publicPart, func(tok *hsm.Token, key hsm.ObjectRef) error {
		var err error
		ok, err = tok.Verify(ctx, key, alg, hash, data, sig)
		return err
	})
	return ok, err
}

// MAC is the HMAC of msg under m with hash (SHA-224, -256, -384 or -512).
func (s *Store) MAC(ctx context.Context, m Material, hash crypto.Hash, msg []byte) (mac []byte, err error) {
	err = s.withMaterial(ctx, m, secretPart, func(tok *hsm.Token, key hsm.ObjectRef) error {
		var err error
		mac, err = tok.MAC(ctx, key, hash, msg)
		return err
	})
	return mac, err
}

// VerifyMAC recomputes the HMAC of msg on the token and compares it with
// mac in constant time.
func (s *Store) VerifyMAC(ctx context.Context, m Material, hash crypto.Hash, msg, mac []byte) (ok bool, err error) {
	err = s.withMaterial(ctx, m, secretPart, func(tok *hsm.Token, key hsm.ObjectRef) error {
		var err error
		ok, err = tok.VerifyMAC(ctx, key, hash, msg, mac)
		return err
	})
	return ok, err
}

// DeriveECDH is the ECDH shared secret (the X coordinate, field-size
// bytes) of m's private key and the peer's uncompressed point.
func (s *Store) DeriveECDH(ctx context.Context, m Material, peerPoint []byte) (secret []byte, err error) {
	err = s.withMaterial(ctx, m, privatePart, func(tok *hsm.Token, key hsm.ObjectRef) error {
		var err error
		secret, err = tok.DeriveECDH(ctx, key, peerPoint)
		return err
	})
	return secret, err
}

// GenerateRandom returns n bytes from the store's token RNG.
func (s *Store) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	tok, err := s.token()
	if err != nil {
		return nil, err
	}
	b, err := tok.GenerateRandom(ctx, n)
	return b, classify(err)
}

// GenerateDataKeyPair makes a key pair of spec for the caller to take away
// (that is its point): the private key as PKCS#8 DER, the public key as DER
// SubjectPublicKeyInfo. RSA and EC pairs are generated by the token as
// session objects, read and destroyed; an Ed25519 key is a seed drawn from
// the token's RNG. Symmetric and HMAC specs have no pairs.
func (s *Store) GenerateDataKeyPair(ctx context.Context, spec Spec) (privatePKCS8, publicSPKI []byte, err error) {
	switch {
	case spec == Ed25519:
		return s.ed25519Pair(ctx)
	case !spec.Asymmetric():
		return nil, nil, fmt.Errorf("keystore: %v is not a key pair spec", spec)
	}
	tok, err := s.token()
	if err != nil {
		return nil, nil, err
	}
	privatePKCS8, publicSPKI, err = tok.GenerateDataKeyPair(ctx, spec.pair())
	return privatePKCS8, publicSPKI, classify(err)
}

func (s *Store) ed25519Pair(ctx context.Context) (private, public []byte, err error) {
	seed, err := s.GenerateRandom(ctx, ed25519.SeedSize)
	if err != nil {
		return nil, nil, err
	}
	defer clear(seed)
	priv := ed25519.NewKeyFromSeed(seed)
	defer clear(priv)
	if private, err = x509.MarshalPKCS8PrivateKey(priv); err != nil {
		return nil, nil, err
	}
	if public, err = x509.MarshalPKIXPublicKey(priv.Public()); err != nil {
		return nil, nil, err
	}
	return private, public, nil
}
