package keystore

import "sync/atomic"

// Crash tests kill the real server at each step of a domain key rotation
// and of multi-Region keys' transitions
// (cmd/hsmkms, HSMKMS_KILL_AT): the steps are named here, and a hook set
// with SetStepHook hears each one as it completes. Without a hook a step
// costs one atomic load.
const (
	StepDomainKeyRecorded   = "domain-key:recorded"   // a new domain key recorded PENDING
	StepDomainKeyMade       = "domain-key:made"       // and made on the token
	StepDomainKeyActive     = "domain-key:active"     // and made ACTIVE, the old one RETIRED
	StepMaterialRewrapped   = "domain-key:rewrapped"  // one material version recorded rewrapped (kms)
	StepDomainKeyDestroying = "domain-key:destroying" // a RETIRED key recorded DESTROYING
	StepDomainKeyDestroyed  = "domain-key:destroyed"  // and its token object destroyed

	// Multi-Region keys (kms).
	StepReplicaRecorded     = "multi-region:replica-recorded" // a replica recorded Creating, before ReplicateKey answers
	StepPrimaryMoveRecorded = "multi-region:move-recorded"    // UpdatePrimaryRegion's move recorded, before it answers
	StepReplicaDeleted      = "multi-region:replica-deleted"  // a key deleted from its set, the material kept
	// Importing key material (kms/import.go).
	StepImportUnwrapped = "import:unwrapped" // material unwrapped on the token, nothing recorded
	StepImportPending   = "import:pending"   // token objects: the version recorded pending import
	StepImportMade      = "import:made"      // and its token objects made
	StepImportDeleted   = "import:deleted"   // a deletion recorded, the material not yet destroyed
)

var stepHook atomic.Pointer[func(string)]

// SetStepHook makes fn hear every step from now on (nil: none).
func SetStepHook(fn func(step string)) {
	if fn == nil {
		stepHook.Store(nil)
		return
	}
	stepHook.Store(&fn)
}

// Step reports that step has completed.
func Step(step string) {
	if fn := stepHook.Load(); fn != nil {
		(*fn)(step)
	}
}
