package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// HoldSessionForTest borrows a session and runs fn while holding it.
func (t *Token) HoldSessionForTest(ctx context.Context, fn func()) error {
	return t.do(ctx, doOpts{}, func(pkcs11.SessionHandle) error { fn(); return nil })
}
