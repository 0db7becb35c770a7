package hsm

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// pool bounds the sessions open on one token. A slot in sem is the right to
// hold a session; idle keeps sessions between uses so the hot path opens
// none. Sessions are opened lazily, so an idle service holds few.
type pool struct {
	p11    PKCS11
	slot   uint
	sem    chan struct{}
	idle   chan pkcs11.SessionHandle
	open   atomic.Int64
	closed atomic.Bool
	obs    Observer // nil: waits are not reported
}

func newPool(p PKCS11, slot uint, size int) *pool {
	return &pool{
		p11:  p,
		slot: slot,
		sem:  make(chan struct{}, size),
		idle: make(chan pkcs11.SessionHandle, size),
	}
}

func (pl *pool) get(ctx context.Context) (pkcs11.SessionHandle, error) {
	select {
	case pl.sem <- struct{}{}:
	default:
		start := time.Now()
		select {
		case pl.sem <- struct{}{}:
			pl.waited(start)
		case <-ctx.Done():
			pl.waited(start)
			return 0, fmt.Errorf("hsm: waiting for a session: %w", ctx.Err())
		}
	}
	select {
	case s := <-pl.idle:
		return s, nil
	default:
	}
	s, err := pl.p11.OpenSession(pl.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		<-pl.sem
		return 0, wrap("C_OpenSession", err)
	}
	pl.open.Add(1)
	return s, nil
}

func (pl *pool) waited(start time.Time) {
	if pl.obs != nil {
		pl.obs.SessionWait(time.Since(start))
	}
}

// put returns a session; discard closes it instead, for sessions the token
// said are broken or whose state we cannot trust.
func (pl *pool) put(s pkcs11.SessionHandle, discard bool) {
	if discard || pl.closed.Load() {
		pl.closeSession(s)
	} else {
		pl.idle <- s // never blocks: idle holds at most cap(sem) sessions
		if pl.closed.Load() {
			pl.drain() // close raced with us; don't strand the session
		}
	}
	<-pl.sem
}

func (pl *pool) closeSession(s pkcs11.SessionHandle) {
	_ = pl.p11.CloseSession(s) // a session that is already gone is fine
	pl.open.Add(-1)
}

func (pl *pool) drain() {
	for {
		select {
		case s := <-pl.idle:
			pl.closeSession(s)
		default:
			return
		}
	}
}

// close closes idle sessions now and busy ones as they come back.
func (pl *pool) close() {
	pl.closed.Store(true)
	pl.drain()
}
