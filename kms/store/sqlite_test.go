package store

import (
	"errors"
	"os"
	"path/filepath"
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
