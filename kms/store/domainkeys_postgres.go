package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// pgUsableDomainKeys is usableDomainKeys on PostgreSQL. The rows are read
// FOR KEY SHARE: a RetireDomainKey (which locks the row FOR UPDATE before
// it looks for materials naming the key) either waits for this transaction
// to commit, and then sees its key, or has committed DESTROYING, which
// this then reads. Concurrent writers do not block one another, nor does
// ActivateDomainKey (its UPDATE leaves the key columns alone).
func pgUsableDomainKeys(ctx context.Context, tx pgx.Tx, keyStoreID string, ids []string) error {
	for _, id := range ids {
		if !storable(keyStoreID, id) {
			return ErrDomainKeyUnusable
		}
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM domain_keys WHERE key_store_id = $1 AND id = $2 FOR KEY SHARE`, keyStoreID, id).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && state != DomainKeyActive && state != DomainKeyRetired) {
			return ErrDomainKeyUnusable
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (p *PostgreSQL) DomainKeys(ctx context.Context, keyStoreID string) ([]*DomainKey, error) {
	if !storable(keyStoreID) {
		return nil, nil
	}
	rows, err := p.pool.Query(ctx, `SELECT id, state, created FROM domain_keys WHERE key_store_id = $1 ORDER BY created, id`, keyStoreID)
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

func (p *PostgreSQL) AddDomainKey(ctx context.Context, dk *DomainKey) error {
	if !storable(dk.KeyStoreID, dk.ID) {
		return errors.New("store: domain key ids are UTF-8 without NUL")
	}
	_, err := p.pool.Exec(ctx, `INSERT INTO domain_keys (key_store_id, id, state, created) VALUES ($1,$2,$3,$4)`,
		dk.KeyStoreID, dk.ID, DomainKeyPending, toNanos(dk.Created))
	if uniqueViolation(err) != "" {
		return ErrAlreadyExists
	}
	return err
}

// pgDomainKeyState locks a domain key's row in tx and reads its state:
// ErrNotFound if none.
func pgDomainKeyState(ctx context.Context, tx pgx.Tx, keyStoreID, id string) (string, error) {
	if !storable(keyStoreID, id) {
		return "", ErrNotFound
	}
	var state string
	err := tx.QueryRow(ctx, `SELECT state FROM domain_keys WHERE key_store_id = $1 AND id = $2 FOR UPDATE`, keyStoreID, id).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", ErrNotFound
	}
	return state, err
}

func (p *PostgreSQL) ActivateDomainKey(ctx context.Context, keyStoreID, id string) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		state, err := pgDomainKeyState(ctx, tx, keyStoreID, id)
		if err != nil {
			return err
		}
		if state != DomainKeyPending && state != DomainKeyActive {
			return ErrDomainKeyState
		}
		if _, err := tx.Exec(ctx, `UPDATE domain_keys SET state = $1 WHERE key_store_id = $2 AND state = $3 AND id <> $4`,
			DomainKeyRetired, keyStoreID, DomainKeyActive, id); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE domain_keys SET state = $1 WHERE key_store_id = $2 AND id = $3`, DomainKeyActive, keyStoreID, id)
		return err
	})
}

func (p *PostgreSQL) RetireDomainKey(ctx context.Context, keyStoreID, id string) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		state, err := pgDomainKeyState(ctx, tx, keyStoreID, id)
		switch {
		case err != nil:
			return err
		case state == DomainKeyDestroying:
			return nil
		case state != DomainKeyRetired:
			return ErrDomainKeyState
		}
		// Under the row lock: a writer naming the key holds FOR SHARE on
		// it until it commits, so this statement sees every such key.
		// Every key is looked at, not only the store's: a key of an
		// external key store holds its material in the default key store.
		named, err := pgExists(ctx, tx, `SELECT 1 FROM keys WHERE EXISTS
			(SELECT 1 FROM jsonb_array_elements(materials::jsonb) m WHERE m->>'domain_key' = $1) LIMIT 1`, id)
		if err != nil {
			return err
		}
		if named {
			return ErrDomainKeyInUse
		}
		_, err = tx.Exec(ctx, `UPDATE domain_keys SET state = $1 WHERE key_store_id = $2 AND id = $3`, DomainKeyDestroying, keyStoreID, id)
		return err
	})
}

func (p *PostgreSQL) DeleteDomainKey(ctx context.Context, keyStoreID, id string) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		state, err := pgDomainKeyState(ctx, tx, keyStoreID, id)
		if err != nil {
			return err
		}
		if state != DomainKeyPending && state != DomainKeyDestroying {
			return ErrDomainKeyState
		}
		_, err = tx.Exec(ctx, `DELETE FROM domain_keys WHERE key_store_id = $1 AND id = $2`, keyStoreID, id)
		return err
	})
}
