// Package pgtest gives tests throwaway PostgreSQL databases, as hsmtest
// gives them SoftHSM2 tokens, so that the store suite runs on PostgreSQL
// wherever `make test` runs.
//
// The server is, in order:
//   - the one at HSMKMS_TEST_POSTGRES_URL (a postgres:// URL of a role
//     that may create databases), if set;
//   - otherwise a cluster this test process starts on first use, through
//     scripts/postgres.sh (which installs PostgreSQL from the distribution's
//     packages if missing), in a temporary directory, on 127.0.0.1, as an
//     unprivileged user. The server is the process's child and gets SIGQUIT
//     if the process dies; Cleanup stops it and removes its directory.
//
// If neither works the tests that asked fail, loudly: PostgreSQL is part of
// the test suite, not an option. HSMKMS_TEST_POSTGRES=skip skips them, and
// says so in each skip.
//
// Each NewSchema is a fresh, empty schema, dropped when its test ends, so
// tests stay independent and may run in parallel.
package pgtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	// EnvURL names a server to use instead of starting one.
	EnvURL = "HSMKMS_TEST_POSTGRES_URL"
	// EnvSkip set to "skip" skips the tests that need PostgreSQL.
	EnvSkip = "HSMKMS_TEST_POSTGRES"
)

var server struct {
	once sync.Once
	url  string
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error

	// The process's database, where NewSchema makes schemas.
	dbOnce sync.Once
	dbName string
	dbURL  *url.URL
	db     *pgxpool.Pool
	dbErr  error
	n      atomic.Int64
}

// Skipped reports whether HSMKMS_TEST_POSTGRES=skip asks to skip the
// PostgreSQL tests.
func Skipped() bool { return os.Getenv(EnvSkip) == "skip" }

// URL returns the server's URL, starting the process's cluster on first
// use. It skips t if Skipped and fails t if there is no server.
func URL(t testing.TB) string {
	t.Helper()
	if Skipped() {
		t.Skipf("%s=skip: PostgreSQL tests skipped", EnvSkip)
	}
	server.once.Do(start)
	if server.err != nil {
		t.Fatalf("pgtest: no PostgreSQL server (set %s=skip to skip these tests explicitly): %v", EnvSkip, server.err)
	}
	return server.url
}

// NewSchema creates an empty schema for t, dropped when t ends, and
// returns a URL whose connections use it (search_path): to a store, a
// fresh database. Schemas rather than databases because CREATE DATABASE
// copies a template and costs half a second; they live in one database
// this process creates (UTF8, C collation) and Cleanup drops.
func NewSchema(t testing.TB) string {
	t.Helper()
	URL(t)
	server.dbOnce.Do(createDatabase)
	if server.dbErr != nil {
		t.Fatalf("pgtest: %v", server.dbErr)
	}
	var b [4]byte
	rand.Read(b[:])
	name := fmt.Sprintf("t%d_%s", server.n.Add(1), hex.EncodeToString(b[:]))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := server.db.Exec(ctx, `CREATE SCHEMA `+name); err != nil {
		t.Fatalf("pgtest: creating a schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := server.db.Exec(ctx, `DROP SCHEMA `+name+` CASCADE`); err != nil {
			t.Errorf("pgtest: dropping schema %s: %v", name, err)
		}
	})
	u := *server.dbURL
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// createDatabase creates the process's database: its own, so that on a
// shared server (HSMKMS_TEST_POSTGRES_URL) nothing is left in another's.
func createDatabase() {
	u, err := url.Parse(server.url)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		server.dbErr = fmt.Errorf("%s must be a postgres:// URL", EnvURL)
		return
	}
	var b [4]byte
	rand.Read(b[:])
	name := fmt.Sprintf("hsmkms_test_%d_%s", os.Getpid(), hex.EncodeToString(b[:]))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, server.url)
	if err != nil {
		server.dbErr = err
		return
	}
	defer conn.Close(ctx)
	// template0, so that nothing added to template1 leaks in, and so the
	// encoding and collation can be chosen.
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+name+` TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'`); err != nil {
		server.dbErr = fmt.Errorf("creating the test database: %w", err)
		return
	}
	server.dbName = name
	u.Path = "/" + name
	server.dbURL = u
	if server.db, err = pgxpool.New(ctx, u.String()); err != nil {
		server.dbErr = err
	}
}

// Exec runs sql on the database at dbURL outside any store: for tests
// that set up what an older hsmkms or an operator would have left.
func Exec(t testing.TB, dbURL, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// QueryInt runs sql, which returns one integer, on the database at dbURL.
func QueryInt(t testing.TB, dbURL, sql string, args ...any) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return n
}

func start() {
	if u := os.Getenv(EnvURL); u != "" {
		server.url = u
		return
	}
	root, err := repoRoot()
	if err != nil {
		server.err = err
		return
	}
	script := filepath.Join(root, "scripts", "postgres.sh")
	if out, err := exec.Command(script, "install").CombinedOutput(); err != nil {
		server.err = fmt.Errorf("scripts/postgres.sh install: %v\n%s", err, out)
		return
	}
	// A port taken between the script's choice and the server's bind
	// makes the server exit: try again on another.
	for range 3 {
		if server.err = run(script); server.err == nil {
			return
		}
	}
}

// run starts the cluster in a new directory and waits until it answers.
func run(script string) error {
	// Not t.TempDir: the server's user must reach the directory, and
	// the parents of a test's temporary directory are private.
	dir, err := os.MkdirTemp("", "hsmkms-pg-")
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return err
	}
	cmd := exec.Command(script, "run", dir)
	cmd.SysProcAttr = serverProcAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	fail := func(err error) error {
		cmd.Process.Kill()
		<-done
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		os.RemoveAll(dir)
		return fmt.Errorf("%w\n%s%s", err, stderr.String(), tail(string(log), 20))
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fail(errors.New("scripts/postgres.sh run printed no URL"))
	}
	u := strings.TrimSpace(line)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, u)
		if err == nil {
			conn.Close(ctx)
			cancel()
			break
		}
		cancel()
		select {
		case <-done:
			return fail(errors.New("the PostgreSQL server exited"))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the PostgreSQL server did not answer within a minute: %v", err))
		}
	}
	server.url, server.dir, server.cmd, server.done = u, dir, cmd, done
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Cleanup drops the process's database and stops the cluster this process
// started, if any, and removes its directory; call it from TestMain after
// m.Run.
func Cleanup() {
	if server.db != nil {
		server.db.Close()
		server.db = nil
		if server.cmd == nil {
			// Another's server: leave nothing in it. (Ours goes whole.)
			dropDatabase()
		}
	}
	if server.cmd == nil {
		return
	}
	// SIGINT is PostgreSQL's fast shutdown: it ends the sessions a test
	// left open instead of waiting for them.
	server.cmd.Process.Signal(os.Interrupt)
	select {
	case <-server.done:
	case <-time.After(30 * time.Second):
		server.cmd.Process.Kill()
		<-server.done
	}
	os.RemoveAll(server.dir)
	server.cmd = nil
}

func dropDatabase() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, server.url)
	if err == nil {
		defer conn.Close(ctx)
		// FORCE: a store a test forgot to close must not keep it.
		_, err = conn.Exec(ctx, `DROP DATABASE `+server.dbName+` WITH (FORCE)`)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: dropping the test database %s: %v\n", server.dbName, err)
	}
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("pgtest: no go.mod above the working directory")
		}
		dir = parent
	}
}
