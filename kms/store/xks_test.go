package store

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func newXKSStore(id, acct, reg, name, endpoint, path string) *KeyStore {
	return &KeyStore{ID: id, Account: acct, Region: reg, Name: name, Type: StoreTypeExternal, CreationDate: time.Unix(1700000000, 0).UTC(),
		Password: []byte{9, 9}, XKS: XKSProxy{Connectivity: "PUBLIC_ENDPOINT", URIEndpoint: endpoint, URIPath: path, AccessKeyID: "AKIAXKSAAAAAAAAAAAAA"}}
}

// TestExternalKeyStores: external key stores have no cluster, a proxy
// URI unique in their account and region, and keys whose external keys
// are unique within the store; all checked in the write transaction.
func TestExternalKeyStores(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		const acct, reg = "111122223333", "us-west-2"
		a := newXKSStore("cks-x1", acct, reg, "xa", "https://xks.example.com", "/a/kms/xks/v1")
		require.NoError(t, s.CreateKeyStore(ctx, a, testLimit))
		got, err := s.GetKeyStore(ctx, a.ID)
		require.NoError(t, err)
		require.Equal(t, a, got)
		// A second store without a cluster: the unique cluster column
		// holds no value for either.
		b := newXKSStore("cks-x2", acct, reg, "xb", "https://xks.example.com", "/b/kms/xks/v1")
		require.NoError(t, s.CreateKeyStore(ctx, b, testLimit))
		c := newXKSStore("cks-x3", acct, reg, "xc", "https://xks.example.com", "/a/kms/xks/v1")
		require.ErrorIs(t, s.CreateKeyStore(ctx, c, testLimit), ErrXksProxyURIInUse)
		c.Name = "xa"
		require.ErrorIs(t, s.CreateKeyStore(ctx, c, testLimit), ErrKeyStoreNameInUse, "the name is checked first")
		c.Name, c.Region = "xc", "eu-west-1"
		require.NoError(t, s.CreateKeyStore(ctx, c, testLimit), "the same URI in another Region is another store's")
		cloud := &KeyStore{ID: "cks-h", Account: acct, Region: reg, Name: "h", Type: StoreTypeCloudHSM, ClusterID: "cluster-a", TrustAnchor: "pem"}
		require.NoError(t, s.CreateKeyStore(ctx, cloud, testLimit))

		_, err = s.UpdateKeyStore(ctx, b.ID, func(k *KeyStore) error { k.XKS.URIPath = a.XKS.URIPath; return nil })
		require.ErrorIs(t, err, ErrXksProxyURIInUse)
		upd, err := s.UpdateKeyStore(ctx, b.ID, func(k *KeyStore) error {
			k.XKS.URIPath, k.XKS.AccessKeyID, k.Password, k.Type = "/b2/kms/xks/v1", "AKIAXKSBBBBBBBBBBBBB", []byte{7}, StoreTypeCloudHSM
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, StoreTypeExternal, upd.Type, "a store's type never changes")
		got, err = s.GetKeyStore(ctx, b.ID)
		require.NoError(t, err)
		require.Equal(t, upd, got)
		require.Equal(t, "AKIAXKSBBBBBBBBBBBBB", got.XKS.AccessKeyID)
		require.Equal(t, []byte{7}, got.Password)

		k := newKey(acct, reg, "x-key")
		k.CustomKeyStoreID, k.Origin, k.XksKeyID = a.ID, "EXTERNAL_KEY_STORE", "ext-1"
		require.NoError(t, s.CreateKey(ctx, k, nil))
		gotKey, err := s.GetKey(ctx, acct, reg, k.ID)
		require.NoError(t, err)
		require.Equal(t, k, gotKey)
		dup := newKey(acct, reg, "x-dup")
		dup.CustomKeyStoreID, dup.Origin, dup.XksKeyID = a.ID, "EXTERNAL_KEY_STORE", "ext-1"
		require.ErrorIs(t, s.CreateKey(ctx, dup, nil), ErrXksKeyInUse)
		dup.CustomKeyStoreID = b.ID
		require.NoError(t, s.CreateKey(ctx, dup, nil), "another store may use the same external key")
		upKey, err := s.UpdateKey(ctx, acct, reg, k.ID, func(k *Key) error { k.State = "Disabled"; return nil })
		require.NoError(t, err)
		require.Equal(t, "ext-1", upKey.XksKeyID)
		gotKey, err = s.GetKey(ctx, acct, reg, k.ID)
		require.NoError(t, err)
		require.Equal(t, "ext-1", gotKey.XksKeyID)
		// Racing creations of keys on one external key: exactly one wins.
		errs := race(8, func(i int) error {
			r := newKey(acct, reg, "race-"+strings.Repeat("r", i+1))
			r.CustomKeyStoreID, r.Origin, r.XksKeyID = a.ID, "EXTERNAL_KEY_STORE", "ext-race"
			return s.CreateKey(ctx, r, nil)
		})
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
			} else {
				require.ErrorIs(t, err, ErrXksKeyInUse)
			}
		}
		require.Equal(t, 1, won)
	})
}

// TestMigration6KeepsKeyStores: a database of schema version 5 with a
// CloudHSM key store keeps it, whole, through the table's rebuild (and
// migration 10 records the store that was to be connected as CONNECTED).
func TestMigration6KeepsKeyStores(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		old := &db{engine: d.engine, dsn: d.newDB(t)}
		var setup string
		if d.name == "sqlite" {
			setup = strings.Join(migrations[:5], ";\n") + `; PRAGMA user_version = 5;
				INSERT INTO key_stores VALUES ('cks-old','111122223333','us-west-2','old','cluster-old','pem',1700000000000000000,1,x'0102',NULL)`
		} else {
			setup = `CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (5);` + strings.Join(pgMigrations[:5], ";\n") + `;
				INSERT INTO key_stores VALUES ('cks-old','111122223333','us-west-2','old'::bytea,'cluster-old','pem'::bytea,1700000000000000000,true,'\x0102'::bytea,NULL)`
		}
		d.exec(t, old.dsn, setup)
		s := old.open(t)
		require.Equal(t, len(migrations), d.version(t, old.dsn))
		ks, err := s.GetKeyStore(ctx, "cks-old")
		require.NoError(t, err)
		require.Equal(t, &KeyStore{ID: "cks-old", Account: "111122223333", Region: "us-west-2", Name: "old", Type: StoreTypeCloudHSM,
			ClusterID: "cluster-old", TrustAnchor: "pem", CreationDate: time.Unix(1700000000, 0).UTC(), Connect: true, Password: []byte{1, 2},
			ConnectionState: "CONNECTED"}, ks)
		dup := &KeyStore{ID: "cks-new", Account: "111122223333", Region: "us-west-2", Name: "new", Type: StoreTypeCloudHSM, ClusterID: "cluster-old"}
		require.ErrorIs(t, s.CreateKeyStore(ctx, dup, testLimit), ErrClusterInUse, "clusters stay unique")
		require.NoError(t, s.Close())
	})
}
