package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// softSigner signs in Go: the package's tests need no token (kms's tests
// sign on SoftHSM2).
type softSigner struct {
	key  *ecdsa.PrivateKey
	spki []byte
	mu   sync.Mutex
}

func newSigner(t testing.TB) *softSigner {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	require.NoError(t, err)
	return &softSigner{key: k, spki: spki}
}

func (s *softSigner) Sign(_ context.Context, d []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ecdsa.SignASN1(rand.Reader, s.key, d)
}

func (s *softSigner) PublicKey() []byte { return s.spki }

// testClock is a settable clock.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func event(name string, i int) *Event {
	return &Event{EventVersion: EventVersion, EventTime: time.Now().UTC().Format(TimeLayout), EventSource: KMSSource,
		EventName: name, AWSRegion: "us-east-1", SourceIPAddress: "192.0.2.1", UserAgent: "test",
		RequestParameters: Fields{{"keyId", fmt.Sprint("key-", i)}}, RequestID: NewID(), EventID: NewID(),
		ReadOnly: true, EventType: APICall, ManagementEvent: true, RecipientAccountID: "111122223333", EventCategory: "Management"}
}

func openTrail(t testing.TB, cfg Config) *Trail {
	t.Helper()
	tr, err := Open(cfg)
	require.NoError(t, err)
	return tr
}

// appendN appends n events from n goroutines and returns their sequence
// numbers.
func appendN(t testing.TB, tr *Trail, n int) []uint64 {
	seqs := make([]uint64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seq, err := tr.Append(context.Background(), event("Encrypt", i))
			assert.NoError(t, err)
			seqs[i] = seq
		}()
	}
	wg.Wait()
	return seqs
}

// lines reads every record of the trail files in dir. A running trail's
// retention may delete a file between the listing and the read: such a
// file is gone, not an error (CI once caught the race).
func lines(t testing.TB, dir string) []map[string]any {
	t.Helper()
	l, err := list(dir)
	require.NoError(t, err)
	var out []map[string]any
	for _, n := range l.trails {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		require.NoError(t, err)
		for _, ln := range strings.Split(string(b), "\n") {
			if ln == "" || !strings.HasSuffix(ln, "}") {
				continue // a torn last line
			}
			var m map[string]any
			require.NoError(t, json.Unmarshal([]byte(ln), &m), ln)
			out = append(out, m)
		}
	}
	return out
}

func TestAppendIsDurableChainedAndVerifies(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sig := newSigner(t)
	var mu sync.Mutex
	var durable []uint64
	tr := openTrail(t, Config{Dir: dir, Signer: sig, OnDurable: func(rs []Durable) {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range rs {
			durable = append(durable, r.Sequence)
		}
	}})
	seqs := appendN(t, tr, 64)
	seen := map[uint64]bool{}
	for _, s := range seqs {
		assert.False(t, seen[s], "each record its own sequence number")
		assert.GreaterOrEqual(t, s, uint64(2), "record 1 is the start record")
		seen[s] = true
	}
	require.NoError(t, tr.Close(context.Background()))
	_, err := tr.Append(context.Background(), event("Encrypt", 0))
	require.ErrorIs(t, err, ErrClosed)

	mu.Lock()
	assert.Len(t, durable, 66, "start, 64 events, stop: each reported once")
	for i, s := range durable {
		assert.Equal(t, uint64(i+1), s, "in order")
	}
	mu.Unlock()

	recs := lines(t, dir)
	require.Len(t, recs, 66)
	assert.Equal(t, "StartAuditTrail", recs[0]["eventName"])
	assert.Equal(t, "StopAuditTrail", recs[65]["eventName"])
	chain := recs[0]["hsmkms"].(map[string]any)
	assert.Equal(t, strings.Repeat("0", 64), chain["previousHash"])
	assert.EqualValues(t, 1, chain["sequence"])

	sum, err := Verify(dir, VerifyOptions{})
	require.NoError(t, err)
	assert.Equal(t, 1, sum.Digests)
	assert.Equal(t, 1, sum.Files)
	assert.EqualValues(t, 66, sum.Records)
	assert.EqualValues(t, 0, sum.Unsealed)
	assert.False(t, sum.Pinned)

	_, err = Verify(dir, VerifyOptions{PublicKeys: map[string]*ecdsa.PublicKey{Fingerprint(sig.spki): &sig.key.PublicKey}})
	require.NoError(t, err, "the pinned key")
	other := newSigner(t)
	_, err = Verify(dir, VerifyOptions{PublicKeys: map[string]*ecdsa.PublicKey{Fingerprint(other.spki): &other.key.PublicKey}})
	require.ErrorContains(t, err, "not a trusted key")
}

func TestRotationBySizeAndRestartContinueTheChain(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sig := newSigner(t)
	tr := openTrail(t, Config{Dir: dir, Signer: sig, MaxFileSize: 2000})
	for i := range 20 {
		_, err := tr.Append(context.Background(), event("Decrypt", i))
		require.NoError(t, err)
	}
	require.NoError(t, tr.Close(context.Background()))
	tr = openTrail(t, Config{Dir: dir, Signer: sig, MaxFileSize: 2000})
	appendN(t, tr, 10)
	require.NoError(t, tr.Close(context.Background()))

	l, err := list(dir)
	require.NoError(t, err)
	assert.Greater(t, len(l.trails), 3, "files closed at their size")
	// Each file is named by exactly one digest. (The stop digest names
	// none when the stop record itself filled the last file, which the
	// size rotation had sealed: counting digests was a race.)
	named := map[string]int{}
	for _, n := range l.digests {
		b, err := os.ReadFile(filepath.Join(dir, n))
		require.NoError(t, err)
		var d struct{ LogFiles []struct{ File string } }
		require.NoError(t, json.Unmarshal(b, &d))
		for _, f := range d.LogFiles {
			named[f.File]++
		}
	}
	for _, n := range l.trails {
		assert.Equal(t, 1, named[n], "%s is in one digest", n)
	}
	assert.Len(t, named, len(l.trails), "no digest names another file")
	sum, err := Verify(dir, VerifyOptions{})
	require.NoError(t, err)
	assert.EqualValues(t, 34, sum.Records, "two runs, each with its start and stop records")
	recs := lines(t, dir)
	start2 := recs[22]
	assert.Equal(t, "StartAuditTrail", start2["eventName"])
	assert.Equal(t, "stopped", start2["serviceEventDetails"].(map[string]any)["previousRun"])
}

func TestDigestsVerifyWithOpenSSL(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is needed (scripts/setup.sh installs it)")
	}
	dir := t.TempDir()
	tr := openTrail(t, Config{Dir: dir, Signer: newSigner(t)})
	appendN(t, tr, 3)
	require.NoError(t, tr.Close(context.Background()))
	l, err := list(dir)
	require.NoError(t, err)
	require.Len(t, l.digests, 1)
	d := filepath.Join(dir, l.digests[0])
	out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", filepath.Join(dir, PublicKeyPEM), "-signature", d+".sig", d).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, "Verified OK\n", string(out))

	digest, _, err := readDigest(dir, l.digests[0])
	require.NoError(t, err)
	out, err = exec.Command("openssl", "dgst", "-sha256", "-r", filepath.Join(dir, l.trails[0])).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, digest.LogFiles[0].HashValue, strings.Fields(string(out))[0], "the file's hash as the digest has it")
}

// tornLine is the start of a record a crash cut short.
const tornLine = `{"eventVersion":"1.11","userIdentity":{"type":"IAMU`

// crashCopy copies the trail as a SIGKILL would leave it: what is on
// disk, which (every Append having been fsynced) is every acknowledged
// record.
func crashCopy(t testing.TB, dir string) string {
	t.Helper()
	out := t.TempDir()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		if e.Name() == lockName {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(out, e.Name()), b, 0o600))
	}
	return out
}

func TestTheStartAfterACrashSealsWhatTheLastRunLeft(t *testing.T) {
	t.Parallel()
	sig := newSigner(t)
	for _, torn := range []bool{false, true} {
		t.Run(fmt.Sprintf("torn=%v", torn), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			tr := openTrail(t, Config{Dir: dir, Signer: sig, MaxFileSize: 1 << 20})
			acked := appendN(t, tr, 30)
			crashed := crashCopy(t, dir)
			require.NoError(t, tr.Close(context.Background()))
			l, err := list(crashed)
			require.NoError(t, err)
			last := filepath.Join(crashed, l.trails[len(l.trails)-1])
			if torn {
				// A write the crash cut short lands where the records end,
				// over the zeros written ahead of them.
				b, err := os.ReadFile(last)
				require.NoError(t, err)
				end := bytes.IndexByte(b, 0)
				require.Positive(t, end, "the open file has space written ahead")
				f, err := os.OpenFile(last, os.O_WRONLY, 0)
				require.NoError(t, err)
				_, err = f.WriteAt([]byte(tornLine), int64(end))
				require.NoError(t, err)
				require.NoError(t, f.Close())
			}
			_, err = Verify(crashed, VerifyOptions{})
			if torn {
				require.ErrorContains(t, err, "ends inside a record", "before the next start, the cut write shows")
			} else {
				require.NoError(t, err, "unsealed, yet consistent")
			}

			tr = openTrail(t, Config{Dir: crashed, Signer: sig, MaxFileSize: 3000})
			more := appendN(t, tr, 5)
			require.NoError(t, tr.Close(context.Background()))
			sum, err := Verify(crashed, VerifyOptions{})
			require.NoError(t, err)
			assert.EqualValues(t, 0, sum.Unsealed)
			seqs := map[float64]bool{}
			var start map[string]any
			for _, r := range lines(t, crashed) {
				seqs[r["hsmkms"].(map[string]any)["sequence"].(float64)] = true
				if r["eventName"] == "StartAuditTrail" {
					start = r
				}
			}
			for _, s := range append(acked, more...) {
				assert.True(t, seqs[float64(s)], "acknowledged record %d is in the trail", s)
			}
			details := start["serviceEventDetails"].(map[string]any)
			assert.Equal(t, "crashed", details["previousRun"])
			assert.NotEmpty(t, details["sealedAtStart"])
			if torn {
				assert.EqualValues(t, len(tornLine), details["tornBytes"])
			}
			lst, err := list(crashed)
			require.NoError(t, err)
			reasons := map[string]int{}
			for _, n := range lst.digests {
				d, _, err := readDigest(crashed, n)
				require.NoError(t, err)
				reasons[d.Reason]++
			}
			assert.Equal(t, 1, reasons[SealRecovery], "the start sealed the files the crash left open")
		})
	}
}

func TestADigestLeftUnsignedByACrashIsSignedAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sig := newSigner(t)
	tr := openTrail(t, Config{Dir: dir, Signer: sig})
	appendN(t, tr, 2)
	require.NoError(t, tr.Close(context.Background()))
	l, err := list(dir)
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, l.digests[0]+".sig")))
	_, err = Verify(dir, VerifyOptions{})
	require.ErrorContains(t, err, "signature file is missing")
	tr = openTrail(t, Config{Dir: dir, Signer: sig})
	require.NoError(t, tr.Close(context.Background()))
	_, err = Verify(dir, VerifyOptions{})
	require.NoError(t, err)
}

func TestIdleHoursGetDigestsAndOldFilesExpire(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clk := &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	tr := openTrail(t, Config{Dir: dir, Signer: newSigner(t), Now: clk.Now, RotationInterval: 20 * time.Millisecond,
		Retention: 48 * time.Hour})
	appendN(t, tr, 3)
	digests := func() int {
		l, err := list(dir)
		require.NoError(t, err)
		return len(l.digests)
	}
	// The clock moves; the writer's timer fires on real time.
	clk.Advance(time.Hour)
	require.Eventually(t, func() bool { return digests() >= 1 }, 10*time.Second, 5*time.Millisecond, "the file is closed when old")
	clk.Advance(time.Hour)
	require.Eventually(t, func() bool { return digests() >= 2 }, 10*time.Second, 5*time.Millisecond, "an idle interval still gets a digest")
	clk.Advance(72 * time.Hour)
	appendN(t, tr, 1)
	clk.Advance(time.Hour) // that file closes, and the digest that seals it sets retention off
	require.Eventually(t, func() bool {
		for _, r := range lines(t, dir) {
			if r["eventName"] == ExpiredEvent {
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond, "retention announces what it deletes")
	require.NoError(t, tr.Close(context.Background()))
	sum, err := Verify(dir, VerifyOptions{})
	require.NoError(t, err)
	assert.NotEmpty(t, sum.Expired)
	l, err := list(dir)
	require.NoError(t, err)
	for _, d := range sum.Expired {
		assert.NotContains(t, l.digests, d)
	}
}

func TestAFailedWriteFailsTheTrailForGood(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tr := openTrail(t, Config{Dir: dir, Signer: newSigner(t)})
	require.NoError(t, tr.Err())
	// Pull the file from under the (idle) writer: its next write fails.
	require.NoError(t, tr.file.Close())
	_, err := tr.Append(context.Background(), event("Encrypt", 1))
	require.Error(t, err)
	require.Error(t, tr.Err())
	_, err2 := tr.Append(context.Background(), event("Encrypt", 2))
	require.ErrorIs(t, err2, tr.Err(), "sticky")
	require.Error(t, tr.Close(context.Background()))
}

func TestRecordsReplaysFromASequence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tr := openTrail(t, Config{Dir: dir, Signer: newSigner(t), MaxFileSize: 1500})
	appendN(t, tr, 20)
	require.NoError(t, tr.Close(context.Background()))
	var got []uint64
	require.NoError(t, Records(dir, 15, func(seq uint64, line []byte) error {
		got = append(got, seq)
		_, err := parseRecord(line)
		return err
	}))
	assert.Equal(t, []uint64{16, 17, 18, 19, 20, 21, 22}, got)
}
