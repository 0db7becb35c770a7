package kms

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

type GenerateDataKeyPairInput struct {
	EncryptionContext map[string]string
	KeyId             string
	KeyPairSpec       string
	Recipient         *struct{}
	GrantTokensField
	DryRunField
}

type GenerateDataKeyPairOutput struct {
	KeyId                    string
	KeyMaterialId            string
	KeyPairSpec              string
	PrivateKeyCiphertextBlob []byte
	PrivateKeyPlaintext      []byte `json:"PrivateKeyPlaintext,omitempty"`
	PublicKey                []byte
}

// dataKeyPairs maps DataKeyPairSpec to the pair the token generates.
// Ed25519 is absent: its key is a 32-byte seed, taken from the token's RNG.
var dataKeyPairs = map[string]hsm.KeyPairSpec{
	"RSA_2048": hsm.RSA2048, "RSA_3072": hsm.RSA3072, "RSA_4096": hsm.RSA4096,
	"ECC_NIST_P256": hsm.ECP256, "ECC_NIST_P384": hsm.ECP384, "ECC_NIST_P521": hsm.ECP521,
	"ECC_SECG_P256K1": hsm.ECSecp256k1,
}

const specEd25519 = "ECC_NIST_EDWARDS25519"

func (s *Service) GenerateDataKeyPair(ctx context.Context, r *Request, in *GenerateDataKeyPairInput) (*GenerateDataKeyPairOutput, error) {
	if in.Recipient != nil {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Recipient (Nitro Enclaves attestation) is not supported by hsmkms.")
	}
	return s.generateDataKeyPair(ctx, r, in, true)
}

func (s *Service) GenerateDataKeyPairWithoutPlaintext(ctx context.Context, r *Request, in *GenerateDataKeyPairInput) (*GenerateDataKeyPairOutput, error) {
	return s.generateDataKeyPair(ctx, r, in, false)
}

// generateDataKeyPair makes a key pair with the token's randomness and
// returns its private key (PKCS#8) encrypted under a symmetric KMS key,
// and in plaintext if asked.
func (s *Service) generateDataKeyPair(ctx context.Context, r *Request, in *GenerateDataKeyPairInput, withPlaintext bool) (*GenerateDataKeyPairOutput, error) {
	pair, ok := dataKeyPairs[in.KeyPairSpec]
	if !ok && in.KeyPairSpec != specEd25519 {
		return nil, wire.Errorf(wire.UnsupportedOperation, "KeyPairSpec %s is not supported by hsmkms: PKCS#11 2.40 defines no SM2 mechanism.", in.KeyPairSpec)
	}
	a := cryptoAccess("", in.EncryptionContext, algSymmetric)
	a.cond.Set("kms:DataKeyPairSpec", in.KeyPairSpec)
	k, _, err := s.encryptionKey(ctx, r, in.KeyId, algSymmetric, a)
	if err != nil {
		return nil, err
	}
	// The pair is made on the token of the key that encrypts it (a
	// custom key store's, for its keys).
	tok, err := s.tokenFor(r, k)
	if err != nil {
		return nil, err
	}
	var private, public []byte
	if ok {
		private, public, err = tok.GenerateDataKeyPair(ctx, pair)
	} else {
		private, public, err = ed25519Pair(ctx, tok)
	}
	if err != nil {
		return nil, s.dataKeyPairError(k, in.KeyPairSpec, err)
	}
	blob, material, err := s.seal(ctx, k, private, in.EncryptionContext)
	if err != nil {
		clear(private)
		return nil, err
	}
	out := &GenerateDataKeyPairOutput{KeyId: arnOf(k), KeyMaterialId: material, KeyPairSpec: in.KeyPairSpec,
		PrivateKeyCiphertextBlob: blob, PublicKey: public}
	if withPlaintext {
		out.PrivateKeyPlaintext = private
	} else {
		clear(private)
	}
	return out, nil
}

func (s *Service) dataKeyPairError(k *store.Key, spec string, err error) error {
	if errors.Is(err, hsm.ErrMechanismNotSupported) {
		return wire.Errorf(wire.UnsupportedOperation, "KeyPairSpec %s is not supported by this key store's token.", spec)
	}
	return tokenError(k, err)
}

// ed25519Pair makes an Ed25519 key pair from a seed drawn from the token.
func ed25519Pair(ctx context.Context, tok *hsm.Token) (private, public []byte, err error) {
	seed, err := tok.GenerateRandom(ctx, ed25519.SeedSize)
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
