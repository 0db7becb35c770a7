package hsm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/pkcs11"
)

// DefaultPoolSize is the session pool size when TokenConfig.PoolSize is 0.
const DefaultPoolSize = 8

// TokenConfig says which token to open and how.
type TokenConfig struct {
	// Module is the absolute path of the PKCS#11 library.
	Module string
	// Label or Serial selects the token; exactly one must be set. Slot
	// numbers are not accepted: tokens move between slots.
	Label  string
	Serial string
	// PoolSize bounds the sessions open on the token; it is capped by the
	// token's own maximum. 0 means DefaultPoolSize.
	PoolSize int
	// Wrap, if set, wraps the module's PKCS#11 calls for this token (tests
	// use it to install Faults).
	Wrap func(PKCS11) PKCS11
	// Observer, if set, is told of every PKCS#11 call and every wait for
	// a session (metrics); it sees what Wrap returns.
	Observer Observer
	// Logger receives state changes (never PINs or data). Nil discards.
	Logger hclog.Logger
}

// TokenInfo is what the token says about itself.
type TokenInfo struct {
	Label, Serial, Manufacturer, Model string
	// Flags are the token's CKF_* flags.
	Flags                             uint
	MaxSessionCount, SessionCount     uint
	MaxRwSessionCount, RwSessionCount uint
	MinPINLen, MaxPINLen              uint
}

// SoftHSM reports whether the token is SoftHSM2's, whose quirks some
// callers work around (see softHSMStoreRace).
func (i TokenInfo) SoftHSM() bool { return isSoftHSM(i.Manufacturer) }

func isSoftHSM(manufacturer string) bool {
	return strings.TrimSpace(manufacturer) == SoftHSMManufacturer
}

func tokenInfo(ti pkcs11.TokenInfo) TokenInfo {
	return TokenInfo{
		Label: ti.Label, Serial: ti.SerialNumber, Manufacturer: ti.ManufacturerID, Model: ti.Model,
		Flags:           ti.Flags,
		MaxSessionCount: ti.MaxSessionCount, SessionCount: ti.SessionCount,
		MaxRwSessionCount: ti.MaxRwSessionCount, RwSessionCount: ti.RwSessionCount,
		MinPINLen: ti.MinPinLen, MaxPINLen: ti.MaxPinLen,
	}
}

func (i TokenInfo) Initialized() bool        { return i.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 }
func (i TokenInfo) UserPINInitialized() bool { return i.Flags&pkcs11.CKF_USER_PIN_INITIALIZED != 0 }
func (i TokenInfo) UserPINLocked() bool      { return i.Flags&pkcs11.CKF_USER_PIN_LOCKED != 0 }
func (i TokenInfo) LoginRequired() bool      { return i.Flags&pkcs11.CKF_LOGIN_REQUIRED != 0 }

// Token is an open token: its slot, a bounded session pool, the user login
// and a cache of object handles. All methods are safe for concurrent use.
//
// Failures are handled where the token reports them: a session the token
// calls invalid is closed and the call retried once on a fresh one; a call
// refused with CKR_USER_NOT_LOGGED_IN logs in again once with the PIN from
// the last successful Login; a device failure marks the token unhealthy and
// the next calls rebuild slot, sessions and login with exponential backoff.
// A login the token refuses is never retried: each try burns the PIN counter.
type Token struct {
	cfg TokenConfig
	mod *Module
	p11 PKCS11
	log hclog.Logger

	st      atomic.Pointer[tokenState]
	handles sync.Map // ObjectRef.cacheKey() → pkcs11.ObjectHandle of the token object
	copies  sync.Map // ObjectRef.cacheKey() → pkcs11.ObjectHandle used for crypto (see workingHandle)
	curves  sync.Map // ObjectRef.cacheKey() → *curve of an EC public key: a key's curve never changes
	moduli  sync.Map // ObjectRef.cacheKey() → byte length of an RSA private key's modulus, likewise
	closed  atomic.Bool

	loginMu    sync.Mutex
	pin        string // guarded by loginMu; "" when we hold no login
	loginEpoch atomic.Uint64

	// lastGen numbers the keeper sets (see keeperSet); it only grows.
	lastGen atomic.Uint64

	unhealthy atomic.Bool
	healthMu  sync.Mutex // guards the fields below and rebuilds
	lastErr   error
	nextTry   time.Time
	backoff   time.Duration
}

// tokenState is what a rebuild replaces. The anchor session is never used
// for crypto: it holds the login. Cryptoki drops the login when the last
// session on a token closes, so without it replacing a broken pooled session
// could silently log us out (and private keys would just look absent).
type tokenState struct {
	slot    uint
	pool    *pool
	size    int
	anchor  pkcs11.SessionHandle // guarded by Token.loginMu
	mechs   *mechCache
	keepers atomic.Pointer[keeperSet]
	softHSM bool // the token is SoftHSM2's: see softHSMStoreRace
}

// SoftHSMManufacturer is the manufacturer SoftHSM2 reports for its tokens.
const SoftHSMManufacturer = "SoftHSM project"

// keeperSet is the sessions that hold the session objects made for
// callers (Unwrap, CreatePublicKey), and the generation that the
// references to those objects carry. A session object lives as long as
// the session that made it, so keepers are never closed one by one: the
// whole set is replaced by one with a new generation, then closed
// (Token.dropSessionObjectsLocked), and a reference is valid only while its
// generation is the current set's. The generation is also moved on when
// the login changes: C_Logout destroys an application's private session
// objects, and the token may then give their handle numbers to others.
type keeperSet struct {
	pool *pool
	gen  uint64
}

func (st *tokenState) close(p PKCS11) {
	st.pool.close()
	st.keepers.Load().pool.close()
	_ = p.CloseSession(st.anchor)
}

// keeperCount is how many keeper sessions a token state opens at most:
// enough for unwraps not to queue behind one another on a slow device, few
// enough to leave the pool its sessions.
func keeperCount(poolSize int) int { return max(1, poolSize/4) }

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// OpenToken loads the module (shared with other tokens on the same path) and
// finds the token by label or serial. It does not log in.
func OpenToken(cfg TokenConfig) (*Token, error) {
	if (cfg.Label == "") == (cfg.Serial == "") {
		return nil, errors.New("hsm: exactly one of token label and serial must be set")
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = DefaultPoolSize
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	mod, err := OpenModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	var p PKCS11 = mod.ctx
	if cfg.Wrap != nil {
		p = cfg.Wrap(p)
	}
	if cfg.Observer != nil {
		p = &observed{next: p, obs: cfg.Observer}
	}
	t := &Token{cfg: cfg, mod: mod, p11: p, log: cfg.Logger}
	st, err := t.newState()
	if err != nil {
		mod.Close()
		return nil, err
	}
	t.st.Store(st)
	return t, nil
}

func (t *Token) describe() string {
	if t.cfg.Label != "" {
		return fmt.Sprintf("label %q", t.cfg.Label)
	}
	return fmt.Sprintf("serial %q", t.cfg.Serial)
}

// findSlot looks the token up afresh: slot ids are not stable.
func (t *Token) findSlot() (uint, pkcs11.TokenInfo, error) {
	t.mod.slots.Lock()
	defer t.mod.slots.Unlock()
	slots, err := t.p11.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, wrap("C_GetSlotList", err)
	}
	var found []uint
	var info pkcs11.TokenInfo
	for _, s := range slots {
		ti, err := t.p11.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if (t.cfg.Label != "" && ti.Label == t.cfg.Label) || (t.cfg.Serial != "" && ti.SerialNumber == t.cfg.Serial) {
			found = append(found, s)
			info = ti
		}
	}
	switch len(found) {
	case 0:
		return 0, info, fmt.Errorf("%w: no token with %s in %s", ErrTokenNotFound, t.describe(), t.mod.path)
	case 1:
		return found[0], info, nil
	default:
		return 0, info, fmt.Errorf("%w: %d tokens have %s", ErrTokenNotFound, len(found), t.describe())
	}
}

func (t *Token) newState() (*tokenState, error) {
	slot, info, err := t.findSlot()
	if err != nil {
		return nil, err
	}
	size := t.cfg.PoolSize
	if max := info.MaxRwSessionCount; max != pkcs11.CK_EFFECTIVELY_INFINITE && max != pkcs11.CK_UNAVAILABLE_INFORMATION && int(max) < size {
		size = int(max)
	}
	anchor, err := t.p11.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, wrap("C_OpenSession", err)
	}
	pl := newPool(t.p11, slot, size)
	pl.obs = t.cfg.Observer
	st := &tokenState{slot: slot, pool: pl, size: size, anchor: anchor, mechs: newMechCache(),
		softHSM: isSoftHSM(info.ManufacturerID)}
	st.keepers.Store(t.newKeeperSet(slot, size))
	return st, nil
}

func (t *Token) newKeeperSet(slot uint, size int) *keeperSet {
	return &keeperSet{pool: newPool(t.p11, slot, keeperCount(size)), gen: t.lastGen.Add(1)}
}

// dropSessionObjectsLocked replaces the keeper sessions, closing the old
// ones (which destroys every session object made for callers) after the
// new generation is in place, so that no reference to them stays valid.
// The caller holds loginMu.
func (t *Token) dropSessionObjectsLocked() {
	st := t.st.Load()
	old := st.keepers.Swap(t.newKeeperSet(st.slot, st.size))
	old.pool.close()
}

// PoolSize is the number of sessions the token may hold open at once.
func (t *Token) PoolSize() int { return t.st.Load().size }

// OpenSessions is the number of sessions currently open on the token by this
// Token, busy or idle.
func (t *Token) OpenSessions() int { return int(t.st.Load().pool.open.Load()) }

// SessionsInUse is the number of sessions borrowed from the pool now.
func (t *Token) SessionsInUse() int { return len(t.st.Load().pool.sem) }

// Info reads the token's current information.
func (t *Token) Info() (TokenInfo, error) {
	ti, err := t.p11.GetTokenInfo(t.st.Load().slot)
	if err != nil {
		return TokenInfo{}, wrap("C_GetTokenInfo", err)
	}
	return tokenInfo(ti), nil
}

// Mechanisms lists the mechanisms the token offers.
func (t *Token) Mechanisms() ([]uint, error) {
	ms, err := t.p11.GetMechanismList(t.st.Load().slot)
	if err != nil {
		return nil, wrap("C_GetMechanismList", err)
	}
	out := make([]uint, len(ms))
	for i, m := range ms {
		out[i] = m.Mechanism
	}
	return out, nil
}

// MechanismInfo describes one mechanism; ErrMechanismNotSupported if the
// token does not offer it.
func (t *Token) MechanismInfo(mech uint) (pkcs11.MechanismInfo, error) {
	ms, err := t.Mechanisms()
	if err != nil {
		return pkcs11.MechanismInfo{}, err
	}
	for _, m := range ms {
		if m == mech {
			mi, err := t.p11.GetMechanismInfo(t.st.Load().slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)})
			return mi, wrap("C_GetMechanismInfo", err)
		}
	}
	return pkcs11.MechanismInfo{}, fmt.Errorf("%w: 0x%X", ErrMechanismNotSupported, mech)
}

// Supports reports whether the token offers mech with all of flags
// (CKF_ENCRYPT, CKF_SIGN, …).
func (t *Token) Supports(mech, flags uint) bool {
	mi, err := t.MechanismInfo(mech)
	return err == nil && mi.Flags&flags == flags
}

// Close closes this Token's sessions and releases the module. Cryptoki logs
// the user out when the last session on a token closes, so this ends the
// login unless another Token on the same token still holds sessions.
func (t *Token) Close() error {
	if !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	t.loginMu.Lock()
	t.st.Load().close(t.p11)
	t.pin = ""
	t.loginEpoch.Add(1)
	t.loginMu.Unlock()
	return t.mod.Close()
}

// Health is nil while the token works, else the failure that made it
// unhealthy.
func (t *Token) Health() error {
	if !t.unhealthy.Load() {
		return nil
	}
	t.healthMu.Lock()
	defer t.healthMu.Unlock()
	return t.lastErr
}

func (t *Token) markUnhealthy(err error) {
	t.healthMu.Lock()
	defer t.healthMu.Unlock()
	if t.unhealthy.Load() {
		return
	}
	t.log.Warn("token unhealthy", "token", t.describe(), "error", err)
	t.lastErr = err
	t.backoff = minBackoff
	t.nextTry = time.Now().Add(t.backoff)
	t.unhealthy.Store(true)
}

// state returns the current slot and pool, rebuilding them first if the
// token was marked unhealthy and its backoff has passed.
//
// Lock order: loginMu may be held while taking healthMu (markUnhealthy),
// never the other way round, so the re-login after a rebuild happens after
// healthMu is released.
func (t *Token) state() (*tokenState, error) {
	if t.closed.Load() {
		return nil, ErrClosed
	}
	if !t.unhealthy.Load() {
		return t.st.Load(), nil
	}
	st, rebuilt, err := t.rebuild()
	if err != nil {
		return nil, err
	}
	if rebuilt {
		t.loginMu.Lock()
		if t.pin != "" {
			if err := t.loginLocked(t.pin); err != nil {
				t.log.Warn("login after token recovery refused; not retrying", "token", t.describe(), "error", err)
			}
		}
		t.loginMu.Unlock()
	}
	return st, nil
}

func (t *Token) rebuild() (st *tokenState, rebuilt bool, err error) {
	t.healthMu.Lock()
	defer t.healthMu.Unlock()
	if !t.unhealthy.Load() {
		return t.st.Load(), false, nil
	}
	if time.Now().Before(t.nextTry) {
		return nil, false, t.lastErr
	}
	st, err = t.newState()
	if err != nil {
		t.lastErr = err
		t.backoff = min(2*t.backoff, maxBackoff)
		t.nextTry = time.Now().Add(t.backoff)
		return nil, false, err
	}
	t.loginMu.Lock()     // the old anchor is guarded by loginMu
	old := t.st.Swap(st) // the old keepers, and every object on them, go with old
	t.loginMu.Unlock()
	old.close(t.p11)
	t.handles.Clear()
	t.copies.Clear()
	t.unhealthy.Store(false)
	t.lastErr = nil
	t.log.Info("token recovered", "token", t.describe())
	return st, true, nil
}

type doOpts struct {
	retrySession bool // retry once on a fresh session after a CKR_SESSION_* error
	relogin      bool // log in again once after CKR_USER_NOT_LOGGED_IN
	// storeRace: fn makes a token object with one creating call and
	// nothing else the token keeps; on SoftHSM2, a failure of that call
	// (see softHSMStoreRace) is tried once more.
	storeRace bool
}

var (
	hotPath = doOpts{retrySession: true, relogin: true}
	// makeTokenObject is hotPath for a function that makes one token
	// object (or key pair).
	makeTokenObject = doOpts{retrySession: true, relogin: true, storeRace: true}
)

// softHSMStoreRace reports whether err is how SoftHSM2 2.6 fails to store
// a new token object while another session of the process writes the same
// token's object store (its issue 573, fixed after 2.6.1): the creating call
// answers CKR_GENERAL_ERROR or CKR_FUNCTION_FAILED, having removed whatever
// it made, and the same call succeeds when made again. Seen as one failed
// import-key generation in ~30 parallel test runs.
func softHSMStoreRace(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Op {
	case "C_GenerateKeyPair", "C_GenerateKey", "C_CreateObject":
		return e.Code == pkcs11.CKR_GENERAL_ERROR || e.Code == pkcs11.CKR_FUNCTION_FAILED
	}
	return false
}

// do runs fn on a pooled session and handles what the token says about the
// session, the login and the device. fn wraps its own errors with wrap().
func (t *Token) do(ctx context.Context, o doOpts, fn func(pkcs11.SessionHandle) error) error {
	st, err := t.state()
	if err != nil {
		return err
	}
	retried, relogged, remade := false, false, false
	for {
		epoch := t.loginEpoch.Load()
		s, err := st.pool.get(ctx)
		if err != nil {
			if IsDeviceFailure(err) {
				t.markUnhealthy(err)
			}
			return err
		}
		err = st.use(s, fn)
		code, fromToken := Code(err)
		switch {
		case err == nil || !fromToken:
			return err
		case IsDeviceFailure(err):
			t.markUnhealthy(err)
			return err
		case isSessionError(code) && o.retrySession && !retried:
			retried = true
			continue
		case o.storeRace && st.softHSM && !remade && softHSMStoreRace(err):
			remade = true
			t.log.Warn("SoftHSM2 failed to store a new token object (its known race between sessions): trying once more", "token", t.describe(), "error", err)
			continue
		case code == pkcs11.CKR_USER_NOT_LOGGED_IN && o.relogin && !relogged:
			relogged = true
			if lerr := t.relogin(epoch); lerr != nil {
				return fmt.Errorf("%w (log in again: %w)", err, lerr)
			}
			continue
		}
		return err
	}
}

// use runs fn on s, a session borrowed from the pool, and gives it back in
// a defer, so that not even a panic in fn can keep a pool slot. A session
// the token called broken, or one fn panicked on (an operation may be left
// active on it), is closed rather than reused.
func (st *tokenState) use(s pkcs11.SessionHandle, fn func(pkcs11.SessionHandle) error) (err error) {
	discard := true
	defer func() { st.pool.put(s, discard) }()
	err = fn(s)
	var tainted *taintedSession
	if errors.As(err, &tainted) {
		// fn left an object on s it could not destroy (an extractable
		// key it made for wrapping): closing s destroys it.
		return tainted.err
	}
	code, fromToken := Code(err)
	discard = fromToken && (isSessionError(code) || IsDeviceFailure(err))
	return err
}

// taintedSession is what a function run on a pooled session returns when
// it leaves an object on the session that must not outlive the call: use
// closes the session instead of pooling it, and returns err (which may be
// nil: the call itself succeeded).
type taintedSession struct{ err error }

func (e *taintedSession) Error() string {
	if e.err == nil {
		return "hsm: session must be closed"
	}
	return e.err.Error()
}

func (e *taintedSession) Unwrap() error { return e.err }

// onAnchor runs fn on the anchor session; the caller holds loginMu. A broken
// anchor is replaced (the call is not retried: it may have been a login).
func (t *Token) onAnchor(fn func(pkcs11.SessionHandle) error) error {
	if t.closed.Load() {
		return ErrClosed
	}
	st := t.st.Load()
	err := fn(st.anchor)
	code, fromToken := Code(err)
	switch {
	case !fromToken:
	case IsDeviceFailure(err):
		t.markUnhealthy(err)
	case isSessionError(code):
		_ = t.p11.CloseSession(st.anchor)
		if s, oerr := t.p11.OpenSession(st.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); oerr == nil {
			st.anchor = s
		}
	}
	return err
}

// Login logs the user (CKU_USER) in. Login state is per token for the whole
// process, so one login serves every session. CKR_USER_ALREADY_LOGGED_IN
// counts as success. The PIN is kept in memory to log in again after the
// token drops the login; a refused PIN is forgotten and never retried.
func (t *Token) Login(ctx context.Context, pin string) error {
	if _, err := t.state(); err != nil {
		return err
	}
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	return t.loginLocked(pin)
}

func (t *Token) loginLocked(pin string) error {
	t.loginEpoch.Add(1)
	t.dropSessionObjectsLocked()
	err := t.onAnchor(func(s pkcs11.SessionHandle) error {
		err := t.p11.Login(s, pkcs11.CKU_USER, pin)
		if code, _ := Code(err); code == pkcs11.CKR_USER_ALREADY_LOGGED_IN {
			return nil
		}
		return wrap("C_Login", err)
	})
	if err != nil {
		t.pin = ""
		return err
	}
	t.pin = pin
	return nil
}

func (t *Token) relogin(epoch uint64) error {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	if t.loginEpoch.Load() != epoch {
		return nil // someone logged in (or out) since our call started
	}
	if t.pin == "" {
		return ErrUserNotLoggedIn
	}
	t.log.Info("token dropped the login; logging in again", "token", t.describe())
	return t.loginLocked(t.pin)
}

// RememberPIN replaces the PIN a logged-in token logs in with again after
// the token drops the login: the PIN changed, elsewhere (another process
// changed it with C_SetPIN), while this process stayed logged in. A token
// not logged in is left alone.
func (t *Token) RememberPIN(pin string) {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	if t.pin != "" {
		t.pin = pin
	}
}

// Logout logs the user out of the token (every session of this process) and
// forgets the PIN.
func (t *Token) Logout(ctx context.Context) error {
	if _, err := t.state(); err != nil {
		return err
	}
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	t.pin = ""
	t.loginEpoch.Add(1)
	t.dropSessionObjectsLocked()
	return t.onAnchor(func(s pkcs11.SessionHandle) error {
		err := t.p11.Logout(s)
		if code, _ := Code(err); code == pkcs11.CKR_USER_NOT_LOGGED_IN {
			return nil
		}
		return wrap("C_Logout", err)
	})
}

// SetPIN changes the user PIN from oldPIN to newPIN (C_SetPIN in a user or
// public session). On success a remembered login PIN becomes newPIN.
func (t *Token) SetPIN(ctx context.Context, oldPIN, newPIN string) error {
	if _, err := t.state(); err != nil {
		return err
	}
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	err := t.onAnchor(func(s pkcs11.SessionHandle) error {
		return wrap("C_SetPIN", t.p11.SetPIN(s, oldPIN, newPIN))
	})
	if err == nil && t.pin != "" {
		t.pin = newPIN
	}
	return err
}

// InitPIN logs in as the security officer, sets a new user PIN and logs the
// SO out: the recovery path for a lost or locked user PIN. The token refuses
// it (ErrAnotherUserLoggedIn) while the user is logged in in this process.
func (t *Token) InitPIN(ctx context.Context, soPIN, newUserPIN string) error {
	if _, err := t.state(); err != nil {
		return err
	}
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	return t.onAnchor(func(s pkcs11.SessionHandle) error {
		if err := t.p11.Login(s, pkcs11.CKU_SO, soPIN); err != nil {
			return wrap("C_Login", err)
		}
		err := wrap("C_InitPIN", t.p11.InitPIN(s, newUserPIN))
		if lerr := t.p11.Logout(s); lerr != nil && err == nil {
			err = wrap("C_Logout", lerr)
		}
		return err
	})
}
