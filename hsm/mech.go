package hsm

import (
	"context"
	"crypto"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// mechCache is what hsm has learned about the mechanisms of one token. It
// lives in tokenState, so a rebuild (which may find different firmware
// behind the same label) starts it afresh. Safe for concurrent use.
type mechCache struct {
	mu    sync.Mutex
	list  map[uint]bool // nil until C_GetMechanismList answered
	flags map[uint]uint // mechanism → CKF_* flags from C_GetMechanismInfo

	// oaepRefused holds the hashes for which the token refused the
	// CKM_RSA_PKCS_OAEP parameters; DecryptOAEP goes raw for them.
	oaepRefused sync.Map // crypto.Hash → struct{}
	// oaepUnwrap holds, per hash, whether the token unwraps with
	// CKM_RSA_PKCS_OAEP and that hash (true) or refuses to (false);
	// absent until an import has tried (import.go).
	oaepUnwrap sync.Map // crypto.Hash → bool
	// rsaAESRefused holds the hashes for which the token refused
	// CKM_RSA_AES_KEY_WRAP's parameters; imports take the two halves for
	// them (import.go).
	rsaAESRefused sync.Map // crypto.Hash → struct{}

	edPhMu sync.Mutex
	edPh   int // 0 not yet probed, edPhHonoured or edPhIgnored

	edUnwrapMu sync.Mutex
	edUnwrap   int // 0 not yet probed, edUnwrapOnToken or edUnwrapInProcess (import_ed25519.go)
}

const (
	edPhHonoured = 1
	edPhIgnored  = 2
)

func newMechCache() *mechCache { return &mechCache{flags: map[uint]uint{}} }

// SupportsMechanism reports whether the token offers mech with all of flags
// (CKF_SIGN, CKF_DECRYPT, CKF_GENERATE_KEY_PAIR, CKF_DERIVE, …). The answers
// of C_GetMechanismList and C_GetMechanismInfo are cached for the token
// until its state is rebuilt after a device failure.
func (t *Token) SupportsMechanism(ctx context.Context, mech, flags uint) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	st, err := t.state()
	if err != nil {
		return false, err
	}
	c := st.mechs
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.list == nil {
		ms, err := t.p11.GetMechanismList(st.slot)
		if err != nil {
			return false, wrap("C_GetMechanismList", err)
		}
		c.list = make(map[uint]bool, len(ms))
		for _, m := range ms {
			c.list[m.Mechanism] = true
		}
	}
	if !c.list[mech] {
		return false, nil
	}
	have, ok := c.flags[mech]
	if !ok {
		mi, err := t.p11.GetMechanismInfo(st.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)})
		if code, _ := Code(err); code == pkcs11.CKR_MECHANISM_INVALID {
			c.list[mech] = false
			return false, nil
		}
		if err != nil {
			return false, wrap("C_GetMechanismInfo", err)
		}
		have = mi.Flags
		c.flags[mech] = have
	}
	return have&flags == flags, nil
}

// requireMechanism is SupportsMechanism as an error wrapping
// ErrMechanismNotSupported.
func (t *Token) requireMechanism(ctx context.Context, mech, flags uint, what string) error {
	ok, err := t.SupportsMechanism(ctx, mech, flags)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: the token offers no %s (mechanism 0x%X, flags 0x%X)", ErrMechanismNotSupported, what, mech, flags)
	}
	return nil
}

func (t *Token) oaepRefused(h crypto.Hash) bool {
	st := t.st.Load()
	_, ok := st.mechs.oaepRefused.Load(h)
	return ok
}

func (t *Token) refuseOAEP(h crypto.Hash) {
	t.st.Load().mechs.oaepRefused.Store(h, struct{}{})
}
