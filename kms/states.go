package kms

import (
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// KeyState is a key's lifecycle state as AWS names it.
//
//	Creating        → Enabled (internal: token object being made; never visible)
//	PendingImport   → Enabled (ImportKeyMaterial: an EXTERNAL key, once all
//	                  its material is imported)
//	Enabled/Disabled → PendingImport (DeleteImportedKeyMaterial, or its
//	                  material's ValidTo passing: EXTERNAL keys)
//	Enabled         ⇄ Disabled (EnableKey, DisableKey)
//	Enabled/Disabled → PendingDeletion (ScheduleKeyDeletion)
//	PendingImport   → PendingDeletion (ScheduleKeyDeletion)
//	PendingDeletion → Disabled (CancelKeyDeletion; PendingImport for an
//	                  EXTERNAL key missing material), or deleted when due
//	Unavailable: reported, never stored, for keys of a custom key store that
//	is not connected; the stored state returns when the store reconnects.
//	A key pending deletion stays PendingDeletion, so it can be cancelled.
//
// Multi-Region keys (multiregion.go) add:
//
//	Creating → Enabled       a replica (ReplicateKey): visible and manageable,
//	                         not usable, until the Service finishes it;
//	                         PendingImport instead for a replica of imported
//	                         material, until it imports its own
//	Enabled/Disabled → PendingReplicaDeletion (ScheduleKeyDeletion of a
//	                         primary with replicas) → PendingDeletion when
//	                         the last replica is deleted; CancelKeyDeletion
//	                         → Disabled
//	Updating: reported, never stored, for the old and new primary while
//	UpdatePrimaryRegion moves the primary (Key.NewPrimaryRegion set); the
//	stored state still rules cryptographic use.
type KeyState string

const (
	StateCreating        KeyState = "Creating"
	StateEnabled         KeyState = "Enabled"
	StateDisabled        KeyState = "Disabled"
	StatePendingDeletion KeyState = "PendingDeletion"
	StatePendingImport   KeyState = "PendingImport"
	StateUnavailable     KeyState = "Unavailable"
	// Multi-Region keys.
	StatePendingReplicaDeletion KeyState = "PendingReplicaDeletion"
	StateUpdating               KeyState = "Updating"
)

// stateRule is which key states allow an operation; the operation table
// gives each operation on a key its rule, and checkState is the single
// place where the rules are applied. states_test.go holds the whole
// (state, rule) table.
type stateRule int

const (
	// anyState: DescribeKey, the lists, policies, grants' retire and
	// revoke, DeleteAlias.
	anyState stateRule = iota
	// usable: cryptographic use. Enabled only; Disabled is
	// DisabledException; an unavailable key is KMSInvalidStateException.
	usable
	// manageable: changing an existing key's settings (description, tags,
	// aliases, grants): any state but PendingDeletion.
	manageable
	// enableDisable: EnableKey, DisableKey, ScheduleKeyDeletion: Enabled
	// or Disabled.
	enableDisable
	// pendingDeletion: CancelKeyDeletion.
	pendingDeletion
	// rotating: rotation settings and rotating: Enabled only, Disabled
	// being DisabledException.
	rotating
	// schedulable: ScheduleKeyDeletion: Enabled, Disabled or
	// PendingImport.
	schedulable
	// importedMaterial: DeleteImportedKeyMaterial: Enabled, Disabled,
	// PendingImport or PendingDeletion.
	importedMaterial
)

// effectiveState is the state AWS reports for k: its stored state, or
// Unavailable for a key of a custom key store that is not connected (a
// key pending deletion stays PendingDeletion).
func (s *Service) effectiveState(k *store.Key) KeyState {
	state := KeyState(k.State)
	if updating(k) {
		return StateUpdating
	}
	if k.CustomKeyStoreID == "" || state == StatePendingDeletion {
		return state
	}
	if k.Origin == originXKS {
		if s.xksConnected(k.CustomKeyStoreID) != nil {
			return state
		}
		return StateUnavailable
	}
	if live, err := s.keystores.Get(k.CustomKeyStoreID); err == nil {
		if st, _ := live.State(); st == keystore.Connected {
			return state
		}
	}
	return StateUnavailable
}

// checkState says whether an operation with rule may run on k now, and if
// not, with which exception.
func (s *Service) checkState(k *store.Key, rule stateRule) error {
	stored := KeyState(k.State)
	if updating(k) && rule != anyState && rule != usable {
		return invalidState(arnOf(k), StateUpdating)
	}
	unavailable := rule == usable && s.effectiveState(k) == StateUnavailable
	if unavailable && k.Origin == originXKS {
		// The specification's message for a key whose external key
		// store is not connected.
		return wire.Errorf(wire.KMSInvalidState, "%s", msgXksNotConnected)
	}
	return stateError(rule, stored, unavailable, arnOf(k))
}

// stateError applies rule to a key in stored state; unavailable says its
// custom key store is not connected (only cryptographic use cares).
func stateError(rule stateRule, stored KeyState, unavailable bool, arn string) error {
	switch rule {
	case anyState:
		return nil
	case usable:
		switch {
		case unavailable:
			return invalidState(arn, StateUnavailable)
		case stored == StateEnabled:
			return nil
		case stored == StateDisabled:
			return disabled(arn)
		}
	case manageable:
		// A replica is manageable while Creating (other keys in Creating
		// are never found).
		if stored == StateEnabled || stored == StateDisabled || stored == StatePendingImport || stored == StateCreating {
			return nil
		}
	case enableDisable:
		if stored == StateEnabled || stored == StateDisabled {
			return nil
		}
	case pendingDeletion:
		if stored == StatePendingDeletion || stored == StatePendingReplicaDeletion {
			return nil
		}
		return wire.Errorf(wire.KMSInvalidState, "%s is not pending deletion.", arn)
	case schedulable:
		if stored == StateEnabled || stored == StateDisabled || stored == StatePendingImport {
			return nil
		}
	case importedMaterial:
		if stored != StateCreating {
			return nil
		}
	case rotating:
		switch stored {
		case StateEnabled:
			return nil
		case StateDisabled:
			return disabled(arn)
		}
	}
	return invalidState(arn, stored)
}

func disabled(arn string) error { return wire.Errorf(wire.Disabled, "%s is disabled.", arn) }

func invalidState(arn string, state KeyState) error {
	switch state {
	case StatePendingDeletion:
		return wire.Errorf(wire.KMSInvalidState, "%s is pending deletion.", arn)
	case StatePendingImport:
		return wire.Errorf(wire.KMSInvalidState, "%s is pending import.", arn)
	case StateUnavailable:
		return wire.Errorf(wire.KMSInvalidState, "%s is unavailable.", arn)
	case StateCreating:
		return wire.Errorf(wire.KMSInvalidState, "%s is creating.", arn)
	case StatePendingReplicaDeletion:
		return wire.Errorf(wire.KMSInvalidState, "%s is pending replica deletion.", arn)
	case StateUpdating:
		return wire.Errorf(wire.KMSInvalidState, "%s is updating.", arn)
	}
	return wire.Errorf(wire.KMSInvalidState, "%s is %s.", arn, state)
}
