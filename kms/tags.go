package kms

import (
	"context"
	"errors"

	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

const maxTagsPerKey = 50

func checkTags(tags []Tag) error {
	for _, t := range tags {
		if isReservedTagKey(t.TagKey) {
			return wire.Errorf(wire.TagException, "Tags beginning with aws: are reserved")
		}
	}
	return nil
}

type TagResourceInput struct {
	KeyId string
	Tags  []Tag
}

func (s *Service) TagResource(ctx context.Context, c *wire.Call, in *TagResourceInput) (*Empty, error) {
	if err := checkTags(in.Tags); err != nil {
		return nil, err
	}
	setRequestTags(c, in.Tags)
	k, err := s.lookupKey(ctx, c, in.KeyId, false)
	if err != nil {
		return nil, err
	}
	if err := checkState(k, classManage); err != nil {
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
		return nil, wire.Errorf(wire.LimitExceeded, "The request was rejected because a quota was exceeded. You can have at most %d tags per KMS key.", maxTagsPerKey)
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

func (s *Service) UntagResource(ctx context.Context, c *wire.Call, in *UntagResourceInput) (*Empty, error) {
	if len(in.TagKeys) > 0 {
		setCondition(c, "aws:TagKeys", in.TagKeys...)
	}
	k, err := s.lookupKey(ctx, c, in.KeyId, false)
	if err != nil {
		return nil, err
	}
	if err := checkState(k, classManage); err != nil {
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

func (s *Service) ListResourceTags(ctx context.Context, c *wire.Call, in *ListResourceTagsInput) (*ListResourceTagsOutput, error) {
	k, err := s.lookupKey(ctx, c, in.KeyId, false)
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
