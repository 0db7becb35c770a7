package store

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/kms/store/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// What only PostgreSQL has: server settings the store must not inherit,
// its pool, its URL. The behaviour both engines share is tested on both,
// through each.

func openPostgreSQL(t *testing.T, params ...string) *PostgreSQL {
	t.Helper()
	u := pgtest.NewSchema(t)
	for _, p := range params {
		u += "&" + p
	}
	s, err := OpenPostgreSQL(ctx, u)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// eachConn runs fn on n connections of the pool held at once, so that
// it sees n distinct sessions.
func eachConn(t *testing.T, pool *pgxpool.Pool, n int, fn func(c *pgxpool.Conn)) {
	t.Helper()
	var held []*pgxpool.Conn
	defer func() {
		for _, c := range held {
			c.Release()
		}
	}()
	for range n {
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		held = append(held, c)
		fn(c)
	}
}

func TestPostgreSQLDurableCommits(t *testing.T) {
	// A session default of synchronous_commit=off (set here in the URL;
	// a role or database default works alike) would acknowledge commits
	// a crash can lose: every connection of the store turns it on.
	t.Run("off", func(t *testing.T) {
		s := openPostgreSQL(t, "synchronous_commit=off")
		eachConn(t, s.pool, 4, func(c *pgxpool.Conn) {
			var mode string
			require.NoError(t, c.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&mode))
			require.Equal(t, "on", mode)
		})
	})
	t.Run("stronger is kept", func(t *testing.T) {
		s := openPostgreSQL(t, "synchronous_commit=remote_apply")
		eachConn(t, s.pool, 2, func(c *pgxpool.Conn) {
			var mode string
			require.NoError(t, c.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&mode))
			require.Equal(t, "remote_apply", mode)
		})
	})
}

func TestPostgreSQLReadCommittedWhateverTheDefault(t *testing.T) {
	// The locking relies on READ COMMITTED; a server or role default of
	// REPEATABLE READ or SERIALIZABLE must not change what the store does.
	for _, level := range []string{"repeatable read", "serializable"} {
		t.Run(level, func(t *testing.T) {
			u := pgtest.NewSchema(t) + "&default_transaction_isolation=" + url.PathEscape(level)
			ss := make([]Store, nodes)
			for i := range ss {
				s, err := OpenPostgreSQL(ctx, u)
				require.NoError(t, err)
				t.Cleanup(func() { s.Close() })
				ss[i] = s
			}
			require.NoError(t, ss[0].CreateKey(ctx, newKey("a", "r", "k"), nil))
			errs := race(racers, func(i int) error {
				return ss[i%nodes].CreateAlias(ctx, &Alias{Account: "a", Region: "r", Name: fmt.Sprintf("alias/a%02d", i), TargetKeyID: "k"}, 50)
			})
			requireOutcomes(t, errs, 50, ErrLimitExceeded)
			errs = race(racers, func(i int) error {
				_, err := ss[i%nodes].UpdateKey(ctx, "a", "r", "k", func(k *Key) error { k.PendingWindowDays++; return nil })
				return err
			})
			requireOutcomes(t, errs, racers, nil)
			k, err := ss[0].GetKey(ctx, "a", "r", "k")
			require.NoError(t, err)
			require.Equal(t, racers, k.PendingWindowDays, "no lost update")
		})
	}
}

func TestPostgreSQLPool(t *testing.T) {
	s := openPostgreSQL(t)
	require.EqualValues(t, defaultPoolSize, s.pool.Config().MaxConns, "the default size, not pgx's (CPUs)")
	var app string
	require.NoError(t, s.pool.QueryRow(ctx, `SHOW application_name`).Scan(&app))
	require.Equal(t, "hsmkms", app, "the sessions are recognisable in pg_stat_activity")

	s = openPostgreSQL(t, "pool_max_conns=3", "application_name=node-1")
	require.EqualValues(t, 3, s.pool.Config().MaxConns, "the URL's pool_max_conns wins")
	require.NoError(t, s.pool.QueryRow(ctx, `SHOW application_name`).Scan(&app))
	require.Equal(t, "node-1", app)
}

func TestPostgreSQLWalksHoldNoConnection(t *testing.T) {
	// ForEachKey releases its connection before calling fn, so fn can
	// write through the store even when the pool has a single connection
	// (and a reaper walking many keys never starves the others).
	s := openPostgreSQL(t, "pool_max_conns=1")
	for i := range forEachPage + 10 {
		require.NoError(t, s.CreateKey(ctx, newKey("a", "r", fmt.Sprintf("k%04d", i)), nil))
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n := 0
	require.NoError(t, s.ForEachKey(cctx, func(k *Key) error {
		n++
		_, err := s.UpdateKey(cctx, k.Account, k.Region, k.ID, func(k *Key) error { k.State = "Disabled"; return nil })
		return err
	}))
	require.Equal(t, forEachPage+10, n)
}

func TestPostgreSQLNeedsUTF8(t *testing.T) {
	admin := pgtest.URL(t)
	name := fmt.Sprintf("hsmkms_ascii_%d", time.Now().UnixNano())
	pgtest.Exec(t, admin, `CREATE DATABASE `+name+` TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'`)
	t.Cleanup(func() { pgtest.Exec(t, admin, `DROP DATABASE `+name+` WITH (FORCE)`) })
	u, err := url.Parse(admin)
	require.NoError(t, err)
	u.Path = "/" + name
	_, err = OpenPostgreSQL(ctx, u.String())
	require.ErrorContains(t, err, "SQL_ASCII")
	require.ErrorContains(t, err, "UTF8")
	require.Zero(t, pgtest.QueryInt(t, u.String(), `SELECT COUNT(*) FROM pg_tables WHERE tablename = 'keys'`), "refused before migrating")
}

func TestPostgreSQLURLStaysSecret(t *testing.T) {
	const secret = "s3cr3t-Pa55"
	good, err := url.Parse(pgtest.URL(t))
	require.NoError(t, err)
	wrongPassword := *good
	wrongPassword.User = url.UserPassword(good.User.Username(), secret)
	for name, u := range map[string]string{
		"unparsable":      "postgres://hsmkms:" + secret + "@127.0.0.1:5432/x?pool_max_conns=many",
		"keyword/value":   "host=127.0.0.1 password=" + secret + " pool_max_conns=-1",
		"wrong password":  wrongPassword.String(),
		"nothing listens": "postgres://hsmkms:" + secret + "@127.0.0.1:1/x?connect_timeout=5",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := OpenPostgreSQL(ctx, u)
			require.Error(t, err)
			require.NotContains(t, err.Error(), secret)
			require.True(t, strings.HasPrefix(err.Error(), "store: "), err.Error())
		})
	}
}

func TestPostgreSQLAnnouncesKeyChanges(t *testing.T) {
	// What a node's key cache will listen to: one notification per
	// committed change of a key's row, none for what did not commit, and
	// none for a new key (no node can have cached it).
	u := pgtest.NewSchema(t)
	s, err := OpenPostgreSQL(ctx, u)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	listener, err := pgx.Connect(ctx, u)
	require.NoError(t, err)
	t.Cleanup(func() { listener.Close(ctx) })
	_, err = listener.Exec(ctx, `LISTEN `+KeyChannel)
	require.NoError(t, err)

	const acct, reg = "111122223333", "us-west-2"
	for _, id := range []string{"k1", "k2"} {
		require.NoError(t, s.CreateKey(ctx, newKey(acct, reg, id), nil))
	}
	_, err = s.UpdateKey(ctx, acct, reg, "k1", func(k *Key) error { k.State = "Disabled"; return nil })
	require.NoError(t, err)
	_, err = s.UpdateKey(ctx, acct, reg, "k2", func(*Key) error { return ErrLimitExceeded })
	require.ErrorIs(t, err, ErrLimitExceeded)
	require.NoError(t, s.CreateAlias(ctx, &Alias{Account: acct, Region: reg, Name: "alias/x", TargetKeyID: "k2"}, testLimit))
	require.NoError(t, s.DeleteKey(ctx, acct, reg, "k1"))
	require.ErrorIs(t, s.DeleteKey(ctx, acct, reg, "k1"), ErrNotFound)
	k2, err := s.GetKey(ctx, acct, reg, "k2")
	require.NoError(t, err)
	require.NoError(t, s.DeleteKeyOrphaning(ctx, k2, time.Now()))

	var got []string
	for {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		n, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			require.ErrorIs(t, err, context.DeadlineExceeded)
			break
		}
		require.Equal(t, KeyChannel, n.Channel)
		got = append(got, n.Payload)
	}
	require.Equal(t, []string{acct + "/" + reg + "/k1", acct + "/" + reg + "/k1", acct + "/" + reg + "/k2"}, got,
		"UpdateKey, DeleteKey and DeleteKeyOrphaning, in commit order; not the failed update, the alias or the creations")
}
