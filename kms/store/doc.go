// Package store keeps hsmkms's metadata: keys, their material versions,
// aliases, tags, policies and deletion schedules. Key material is never
// here; it stays on the token, and a Key only names the token objects.
//
// The Store interface has two implementations: SQLite, one embedded file
// and the default, and PostgreSQL, for several hsmkms nodes sharing one set
// of keys. They share the schema (numbered migrations, one list per
// dialect) and the guarantees, and the same test suite runs on both. Every
// method returns only after its change is durable, because the API
// acknowledges a change as soon as the method returns.
package store
