package keystore_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// memPasswords is an in-memory keystore.Passwords.
type memPasswords struct {
	mu               sync.Mutex
	current, pending string
	failCommit       error
}

func (p *memPasswords) Password(context.Context, string) (string, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current, p.pending, nil
}

func (p *memPasswords) SetPending(_ context.Context, _ string, pending string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending = pending
	return nil
}

func (p *memPasswords) CommitPending(context.Context, string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failCommit != nil {
		return p.failCommit
	}
	p.current, p.pending = p.pending, ""
	return nil
}

func (p *memPasswords) get() (string, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current, p.pending
}

type fixture struct {
	tok     hsmtest.Token
	faults  *hsm.Faults
	cluster keystore.Cluster
	store   *keystore.Store
	pw      *memPasswords
}

func newFixture(t *testing.T, tok hsmtest.Token) *fixture {
	f := &fixture{tok: tok, pw: &memPasswords{current: tok.UserPIN}}
	f.cluster = keystore.Cluster{ID: "cluster-234567abcdefg", Token: hsm.TokenConfig{
		Module: tok.Module, Label: tok.Label, PoolSize: 2,
		Wrap: func(p hsm.PKCS11) hsm.PKCS11 { f.faults = hsm.NewFaults(p); return f.faults },
	}}
	m := keystore.NewManager(nil)
	f.store = m.AddCustom("cks-1234567890abcdef0", f.cluster)
	t.Cleanup(func() { f.store.Disconnect(context.Background()) })
	return f
}

func (f *fixture) connect(t *testing.T) keystore.ErrorCode {
	ok, err := f.store.BeginConnect()
	require.NoError(t, err)
	require.True(t, ok)
	st, _ := f.store.State()
	require.Equal(t, keystore.Connecting, st)
	return f.store.Connect(context.Background(), f.pw, nil)
}

// loginDirect logs in to the token with pin through a fresh handle, as an
// operator with the password would, and logs out again.
func loginDirect(t *testing.T, tok hsmtest.Token, pin string) error {
	h, err := hsm.OpenToken(hsm.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 1})
	require.NoError(t, err)
	defer h.Close()
	err = h.Login(context.Background(), pin)
	if err == nil {
		h.Logout(context.Background())
	}
	return err
}

func TestConnectRotatesThePassword(t *testing.T) {
	t.Parallel()
	tok := hsmtest.NewToken(t)
	f := newFixture(t, tok)
	require.Equal(t, keystore.ErrorCode(""), f.connect(t))
	st, code := f.store.State()
	require.Equal(t, keystore.Connected, st)
	require.Empty(t, code)
	rotated, pending := f.pw.get()
	require.Empty(t, pending)
	require.NotEqual(t, tok.UserPIN, rotated)
	require.Len(t, rotated, 32)

	// The token works while connected.
	htok, err := f.store.Token()
	require.NoError(t, err)
	_, err = htok.GenerateRandom(context.Background(), 8)
	require.NoError(t, err)

	require.NoError(t, f.store.Disconnect(context.Background()))
	st, _ = f.store.State()
	require.Equal(t, keystore.Disconnected, st)
	_, err = f.store.Token()
	require.ErrorIs(t, err, keystore.ErrNotConnected)
	require.ErrorIs(t, f.store.Disconnect(context.Background()), keystore.ErrInvalidState)

	require.ErrorIs(t, loginDirect(t, tok, tok.UserPIN), hsm.ErrPINIncorrect, "the original password no longer logs in")
	require.NoError(t, loginDirect(t, tok, rotated))

	// Every connect rotates again.
	require.Empty(t, f.connect(t))
	again, _ := f.pw.get()
	require.NotEqual(t, rotated, again)
	ok, err := f.store.BeginConnect()
	require.NoError(t, err)
	require.False(t, ok, "connecting a connected store is a no-op")
}

func TestWrongPasswordFailsThenRecovers(t *testing.T) {
	t.Parallel()
	tok := hsmtest.NewToken(t)
	f := newFixture(t, tok)
	f.pw.current = "not-the-password"
	require.Equal(t, keystore.InvalidCredentials, f.connect(t))
	st, code := f.store.State()
	require.Equal(t, keystore.Failed, st)
	require.Equal(t, keystore.InvalidCredentials, code)
	_, err := f.store.BeginConnect()
	require.ErrorIs(t, err, keystore.ErrInvalidState, "a FAILED store must be disconnected first")
	require.Equal(t, 1, f.faults.Calls("C_Login"), "one attempt, never retried")

	require.NoError(t, f.store.Disconnect(context.Background()))
	f.pw.current = tok.UserPIN
	require.Empty(t, f.connect(t))
}

// TestConnectionErrorCodes: one case per row of the mapping. SoftHSM2
// produces INVALID_CREDENTIALS (above), USER_NOT_FOUND, USER_LOGGED_IN and
// CLUSTER_NOT_FOUND itself; the fault wrapper produces the rest.
func TestConnectionErrorCodes(t *testing.T) {
	t.Parallel()
	t.Run("USER_NOT_FOUND", func(t *testing.T) {
		tok := hsmtest.NewTokenWithoutUser(t)
		f := newFixture(t, tok)
		f.pw.current = "whatever"
		require.Equal(t, keystore.UserNotFound, f.connect(t))
	})
	t.Run("USER_LOGGED_IN", func(t *testing.T) {
		tok := hsmtest.NewToken(t)
		f := newFixture(t, tok)
		so := soSession(t, tok)
		defer so()
		require.Equal(t, keystore.UserLoggedIn, f.connect(t))
	})
	t.Run("CLUSTER_NOT_FOUND", func(t *testing.T) {
		tok := hsmtest.NewToken(t)
		for name, mutate := range map[string]func(*keystore.Cluster){
			"no such label":  func(c *keystore.Cluster) { c.Token.Label = "no-such-token" },
			"no such module": func(c *keystore.Cluster) { c.Token.Module = "/nonexistent/libpkcs11.so" },
			"wrong device":   func(c *keystore.Cluster) { c.Manufacturer = "Thales" },
		} {
			t.Run(name, func(t *testing.T) {
				f := newFixture(t, tok)
				mutate(&f.cluster)
				s := keystore.NewManager(nil).AddCustom("cks-1", f.cluster)
				_, err := s.BeginConnect()
				require.NoError(t, err)
				require.Equal(t, keystore.ClusterNotFound, s.Connect(context.Background(), f.pw, nil), name)
			})
		}
	})
	faulty := []struct {
		code   keystore.ErrorCode
		inject func(*hsm.Faults)
	}{
		{keystore.UserLockedOut, func(f *hsm.Faults) { f.Fail("C_Login", pkcs11.CKR_PIN_LOCKED, 1) }},
		{keystore.InsufficientHSMs, func(f *hsm.Faults) { f.Fail("C_Login", pkcs11.CKR_TOKEN_NOT_PRESENT, 1) }},
		{keystore.NetworkErrors, func(f *hsm.Faults) { f.Fail("C_Login", pkcs11.CKR_DEVICE_ERROR, 1) }},
		{keystore.NetworkErrors, func(f *hsm.Faults) { f.Fail("C_Login", pkcs11.CKR_DEVICE_REMOVED, 1) }},
		{keystore.NetworkErrors, func(f *hsm.Faults) { f.Fail("C_Login", pkcs11.CKR_FUNCTION_FAILED, 1) }},
		{keystore.InternalError, func(f *hsm.Faults) { f.Fail("C_Login", pkcs11.CKR_GENERAL_ERROR, 1) }},
	}
	for _, c := range faulty {
		t.Run(string(c.code), func(t *testing.T) {
			tok := hsmtest.NewToken(t)
			f := newFixture(t, tok)
			f.cluster.Token.Wrap = func(p hsm.PKCS11) hsm.PKCS11 { f.faults = hsm.NewFaults(p); c.inject(f.faults); return f.faults }
			s := keystore.NewManager(nil).AddCustom("cks-1", f.cluster)
			s.BeginConnect()
			require.Equal(t, c.code, s.Connect(context.Background(), f.pw, nil))
		})
	}
	t.Run("USER_LOCKED_OUT from the token flags, without trying", func(t *testing.T) {
		tok := hsmtest.NewToken(t)
		f := newFixture(t, tok)
		f.cluster.Token.Wrap = func(p hsm.PKCS11) hsm.PKCS11 {
			f.faults = hsm.NewFaults(p)
			f.faults.SetTokenFlags(pkcs11.CKF_USER_PIN_LOCKED)
			return f.faults
		}
		s := keystore.NewManager(nil).AddCustom("cks-1", f.cluster)
		s.BeginConnect()
		require.Equal(t, keystore.UserLockedOut, s.Connect(context.Background(), f.pw, nil))
		require.Zero(t, f.faults.Calls("C_Login"), "no attempt burned")
	})
}

// soSession logs the SO in on tok in this process, the way an
// administrator's session would hold the token.
func soSession(t *testing.T, tok hsmtest.Token) func() {
	ctx := pkcs11.New(tok.Module)
	require.NotNil(t, ctx)
	if err := ctx.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := ctx.GetSlotList(true)
	require.NoError(t, err)
	for _, slot := range slots {
		ti, err := ctx.GetTokenInfo(slot)
		if err != nil || ti.Label != tok.Label {
			continue
		}
		s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		require.NoError(t, err)
		require.NoError(t, ctx.Login(s, pkcs11.CKU_SO, tok.SOPIN))
		return func() { ctx.Logout(s); ctx.CloseSession(s) }
	}
	t.Fatal("token not found")
	return nil
}

// TestInterruptedRotationIsResolved covers a rotation cut short between
// its steps, in process: the pending password is tried first, then the
// current one, never more than two attempts.
func TestInterruptedRotationIsResolved(t *testing.T) {
	t.Parallel()
	t.Run("cut before C_SetPIN", func(t *testing.T) {
		tok := hsmtest.NewToken(t)
		f := newFixture(t, tok)
		f.pw.pending = "never-reached-the-token"
		require.Empty(t, f.connect(t))
		require.Equal(t, 2, f.faults.Calls("C_Login"), "pending refused, current accepted: two attempts")
	})
	t.Run("cut after C_SetPIN", func(t *testing.T) {
		tok := hsmtest.NewToken(t)
		f := newFixture(t, tok)
		f.pw.failCommit = errors.New("disk full")
		require.Equal(t, keystore.InternalError, f.connect(t))
		require.NoError(t, f.store.Disconnect(context.Background()))
		cur, pending := f.pw.get()
		require.Equal(t, tok.UserPIN, cur)
		require.NotEmpty(t, pending, "the token has the pending password, the record says current")
		f.pw.failCommit = nil
		require.Empty(t, f.connect(t))
		require.Equal(t, 1, f.faults.Calls("C_Login"), "the pending password logs in at once (each connect opens the token afresh)")
	})
}

// TestKilledDuringRotation kills a real process (SIGKILL) at each step of
// a rotation, then connects from a fresh process.
// Not parallel: its child processes load SoftHSM2 on this process's token
// directory, which must not change under them while they start.
func TestKilledDuringRotation(t *testing.T) {
	for _, step := range []string{"after-pending-recorded", "after-setpin"} {
		t.Run(step, func(t *testing.T) {
			tok := hsmtest.NewToken(t)
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "current"), []byte(tok.UserPIN), 0o600))
			out, err := child(t, tok, dir, step)
			require.Error(t, err, "the child should have been killed: %s", out)
			var ee *exec.ExitError
			require.True(t, errors.As(err, &ee))
			require.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal(), string(out))

			out, err = child(t, tok, dir, "")
			require.NoError(t, err, "%s", out)
			require.Contains(t, string(out), "CONNECTED")
		})
	}
}

func child(t *testing.T, tok hsmtest.Token, dir, crashAt string) ([]byte, error) {
	cmd := exec.Command(os.Args[0], "-test.run", "^TestRotationChild$", "-test.v")
	cmd.Env = append(os.Environ(), "HSMKMS_CHILD_DIR="+dir, "HSMKMS_CHILD_MODULE="+tok.Module,
		"HSMKMS_CHILD_LABEL="+tok.Label, "HSMKMS_CHILD_CRASH="+crashAt, "SOFTHSM2_CONF="+os.Getenv("SOFTHSM2_CONF"))
	return cmd.CombinedOutput()
}

// filePasswords keeps passwords in files, written durably, and kills the
// process at the named step.
type filePasswords struct{ dir, crashAt string }

func (p filePasswords) read(name string) string {
	b, _ := os.ReadFile(filepath.Join(p.dir, name))
	return string(b)
}

func (p filePasswords) write(name, v string) error {
	f, err := os.OpenFile(filepath.Join(p.dir, name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	f.WriteString(v)
	f.Sync()
	return f.Close()
}

func (p filePasswords) Password(context.Context, string) (string, string, error) {
	return p.read("current"), p.read("pending"), nil
}

func (p filePasswords) SetPending(_ context.Context, _, pending string) error {
	if err := p.write("pending", pending); err != nil {
		return err
	}
	if p.crashAt == "after-pending-recorded" {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	return nil
}

func (p filePasswords) CommitPending(context.Context, string) error {
	if p.crashAt == "after-setpin" && p.read("pending") != "" && !strings.Contains(p.read("killed"), "yes") {
		p.write("killed", "yes")
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	if err := p.write("current", p.read("pending")); err != nil {
		return err
	}
	return p.write("pending", "")
}

// TestRotationChild is the child process of TestKilledDuringRotation.
func TestRotationChild(t *testing.T) {
	dir := os.Getenv("HSMKMS_CHILD_DIR")
	if dir == "" {
		t.Skip("run by TestKilledDuringRotation")
	}
	s := keystore.NewManager(nil).AddCustom("cks-1", keystore.Cluster{ID: "cluster-234567abcdefg",
		Token: hsm.TokenConfig{Module: os.Getenv("HSMKMS_CHILD_MODULE"), Label: os.Getenv("HSMKMS_CHILD_LABEL"), PoolSize: 1}})
	s.BeginConnect()
	code := s.Connect(context.Background(), filePasswords{dir: dir, crashAt: os.Getenv("HSMKMS_CHILD_CRASH")}, nil)
	st, _ := s.State()
	t.Logf("state %s code %s", st, code)
	require.Equal(t, keystore.Connected, st)
	s.Disconnect(context.Background())
}
