package kms

import (
	"context"
	"slices"

	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

type GenerateMacInput struct {
	KeyId        string
	Message      []byte
	MacAlgorithm string
	GrantTokensField
	DryRunField
}

type GenerateMacOutput struct {
	KeyId        string
	Mac          []byte
	MacAlgorithm string
}

// GenerateMac computes an HMAC on the token.
func (s *Service) GenerateMac(ctx context.Context, r *Request, in *GenerateMacInput) (*GenerateMacOutput, error) {
	k, err := s.macKey(ctx, r, in.KeyId, in.MacAlgorithm)
	if err != nil {
		return nil, err
	}
	tok, err := s.tokenFor(r, k)
	if err != nil {
		return nil, err
	}
	mac, err := tok.MAC(ctx, currentMaterial(k), macHashes[in.MacAlgorithm], in.Message)
	if err != nil {
		return nil, s.signError(k, in.MacAlgorithm, err)
	}
	return &GenerateMacOutput{KeyId: arnOf(k), Mac: mac, MacAlgorithm: in.MacAlgorithm}, nil
}

type VerifyMacInput struct {
	KeyId        string
	Message      []byte
	MacAlgorithm string
	Mac          []byte
	GrantTokensField
	DryRunField
}

type VerifyMacOutput struct {
	KeyId        string
	MacAlgorithm string
	MacValid     bool
}

// VerifyMac recomputes the HMAC on the token and compares in constant time
// (inside the key store).
func (s *Service) VerifyMac(ctx context.Context, r *Request, in *VerifyMacInput) (*VerifyMacOutput, error) {
	k, err := s.macKey(ctx, r, in.KeyId, in.MacAlgorithm)
	if err != nil {
		return nil, err
	}
	tok, err := s.tokenFor(r, k)
	if err != nil {
		return nil, err
	}
	ok, err := tok.VerifyMAC(ctx, currentMaterial(k), macHashes[in.MacAlgorithm], in.Message, in.Mac)
	if err != nil {
		return nil, s.signError(k, in.MacAlgorithm, err)
	}
	if !ok {
		return nil, &wire.Error{Type: wire.KMSInvalidMac}
	}
	return &VerifyMacOutput{KeyId: arnOf(k), MacAlgorithm: in.MacAlgorithm, MacValid: true}, nil
}

func (s *Service) macKey(ctx context.Context, r *Request, keyID, alg string) (*store.Key, error) {
	k, err := s.usableKey(ctx, r, keyID, usageMAC, access{cond: conditions("kms:MacAlgorithm", alg)})
	if err != nil {
		return nil, err
	}
	if !slices.Contains(keySpecs[k.KeySpec].mac, alg) {
		return nil, incompatible(alg, k)
	}
	return k, nil
}
