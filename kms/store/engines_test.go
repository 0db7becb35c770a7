package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmkms/hsmkms/kms/store/pgtest"
	"github.com/stretchr/testify/require"
)

// The store suite runs on every engine: each test of the Store interface
// calls each, which runs it once per engine as a subtest named after it
// ("TestAliases/postgres"), on a fresh database. PostgreSQL comes from
// pgtest: started by this test process unless HSMKMS_TEST_POSTGRES_URL
// names one; HSMKMS_TEST_POSTGRES=skip skips its subtests explicitly.

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Cleanup()
	os.Exit(code)
}

var ctx = context.Background()

// An engine is one implementation of Store with what the engine-specific
// parts of the suite need to reach under it.
type engine struct {
	name string
	// newDB makes a fresh, empty database for t and returns what opens
	// it: a file path or a URL.
	newDB func(t testing.TB) string
	open  func(dsn string) (Store, error)
	// migrations is the engine's migration list; version reads the
	// schema version the database records, exec runs SQL on it
	// directly (as an older hsmkms or an operator would).
	migrations []string
	version    func(t testing.TB, dsn string) int
	exec       func(t testing.TB, dsn, sql string)
	// atVersion1 is SQL leaving a database as hsmkms left it at schema
	// version 1, with one key "a"/"r"/"k"; setVersion(n) is SQL recording
	// schema version n.
	atVersion1 string
	setVersion func(n int) string
	// rotationPlan explains KeysDueForRotation's query as the engine
	// would run it on a large table.
	rotationPlan func(t testing.TB, s Store) string
}

var engines = []engine{
	{
		name: "sqlite",
		newDB: func(t testing.TB) string {
			return filepath.Join(t.TempDir(), "hsmkms.db")
		},
		open:       func(path string) (Store, error) { return OpenSQLite(path) },
		migrations: migrations,
		version: func(t testing.TB, path string) int {
			db := rawSQLite(t, path)
			var v int
			require.NoError(t, db.QueryRow(`PRAGMA user_version`).Scan(&v))
			return v
		},
		exec: func(t testing.TB, path, query string) {
			_, err := rawSQLite(t, path).Exec(query)
			require.NoError(t, err)
		},
		atVersion1: migrations[0] + `; PRAGMA user_version = 1;
			INSERT INTO keys VALUES ('a','r','k','','ENCRYPT_DECRYPT','SYMMETRIC_DEFAULT','AWS_KMS','Enabled',1,0,0,'{}','',0,0,0,0,'[]')`,
		setVersion: func(n int) string { return fmt.Sprintf(`PRAGMA user_version = %d`, n) },
		rotationPlan: func(t testing.TB, s Store) string {
			rows, err := s.(*SQLite).db.Query(`EXPLAIN QUERY PLAN SELECT ` + keyColumns + ` FROM keys WHERE rotation_enabled = 1 AND state = 'Enabled' AND next_rotation_date <= 0 ORDER BY next_rotation_date`)
			require.NoError(t, err)
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, unused int
				var detail string
				require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
				plan = append(plan, detail)
			}
			require.NoError(t, rows.Err())
			return strings.Join(plan, "\n")
		},
	},
	{
		name:       "postgres",
		newDB:      pgtest.NewSchema,
		open:       func(url string) (Store, error) { return OpenPostgreSQL(ctx, url) },
		migrations: pgMigrations,
		version: func(t testing.TB, url string) int {
			return pgtest.QueryInt(t, url, `SELECT version FROM schema_version`)
		},
		exec: func(t testing.TB, url, query string) { pgtest.Exec(t, url, query) },
		atVersion1: `CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);` + pgMigrations[0] + `;
			INSERT INTO keys VALUES ('a','r','k','','ENCRYPT_DECRYPT','SYMMETRIC_DEFAULT','AWS_KMS','Enabled',1,0,0,'{}','',false,0,0,false,'[]')`,
		setVersion: func(n int) string { return fmt.Sprintf(`UPDATE schema_version SET version = %d`, n) },
		rotationPlan: func(t testing.TB, s Store) string {
			// The test's table is tiny: forbid the sequential scan the
			// planner would rightly prefer, to see the index it would use.
			tx, err := s.(*PostgreSQL).pool.Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(ctx)
			_, err = tx.Exec(ctx, `SET LOCAL enable_seqscan = off`)
			require.NoError(t, err)
			rows, err := tx.Query(ctx, `EXPLAIN SELECT `+pgKeyColumns+` FROM keys WHERE rotation_enabled AND state = 'Enabled' AND next_rotation_date <= 0
				ORDER BY next_rotation_date, account, region, id`)
			require.NoError(t, err)
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var line string
				require.NoError(t, rows.Scan(&line))
				plan = append(plan, line)
			}
			require.NoError(t, rows.Err())
			return strings.Join(plan, "\n")
		},
	},
}

func rawSQLite(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// A db is one test's fresh database on one engine.
type db struct {
	engine
	dsn string
}

// each runs test once per engine, in parallel subtests, each on a fresh
// database.
func each(t *testing.T, test func(t *testing.T, d *db)) {
	t.Parallel()
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			test(t, &db{engine: e, dsn: e.newDB(t)})
		})
	}
}

// eachB is each for benchmarks (not in parallel: they measure).
func eachB(b *testing.B, bench func(b *testing.B, d *db)) {
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) { bench(b, &db{engine: e, dsn: e.newDB(b)}) })
	}
}

// open opens the database, as a process (or node) starting would, and
// closes it when t ends; call it again for another process.
func (d *db) open(t testing.TB) Store {
	t.Helper()
	s, err := d.engine.open(d.dsn)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// nodes opens the database n times: n stores with their own connections,
// as n hsmkms processes sharing it. On PostgreSQL each gets a pool of
// nodePool connections rather than the default 16: as many concurrent
// transactions as racers need to collide, without paying for dozens of
// connections (20 ms each under the race detector) in every race.
func (d *db) nodes(t testing.TB, n int) []Store {
	const nodePool = 4
	dsn := d.dsn
	if d.name == "postgres" {
		dsn += fmt.Sprintf("&pool_max_conns=%d", nodePool)
	}
	ss := make([]Store, n)
	for i := range ss {
		s, err := d.engine.open(dsn)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		ss[i] = s
	}
	return ss
}
