package kms

import (
	"context"
	"errors"
	"strings"

	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

const maxAliasesPerKey = 50

type AliasInput struct {
	AliasName   string
	TargetKeyId string
}

// checkAliasName applies the rules the model's pattern does not: the
// "alias/" prefix and the reserved "alias/aws/" namespace.
func checkAliasName(name string) error {
	if !strings.HasPrefix(name, "alias/") || name == "alias/" {
		return wire.Errorf(wire.InvalidAliasName, "Alias must start with the prefix \"alias/\". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html")
	}
	if strings.HasPrefix(name, "alias/aws/") {
		return wire.Errorf(wire.InvalidAliasName, "Cannot create alias with prefix 'alias/aws/'")
	}
	return nil
}

// aliasTarget resolves a TargetKeyId, which must name a key, not an alias.
func (s *Service) aliasTarget(ctx context.Context, c *wire.Call, target string) (*store.Key, error) {
	k, err := s.lookupKey(ctx, c, target, false)
	if err != nil {
		return nil, err
	}
	if err := checkState(k, classManage); err != nil {
		return nil, err
	}
	return k, nil
}

func (s *Service) CreateAlias(ctx context.Context, c *wire.Call, in *AliasInput) (*Empty, error) {
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	k, err := s.aliasTarget(ctx, c, in.TargetKeyId)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	err = s.store.CreateAlias(ctx, &store.Alias{
		Account: c.Caller.Account, Region: c.Caller.Region, Name: in.AliasName,
		TargetKeyID: k.ID, CreationDate: now, LastUpdatedDate: now,
	}, maxAliasesPerKey)
	switch {
	case errors.Is(err, store.ErrLimitExceeded):
		return nil, aliasLimitExceeded()
	case errors.Is(err, store.ErrAlreadyExists):
		return nil, wire.Errorf(wire.AlreadyExists, "An alias with the name %s already exists", aliasARN(c.Caller.Region, c.Caller.Account, in.AliasName))
	case errors.Is(err, store.ErrNotFound): // the key was deleted since the lookup
		return nil, keyNotFound(k.Region, k.Account, k.ID)
	}
	return &Empty{}, err
}

// aliasLimitExceeded is AWS's answer when a key has maxAliasesPerKey
// aliases; the store counts, in the transaction that adds the alias.
func aliasLimitExceeded() error {
	return wire.Errorf(wire.LimitExceeded, "Cannot exceed quota for AliasesPerCMK: %d", maxAliasesPerKey)
}

func (s *Service) UpdateAlias(ctx context.Context, c *wire.Call, in *AliasInput) (*Empty, error) {
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	a, err := s.store.GetAlias(ctx, c.Caller.Account, c.Caller.Region, in.AliasName)
	if errors.Is(err, store.ErrNotFound) {
		return nil, aliasNotFound(c, in.AliasName)
	}
	if err != nil {
		return nil, err
	}
	k, err := s.aliasTarget(ctx, c, in.TargetKeyId)
	if err != nil {
		return nil, err
	}
	if old, err := s.store.GetKey(ctx, c.Caller.Account, c.Caller.Region, a.TargetKeyID); err == nil {
		if old.KeyUsage != k.KeyUsage || (old.KeySpec == specSymmetric) != (k.KeySpec == specSymmetric) {
			return nil, wire.Errorf(wire.Validation, "%s key usage or type does not match the alias's current target key %s.", arnOf(k), arnOf(old))
		}
	}
	err = s.store.UpdateAlias(ctx, c.Caller.Account, c.Caller.Region, in.AliasName, k.ID, s.now().UTC(), maxAliasesPerKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, aliasNotFound(c, in.AliasName)
	}
	if errors.Is(err, store.ErrLimitExceeded) {
		return nil, aliasLimitExceeded()
	}
	return &Empty{}, err
}

type DeleteAliasInput struct {
	AliasName string
}

func (s *Service) DeleteAlias(ctx context.Context, c *wire.Call, in *DeleteAliasInput) (*Empty, error) {
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	err := s.store.DeleteAlias(ctx, c.Caller.Account, c.Caller.Region, in.AliasName)
	if errors.Is(err, store.ErrNotFound) {
		return nil, aliasNotFound(c, in.AliasName)
	}
	return &Empty{}, err
}

type ListAliasesInput struct {
	KeyId  string
	Limit  int
	Marker string
}

type AliasListEntry struct {
	AliasArn        string
	AliasName       string
	CreationDate    wire.Time
	LastUpdatedDate wire.Time
	TargetKeyId     string
}

type ListAliasesOutput struct {
	Aliases    []AliasListEntry
	NextMarker string `json:"NextMarker,omitempty"`
	Truncated  bool
}

func (s *Service) ListAliases(ctx context.Context, c *wire.Call, in *ListAliasesInput) (*ListAliasesOutput, error) {
	keyID := ""
	if in.KeyId != "" {
		k, err := s.lookupKey(ctx, c, in.KeyId, false)
		if err != nil {
			return nil, err
		}
		keyID = k.ID
	}
	as, next, err := s.store.ListAliases(ctx, c.Caller.Account, c.Caller.Region, keyID, in.Marker, limit(in.Limit, 100))
	if err != nil {
		return nil, listError(err)
	}
	out := &ListAliasesOutput{Aliases: make([]AliasListEntry, 0, len(as)), NextMarker: next, Truncated: next != ""}
	for _, a := range as {
		out.Aliases = append(out.Aliases, AliasListEntry{
			AliasArn: aliasARN(a.Region, a.Account, a.Name), AliasName: a.Name,
			CreationDate: wire.Time(a.CreationDate), LastUpdatedDate: wire.Time(a.LastUpdatedDate),
			TargetKeyId: a.TargetKeyID,
		})
	}
	return out, nil
}
