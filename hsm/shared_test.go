package hsm_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// What SoftHSM2 2.6.1 does when several processes open one token
// directory, as several hsmkms nodes sharing a SoftHSM2 store do. Each
// test runs a second process (this test binary, re-executed as a peer that
// obeys one command per line on stdin) on the token the test made, and
// checks what each process sees of the other's work. The README's "Running
// several nodes" section states the limits these tests show.

const peerEnv = "HSMKMS_HSM_PEER"

// TestPeerProcess is not a test: it is the peer's body when the test
// binary is re-executed with peerEnv set, and is skipped otherwise.
func TestPeerProcess(t *testing.T) {
	spec := os.Getenv(peerEnv)
	if spec == "" {
		t.Skip("the peer process of the shared-token tests")
	}
	module, label, _ := strings.Cut(spec, "|")
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: module, Label: label, PoolSize: 2})
	if err != nil {
		fmt.Println("ERR", err)
		return
	}
	defer tok.Close()
	ctx := context.Background()
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("OK ready")
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		var out string
		var err error
		arg := func(i int) string {
			if i < len(f) {
				return f[i]
			}
			return ""
		}
		switch f[0] {
		case "login":
			err = tok.Login(ctx, arg(1))
		case "logout":
			err = tok.Logout(ctx)
		case "setpin":
			err = tok.SetPIN(ctx, arg(1), arg(2))
		case "gen":
			_, err = tok.GenerateAESKey(ctx, []byte(arg(1)), arg(1), hsm.UsageEncrypt|hsm.UsageDecrypt)
		case "find":
			_, err = tok.FindObject(ctx, hsm.SecretKeyByID([]byte(arg(1))))
		case "destroy":
			err = tok.DestroyObject(ctx, hsm.SecretKeyByID([]byte(arg(1))))
		case "encrypt":
			var iv, sealed []byte
			iv, sealed, err = tok.EncryptGCM(ctx, hsm.SecretKeyByID([]byte(arg(1))), []byte(arg(2)), nil)
			out = hex.EncodeToString(append(iv, sealed...))
		case "decrypt":
			var b, plain []byte
			if b, err = hex.DecodeString(arg(2)); err == nil && len(b) > hsm.GCMIVSize {
				plain, err = tok.DecryptGCM(ctx, hsm.SecretKeyByID([]byte(arg(1))), b[:hsm.GCMIVSize], b[hsm.GCMIVSize:], nil)
			}
			out = string(plain)
		case "logins": // logs in and out N times (token.object rewrites); counts failures
			var n, failed int
			var last error
			fmt.Sscan(arg(2), &n)
			for range n {
				if lerr := tok.Login(ctx, arg(1)); lerr != nil {
					failed, last = failed+1, lerr
					continue
				}
				tok.Logout(ctx)
			}
			out = fmt.Sprint(failed)
			if last != nil {
				out += fmt.Sprintf(" (the last with %v)", last)
			}
		case "churn": // makes and destroys N objects
			var n int
			fmt.Sscan(arg(1), &n)
			for i := range n {
				id := []byte(fmt.Sprintf("churn-%d-%d", os.Getpid(), i))
				if _, err = tok.GenerateAESKey(ctx, id, "churn", hsm.UsageEncrypt); err != nil {
					break
				}
				if err = tok.DestroyObject(ctx, hsm.SecretKeyByID(id)); err != nil {
					break
				}
			}
		case "missing": // lists the secret keys N times: "M F" lists without ID, lists that failed
			var n, missing, failed int
			fmt.Sscan(arg(2), &n)
			for range n {
				objs, lerr := tok.ListObjects(ctx, pkcs11.CKO_SECRET_KEY)
				if lerr != nil {
					failed++
					continue
				}
				if !slices.ContainsFunc(objs, func(o hsm.ObjectInfo) bool { return string(o.ID) == arg(1) }) {
					missing++
				}
			}
			out = fmt.Sprint(missing, " ", failed)
		case "flip": // changes the PIN from A to B and back, N times
			var n int
			fmt.Sscan(arg(3), &n)
			if err = tok.Login(ctx, arg(1)); err != nil {
				break
			}
			for i := range n {
				from, to := arg(1), arg(2)
				if i%2 == 1 {
					from, to = to, from
				}
				if err = tok.SetPIN(ctx, from, to); err != nil {
					break
				}
			}
		default:
			err = fmt.Errorf("unknown command %q", f[0])
		}
		if err != nil {
			fmt.Println("ERR", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Println("OK", out)
		}
	}
}

// peer is a second process with the token open.
type peer struct {
	t   *testing.T
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	mu  sync.Mutex
}

func startPeer(t *testing.T, tt hsmtest.Token) *peer {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestPeerProcess$", "-test.v=false")
	cmd.Env = append(os.Environ(), peerEnv+"="+tt.Module+"|"+tt.Label)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &peer{t: t, cmd: cmd, in: in, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	_, err = p.read()
	require.NoError(t, err, "peer did not start")
	return p
}

func (p *peer) read() (string, error) {
	for p.out.Scan() {
		line := p.out.Text()
		switch {
		case strings.HasPrefix(line, "OK"):
			return strings.TrimSpace(strings.TrimPrefix(line, "OK")), nil
		case strings.HasPrefix(line, "ERR"):
			return "", errors.New(strings.TrimSpace(strings.TrimPrefix(line, "ERR")))
		}
	}
	return "", fmt.Errorf("peer exited: %v", p.out.Err())
}

// do runs one command in the peer and returns its result.
func (p *peer) do(cmd string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.in, cmd)
	return p.read()
}

func (p *peer) must(cmd string) string {
	p.t.Helper()
	out, err := p.do(cmd)
	require.NoError(p.t, err, "peer: %s", strings.Fields(cmd)[0])
	return out
}

func TestSharedTokenObjectsAcrossProcesses(t *testing.T) {
	t.Parallel()
	tok, tt := open(t, nil, 2)
	p := startPeer(t, tt)
	p.must("login " + tt.UserPIN)
	c := ctx(t)

	t.Run("made here, found and used there", func(t *testing.T) {
		_, err := tok.GenerateAESKey(c, []byte("made-here"), "made-here", hsm.UsageEncrypt|hsm.UsageDecrypt)
		require.NoError(t, err)
		p.must("find made-here")
		blob := p.must("encrypt made-here hello")
		b, err := hex.DecodeString(blob)
		require.NoError(t, err)
		plain, err := tok.DecryptGCM(c, hsm.SecretKeyByID([]byte("made-here")), b[:hsm.GCMIVSize], b[hsm.GCMIVSize:], nil)
		require.NoError(t, err)
		assert.Equal(t, "hello", string(plain))
	})
	t.Run("made there, found and used here", func(t *testing.T) {
		p.must("gen made-there")
		iv, sealed, err := tok.EncryptGCM(c, hsm.SecretKeyByID([]byte("made-there")), []byte("hi"), nil)
		require.NoError(t, err)
		assert.Equal(t, "hi", p.must("decrypt made-there "+hex.EncodeToString(append(iv, sealed...))))
	})
	t.Run("destroyed there, gone here", func(t *testing.T) {
		p.must("gen doomed")
		_, err := tok.FindObject(c, hsm.SecretKeyByID([]byte("doomed")))
		require.NoError(t, err)
		p.must("destroy doomed")
		// A fresh lookup: FindObject goes to the token once the cached
		// handle proves stale.
		_, err = tok.FindObject(c, hsm.SecretKeyByID([]byte("doomed")))
		t.Logf("FindObject of an object another process destroyed: %v", err)
	})
}

// TestSharedTokenPINChangeAcrossProcesses: SoftHSM2 reads a token's PIN
// blobs when the module loads, and only the process that changes the PIN
// sees the change. A process that loaded the token before the change
// keeps what it had: logged in, it stays so; not logged in, it accepts
// the old PIN and refuses the new one, until it loads the module again.
// A process started after the change takes the new PIN. hsmkms's answer:
// every node logs in before one of them rotates a kmsuser password (kms,
// keystoresync.go), and a node that could not is told to restart.
func TestSharedTokenPINChangeAcrossProcesses(t *testing.T) {
	t.Parallel()
	tok, tt := open(t, nil, 2)
	_, err := tok.GenerateAESKey(ctx(t), []byte("k"), "k", hsm.UsageEncrypt|hsm.UsageDecrypt)
	require.NoError(t, err)
	loggedIn, notLoggedIn := startPeer(t, tt), startPeer(t, tt)
	loggedIn.must("login " + tt.UserPIN)
	newPIN := hsmtest.RandomPIN(8)
	require.NoError(t, tok.SetPIN(ctx(t), tt.UserPIN, newPIN))

	_, err = loggedIn.do("encrypt k x")
	require.NoError(t, err, "a process logged in before the change stays logged in")
	_, err = notLoggedIn.do("login " + newPIN)
	require.ErrorContains(t, err, "CKR_PIN_INCORRECT", "a process that loaded the token before the change refuses the new PIN")
	_, err = notLoggedIn.do("login " + tt.UserPIN)
	require.NoError(t, err, "and takes the old one")
	later := startPeer(t, tt)
	_, err = later.do("login " + tt.UserPIN)
	require.ErrorContains(t, err, "CKR_PIN_INCORRECT")
	_, err = later.do("login " + newPIN)
	require.NoError(t, err, "a process started after the change takes the new PIN")
}

// TestSharedTokenConcurrentWrites: SoftHSM2 rewrites token.object at every
// C_Login (the token flags) and C_SetPIN, reading it first, and unlocks
// the file before its buffered write reaches it. Two processes doing that
// at once see each other's half-written file (C_Login fails with
// CKR_GENERAL_ERROR) and can write over each other's change. hsmkms takes
// a database lock around every login to, and PIN change of, a token that
// nodes share (kms.Open, keystoresync.go); this test shows why, and logs
// how often it happens here.
func TestSharedTokenConcurrentWrites(t *testing.T) {
	t.Parallel()
	_, tt := open(t, nil, 2)
	a, b := startPeer(t, tt), startPeer(t, tt)
	var wg sync.WaitGroup
	var failedA, failedB string
	var errA, errB error
	wg.Add(2)
	go func() { defer wg.Done(); failedA, errA = a.do("logins " + tt.UserPIN + " 300") }()
	go func() { defer wg.Done(); failedB, errB = b.do("logins " + tt.UserPIN + " 300") }()
	wg.Wait()
	require.NoError(t, errA)
	require.NoError(t, errB)
	t.Logf("600 logins from two processes at once: %s and %s failed", failedA, failedB)
	_, err := startPeer(t, tt).do("login " + tt.UserPIN)
	require.NoError(t, err, "the token survives concurrent logins")

	// A PIN changing in one process while another logs in: the change
	// itself fails at times (C_SetPIN answers CKR_GENERAL_ERROR).
	other := hsmtest.RandomPIN(8)
	wg.Add(2)
	go func() { defer wg.Done(); _, errA = a.do("flip " + tt.UserPIN + " " + other + " 40") }()
	go func() { defer wg.Done(); failedB, errB = b.do("logins " + tt.UserPIN + " 300") }()
	wg.Wait()
	require.NoError(t, errB)
	t.Logf("40 PIN changes in one process while another logged in 300 times: changes: %v; %s logins failed", errA, failedB)
	fresh := startPeer(t, tt)
	_, errOld := fresh.do("login " + tt.UserPIN)
	if errOld != nil {
		_, err = fresh.do("login " + other)
		require.NoError(t, err, "the token still has one of the two PINs")
	}
}

// TestSharedTokenObjectsWhileAnotherProcessMakesSome: a process lists a
// token's objects while another makes and destroys objects on it: an
// object that stays is in every list, and no list fails. (SoftHSM2 answers
// CKR_OBJECT_HANDLE_INVALID for an object found and destroyed before its
// attributes are read, which would fail a node's start-up check while
// another node deletes keys: ListObjects leaves such an object out.)
func TestSharedTokenObjectsWhileAnotherProcessMakesSome(t *testing.T) {
	t.Parallel()
	tok, tt := open(t, nil, 2)
	_, err := tok.GenerateAESKey(ctx(t), []byte("steady"), "steady", hsm.UsageEncrypt|hsm.UsageDecrypt)
	require.NoError(t, err)
	a, b := startPeer(t, tt), startPeer(t, tt)
	a.must("login " + tt.UserPIN)
	b.must("login " + tt.UserPIN)
	var wg sync.WaitGroup
	var churnErr error
	wg.Add(1)
	go func() { defer wg.Done(); _, churnErr = a.do("churn 60") }()
	got, err := b.do("missing steady 200")
	wg.Wait()
	require.NoError(t, churnErr)
	require.NoError(t, err)
	var missing, failed int
	_, err = fmt.Sscan(got, &missing, &failed)
	require.NoError(t, err)
	assert.Zero(t, missing, "an object that stays is in every list")
	assert.Zero(t, failed, "no list fails")
}
