package kms

import (
	"context"
	"slices"

	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

type SignInput struct {
	KeyId            string
	Message          []byte
	MessageType      string
	SigningAlgorithm string
	GrantTokens      []string
	DryRun           bool
}

type SignOutput struct {
	KeyId            string
	Signature        []byte
	SigningAlgorithm string
}

// Sign signs on the token with the key's private key. ECDSA signatures are
// DER-encoded, as AWS returns them.
func (s *Service) Sign(ctx context.Context, c *wire.Call, in *SignInput) (*SignOutput, error) {
	c.GrantTokens = in.GrantTokens
	k, sg, data, err := s.signingInput(ctx, c, in.KeyId, in.SigningAlgorithm, in.MessageType, in.Message)
	if err != nil {
		return nil, err
	}
	tok, err := s.tokenFor(k, in.DryRun)
	if err != nil {
		return nil, err
	}
	sig, err := tok.Sign(ctx, currentMaterial(k), sg.alg, sg.hash, data)
	if err != nil {
		return nil, s.signError(k, in.SigningAlgorithm, err)
	}
	return &SignOutput{KeyId: arnOf(k), Signature: sig, SigningAlgorithm: in.SigningAlgorithm}, nil
}

type VerifyInput struct {
	KeyId            string
	Message          []byte
	MessageType      string
	Signature        []byte
	SigningAlgorithm string
	GrantTokens      []string
	DryRun           bool
}

type VerifyOutput struct {
	KeyId            string
	SignatureValid   bool
	SigningAlgorithm string
}

// Verify checks a signature with the key's public key, on the token (Go's
// crypto has no secp256k1, and one path for all specs is one to test).
func (s *Service) Verify(ctx context.Context, c *wire.Call, in *VerifyInput) (*VerifyOutput, error) {
	c.GrantTokens = in.GrantTokens
	k, sg, data, err := s.signingInput(ctx, c, in.KeyId, in.SigningAlgorithm, in.MessageType, in.Message)
	if err != nil {
		return nil, err
	}
	tok, err := s.tokenFor(k, in.DryRun)
	if err != nil {
		return nil, err
	}
	ok, err := tok.Verify(ctx, currentMaterial(k), sg.alg, sg.hash, data, in.Signature)
	if err != nil {
		return nil, s.signError(k, in.SigningAlgorithm, err)
	}
	if !ok {
		return nil, &wire.Error{Type: wire.KMSInvalidSignature}
	}
	return &VerifyOutput{KeyId: arnOf(k), SignatureValid: true, SigningAlgorithm: in.SigningAlgorithm}, nil
}

// signingInput checks a Sign or Verify request against the key and returns
// what the token signs: the digest (hashed here for RAW messages), or the
// message itself for pure Ed25519.
func (s *Service) signingInput(ctx context.Context, c *wire.Call, keyID, alg, msgType string, msg []byte) (*store.Key, signing, []byte, error) {
	setCondition(c, "kms:SigningAlgorithm", alg)
	if msgType == "" {
		setCondition(c, "kms:MessageType", "RAW")
	} else {
		setCondition(c, "kms:MessageType", msgType)
	}
	k, err := s.usableKey(ctx, c, keyID, usageSign)
	if err != nil {
		return nil, signing{}, nil, err
	}
	if !slices.Contains(keySpecs[k.KeySpec].sign, alg) {
		return nil, signing{}, nil, incompatible(alg, k)
	}
	sg := signings[alg]
	switch msgType {
	case "", "RAW":
		if alg == "ED25519_SHA_512" {
			return k, sg, msg, nil // Ed25519 hashes inside the signature scheme
		}
		h := sg.hash.New()
		h.Write(msg)
		return k, sg, h.Sum(nil), nil
	case "DIGEST":
		if alg == "ED25519_SHA_512" {
			return nil, signing{}, nil, wire.Errorf(wire.Validation, "ED25519_SHA_512 requires MessageType RAW.")
		}
		if len(msg) != sg.hash.Size() {
			return nil, signing{}, nil, wire.Errorf(wire.Validation, "Digest is invalid length for algorithm %s.", alg)
		}
		return k, sg, msg, nil
	}
	return nil, signing{}, nil, wire.Errorf(wire.Validation, "MessageType %s is only valid with ML_DSA_SHAKE_256.", msgType)
}

// signError says why the token could not sign or verify: an algorithm it
// lacks is the client's unsupported request, anything else is the token's.
func (s *Service) signError(k *store.Key, alg string, err error) error {
	return tokenError(err, tokenCall{key: k, what: alg})
}

type GetPublicKeyInput struct {
	KeyId       string
	GrantTokens []string
}

type GetPublicKeyOutput struct {
	CustomerMasterKeySpec  string
	EncryptionAlgorithms   []string `json:"EncryptionAlgorithms,omitempty"`
	KeyAgreementAlgorithms []string `json:"KeyAgreementAlgorithms,omitempty"`
	KeyId                  string
	KeySpec                string
	KeyUsage               string
	PublicKey              []byte
	SigningAlgorithms      []string `json:"SigningAlgorithms,omitempty"`
}

func (s *Service) GetPublicKey(ctx context.Context, c *wire.Call, in *GetPublicKeyInput) (*GetPublicKeyOutput, error) {
	c.GrantTokens = in.GrantTokens
	k, err := s.usableKey(ctx, c, in.KeyId, "")
	if err != nil {
		return nil, err
	}
	if !keySpecs[k.KeySpec].asymmetric() {
		return nil, wire.Errorf(wire.UnsupportedOperation, "%s is not an asymmetric KMS key: it has no public key.", arnOf(k))
	}
	der, err := s.publicKeyDER(ctx, k)
	if err != nil {
		return nil, err
	}
	out := &GetPublicKeyOutput{CustomerMasterKeySpec: k.KeySpec, KeyId: arnOf(k), KeySpec: k.KeySpec, KeyUsage: k.KeyUsage, PublicKey: der}
	out.EncryptionAlgorithms, out.SigningAlgorithms, _, out.KeyAgreementAlgorithms = keySpecs[k.KeySpec].algorithms(k.KeyUsage)
	return out, nil
}
