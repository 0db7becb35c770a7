package kms

import (
	"context"
	"errors"

	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

const maxTagsPerKey = 50

// checkTags applies AWS's rules for the tags of one request, in AWS's
// order: a tag key given twice, more tags than a key may have, a key in
// the reserved aws: namespace. Each is a TagException. (Lengths are the
// model's, checked by wire before.)
func checkTags(tags []Tag) error {
	seen := make(map[string]bool, len(tags))
	for _, t := range tags {
		if seen[t.TagKey] {
			return wire.Errorf(wire.TagException, "Duplicate tag keys")
		}
		seen[t.TagKey] = true
	}
	if len(tags) > maxTagsPerKey {
		return tooManyTags()
	}
	for _, t := range tags {
		if isReservedTagKey(t.TagKey) {
			return wire.Errorf(wire.TagException, "Tags beginning with aws: are reserved")
		}
	}
	return nil
}

// tooManyTags is AWS's answer to a key that would have more than
// maxTagsPerKey tags, whether the request alone has too many or they
// would be too many with the key's own.
func tooManyTags() error { return wire.Errorf(wire.TagException, "Too many tags") }

type TagResourceInput struct {
	KeyId string
	Tags  []Tag
}

func (s *Service) TagResource(ctx context.Context, r *Request, in *TagResourceInput) (*Empty, error) {
	if err := checkTags(in.Tags); err != nil {
		return nil, err
	}
	k, err := s.key(ctx, r, in.KeyId, access{cond: requestTags(authz.Context{}, in.Tags)})
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	tags := make([]store.Tag, len(in.Tags))
	for i, t := range in.Tags {
		tags[i] = store.Tag{Key: t.TagKey, Value: t.TagValue}
	}
	// The store counts the tag keys, after the request's replacements, in
	// the transaction that writes them.
	err = s.store.TagKey(ctx, k.Account, k.Region, k.ID, tags, maxTagsPerKey)
	switch {
	case errors.Is(err, store.ErrLimitExceeded):
		return nil, tooManyTags()
	case errors.Is(err, store.ErrNotFound): // the key was deleted since the lookup
		return nil, keyNotFound(k.Region, k.Account, k.ID)
	case err != nil:
		return nil, err
	}
	return &Empty{}, nil
}

type UntagResourceInput struct {
	KeyId   string
	TagKeys []string
}

func (s *Service) UntagResource(ctx context.Context, r *Request, in *UntagResourceInput) (*Empty, error) {
	cond := authz.Context{}
	if len(in.TagKeys) > 0 {
		cond.Set("aws:TagKeys", in.TagKeys...)
	}
	k, err := s.key(ctx, r, in.KeyId, access{cond: cond})
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	return &Empty{}, s.store.UntagKey(ctx, k.Account, k.Region, k.ID, in.TagKeys)
}

type ListResourceTagsInput struct {
	KeyId  string
	Limit  int
	Marker string
}

type ListResourceTagsOutput struct {
	NextMarker string `json:"NextMarker,omitempty"`
	Tags       []Tag
	Truncated  bool
}

func (s *Service) ListResourceTags(ctx context.Context, r *Request, in *ListResourceTagsInput) (*ListResourceTagsOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	tags, next, err := s.store.ListTags(ctx, k.Account, k.Region, k.ID, in.Marker, limit(in.Limit, 50))
	if err != nil {
		return nil, listError(err)
	}
	out := &ListResourceTagsOutput{Tags: make([]Tag, len(tags)), NextMarker: next, Truncated: next != ""}
	for i, t := range tags {
		out.Tags[i] = Tag{TagKey: t.Key, TagValue: t.Value}
	}
	return out, nil
}
