package store

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgNamedLockClass, with a hash of the name, keys Lock's session advisory
// locks; the transaction-level locks above use other classes of the same
// key space.
const pgNamedLockClass int32 = 0x6c6b // "lk"

// TakeMark is one statement: the insert, or the replacement of a mark that
// has expired, under the row's lock; a mark still held leaves the
// statement without a row.
func (p *PostgreSQL) TakeMark(ctx context.Context, m Mark) error {
	if !storable(m.Name, m.Node, m.Detail) {
		return errors.New("store: a mark's name, node and detail are UTF-8 without NUL")
	}
	var one int
	err := p.pool.QueryRow(ctx, `INSERT INTO marks (name, node, detail, started, expires) VALUES ($1,$2,$3,$4,$5)
		ON CONFLICT (name) DO UPDATE SET node = excluded.node, detail = excluded.detail, started = excluded.started, expires = excluded.expires
		WHERE marks.expires <= excluded.started
		RETURNING 1`, m.Name, m.Node, m.Detail, toNanos(m.Started), toNanos(m.Expires)).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrMarkHeld
	}
	return err
}

func (p *PostgreSQL) GetMark(ctx context.Context, name string) (*Mark, error) {
	if !storable(name) {
		return nil, ErrNotFound
	}
	var m Mark
	var started, expires int64
	err := p.pool.QueryRow(ctx, `SELECT name, node, detail, started, expires FROM marks WHERE name = $1`, name).
		Scan(&m.Name, &m.Node, &m.Detail, &started, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	m.Started, m.Expires = fromNanos(started), fromNanos(expires)
	return &m, nil
}

func (p *PostgreSQL) DeleteMark(ctx context.Context, name, node string, started time.Time) error {
	if !storable(name, node) {
		return nil
	}
	_, err := p.pool.Exec(ctx, `DELETE FROM marks WHERE name = $1 AND node = $2 AND started = $3`, name, node, toNanos(started))
	return err
}

func (p *PostgreSQL) DeleteNodeMarks(ctx context.Context, node string) error {
	if !storable(node) {
		return nil
	}
	_, err := p.pool.Exec(ctx, `DELETE FROM marks WHERE node = $1`, node)
	return err
}

// Lock takes a session advisory lock on a connection of its own, held
// until unlock: if this process dies, or its connection does, the server
// releases the lock. A connection whose lock call failed in any way is
// closed rather than returned to the pool, since a lock granted just as
// the call was cancelled would otherwise stay with it.
func (p *PostgreSQL) Lock(ctx context.Context, name string) (func(), error) {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1, hashtext($2))`, pgNamedLockClass, name); err != nil {
		conn.Conn().Close(context.WithoutCancel(ctx))
		conn.Release()
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := conn.Exec(c, `SELECT pg_advisory_unlock($1, hashtext($2))`, pgNamedLockClass, name); err != nil {
				conn.Conn().Close(c) // the session's end releases it
			}
			conn.Release()
		})
	}, nil
}

func (p *PostgreSQL) Heartbeat(ctx context.Context, node string, started, now time.Time) error {
	if !storable(node) {
		return errors.New("store: a node id is UTF-8 without NUL")
	}
	_, err := p.pool.Exec(ctx, `INSERT INTO nodes (id, started, heartbeat) VALUES ($1,$2,$3)
		ON CONFLICT (id) DO UPDATE SET started = excluded.started, heartbeat = excluded.heartbeat`,
		node, toNanos(started), toNanos(now))
	return err
}

func (p *PostgreSQL) GetNode(ctx context.Context, node string) (*Node, error) {
	if !storable(node) {
		return nil, ErrNotFound
	}
	n := Node{ID: node}
	var started, hb int64
	err := p.pool.QueryRow(ctx, `SELECT started, heartbeat FROM nodes WHERE id = $1`, node).Scan(&started, &hb)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	n.Started, n.Heartbeat = fromNanos(started), fromNanos(hb)
	return &n, nil
}

func (p *PostgreSQL) Nodes(ctx context.Context) ([]Node, error) {
	rows, err := p.pool.Query(ctx, `SELECT id, started, heartbeat FROM nodes ORDER BY id`)
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

func (p *PostgreSQL) PutKeyStoreLogin(ctx context.Context, l KeyStoreLogin) error {
	if !storable(l.KeyStoreID, l.Node, l.State, l.ErrorCode) {
		return errors.New("store: a login's fields are UTF-8 without NUL")
	}
	_, err := p.pool.Exec(ctx, `INSERT INTO key_store_logins (key_store_id, node, state, error_code, updated) VALUES ($1,$2,$3,$4,$5)
		ON CONFLICT (key_store_id, node) DO UPDATE SET state = excluded.state, error_code = excluded.error_code, updated = excluded.updated`,
		l.KeyStoreID, l.Node, l.State, l.ErrorCode, toNanos(l.Updated))
	return err
}

func (p *PostgreSQL) KeyStoreLogins(ctx context.Context, keyStoreID string) ([]KeyStoreLogin, error) {
	if !storable(keyStoreID) {
		return nil, nil
	}
	rows, err := p.pool.Query(ctx, `SELECT l.key_store_id, l.node, l.state, l.error_code, l.updated, COALESCE(n.heartbeat, 0)
		FROM key_store_logins l LEFT JOIN nodes n ON n.id = l.node WHERE l.key_store_id = $1 ORDER BY l.node`, keyStoreID)
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

func (p *PostgreSQL) ResetNodeLogins(ctx context.Context, node string, now time.Time) error {
	if !storable(node) {
		return nil
	}
	_, err := p.pool.Exec(ctx, `UPDATE key_store_logins SET state = 'DISCONNECTED', error_code = '', updated = $1 WHERE node = $2`, toNanos(now), node)
	return err
}
