package store

import (
	"context"
	"database/sql"
	"errors"
)

// usableDomainKeys is ErrDomainKeyUnusable unless each of ids is an ACTIVE
// or RETIRED domain key of the key store: run in the transaction that
// writes materials naming them, so that RetireDomainKey, which checks the
// other way in its own transaction, can never miss one.
func usableDomainKeys(ctx context.Context, tx *sql.Tx, keyStoreID string, ids []string) error {
	for _, id := range ids {
		var state string
		err := tx.QueryRowContext(ctx, `SELECT state FROM domain_keys WHERE key_store_id = ? AND id = ?`, keyStoreID, id).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && state != DomainKeyActive && state != DomainKeyRetired) {
			return ErrDomainKeyUnusable
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *SQLite) DomainKeys(ctx context.Context, keyStoreID string) ([]*DomainKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, state, created FROM domain_keys WHERE key_store_id = ? ORDER BY created, id`, keyStoreID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*DomainKey
	for rows.Next() {
		dk := &DomainKey{KeyStoreID: keyStoreID}
		var created int64
		if err := rows.Scan(&dk.ID, &dk.State, &created); err != nil {
			return nil, err
		}
		dk.Created = fromNanos(created)
		out = append(out, dk)
	}
	return out, rows.Err()
}

func (s *SQLite) AddDomainKey(ctx context.Context, dk *DomainKey) error {
	_, err := s.exec(ctx, `INSERT INTO domain_keys (key_store_id, id, state, created) VALUES (?,?,?,?)`,
		dk.KeyStoreID, dk.ID, DomainKeyPending, toNanos(dk.Created))
	if isConstraint(err) {
		return ErrAlreadyExists
	}
	return err
}

// domainKeyState reads a domain key's state in tx: ErrNotFound if none.
func domainKeyState(ctx context.Context, tx *sql.Tx, keyStoreID, id string) (string, error) {
	var state string
	err := tx.QueryRowContext(ctx, `SELECT state FROM domain_keys WHERE key_store_id = ? AND id = ?`, keyStoreID, id).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	return state, err
}

func (s *SQLite) ActivateDomainKey(ctx context.Context, keyStoreID, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		state, err := domainKeyState(ctx, tx, keyStoreID, id)
		if err != nil {
			return err
		}
		if state != DomainKeyPending && state != DomainKeyActive {
			return ErrDomainKeyState
		}
		if _, err := tx.ExecContext(ctx, `UPDATE domain_keys SET state = ? WHERE key_store_id = ? AND state = ? AND id != ?`,
			DomainKeyRetired, keyStoreID, DomainKeyActive, id); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE domain_keys SET state = ? WHERE key_store_id = ? AND id = ?`, DomainKeyActive, keyStoreID, id)
		return err
	})
}

func (s *SQLite) RetireDomainKey(ctx context.Context, keyStoreID, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		state, err := domainKeyState(ctx, tx, keyStoreID, id)
		switch {
		case err != nil:
			return err
		case state == DomainKeyDestroying:
			return nil
		case state != DomainKeyRetired:
			return ErrDomainKeyState
		}
		// Every key is looked at, not only the store's: a key of an
		// external key store holds its material in the default key store.
		named, err := exists(ctx, tx, `SELECT 1 FROM keys WHERE EXISTS
			(SELECT 1 FROM json_each(keys.materials) WHERE json_extract(json_each.value, '$.domain_key') = ?) LIMIT 1`, id)
		if err != nil {
			return err
		}
		if named {
			return ErrDomainKeyInUse
		}
		_, err = tx.ExecContext(ctx, `UPDATE domain_keys SET state = ? WHERE key_store_id = ? AND id = ?`, DomainKeyDestroying, keyStoreID, id)
		return err
	})
}

func (s *SQLite) DeleteDomainKey(ctx context.Context, keyStoreID, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		state, err := domainKeyState(ctx, tx, keyStoreID, id)
		if err != nil {
			return err
		}
		if state != DomainKeyPending && state != DomainKeyDestroying {
			return ErrDomainKeyState
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM domain_keys WHERE key_store_id = ? AND id = ?`, keyStoreID, id)
		return err
	})
}
