package hsm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/miekg/pkcs11"
)

// Module is a loaded, initialised PKCS#11 library. Cryptoki allows one
// C_Initialize per library per process, so modules are shared: OpenModule
// returns the same Module for the same path and counts references, and the
// last Close calls C_Finalize. Safe for concurrent use.
type Module struct {
	path string
	ctx  *pkcs11.Ctx
	refs int // guarded by modules.mu
	// slots serialises the calls that read or change the module's slot
	// list (C_GetSlotList, C_InitToken): SoftHSM2's slot manager is not
	// safe for them concurrently (two C_GetSlotList calls racing a
	// C_InitToken abort the process on an assertion in
	// SlotManager::insertToken). They are rare: opening a token, rebuilding
	// it after a device failure, provisioning.
	slots sync.Mutex
}

var modules = struct {
	mu sync.Mutex
	m  map[string]*Module
}{m: map[string]*Module{}}

// OpenModule loads and initialises the PKCS#11 library at path, which must be
// absolute: a relative path would be resolved by the dynamic loader's search
// path, letting the environment choose which code handles our keys.
func OpenModule(path string) (*Module, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%w: module path %q is not absolute", ErrModuleLoad, path)
	}
	path = filepath.Clean(path)
	modules.mu.Lock()
	defer modules.mu.Unlock()
	if m, ok := modules.m[path]; ok {
		m.refs++
		return m, nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrModuleLoad, path, errors.Unwrap(err))
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: %s: not a PKCS#11 library", ErrModuleLoad, path)
	}
	// CKF_OS_LOCKING_OK is miekg/pkcs11's default: the library may use
	// native locks, which is what lets many goroutines share it.
	if err := ctx.Initialize(); err != nil {
		if code, _ := Code(err); code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			ctx.Destroy()
			return nil, fmt.Errorf("%w: %s: %w", ErrModuleLoad, path, wrap("C_Initialize", err))
		}
	}
	m := &Module{path: path, ctx: ctx, refs: 1}
	modules.m[path] = m
	return m, nil
}

// Path is the absolute path the module was loaded from.
func (m *Module) Path() string { return m.path }

// Close drops one reference; the last one finalises and unloads the library.
func (m *Module) Close() error {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	if m.refs <= 0 {
		return nil
	}
	m.refs--
	if m.refs > 0 {
		return nil
	}
	delete(modules.m, m.path)
	err := m.ctx.Finalize()
	m.ctx.Destroy()
	return wrap("C_Finalize", err)
}

// Tokens lists the initialised tokens the module can see now.
func (m *Module) Tokens() ([]TokenInfo, error) {
	m.slots.Lock()
	defer m.slots.Unlock()
	return listTokens(m.ctx)
}

func listTokens(p PKCS11) ([]TokenInfo, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return nil, wrap("C_GetSlotList", err)
	}
	var out []TokenInfo
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue // a slot emptied between the two calls
		}
		info := tokenInfo(ti)
		if info.Initialized() {
			out = append(out, info)
		}
	}
	return out, nil
}

// InitToken initialises the first uninitialised token the module offers
// with label and SO PIN, then sets its user PIN, and returns its info. It is
// for provisioning (first run, tests): SoftHSM2 always keeps one empty slot
// and, unlike a second process running softhsm2-util, this one sees the new
// token at once because it never rescans its token directory.
func (m *Module) InitToken(label, soPIN, userPIN string) (TokenInfo, error) {
	if label == "" || len(label) > 32 {
		return TokenInfo{}, fmt.Errorf("hsm: token label must be 1-32 bytes")
	}
	// Serialised: two callers never pick the same empty slot, and no
	// slot list is read while the token list changes.
	m.slots.Lock()
	defer m.slots.Unlock()
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return TokenInfo{}, wrap("C_GetSlotList", err)
	}
	for _, slot := range slots {
		ti, err := m.ctx.GetTokenInfo(slot)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			continue
		}
		if err := m.ctx.InitToken(slot, soPIN, label); err != nil {
			return TokenInfo{}, wrap("C_InitToken", err)
		}
		s, err := m.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return TokenInfo{}, wrap("C_OpenSession", err)
		}
		defer m.ctx.CloseSession(s)
		if userPIN == "" { // the SO sets the user up later, with InitPIN
			ti, err = m.ctx.GetTokenInfo(slot)
			return tokenInfo(ti), wrap("C_GetTokenInfo", err)
		}
		if err := m.ctx.Login(s, pkcs11.CKU_SO, soPIN); err != nil {
			return TokenInfo{}, wrap("C_Login", err)
		}
		defer m.ctx.Logout(s)
		if err := m.ctx.InitPIN(s, userPIN); err != nil {
			return TokenInfo{}, wrap("C_InitPIN", err)
		}
		ti, err = m.ctx.GetTokenInfo(slot)
		return tokenInfo(ti), wrap("C_GetTokenInfo", err)
	}
	return TokenInfo{}, fmt.Errorf("%w: no slot with an uninitialised token", ErrTokenNotFound)
}
