package hsm_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu    sync.Mutex
	calls map[string][]string // call → CKR names ("" for success), in order
	waits int
}

func (r *recorder) PKCS11Call(call string, _ time.Duration, ckr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[call] = append(r.calls[call], ckr)
}

func (r *recorder) SessionWait(time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits++
}

func (r *recorder) outcomes(call string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls[call]...)
}

func TestObserverSeesCallsFaultsAndWaits(t *testing.T) {
	t.Parallel()
	rec := &recorder{calls: map[string][]string{}}
	var f *hsm.Faults
	tt := hsmtest.NewToken(t)
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: tt.Module, Label: tt.Label, PoolSize: 1, Observer: rec,
		Wrap: func(p hsm.PKCS11) hsm.PKCS11 { f = hsm.NewFaults(p); return f }})
	require.NoError(t, err)
	t.Cleanup(func() { tok.Close() })
	require.NoError(t, tok.Login(ctx(t), tt.UserPIN))

	_, err = tok.GenerateRandom(ctx(t), 8)
	require.NoError(t, err)
	f.Fail("C_GenerateRandom", pkcs11.CKR_FUNCTION_FAILED, 1)
	_, err = tok.GenerateRandom(ctx(t), 8)
	require.Error(t, err)
	assert.Equal(t, []string{"", "CKR_FUNCTION_FAILED"}, rec.outcomes("C_GenerateRandom"), "the fault is reported as the token's answer")
	assert.Equal(t, []string{""}, rec.outcomes("C_Login"))

	// One session, held: the next caller waits for it, and is reported.
	hold, held := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tok.HoldSessionForTest(context.Background(), func() { close(held); <-hold })
	}()
	<-held
	assert.Equal(t, 1, tok.SessionsInUse())
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = tok.GenerateRandom(short, 8)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	close(hold)
	<-done
	rec.mu.Lock()
	waits := rec.waits
	rec.mu.Unlock()
	assert.Equal(t, 1, waits, "the caller that found the only session held waited, and gave up")
	assert.Equal(t, 0, tok.SessionsInUse())
}
