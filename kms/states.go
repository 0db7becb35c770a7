package kms

import (
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// KeyState is a key's lifecycle state as AWS names it.
//
//	Creating        → Enabled (internal: token object being made; never visible)
//	Enabled         ⇄ Disabled (EnableKey, DisableKey)
//	Enabled/Disabled → PendingDeletion (ScheduleKeyDeletion)
//	PendingDeletion → Disabled (CancelKeyDeletion), or deleted when due
//	Unavailable: reported, never stored, for keys of a disconnected custom
//	key store; the stored state returns when the store reconnects.
type KeyState string

const (
	StateCreating        KeyState = "Creating"
	StateEnabled         KeyState = "Enabled"
	StateDisabled        KeyState = "Disabled"
	StatePendingDeletion KeyState = "PendingDeletion"
	StateUnavailable     KeyState = "Unavailable"
)

// opClass groups operations that AWS treats alike in its key-state table.
type opClass int

const (
	// classCrypto: Encrypt, Decrypt, ReEncrypt, GenerateDataKey*: Enabled only.
	classCrypto opClass = iota
	// classEnableDisable: EnableKey, DisableKey: not while PendingDeletion.
	classEnableDisable
	// classManage: changes to an existing key's settings (description,
	// tags, alias targets, rotation): not while PendingDeletion.
	classManage
	// classRead: DescribeKey, ListResourceTags, GetKeyPolicy, …: any state.
	classRead
)

// checkState says whether an operation of class may run on k, and if not,
// with which exception. It is the single place where AWS's key-state rules
// for the operations here live; states_test.go holds the full table.
func checkState(k *store.Key, class opClass) error {
	state := KeyState(k.State)
	arn := arnOf(k)
	switch class {
	case classRead:
		return nil
	case classCrypto:
		switch state {
		case StateEnabled:
			return nil
		case StateDisabled:
			return wire.Errorf(wire.Disabled, "%s is disabled.", arn)
		}
	case classEnableDisable, classManage:
		if state == StateEnabled || state == StateDisabled {
			return nil
		}
	}
	return invalidState(arn, state)
}

func invalidState(arn string, state KeyState) error {
	switch state {
	case StatePendingDeletion:
		return wire.Errorf(wire.KMSInvalidState, "%s is pending deletion.", arn)
	case StateUnavailable:
		return wire.Errorf(wire.KMSInvalidState, "%s is unavailable.", arn)
	}
	return wire.Errorf(wire.KMSInvalidState, "%s is %s.", arn, state)
}
