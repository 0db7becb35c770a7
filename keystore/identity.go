package keystore

// How hsmkms knows a token is the one its database was made with, and not
// a blank token that answers to the same label.
//
// At first use hsmkms puts an identity object on the token (a private data
// object holding 16 random bytes) and records its value, the token's
// serial and label in the metadata database. Every later start (default
// key store) and every connect (custom key stores) reads the object after
// logging in and compares. A token that lacks the recorded object, or holds
// another one, is refused: nothing is initialised, re-created or reset.
// Being private, the object also proves that the token key decrypting the
// token's objects is the one it always was.
//
// A deployment that predates the record is adopted once, logged: the
// object is made and recorded, unless the database names key material on
// the token and the token holds none of it, which is refused too.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
)

// IdentityObjectLabel is the CKA_LABEL of the identity object (CKO_DATA)
// hsmkms puts on each token it uses.
const IdentityObjectLabel = "hsmkms token identity"

const identityApplication = "hsmkms"

// IsIdentityObject reports whether o is a token's identity object, which
// belongs to no key.
func IsIdentityObject(o hsm.ObjectInfo) bool {
	return o.Class == pkcs11.CKO_DATA && o.Label == IdentityObjectLabel
}

// TokenIdentity is what the database records of a key store's token.
type TokenIdentity struct {
	// ClusterID is the cluster the record was made for ("" for the
	// default key store): a store moved to another cluster is checked
	// afresh.
	ClusterID string
	// Marker is the value of the identity object on the token.
	Marker        []byte
	Serial, Label string
	Recorded      time.Time
}

// TokenRecords is where identities are recorded (the metadata database),
// by key store ID ("" for the default key store).
type TokenRecords interface {
	TokenIdentity(ctx context.Context, storeID string) (TokenIdentity, bool, error)
	RecordTokenIdentity(ctx context.Context, storeID string, id TokenIdentity) error
	// KeyMaterial lists the references (Material.Ref) of the material the
	// database says the store's token holds (keys not left half-made by a
	// crash).
	KeyMaterial(ctx context.Context, storeID string) ([][]byte, error)
	// SealsPasswords reports whether the database holds kmsuser passwords
	// sealed by the vault, whose key is then on the default token.
	SealsPasswords(ctx context.Context) (bool, error)
	// DomainKeys lists the store's domain keys, whose token objects the
	// token holds too (see DomainKeyRecords).
	DomainKeys(ctx context.Context, storeID string) ([]DomainKeyRecord, error)
}

// ErrWrongToken: the token that answers to a key store's label or serial is
// not the one the database was made with.
var ErrWrongToken = errors.New("keystore: not the token this key store's keys were made on")

// TokenProblem is why hsmkms refuses a key store's token. Its message names
// the token, where it lives and what to do; it never holds a PIN.
type TokenProblem struct {
	Store   string // "the default key store" or "custom key store cks-…"
	Token   hsm.TokenConfig
	Serial  string // the recorded serial, else the one seen, if any
	Dir     string // SoftHSM2: the token's directory, with what is wrong with it
	Problem string
	Err     error // ErrWrongToken, ErrTokenDamaged or hsm.ErrTokenNotFound
}

func (e *TokenProblem) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "keystore: refusing the token of %s (", e.Store)
	if e.Token.Label != "" {
		fmt.Fprintf(&b, "label %q", e.Token.Label)
	} else {
		fmt.Fprintf(&b, "serial %q", e.Token.Serial)
	}
	if e.Serial != "" && e.Serial != e.Token.Serial {
		fmt.Fprintf(&b, ", serial %s", e.Serial)
	}
	fmt.Fprintf(&b, ", module %s", e.Token.Module)
	if e.Dir != "" {
		fmt.Fprintf(&b, ", SoftHSM2 %s", e.Dir)
	}
	fmt.Fprintf(&b, "): %s. Nothing was initialised or changed. Recover the token as the README's "+
		"\"Recovering a damaged token\" says (restore the token, or for SoftHSM2 its directory or token.object, "+
		"from a backup, or reconnect the device), then start again; never initialise a new token under this "+
		"label: the keys the database names exist only on the original", e.Problem)
	return b.String()
}

func (e *TokenProblem) Unwrap() error { return e.Err }

// VerifyToken checks that tok, logged in, is the token recorded for
// storeID, recording it at first use. clusterID is the cluster the store
// uses now ("" for the default key store).
func VerifyToken(ctx context.Context, tok *hsm.Token, storeID, clusterID string, rec TokenRecords, log hclog.Logger) error {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	info, err := tok.Info()
	if err != nil {
		return err
	}
	marker, err := tok.DataValue(ctx, IdentityObjectLabel)
	switch {
	case errors.Is(err, hsm.ErrObjectNotFound):
		marker = nil
	case errors.Is(err, hsm.ErrObjectAmbiguous):
		return fmt.Errorf("%w: it holds more than one %q object", ErrWrongToken, IdentityObjectLabel)
	case err != nil:
		return err
	}
	recorded, ok, err := rec.TokenIdentity(ctx, storeID)
	if err != nil {
		return err
	}
	if ok && recorded.ClusterID != clusterID {
		log.Info("key store moved to another cluster: checking its token afresh", "store", storeName(storeID),
			"cluster", clusterID, "recorded_cluster", recorded.ClusterID)
		ok = false
	}
	if ok {
		switch {
		case marker == nil:
			return fmt.Errorf("%w: it lacks the identity object recorded on %s (serial then %s; now %s)",
				ErrWrongToken, recorded.Recorded.UTC().Format(time.RFC3339), recorded.Serial, info.Serial)
		case !bytes.Equal(marker, recorded.Marker):
			return fmt.Errorf("%w: its identity object is another deployment's or another store's (serial %s; recorded %s)",
				ErrWrongToken, info.Serial, recorded.Serial)
		}
		if info.Serial != recorded.Serial || info.Label != recorded.Label {
			// The same token object on another device: a clone or a
			// restored backup of the token, which carries the keys.
			log.Warn("token carries its recorded identity under a new serial or label; recording them",
				"store", storeName(storeID), "serial", info.Serial, "recorded_serial", recorded.Serial,
				"label", info.Label, "recorded_label", recorded.Label)
			recorded.Serial, recorded.Label = info.Serial, info.Label
			return rec.RecordTokenIdentity(ctx, storeID, recorded)
		}
		return nil
	}
	// No record: a first use, or a deployment from before the record.
	ids, err := rec.KeyMaterial(ctx, storeID)
	if err != nil {
		return err
	}
	dks, err := rec.DomainKeys(ctx, storeID)
	if err != nil {
		return err
	}
	for _, dk := range dks {
		if dk.State == domainKeyActive || dk.State == domainKeyRetired {
			ids = append(ids, domainKeyRef(dk.ID).ID)
		}
	}
	if storeID == DefaultID {
		sealed, err := rec.SealsPasswords(ctx)
		if err != nil {
			return err
		}
		if sealed {
			ids = append(ids, vaultKeyID)
		}
	}
	if len(ids) > 0 {
		found, err := holdsAny(ctx, tok, ids)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: the database names %d key objects on it and it holds none of them", ErrWrongToken, len(ids))
		}
	}
	if marker == nil {
		marker = make([]byte, 16)
		if _, err := rand.Read(marker); err != nil {
			return err
		}
		// The object first, then the record: a crash in between leaves an
		// object without a record, which the next check adopts.
		if _, err := tok.CreateData(ctx, IdentityObjectLabel, identityApplication, marker); err != nil {
			return fmt.Errorf("keystore: putting the identity object on the token: %w", err)
		}
	}
	id := TokenIdentity{ClusterID: clusterID, Marker: marker, Serial: info.Serial, Label: info.Label, Recorded: time.Now().UTC()}
	if err := rec.RecordTokenIdentity(ctx, storeID, id); err != nil {
		return err
	}
	if len(ids) > 0 {
		log.Warn("adopted a token in use before hsmkms recorded token identities", "store", storeName(storeID),
			"label", info.Label, "serial", info.Serial, "key_objects_named", len(ids))
	} else {
		log.Info("recorded the identity of the token", "store", storeName(storeID), "label", info.Label, "serial", info.Serial)
	}
	return nil
}

// holdsAny reports whether the token holds at least one of the objects
// (secret or private keys) with the given CKA_IDs; it stops at the first.
func holdsAny(ctx context.Context, tok *hsm.Token, ids [][]byte) (bool, error) {
	for _, id := range ids {
		for _, ref := range []hsm.ObjectRef{hsm.SecretKeyByID(id), hsm.PrivateKeyByID(id)} {
			_, err := tok.FindObject(ctx, ref)
			switch {
			case err == nil, errors.Is(err, hsm.ErrObjectAmbiguous):
				return true, nil
			case !errors.Is(err, hsm.ErrObjectNotFound):
				return false, err
			}
		}
	}
	return false, nil
}

func storeName(id string) string {
	if id == DefaultID {
		return "default"
	}
	return id
}

// StoreDescription is how messages name a key store.
func StoreDescription(id string) string {
	if id == DefaultID {
		return "the default key store"
	}
	return "custom key store " + id
}
