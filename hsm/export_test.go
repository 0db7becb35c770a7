package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// HoldSessionForTest borrows a session and runs fn while holding it.
func (t *Token) HoldSessionForTest(ctx context.Context, fn func()) error {
	return t.do(ctx, doOpts{}, func(pkcs11.SessionHandle) error { fn(); return nil })
}

// RawForTest runs fn on a pooled session with the module's own context, for
// tests that must call what hsm never does (C_SetAttributeValue) or see
// what the token does with a template hsm would never send.
func (t *Token) RawForTest(ctx context.Context, fn func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error) error {
	return t.do(ctx, doOpts{}, func(s pkcs11.SessionHandle) error { return fn(t.mod.ctx, s) })
}

// HandleForTest resolves ref as operations do.
func (t *Token) HandleForTest(ctx context.Context, ref ObjectRef) (h pkcs11.ObjectHandle, err error) {
	err = t.do(ctx, doOpts{}, func(s pkcs11.SessionHandle) error {
		h, err = t.handle(s, ref)
		return err
	})
	return h, err
}
