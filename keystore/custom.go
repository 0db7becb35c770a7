package keystore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
)

// ConnectionState is a custom key store's state, as AWS names it.
type ConnectionState string

const (
	Disconnected  ConnectionState = "DISCONNECTED"
	Connecting    ConnectionState = "CONNECTING"
	Connected     ConnectionState = "CONNECTED"
	Failed        ConnectionState = "FAILED"
	Disconnecting ConnectionState = "DISCONNECTING"
)

// ErrorCode is AWS's ConnectionErrorCode, derived from what the token said.
type ErrorCode string

const (
	InvalidCredentials ErrorCode = "INVALID_CREDENTIALS"        // CKR_PIN_INCORRECT
	UserLockedOut      ErrorCode = "USER_LOCKED_OUT"            // CKR_PIN_LOCKED, CKF_USER_PIN_LOCKED
	UserNotFound       ErrorCode = "USER_NOT_FOUND"             // CKR_USER_PIN_NOT_INITIALIZED
	UserLoggedIn       ErrorCode = "USER_LOGGED_IN"             // CKR_USER_ANOTHER_ALREADY_LOGGED_IN
	ClusterNotFound    ErrorCode = "CLUSTER_NOT_FOUND"          // no module, no such token, wrong device
	InsufficientHSMs   ErrorCode = "INSUFFICIENT_CLOUDHSM_HSMS" // CKR_TOKEN_NOT_PRESENT
	NetworkErrors      ErrorCode = "NETWORK_ERRORS"             // device errors, timeouts
	InternalError      ErrorCode = "INTERNAL_ERROR"             // anything else
)

// Cluster is a token declared in the configuration as able to back a
// custom key store: AWS's CloudHSM cluster. The expected identity, where
// given, guards against a different device answering to the same label.
type Cluster struct {
	ID                          string
	Token                       hsm.TokenConfig
	Manufacturer, Model, Serial string
	// Material is how a key store on the cluster holds the material of
	// its keys; the zero value is token objects, as AWS keeps a CloudHSM
	// key store's keys in the cluster.
	Material MaterialConfig
}

// Passwords keeps each custom key store's kmsuser password (the token's
// user PIN) durably. A rotation first records the new password as pending,
// then changes it on the token, then commits it, so a crash at any point
// leaves a password that logs in among the two recorded.
type Passwords interface {
	Password(ctx context.Context, storeID string) (current, pending string, err error)
	SetPending(ctx context.Context, storeID, pending string) error
	CommitPending(ctx context.Context, storeID string) error
}

// ErrInvalidState: the store's connection state does not allow the change.
var ErrInvalidState = errors.New("keystore: key store is not in a state that allows this")

// custom is the connection side of a custom key store's Store.
type custom struct {
	cluster Cluster
	guard   *Safeguards      // nil: no identity check, no token.object copies
	domain  DomainKeyRecords // nil: no key hierarchy
	mu      sync.Mutex       // serialises connect and disconnect
	state   atomic.Pointer[status]
	// seen is, for a SoftHSM2 token, the user PIN this process last
	// logged in with or set (in memory only; guarded by mu): see
	// softHSMView.
	seen string
}

// A SoftHSM2 process reads a token's PIN blobs when the module loads, and
// afterwards sees only the PIN changes it makes itself: after another
// process changes the kmsuser password, this one refuses the new password
// and still takes the one it knew, until it restarts (hsm's shared-token
// tests show it). Several nodes sharing a SoftHSM2 token store are
// several such processes. So, for SoftHSM2 tokens only (which never lock
// a user out), a node whose login or PIN change with the recorded
// password is refused tries once more with the password it last used
// itself: the same token key, wrapped under the PIN this process still
// holds. An HSM proper sees every change and never gets the second try.
func softHSMView(info hsm.TokenInfo, seen, tried string) (string, bool) {
	return seen, info.SoftHSM() && seen != "" && seen != tried
}

type status struct {
	state ConnectionState
	code  ErrorCode
}

// State is the store's connection state and, when FAILED, why. The default
// store is always CONNECTED.
func (s *Store) State() (ConnectionState, ErrorCode) {
	if s.custom == nil {
		return Connected, ""
	}
	st := s.custom.state.Load()
	return st.state, st.code
}

// ClusterID is the cluster backing a custom store ("" for the default).
func (s *Store) ClusterID() string {
	if s.custom == nil {
		return ""
	}
	return s.custom.cluster.ID
}

func (s *Store) set(state ConnectionState, code ErrorCode) {
	s.custom.state.Store(&status{state: state, code: code})
}

// Classify maps a token failure to the ConnectionErrorCode AWS would give.
func Classify(err error) ErrorCode {
	code, _ := hsm.Code(err)
	switch {
	case err == nil:
		return ""
	case errors.Is(err, hsm.ErrModuleLoad), errors.Is(err, hsm.ErrTokenNotFound), errors.Is(err, errWrongDevice),
		errors.Is(err, ErrWrongToken), errors.Is(err, ErrDomainKeyMissing):
		return ClusterNotFound
	case errors.Is(err, hsm.ErrTokenNotPresent):
		return InsufficientHSMs
	case errors.Is(err, hsm.ErrDeviceError), errors.Is(err, hsm.ErrDeviceRemoved), code == pkcs11.CKR_FUNCTION_FAILED,
		errors.Is(err, context.DeadlineExceeded):
		return NetworkErrors
	case errors.Is(err, hsm.ErrPINIncorrect):
		return InvalidCredentials
	case errors.Is(err, hsm.ErrPINLocked):
		return UserLockedOut
	case errors.Is(err, hsm.ErrUserPINNotInitialized):
		return UserNotFound
	case errors.Is(err, hsm.ErrAnotherUserLoggedIn):
		return UserLoggedIn
	}
	return InternalError
}

var errWrongDevice = errors.New("keystore: the token does not match the cluster's declared identity")

// checkIdentity refuses a token whose identity differs from the declaration.
func checkIdentity(c Cluster, info hsm.TokenInfo) error {
	if (c.Manufacturer != "" && info.Manufacturer != c.Manufacturer) || (c.Model != "" && info.Model != c.Model) ||
		(c.Serial != "" && info.Serial != c.Serial) {
		return fmt.Errorf("%w: cluster %s is %s/%s serial %s", errWrongDevice, c.ID, info.Manufacturer, info.Model, info.Serial)
	}
	return nil
}

// ProbeError says why a cluster cannot back a new key store.
type ProbeError struct {
	NotFound, NotActive, WrongDevice bool
	Err                              error
}

func (e *ProbeError) Error() string { return e.Err.Error() }
func (e *ProbeError) Unwrap() error { return e.Err }

// Probe checks, without logging in, that the cluster's token is present
// and is the declared device.
func Probe(c Cluster) (hsm.TokenInfo, error) {
	m, err := hsm.OpenModule(c.Token.Module)
	if err != nil {
		return hsm.TokenInfo{}, &ProbeError{NotActive: true, Err: err}
	}
	defer m.Close()
	tokens, err := m.Tokens()
	if err != nil {
		return hsm.TokenInfo{}, &ProbeError{NotActive: true, Err: err}
	}
	for _, t := range tokens {
		if (c.Token.Label != "" && t.Label == c.Token.Label) || (c.Token.Serial != "" && t.Serial == c.Token.Serial) {
			if err := checkIdentity(c, t); err != nil {
				return t, &ProbeError{WrongDevice: true, Err: err}
			}
			return t, nil
		}
	}
	return hsm.TokenInfo{}, &ProbeError{NotActive: true, Err: fmt.Errorf("%w: cluster %s", hsm.ErrTokenNotFound, c.ID)}
}

// AddCustom registers a custom key store backed by cluster, DISCONNECTED.
func (m *Manager) AddCustom(id string, cluster Cluster) *Store {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &Store{id: id, custom: &custom{cluster: cluster, guard: m.guard, domain: m.domain}}
	s.set(Disconnected, "")
	next := make(map[string]*Store, len(*m.stores.Load())+1)
	for k, v := range *m.stores.Load() {
		next[k] = v
	}
	next[id] = s
	m.stores.Store(&next)
	return s
}

// CustomIDs lists the ids of the custom key stores registered.
func (m *Manager) CustomIDs() []string {
	var out []string
	for id, s := range *m.stores.Load() {
		if s.custom != nil {
			out = append(out, id)
		}
	}
	return out
}

// Remove forgets a DISCONNECTED custom key store.
func (m *Manager) Remove(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := (*m.stores.Load())[id]
	if !ok || s.custom == nil {
		return ErrNotFound
	}
	if st, _ := s.State(); st != Disconnected {
		return ErrInvalidState
	}
	next := make(map[string]*Store, len(*m.stores.Load()))
	for k, v := range *m.stores.Load() {
		if k != id {
			next[k] = v
		}
	}
	m.stores.Store(&next)
	return nil
}

// SetCluster points a DISCONNECTED store at another cluster.
func (s *Store) SetCluster(c Cluster) error {
	s.custom.mu.Lock()
	defer s.custom.mu.Unlock()
	if st, _ := s.State(); st != Disconnected {
		return ErrInvalidState
	}
	s.custom.cluster = c
	return nil
}

// BeginConnect moves a DISCONNECTED store to CONNECTING; Connect does the
// work. A CONNECTED store is left alone (ok=false, nil error), as AWS
// treats connecting it again as success. FAILED and DISCONNECTING refuse.
func (s *Store) BeginConnect() (bool, error) {
	s.custom.mu.Lock()
	defer s.custom.mu.Unlock()
	switch st, _ := s.State(); st {
	case Connected, Connecting:
		return false, nil
	case Disconnected:
		s.set(Connecting, "")
		return true, nil
	}
	return false, ErrInvalidState
}

// Connect logs in to the store's token as the user with the stored
// password and immediately rotates the password (C_SetPIN) to a fresh
// random one that only hsmkms knows. The store ends CONNECTED, or FAILED
// with the ErrorCode that says why. Call after BeginConnect. It is Login
// (resolving a rotation cut short) followed by RotatePassword.
func (s *Store) Connect(ctx context.Context, pw Passwords, log hclog.Logger) ErrorCode {
	if code := s.Login(ctx, pw, log, true); code != "" {
		return code
	}
	return s.RotatePassword(ctx, pw, log)
}

// Reconnect is Connect without the rotation: it logs in with the recorded
// password and leaves it as it is. It is for the stores hsmkms connects
// again at start because they were connected when it stopped; as in AWS,
// the password rotates only when a user connects the store. Call after
// BeginConnect.
func (s *Store) Reconnect(ctx context.Context, pw Passwords, log hclog.Logger) ErrorCode {
	return s.Login(ctx, pw, log, true)
}

// Login logs in to the store's token with the recorded password; the
// store ends CONNECTED, or FAILED with the ErrorCode that says why. Call
// after BeginConnect. Processes sharing the token and the database must
// not log in at the same moment (the caller holds a lock: see kms): a
// login checks, and at first records, the token's identity, and SoftHSM2
// rewrites token.object.
//
// With resolve, a pending password (a rotation cut short) is resolved:
// tried first, and whichever of the two logs in is recorded as the
// password. That writes the recorded passwords, so only the node that
// owns the store's connection may do it (see kms), and only with a view
// of the token taken after the rotation was cut short. Without resolve,
// only the current password is tried and nothing recorded changes: what
// every other node does to join a store another node connected.
func (s *Store) Login(ctx context.Context, pw Passwords, log hclog.Logger, resolve bool) ErrorCode {
	s.custom.mu.Lock()
	defer s.custom.mu.Unlock()
	if log == nil {
		log = hclog.NewNullLogger()
	}
	tok, err := s.login(ctx, pw, log, resolve)
	if err == nil {
		s.tok.Store(tok)
		if err = s.attachCustomHierarchy(ctx, log); err != nil {
			s.tok.Store(nil)
			tok.Logout(ctx)
			tok.Close()
		}
	}
	if err != nil {
		return s.failLocked(ctx, log, err)
	}
	s.set(Connected, "")
	log.Info("custom key store connected", "store", s.id, "cluster", s.custom.cluster.ID)
	return ""
}

// failLocked records a failed connection: FAILED, with the code err maps
// to. The caller holds custom.mu.
func (s *Store) failLocked(ctx context.Context, log hclog.Logger, err error) ErrorCode {
	err = s.custom.guard.Explain(ctx, s.id, s.custom.cluster.Token, err)
	code := Classify(err)
	log.Warn("custom key store connection failed", "store", s.id, "cluster", s.custom.cluster.ID, "code", code, "error", err)
	s.set(Failed, code)
	return code
}

// attachCustomHierarchy brings up the key hierarchy of a connected custom
// store, as its cluster declares (a store whose cluster holds material as
// token objects and has no domain key gets none).
func (s *Store) attachCustomHierarchy(ctx context.Context, log hclog.Logger) error {
	if s.custom.domain == nil {
		if s.custom.cluster.Material.Mode == Wrapped {
			return fmt.Errorf("keystore: custom key store %s: no records for domain keys", s.id)
		}
		return nil
	}
	return s.AttachHierarchy(ctx, s.custom.cluster.Material, s.custom.domain, log)
}

func (s *Store) login(ctx context.Context, pw Passwords, log hclog.Logger, resolve bool) (_ *hsm.Token, err error) {
	c := s.custom.cluster
	tok, err := hsm.OpenToken(c.Token)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			tok.Logout(ctx)
			tok.Close()
		}
	}()
	info, err := tok.Info()
	if err != nil {
		return nil, err
	}
	if err := checkIdentity(c, info); err != nil {
		return nil, err
	}
	// Read the flags first: trying a locked user would only confirm it,
	// and on some HSMs extend the lockout.
	if info.UserPINLocked() {
		return nil, fmt.Errorf("keystore: %w (CKF_USER_PIN_LOCKED)", hsm.ErrPINLocked)
	}
	if !info.UserPINInitialized() {
		return nil, fmt.Errorf("keystore: %w (no CKF_USER_PIN_INITIALIZED)", hsm.ErrUserPINNotInitialized)
	}
	current, pending, err := pw.Password(ctx, s.id)
	if err != nil {
		return nil, err
	}
	if !resolve {
		pending = ""
	}
	// SoftHSM2 rewrites token.object at every login, failed or not.
	if err := s.custom.guard.BeforeRewrite(info); err != nil {
		return nil, err
	}
	// A pending password means a rotation was cut short: if it logs in,
	// the token took it; if the token says it is wrong, the old one still
	// holds. At most two attempts are spent.
	loggedIn := false
	if pending != "" {
		lerr := tok.Login(ctx, pending)
		switch {
		case lerr == nil:
			log.Warn("resolving a password rotation cut short: the token has the new password", "store", s.id)
			if err := pw.CommitPending(ctx, s.id); err != nil {
				return nil, err
			}
			current, loggedIn = pending, true
		case !errors.Is(lerr, hsm.ErrPINIncorrect):
			return nil, lerr
		}
	}
	stale := false
	if !loggedIn {
		err := tok.Login(ctx, current)
		if view, ok := softHSMView(info, s.custom.seen, current); ok && errors.Is(err, hsm.ErrPINIncorrect) {
			if tok.Login(ctx, view) == nil {
				log.Info("SoftHSM2 in this process still holds the PIN it knew before another process changed it: logged in with that one (restart to see the change)", "store", s.id)
				err, current, stale = nil, view, true
			}
		}
		if err != nil {
			return nil, err
		}
		if pending != "" && !stale {
			log.Warn("resolving a password rotation cut short: the token has the previous password", "store", s.id)
		}
	}
	s.custom.seen = current
	if err := s.custom.guard.verify(ctx, tok, s.id, c.ID, log); err != nil {
		return nil, err
	}
	if pending != "" && !loggedIn && !stale {
		// Forget the pending password the token never took, so later
		// connects do not spend an attempt on it: recording the current
		// one as pending and committing it leaves a password that logs
		// in at each step.
		if err := pw.SetPending(ctx, s.id, current); err != nil {
			return nil, err
		}
		if err := pw.CommitPending(ctx, s.id); err != nil {
			return nil, err
		}
	}
	return tok, nil
}

// RotatePassword changes the kmsuser password of a CONNECTED store to a
// fresh random one (C_SetPIN): recorded as pending first, then changed on
// the token, then committed, so a crash at any point leaves a password
// that logs in among the two recorded. On failure the store ends FAILED
// and logged out.
func (s *Store) RotatePassword(ctx context.Context, pw Passwords, log hclog.Logger) ErrorCode {
	s.custom.mu.Lock()
	defer s.custom.mu.Unlock()
	if log == nil {
		log = hclog.NewNullLogger()
	}
	err := s.rotate(ctx, pw)
	if err == nil {
		log.Info("rotated the kmsuser password", "store", s.id)
		return ""
	}
	if h := s.hier.Swap(nil); h != nil {
		h.close()
	}
	if t := s.tok.Swap(nil); t != nil {
		t.Logout(ctx)
		t.Close()
	}
	return s.failLocked(ctx, log, err)
}

func (s *Store) rotate(ctx context.Context, pw Passwords) error {
	if st, _ := s.State(); st != Connected {
		return ErrInvalidState
	}
	tok, err := s.token()
	if err != nil {
		return err
	}
	info, err := tok.Info()
	if err != nil {
		return err
	}
	current, _, err := pw.Password(ctx, s.id)
	if err != nil {
		return err
	}
	next, err := newPassword(info)
	if err != nil {
		return err
	}
	if err := pw.SetPending(ctx, s.id, next); err != nil {
		return err
	}
	if err := s.custom.guard.BeforeRewrite(info); err != nil {
		return err
	}
	err = tok.SetPIN(ctx, current, next)
	if view, ok := softHSMView(info, s.custom.seen, current); ok && errors.Is(err, hsm.ErrPINIncorrect) {
		err = tok.SetPIN(ctx, view, next) // see softHSMView
	}
	if err != nil {
		return err
	}
	s.custom.seen = next
	return pw.CommitPending(ctx, s.id)
}

// UsePassword tells a CONNECTED store that its kmsuser password is now
// password, changed by another node: the token stays logged in (a PIN
// change does not log other sessions out), and logs in with password if
// it must log in again (after the device dropped the login).
func (s *Store) UsePassword(password string) {
	if t := s.tok.Load(); t != nil {
		t.RememberPIN(password)
	}
}

// newPassword is a random password within the token's PIN length limits,
// from the characters AWS allows in KeyStorePassword.
func newPassword(info hsm.TokenInfo) (string, error) {
	n := 32
	if info.MaxPINLen > 0 && int(info.MaxPINLen) < n {
		n = int(info.MaxPINLen)
	}
	if int(info.MinPINLen) > n {
		return "", fmt.Errorf("keystore: token wants PINs of at least %d bytes but at most %d", info.MinPINLen, n)
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)] // 256 % 62 bias is irrelevant at 32 characters
	}
	return string(b), nil
}

// Disconnect logs the user out and closes the store's sessions. From
// DISCONNECTED or DISCONNECTING it is ErrInvalidState; a FAILED store is
// simply reset to DISCONNECTED.
func (s *Store) Disconnect(ctx context.Context) error {
	s.custom.mu.Lock()
	defer s.custom.mu.Unlock()
	switch st, _ := s.State(); st {
	case Disconnected, Disconnecting:
		return ErrInvalidState
	}
	s.set(Disconnecting, "")
	if h := s.hier.Swap(nil); h != nil {
		h.close()
	}
	var err error
	if t := s.tok.Swap(nil); t != nil {
		err = errors.Join(t.Logout(ctx), t.Close())
	}
	s.set(Disconnected, "")
	return err
}
