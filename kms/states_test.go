package kms

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hsmkms/hsmkms/kms/store"
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
	creating := wire.KMSInvalidState + ": " + arn + " is creating."
	pendingReplica := wire.KMSInvalidState + ": " + arn + " is pending replica deletion."
	// Only a replica is ever found Creating: it can be managed, not used.
	states := []KeyState{StateEnabled, StateDisabled, StatePendingDeletion, StatePendingImport, StateCreating, StatePendingReplicaDeletion}
	rules := map[string]struct {
		rule stateRule
		want []string // by states
	}{
		"anyState":        {anyState, []string{ok, ok, ok, ok, ok, ok}},
		"usable":          {usable, []string{ok, disabledErr, pending, pendingImport, creating, pendingReplica}},
		"manageable":      {manageable, []string{ok, ok, pending, ok, ok, pendingReplica}},
		"enableDisable":   {enableDisable, []string{ok, ok, pending, pendingImport, creating, pendingReplica}},
		"pendingDeletion": {pendingDeletion, []string{notPending, notPending, ok, notPending, notPending, ok}},
		"rotating":        {rotating, []string{ok, disabledErr, pending, pendingImport, creating, pendingReplica}},
		// ScheduleKeyDeletion also takes a key waiting for its material;
		// DeleteImportedKeyMaterial any key there is (a key pending
		// deletion keeps that state).
		"schedulable":      {schedulable, []string{ok, ok, pending, ok, creating, pendingReplica}},
		"importedMaterial": {importedMaterial, []string{ok, ok, ok, ok, creating, ok}},
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

// TestUpdatingState: while UpdatePrimaryRegion moves the primary, the old
// and the new primary are Updating: usable and describable as their
// stored state allows, and nothing else; other keys of the set are not.
func TestUpdatingState(t *testing.T) {
	t.Parallel()
	s := &Service{}
	key := func(region, state string) *store.Key {
		return &store.Key{Account: "111122223333", Region: region, ID: "mrk-0123456789abcdef0123456789abcdef", State: state,
			MultiRegion: true, PrimaryRegion: "us-east-1", NewPrimaryRegion: "eu-west-1"}
	}
	for _, region := range []string{"us-east-1", "eu-west-1"} {
		k := key(region, string(StateEnabled))
		arn := arnOf(k)
		require.Equal(t, StateUpdating, s.effectiveState(k))
		requireStateErr(t, "", s.checkState(k, usable))
		requireStateErr(t, "", s.checkState(k, anyState))
		for _, rule := range []stateRule{manageable, enableDisable, rotating} {
			requireStateErr(t, wire.KMSInvalidState+": "+arn+" is updating.", s.checkState(k, rule))
		}
		requireStateErr(t, wire.Disabled+": "+arn+" is disabled.", s.checkState(key(region, string(StateDisabled)), usable))
	}
	other := key("ap-south-1", string(StateEnabled))
	require.Equal(t, StateEnabled, s.effectiveState(other))
	requireStateErr(t, "", s.checkState(other, enableDisable))
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
