package store

import (
	"context"
	"errors"
	"time"
)

// What several hsmkms nodes sharing one database need from it to agree,
// beyond the metadata: it is all in the database, so that no node holds
// state another needs, and a node that dies leaves nothing behind that the
// others cannot take over.
//
//   - Marks are claims on a piece of work (a key being rotated, a key
//     being reaped, a custom key store being connected) that every node
//     can read, with who holds them, since when, and until when: a node
//     that dies stops renewing nothing, its marks simply expire and
//     another node takes the work over. On one node they are what the
//     on-demand rotation mark used to be in memory.
//   - Locks are mutual exclusion for the few things that must happen once
//     although any node may try at the same moment (recording a token's
//     identity, making the password vault's key, changing a kmsuser
//     password). On PostgreSQL they are session advisory locks, released
//     by the server when the holder's connection ends, so a node that dies
//     holding one blocks nobody.
//   - Nodes record a heartbeat, so the others know which are alive, and
//     each node records whether it is logged in to each custom key store,
//     so every node reports the same connection state.

// ErrMarkHeld: another node holds the mark, and it has not expired.
var ErrMarkHeld = errors.New("store: the work is claimed by another node")

// Mark is a claim on a piece of work, named by Name.
type Mark struct {
	Name    string
	Node    string // the node holding it
	Detail  string // what the holder wants others to see (free text)
	Started time.Time
	Expires time.Time
}

// Node is a running hsmkms node, as its heartbeat shows it.
type Node struct {
	ID        string
	Started   time.Time // when this incarnation of the node started
	Heartbeat time.Time // its last heartbeat
}

// KeyStoreLogin is one node's connection to one custom key store's token.
type KeyStoreLogin struct {
	KeyStoreID string
	Node       string
	State      string // a keystore.ConnectionState
	ErrorCode  string // a keystore.ErrorCode when State is FAILED
	Updated    time.Time
	// Heartbeat is the node's last heartbeat (zero if it has none), read
	// with the login, to tell a live node's state from a dead one's.
	Heartbeat time.Time
}

// Coordination is the part of Store several nodes coordinate through.
type Coordination interface {
	// Ping checks that the database answers.
	Ping(ctx context.Context) error

	// TakeMark records m unless an unexpired mark of the same name is
	// held, by any node, m.Node included (ErrMarkHeld): one claim, one
	// holder. An expired mark is replaced; expiry is judged at m.Started.
	TakeMark(ctx context.Context, m Mark) error
	// GetMark returns the mark of that name, expired or not, or ErrNotFound.
	GetMark(ctx context.Context, name string) (*Mark, error)
	// DeleteMark releases the mark if node still holds it as of started
	// (it may have expired and been taken over: then nothing happens).
	DeleteMark(ctx context.Context, name, node string, started time.Time) error
	// DeleteNodeMarks releases every mark node holds: what a node starting
	// again does, since nothing its previous incarnation claimed is still
	// being worked on.
	DeleteNodeMarks(ctx context.Context, node string) error

	// Lock takes the lock of that name, waiting for it as long as ctx
	// allows; unlock releases it. Locks are held by this process: on
	// PostgreSQL the server releases them when the connection holding them
	// ends, the process's death included. Not reentrant.
	Lock(ctx context.Context, name string) (unlock func(), err error)

	// Heartbeat records that node, started at started, is alive at now.
	Heartbeat(ctx context.Context, node string, started, now time.Time) error
	// GetNode returns what is recorded of node, or ErrNotFound.
	GetNode(ctx context.Context, node string) (*Node, error)
	// Nodes lists every node recorded, live or not, by id.
	Nodes(ctx context.Context) ([]Node, error)

	// PutKeyStoreLogin records one node's state for one key store.
	PutKeyStoreLogin(ctx context.Context, l KeyStoreLogin) error
	// KeyStoreLogins lists the nodes' states for a key store, each with
	// its node's heartbeat.
	KeyStoreLogins(ctx context.Context, keyStoreID string) ([]KeyStoreLogin, error)
	// ResetNodeLogins records node as logged in to no key store: what a
	// node starting again does before it logs in to any.
	ResetNodeLogins(ctx context.Context, node string, now time.Time) error
}

// Changes are what a store shared between processes reports of the
// changes any of them commits.
type Changes struct {
	// Key is called after a change to a key's row commits (update,
	// deletion).
	Key func(account, region, id string)
	// KeyStore is called after a change to a custom key store commits
	// (created, updated, deleted).
	KeyStore func(id string)
	// Live(false) is called as soon as the watcher can no longer vouch
	// that it sees every change (its connection is lost or silent), and
	// Live(true) once it can again: after reconnecting, so that whatever
	// changed in between is unknown and every copy must be dropped.
	Live func(live bool)
}

// Watcher is implemented by stores that several processes share
// (PostgreSQL): Watch reports changes until ctx ends. A store only this
// process writes (SQLite) has nothing to watch.
type Watcher interface {
	Watch(ctx context.Context, h Changes)
}
