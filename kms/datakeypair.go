package kms

import (
	"context"

	"github.com/hsmkms/hsmkms/keystore"
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

// dataKeyPairs maps DataKeyPairSpec to the pair the key store makes (an
// Ed25519 key is a 32-byte seed from the token's RNG).
var dataKeyPairs = map[string]keystore.Spec{
	"RSA_2048": keystore.RSA2048, "RSA_3072": keystore.RSA3072, "RSA_4096": keystore.RSA4096,
	"ECC_NIST_P256": keystore.ECP256, "ECC_NIST_P384": keystore.ECP384, "ECC_NIST_P521": keystore.ECP521,
	"ECC_SECG_P256K1": keystore.ECSecp256k1, "ECC_NIST_EDWARDS25519": keystore.Ed25519,
}

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
	if !ok {
		return nil, wire.Errorf(wire.UnsupportedOperation, "KeyPairSpec %s is not supported by hsmkms: PKCS#11 2.40 defines no SM2 mechanism.", in.KeyPairSpec)
	}
	a := cryptoAccess("", in.EncryptionContext, algSymmetric)
	a.cond.Set("kms:DataKeyPairSpec", in.KeyPairSpec)
	k, _, err := s.encryptionKey(ctx, r, in.KeyId, algSymmetric, a)
	if err != nil {
		return nil, err
	}
	if k.Origin == originXKS {
		// AWS: "The operations that generate asymmetric data key pairs
		// ... are not supported in custom key stores" (its own CloudHSM
		// key stores aside, hsmkms follows it for external key stores).
		return nil, wire.Errorf(wire.UnsupportedOperation, "%s is in an external key store, where %s is not supported.", arnOf(k), r.op.name)
	}
	// The pair is made on the token of the key that encrypts it (a
	// custom key store's, for its keys).
	tok, err := s.tokenFor(r, k)
	if err != nil {
		return nil, err
	}
	private, public, err := tok.GenerateDataKeyPair(ctx, pair)
	if err != nil {
		return nil, s.dataKeyPairError(k, in.KeyPairSpec, err)
	}
	blob, material, err := s.seal(ctx, r, k, private, in.EncryptionContext)
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
	return tokenError(err, tokenCall{key: k, what: "KeyPairSpec " + spec})
}
