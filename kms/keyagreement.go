package kms

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"slices"

	"github.com/hsmkms/hsmkms/kms/wire"
)

type DeriveSharedSecretInput struct {
	KeyId                 string
	KeyAgreementAlgorithm string
	PublicKey             []byte
	Recipient             *struct{}
	GrantTokensField
	DryRunField
}

type DeriveSharedSecretOutput struct {
	KeyAgreementAlgorithm string
	KeyId                 string
	KeyOrigin             string
	SharedSecret          []byte
}

// curves are the NIST curves of KEY_AGREEMENT keys, as Go names them.
var curves = map[string]string{"ECC_NIST_P256": "P-256", "ECC_NIST_P384": "P-384", "ECC_NIST_P521": "P-521"}

// DeriveSharedSecret does ECDH on the token between the key's private key
// and the peer's public key; the raw shared secret is returned, as AWS does.
func (s *Service) DeriveSharedSecret(ctx context.Context, r *Request, in *DeriveSharedSecretInput) (*DeriveSharedSecretOutput, error) {
	if in.Recipient != nil {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Recipient (Nitro Enclaves attestation) is not supported by hsmkms.")
	}
	a := access{cond: conditions("kms:KeyAgreementAlgorithm", in.KeyAgreementAlgorithm)}
	k, err := s.usableKey(ctx, r, in.KeyId, usageKeyAgreement, a)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(keySpecs[k.KeySpec].agree, in.KeyAgreementAlgorithm) {
		return nil, incompatible(in.KeyAgreementAlgorithm, k)
	}
	// The peer key is untrusted: x509 checks the encoding, ECDH() that the
	// point is on the curve, before any of it reaches the token. AWS
	// answers a public key it cannot use with a ValidationException that
	// has no message.
	parsed, err := x509.ParsePKIXPublicKey(in.PublicKey)
	pub, isEC := parsed.(*ecdsa.PublicKey)
	if err != nil || !isEC || pub.Curve.Params().Name != curves[k.KeySpec] {
		return nil, &wire.Error{Type: wire.Validation}
	}
	peer, err := pub.ECDH()
	if err != nil {
		return nil, &wire.Error{Type: wire.Validation}
	}
	tok, err := s.tokenFor(r, k)
	if err != nil {
		return nil, err
	}
	secret, err := tok.DeriveECDH(ctx, currentMaterial(k), peer.Bytes())
	if err != nil {
		return nil, s.signError(k, in.KeyAgreementAlgorithm, err)
	}
	return &DeriveSharedSecretOutput{KeyAgreementAlgorithm: in.KeyAgreementAlgorithm, KeyId: arnOf(k), KeyOrigin: k.Origin, SharedSecret: secret}, nil
}
