package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgMigrations are migrations in PostgreSQL's dialect: number n here makes
// the same change as number n in SQLite's list, so one schema version means
// one schema on either engine. Each is applied in its own transaction
// under pgMigrateLock and counted in schema_version. Never edit one that
// has shipped; append (to both lists).
//
// Differences from SQLite, all so that the stores behave alike:
//   - Identifiers are TEXT COLLATE "C": ordering, and so pagination, is by
//     bytes as in SQLite, whatever the database's collation.
//   - What callers write freely (descriptions, policies, tag keys and
//     values, key store names and trust anchors) is BYTEA: SQLite keeps any
//     bytes, and PostgreSQL's TEXT refuses NUL and invalid UTF-8.
//   - Times are BIGINT Unix nanoseconds (timestamptz keeps microseconds).
//   - orphans has a sequence for a stable order, as SQLite's rowid gives.
var pgMigrations = []string{
	// 1: keys, aliases, tags.
	`CREATE TABLE keys (
		account TEXT COLLATE "C" NOT NULL, region TEXT COLLATE "C" NOT NULL, id TEXT COLLATE "C" NOT NULL,
		description BYTEA NOT NULL, key_usage TEXT COLLATE "C" NOT NULL, key_spec TEXT COLLATE "C" NOT NULL,
		origin TEXT COLLATE "C" NOT NULL, state TEXT COLLATE "C" NOT NULL,
		creation_date BIGINT NOT NULL, deletion_date BIGINT NOT NULL,
		pending_window_days INTEGER NOT NULL, policy BYTEA NOT NULL,
		custom_key_store_id TEXT COLLATE "C" NOT NULL, rotation_enabled BOOLEAN NOT NULL,
		rotation_period_days INTEGER NOT NULL, next_rotation_date BIGINT NOT NULL,
		multi_region BOOLEAN NOT NULL, materials TEXT NOT NULL,
		PRIMARY KEY (account, region, id)
	);
	CREATE INDEX keys_deletion ON keys (state, deletion_date);
	CREATE TABLE aliases (
		account TEXT COLLATE "C" NOT NULL, region TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL,
		target_key_id TEXT COLLATE "C" NOT NULL,
		creation_date BIGINT NOT NULL, last_updated_date BIGINT NOT NULL,
		PRIMARY KEY (account, region, name),
		FOREIGN KEY (account, region, target_key_id) REFERENCES keys (account, region, id) ON DELETE CASCADE
	);
	CREATE INDEX aliases_target ON aliases (account, region, target_key_id, name);
	CREATE TABLE tags (
		account TEXT COLLATE "C" NOT NULL, region TEXT COLLATE "C" NOT NULL, key_id TEXT COLLATE "C" NOT NULL,
		tag_key BYTEA NOT NULL, tag_value BYTEA NOT NULL,
		PRIMARY KEY (account, region, key_id, tag_key),
		FOREIGN KEY (account, region, key_id) REFERENCES keys (account, region, id) ON DELETE CASCADE
	);`,
	// 2: custom key stores, and token objects orphaned by deleting a key
	// while its store was disconnected. The unique constraints are named:
	// a violation says which rule broke (ErrClusterInUse, ErrKeyStoreNameInUse).
	`CREATE TABLE key_stores (
		id TEXT COLLATE "C" PRIMARY KEY, account TEXT COLLATE "C" NOT NULL, region TEXT COLLATE "C" NOT NULL,
		name BYTEA NOT NULL, cluster_id TEXT COLLATE "C" NOT NULL, trust_anchor BYTEA NOT NULL,
		creation_date BIGINT NOT NULL, connect BOOLEAN NOT NULL,
		password BYTEA, pending_password BYTEA,
		CONSTRAINT key_stores_cluster UNIQUE (cluster_id)
	);
	CREATE UNIQUE INDEX key_stores_name ON key_stores (account, region, name);
	CREATE INDEX keys_key_store ON keys (custom_key_store_id);
	CREATE TABLE orphans (
		seq BIGINT GENERATED ALWAYS AS IDENTITY,
		key_store_id TEXT COLLATE "C" NOT NULL, key_arn TEXT COLLATE "C" NOT NULL, token_id BYTEA NOT NULL, deleted BIGINT NOT NULL
	);`,
	// 3: the automatic rotation scheduler's query (KeysDueForRotation).
	`CREATE INDEX keys_rotation ON keys (rotation_enabled, state, next_rotation_date);`,
	// 4: grants, going with their key (ON DELETE CASCADE).
	`CREATE TABLE grants (
		grant_id TEXT COLLATE "C" PRIMARY KEY,
		account TEXT COLLATE "C" NOT NULL, region TEXT COLLATE "C" NOT NULL, key_id TEXT COLLATE "C" NOT NULL,
		grant_token TEXT COLLATE "C" NOT NULL UNIQUE, name TEXT COLLATE "C" NOT NULL,
		grantee_principal TEXT COLLATE "C" NOT NULL, retiring_principal TEXT COLLATE "C" NOT NULL,
		issuing_account TEXT COLLATE "C" NOT NULL, operations TEXT NOT NULL, constraints TEXT NOT NULL,
		creation_date BIGINT NOT NULL,
		FOREIGN KEY (account, region, key_id) REFERENCES keys (account, region, id) ON DELETE CASCADE
	);
	CREATE INDEX grants_key ON grants (account, region, key_id, grant_id);
	CREATE INDEX grants_grantee ON grants (account, region, key_id, grantee_principal);
	CREATE INDEX grants_name ON grants (account, region, key_id, name);
	CREATE INDEX grants_retiring ON grants (region, retiring_principal, grant_id);`,
	// 5: the identity of the token behind each key store ('' for the
	// default key store). Serial and label are what the token reported:
	// BYTEA, as a token owes us no UTF-8.
	`CREATE TABLE token_identities (
		key_store_id TEXT COLLATE "C" PRIMARY KEY, cluster_id TEXT COLLATE "C" NOT NULL,
		marker BYTEA NOT NULL, serial BYTEA NOT NULL, label BYTEA NOT NULL, recorded BIGINT NOT NULL
	);`,
	// 6: external key stores: a store's type, an external one's proxy
	// (no cluster: NULL), and a key's external key, unique in its store.
	`ALTER TABLE key_stores ALTER COLUMN cluster_id DROP NOT NULL,
		ADD COLUMN store_type TEXT COLLATE "C" NOT NULL DEFAULT 'AWS_CLOUDHSM',
		ADD COLUMN xks_connectivity TEXT COLLATE "C" NOT NULL DEFAULT '',
		ADD COLUMN xks_uri_endpoint TEXT COLLATE "C" NOT NULL DEFAULT '',
		ADD COLUMN xks_uri_path TEXT COLLATE "C" NOT NULL DEFAULT '',
		ADD COLUMN xks_access_key_id TEXT COLLATE "C" NOT NULL DEFAULT '',
		ADD COLUMN xks_vpc_service_name TEXT COLLATE "C" NOT NULL DEFAULT '',
		ADD COLUMN xks_vpc_service_owner TEXT COLLATE "C" NOT NULL DEFAULT '';
	CREATE INDEX key_stores_xks_uri ON key_stores (account, region, xks_uri_endpoint, xks_uri_path);
	ALTER TABLE keys ADD COLUMN xks_key_id TEXT COLLATE "C" NOT NULL DEFAULT '';
	CREATE UNIQUE INDEX keys_xks_key ON keys (custom_key_store_id, xks_key_id) WHERE xks_key_id <> '';`,
	// 7: the domain keys of each key store ('' for the default key store).
	`CREATE TABLE domain_keys (
		key_store_id TEXT COLLATE "C" NOT NULL, id TEXT COLLATE "C" NOT NULL, state TEXT COLLATE "C" NOT NULL,
		created BIGINT NOT NULL,
		PRIMARY KEY (key_store_id, id)
	);`,
	// 8: multi-Region keys.
	`ALTER TABLE keys ADD COLUMN primary_region TEXT COLLATE "C" NOT NULL DEFAULT '',
		ADD COLUMN new_primary_region TEXT COLLATE "C" NOT NULL DEFAULT '';
	CREATE INDEX keys_set ON keys (account, id) WHERE multi_region;
	CREATE INDEX keys_in_transition ON keys (account, id)
		WHERE multi_region AND (new_primary_region <> '' OR (state = 'Creating' AND region <> primary_region));`,
	// 9: each key's last successful cryptographic use, and where
	// tracking stands (one row).
	`CREATE TABLE key_last_usage (
		account TEXT COLLATE "C" NOT NULL, region TEXT COLLATE "C" NOT NULL, key_id TEXT COLLATE "C" NOT NULL,
		operation TEXT COLLATE "C" NOT NULL, used BIGINT NOT NULL, event_id TEXT COLLATE "C" NOT NULL, request_id TEXT COLLATE "C" NOT NULL,
		PRIMARY KEY (account, region, key_id),
		FOREIGN KEY (account, region, key_id) REFERENCES keys (account, region, id) ON DELETE CASCADE
	);
	CREATE TABLE usage_tracking (
		id INTEGER PRIMARY KEY CHECK (id = 1), started BIGINT NOT NULL, trail TEXT COLLATE "C" NOT NULL, sequence BIGINT NOT NULL
	);`,
	// 10: what several nodes sharing the database coordinate through (see
	// coordination.go): marks, node heartbeats, each node's login to each
	// custom key store, and the connection state every node reports.
	`ALTER TABLE key_stores ADD COLUMN connection_state TEXT COLLATE "C" NOT NULL DEFAULT '';
	ALTER TABLE key_stores ADD COLUMN connection_error TEXT COLLATE "C" NOT NULL DEFAULT '';
	UPDATE key_stores SET connection_state = 'CONNECTED' WHERE connect;
	CREATE TABLE marks (
		name TEXT COLLATE "C" PRIMARY KEY, node TEXT COLLATE "C" NOT NULL, detail TEXT COLLATE "C" NOT NULL,
		started BIGINT NOT NULL, expires BIGINT NOT NULL
	);
	CREATE INDEX marks_node ON marks (node);
	CREATE TABLE nodes (id TEXT COLLATE "C" PRIMARY KEY, started BIGINT NOT NULL, heartbeat BIGINT NOT NULL);
	CREATE TABLE key_store_logins (
		key_store_id TEXT COLLATE "C" NOT NULL, node TEXT COLLATE "C" NOT NULL, state TEXT COLLATE "C" NOT NULL,
		error_code TEXT COLLATE "C" NOT NULL, updated BIGINT NOT NULL,
		PRIMARY KEY (key_store_id, node)
	);`,
}

// Advisory lock keys. pg_advisory_xact_lock(bigint) and (int, int) are
// separate key spaces, so the two never collide.
const (
	// pgMigrateLock is held by the transaction applying a migration, so
	// that nodes starting at once apply each migration once.
	pgMigrateLock int64 = 0x68736d6b6d73 // "hsmkms"
	// pgKeyStoreLockClass, with a hash of account and region, serializes
	// CreateKeyStore within one account and region: the count of stores
	// has no parent row to lock.
	pgKeyStoreLockClass int32 = 0x6b73 // "ks"
)

// KeyChannel is the PostgreSQL notification channel on which the store
// announces every committed change to a key's row (UpdateKey, DeleteKey,
// DeleteKeyOrphaning), from inside the changing transaction, so only once
// it commits. The payload is "account/region/id". It is what a node's key
// cache LISTENs to, to drop its copy of a key another node changed.
// CreateKey announces nothing: no node can hold a copy of a key that did
// not exist.
const KeyChannel = "hsmkms_key_changed"

// KeyStoreChannel is the channel on which the store announces every
// committed change to a custom key store (created, updated, deleted), from
// inside the changing transaction; the payload is the store's id. Nodes
// listen to it to follow each other's connects and disconnects at once
// rather than at their next poll.
const KeyStoreChannel = "hsmkms_key_store_changed"

// announceKeyStore notifies KeyStoreChannel of a change to key store id,
// inside tx.
func announceKeyStore(ctx context.Context, tx pgx.Tx, id string) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, KeyStoreChannel, id)
	return err
}

// announceKey queues, in b, the notification of a change to the key's
// row, so that it travels with the change in one round trip. Notifying
// transactions commit one at a time (PostgreSQL serializes them on the
// notification queue), which bounds key changes, not reads, to about one
// per WAL flush across the database.
func announceKey(b *pgx.Batch, account, region, id string) {
	b.Queue(`SELECT pg_notify($1, $2)`, KeyChannel, account+"/"+region+"/"+id)
}

// changeKey runs query, which changes the key's row, and announces the
// change, in one round trip; ErrNotFound if query changed no row.
func changeKey(ctx context.Context, tx pgx.Tx, account, region, id, query string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue(query, args...)
	announceKey(b, account, region, id)
	br := tx.SendBatch(ctx, b)
	tag, err := br.Exec()
	if err != nil {
		br.Close()
		return err
	}
	if err := br.Close(); err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		// The notification went out for nothing; the caller's error
		// rolls it back with the transaction.
		return ErrNotFound
	}
	return nil
}

// PostgreSQL is the Store on a PostgreSQL server, for several hsmkms nodes
// sharing one set of keys. It is safe for concurrent use, by goroutines and
// by processes on any number of machines.
//
// Every write is one transaction at READ COMMITTED, committed before the
// method returns. Counts and existence checks hold across transactions
// because each write first locks the row its rule is about, and each
// statement of a READ COMMITTED transaction sees what committed before it
// started, including the work of whoever held the lock before:
//
//	per-key quotas (aliases, tags, grants)  the key's row, FOR NO KEY UPDATE
//	UpdateKey                               the key's row, FOR NO KEY UPDATE
//	CreateKey in a custom key store         the store's row, FOR KEY SHARE
//	DeleteKeyStore (only when empty)        the store's row, FOR UPDATE
//	UpdateKeyStore                          the store's row, FOR NO KEY UPDATE
//	key stores per account and Region       an advisory lock on (account, Region)
//	UpdateAlias, DeleteAlias                the alias's row (the expected key)
//
// Uniqueness (alias names, key store names and clusters, ids) is the unique
// indexes': a racing insert waits for the first to commit and then fails
// with the index's name, which says which rule broke.
//
// Why locks and not SERIALIZABLE: a serialization failure must be retried,
// which would run UpdateKey's fn again (its contract is one call, as on
// SQLite) and turn contention on one key into rounds of aborted work;
// a lock queues the writers of one key and costs nothing to the others.
// NO KEY UPDATE rather than UPDATE, so that inserting an alias, tag or
// grant, whose foreign key takes KEY SHARE on the key, never waits for it.
// Rows are locked in one order, a key before the aliases naming it (as
// DeleteKey's cascade does; UpdateAlias locks its new target first) and a
// store before the keys in it, so writers do not wait for each other in a
// cycle; were one to appear, PostgreSQL would fail one of its transactions
// with an error, never commit a wrong answer.
type PostgreSQL struct {
	pool *pgxpool.Pool
}

var _ Store = (*PostgreSQL)(nil)

// defaultPoolSize is the pool's size unless the URL sets pool_max_conns:
// as many concurrent transactions as the SQLite store allows connections.
const defaultPoolSize = 16

// defaultConnectTimeout bounds a connection attempt unless the URL sets
// connect_timeout.
const defaultConnectTimeout = 5 * time.Second

// OpenPostgreSQL connects to the database at url (a postgres:// URL or
// keyword/value string, as libpq reads them, plus pgx's pool_* settings)
// and brings its schema up to date. Tables are created in the first schema
// of the connection's search_path. The database must be UTF8. The URL may
// hold a password: it never appears in an error.
func OpenPostgreSQL(ctx context.Context, url string) (*PostgreSQL, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The parser's message quotes the URL with the password redacted
		// only "best effort".
		return nil, errors.New("store: the PostgreSQL URL does not parse (not shown, as it may hold a password)")
	}
	if cc, err := pgconn.ParseConfig(url); err == nil {
		if _, set := cc.RuntimeParams["pool_max_conns"]; !set {
			cfg.MaxConns = defaultPoolSize
		}
	}
	if _, set := cfg.ConnConfig.RuntimeParams["application_name"]; !set {
		cfg.ConnConfig.RuntimeParams["application_name"] = "hsmkms"
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// A server that does not answer (a host down, a partition) fails
		// a request in seconds, not at the request's own deadline.
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	cfg.AfterConnect = durableCommits
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	p := &PostgreSQL{pool: pool}
	if err := p.checkServer(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

// durableCommits makes a commit wait for its WAL flush on every
// connection: with synchronous_commit off (a server, database or role
// default hsmkms does not control) PostgreSQL acknowledges commits it may
// lose, and the API acknowledges a change when the store returns. A
// stronger setting (remote_write, remote_apply) is kept.
func durableCommits(ctx context.Context, c *pgx.Conn) error {
	var mode string
	if err := c.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&mode); err != nil {
		return err
	}
	if mode == "off" {
		_, err := c.Exec(ctx, `SET synchronous_commit = on`)
		return err
	}
	return nil
}

// checkServer refuses a database whose text cannot hold what the store
// relies on: UTF-8, so that valid text is storable and storable tells
// which is not.
func (p *PostgreSQL) checkServer(ctx context.Context) error {
	var enc string
	if err := p.pool.QueryRow(ctx, `SHOW server_encoding`).Scan(&enc); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if enc != "UTF8" {
		return fmt.Errorf("store: the PostgreSQL database's encoding is %s; hsmkms needs UTF8 (CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0)", enc)
	}
	return nil
}

func (p *PostgreSQL) migrate(ctx context.Context) error {
	for {
		done, err := p.migrateOne(ctx)
		if err != nil || done {
			return err
		}
	}
}

// migrateOne applies the next migration, if any. The transaction takes the
// migration lock before it reads the version (or creates the version
// table), so that nodes starting at once against a fresh database wait for
// each other and each migration is applied once. DDL is transactional:
// a migration that fails leaves nothing behind.
func (p *PostgreSQL) migrateOne(ctx context.Context) (done bool, err error) {
	err = pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pgMigrateLock); err != nil {
			return fmt.Errorf("store: taking the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
			return fmt.Errorf("store: creating the schema version table: %w", err)
		}
		var version int
		switch err := tx.QueryRow(ctx, `SELECT version FROM schema_version`).Scan(&version); {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
				return fmt.Errorf("store: %w", err)
			}
		case err != nil:
			return fmt.Errorf("store: reading schema version: %w", err)
		}
		if version > len(pgMigrations) {
			return fmt.Errorf("store: database schema version %d is newer than this hsmkms (%d)", version, len(pgMigrations))
		}
		if version == len(pgMigrations) {
			done = true
			return nil
		}
		if _, err := tx.Exec(ctx, pgMigrations[version]); err != nil {
			return fmt.Errorf("store: migration %d: %w", version+1, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE schema_version SET version = $1`, version+1); err != nil {
			return fmt.Errorf("store: migration %d: %w", version+1, err)
		}
		return nil
	})
	return done, err
}

// Close closes the pool, waiting for connections in use to be returned.
func (p *PostgreSQL) Close() error {
	p.pool.Close()
	return nil
}

// tx runs fn in a READ COMMITTED transaction and commits it if fn returns
// nil; fn's error comes back unchanged. READ COMMITTED is asked for, not
// inherited, because the locking described on PostgreSQL relies on each
// statement seeing what committed before it, which a server default of
// REPEATABLE READ would not.
func (p *PostgreSQL) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, fn)
}

// bytesOf is s for a BYTEA NOT NULL column: never nil, which pgx sends as NULL.
func bytesOf(s string) []byte {
	if s == "" {
		return []byte{}
	}
	return []byte(s)
}

// pgLimit is the LIMIT for a page of limit rows, one more to learn whether
// another page follows; NULL (no limit) for a limit below 1.
func pgLimit(limit int) *int {
	if limit < 1 {
		return nil
	}
	n := limit + 1
	return &n
}

// uniqueViolation returns the name of the unique constraint or index err
// broke, or "" if err is not a unique violation.
func uniqueViolation(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" {
		return pe.ConstraintName
	}
	return ""
}

const pgKeyColumns = `account, region, id, description, key_usage, key_spec, origin, state,
	creation_date, deletion_date, pending_window_days, policy, custom_key_store_id,
	rotation_enabled, rotation_period_days, next_rotation_date, multi_region, materials, xks_key_id,
	primary_region, new_primary_region`

func pgScanKey(row pgx.Row) (*Key, error) {
	var (
		k                          Key
		created, deletion, nextRot int64
		description, policy        []byte
		materialsJSON              string
	)
	err := row.Scan(&k.Account, &k.Region, &k.ID, &description, &k.KeyUsage, &k.KeySpec, &k.Origin, &k.State,
		&created, &deletion, &k.PendingWindowDays, &policy, &k.CustomKeyStoreID,
		&k.RotationEnabled, &k.RotationPeriodDays, &nextRot, &k.MultiRegion, &materialsJSON, &k.XksKeyID,
		&k.PrimaryRegion, &k.NewPrimaryRegion)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	k.Description, k.Policy = string(description), string(policy)
	k.CreationDate, k.DeletionDate, k.NextRotationDate = fromNanos(created), fromNanos(deletion), fromNanos(nextRot)
	if k.Materials, err = decodeMaterials(k.ID, materialsJSON); err != nil {
		return nil, err
	}
	return &k, nil
}

func pgKeyValues(k *Key) ([]any, error) {
	vals, err := keyValues(k)
	if err != nil {
		return nil, err
	}
	vals[3], vals[11] = bytesOf(k.Description), bytesOf(k.Policy)
	return vals, nil
}

func pgCollectKeys(rows pgx.Rows, err error) ([]*Key, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keys []*Key
	for rows.Next() {
		k, err := pgScanKey(rows)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// pgExists reports whether query, a SELECT 1, finds a row.
func pgExists(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, query string, args ...any) (bool, error) {
	var one int
	err := q.QueryRow(ctx, query, args...).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// lockKey locks the key's row against the other writers of its aliases,
// tags and grants for the rest of tx: ErrNotFound if there is no such key.
func lockKey(ctx context.Context, tx pgx.Tx, account, region, keyID string) error {
	if !storable(account, region, keyID) {
		return ErrNotFound
	}
	ok, err := pgExists(ctx, tx, `SELECT 1 FROM keys WHERE account = $1 AND region = $2 AND id = $3 FOR NO KEY UPDATE`, account, region, keyID)
	if err == nil && !ok {
		err = ErrNotFound
	}
	return err
}

func (p *PostgreSQL) CreateKey(ctx context.Context, k *Key, tags []Tag) error {
	vals, err := pgKeyValues(k)
	if err != nil {
		return err
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		if k.CustomKeyStoreID != "" {
			// KEY SHARE on the store's row: a DeleteKeyStore (which locks
			// it FOR UPDATE) waits for this key to commit and then counts
			// it, or has deleted the row and this finds none.
			if !storable(k.CustomKeyStoreID) {
				return ErrNotFound
			}
			if ok, err := pgExists(ctx, tx, `SELECT 1 FROM key_stores WHERE id = $1 FOR KEY SHARE`, k.CustomKeyStoreID); err != nil {
				return err
			} else if !ok {
				return ErrNotFound
			}
			if k.XksKeyID != "" && storable(k.XksKeyID) {
				// A key committed after this looks is caught by the
				// unique index keys_xks_key.
				if taken, err := pgExists(ctx, tx, `SELECT 1 FROM keys WHERE custom_key_store_id = $1 AND xks_key_id = $2`, k.CustomKeyStoreID, k.XksKeyID); err != nil {
					return err
				} else if taken {
					return ErrXksKeyInUse
				}
			}
		}
		if err := pgUsableDomainKeys(ctx, tx, k.MaterialStoreID(), newDomainKeys(nil, k)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO keys (`+pgKeyColumns+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21)`, vals...)
		switch uniqueViolation(err) {
		case "":
		case "keys_xks_key":
			return ErrXksKeyInUse
		default:
			return ErrAlreadyExists
		}
		if err != nil {
			return err
		}
		return pgPutTags(ctx, tx, k.Account, k.Region, k.ID, tags)
	})
}

func (p *PostgreSQL) GetKey(ctx context.Context, account, region, id string) (*Key, error) {
	if !storable(account, region, id) {
		return nil, ErrNotFound
	}
	return pgScanKey(p.pool.QueryRow(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE account = $1 AND region = $2 AND id = $3`, account, region, id))
}

// UpdateKey calls fn once, holding the key's row lock: concurrent writers
// of the key wait, readers do not.
func (p *PostgreSQL) UpdateKey(ctx context.Context, account, region, id string, fn func(*Key) error) (*Key, error) {
	if !storable(account, region, id) {
		return nil, ErrNotFound
	}
	var out *Key
	err := p.tx(ctx, func(tx pgx.Tx) error {
		k, err := pgScanKey(tx.QueryRow(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE account = $1 AND region = $2 AND id = $3 FOR NO KEY UPDATE`, account, region, id))
		if err != nil {
			return err
		}
		before := *k
		before.Materials = slices.Clone(k.Materials)
		if err := fn(k); err != nil {
			return err
		}
		// The identity is the row's; fn may not move the key.
		k.Account, k.Region, k.ID = account, region, id
		if err := pgUsableDomainKeys(ctx, tx, k.MaterialStoreID(), newDomainKeys(&before, k)); err != nil {
			return err
		}
		vals, err := pgKeyValues(k)
		if err != nil {
			return err
		}
		if err := changeKey(ctx, tx, account, region, id, pgUpdateKeySQL, append(vals[3:], account, region, id)...); err != nil {
			return err
		}
		out = k
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

const pgUpdateKeySQL = `UPDATE keys SET description=$1, key_usage=$2, key_spec=$3, origin=$4, state=$5,
	creation_date=$6, deletion_date=$7, pending_window_days=$8, policy=$9, custom_key_store_id=$10,
	rotation_enabled=$11, rotation_period_days=$12, next_rotation_date=$13, multi_region=$14, materials=$15, xks_key_id=$16,
	primary_region=$17, new_primary_region=$18
	WHERE account = $19 AND region = $20 AND id = $21`

func pgAffected(tag pgconn.CommandTag, err error) error {
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

func (p *PostgreSQL) DeleteKey(ctx context.Context, account, region, id string) error {
	if !storable(account, region, id) {
		return ErrNotFound
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		return changeKey(ctx, tx, account, region, id, `DELETE FROM keys WHERE account = $1 AND region = $2 AND id = $3`, account, region, id)
	})
}

func (p *PostgreSQL) ListKeys(ctx context.Context, account, region, marker string, limit int) ([]*Key, string, error) {
	after, err := decodeTextMarker(marker)
	if err != nil {
		return nil, "", err
	}
	if !storable(account, region) {
		return nil, "", nil
	}
	keys, err := pgCollectKeys(p.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE account = $1 AND region = $2 AND id > $3 ORDER BY id LIMIT $4`,
		account, region, after, pgLimit(limit)))
	if err != nil {
		return nil, "", err
	}
	next := ""
	if limit > 0 && len(keys) > limit {
		keys = keys[:limit]
		next = encodeMarker(keys[limit-1].ID)
	}
	return keys, next, nil
}

// ForEachKey reads a page at a time and releases the connection before
// calling fn, as SQLite's does: fn may write, and a walk must not hold a
// connection (of a bounded pool) or a snapshot for its whole length.
func (p *PostgreSQL) ForEachKey(ctx context.Context, fn func(*Key) error) error {
	var last *Key
	for {
		var keys []*Key
		var err error
		if last == nil {
			keys, err = pgCollectKeys(p.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys ORDER BY account, region, id LIMIT $1`, forEachPage))
		} else {
			keys, err = pgCollectKeys(p.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE (account, region, id) > ($1, $2, $3) ORDER BY account, region, id LIMIT $4`,
				last.Account, last.Region, last.ID, forEachPage))
		}
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := fn(k); err != nil {
				return err
			}
		}
		if len(keys) < forEachPage {
			return nil
		}
		last = keys[len(keys)-1]
	}
}

func (p *PostgreSQL) KeysDueForDeletion(ctx context.Context, now time.Time) ([]*Key, error) {
	return pgCollectKeys(p.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE state = 'PendingDeletion' AND deletion_date <= $1
		ORDER BY deletion_date, account, region, id`, toNanos(now)))
}

func (p *PostgreSQL) KeysDueForRotation(ctx context.Context, now time.Time) ([]*Key, error) {
	return pgCollectKeys(p.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE rotation_enabled AND state = 'Enabled' AND next_rotation_date <= $1
		ORDER BY next_rotation_date, account, region, id`, toNanos(now)))
}

func (p *PostgreSQL) KeysOfOrigin(ctx context.Context, origin string) ([]*Key, error) {
	return pgCollectKeys(p.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE origin = $1 ORDER BY account, region, id`, origin))
}

func (p *PostgreSQL) CreateAlias(ctx context.Context, a *Alias, limit int) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		if err := lockKey(ctx, tx, a.Account, a.Region, a.TargetKeyID); err != nil {
			return err
		}
		if err := pgAliasRoom(ctx, tx, a.Account, a.Region, a.TargetKeyID, limit); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO aliases (account, region, name, target_key_id, creation_date, last_updated_date) VALUES ($1,$2,$3,$4,$5,$6)`,
			a.Account, a.Region, a.Name, a.TargetKeyID, toNanos(a.CreationDate), toNanos(a.LastUpdatedDate))
		if uniqueViolation(err) != "" {
			return ErrAlreadyExists // the target exists, so it is the name
		}
		return err
	})
}

// pgAliasRoom is ErrLimitExceeded if the key already has limit aliases;
// the caller holds the key's row lock.
func pgAliasRoom(ctx context.Context, tx pgx.Tx, account, region, keyID string, limit int) error {
	var n int
	if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM aliases WHERE account = $1 AND region = $2 AND target_key_id = $3`,
		account, region, keyID).Scan(&n); err != nil {
		return err
	}
	if n >= limit {
		return ErrLimitExceeded
	}
	return nil
}

const pgAliasColumns = `account, region, name, target_key_id, creation_date, last_updated_date`

func pgScanAlias(row pgx.Row) (*Alias, error) {
	var a Alias
	var created, updated int64
	err := row.Scan(&a.Account, &a.Region, &a.Name, &a.TargetKeyID, &created, &updated)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	a.CreationDate, a.LastUpdatedDate = fromNanos(created), fromNanos(updated)
	return &a, nil
}

func (p *PostgreSQL) GetAlias(ctx context.Context, account, region, name string) (*Alias, error) {
	if !storable(account, region, name) {
		return nil, ErrNotFound
	}
	return pgScanAlias(p.pool.QueryRow(ctx, `SELECT `+pgAliasColumns+` FROM aliases WHERE account = $1 AND region = $2 AND name = $3`, account, region, name))
}

// UpdateAlias locks the new target's row (its alias count) before the
// alias's row, the order DeleteKey's cascade takes them in.
func (p *PostgreSQL) UpdateAlias(ctx context.Context, account, region, name, fromKeyID, toKeyID string, now time.Time, limit int) error {
	if !storable(account, region, name, fromKeyID) {
		return ErrNotFound
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		if err := lockKey(ctx, tx, account, region, toKeyID); err != nil {
			return err
		}
		var cur string
		err := tx.QueryRow(ctx, `SELECT target_key_id FROM aliases WHERE account = $1 AND region = $2 AND name = $3 FOR UPDATE`,
			account, region, name).Scan(&cur)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && cur != fromKeyID) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if cur != toKeyID {
			if err := pgAliasRoom(ctx, tx, account, region, toKeyID, limit); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE aliases SET target_key_id = $1, last_updated_date = $2 WHERE account = $3 AND region = $4 AND name = $5`,
			toKeyID, toNanos(now), account, region, name)
		return err
	})
}

func (p *PostgreSQL) DeleteAlias(ctx context.Context, account, region, name, keyID string) error {
	if !storable(account, region, name, keyID) {
		return ErrNotFound
	}
	return pgAffected(p.pool.Exec(ctx, `DELETE FROM aliases WHERE account = $1 AND region = $2 AND name = $3 AND target_key_id = $4`, account, region, name, keyID))
}

func (p *PostgreSQL) ListAliases(ctx context.Context, account, region, keyID, marker string, limit int) ([]*Alias, string, error) {
	after, err := decodeTextMarker(marker)
	if err != nil {
		return nil, "", err
	}
	if !storable(account, region, keyID) {
		return nil, "", nil
	}
	query := `SELECT ` + pgAliasColumns + ` FROM aliases WHERE account = $1 AND region = $2 AND name > $3`
	args := []any{account, region, after, pgLimit(limit)}
	if keyID != "" {
		query += ` AND target_key_id = $5`
		args = append(args, keyID)
	}
	rows, err := p.pool.Query(ctx, query+` ORDER BY name LIMIT $4`, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var out []*Alias
	for rows.Next() {
		a, err := pgScanAlias(rows)
		if err != nil {
			return nil, "", err
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if limit > 0 && len(out) > limit {
		out = out[:limit]
		next = encodeMarker(out[limit-1].Name)
	}
	return out, next, nil
}

func (p *PostgreSQL) TagKey(ctx context.Context, account, region, keyID string, tags []Tag, limit int) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		if err := lockKey(ctx, tx, account, region, keyID); err != nil {
			return err
		}
		if err := pgPutTags(ctx, tx, account, region, keyID, tags); err != nil {
			return err
		}
		// Counted after the writes, so that a tag replacing an existing
		// key's value takes no place; failing rolls the writes back.
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM tags WHERE account = $1 AND region = $2 AND key_id = $3`,
			account, region, keyID).Scan(&n); err != nil {
			return err
		}
		if n > limit {
			return ErrLimitExceeded
		}
		return nil
	})
}

func pgPutTags(ctx context.Context, tx pgx.Tx, account, region, keyID string, tags []Tag) error {
	if len(tags) == 0 {
		return nil
	}
	// One batch: one round trip however many tags.
	b := &pgx.Batch{}
	for _, t := range tags {
		b.Queue(`INSERT INTO tags (account, region, key_id, tag_key, tag_value) VALUES ($1,$2,$3,$4,$5)
			ON CONFLICT (account, region, key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value`,
			account, region, keyID, bytesOf(t.Key), bytesOf(t.Value))
	}
	return tx.SendBatch(ctx, b).Close()
}

func (p *PostgreSQL) UntagKey(ctx context.Context, account, region, keyID string, tagKeys []string) error {
	if !storable(account, region, keyID) {
		return ErrNotFound
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		if ok, err := pgExists(ctx, tx, `SELECT 1 FROM keys WHERE account = $1 AND region = $2 AND id = $3`, account, region, keyID); err != nil {
			return err
		} else if !ok {
			return ErrNotFound
		}
		keys := make([][]byte, len(tagKeys))
		for i, k := range tagKeys {
			keys[i] = bytesOf(k)
		}
		_, err := tx.Exec(ctx, `DELETE FROM tags WHERE account = $1 AND region = $2 AND key_id = $3 AND tag_key = ANY($4)`, account, region, keyID, keys)
		return err
	})
}

func (p *PostgreSQL) ListTags(ctx context.Context, account, region, keyID, marker string, limit int) ([]Tag, string, error) {
	// Tag keys are BYTEA: any bytes, as in SQLite.
	after, err := decodeMarker(marker)
	if err != nil {
		return nil, "", err
	}
	if !storable(account, region, keyID) {
		return nil, "", nil
	}
	rows, err := p.pool.Query(ctx, `SELECT tag_key, tag_value FROM tags WHERE account = $1 AND region = $2 AND key_id = $3 AND tag_key > $4 ORDER BY tag_key LIMIT $5`,
		account, region, keyID, bytesOf(after), pgLimit(limit))
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var out []Tag
	for rows.Next() {
		var k, v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return nil, "", err
		}
		out = append(out, Tag{Key: string(k), Value: string(v)})
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if limit > 0 && len(out) > limit {
		out = out[:limit]
		next = encodeMarker(out[limit-1].Key)
	}
	return out, next, nil
}

const pgKeyStoreColumns = `id, account, region, name, cluster_id, trust_anchor, creation_date, connect, password, pending_password,
	store_type, xks_connectivity, xks_uri_endpoint, xks_uri_path, xks_access_key_id, xks_vpc_service_name, xks_vpc_service_owner,
	connection_state, connection_error`

func pgScanKeyStore(row pgx.Row) (*KeyStore, error) {
	var ks KeyStore
	var name, anchor []byte
	var created int64
	var cluster *string
	x := &ks.XKS
	err := row.Scan(&ks.ID, &ks.Account, &ks.Region, &name, &cluster, &anchor, &created, &ks.Connect, &ks.Password, &ks.PendingPassword,
		&ks.Type, &x.Connectivity, &x.URIEndpoint, &x.URIPath, &x.AccessKeyID, &x.VpcEndpointServiceName, &x.VpcEndpointServiceOwner,
		&ks.ConnectionState, &ks.ConnectionError)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if cluster != nil {
		ks.ClusterID = *cluster
	}
	ks.Name, ks.TrustAnchor = string(name), string(anchor)
	ks.CreationDate = fromNanos(created)
	return &ks, nil
}

// keyStoreViolation maps a unique violation of key_stores to the rule it
// broke; other errors pass unchanged.
func keyStoreViolation(err error) error {
	switch uniqueViolation(err) {
	case "":
		return err
	case "key_stores_cluster":
		return ErrClusterInUse
	case "key_stores_name":
		return ErrKeyStoreNameInUse
	default:
		return ErrAlreadyExists // the id: random, so a bug
	}
}

func (p *PostgreSQL) CreateKeyStore(ctx context.Context, ks *KeyStore, limit int) error {
	if ks.Type == "" {
		ks.Type = StoreTypeCloudHSM // the type AWS gives a store created without one
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, pgKeyStoreLockClass, ks.Account+"\x1f"+ks.Region); err != nil {
			return err
		}
		if err := pgKeyStoreConflict(ctx, tx, ks, ""); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM key_stores WHERE account = $1 AND region = $2`, ks.Account, ks.Region).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return ErrLimitExceeded
		}
		_, err := tx.Exec(ctx, `INSERT INTO key_stores (`+pgKeyStoreColumns+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)`,
			pgKeyStoreValues(ks)...)
		if err != nil {
			return keyStoreViolation(err)
		}
		return announceKeyStore(ctx, tx, ks.ID)
	})
}

// pgKeyStoreValues is SQLite's keyStoreValues with PostgreSQL's BYTEA
// columns.
func pgKeyStoreValues(ks *KeyStore) []any {
	v := keyStoreValues(ks)
	v[3], v[5] = bytesOf(ks.Name), bytesOf(ks.TrustAnchor)
	return v
}

// pgKeyStoreConflict names which of ks's unique columns another store (not
// self) already has, the cluster first, as SQLite's keyStoreConflict does.
// A store committed after this looks is caught by the unique indexes; two
// external key stores of one account and region are serialized by the
// advisory lock CreateKeyStore and UpdateKeyStore take.
func pgKeyStoreConflict(ctx context.Context, tx pgx.Tx, ks *KeyStore, self string) error {
	if !storable(ks.ClusterID, ks.Account, ks.Region, ks.XKS.URIEndpoint, ks.XKS.URIPath) {
		// Nothing stored can conflict; the insert will say what is wrong.
		return nil
	}
	if ks.ClusterID != "" {
		if taken, err := pgExists(ctx, tx, `SELECT 1 FROM key_stores WHERE cluster_id = $1 AND id != $2`, ks.ClusterID, self); err != nil || taken {
			if taken {
				return ErrClusterInUse
			}
			return err
		}
	}

	if taken, err := pgExists(ctx, tx, `SELECT 1 FROM key_stores WHERE account = $1 AND region = $2 AND name = $3 AND id != $4`,
		ks.Account, ks.Region, bytesOf(ks.Name), self); err != nil || taken {
		if taken {
			return ErrKeyStoreNameInUse
		}
		return err
	}
	if ks.Type == StoreTypeExternal {
		if taken, err := pgExists(ctx, tx, `SELECT 1 FROM key_stores WHERE account = $1 AND region = $2 AND store_type = $3 AND xks_uri_endpoint = $4 AND xks_uri_path = $5 AND id != $6`,
			ks.Account, ks.Region, StoreTypeExternal, ks.XKS.URIEndpoint, ks.XKS.URIPath, self); err != nil || taken {
			if taken {
				return ErrXksProxyURIInUse
			}
			return err
		}
	}
	return nil
}

func (p *PostgreSQL) GetKeyStore(ctx context.Context, id string) (*KeyStore, error) {
	if !storable(id) {
		return nil, ErrNotFound
	}
	return pgScanKeyStore(p.pool.QueryRow(ctx, `SELECT `+pgKeyStoreColumns+` FROM key_stores WHERE id = $1`, id))
}

func (p *PostgreSQL) listKeyStores(ctx context.Context, where string, args ...any) ([]*KeyStore, error) {
	rows, err := p.pool.Query(ctx, `SELECT `+pgKeyStoreColumns+` FROM key_stores `+where+` ORDER BY creation_date, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*KeyStore
	for rows.Next() {
		ks, err := pgScanKeyStore(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, ks)
	}
	return out, rows.Err()
}

func (p *PostgreSQL) ListKeyStores(ctx context.Context, account, region string) ([]*KeyStore, error) {
	if !storable(account, region) {
		return nil, nil
	}
	return p.listKeyStores(ctx, `WHERE account = $1 AND region = $2`, account, region)
}

func (p *PostgreSQL) AllKeyStores(ctx context.Context) ([]*KeyStore, error) {
	return p.listKeyStores(ctx, ``)
}

// UpdateKeyStore calls fn once, holding the store's row lock: updates of
// one store (a kmsuser password rotation among them) take turns across
// nodes. NO KEY UPDATE, so that CreateKey in the store does not wait.
func (p *PostgreSQL) UpdateKeyStore(ctx context.Context, id string, fn func(*KeyStore) error) (*KeyStore, error) {
	if !storable(id) {
		return nil, ErrNotFound
	}
	var out *KeyStore
	err := p.tx(ctx, func(tx pgx.Tx) error {
		ks, err := pgScanKeyStore(tx.QueryRow(ctx, `SELECT `+pgKeyStoreColumns+` FROM key_stores WHERE id = $1 FOR NO KEY UPDATE`, id))
		if err != nil {
			return err
		}
		account, region, typ := ks.Account, ks.Region, ks.Type
		if err := fn(ks); err != nil {
			return err
		}
		// The identity and type are the row's; fn may not change them.
		ks.ID, ks.Account, ks.Region, ks.Type = id, account, region, typ
		if typ == StoreTypeExternal {
			// The proxy URI is unique in the account and region: take
			// the lock CreateKeyStore takes there.
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, pgKeyStoreLockClass, account+"\x1f"+region); err != nil {
				return err
			}
		}
		if err := pgKeyStoreConflict(ctx, tx, ks, id); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE key_stores SET name = $1, cluster_id = $2, trust_anchor = $3, connect = $4, password = $5, pending_password = $6,
			xks_connectivity = $7, xks_uri_endpoint = $8, xks_uri_path = $9, xks_access_key_id = $10, xks_vpc_service_name = $11, xks_vpc_service_owner = $12,
			connection_state = $13, connection_error = $14
			WHERE id = $15`, keyStoreUpdateValues(pgKeyStoreValues(ks), id)...)
		if err != nil {
			return keyStoreViolation(err)
		}
		out = ks
		return announceKeyStore(ctx, tx, id)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteKeyStore locks the store's row FOR UPDATE before counting its
// keys: a CreateKey into the store holds KEY SHARE on the row until it
// commits, so the count sees every key that will ever be in the store.
func (p *PostgreSQL) DeleteKeyStore(ctx context.Context, id string) error {
	if !storable(id) {
		return ErrNotFound
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		if ok, err := pgExists(ctx, tx, `SELECT 1 FROM key_stores WHERE id = $1 FOR UPDATE`, id); err != nil {
			return err
		} else if !ok {
			return ErrNotFound
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM keys WHERE custom_key_store_id = $1`, id).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return &KeyStoreNotEmptyError{Keys: n}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM key_stores WHERE id = $1`, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM key_store_logins WHERE key_store_id = $1`, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM domain_keys WHERE key_store_id = $1`, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM token_identities WHERE key_store_id = $1`, id); err != nil {
			return err
		}
		return announceKeyStore(ctx, tx, id)
	})
}

func (p *PostgreSQL) TokenIdentity(ctx context.Context, keyStoreID string) (*TokenIdentity, error) {
	if !storable(keyStoreID) {
		return nil, ErrNotFound
	}
	id := TokenIdentity{KeyStoreID: keyStoreID}
	var serial, label []byte
	var recorded int64
	err := p.pool.QueryRow(ctx, `SELECT cluster_id, marker, serial, label, recorded FROM token_identities WHERE key_store_id = $1`, keyStoreID).
		Scan(&id.ClusterID, &id.Marker, &serial, &label, &recorded)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	id.Serial, id.Label, id.Recorded = string(serial), string(label), fromNanos(recorded)
	return &id, nil
}

func (p *PostgreSQL) PutTokenIdentity(ctx context.Context, id *TokenIdentity) error {
	marker := id.Marker
	if marker == nil {
		marker = []byte{}
	}
	_, err := p.pool.Exec(ctx, `INSERT INTO token_identities (key_store_id, cluster_id, marker, serial, label, recorded) VALUES ($1,$2,$3,$4,$5,$6)
		ON CONFLICT (key_store_id) DO UPDATE SET cluster_id = excluded.cluster_id, marker = excluded.marker,
		serial = excluded.serial, label = excluded.label, recorded = excluded.recorded`,
		id.KeyStoreID, id.ClusterID, marker, bytesOf(id.Serial), bytesOf(id.Label), toNanos(id.Recorded))
	return err
}

func (p *PostgreSQL) DeleteKeyOrphaning(ctx context.Context, k *Key, now time.Time) error {
	if !storable(k.Account, k.Region, k.ID) {
		return ErrNotFound
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		if err := changeKey(ctx, tx, k.Account, k.Region, k.ID, `DELETE FROM keys WHERE account = $1 AND region = $2 AND id = $3`, k.Account, k.Region, k.ID); err != nil {
			return err
		}
		arn := "arn:aws:kms:" + k.Region + ":" + k.Account + ":key/" + k.ID
		b := &pgx.Batch{}
		for _, m := range k.Materials {
			if len(m.Wrapped) > 0 {
				continue // nothing of it is on the token
			}
			tokenID := m.TokenID
			if tokenID == nil {
				tokenID = []byte{}
			}
			b.Queue(`INSERT INTO orphans (key_store_id, key_arn, token_id, deleted) VALUES ($1,$2,$3,$4)`,
				k.CustomKeyStoreID, arn, tokenID, toNanos(now))
		}
		if b.Len() == 0 {
			return nil
		}
		return tx.SendBatch(ctx, b).Close()
	})
}

func (p *PostgreSQL) Orphans(ctx context.Context) ([]Orphan, error) {
	rows, err := p.pool.Query(ctx, `SELECT key_store_id, key_arn, token_id, deleted FROM orphans ORDER BY deleted, seq`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Orphan
	for rows.Next() {
		var o Orphan
		var d int64
		if err := rows.Scan(&o.KeyStoreID, &o.KeyARN, &o.TokenID, &d); err != nil {
			return nil, err
		}
		o.Deleted = fromNanos(d)
		out = append(out, o)
	}
	return out, rows.Err()
}

func pgScanGrant(row pgx.Row) (*Grant, error) {
	var g Grant
	var ops, cons string
	var created int64
	err := row.Scan(&g.GrantID, &g.Account, &g.Region, &g.KeyID, &g.GrantToken, &g.Name, &g.GranteePrincipal,
		&g.RetiringPrincipal, &g.IssuingAccount, &ops, &cons, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(ops), &g.Operations); err != nil {
		return nil, fmt.Errorf("store: grant %s: operations: %w", g.GrantID, err)
	}
	var c grantConstraints
	if err := json.Unmarshal([]byte(cons), &c); err != nil {
		return nil, fmt.Errorf("store: grant %s: constraints: %w", g.GrantID, err)
	}
	g.Constraints = GrantConstraints{EncryptionContextEquals: c.Equals, EncryptionContextSubset: c.Subset}
	g.CreationDate = fromNanos(created)
	return &g, nil
}

func pgCollectGrants(rows pgx.Rows, err error) ([]*Grant, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Grant
	for rows.Next() {
		g, err := pgScanGrant(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

func (p *PostgreSQL) CreateGrant(ctx context.Context, g *Grant, limit int) (*Grant, error) {
	ops, err := json.Marshal(g.Operations)
	if err != nil {
		return nil, err
	}
	cons, err := json.Marshal(grantConstraints{Equals: g.Constraints.EncryptionContextEquals, Subset: g.Constraints.EncryptionContextSubset})
	if err != nil {
		return nil, err
	}
	out := g
	err = p.tx(ctx, func(tx pgx.Tx) error {
		// The key's row lock also makes retries by Name take turns, so
		// they find each other's grant instead of each adding one.
		if err := lockKey(ctx, tx, g.Account, g.Region, g.KeyID); err != nil {
			return err
		}
		if g.Name != "" {
			same, err := pgCollectGrants(tx.Query(ctx, `SELECT `+grantColumns+` FROM grants WHERE account = $1 AND region = $2 AND key_id = $3 AND name = $4`,
				g.Account, g.Region, g.KeyID, g.Name))
			if err != nil {
				return err
			}
			for _, old := range same {
				if old.SameParameters(g) {
					out = old
					return nil
				}
			}
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM grants WHERE account = $1 AND region = $2 AND key_id = $3`,
			g.Account, g.Region, g.KeyID).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return ErrLimitExceeded
		}
		_, err := tx.Exec(ctx, `INSERT INTO grants (`+grantColumns+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)`,
			g.GrantID, g.Account, g.Region, g.KeyID, g.GrantToken, g.Name, g.GranteePrincipal, g.RetiringPrincipal,
			g.IssuingAccount, string(ops), string(cons), toNanos(g.CreationDate))
		if uniqueViolation(err) != "" {
			return ErrAlreadyExists // a grant id or token collision: 256 random bits make it a bug
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (p *PostgreSQL) GetGrant(ctx context.Context, grantID string) (*Grant, error) {
	if !storable(grantID) {
		return nil, ErrNotFound
	}
	return pgScanGrant(p.pool.QueryRow(ctx, `SELECT `+grantColumns+` FROM grants WHERE grant_id = $1`, grantID))
}

func (p *PostgreSQL) GetGrantByToken(ctx context.Context, token string) (*Grant, error) {
	if !storable(token) {
		return nil, ErrNotFound
	}
	return pgScanGrant(p.pool.QueryRow(ctx, `SELECT `+grantColumns+` FROM grants WHERE grant_token = $1`, token))
}

// listGrants pages a grant query ordered by grant id; where uses $1…$n for
// args, and the marker and limit follow them.
func (p *PostgreSQL) listGrants(ctx context.Context, where string, args []any, marker string, limit int) ([]*Grant, string, error) {
	after, err := decodeTextMarker(marker)
	if err != nil {
		return nil, "", err
	}
	for _, a := range args {
		if s, ok := a.(string); ok && !storable(s) {
			return nil, "", nil
		}
	}
	n := len(args)
	out, err := pgCollectGrants(p.pool.Query(ctx, fmt.Sprintf(`SELECT `+grantColumns+` FROM grants WHERE %s AND grant_id > $%d ORDER BY grant_id LIMIT $%d`, where, n+1, n+2),
		append(args, after, pgLimit(limit))...))
	if err != nil {
		return nil, "", err
	}
	next := ""
	if limit > 0 && len(out) > limit {
		out = out[:limit]
		next = encodeMarker(out[limit-1].GrantID)
	}
	return out, next, nil
}

func (p *PostgreSQL) ListGrants(ctx context.Context, account, region, keyID, grantID, grantee, marker string, limit int) ([]*Grant, string, error) {
	where := `account = $1 AND region = $2 AND key_id = $3`
	args := []any{account, region, keyID}
	if grantID != "" {
		args = append(args, grantID)
		where += fmt.Sprintf(` AND grant_id = $%d`, len(args))
	}
	if grantee != "" {
		args = append(args, grantee)
		where += fmt.Sprintf(` AND grantee_principal = $%d`, len(args))
	}
	return p.listGrants(ctx, where, args, marker, limit)
}

func (p *PostgreSQL) ListRetirableGrants(ctx context.Context, region, retiringPrincipal, marker string, limit int) ([]*Grant, string, error) {
	return p.listGrants(ctx, `region = $1 AND retiring_principal = $2`, []any{region, retiringPrincipal}, marker, limit)
}

func (p *PostgreSQL) DeleteGrant(ctx context.Context, grantID string) error {
	if !storable(grantID) {
		return ErrNotFound
	}
	return pgAffected(p.pool.Exec(ctx, `DELETE FROM grants WHERE grant_id = $1`, grantID))
}

func (p *PostgreSQL) GrantsFor(ctx context.Context, account, region, keyID string, grantees []string) ([]*Grant, error) {
	if !storable(account, region, keyID) {
		return nil, nil
	}
	var names []string
	for _, g := range grantees {
		if storable(g) {
			names = append(names, g)
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	return pgCollectGrants(p.pool.Query(ctx, `SELECT `+grantColumns+` FROM grants WHERE account = $1 AND region = $2 AND key_id = $3
		AND grantee_principal = ANY($4) ORDER BY grant_id`, account, region, keyID, names))
}

func (p *PostgreSQL) StartUsageTracking(ctx context.Context, now time.Time) (*UsageTracking, error) {
	var u UsageTracking
	var started, seq int64
	err := p.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO usage_tracking (id, started, trail, sequence) VALUES (1, $1, '', 0) ON CONFLICT (id) DO NOTHING`,
			toNanos(now)); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT started, trail, sequence FROM usage_tracking WHERE id = 1`).Scan(&started, &u.Trail, &seq)
	})
	if err != nil {
		return nil, err
	}
	u.Start, u.Sequence = fromNanos(started), uint64(seq)
	return &u, nil
}

// RecordKeyUsage writes the usages in key order, so two nodes flushing
// the same keys take their row locks in one order and never deadlock.
func (p *PostgreSQL) RecordKeyUsage(ctx context.Context, usages []KeyUsage, trail string, seq uint64) error {
	sorted := slices.Clone(usages)
	slices.SortFunc(sorted, func(a, b KeyUsage) int {
		return strings.Compare(a.Account+"/"+a.Region+"/"+a.KeyID, b.Account+"/"+b.Region+"/"+b.KeyID)
	})
	return p.tx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, u := range sorted {
			if !storable(u.Account, u.Region, u.KeyID, u.Operation, u.EventID, u.RequestID) {
				continue
			}
			b.Queue(`INSERT INTO key_last_usage (account, region, key_id, operation, used, event_id, request_id)
				SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM keys WHERE account = $1 AND region = $2 AND id = $3)
				ON CONFLICT (account, region, key_id) DO UPDATE SET operation = excluded.operation, used = excluded.used,
				event_id = excluded.event_id, request_id = excluded.request_id WHERE excluded.used >= key_last_usage.used`,
				u.Account, u.Region, u.KeyID, u.Operation, toNanos(u.Time), u.EventID, u.RequestID)
		}
		b.Queue(`UPDATE usage_tracking SET trail = $1, sequence = $2 WHERE id = 1`, trail, int64(seq))
		return tx.SendBatch(ctx, b).Close()
	})
}

func (p *PostgreSQL) KeyUsage(ctx context.Context, account, region, keyID string) (*KeyUsage, error) {
	if !storable(account, region, keyID) {
		return nil, ErrNotFound
	}
	u := KeyUsage{Account: account, Region: region, KeyID: keyID}
	var used int64
	err := p.pool.QueryRow(ctx, `SELECT operation, used, event_id, request_id FROM key_last_usage WHERE account = $1 AND region = $2 AND key_id = $3`,
		account, region, keyID).Scan(&u.Operation, &used, &u.EventID, &u.RequestID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	u.Time = fromNanos(used)
	return &u, nil
}

func (p *PostgreSQL) Ping(ctx context.Context) error {
	return p.pool.Ping(ctx)
}
