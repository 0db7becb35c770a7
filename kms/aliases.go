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

// checkAliasName applies the rules the model's pattern does not, as AWS
// answers them for CreateAlias, UpdateAlias and DeleteAlias alike, before
// anything is looked up: a name without the "alias/" prefix is malformed
// (ValidationException), and the "alias/aws/" namespace belongs to AWS
// managed keys, which no caller may create, move or delete
// (NotAuthorizedException, no message).
func checkAliasName(name string) error {
	if !strings.HasPrefix(name, "alias/") || name == "alias/" {
		return wire.Errorf(wire.Validation, "Alias must start with the prefix \"alias/\". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html")
	}
	if strings.HasPrefix(name, "alias/aws/") {
		return &wire.Error{Type: wire.NotAuthorized}
	}
	return nil
}

// aliasKey resolves a key an alias names (TargetKeyId, or the alias's
// current target) and authorizes the alias operation on it, by the key's
// policy, as AWS requires. The new target must also be in a state that
// may take an alias (the operation's rule); the current one may be in any.
func (s *Service) aliasKey(ctx context.Context, r *Request, keyID string, checkState bool) (*store.Key, error) {
	k, _, err := s.lookupKey(ctx, r, keyID, false, access{})
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, r, k, access{}); err != nil {
		return nil, err
	}
	if checkState {
		if err := s.checkState(k, r.op.states); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// authorizeAlias authorizes the alias operation on the alias itself,
// which only identity policies can allow (an alias has no policy).
func (s *Service) authorizeAlias(ctx context.Context, r *Request, name string) error {
	return s.authorizeIdentity(ctx, r, nil, r.action(), aliasARN(r.Caller.Region, r.Caller.Account, name), onAlias)
}

func (s *Service) getAlias(ctx context.Context, r *Request, name string) (*store.Alias, error) {
	a, err := s.store.GetAlias(ctx, r.Caller.Account, r.Caller.Region, name)
	if isNotFound(err) {
		return nil, aliasNotFound(r, name)
	}
	return a, err
}

// CreateAlias needs kms:CreateAlias on the alias (identity policy) and on
// the target key (key policy).
func (s *Service) CreateAlias(ctx context.Context, r *Request, in *AliasInput) (*Empty, error) {
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	if err := s.authorizeAlias(ctx, r, in.AliasName); err != nil {
		return nil, err
	}
	k, err := s.aliasKey(ctx, r, in.TargetKeyId, true)
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	now := s.now().UTC()
	err = s.store.CreateAlias(ctx, &store.Alias{
		Account: r.Caller.Account, Region: r.Caller.Region, Name: in.AliasName,
		TargetKeyID: k.ID, CreationDate: now, LastUpdatedDate: now,
	}, maxAliasesPerKey)
	switch {
	case errors.Is(err, store.ErrLimitExceeded):
		return nil, aliasLimitExceeded()
	case errors.Is(err, store.ErrAlreadyExists):
		return nil, wire.Errorf(wire.AlreadyExists, "An alias with the name %s already exists", aliasARN(r.Caller.Region, r.Caller.Account, in.AliasName))
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

// UpdateAlias needs kms:UpdateAlias on the alias (identity policy), on its
// current target key and on the new one (their key policies). The alias
// moves only if it still names the key that was authorized.
func (s *Service) UpdateAlias(ctx context.Context, r *Request, in *AliasInput) (*Empty, error) {
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	a, err := s.getAlias(ctx, r, in.AliasName)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeAlias(ctx, r, in.AliasName); err != nil {
		return nil, err
	}
	old, err := s.aliasKey(ctx, r, a.TargetKeyID, false)
	if err != nil {
		return nil, err
	}
	k, err := s.aliasKey(ctx, r, in.TargetKeyId, true)
	if err != nil {
		return nil, err
	}
	if old.KeyUsage != k.KeyUsage || (old.KeySpec == specSymmetric) != (k.KeySpec == specSymmetric) {
		return nil, wire.Errorf(wire.Validation, "%s key usage or type does not match the alias's current target key %s.", arnOf(k), arnOf(old))
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	err = s.store.UpdateAlias(ctx, r.Caller.Account, r.Caller.Region, in.AliasName, old.ID, k.ID, s.now().UTC(), maxAliasesPerKey)
	if isNotFound(err) {
		return nil, aliasNotFound(r, in.AliasName)
	}
	if errors.Is(err, store.ErrLimitExceeded) {
		return nil, aliasLimitExceeded()
	}
	return &Empty{}, err
}

type DeleteAliasInput struct {
	AliasName string
}

// DeleteAlias needs kms:DeleteAlias on the alias (identity policy) and on
// the key it names (key policy). The alias is deleted only if it still
// names the key that was authorized.
func (s *Service) DeleteAlias(ctx context.Context, r *Request, in *DeleteAliasInput) (*Empty, error) {
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	a, err := s.getAlias(ctx, r, in.AliasName)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeAlias(ctx, r, in.AliasName); err != nil {
		return nil, err
	}
	k, err := s.aliasKey(ctx, r, a.TargetKeyID, false)
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	err = s.store.DeleteAlias(ctx, r.Caller.Account, r.Caller.Region, in.AliasName, k.ID)
	if isNotFound(err) {
		return nil, aliasNotFound(r, in.AliasName)
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

// ListAliases is decided by the identity policy alone, on "*", even when
// it names a key, as AWS does.
func (s *Service) ListAliases(ctx context.Context, r *Request, in *ListAliasesInput) (*ListAliasesOutput, error) {
	keyID := ""
	if in.KeyId != "" {
		k, _, err := s.lookupKey(ctx, r, in.KeyId, false, access{})
		if err != nil {
			return nil, err
		}
		keyID = k.ID
	}
	as, next, err := s.store.ListAliases(ctx, r.Caller.Account, r.Caller.Region, keyID, in.Marker, limit(in.Limit, 100))
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
