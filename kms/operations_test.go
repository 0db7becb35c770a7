package kms

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The table has exactly one row per operation of the AWS model.
func TestOperationTableCoversTheModel(t *testing.T) {
	s := New(Config{})
	var names []string
	for _, op := range s.ops {
		names = append(names, op.name)
	}
	slices.Sort(names)
	require.Equal(t, wire.Operations(), names)
	require.Len(t, names, 54)
}

// The runner takes GrantTokens and DryRun from every input that has them:
// an input type has those members exactly when the model's input does.
func TestInputsCarryGrantTokensAndDryRunAsTheModel(t *testing.T) {
	s := New(Config{})
	for _, op := range s.ops {
		if op.handle == nil {
			continue
		}
		t.Run(op.name, func(t *testing.T) {
			members := wire.InputMembers(op.name)
			in := op.handle.input()
			_, gt := in.(grantTokens)
			_, dr := in.(dryRunner)
			assert.Equal(t, slices.Contains(members, "GrantTokens"), gt, "GrantTokens")
			assert.Equal(t, slices.Contains(members, "DryRun"), dr, "DryRun")
		})
	}
}

// What a grant can allow is declared in the table, and it is exactly the
// model's GrantOperation enum; what CreateGrant accepts for any key type is
// within it.
func TestGrantableActionsAreTheModelsGrantOperations(t *testing.T) {
	s := New(Config{})
	var grantable []string
	for _, op := range s.ops {
		if op.grantable {
			for _, a := range op.keyActions() {
				grantable = append(grantable, strings.TrimPrefix(a, "kms:"))
			}
		}
	}
	assert.ElementsMatch(t, wire.EnumValues("GrantOperation"), grantable)
	for _, usage := range []string{usageEncrypt, usageSign, usageMAC, usageKeyAgreement} {
		for _, spec := range []string{specSymmetric, "RSA_2048", "ECC_NIST_P256", "HMAC_256"} {
			k := keyOf(spec, usage)
			for _, g := range grantOperationsFor(k) {
				assert.Contains(t, grantable, g, "%s %s", spec, usage)
			}
		}
	}
}

// The runner fails closed: a handler that returns success without the
// decisions its operation's contract requires is answered
// AccessDeniedException and logged as a server bug, whatever it did.
func TestRunnerFailsClosed(t *testing.T) {
	var logs bytes.Buffer
	s := New(Config{Logger: hclog.New(&hclog.LoggerOptions{Output: &logs})})
	ids, err := parseIdentities([]Principal{{ARN: "arn:aws:iam::111122223333:user/admin", Account: "111122223333", Policy: AdminPolicy}})
	require.NoError(t, err)
	s.identities.Store(&ids)
	admin := Caller{Account: "111122223333", Region: "us-west-2", PrincipalARN: "arn:aws:iam::111122223333:user/admin"}
	ok := func(record ...decision) *handler {
		return &handler{run: func(_ context.Context, r *Request, _ []byte) (any, error) {
			for _, d := range record {
				r.record(d)
			}
			return &Empty{}, nil
		}}
	}
	keyARN := "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	allow := func(action string, kind resourceKind) decision {
		return decision{action: action, resource: keyARN, kind: kind, allowed: true, by: "test"}
	}
	for _, tc := range []struct {
		name    string
		op      *operation
		caller  Caller
		allowed bool
	}{
		{"key operation that authorized nothing", &operation{name: "DisableKey", auth: authKey, handle: ok()}, admin, false},
		{"key operation that authorized its key", &operation{name: "DisableKey", auth: authKey, handle: ok(allow("kms:DisableKey", onKey))}, admin, true},
		{"key operation that authorized another action", &operation{name: "DisableKey", auth: authKey, handle: ok(allow("kms:EnableKey", onKey))}, admin, false},
		{"ReEncrypt with one side authorized", &operation{name: "ReEncrypt", auth: authKey, actions: []string{"kms:ReEncryptFrom", "kms:ReEncryptTo"},
			handle: ok(allow("kms:ReEncryptFrom", onKey))}, admin, false},
		{"alias operation without its key", &operation{name: "UpdateAlias", auth: authAlias, aliasKeys: 2,
			handle: ok(allow("kms:UpdateAlias", onAlias), allow("kms:UpdateAlias", onKey))}, admin, false},
		{"alias operation with alias and keys", &operation{name: "UpdateAlias", auth: authAlias, aliasKeys: 2,
			handle: ok(allow("kms:UpdateAlias", onAlias), allow("kms:UpdateAlias", onKey), allow("kms:UpdateAlias", onKey))}, admin, true},
		{"a denial recorded beside an allow", &operation{name: "DisableKey", auth: authKey,
			handle: ok(allow("kms:DisableKey", onKey), decision{action: "kms:DisableKey", kind: onKey})}, admin, false},
		{"key-less operation: the runner authorizes it", &operation{name: "ListKeys", auth: authKeyless, handle: ok()}, admin, true},
		{"key-less operation, caller without a policy", &operation{name: "ListKeys", auth: authKeyless, handle: ok()},
			Caller{Account: "111122223333", Region: "us-west-2", PrincipalARN: "arn:aws:iam::111122223333:user/nobody"}, false},
		{"no caller", &operation{name: "ListKeys", auth: authKeyless, handle: ok()}, Caller{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs.Reset()
			out, err := s.route(tc.op).Handle(context.Background(), &wire.Call{RequestID: "r", Identity: tc.caller}, nil)
			if tc.allowed {
				require.NoError(t, err)
				require.NotNil(t, out)
				return
			}
			var we *wire.Error
			require.True(t, errors.As(err, &we), "%v", err)
			assert.Equal(t, wire.AccessDenied, we.Type)
			assert.Nil(t, out)
		})
	}
	// proceed is the same check at the moment an operation acts.
	r := &Request{op: &operation{name: "DisableKey", auth: authKey}}
	require.ErrorIs(t, r.proceed(), errUnauthorized)
	r.record(allow("kms:DisableKey", onKey))
	require.NoError(t, r.proceed())
	r.DryRun = true
	var we *wire.Error
	require.ErrorAs(t, r.proceed(), &we)
	assert.Equal(t, wire.DryRunOperation, we.Type)
}

// A handler that acted without its authorization is logged as a bug.
func TestRunnerLogsAServerBug(t *testing.T) {
	var logs bytes.Buffer
	s := New(Config{Logger: hclog.New(&hclog.LoggerOptions{Output: &logs})})
	op := &operation{name: "DisableKey", auth: authKey, handle: &handler{run: func(context.Context, *Request, []byte) (any, error) {
		return &Empty{}, nil
	}}}
	caller := Caller{Account: "111122223333", Region: "us-west-2", PrincipalARN: "arn:aws:iam::111122223333:user/admin"}
	_, err := s.route(op).Handle(context.Background(), &wire.Call{RequestID: "r", Identity: caller}, nil)
	require.Error(t, err)
	assert.Contains(t, logs.String(), "server bug: operation returned without the authorization its contract requires")
	assert.Contains(t, logs.String(), "operation=DisableKey")
}

func keyOf(spec, usage string) *store.Key { return &store.Key{KeySpec: spec, KeyUsage: usage} }

// The table's rows carry their action and requirements computed once;
// they must be what the contract says.
func TestOperationRowsPrecomputed(t *testing.T) {
	s := New(Config{})
	for _, op := range s.ops {
		assert.Equal(t, "kms:"+op.name, op.action, op.name)
		assert.Equal(t, op.required(), op.requires, op.name)
		assert.NotEmpty(t, op.requires, "%s: a contract without a decision would fail open", op.name)
	}
}
