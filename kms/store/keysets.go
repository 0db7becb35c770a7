package store

import (
	"context"
	"database/sql"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Multi-Region keys. The keys of one multi-Region key (its primary and
// replicas) are rows of the keys table with the same account and id, one
// per Region: each has its own policy, aliases, tags, grants, description
// and state, and they share key material, which each row records (the
// same Materials). Whatever must stay the same across the set (a rotation,
// the rotation schedule, which Region is primary, a replica joining or
// leaving) is written to every row of the set in one transaction
// (UpdateKeySet), so no reader ever sees the set disagree with itself.

// SetChange is what an UpdateKeySet does besides writing back the keys it
// read.
type SetChange struct {
	// Add, if set, is inserted into the set, with AddTags: a new replica.
	// ErrAlreadyExists if its Region has a key with its id.
	Add     *Key
	AddTags []Tag
	// Delete, if set, is the Region of a key of the set to delete, with
	// its aliases, tags and grants.
	Delete string
}

// keySetStore is the part of the Store interface for multi-Region keys.
type keySetStore interface {
	// UpdateKeySet calls fn with every multi-Region key of account with id
	// (in every Region, ordered by Region) inside one write transaction,
	// writes back each key (fn may not change their identities), deletes
	// and inserts what fn's SetChange says, and returns the set as it is
	// then. ErrNotFound if there is no such key; an error of fn is
	// returned unchanged and nothing is written.
	UpdateKeySet(ctx context.Context, account, id string, fn func([]*Key) (SetChange, error)) ([]*Key, error)
	// KeySet returns the multi-Region keys of account with id, by Region;
	// ErrNotFound if there are none.
	KeySet(ctx context.Context, account, id string) ([]*Key, error)
	// KeysInTransition returns the multi-Region keys with a transition to
	// finish: a replica Creating, or a primary Region being moved.
	KeysInTransition(ctx context.Context) ([]*Key, error)
}

// inTransition is KeysInTransition's condition: the same expression as its
// partial index's (migration 8, written out there so that the migration
// never changes), which the planner uses only for that expression.
const (
	inTransition   = `multi_region = 1 AND (new_primary_region != '' OR (state = 'Creating' AND region != primary_region))`
	pgInTransition = `multi_region AND (new_primary_region <> '' OR (state = 'Creating' AND region <> primary_region))`
)

func (s *SQLite) KeysInTransition(ctx context.Context) ([]*Key, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE `+inTransition)
	if err != nil {
		return nil, err
	}
	return collectKeys(rows)
}

func (p *PostgreSQL) KeysInTransition(ctx context.Context) ([]*Key, error) {
	return pgCollectKeys(p.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE `+pgInTransition))
}

// applySet is the engine-independent part of UpdateKeySet: it runs fn on
// the set read, checks what it may not change, and returns the keys to
// write back (with their state before fn) and the change.
func applySet(account, id string, keys []*Key, fn func([]*Key) (SetChange, error)) (before []Key, ch SetChange, err error) {
	if len(keys) == 0 {
		return nil, ch, ErrNotFound
	}
	before = make([]Key, len(keys))
	regions := make([]string, len(keys))
	for i, k := range keys {
		before[i] = *k
		before[i].Materials = slices.Clone(k.Materials)
		regions[i] = k.Region
	}
	if ch, err = fn(keys); err != nil {
		return nil, ch, err
	}
	for i, k := range keys {
		k.Account, k.Region, k.ID = account, regions[i], id
	}
	if ch.Add != nil {
		ch.Add.Account, ch.Add.ID = account, id
	}
	return before, ch, nil
}

func (s *SQLite) KeySet(ctx context.Context, account, id string) ([]*Key, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE account = ? AND id = ? AND multi_region = 1 ORDER BY region`, account, id)
	if err != nil {
		return nil, err
	}
	keys, err := collectKeys(rows)
	if err == nil && len(keys) == 0 {
		err = ErrNotFound
	}
	return keys, err
}

func (s *SQLite) UpdateKeySet(ctx context.Context, account, id string, fn func([]*Key) (SetChange, error)) ([]*Key, error) {
	var out []*Key
	err := s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE account = ? AND id = ? AND multi_region = 1 ORDER BY region`, account, id)
		if err != nil {
			return err
		}
		keys, err := collectKeys(rows)
		if err != nil {
			return err
		}
		before, ch, err := applySet(account, id, keys, fn)
		if err != nil {
			return err
		}
		out = out[:0]
		for i, k := range keys {
			if k.Region == ch.Delete {
				if _, err := tx.ExecContext(ctx, `DELETE FROM keys WHERE account = ? AND region = ? AND id = ?`, account, k.Region, id); err != nil {
					return err
				}
				continue
			}
			if err := usableDomainKeys(ctx, tx, k.MaterialStoreID(), newDomainKeys(&before[i], k)); err != nil {
				return err
			}
			vals, err := keyValues(k)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, updateKeySQL, append(vals[3:], account, k.Region, id)...); err != nil {
				return err
			}
			out = append(out, k)
		}
		if a := ch.Add; a != nil {
			if err := usableDomainKeys(ctx, tx, a.MaterialStoreID(), newDomainKeys(nil, a)); err != nil {
				return err
			}
			vals, err := keyValues(a)
			if err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO keys (`+keyColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`, vals...)
			if isConstraint(err) {
				return ErrAlreadyExists
			}
			if err != nil {
				return err
			}
			if err := putTags(ctx, tx, a.Account, a.Region, a.ID, ch.AddTags); err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (p *PostgreSQL) KeySet(ctx context.Context, account, id string) ([]*Key, error) {
	if !storable(account, id) {
		return nil, ErrNotFound
	}
	keys, err := pgCollectKeys(p.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE account = $1 AND id = $2 AND multi_region ORDER BY region`, account, id))
	if err == nil && len(keys) == 0 {
		err = ErrNotFound
	}
	return keys, err
}

// UpdateKeySet locks every row of the set (FOR NO KEY UPDATE), so writers
// of the set, and of any one of its keys (UpdateKey), wait for each other;
// two replicas added to one Region at once meet the primary key.
func (p *PostgreSQL) UpdateKeySet(ctx context.Context, account, id string, fn func([]*Key) (SetChange, error)) ([]*Key, error) {
	if !storable(account, id) {
		return nil, ErrNotFound
	}
	var out []*Key
	err := p.tx(ctx, func(tx pgx.Tx) error {
		keys, err := pgCollectKeys(tx.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE account = $1 AND id = $2 AND multi_region ORDER BY region FOR NO KEY UPDATE`, account, id))
		if err != nil {
			return err
		}
		before, ch, err := applySet(account, id, keys, fn)
		if err != nil {
			return err
		}
		out = out[:0]
		for i, k := range keys {
			if k.Region == ch.Delete {
				if err := changeKey(ctx, tx, account, k.Region, id, `DELETE FROM keys WHERE account = $1 AND region = $2 AND id = $3`, account, k.Region, id); err != nil {
					return err
				}
				continue
			}
			if err := pgUsableDomainKeys(ctx, tx, k.MaterialStoreID(), newDomainKeys(&before[i], k)); err != nil {
				return err
			}
			vals, err := pgKeyValues(k)
			if err != nil {
				return err
			}
			if err := changeKey(ctx, tx, account, k.Region, id, pgUpdateKeySQL, append(vals[3:], account, k.Region, id)...); err != nil {
				return err
			}
			out = append(out, k)
		}
		if a := ch.Add; a != nil {
			if !storable(a.Region, a.Description, a.Policy) {
				return ErrNotFound
			}
			if err := pgUsableDomainKeys(ctx, tx, a.MaterialStoreID(), newDomainKeys(nil, a)); err != nil {
				return err
			}
			vals, err := pgKeyValues(a)
			if err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `INSERT INTO keys (`+pgKeyColumns+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21)`, vals...)
			if uniqueViolation(err) != "" {
				return ErrAlreadyExists
			}
			if err != nil {
				return err
			}
			if err := pgPutTags(ctx, tx, a.Account, a.Region, a.ID, ch.AddTags); err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpdateKeySet drops every key of the set from the cache once written,
// including one added or deleted.
func (c *KeyCache) UpdateKeySet(ctx context.Context, account, id string, fn func([]*Key) (SetChange, error)) ([]*Key, error) {
	var regions []string
	defer func() {
		for _, r := range regions {
			c.Invalidate(account, r, id)
		}
	}()
	return c.Store.UpdateKeySet(ctx, account, id, func(keys []*Key) (SetChange, error) {
		regions = regions[:0]
		for _, k := range keys {
			regions = append(regions, k.Region)
		}
		ch, err := fn(keys)
		if ch.Add != nil {
			regions = append(regions, ch.Add.Region)
		}
		return ch, err
	})
}
