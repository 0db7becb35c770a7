package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// migrations are applied in order, each in its own transaction, and
// counted in PRAGMA user_version. Never edit one that has shipped; append.
var migrations = []string{
	// 1: keys, aliases, tags. Materials are a JSON column of keys so that
	// GetKey, on every Encrypt and Decrypt, is one indexed row read.
	`CREATE TABLE keys (
		account TEXT NOT NULL, region TEXT NOT NULL, id TEXT NOT NULL,
		description TEXT NOT NULL, key_usage TEXT NOT NULL, key_spec TEXT NOT NULL,
		origin TEXT NOT NULL, state TEXT NOT NULL,
		creation_date INTEGER NOT NULL, deletion_date INTEGER NOT NULL,
		pending_window_days INTEGER NOT NULL, policy TEXT NOT NULL,
		custom_key_store_id TEXT NOT NULL, rotation_enabled INTEGER NOT NULL,
		rotation_period_days INTEGER NOT NULL, next_rotation_date INTEGER NOT NULL,
		multi_region INTEGER NOT NULL, materials TEXT NOT NULL,
		PRIMARY KEY (account, region, id)
	) WITHOUT ROWID;
	CREATE INDEX keys_deletion ON keys (state, deletion_date);
	CREATE TABLE aliases (
		account TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL,
		target_key_id TEXT NOT NULL,
		creation_date INTEGER NOT NULL, last_updated_date INTEGER NOT NULL,
		PRIMARY KEY (account, region, name),
		FOREIGN KEY (account, region, target_key_id) REFERENCES keys (account, region, id) ON DELETE CASCADE
	) WITHOUT ROWID;
	CREATE INDEX aliases_target ON aliases (account, region, target_key_id, name);
	CREATE TABLE tags (
		account TEXT NOT NULL, region TEXT NOT NULL, key_id TEXT NOT NULL,
		tag_key TEXT NOT NULL, tag_value TEXT NOT NULL,
		PRIMARY KEY (account, region, key_id, tag_key),
		FOREIGN KEY (account, region, key_id) REFERENCES keys (account, region, id) ON DELETE CASCADE
	) WITHOUT ROWID;`,
	// 2: custom key stores, and token objects orphaned by deleting a key
	// while its store was disconnected.
	`CREATE TABLE key_stores (
		id TEXT PRIMARY KEY, account TEXT NOT NULL, region TEXT NOT NULL,
		name TEXT NOT NULL, cluster_id TEXT NOT NULL UNIQUE, trust_anchor TEXT NOT NULL,
		creation_date INTEGER NOT NULL, connect INTEGER NOT NULL,
		password BLOB, pending_password BLOB
	);
	CREATE UNIQUE INDEX key_stores_name ON key_stores (account, region, name);
	CREATE INDEX keys_key_store ON keys (custom_key_store_id);
	CREATE TABLE orphans (
		key_store_id TEXT NOT NULL, key_arn TEXT NOT NULL, token_id BLOB NOT NULL, deleted INTEGER NOT NULL
	);`,
	// 3: the automatic rotation scheduler's query (KeysDueForRotation),
	// so that a pass reads only the keys that are due.
	`CREATE INDEX keys_rotation ON keys (rotation_enabled, state, next_rotation_date);`,
	// 4: grants. They go with their key (ON DELETE CASCADE), so deleting a
	// key in any way deletes its grants in the same transaction.
	// Operations and constraints are JSON: they are only ever read whole.
	`CREATE TABLE grants (
		grant_id TEXT PRIMARY KEY,
		account TEXT NOT NULL, region TEXT NOT NULL, key_id TEXT NOT NULL,
		grant_token TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
		grantee_principal TEXT NOT NULL, retiring_principal TEXT NOT NULL,
		issuing_account TEXT NOT NULL, operations TEXT NOT NULL, constraints TEXT NOT NULL,
		creation_date INTEGER NOT NULL,
		FOREIGN KEY (account, region, key_id) REFERENCES keys (account, region, id) ON DELETE CASCADE
	);
	CREATE INDEX grants_key ON grants (account, region, key_id, grant_id);
	CREATE INDEX grants_grantee ON grants (account, region, key_id, grantee_principal);
	CREATE INDEX grants_name ON grants (account, region, key_id, name);
	CREATE INDEX grants_retiring ON grants (region, retiring_principal, grant_id);`,
	// 5: the identity of the token behind each key store ('' for the
	// default key store), checked at every start and connect so a blank
	// token answering to the same label is refused. Deleting a custom key
	// store deletes its row in the same transaction.
	`CREATE TABLE token_identities (
		key_store_id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL,
		marker BLOB NOT NULL, serial TEXT NOT NULL, label TEXT NOT NULL, recorded INTEGER NOT NULL
	);`,
	// 6: external key stores. A store has a type; an external one has no
	// cluster (NULL: the column stays unique among CloudHSM stores, which
	// SQLite can only make nullable by rebuilding the table) and a proxy
	// whose URI is unique in its account and region; a key of it names
	// its external key, unique within the store.
	`CREATE TABLE key_stores_v6 (
		id TEXT PRIMARY KEY, account TEXT NOT NULL, region TEXT NOT NULL,
		name TEXT NOT NULL, cluster_id TEXT UNIQUE, trust_anchor TEXT NOT NULL,
		creation_date INTEGER NOT NULL, connect INTEGER NOT NULL,
		password BLOB, pending_password BLOB,
		store_type TEXT NOT NULL DEFAULT 'AWS_CLOUDHSM',
		xks_connectivity TEXT NOT NULL DEFAULT '', xks_uri_endpoint TEXT NOT NULL DEFAULT '',
		xks_uri_path TEXT NOT NULL DEFAULT '', xks_access_key_id TEXT NOT NULL DEFAULT '',
		xks_vpc_service_name TEXT NOT NULL DEFAULT '', xks_vpc_service_owner TEXT NOT NULL DEFAULT ''
	);
	INSERT INTO key_stores_v6 (id, account, region, name, cluster_id, trust_anchor, creation_date, connect, password, pending_password)
		SELECT id, account, region, name, cluster_id, trust_anchor, creation_date, connect, password, pending_password FROM key_stores;
	DROP TABLE key_stores;
	ALTER TABLE key_stores_v6 RENAME TO key_stores;
	CREATE UNIQUE INDEX key_stores_name ON key_stores (account, region, name);
	CREATE INDEX key_stores_xks_uri ON key_stores (account, region, xks_uri_endpoint, xks_uri_path);
	ALTER TABLE keys ADD COLUMN xks_key_id TEXT NOT NULL DEFAULT '';
	CREATE UNIQUE INDEX keys_xks_key ON keys (custom_key_store_id, xks_key_id) WHERE xks_key_id != '';`,
	// 7: the domain keys of each key store ('' for the default key store)
	// that wrap the material of keys held wrapped. Which domain key wraps
	// a material is in the material's JSON (domain_key), beside the
	// wrapped bytes (wrapped); those need no column.
	`CREATE TABLE domain_keys (
		key_store_id TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, created INTEGER NOT NULL,
		PRIMARY KEY (key_store_id, id)
	);`,
	// 8: multi-Region keys. The keys of
	// one multi-Region key share account and id across Regions; each row
	// names the Region of the primary, and, while UpdatePrimaryRegion is
	// moving it, the Region it moves to. keys_set finds a key's Regions.
	`ALTER TABLE keys ADD COLUMN primary_region TEXT NOT NULL DEFAULT '';
	ALTER TABLE keys ADD COLUMN new_primary_region TEXT NOT NULL DEFAULT '';
	CREATE INDEX keys_set ON keys (account, id) WHERE multi_region = 1;
	CREATE INDEX keys_in_transition ON keys (account, id)
		WHERE multi_region = 1 AND (new_primary_region != '' OR (state = 'Creating' AND region != primary_region));`,
	// 9: each key's last successful cryptographic use (GetKeyLastUsage),
	// going with its key, and where tracking stands: when it began, and
	// the audit trail record up to which usage is stored (one row).
	`CREATE TABLE key_last_usage (
		account TEXT NOT NULL, region TEXT NOT NULL, key_id TEXT NOT NULL,
		operation TEXT NOT NULL, used INTEGER NOT NULL, event_id TEXT NOT NULL, request_id TEXT NOT NULL,
		PRIMARY KEY (account, region, key_id),
		FOREIGN KEY (account, region, key_id) REFERENCES keys (account, region, id) ON DELETE CASCADE
	) WITHOUT ROWID;
	CREATE TABLE usage_tracking (
		id INTEGER PRIMARY KEY CHECK (id = 1), started INTEGER NOT NULL, trail TEXT NOT NULL, sequence INTEGER NOT NULL
	);`,
	// 10: what several nodes sharing the database coordinate through (see
	// coordination.go), kept on SQLite too so that one schema version is
	// one schema: marks (claims on work, with an expiry), node heartbeats,
	// each node's login to each custom key store, and the connection state
	// every node reports for a store. A store that was to be connected is
	// CONNECTED, so the next start logs in to it, as before.
	`ALTER TABLE key_stores ADD COLUMN connection_state TEXT NOT NULL DEFAULT '';
	ALTER TABLE key_stores ADD COLUMN connection_error TEXT NOT NULL DEFAULT '';
	UPDATE key_stores SET connection_state = 'CONNECTED' WHERE connect;
	CREATE TABLE marks (
		name TEXT PRIMARY KEY, node TEXT NOT NULL, detail TEXT NOT NULL, started INTEGER NOT NULL, expires INTEGER NOT NULL
	);
	CREATE INDEX marks_node ON marks (node);
	CREATE TABLE nodes (id TEXT PRIMARY KEY, started INTEGER NOT NULL, heartbeat INTEGER NOT NULL);
	CREATE TABLE key_store_logins (
		key_store_id TEXT NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL, error_code TEXT NOT NULL, updated INTEGER NOT NULL,
		PRIMARY KEY (key_store_id, node)
	);`,
}

// SQLite is the embedded Store: one file, WAL journal, synchronous=FULL so
// that a commit is on disk when it returns.
type SQLite struct {
	db     *sql.DB
	getKey *sql.Stmt
	// writes go to the committer (sqlite_commit.go), which runs them
	// together, a transaction and a commit for all that are waiting.
	writes chan *write
	stop   chan struct{}
	done   chan struct{}
	closer sync.Once
	path   string // absolute: the key of its Locks
}

var _ Store = (*SQLite)(nil)

// OpenSQLite opens (creating if needed, mode 0600) the database at path and
// brings its schema up to date.
func OpenSQLite(path string) (*SQLite, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	f.Close()
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(1)", "busy_timeout(10000)"} {
		q.Add("_pragma", p)
	}
	// Write transactions take the write lock when they begin, so two of
	// them never deadlock upgrading read locks.
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+uriPath(path)+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	abs, err := filepath.Abs(path)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &SQLite{db: db, writes: make(chan *write), stop: make(chan struct{}), done: make(chan struct{}), path: abs}
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, err
	}
	if s.getKey, err = db.Prepare(`SELECT ` + keyColumns + ` FROM keys WHERE account = ? AND region = ? AND id = ?`); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	go s.committer()
	return s, nil
}

// uriPath escapes the characters that would end or alter the path part of
// the file: URI the driver hands to SQLite, so any file name opens as itself.
func uriPath(path string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
}

func (s *SQLite) migrate() error {
	for {
		done, err := s.migrateOne()
		if err != nil || done {
			return err
		}
	}
}

// migrateOne applies the next migration, if any. The version is read
// inside the write transaction so that two processes opening a fresh file
// at once do not both apply the same migration.
func (s *SQLite) migrateOne() (done bool, err error) {
	tx, err := s.db.Begin()
	if err != nil {
		return false, fmt.Errorf("store: migrating: %w", err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil {
		return false, fmt.Errorf("store: reading schema version: %w", err)
	}
	if version > len(migrations) {
		return false, fmt.Errorf("store: database schema version %d is newer than this hsmkms (%d)", version, len(migrations))
	}
	if version == len(migrations) {
		return true, nil
	}
	if _, err := tx.Exec(migrations[version]); err != nil {
		return false, fmt.Errorf("store: migration %d: %w", version+1, err)
	}
	if _, err := tx.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, version+1)); err != nil {
		return false, fmt.Errorf("store: migration %d: %w", version+1, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("store: migration %d: %w", version+1, err)
	}
	return false, nil
}

func (s *SQLite) Close() error {
	s.closer.Do(func() { close(s.stop) })
	<-s.done
	s.getKey.Close()
	return s.db.Close()
}

const keyColumns = `account, region, id, description, key_usage, key_spec, origin, state,
	creation_date, deletion_date, pending_window_days, policy, custom_key_store_id,
	rotation_enabled, rotation_period_days, next_rotation_date, multi_region, materials, xks_key_id,
	primary_region, new_primary_region`

type scanner interface{ Scan(...any) error }

// material is Material as stored in the JSON column.
type material struct {
	ID           string    `json:"id"`
	TokenID      []byte    `json:"token_id"`
	CreationDate int64     `json:"created"`
	RotationType string    `json:"rotation_type,omitempty"`
	Wrapped      []byte    `json:"wrapped,omitempty"`
	DomainKey    string    `json:"domain_key,omitempty"`
	Import       *imported `json:"import,omitempty"`
}

// imported is an imported material's Import, as stored.
type imported struct {
	Pending     bool   `json:"pending,omitempty"`
	Rotation    bool   `json:"pending_rotation,omitempty"`
	Description string `json:"description,omitempty"`
	ValidTo     int64  `json:"valid_to,omitempty"`
}

func (m material) Material() Material {
	out := Material{ID: m.ID, TokenID: m.TokenID, CreationDate: fromNanos(m.CreationDate), RotationType: m.RotationType,
		Wrapped: m.Wrapped, DomainKey: m.DomainKey}
	if m.Import != nil {
		out.Import = &Import{PendingImport: m.Import.Pending, PendingRotation: m.Import.Rotation, Description: m.Import.Description}
		if m.Import.ValidTo != 0 {
			out.Import.ValidTo = fromNanos(m.Import.ValidTo)
		}
	}
	return out
}

func materialOf(m Material) material {
	out := material{ID: m.ID, TokenID: m.TokenID, CreationDate: toNanos(m.CreationDate), RotationType: m.RotationType,
		Wrapped: m.Wrapped, DomainKey: m.DomainKey}
	if m.Import != nil {
		out.Import = &imported{Pending: m.Import.PendingImport, Rotation: m.Import.PendingRotation, Description: m.Import.Description}
		if !m.Import.ValidTo.IsZero() {
			out.Import.ValidTo = toNanos(m.Import.ValidTo)
		}
	}
	return out
}

// decodeMaterials reads the JSON column.
func decodeMaterials(id, js string) ([]Material, error) {
	ms, ok := decodeMaterialsFast(js)
	if !ok {
		if err := json.Unmarshal([]byte(js), &ms); err != nil {
			return nil, fmt.Errorf("store: key %s: materials: %w", id, err)
		}
	}
	if len(ms) == 0 {
		return nil, nil
	}
	out := make([]Material, len(ms))
	for i, m := range ms {
		out[i] = m.Material()
	}
	return out, nil
}

// newDomainKeys lists the domain keys that after's materials name and
// before's (nil for a new key) do not: what a write must check.
func newDomainKeys(before, after *Key) []string {
	var out []string
	for _, m := range after.Materials {
		if m.DomainKey == "" || slices.Contains(out, m.DomainKey) {
			continue
		}
		named := false
		if before != nil {
			for _, b := range before.Materials {
				named = named || b.DomainKey == m.DomainKey
			}
		}
		if !named {
			out = append(out, m.DomainKey)
		}
	}
	return out
}

func scanKey(row scanner) (*Key, error) {
	var (
		k                            Key
		created, deletion, nextRot   int64
		rotationEnabled, multiRegion bool
		materialsJSON                string
	)
	err := row.Scan(&k.Account, &k.Region, &k.ID, &k.Description, &k.KeyUsage, &k.KeySpec, &k.Origin, &k.State,
		&created, &deletion, &k.PendingWindowDays, &k.Policy, &k.CustomKeyStoreID,
		&rotationEnabled, &k.RotationPeriodDays, &nextRot, &multiRegion, &materialsJSON, &k.XksKeyID,
		&k.PrimaryRegion, &k.NewPrimaryRegion)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	k.CreationDate, k.DeletionDate, k.NextRotationDate = fromNanos(created), fromNanos(deletion), fromNanos(nextRot)
	k.RotationEnabled, k.MultiRegion = rotationEnabled, multiRegion
	if k.Materials, err = decodeMaterials(k.ID, materialsJSON); err != nil {
		return nil, err
	}
	return &k, nil
}

func keyValues(k *Key) ([]any, error) {
	ms := make([]material, len(k.Materials))
	for i, m := range k.Materials {
		ms[i] = materialOf(m)
	}
	mj, err := json.Marshal(ms)
	if err != nil {
		return nil, err
	}
	return []any{k.Account, k.Region, k.ID, k.Description, k.KeyUsage, k.KeySpec, k.Origin, k.State,
		toNanos(k.CreationDate), toNanos(k.DeletionDate), k.PendingWindowDays, k.Policy, k.CustomKeyStoreID,
		k.RotationEnabled, k.RotationPeriodDays, toNanos(k.NextRotationDate), k.MultiRegion, string(mj), k.XksKeyID,
		k.PrimaryRegion, k.NewPrimaryRegion}, nil
}

// Times are Unix nanoseconds; 0 is the zero time.
func toNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func isConstraint(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT
}

func (s *SQLite) CreateKey(ctx context.Context, k *Key, tags []Tag) error {
	vals, err := keyValues(k)
	if err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		if k.CustomKeyStoreID != "" {
			// Checked here, not by the caller, so that a DeleteKeyStore
			// cannot slip between the check and the insert.
			if ok, err := exists(ctx, tx, `SELECT 1 FROM key_stores WHERE id = ?`, k.CustomKeyStoreID); err != nil {
				return err
			} else if !ok {
				return ErrNotFound
			}
			if k.XksKeyID != "" {
				if taken, err := exists(ctx, tx, `SELECT 1 FROM keys WHERE custom_key_store_id = ? AND xks_key_id = ?`, k.CustomKeyStoreID, k.XksKeyID); err != nil {
					return err
				} else if taken {
					return ErrXksKeyInUse
				}
			}
		}
		if err := usableDomainKeys(ctx, tx, k.MaterialStoreID(), newDomainKeys(nil, k)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO keys (`+keyColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`, vals...)
		if isConstraint(err) {
			return ErrAlreadyExists
		}
		if err != nil {
			return err
		}
		return putTags(ctx, tx, k.Account, k.Region, k.ID, tags)
	})
}

func (s *SQLite) GetKey(ctx context.Context, account, region, id string) (*Key, error) {
	return scanKey(s.getKey.QueryRowContext(ctx, account, region, id))
}

// UpdateKey runs fn while holding the write lock, so fn must be quick and
// must not write through this store itself: that would wait for ever.
func (s *SQLite) UpdateKey(ctx context.Context, account, region, id string, fn func(*Key) error) (*Key, error) {
	var out *Key
	err := s.tx(ctx, func(tx *sql.Tx) error {
		k, err := scanKey(tx.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE account = ? AND region = ? AND id = ?`, account, region, id))
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
		if err := usableDomainKeys(ctx, tx, k.MaterialStoreID(), newDomainKeys(&before, k)); err != nil {
			return err
		}
		vals, err := keyValues(k)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, updateKeySQL, append(vals[3:], account, region, id)...)
		out = k
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

const updateKeySQL = `UPDATE keys SET description=?, key_usage=?, key_spec=?, origin=?, state=?,
	creation_date=?, deletion_date=?, pending_window_days=?, policy=?, custom_key_store_id=?,
	rotation_enabled=?, rotation_period_days=?, next_rotation_date=?, multi_region=?, materials=?, xks_key_id=?,
	primary_region=?, new_primary_region=?
	WHERE account = ? AND region = ? AND id = ?`

func (s *SQLite) DeleteKey(ctx context.Context, account, region, id string) error {
	res, err := s.exec(ctx, `DELETE FROM keys WHERE account = ? AND region = ? AND id = ?`, account, region, id)
	return affected(res, err)
}

func affected(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *SQLite) ListKeys(ctx context.Context, account, region, marker string, limit int) ([]*Key, string, error) {
	after, err := decodeTextMarker(marker)
	if err != nil {
		return nil, "", err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE account = ? AND region = ? AND id > ? ORDER BY id LIMIT ?`,
		account, region, after, fetchLimit(limit))
	if err != nil {
		return nil, "", err
	}
	keys, err := collectKeys(rows)
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

// fetchLimit is the LIMIT for a page of limit rows: one more, to learn
// whether another page follows. A limit below 1 means no limit (SQLite
// reads a negative LIMIT so), rather than a page that can never advance.
func fetchLimit(limit int) int {
	if limit < 1 {
		return -1
	}
	return limit + 1
}

func collectKeys(rows *sql.Rows) ([]*Key, error) {
	defer rows.Close()
	var keys []*Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// forEachPage bounds how many keys ForEachKey holds in memory at once.
const forEachPage = 256

// ForEachKey reads a page at a time and closes the rows before calling fn,
// because fn may write and an open read would pin a connection and the
// WAL for the whole walk. It is therefore not a snapshot: keys changed
// during the walk may or may not be seen, but none is seen twice.
func (s *SQLite) ForEachKey(ctx context.Context, fn func(*Key) error) error {
	var last *Key
	for {
		var rows *sql.Rows
		var err error
		if last == nil {
			rows, err = s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys ORDER BY account, region, id LIMIT ?`, forEachPage)
		} else {
			rows, err = s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE (account, region, id) > (?, ?, ?) ORDER BY account, region, id LIMIT ?`,
				last.Account, last.Region, last.ID, forEachPage)
		}
		if err != nil {
			return err
		}
		keys, err := collectKeys(rows)
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

func (s *SQLite) KeysDueForDeletion(ctx context.Context, now time.Time) ([]*Key, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE state = 'PendingDeletion' AND deletion_date <= ? ORDER BY deletion_date`, toNanos(now))
	if err != nil {
		return nil, err
	}
	return collectKeys(rows)
}

func (s *SQLite) KeysDueForRotation(ctx context.Context, now time.Time) ([]*Key, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE rotation_enabled = 1 AND state = 'Enabled' AND next_rotation_date <= ? ORDER BY next_rotation_date`, toNanos(now))
	if err != nil {
		return nil, err
	}
	return collectKeys(rows)
}

func (s *SQLite) KeysOfOrigin(ctx context.Context, origin string) ([]*Key, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE origin = ? ORDER BY account, region, id`, origin)
	if err != nil {
		return nil, err
	}
	return collectKeys(rows)
}

func (s *SQLite) CreateAlias(ctx context.Context, a *Alias, limit int) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := keyExists(ctx, tx, a.Account, a.Region, a.TargetKeyID); err != nil {
			return err
		}
		if err := aliasRoom(ctx, tx, a.Account, a.Region, a.TargetKeyID, limit); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO aliases (account, region, name, target_key_id, creation_date, last_updated_date) VALUES (?,?,?,?,?,?)`,
			a.Account, a.Region, a.Name, a.TargetKeyID, toNanos(a.CreationDate), toNanos(a.LastUpdatedDate))
		if isConstraint(err) {
			return ErrAlreadyExists // the target exists, so it is the name
		}
		return err
	})
}

// aliasRoom is ErrLimitExceeded if the key already has limit aliases. It
// must run in the transaction that adds the alias, so that two writers
// cannot both take the last place.
func aliasRoom(ctx context.Context, tx *sql.Tx, account, region, keyID string, limit int) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM aliases WHERE account = ? AND region = ? AND target_key_id = ?`,
		account, region, keyID).Scan(&n); err != nil {
		return err
	}
	if n >= limit {
		return ErrLimitExceeded
	}
	return nil
}

// exists reports whether query, a SELECT 1, finds a row.
func exists(ctx context.Context, tx *sql.Tx, query string, args ...any) (bool, error) {
	var one int
	err := tx.QueryRowContext(ctx, query, args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

const aliasColumns = `account, region, name, target_key_id, creation_date, last_updated_date`

func scanAlias(row scanner) (*Alias, error) {
	var a Alias
	var created, updated int64
	err := row.Scan(&a.Account, &a.Region, &a.Name, &a.TargetKeyID, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	a.CreationDate, a.LastUpdatedDate = fromNanos(created), fromNanos(updated)
	return &a, nil
}

func (s *SQLite) GetAlias(ctx context.Context, account, region, name string) (*Alias, error) {
	return scanAlias(s.db.QueryRowContext(ctx, `SELECT `+aliasColumns+` FROM aliases WHERE account = ? AND region = ? AND name = ?`, account, region, name))
}

func (s *SQLite) UpdateAlias(ctx context.Context, account, region, name, fromKeyID, toKeyID string, now time.Time, limit int) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var cur string
		err := tx.QueryRowContext(ctx, `SELECT target_key_id FROM aliases WHERE account = ? AND region = ? AND name = ?`,
			account, region, name).Scan(&cur)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && cur != fromKeyID) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if err := keyExists(ctx, tx, account, region, toKeyID); err != nil {
			return err
		}
		if cur != toKeyID {
			if err := aliasRoom(ctx, tx, account, region, toKeyID, limit); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE aliases SET target_key_id = ?, last_updated_date = ? WHERE account = ? AND region = ? AND name = ?`,
			toKeyID, toNanos(now), account, region, name)
		return err
	})
}

func (s *SQLite) DeleteAlias(ctx context.Context, account, region, name, keyID string) error {
	res, err := s.exec(ctx, `DELETE FROM aliases WHERE account = ? AND region = ? AND name = ? AND target_key_id = ?`, account, region, name, keyID)
	return affected(res, err)
}

func (s *SQLite) ListAliases(ctx context.Context, account, region, keyID, marker string, limit int) ([]*Alias, string, error) {
	after, err := decodeTextMarker(marker)
	if err != nil {
		return nil, "", err
	}
	query := `SELECT ` + aliasColumns + ` FROM aliases WHERE account = ? AND region = ? AND name > ?`
	args := []any{account, region, after}
	if keyID != "" {
		query += ` AND target_key_id = ?`
		args = append(args, keyID)
	}
	rows, err := s.db.QueryContext(ctx, query+` ORDER BY name LIMIT ?`, append(args, fetchLimit(limit))...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var out []*Alias
	for rows.Next() {
		a, err := scanAlias(rows)
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

func (s *SQLite) TagKey(ctx context.Context, account, region, keyID string, tags []Tag, limit int) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := keyExists(ctx, tx, account, region, keyID); err != nil {
			return err
		}
		if err := putTags(ctx, tx, account, region, keyID, tags); err != nil {
			return err
		}
		// Counted after the writes, so that a tag replacing an existing
		// key's value takes no place; failing rolls the writes back.
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM tags WHERE account = ? AND region = ? AND key_id = ?`,
			account, region, keyID).Scan(&n); err != nil {
			return err
		}
		if n > limit {
			return ErrLimitExceeded
		}
		return nil
	})
}

func putTags(ctx context.Context, tx *sql.Tx, account, region, keyID string, tags []Tag) error {
	for _, t := range tags {
		_, err := tx.ExecContext(ctx, `INSERT INTO tags (account, region, key_id, tag_key, tag_value) VALUES (?,?,?,?,?)
			ON CONFLICT (account, region, key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value`,
			account, region, keyID, t.Key, t.Value)
		if err != nil {
			return err
		}
	}
	return nil
}

func keyExists(ctx context.Context, tx *sql.Tx, account, region, keyID string) error {
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM keys WHERE account = ? AND region = ? AND id = ?`, account, region, keyID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

func (s *SQLite) UntagKey(ctx context.Context, account, region, keyID string, tagKeys []string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := keyExists(ctx, tx, account, region, keyID); err != nil {
			return err
		}
		for _, k := range tagKeys {
			if _, err := tx.ExecContext(ctx, `DELETE FROM tags WHERE account = ? AND region = ? AND key_id = ? AND tag_key = ?`, account, region, keyID, k); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *SQLite) ListTags(ctx context.Context, account, region, keyID, marker string, limit int) ([]Tag, string, error) {
	after, err := decodeMarker(marker)
	if err != nil {
		return nil, "", err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT tag_key, tag_value FROM tags WHERE account = ? AND region = ? AND key_id = ? AND tag_key > ? ORDER BY tag_key LIMIT ?`,
		account, region, keyID, after, fetchLimit(limit))
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var out []Tag
	for rows.Next() {
		var t Tag
		if err := rows.Scan(&t.Key, &t.Value); err != nil {
			return nil, "", err
		}
		out = append(out, t)
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

// exec runs a single-statement write, as a write of its own.
func (s *SQLite) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		res, err = tx.ExecContext(ctx, query, args...)
		return err
	})
	return res, err
}

// Markers are the last sort key returned, so a page is stable under
// concurrent inserts; the prefix lets garbage be told from a marker.
const markerPrefix = "m1."

func encodeMarker(after string) string {
	return markerPrefix + base64.RawURLEncoding.EncodeToString([]byte(after))
}

func decodeMarker(m string) (string, error) {
	if m == "" {
		return "", nil
	}
	rest, ok := strings.CutPrefix(m, markerPrefix)
	if !ok {
		return "", ErrInvalidMarker
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(b) == 0 {
		return "", ErrInvalidMarker
	}
	return string(b), nil
}

// decodeTextMarker decodes a marker of a list ordered by an identifier
// (key id, alias name, grant id): identifiers are UTF-8 without NUL, so a
// marker that is not cannot be one the store produced. Tag keys may hold
// any bytes and use decodeMarker.
func decodeTextMarker(m string) (string, error) {
	after, err := decodeMarker(m)
	if err == nil && !storable(after) {
		return "", ErrInvalidMarker
	}
	return after, err
}

// storable reports whether every s is UTF-8 without NUL: what PostgreSQL's
// TEXT holds, and so what identifiers (ids, names, principals) are on
// either engine. The PostgreSQL store answers a lookup by one that is not
// as finding nothing, as SQLite does, rather than failing.
func storable(ss ...string) bool {
	for _, s := range ss {
		if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

const keyStoreColumns = `id, account, region, name, cluster_id, trust_anchor, creation_date, connect, password, pending_password,
	store_type, xks_connectivity, xks_uri_endpoint, xks_uri_path, xks_access_key_id, xks_vpc_service_name, xks_vpc_service_owner,
	connection_state, connection_error`

func scanKeyStore(row scanner) (*KeyStore, error) {
	var ks KeyStore
	var created int64
	var cluster sql.NullString
	x := &ks.XKS
	err := row.Scan(&ks.ID, &ks.Account, &ks.Region, &ks.Name, &cluster, &ks.TrustAnchor, &created, &ks.Connect, &ks.Password, &ks.PendingPassword,
		&ks.Type, &x.Connectivity, &x.URIEndpoint, &x.URIPath, &x.AccessKeyID, &x.VpcEndpointServiceName, &x.VpcEndpointServiceOwner,
		&ks.ConnectionState, &ks.ConnectionError)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	ks.ClusterID = cluster.String
	ks.CreationDate = fromNanos(created)
	return &ks, nil
}

// keyStoreUpdateValues picks, from keyStoreValues, what UpdateKeyStore
// sets: every column but the id, account, region, creation date and type,
// then the id.
func keyStoreUpdateValues(v []any, id string) []any {
	out := make([]any, 0, 15)
	out = append(out, v[3], v[4], v[5], v[7], v[8], v[9])
	out = append(out, v[11:19]...)
	return append(out, id)
}

// keyStoreValues are ks's columns in keyStoreColumns' order. A store
// without a cluster (an external key store) stores NULL, so that the
// unique cluster column only compares clusters.
func keyStoreValues(ks *KeyStore) []any {
	var cluster any
	if ks.ClusterID != "" {
		cluster = ks.ClusterID
	}
	typ := ks.Type
	if typ == "" {
		typ = StoreTypeCloudHSM
	}
	x := ks.XKS
	return []any{ks.ID, ks.Account, ks.Region, ks.Name, cluster, ks.TrustAnchor, toNanos(ks.CreationDate), ks.Connect, ks.Password, ks.PendingPassword,
		typ, x.Connectivity, x.URIEndpoint, x.URIPath, x.AccessKeyID, x.VpcEndpointServiceName, x.VpcEndpointServiceOwner,
		ks.ConnectionState, ks.ConnectionError}
}

func (s *SQLite) CreateKeyStore(ctx context.Context, ks *KeyStore, limit int) error {
	if ks.Type == "" {
		ks.Type = StoreTypeCloudHSM // the type AWS gives a store created without one
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := keyStoreConflict(ctx, tx, ks, ""); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM key_stores WHERE account = ? AND region = ?`, ks.Account, ks.Region).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return ErrLimitExceeded
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO key_stores (`+keyStoreColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
			keyStoreValues(ks)...)
		if isConstraint(err) {
			return ErrAlreadyExists // the id: random, so a bug
		}
		return err
	})
}

// keyStoreConflict names which of ks's unique columns another store (not
// self) already has: the cluster first, then the name in its account and
// region, then an external key store's proxy URI there. The unique
// indexes would refuse the first two, but not say which.
func keyStoreConflict(ctx context.Context, tx *sql.Tx, ks *KeyStore, self string) error {
	if ks.ClusterID != "" {
		if taken, err := exists(ctx, tx, `SELECT 1 FROM key_stores WHERE cluster_id = ? AND id != ?`, ks.ClusterID, self); err != nil || taken {
			if taken {
				return ErrClusterInUse
			}
			return err
		}
	}
	if taken, err := exists(ctx, tx, `SELECT 1 FROM key_stores WHERE account = ? AND region = ? AND name = ? AND id != ?`,
		ks.Account, ks.Region, ks.Name, self); err != nil || taken {
		if taken {
			return ErrKeyStoreNameInUse
		}
		return err
	}
	if ks.Type == StoreTypeExternal {
		if taken, err := exists(ctx, tx, `SELECT 1 FROM key_stores WHERE account = ? AND region = ? AND store_type = ? AND xks_uri_endpoint = ? AND xks_uri_path = ? AND id != ?`,
			ks.Account, ks.Region, StoreTypeExternal, ks.XKS.URIEndpoint, ks.XKS.URIPath, self); err != nil || taken {
			if taken {
				return ErrXksProxyURIInUse
			}
			return err
		}
	}
	return nil
}

func (s *SQLite) GetKeyStore(ctx context.Context, id string) (*KeyStore, error) {
	return scanKeyStore(s.db.QueryRowContext(ctx, `SELECT `+keyStoreColumns+` FROM key_stores WHERE id = ?`, id))
}

func (s *SQLite) listKeyStores(ctx context.Context, where string, args ...any) ([]*KeyStore, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+keyStoreColumns+` FROM key_stores `+where+` ORDER BY creation_date, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*KeyStore
	for rows.Next() {
		ks, err := scanKeyStore(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, ks)
	}
	return out, rows.Err()
}

func (s *SQLite) ListKeyStores(ctx context.Context, account, region string) ([]*KeyStore, error) {
	return s.listKeyStores(ctx, `WHERE account = ? AND region = ?`, account, region)
}

func (s *SQLite) AllKeyStores(ctx context.Context) ([]*KeyStore, error) {
	return s.listKeyStores(ctx, ``)
}

func (s *SQLite) UpdateKeyStore(ctx context.Context, id string, fn func(*KeyStore) error) (*KeyStore, error) {
	var out *KeyStore
	err := s.tx(ctx, func(tx *sql.Tx) error {
		ks, err := scanKeyStore(tx.QueryRowContext(ctx, `SELECT `+keyStoreColumns+` FROM key_stores WHERE id = ?`, id))
		if err != nil {
			return err
		}
		account, region, typ := ks.Account, ks.Region, ks.Type
		if err := fn(ks); err != nil {
			return err
		}
		// The identity and type are the row's; fn may not change them.
		ks.ID, ks.Account, ks.Region, ks.Type = id, account, region, typ
		if err := keyStoreConflict(ctx, tx, ks, id); err != nil {
			return err
		}
		v := keyStoreValues(ks)
		_, err = tx.ExecContext(ctx, `UPDATE key_stores SET name = ?, cluster_id = ?, trust_anchor = ?, connect = ?, password = ?, pending_password = ?,
			xks_connectivity = ?, xks_uri_endpoint = ?, xks_uri_path = ?, xks_access_key_id = ?, xks_vpc_service_name = ?, xks_vpc_service_owner = ?,
			connection_state = ?, connection_error = ?
			WHERE id = ?`, keyStoreUpdateValues(v, id)...)
		if isConstraint(err) {
			return ErrAlreadyExists // keyStoreConflict looked first: a bug
		}
		out = ks
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *SQLite) DeleteKeyStore(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if ok, err := exists(ctx, tx, `SELECT 1 FROM key_stores WHERE id = ?`, id); err != nil {
			return err
		} else if !ok {
			return ErrNotFound
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM keys WHERE custom_key_store_id = ?`, id).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return &KeyStoreNotEmptyError{Keys: n}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM key_stores WHERE id = ?`, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM domain_keys WHERE key_store_id = ?`, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM key_store_logins WHERE key_store_id = ?`, id); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM token_identities WHERE key_store_id = ?`, id)
		return err
	})
}

func (s *SQLite) TokenIdentity(ctx context.Context, keyStoreID string) (*TokenIdentity, error) {
	id := TokenIdentity{KeyStoreID: keyStoreID}
	var recorded int64
	err := s.db.QueryRowContext(ctx, `SELECT cluster_id, marker, serial, label, recorded FROM token_identities WHERE key_store_id = ?`, keyStoreID).
		Scan(&id.ClusterID, &id.Marker, &id.Serial, &id.Label, &recorded)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	id.Recorded = fromNanos(recorded)
	return &id, nil
}

func (s *SQLite) PutTokenIdentity(ctx context.Context, id *TokenIdentity) error {
	_, err := s.exec(ctx, `INSERT INTO token_identities (key_store_id, cluster_id, marker, serial, label, recorded) VALUES (?,?,?,?,?,?)
		ON CONFLICT (key_store_id) DO UPDATE SET cluster_id = excluded.cluster_id, marker = excluded.marker,
		serial = excluded.serial, label = excluded.label, recorded = excluded.recorded`,
		id.KeyStoreID, id.ClusterID, id.Marker, id.Serial, id.Label, toNanos(id.Recorded))
	return err
}

func (s *SQLite) DeleteKeyOrphaning(ctx context.Context, k *Key, now time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM keys WHERE account = ? AND region = ? AND id = ?`, k.Account, k.Region, k.ID)
		if err := affected(res, err); err != nil {
			return err
		}
		arn := "arn:aws:kms:" + k.Region + ":" + k.Account + ":key/" + k.ID
		for _, m := range k.Materials {
			if len(m.Wrapped) > 0 {
				continue // nothing of it is on the token
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO orphans (key_store_id, key_arn, token_id, deleted) VALUES (?,?,?,?)`,
				k.CustomKeyStoreID, arn, m.TokenID, toNanos(now)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *SQLite) Orphans(ctx context.Context) ([]Orphan, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT key_store_id, key_arn, token_id, deleted FROM orphans ORDER BY deleted`)
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

const grantColumns = `grant_id, account, region, key_id, grant_token, name, grantee_principal, retiring_principal,
	issuing_account, operations, constraints, creation_date`

// grantConstraints is GrantConstraints as stored in the JSON column.
type grantConstraints struct {
	Equals map[string]string `json:"equals,omitempty"`
	Subset map[string]string `json:"subset,omitempty"`
}

func scanGrant(row scanner) (*Grant, error) {
	var g Grant
	var ops, cons string
	var created int64
	err := row.Scan(&g.GrantID, &g.Account, &g.Region, &g.KeyID, &g.GrantToken, &g.Name, &g.GranteePrincipal,
		&g.RetiringPrincipal, &g.IssuingAccount, &ops, &cons, &created)
	if errors.Is(err, sql.ErrNoRows) {
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

func collectGrants(rows *sql.Rows) ([]*Grant, error) {
	defer rows.Close()
	var out []*Grant
	for rows.Next() {
		g, err := scanGrant(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

func (s *SQLite) CreateGrant(ctx context.Context, g *Grant, limit int) (*Grant, error) {
	ops, err := json.Marshal(g.Operations)
	if err != nil {
		return nil, err
	}
	cons, err := json.Marshal(grantConstraints{Equals: g.Constraints.EncryptionContextEquals, Subset: g.Constraints.EncryptionContextSubset})
	if err != nil {
		return nil, err
	}
	out := g
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if err := keyExists(ctx, tx, g.Account, g.Region, g.KeyID); err != nil {
			return err
		}
		if g.Name != "" {
			rows, err := tx.QueryContext(ctx, `SELECT `+grantColumns+` FROM grants WHERE account = ? AND region = ? AND key_id = ? AND name = ?`,
				g.Account, g.Region, g.KeyID, g.Name)
			if err != nil {
				return err
			}
			same, err := collectGrants(rows)
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
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM grants WHERE account = ? AND region = ? AND key_id = ?`,
			g.Account, g.Region, g.KeyID).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return ErrLimitExceeded
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO grants (`+grantColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
			g.GrantID, g.Account, g.Region, g.KeyID, g.GrantToken, g.Name, g.GranteePrincipal, g.RetiringPrincipal,
			g.IssuingAccount, string(ops), string(cons), toNanos(g.CreationDate))
		if isConstraint(err) {
			return ErrAlreadyExists // a grant id or token collision: 256 random bits make it a bug
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *SQLite) GetGrant(ctx context.Context, grantID string) (*Grant, error) {
	return scanGrant(s.db.QueryRowContext(ctx, `SELECT `+grantColumns+` FROM grants WHERE grant_id = ?`, grantID))
}

func (s *SQLite) GetGrantByToken(ctx context.Context, token string) (*Grant, error) {
	return scanGrant(s.db.QueryRowContext(ctx, `SELECT `+grantColumns+` FROM grants WHERE grant_token = ?`, token))
}

// listGrants pages a grant query ordered by grant id.
func (s *SQLite) listGrants(ctx context.Context, where string, args []any, marker string, limit int) ([]*Grant, string, error) {
	after, err := decodeTextMarker(marker)
	if err != nil {
		return nil, "", err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+grantColumns+` FROM grants WHERE `+where+` AND grant_id > ? ORDER BY grant_id LIMIT ?`,
		append(args, after, fetchLimit(limit))...)
	if err != nil {
		return nil, "", err
	}
	out, err := collectGrants(rows)
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

func (s *SQLite) ListGrants(ctx context.Context, account, region, keyID, grantID, grantee, marker string, limit int) ([]*Grant, string, error) {
	where := `account = ? AND region = ? AND key_id = ?`
	args := []any{account, region, keyID}
	if grantID != "" {
		where += ` AND grant_id = ?`
		args = append(args, grantID)
	}
	if grantee != "" {
		where += ` AND grantee_principal = ?`
		args = append(args, grantee)
	}
	return s.listGrants(ctx, where, args, marker, limit)
}

func (s *SQLite) ListRetirableGrants(ctx context.Context, region, retiringPrincipal, marker string, limit int) ([]*Grant, string, error) {
	return s.listGrants(ctx, `region = ? AND retiring_principal = ?`, []any{region, retiringPrincipal}, marker, limit)
}

func (s *SQLite) DeleteGrant(ctx context.Context, grantID string) error {
	res, err := s.exec(ctx, `DELETE FROM grants WHERE grant_id = ?`, grantID)
	return affected(res, err)
}

func (s *SQLite) GrantsFor(ctx context.Context, account, region, keyID string, grantees []string) ([]*Grant, error) {
	if len(grantees) == 0 {
		return nil, nil
	}
	args := []any{account, region, keyID}
	for _, g := range grantees {
		args = append(args, g)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+grantColumns+` FROM grants WHERE account = ? AND region = ? AND key_id = ?
		AND grantee_principal IN (?`+strings.Repeat(",?", len(grantees)-1)+`) ORDER BY grant_id`, args...)
	if err != nil {
		return nil, err
	}
	return collectGrants(rows)
}

func (s *SQLite) StartUsageTracking(ctx context.Context, now time.Time) (*UsageTracking, error) {
	if _, err := s.exec(ctx, `INSERT INTO usage_tracking (id, started, trail, sequence) VALUES (1, ?, '', 0) ON CONFLICT (id) DO NOTHING`,
		toNanos(now)); err != nil {
		return nil, err
	}
	var u UsageTracking
	var started, seq int64
	if err := s.db.QueryRowContext(ctx, `SELECT started, trail, sequence FROM usage_tracking WHERE id = 1`).Scan(&started, &u.Trail, &seq); err != nil {
		return nil, err
	}
	u.Start, u.Sequence = fromNanos(started), uint64(seq)
	return &u, nil
}

func (s *SQLite) RecordKeyUsage(ctx context.Context, usages []KeyUsage, trail string, seq uint64) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		// Prepared once for the batch: with keys used at random, a batch
		// holds a row for nearly every call, and parsing the statement
		// again for each was a third of what recording cost.
		upsert, err := tx.PrepareContext(ctx, `INSERT INTO key_last_usage (account, region, key_id, operation, used, event_id, request_id)
			SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM keys WHERE account = ? AND region = ? AND id = ?)
			ON CONFLICT (account, region, key_id) DO UPDATE SET operation = excluded.operation, used = excluded.used,
			event_id = excluded.event_id, request_id = excluded.request_id WHERE excluded.used >= key_last_usage.used`)
		if err != nil {
			return err
		}
		defer upsert.Close()
		for _, u := range usages {
			if _, err := upsert.ExecContext(ctx, u.Account, u.Region, u.KeyID, u.Operation, toNanos(u.Time), u.EventID, u.RequestID,
				u.Account, u.Region, u.KeyID); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE usage_tracking SET trail = ?, sequence = ? WHERE id = 1`, trail, int64(seq))
		return err
	})
}

func (s *SQLite) KeyUsage(ctx context.Context, account, region, keyID string) (*KeyUsage, error) {
	u := KeyUsage{Account: account, Region: region, KeyID: keyID}
	var used int64
	err := s.db.QueryRowContext(ctx, `SELECT operation, used, event_id, request_id FROM key_last_usage WHERE account = ? AND region = ? AND key_id = ?`,
		account, region, keyID).Scan(&u.Operation, &used, &u.EventID, &u.RequestID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	u.Time = fromNanos(used)
	return &u, nil
}

func (s *SQLite) Ping(ctx context.Context) error {
	var one int
	return s.db.QueryRowContext(ctx, `SELECT 1`).Scan(&one)
}
