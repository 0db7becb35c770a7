package store

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"modernc.org/sqlite"
)

// What only SQLite has: its file, its pragmas, its driver's errors. The
// behaviour both engines share is tested on both, through each.

func openSQLite(t *testing.T) (*SQLite, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsmkms.db")
	s, err := OpenSQLite(path)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestFilesArePrivate(t *testing.T) {
	s, path := openSQLite(t)
	require.NoError(t, s.CreateKey(ctx, newKey("a", "r", "k"), nil))
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), p)
	}
	var mode string
	require.NoError(t, s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	require.Equal(t, "wal", mode)
	var sync, fk int
	require.NoError(t, s.db.QueryRow(`PRAGMA synchronous`).Scan(&sync))
	require.Equal(t, 2, sync, "FULL")
	require.NoError(t, s.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk))
	require.Equal(t, 1, fk)
}

func TestOddPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "with space")
	require.NoError(t, os.Mkdir(dir, 0o700))
	path := filepath.Join(dir, "a?b#c%41.db")
	s, err := OpenSQLite(path)
	require.NoError(t, err)
	require.NoError(t, s.CreateKey(ctx, newKey("a", "r", "k"), nil))
	require.NoError(t, s.Close())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.Contains(t, names, "a?b#c%41.db", "the file is named exactly as asked")
	s, err = OpenSQLite(path)
	require.NoError(t, err)
	defer s.Close()
	_, err = s.GetKey(ctx, "a", "r", "k")
	require.NoError(t, err)

	_, err = OpenSQLite(filepath.Join(t.TempDir(), "no-such-dir", "x.db"))
	require.Error(t, err, "the parent directory must exist")
}

// The constraint check must see through the driver's error type.
func TestIsConstraint(t *testing.T) {
	s, _ := openSQLite(t)
	require.NoError(t, s.CreateKey(ctx, newKey("a", "r", "k"), nil))
	_, err := s.db.Exec(`INSERT INTO keys (account, region, id) VALUES ('a','r','k')`)
	var se *sqlite.Error
	require.ErrorAs(t, err, &se)
	require.True(t, isConstraint(err))
	require.False(t, isConstraint(errors.New("x")))
}

// TestGroupCommit: writes committed together keep each its own outcome: a
// failing or panicking write is undone alone, and the rules checked in a
// transaction hold across the group.
func TestGroupCommit(t *testing.T) {
	s, err := OpenSQLite(filepath.Join(t.TempDir(), "db"))
	require.NoError(t, err)
	defer s.Close()
	var wg sync.WaitGroup
	boom := errors.New("boom")
	errs := make([]error, 96)
	for i := range errs {
		wg.Go(func() {
			switch {
			case i%3 == 0: // all the same key: one may win
				errs[i] = s.CreateKey(ctx, newKey("111122223333", "us-west-2", "same"), nil)
			case i%3 == 1: // written, then failed: undone
				errs[i] = s.tx(ctx, func(tx *sql.Tx) error {
					if _, err := tx.ExecContext(ctx, `INSERT INTO token_identities (key_store_id, cluster_id, marker, serial, label, recorded) VALUES (?,'',x'00','','',0)`, fmt.Sprint("undone-", i)); err != nil {
						return err
					}
					if i%2 == 0 {
						panic("in a write")
					}
					return boom
				})
			default:
				errs[i] = s.CreateKey(ctx, newKey("111122223333", "us-west-2", fmt.Sprint("k", i)), nil)
			}
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case i%3 == 0 && err == nil:
			won++
		case i%3 == 0:
			require.ErrorIs(t, err, ErrAlreadyExists)
		case i%3 == 1 && i%2 == 0:
			require.ErrorContains(t, err, "a write panicked")
		case i%3 == 1:
			require.ErrorIs(t, err, boom)
		default:
			require.NoError(t, err)
		}
	}
	require.Equal(t, 1, won, "exactly one of the same key")
	var n int
	require.NoError(t, s.db.QueryRow(`SELECT COUNT(*) FROM token_identities`).Scan(&n))
	require.Zero(t, n, "failed writes were undone")
	require.NoError(t, s.db.QueryRow(`SELECT COUNT(*) FROM keys`).Scan(&n))
	require.Equal(t, 1+32, n)
}
