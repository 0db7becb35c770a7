// Package store keeps hsmkms's metadata: keys, their material versions,
// aliases, tags, policies and deletion schedules. Key material is never
// here; it stays on the token, and a Key only names the token objects.
//
// The Store interface exists so a server database can replace the embedded
// SQLite file when several hsmkms nodes share one set of keys. Every method
// returns only after its change is durable, because the API acknowledges a
// change as soon as the method returns.
package store
