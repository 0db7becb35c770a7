package kms

import (
	"context"
	"time"

	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

const defaultRotationDays = 365

type EnableKeyRotationInput struct {
	KeyId                string
	RotationPeriodInDays int
}

// rotatable refuses keys AWS does not rotate automatically.
func rotatable(k *store.Key) error {
	if k.KeySpec != specSymmetric || k.Origin != originAWSKMS || k.CustomKeyStoreID != "" {
		return wire.Errorf(wire.UnsupportedOperation, "%s key rotation is not supported for this key.", arnOf(k))
	}
	return nil
}

func (s *Service) EnableKeyRotation(ctx context.Context, c *wire.Call, in *EnableKeyRotationInput) (*Empty, error) {
	days := in.RotationPeriodInDays
	if days == 0 {
		days = defaultRotationDays
	}
	err := s.update(ctx, c, in.KeyId, classManage, func(k *store.Key) error {
		if err := rotatable(k); err != nil {
			return err
		}
		if k.State == string(StateDisabled) {
			return wire.Errorf(wire.Disabled, "%s is disabled.", arnOf(k))
		}
		k.RotationEnabled = true
		k.RotationPeriodDays = days
		k.NextRotationDate = s.now().UTC().Add(time.Duration(days) * 24 * time.Hour)
		return nil
	})
	return &Empty{}, err
}

func (s *Service) DisableKeyRotation(ctx context.Context, c *wire.Call, in *KeyIDInput) (*Empty, error) {
	err := s.update(ctx, c, in.KeyId, classManage, func(k *store.Key) error {
		if err := rotatable(k); err != nil {
			return err
		}
		if k.State == string(StateDisabled) {
			return wire.Errorf(wire.Disabled, "%s is disabled.", arnOf(k))
		}
		k.RotationEnabled = false
		k.NextRotationDate = time.Time{}
		return nil
	})
	return &Empty{}, err
}

type GetKeyRotationStatusOutput struct {
	KeyId                string
	KeyRotationEnabled   bool
	NextRotationDate     *wire.Time `json:"NextRotationDate,omitempty"`
	RotationPeriodInDays int        `json:"RotationPeriodInDays,omitempty"`
}

func (s *Service) GetKeyRotationStatus(ctx context.Context, c *wire.Call, in *KeyIDInput) (*GetKeyRotationStatusOutput, error) {
	k, err := s.lookupKey(ctx, c, in.KeyId, false)
	if err != nil {
		return nil, err
	}
	if err := rotatable(k); err != nil {
		return nil, err
	}
	if err := checkState(k, classRead); err != nil {
		return nil, err
	}
	out := &GetKeyRotationStatusOutput{KeyId: arnOf(k), KeyRotationEnabled: k.RotationEnabled}
	if k.RotationEnabled {
		d := wire.Time(k.NextRotationDate)
		out.NextRotationDate = &d
		out.RotationPeriodInDays = k.RotationPeriodDays
	}
	return out, nil
}
