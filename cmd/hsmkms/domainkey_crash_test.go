package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/stretchr/testify/require"
)

// TestCrashDuringDomainKeyRotation kills the real binary (SIGKILL, from the
// HSMKMS_KILL_AT seam, right after the step completes) at each step of a
// domain key rotation of the default key store (wrapped, the default for a
// new data directory), and restarts the server in the middle every time:
//
//	hsmkms domain-keys --rotate   killed after the new key is recorded,
//	                              after it is made on the token, after it
//	                              is made active
//	serve (its domain key job)    killed after the first material version
//	                              is recorded rewrapped, after the retired
//	                              key is recorded DESTROYING, after its
//	                              token object is destroyed
//
// After each kill the server must start, every key must still decrypt,
// verify or match what it made before the first kill, and new keys must
// work; once the job has run, the store must have exactly one domain key,
// ACTIVE, naming every material version, with no retired key left.
func TestCrashDuringDomainKeyRotation(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	listen := freePort(t)
	run := 0
	srv := startServer(t, dir, listen, run).mustStart()
	c := srv.client()
	var keys []madeKey
	for i := range 10 {
		keys = append(keys, newMadeKey(t, c, types.KeySpecSymmetricDefault, fmt.Sprint(i)))
	}
	keys = append(keys, newMadeKey(t, c, types.KeySpecEccNistP256, "ecc"), newMadeKey(t, c, types.KeySpecHmac256, "hmac"))
	srv.stop()
	versions := len(keys)

	// restart serves dir again, checks every key, waits for the domain key
	// job to finish a retired key if there is one, and stops.
	restart := func(what string) {
		t.Helper()
		retired := len(listDomainKeys(t, dir, "RETIRED"))
		run++
		srv = startServer(t, dir, listen, run)
		require.True(t, srv.ready(), "%s: serve refused to start: %v\n%s", what, srv.exitErr, srv.log())
		c := srv.client()
		for _, k := range keys {
			k.check(t, c)
		}
		keys = append(keys, newMadeKey(t, c, types.KeySpecSymmetricDefault, "after "+what))
		versions++
		if retired > 0 {
			waitForLog(t, srv, "retired domain key destroyed")
		}
		srv.stop()
		active := listDomainKeys(t, dir, "ACTIVE")
		require.Len(t, active, 1, "%s: one active domain key", what)
		require.Empty(t, listDomainKeys(t, dir, "RETIRED"), "%s: nothing left retired", what)
		require.Equal(t, versions, active[0].materials, "%s: the active key wraps every version", what)
	}

	for _, step := range []string{keystore.StepDomainKeyRecorded, keystore.StepDomainKeyMade, keystore.StepDomainKeyActive} {
		t.Run("rotate/"+step, func(t *testing.T) {
			out, err := admin(t, dir, []string{"HSMKMS_KILL_AT=" + step}, "domain-keys", "--rotate")
			requireKilled(t, err, out)
			restart("killed at " + step)
		})
	}
	for _, step := range []string{keystore.StepMaterialRewrapped + "#2", keystore.StepDomainKeyDestroying, keystore.StepDomainKeyDestroyed} {
		t.Run("serve/"+step, func(t *testing.T) {
			out, err := admin(t, dir, nil, "domain-keys", "--rotate")
			require.NoError(t, err, "%s", out)
			run++
			killed := startServerEnv(t, dir, listen, run, []string{"HSMKMS_KILL_AT=" + step})
			requireKilled(t, killed.wait(), killed.log())
			restart("serve killed at " + step)
		})
	}
}

// madeKey is a key and what it made before any kill.
type madeKey struct {
	id, name   string
	spec       types.KeySpec
	ciphertext []byte
	signature  []byte
	mac        []byte
}

var crashDigest = sha256.Sum256([]byte("crash"))

func newMadeKey(t *testing.T, c *awskms.Client, spec types.KeySpec, name string) madeKey {
	t.Helper()
	ctx := context.Background()
	in := &awskms.CreateKeyInput{KeySpec: spec}
	switch spec {
	case types.KeySpecEccNistP256:
		in.KeyUsage = types.KeyUsageTypeSignVerify
	case types.KeySpecHmac256:
		in.KeyUsage = types.KeyUsageTypeGenerateVerifyMac
	}
	out, err := c.CreateKey(ctx, in)
	require.NoError(t, err)
	k := madeKey{id: *out.KeyMetadata.KeyId, name: name, spec: spec}
	switch spec {
	case types.KeySpecSymmetricDefault:
		enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: &k.id, Plaintext: []byte(name)})
		require.NoError(t, err)
		k.ciphertext = enc.CiphertextBlob
	case types.KeySpecEccNistP256:
		sig, err := c.Sign(ctx, &awskms.SignInput{KeyId: &k.id, Message: crashDigest[:], MessageType: types.MessageTypeDigest,
			SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
		require.NoError(t, err)
		k.signature = sig.Signature
	case types.KeySpecHmac256:
		mac, err := c.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: &k.id, Message: []byte(name), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
		require.NoError(t, err)
		k.mac = mac.Mac
	}
	return k
}

func (k madeKey) check(t *testing.T, c *awskms.Client) {
	t.Helper()
	ctx := context.Background()
	switch k.spec {
	case types.KeySpecSymmetricDefault:
		dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: k.ciphertext})
		require.NoError(t, err, "key %s (%s)", k.id, k.name)
		require.Equal(t, k.name, string(dec.Plaintext))
	case types.KeySpecEccNistP256:
		v, err := c.Verify(ctx, &awskms.VerifyInput{KeyId: &k.id, Message: crashDigest[:], MessageType: types.MessageTypeDigest,
			SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256, Signature: k.signature})
		require.NoError(t, err)
		require.True(t, v.SignatureValid)
		_, err = c.Sign(ctx, &awskms.SignInput{KeyId: &k.id, Message: crashDigest[:], MessageType: types.MessageTypeDigest,
			SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
		require.NoError(t, err, "the private key still signs")
	case types.KeySpecHmac256:
		v, err := c.VerifyMac(ctx, &awskms.VerifyMacInput{KeyId: &k.id, Message: []byte(k.name), Mac: k.mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
		require.NoError(t, err)
		require.True(t, v.MacValid)
	}
}

// admin runs an admin command of the binary on dir with env added.
func admin(t *testing.T, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binary(t), append(args[:1:1], append([]string{"--data-dir", dir}, args[1:]...)...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// requireKilled asserts err is the process's death by SIGKILL.
func requireKilled(t *testing.T, err error, log string) {
	t.Helper()
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "the process was to be killed, it ended with %v\n%s", err, log)
	ws, ok := ee.Sys().(syscall.WaitStatus)
	require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "not killed: %v\n%s", err, log)
}

// restartAfterKill serves dir armed to die at step (HSMKMS_KILL_AT, run
// *run+1), runs call against it if there is one (the server is to die
// under it; call checks what it got), asserts the process died by
// SIGKILL, and serves dir again (run *run+2), returning that server. A nil
// call is for a step a background job reaches.
func restartAfterKill(t *testing.T, dir, listen string, run *int, step string, call func(c *awskms.Client)) *server {
	t.Helper()
	*run++
	armed := startServerEnv(t, dir, listen, *run, []string{"HSMKMS_KILL_AT=" + step})
	if call != nil {
		// Not mustStart: it reads the exit status the process's
		// goroutine writes when the kill comes.
		require.True(t, armed.ready(), "serve did not start:\n%s", armed.log())
		call(armed.client())
	}
	requireKilled(t, armed.wait(), armed.log())
	*run++
	return startServer(t, dir, listen, *run).mustStart()
}

// inRegion is c for another Region: the same endpoint and credentials.
func inRegion(c *awskms.Client, region string) *awskms.Client {
	return awskms.New(c.Options(), func(o *awskms.Options) { o.Region = region })
}

type listedKey struct {
	id        string
	materials int
}

// listDomainKeys runs `hsmkms domain-keys` and returns the default key
// store's domain keys in state.
func listDomainKeys(t *testing.T, dir, state string) []listedKey {
	t.Helper()
	out, err := admin(t, dir, nil, "domain-keys")
	require.NoError(t, err, "%s", out)
	var keys []listedKey
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 5 && f[0] == "default" && f[2] == state {
			n, err := strconv.Atoi(f[4])
			require.NoError(t, err)
			keys = append(keys, listedKey{id: f[1], materials: n})
		}
	}
	return keys
}

// waitForLog waits until the server's log has a line containing s.
func waitForLog(t *testing.T, s *server, want string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(s.log(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", want, s.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
