package kms

import (
	"context"
	"encoding/json"

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

// checkPolicy validates a policy document's form. Policies are stored and
// returned byte for byte; evaluating them is the authorization layer's job.
func checkPolicy(doc string) error {
	if len(doc) > maxPolicyBytes {
		return wire.Errorf(wire.MalformedPolicyDocument, "The policy document exceeds the maximum size of %d bytes.", maxPolicyBytes)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		return wire.Errorf(wire.MalformedPolicyDocument, "The new key policy will not allow you to update the key policy in the future.")
	}
	if _, ok := v["Statement"]; !ok {
		return wire.Errorf(wire.MalformedPolicyDocument, "Policy is missing required element - Statement")
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

func (s *Service) GetKeyPolicy(ctx context.Context, c *wire.Call, in *GetKeyPolicyInput) (*GetKeyPolicyOutput, error) {
	k, err := s.lookupKey(ctx, c, in.KeyId, false)
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

func (s *Service) PutKeyPolicy(ctx context.Context, c *wire.Call, in *PutKeyPolicyInput) (*Empty, error) {
	if err := checkPolicyName(in.PolicyName); err != nil {
		return nil, err
	}
	if err := checkPolicy(in.Policy); err != nil {
		return nil, err
	}
	err := s.update(ctx, c, in.KeyId, classRead, func(k *store.Key) error {
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

func (s *Service) ListKeyPolicies(ctx context.Context, c *wire.Call, in *ListKeyPoliciesInput) (*ListKeyPoliciesOutput, error) {
	if _, err := s.lookupKey(ctx, c, in.KeyId, false); err != nil {
		return nil, err
	}
	if in.Marker != "" {
		return nil, wire.Errorf(wire.InvalidMarker, "Invalid marker")
	}
	return &ListKeyPoliciesOutput{PolicyNames: []string{"default"}}, nil
}
