package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/kms/store/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMarks(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		ss := d.nodes(t, 2)
		a, b := ss[0], ss[1]
		t0 := time.Unix(1700000000, 0).UTC()
		m := Mark{Name: "rotate/k", Node: "a", Detail: "ON_DEMAND", Started: t0, Expires: t0.Add(time.Minute)}
		require.NoError(t, a.TakeMark(ctx, m))
		got, err := b.GetMark(ctx, "rotate/k")
		require.NoError(t, err)
		require.Equal(t, &m, got, "every node sees the mark")

		other := Mark{Name: "rotate/k", Node: "b", Started: t0.Add(30 * time.Second), Expires: t0.Add(90 * time.Second)}
		require.ErrorIs(t, b.TakeMark(ctx, other), ErrMarkHeld, "held and not expired")
		again := m
		again.Started = t0.Add(time.Second)
		require.ErrorIs(t, a.TakeMark(ctx, again), ErrMarkHeld, "not even by its holder: one claim, one piece of work")
		again = m

		other.Started, other.Expires = t0.Add(2*time.Minute), t0.Add(3*time.Minute)
		require.NoError(t, b.TakeMark(ctx, other), "an expired mark is taken over")
		require.NoError(t, a.DeleteMark(ctx, "rotate/k", "a", again.Started), "its former holder's release does nothing")
		got, err = a.GetMark(ctx, "rotate/k")
		require.NoError(t, err)
		require.Equal(t, "b", got.Node)
		require.NoError(t, b.DeleteMark(ctx, "rotate/k", "b", other.Started))
		_, err = a.GetMark(ctx, "rotate/k")
		require.ErrorIs(t, err, ErrNotFound)

		for _, n := range []string{"x", "y"} {
			require.NoError(t, a.TakeMark(ctx, Mark{Name: "reap/" + n, Node: "a", Started: t0, Expires: t0.Add(time.Hour)}))
		}
		require.NoError(t, b.TakeMark(ctx, Mark{Name: "reap/z", Node: "b", Started: t0, Expires: t0.Add(time.Hour)}))
		require.NoError(t, b.DeleteNodeMarks(ctx, "a"), "a node starting again drops its old marks")
		_, err = b.GetMark(ctx, "reap/x")
		require.ErrorIs(t, err, ErrNotFound)
		_, err = b.GetMark(ctx, "reap/z")
		require.NoError(t, err)
	})
}

func TestMarksRace(t *testing.T) {
	// Many nodes claiming the same work at once: exactly one gets it.
	each(t, func(t *testing.T, d *db) {
		ss := d.nodes(t, 3)
		now := time.Now()
		for round := range 10 {
			name := "reap/" + hex.EncodeToString([]byte{byte(round)})
			var won atomic.Int32
			var wg sync.WaitGroup
			for i, s := range ss {
				for j := range 3 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						node := string(rune('a'+i)) + string(rune('0'+j))
						err := s.TakeMark(ctx, Mark{Name: name, Node: node, Started: now, Expires: now.Add(time.Minute)})
						if err == nil {
							won.Add(1)
						} else {
							assert.ErrorIs(t, err, ErrMarkHeld)
						}
					}()
				}
			}
			wg.Wait()
			require.EqualValues(t, 1, won.Load(), "round %d", round)
		}
	})
}

func TestLocks(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		ss := d.nodes(t, 2)
		// A counter incremented without atomicity by holders of the lock
		// on two stores: a lost update would show.
		var n, inside int32
		var wg sync.WaitGroup
		for _, s := range ss {
			for range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 5 {
						unlock, err := s.Lock(ctx, "vault")
						if !assert.NoError(t, err) {
							return
						}
						assert.EqualValues(t, 1, atomic.AddInt32(&inside, 1), "one holder at a time")
						v := atomic.LoadInt32(&n)
						time.Sleep(time.Millisecond)
						atomic.StoreInt32(&n, v+1)
						atomic.AddInt32(&inside, -1)
						unlock()
					}
				}()
			}
		}
		wg.Wait()
		require.EqualValues(t, 30, n)

		unlock, err := ss[0].Lock(ctx, "held")
		require.NoError(t, err)
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err = ss[1].Lock(short, "held")
		cancel()
		require.Error(t, err, "waiting ends with the context")
		other, err := ss[1].Lock(ctx, "another name")
		require.NoError(t, err, "names are independent")
		other()
		unlock()
		again, err := ss[1].Lock(ctx, "held")
		require.NoError(t, err)
		again()
	})
}

func TestPostgreSQLLockDiesWithItsHolder(t *testing.T) {
	// A node that dies holding a lock blocks nobody: the server releases
	// it when the connection ends.
	u := pgtest.NewSchema(t)
	app := "hsmkms-lock-" + randomHex()
	a, err := OpenPostgreSQL(ctx, u+"&application_name="+app)
	require.NoError(t, err)
	t.Cleanup(func() { a.pool.Reset() })
	b, err := OpenPostgreSQL(ctx, u)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	_, err = a.Lock(ctx, "key-store/cks-1")
	require.NoError(t, err)
	go func() {
		time.Sleep(200 * time.Millisecond)
		pgtest.Exec(t, u, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, app)
	}()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	unlock, err := b.Lock(wctx, "key-store/cks-1")
	require.NoError(t, err)
	unlock()
}

func TestHeartbeatsAndLogins(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		t0 := time.Unix(1700000000, 0).UTC()
		_, err := s.GetNode(ctx, "a")
		require.ErrorIs(t, err, ErrNotFound)
		require.NoError(t, s.Heartbeat(ctx, "a", t0, t0.Add(time.Second)))
		require.NoError(t, s.Heartbeat(ctx, "a", t0, t0.Add(2*time.Second)))
		n, err := s.GetNode(ctx, "a")
		require.NoError(t, err)
		require.Equal(t, &Node{ID: "a", Started: t0, Heartbeat: t0.Add(2 * time.Second)}, n)

		require.NoError(t, s.CreateKeyStore(ctx, &KeyStore{ID: "cks-1", Account: "1", Region: "r", Name: "n", ClusterID: "c",
			CreationDate: t0, ConnectionState: "CONNECTED"}, testLimit))
		ks, err := s.GetKeyStore(ctx, "cks-1")
		require.NoError(t, err)
		require.Equal(t, "CONNECTED", ks.ConnectionState)
		_, err = s.UpdateKeyStore(ctx, "cks-1", func(ks *KeyStore) error {
			ks.ConnectionState, ks.ConnectionError = "FAILED", "INVALID_CREDENTIALS"
			return nil
		})
		require.NoError(t, err)
		ks, _ = s.GetKeyStore(ctx, "cks-1")
		require.Equal(t, [2]string{"FAILED", "INVALID_CREDENTIALS"}, [2]string{ks.ConnectionState, ks.ConnectionError})

		require.NoError(t, s.PutKeyStoreLogin(ctx, KeyStoreLogin{KeyStoreID: "cks-1", Node: "a", State: "CONNECTED", Updated: t0}))
		require.NoError(t, s.PutKeyStoreLogin(ctx, KeyStoreLogin{KeyStoreID: "cks-1", Node: "b", State: "FAILED", ErrorCode: "NETWORK_ERRORS", Updated: t0}))
		require.NoError(t, s.PutKeyStoreLogin(ctx, KeyStoreLogin{KeyStoreID: "cks-1", Node: "a", State: "CONNECTED", Updated: t0.Add(time.Second)}))
		ls, err := s.KeyStoreLogins(ctx, "cks-1")
		require.NoError(t, err)
		require.Equal(t, []KeyStoreLogin{
			{KeyStoreID: "cks-1", Node: "a", State: "CONNECTED", Updated: t0.Add(time.Second), Heartbeat: t0.Add(2 * time.Second)},
			{KeyStoreID: "cks-1", Node: "b", State: "FAILED", ErrorCode: "NETWORK_ERRORS", Updated: t0},
		}, ls, "with each node's heartbeat (none for b)")
		require.NoError(t, s.ResetNodeLogins(ctx, "a", t0.Add(3*time.Second)))
		ls, _ = s.KeyStoreLogins(ctx, "cks-1")
		require.Equal(t, "DISCONNECTED", ls[0].State)
		require.Equal(t, "FAILED", ls[1].State, "other nodes' logins stay")
		require.NoError(t, s.DeleteKeyStore(ctx, "cks-1"))
		ls, err = s.KeyStoreLogins(ctx, "cks-1")
		require.NoError(t, err)
		require.Empty(t, ls, "logins go with their store")
	})
}

func randomHex() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// recorder collects what a watcher reports, in order: "key a/r/id",
// "store id", "live true|false".
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) changes() Changes {
	return Changes{
		Key:      func(a, reg, id string) { r.add("key " + a + "/" + reg + "/" + id) },
		KeyStore: func(id string) { r.add("store " + id) },
		Live:     func(l bool) { r.add(fmt.Sprint("live ", l)) },
	}
}

func (r *recorder) since(i int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events[min(i, len(r.events)):]...)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func (r *recorder) live() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		if strings.HasPrefix(r.events[i], "live ") {
			return r.events[i] == "live true"
		}
	}
	return false
}

// hears runs write, then waits until the watcher reported want after it,
// in order. A loss of the feed meanwhile (an overloaded machine's probe
// can time out) voids the attempt: the watcher then said it may have
// missed changes, which is all it owes. Three attempts.
func (r *recorder) hears(t *testing.T, write func(attempt int), want func(attempt int) []string) {
	t.Helper()
	for attempt := range 3 {
		require.Eventually(t, r.live, 20*time.Second, 10*time.Millisecond, "live")
		mark := r.len()
		write(attempt)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			got := r.since(mark)
			if slices.Contains(got, "live false") {
				t.Logf("attempt %d: the feed was lost meanwhile (%v): again", attempt, got)
				break
			}
			// The channels are the database's, not the schema's: other
			// tests' changes, running in parallel, are heard too.
			var heard []string
			for _, e := range got {
				if !strings.HasPrefix(e, "live ") && slices.Contains(want(attempt), e) {
					heard = append(heard, e)
				}
			}
			if len(heard) >= len(want(attempt)) {
				require.Equal(t, want(attempt), heard)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Fatalf("the changes were not heard: %v", r.since(0))
}

func TestPostgreSQLWatch(t *testing.T) {
	t.Parallel()
	app := "hsmkms-watch-" + randomHex()
	u := pgtest.NewSchema(t)
	s, err := OpenPostgreSQL(ctx, u+"&application_name="+app)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	other, err := OpenPostgreSQL(ctx, u)
	require.NoError(t, err)
	t.Cleanup(func() { other.Close() })

	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	var r recorder
	go func() { defer close(done); s.Watch(wctx, r.changes()) }()
	t.Cleanup(func() { stop(); <-done })
	require.Eventually(t, func() bool { e := r.since(0); return len(e) > 0 && e[0] == "live true" }, 10*time.Second, 10*time.Millisecond,
		"live once listening, not before")

	const acct, reg = "111122223333", "us-west-2"
	// The ids are this test's own: other tests' changes to a key "k0" are
	// heard too.
	run := randomHex()
	r.hears(t, func(i int) {
		id, ks := fmt.Sprint("k", i, "-", run), fmt.Sprint("cks-", i, "-", run)
		require.NoError(t, other.CreateKey(ctx, newKey(acct, reg, id), nil))
		_, err := other.UpdateKey(ctx, acct, reg, id, func(k *Key) error { k.State = "Disabled"; return nil })
		require.NoError(t, err)
		require.NoError(t, other.CreateKeyStore(ctx, &KeyStore{ID: ks, Account: acct, Region: reg, Name: ks, ClusterID: ks}, testLimit))
		_, err = other.UpdateKeyStore(ctx, ks, func(ks *KeyStore) error { ks.Connect = true; return nil })
		require.NoError(t, err)
		require.NoError(t, other.DeleteKeyStore(ctx, ks))
	}, func(i int) []string {
		ks := fmt.Sprint("store cks-", i, "-", run)
		return []string{fmt.Sprintf("key %s/%s/k%d-%s", acct, reg, i, run), ks, ks, ks}
	})

	// The server ends the watcher's session (as a failover or a network
	// cut would): not live at once, live again once it listens again.
	mark := r.len()
	pgtest.Exec(t, u, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, app)
	require.Eventually(t, func() bool {
		got := r.since(mark)
		return len(got) >= 2 && got[0] == "live false" && got[len(got)-1] == "live true"
	}, 20*time.Second, 10*time.Millisecond, "lost, live again")
	r.hears(t, func(int) {
		_, err := other.UpdateKey(ctx, acct, reg, "k0-"+run, func(k *Key) error { k.State = "Enabled"; return nil })
		require.NoError(t, err)
	}, func(int) []string { return []string{"key " + acct + "/" + reg + "/k0-" + run} })
}

func TestKeyCacheNotLive(t *testing.T) {
	// A cache whose feed is not live reads through and keeps nothing;
	// going live again starts from nothing.
	each(t, func(t *testing.T, d *db) {
		ss := d.nodes(t, 2)
		c := WithKeyCache(ss[0])
		other := ss[1]
		const acct, reg = "111122223333", "us-west-2"
		require.NoError(t, other.CreateKey(ctx, newKey(acct, reg, "k"), nil))
		k, err := c.GetKey(ctx, acct, reg, "k")
		require.NoError(t, err)
		require.Equal(t, "Enabled", k.State)

		_, err = other.UpdateKey(ctx, acct, reg, "k", func(k *Key) error { k.State = "Disabled"; return nil })
		require.NoError(t, err)
		k, _ = c.GetKey(ctx, acct, reg, "k")
		require.Equal(t, "Enabled", k.State, "live and told nothing: the copy (what a lost notification would do)")
		c.Invalidate(acct, reg, "k")
		k, _ = c.GetKey(ctx, acct, reg, "k")
		require.Equal(t, "Disabled", k.State, "told: read again")

		c.SetLive(false)
		require.False(t, c.Live())
		_, err = other.UpdateKey(ctx, acct, reg, "k", func(k *Key) error { k.State = "Enabled"; return nil })
		require.NoError(t, err)
		k, _ = c.GetKey(ctx, acct, reg, "k")
		require.Equal(t, "Enabled", k.State, "not live: read through")
		_, err = other.UpdateKey(ctx, acct, reg, "k", func(k *Key) error { k.State = "Disabled"; return nil })
		require.NoError(t, err)
		k, _ = c.GetKey(ctx, acct, reg, "k")
		require.Equal(t, "Disabled", k.State, "and keeps nothing")
		c.SetLive(true)
		k, _ = c.GetKey(ctx, acct, reg, "k")
		require.Equal(t, "Disabled", k.State)
	})
}
