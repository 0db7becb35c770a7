package kms

import (
	"context"
	"testing"
)

// SetMaxGrantsPerKey lowers the per-key grant quota for one test.
func SetMaxGrantsPerKey(t testing.TB, n int) {
	old := maxGrantsPerKey
	maxGrantsPerKey = n
	t.Cleanup(func() { maxGrantsPerKey = old })
}

// GrantAllows is grantAllows on the key (account, region, keyID).
func (s *Service) GrantAllows(ctx context.Context, account, region, keyID, principal, op string, ec map[string]string) (string, error) {
	k, err := s.store.GetKey(ctx, account, region, keyID)
	if err != nil {
		return "", err
	}
	id, _, err := s.grantAllows(ctx, k, principal, op, ec)
	return id, err
}

var CheckGrantTokens = checkGrantTokens

// RequestAs is a request for op by caller, as the runner would build it.
func (s *Service) RequestAs(op string, caller Caller) *Request {
	return &Request{op: s.op(op), Caller: caller}
}
