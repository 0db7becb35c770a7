package kms

import (
	"context"
	"errors"
	"strconv"

	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// defaultPolicy is the key policy AWS attaches when CreateKey has none,
// formatted as GetKeyPolicy returns it: it gives the account (and through
// IAM, its principals) full access to the key.
func defaultPolicy(account string) string {
	return `{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:aws:iam::` + account + `:root"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}`
}

// checkPolicy parses a key policy document, refusing what AWS refuses with
// its reason. Policies are stored and returned byte for byte.
func checkPolicy(doc string) (*authz.Policy, error) {
	if len(doc) > maxPolicyBytes {
		return nil, wire.Errorf(wire.MalformedPolicyDocument, "The policy document exceeds the maximum size of %d bytes.", maxPolicyBytes)
	}
	pol, err := authz.Parse([]byte(doc), authz.KeyPolicy)
	var me *authz.MalformedError
	if errors.As(err, &me) {
		return nil, wire.Errorf(wire.MalformedPolicyDocument, "%s", me.Reason)
	}
	return pol, err
}

// checkLockout is AWS's policy lockout safety check: a new key policy must
// let the caller change it again, or the key could become unmanageable.
func (s *Service) checkLockout(r *Request, pol *authz.Policy, keyAccount, keyARN string) error {
	req := authz.NewRequest("kms:PutKeyPolicy", keyARN, authz.Principal{ARN: r.Caller.PrincipalARN, Account: r.Caller.Account})
	in := authz.Input{Request: req, KeyAccount: keyAccount}
	if id := s.identityOf(r.Caller.PrincipalARN); id != nil {
		in.Identity = id.policies
	}
	if !authz.LockoutCheck(pol, in).Allowed {
		return wire.Errorf(wire.MalformedPolicyDocument, "The new key policy will not allow you to update the key policy in the future.")
	}
	return nil
}

func checkPolicyName(name string) error {
	if name != "" && name != "default" {
		return wire.Errorf(wire.NotFound, "No such policy exists")
	}
	return nil
}

type GetKeyPolicyInput struct {
	KeyId      string
	PolicyName string
}

type GetKeyPolicyOutput struct {
	Policy     string
	PolicyName string
}

func (s *Service) GetKeyPolicy(ctx context.Context, r *Request, in *GetKeyPolicyInput) (*GetKeyPolicyOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	if err := checkPolicyName(in.PolicyName); err != nil {
		return nil, err
	}
	return &GetKeyPolicyOutput{Policy: k.Policy, PolicyName: "default"}, nil
}

type PutKeyPolicyInput struct {
	KeyId                          string
	PolicyName                     string
	Policy                         string
	BypassPolicyLockoutSafetyCheck bool
}

func (s *Service) PutKeyPolicy(ctx context.Context, r *Request, in *PutKeyPolicyInput) (*Empty, error) {
	if err := checkPolicyName(in.PolicyName); err != nil {
		return nil, err
	}
	pol, err := checkPolicy(in.Policy)
	if err != nil {
		return nil, err
	}
	a := access{cond: conditions("kms:BypassPolicyLockoutSafetyCheck", strconv.FormatBool(in.BypassPolicyLockoutSafetyCheck))}
	_, err = s.update(ctx, r, in.KeyId, a, func(k *store.Key) error {
		if !in.BypassPolicyLockoutSafetyCheck {
			if err := s.checkLockout(r, pol, k.Account, arnOf(k)); err != nil {
				return err
			}
		}
		k.Policy = in.Policy
		return nil
	})
	return &Empty{}, err
}

type ListKeyPoliciesInput struct {
	KeyId  string
	Limit  int
	Marker string
}

type ListKeyPoliciesOutput struct {
	PolicyNames []string
	Truncated   bool
}

func (s *Service) ListKeyPolicies(ctx context.Context, r *Request, in *ListKeyPoliciesInput) (*ListKeyPoliciesOutput, error) {
	if _, err := s.key(ctx, r, in.KeyId, access{}); err != nil {
		return nil, err
	}
	if in.Marker != "" {
		return nil, wire.Errorf(wire.InvalidMarker, "Invalid marker")
	}
	return &ListKeyPoliciesOutput{PolicyNames: []string{"default"}}, nil
}
