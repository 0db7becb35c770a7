package keystore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
)

// Importing key material (AWS's GetParametersForImport and
// ImportKeyMaterial). hsm/import.go says what happens on the token; this
// file says how the store names and keeps what importing makes.
//
// Import keys are token objects (their private half only) with CKA_ID
// importKeyPrefix ‖ id ‖ ":" ‖ the Unix second they expire at, so that
// the store can destroy expired ones (CleanImportKeys) without any
// metadata: nothing outside the token, and the import token kms seals,
// names them.
//
// Imported material enters the store's hierarchy as generated material
// does: wrapped under the ACTIVE domain key in a store that makes new
// material wrapped, token objects otherwise. Its material id is not drawn
// at random: it is the check value the token computes with the material
// (hsm.Imported.Check) over a value bound to the KMS key, so that the same
// material imported into the same key again has the same id (and, as token
// objects, the same CKA_ID), and different material a different one,
// without the material ever being read. AWS documents the same for its
// KeyMaterialId: computed from the key id and the material.

// ErrIncorrectMaterial: the material unwrapped but is not of the key's
// spec (size, curve, key type).
var ErrIncorrectMaterial = errors.New("keystore: the imported material is not of the key's kind")

// ImportAlgorithm is how a client wrapped material for import.
type ImportAlgorithm = hsm.ImportAlgorithm

const importKeyPrefix = "hsmkms:import-key:"

func isImportKey(o hsm.ObjectInfo) bool { return strings.HasPrefix(string(o.ID), importKeyPrefix) }

func importKeyRef(id string) hsm.ObjectRef { return hsm.PrivateKeyByID([]byte(importKeyPrefix + id)) }

// importKeyExpiry reads the expiry an import key's id carries.
func importKeyExpiry(id string) (time.Time, bool) {
	i := strings.LastIndexByte(id, ':')
	if i < 0 {
		return time.Time{}, false
	}
	sec, err := strconv.ParseInt(id[i+1:], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}

// NewImportKey makes an import key pair of bits bits on the store's token
// for material wrapped with alg, valid until validTo. It returns its id
// (for ImportMaterial and DestroyImportKey) and its public key (DER
// SubjectPublicKeyInfo).
func (s *Store) NewImportKey(ctx context.Context, bits int, alg ImportAlgorithm, validTo time.Time) (id string, publicKey []byte, err error) {
	tok, err := s.token()
	if err != nil {
		return "", nil, err
	}
	r, err := tok.GenerateRandom(ctx, 16)
	if err != nil {
		return "", nil, classify(err)
	}
	id = hex.EncodeToString(r) + ":" + strconv.FormatInt(validTo.Unix(), 10)
	info, err := tok.GenerateImportKey(ctx, []byte(importKeyPrefix+id), "hsmkms import key (expires "+validTo.UTC().Format(time.RFC3339)+")", bits, alg)
	if err != nil {
		return "", nil, classify(err)
	}
	return id, info.PublicKey, nil
}

// DestroyImportKey destroys the import key id; one gone already is not an
// error.
func (s *Store) DestroyImportKey(ctx context.Context, id string) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	if err := tok.DestroyObject(ctx, importKeyRef(id)); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
		return classify(err)
	}
	return nil
}

// CleanImportKeys destroys the import keys that expired before now and
// returns how many. It walks the token: call it from background jobs.
func (s *Store) CleanImportKeys(ctx context.Context, now time.Time) (int, error) {
	tok, err := s.token()
	if err != nil {
		return 0, err
	}
	objs, err := tok.ListObjects(ctx, 0)
	if err != nil {
		return 0, classify(err)
	}
	n := 0
	for _, o := range objs {
		if !isImportKey(o) {
			continue
		}
		id := strings.TrimPrefix(string(o.ID), importKeyPrefix)
		if exp, ok := importKeyExpiry(id); ok && !exp.After(now) {
			if err := s.DestroyImportKey(ctx, id); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// importCheckData is what an imported material's check value is computed
// over: bound to the key, so that one material has a different id in
// each key.
func importCheckData(keyID [KeyIDSize]byte) []byte {
	sum := sha256.Sum256(append([]byte("hsmkms imported key material of "), keyID[:]...))
	return sum[:]
}

// ImportMaterial unwraps blob, material a client wrapped with alg under
// the import key importKeyID, on the token into a material version of the
// key keyID (spec, usage; label for token objects), and returns it. The
// version's material id is the material's check value (see above).
//
// In a store that makes material wrapped, the material comes back wrapped
// under the ACTIVE domain key and nothing is left on the token; otherwise
// (and for a spec the token cannot wrap: Ed25519 on SoftHSM2 2.6.1, learnt
// by NewMaterial or by the first such import) nothing is made yet: kms
// records the version first, as for Generate, and MakeImported makes its
// token objects.
//
// ErrInvalidCiphertext: the blob does not unwrap; ErrIncorrectMaterial:
// it holds no material of spec; ErrMaterialNotFound: no such import key.
func (s *Store) ImportMaterial(ctx context.Context, keyID [KeyIDSize]byte, spec Spec, usage Usage, label, importKeyID string, alg ImportAlgorithm, blob []byte) (Material, error) {
	if _, ok := specNames[spec]; !ok {
		return Material{}, fmt.Errorf("keystore: unknown key spec %v", spec)
	}
	if err := checkUsage(spec, usage); err != nil {
		return Material{}, err
	}
	tok, err := s.token()
	if err != nil {
		return Material{}, err
	}
	target := hsm.ImportTarget{Spec: spec.material(), Usage: usage.hsm(), CheckData: importCheckData(keyID)}
	run := func() (hsm.Imported, error) {
		return tok.ImportMaterial(ctx, importKeyRef(importKeyID), alg, blob, target)
	}
	var out hsm.Imported
	var dk *domainKey
	h := s.hier.Load()
	wrapped := h != nil && h.wrapNew
	if wrapped {
		if _, refused := h.notWrappable.Load(spec); refused {
			wrapped = false // held as token objects, as NewMaterial holds it
		}
	}
	if wrapped {
		h.mu.RLock()
		dk = h.active
		h.mu.RUnlock()
		if dk == nil {
			return Material{}, fmt.Errorf("keystore: %s has no active domain key", StoreDescription(s.id))
		}
		err = h.withDomainKey(ctx, dk, func(use hsm.ObjectRef) error {
			target.Wrapping, target.Trusted = use, dk.trusted
			var err error
			out, err = run()
			return err
		})
		if errors.Is(err, hsm.ErrNotWrappable) {
			// Learnt here rather than by NewMaterial: held as token
			// objects from now on, this import included.
			h.refuseWrapping(s.id, spec)
			dk, target.Wrapping, target.Trusted = nil, hsm.ObjectRef{}, false
			out, err = run()
		}
	} else {
		out, err = run()
	}
	if err != nil {
		return Material{}, classify(err)
	}
	ref := append(append(make([]byte, 0, KeyIDSize+MaterialIDSize), keyID[:]...), out.Check...)
	m := Material{spec: spec, usage: usage, ref: ref, label: label}
	if dk != nil {
		m.wrapped, err = envelope{spec: spec, key: out.Key, publicKey: out.PublicKey}.marshal()
		if err != nil {
			return Material{}, err
		}
		m.domainKey = dk.id
	}
	return m, nil
}

// MakeImported makes the token objects of m, a version ImportMaterial
// returned for token objects, from the same blob: unwrapped again on the
// token straight into its objects. A blob of other material fails with
// ErrIncorrectMaterial, and leaves nothing.
func (s *Store) MakeImported(ctx context.Context, m Material, importKeyID string, alg ImportAlgorithm, blob []byte) error {
	if !m.OnToken() || m.ID() == nil {
		return errors.New("keystore: MakeImported needs a Material from ImportMaterial held as token objects")
	}
	tok, err := s.token()
	if err != nil {
		return err
	}
	var keyID [KeyIDSize]byte
	copy(keyID[:], m.ref)
	out, err := tok.ImportMaterial(ctx, importKeyRef(importKeyID), alg, blob, hsm.ImportTarget{
		Spec: m.spec.material(), Usage: m.usage.hsm(), IDPrefix: keyID[:], Label: m.label, CheckData: importCheckData(keyID)})
	if err != nil {
		return classify(err)
	}
	if string(out.Check) != string(m.ID()) {
		_ = s.Destroy(ctx, MaterialOf(m.spec, m.usage, append(keyID[:], out.Check...), nil, ""))
		return fmt.Errorf("%w: the blob holds other material than the version", ErrIncorrectMaterial)
	}
	return nil
}

// Seal seals data for the metadata under the default token's vault key
// (AES-256-GCM; see vault.go), for purpose: what is sealed for one purpose
// does not open for another, nor as a kmsuser password. IV ‖ ciphertext ‖
// tag.
func (m *Manager) Seal(ctx context.Context, purpose string, data []byte) ([]byte, error) {
	tok, ref, err := m.vaultKey(ctx, true)
	if err != nil {
		return nil, err
	}
	iv, sealed, err := tok.EncryptGCM(ctx, ref, data, sealAAD(purpose))
	if err != nil {
		return nil, classify(err)
	}
	return append(iv, sealed...), nil
}

// Open opens what Seal sealed for purpose: ErrInvalidCiphertext for
// anything else.
func (m *Manager) Open(ctx context.Context, purpose string, sealed []byte) ([]byte, error) {
	if len(sealed) < GCMIVSize+GCMTagSize {
		return nil, fmt.Errorf("%w: sealed data is too short", ErrInvalidCiphertext)
	}
	tok, ref, err := m.vaultKey(ctx, false)
	if err != nil {
		return nil, err
	}
	plain, err := tok.DecryptGCM(ctx, ref, sealed[:GCMIVSize], sealed[GCMIVSize:], sealAAD(purpose))
	if err != nil {
		return nil, classify(err)
	}
	return plain, nil
}

// sealAAD never begins as vaultAAD does.
func sealAAD(purpose string) []byte { return []byte("hsmkms sealed for " + purpose) }
