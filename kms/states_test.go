package kms

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/require"
)

// TestStateRules is AWS's key-state table for the rules the operation
// table uses: every (rule, state) pair, allowed or with its exception.
func TestStateRules(t *testing.T) {
	t.Parallel()
	arn := "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	ok := ""
	disabledErr := wire.Disabled + ": " + arn + " is disabled."
	pending := wire.KMSInvalidState + ": " + arn + " is pending deletion."
	pendingImport := wire.KMSInvalidState + ": " + arn + " is pending import."
	unavailable := wire.KMSInvalidState + ": " + arn + " is unavailable."
	notPending := wire.KMSInvalidState + ": " + arn + " is not pending deletion."
	creating := wire.KMSInvalidState + ": " + arn + " is Creating."
	states := []KeyState{StateEnabled, StateDisabled, StatePendingDeletion, StatePendingImport, StateCreating}
	rules := map[string]struct {
		rule stateRule
		want []string // by states
	}{
		"anyState":        {anyState, []string{ok, ok, ok, ok, ok}},
		"usable":          {usable, []string{ok, disabledErr, pending, pendingImport, creating}},
		"manageable":      {manageable, []string{ok, ok, pending, ok, creating}},
		"enableDisable":   {enableDisable, []string{ok, ok, pending, pendingImport, creating}},
		"pendingDeletion": {pendingDeletion, []string{notPending, notPending, ok, notPending, notPending}},
		"rotating":        {rotating, []string{ok, disabledErr, pending, pendingImport, creating}},
		// ScheduleKeyDeletion also takes a key waiting for its material;
		// DeleteImportedKeyMaterial any key there is (a key pending
		// deletion keeps that state).
		"schedulable":      {schedulable, []string{ok, ok, pending, ok, creating}},
		"importedMaterial": {importedMaterial, []string{ok, ok, ok, ok, creating}},
	}
	for name, rc := range rules {
		for i, st := range states {
			t.Run(fmt.Sprintf("%s/%s", name, st), func(t *testing.T) {
				requireStateErr(t, rc.want[i], stateError(rc.rule, st, false, arn))
			})
		}
	}
	// A key of a disconnected custom key store is unavailable for
	// cryptographic use whatever its stored state, and only for that.
	for _, st := range []KeyState{StateEnabled, StateDisabled} {
		t.Run("unavailable/usable/"+string(st), func(t *testing.T) {
			requireStateErr(t, unavailable, stateError(usable, st, true, arn))
		})
		t.Run("unavailable/manageable/"+string(st), func(t *testing.T) {
			requireStateErr(t, ok, stateError(manageable, st, true, arn))
		})
	}
}

func requireStateErr(t *testing.T, want string, err error) {
	t.Helper()
	if want == "" {
		require.NoError(t, err)
		return
	}
	var we *wire.Error
	require.True(t, errors.As(err, &we), "%v", err)
	require.Equal(t, want, we.Type+": "+we.Message)
}
