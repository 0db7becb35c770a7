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
	GrantTokensField
	DryRunField
}

type SignOutput struct {
	KeyId            string
	Signature        []byte
	SigningAlgorithm string
}

// Sign signs on the token with the key's private key. ECDSA signatures are
// DER-encoded, as AWS returns them.
func (s *Service) Sign(ctx context.Context, r *Request, in *SignInput) (*SignOutput, error) {
	k, sg, data, err := s.signingInput(ctx, r, in.KeyId, in.SigningAlgorithm, in.MessageType, in.Message)
	if err != nil {
		return nil, err
	}
	tok, err := s.tokenFor(r, k)
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
	GrantTokensField
	DryRunField
}

type VerifyOutput struct {
	KeyId            string
	SignatureValid   bool
	SigningAlgorithm string
}

// Verify checks a signature with the key's public key, on the token (Go's
// crypto has no secp256k1, and one path for all specs is one to test).
func (s *Service) Verify(ctx context.Context, r *Request, in *VerifyInput) (*VerifyOutput, error) {
	k, sg, data, err := s.signingInput(ctx, r, in.KeyId, in.SigningAlgorithm, in.MessageType, in.Message)
	if err != nil {
		return nil, err
	}
	tok, err := s.tokenFor(r, k)
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
func (s *Service) signingInput(ctx context.Context, r *Request, keyID, alg, msgType string, msg []byte) (*store.Key, signing, []byte, error) {
	mt := msgType
	if mt == "" {
		mt = "RAW"
	}
	a := access{cond: conditions("kms:SigningAlgorithm", alg, "kms:MessageType", mt)}
	k, err := s.usableKey(ctx, r, keyID, usageSign, a)
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
	KeyId string
	GrantTokensField
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

func (s *Service) GetPublicKey(ctx context.Context, r *Request, in *GetPublicKeyInput) (*GetPublicKeyOutput, error) {
	k, err := s.usableKey(ctx, r, in.KeyId, "", access{})
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
