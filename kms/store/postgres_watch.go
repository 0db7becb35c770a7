package store

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// How the watcher knows its connection still carries every notification:
// after watchSilence without one it sends a query, which must come back
// within watchProbe. PostgreSQL sends a session the notifications of
// every commit before the answer to its next query, so an answered probe
// means nothing committed before it was sent is still unseen. A node cut
// off from the database therefore stops trusting its copies within about
// watchSilence+watchProbe (under a second), and while it cannot reach the
// database nobody else can change anything there either.
const (
	watchSilence = 300 * time.Millisecond
	watchProbe   = 600 * time.Millisecond
	// watchRetryMax bounds the wait between reconnection attempts.
	watchRetryMax = 2 * time.Second
)

// Watch listens on KeyChannel and KeyStoreChannel on a connection of its
// own (not the pool's) and reports what arrives, until ctx ends. It calls
// h.Live(false) whenever the connection fails or stops answering, and
// h.Live(true) each time it is listening again. It starts not live: the
// first h.Live(true) comes once LISTEN is in force.
func (p *PostgreSQL) Watch(ctx context.Context, h Changes) {
	retry := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := p.watchOnce(ctx, h)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			retry = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
		retry = min(2*retry, watchRetryMax)
	}
}

// watchOnce connects, listens and reports until the connection fails; it
// returns nil if it was live at some point.
func (p *PostgreSQL) watchOnce(ctx context.Context, h Changes) error {
	cfg := p.pool.Config().ConnConfig.Copy()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = conn.Exec(lctx, `LISTEN `+pgx.Identifier{KeyChannel}.Sanitize()+`; LISTEN `+pgx.Identifier{KeyStoreChannel}.Sanitize())
	cancel()
	if err != nil {
		return err
	}
	h.Live(true)
	defer h.Live(false)
	for {
		wctx, cancel := context.WithTimeout(ctx, watchSilence)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			p.dispatch(n.Channel, n.Payload, h)
			continue
		case ctx.Err() != nil:
			return nil
		case !errors.Is(err, context.DeadlineExceeded):
			return nil
		}
		pctx, cancel := context.WithTimeout(ctx, watchProbe)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return nil
		}
	}
}

func (p *PostgreSQL) dispatch(channel, payload string, h Changes) {
	switch channel {
	case KeyChannel:
		parts := strings.SplitN(payload, "/", 3)
		if len(parts) == 3 && h.Key != nil {
			h.Key(parts[0], parts[1], parts[2])
		}
	case KeyStoreChannel:
		if h.KeyStore != nil {
			h.KeyStore(payload)
		}
	}
}
