package store

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"time"
)

// On SQLite one process owns the database (the file's write lock admits
// one writer, and hsmkms runs one node on it), so coordination is mostly
// bookkeeping: marks and logins are rows like any other, and locks are
// this process's.

func scanMark(row scanner) (*Mark, error) {
	var m Mark
	var started, expires int64
	err := row.Scan(&m.Name, &m.Node, &m.Detail, &started, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	m.Started, m.Expires = fromNanos(started), fromNanos(expires)
	return &m, nil
}

func (s *SQLite) TakeMark(ctx context.Context, m Mark) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		cur, err := scanMark(tx.QueryRowContext(ctx, `SELECT name, node, detail, started, expires FROM marks WHERE name = ?`, m.Name))
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return err
		case cur.Expires.After(m.Started):
			return ErrMarkHeld
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO marks (name, node, detail, started, expires) VALUES (?,?,?,?,?)
			ON CONFLICT (name) DO UPDATE SET node = excluded.node, detail = excluded.detail, started = excluded.started, expires = excluded.expires`,
			m.Name, m.Node, m.Detail, toNanos(m.Started), toNanos(m.Expires))
		return err
	})
}

func (s *SQLite) GetMark(ctx context.Context, name string) (*Mark, error) {
	return scanMark(s.db.QueryRowContext(ctx, `SELECT name, node, detail, started, expires FROM marks WHERE name = ?`, name))
}

func (s *SQLite) DeleteMark(ctx context.Context, name, node string, started time.Time) error {
	_, err := s.exec(ctx, `DELETE FROM marks WHERE name = ? AND node = ? AND started = ?`, name, node, toNanos(started))
	return err
}

func (s *SQLite) DeleteNodeMarks(ctx context.Context, node string) error {
	_, err := s.exec(ctx, `DELETE FROM marks WHERE node = ?`, node)
	return err
}

// sqliteLocks are Lock's locks: one channel per database file and name,
// shared by every store of this process open on the file.
var sqliteLocks sync.Map // path + "\x00" + name → chan struct{}

// Lock is a lock of this process on this database file: on SQLite no
// other process writes the database.
func (s *SQLite) Lock(ctx context.Context, name string) (func(), error) {
	v, _ := sqliteLocks.LoadOrStore(s.path+"\x00"+name, make(chan struct{}, 1))
	ch := v.(chan struct{})
	select {
	case ch <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-ch }) }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *SQLite) Heartbeat(ctx context.Context, node string, started, now time.Time) error {
	_, err := s.exec(ctx, `INSERT INTO nodes (id, started, heartbeat) VALUES (?,?,?)
		ON CONFLICT (id) DO UPDATE SET started = excluded.started, heartbeat = excluded.heartbeat`,
		node, toNanos(started), toNanos(now))
	return err
}

func (s *SQLite) GetNode(ctx context.Context, node string) (*Node, error) {
	n := Node{ID: node}
	var started, hb int64
	err := s.db.QueryRowContext(ctx, `SELECT started, heartbeat FROM nodes WHERE id = ?`, node).Scan(&started, &hb)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	n.Started, n.Heartbeat = fromNanos(started), fromNanos(hb)
	return &n, nil
}

func (s *SQLite) Nodes(ctx context.Context) ([]Node, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, started, heartbeat FROM nodes ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		var n Node
		var started, hb int64
		if err := rows.Scan(&n.ID, &started, &hb); err != nil {
			return nil, err
		}
		n.Started, n.Heartbeat = fromNanos(started), fromNanos(hb)
		out = append(out, n)
	}
	return out, rows.Err()
}

func (s *SQLite) PutKeyStoreLogin(ctx context.Context, l KeyStoreLogin) error {
	_, err := s.exec(ctx, `INSERT INTO key_store_logins (key_store_id, node, state, error_code, updated) VALUES (?,?,?,?,?)
		ON CONFLICT (key_store_id, node) DO UPDATE SET state = excluded.state, error_code = excluded.error_code, updated = excluded.updated`,
		l.KeyStoreID, l.Node, l.State, l.ErrorCode, toNanos(l.Updated))
	return err
}

func (s *SQLite) KeyStoreLogins(ctx context.Context, keyStoreID string) ([]KeyStoreLogin, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT l.key_store_id, l.node, l.state, l.error_code, l.updated, COALESCE(n.heartbeat, 0)
		FROM key_store_logins l LEFT JOIN nodes n ON n.id = l.node WHERE l.key_store_id = ? ORDER BY l.node`, keyStoreID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []KeyStoreLogin
	for rows.Next() {
		var l KeyStoreLogin
		var updated, hb int64
		if err := rows.Scan(&l.KeyStoreID, &l.Node, &l.State, &l.ErrorCode, &updated, &hb); err != nil {
			return nil, err
		}
		l.Updated, l.Heartbeat = fromNanos(updated), fromNanos(hb)
		out = append(out, l)
	}
	return out, rows.Err()
}

func (s *SQLite) ResetNodeLogins(ctx context.Context, node string, now time.Time) error {
	_, err := s.exec(ctx, `UPDATE key_store_logins SET state = 'DISCONNECTED', error_code = '', updated = ? WHERE node = ?`, toNanos(now), node)
	return err
}
