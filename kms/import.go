package kms

import (
	"bytes"
	"context"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Importing key material (GetParametersForImport, ImportKeyMaterial,
// DeleteImportedKeyMaterial). keystore/importing.go and hsm/import.go say
// what happens on the token; this file is AWS's side of it.
//
// The import token is sealed under the default token's vault key
// (keystore.Manager.Seal, AES-256-GCM, purpose "import token"): it names
// the key (account, region, id), the import key on the token, the wrapping
// algorithm and key spec and when it expires, and cannot be forged or
// altered without the token, so it cannot be moved to another key. Sealing
// rather than storing it needs no table, no migration and no clean-up of
// rows: what it names on the token (the import key) carries its own
// expiry, and the background job destroys it once passed.

const (
	importValidity     = 24 * time.Hour
	maxMaterialValidTo = 365 * 24 * time.Hour
	expires            = "KEY_MATERIAL_EXPIRES"
	doesNotExpire      = "KEY_MATERIAL_DOES_NOT_EXPIRE"
	importNew          = "NEW_KEY_MATERIAL"
	importExisting     = "EXISTING_KEY_MATERIAL"
	importTokenPurpose = "import token"
)

// wrappingAlgorithms are AWS's wrapping algorithms hsmkms takes.
var wrappingAlgorithms = map[string]keystore.ImportAlgorithm{
	"RSAES_OAEP_SHA_1":         {Hash: crypto.SHA1},
	"RSAES_OAEP_SHA_256":       {Hash: crypto.SHA256},
	"RSA_AES_KEY_WRAP_SHA_1":   {Hash: crypto.SHA1, AESKeyWrap: true},
	"RSA_AES_KEY_WRAP_SHA_256": {Hash: crypto.SHA256, AESKeyWrap: true},
}

var wrappingKeyBits = map[string]int{"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}

// importClaims is what an import token says.
type importClaims struct {
	Account, Region, KeyID string
	ImportKey              string // keystore's import key id
	Algorithm              string
	WrappingKeySpec        string
	ValidTo                time.Time
}

// importTokenMagic begins every import token: its format's version.
var importTokenMagic = []byte("hsmkms-import-1\x00")

// marshal encodes the claims: each string length-prefixed, then the expiry
// in Unix seconds.
func (c importClaims) marshal() []byte {
	var b []byte
	for _, s := range []string{c.Account, c.Region, c.KeyID, c.ImportKey, c.Algorithm, c.WrappingKeySpec} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return binary.BigEndian.AppendUint64(b, uint64(c.ValidTo.Unix()))
}

var errImportToken = errors.New("kms: malformed import token")

// parseImportToken splits an import token into its sealed claims; it does
// not open them.
func parseImportToken(tok []byte) ([]byte, error) {
	if !bytes.HasPrefix(tok, importTokenMagic) || len(tok) < len(importTokenMagic)+keystore.GCMIVSize+keystore.GCMTagSize || len(tok) > 4096 {
		return nil, errImportToken
	}
	return tok[len(importTokenMagic):], nil
}

// parseImportClaims decodes opened claims.
func parseImportClaims(b []byte) (importClaims, error) {
	var fields [6]string
	for i := range fields {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return importClaims{}, errImportToken
		}
		fields[i] = string(b[k : k+int(n)])
		b = b[k+int(n):]
	}
	if len(b) != 8 {
		return importClaims{}, errImportToken
	}
	sec := int64(binary.BigEndian.Uint64(b))
	if sec < 0 {
		return importClaims{}, errImportToken
	}
	return importClaims{Account: fields[0], Region: fields[1], KeyID: fields[2], ImportKey: fields[3],
		Algorithm: fields[4], WrappingKeySpec: fields[5], ValidTo: time.Unix(sec, 0).UTC()}, nil
}

type GetParametersForImportInput struct {
	KeyId             string
	WrappingAlgorithm string
	WrappingKeySpec   string
}

type GetParametersForImportOutput struct {
	KeyId             string
	ImportToken       []byte
	PublicKey         []byte
	ParametersValidTo wire.Time
}

// checkWrapping applies AWS's rules on which material may be wrapped how.
func checkWrapping(spec, alg, wrappingSpec string) error {
	switch {
	case alg == "RSAES_PKCS1_V1_5":
		return wire.Errorf(wire.Validation, "The RSAES_PKCS1_V1_5 wrapping algorithm is no longer supported. Use RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256.")
	case alg == "SM2PKE" || wrappingSpec == "SM2":
		return wire.Errorf(wire.UnsupportedOperation, "SM2 wrapping keys and the SM2PKE wrapping algorithm are supported only in China Regions.")
	}
	if _, ok := wrappingAlgorithms[alg]; !ok {
		return wire.Errorf(wire.Validation, "WrappingAlgorithm %s is not valid.", alg)
	}
	if _, ok := wrappingKeyBits[wrappingSpec]; !ok {
		return wire.Errorf(wire.Validation, "WrappingKeySpec %s is not valid.", wrappingSpec)
	}
	oaep := !wrappingAlgorithms[alg].AESKeyWrap
	switch {
	case oaep && keySpecs[spec].material.Asymmetric() && keySpecs[spec].material <= keystore.RSA4096 && keySpecs[spec].material >= keystore.RSA2048:
		return wire.Errorf(wire.Validation, "RSA key material can be wrapped only with an RSA_AES_KEY_WRAP wrapping algorithm, not %s.", alg)
	case oaep && spec == "ECC_NIST_P521" && wrappingSpec == "RSA_2048":
		return wire.Errorf(wire.Validation, "An RSA_2048 wrapping key cannot wrap ECC_NIST_P521 key material with %s. Use an RSA_AES_KEY_WRAP wrapping algorithm or a longer wrapping key.", alg)
	}
	return nil
}

// GetParametersForImport makes an import key pair on the default token and
// seals an import token naming it.
func (s *Service) GetParametersForImport(ctx context.Context, r *Request, in *GetParametersForImportInput) (*GetParametersForImportOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	if err := checkWrapping(k.KeySpec, in.WrappingAlgorithm, in.WrappingKeySpec); err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	ks := s.keystores.Default()
	validTo := s.now().UTC().Add(importValidity).Truncate(time.Second)
	id, pub, err := ks.NewImportKey(ctx, wrappingKeyBits[in.WrappingKeySpec], wrappingAlgorithms[in.WrappingAlgorithm], validTo)
	if err != nil {
		return nil, tokenError(err, tokenCall{what: "WrappingAlgorithm " + in.WrappingAlgorithm})
	}
	claims := importClaims{Account: k.Account, Region: k.Region, KeyID: k.ID, ImportKey: id,
		Algorithm: in.WrappingAlgorithm, WrappingKeySpec: in.WrappingKeySpec, ValidTo: validTo}
	sealed, err := s.keystores.Seal(ctx, importTokenPurpose, claims.marshal())
	if err != nil {
		_ = ks.DestroyImportKey(ctx, id)
		return nil, tokenError(err, tokenCall{})
	}
	return &GetParametersForImportOutput{KeyId: arnOf(k), ImportToken: append(append([]byte(nil), importTokenMagic...), sealed...),
		PublicKey: pub, ParametersValidTo: wire.Time(validTo)}, nil
}

type ImportKeyMaterialInput struct {
	KeyId                  string
	ImportToken            []byte
	EncryptedKeyMaterial   []byte
	ValidTo                *wire.Time
	ExpirationModel        string
	ImportType             string
	KeyMaterialDescription *string
	KeyMaterialId          string
}

type ImportKeyMaterialOutput struct {
	KeyId         string
	KeyMaterialId string
}

var materialDescription = regexp.MustCompile(`^[a-zA-Z0-9:/_\s.-]+$`)

func invalidImportToken() error {
	return wire.Errorf(wire.InvalidImportToken, "The import token is invalid or is associated with a different KMS key.")
}

func expiredImportToken() error {
	return wire.Errorf(wire.ExpiredImportToken, "The import token has expired. Use GetParametersForImport to get a new import token and public key.")
}

func incorrectMaterial() error {
	return wire.Errorf(wire.IncorrectKeyMaterial, "The key material is invalid or is not the same key material that was previously imported into this KMS key.")
}

// ImportKeyMaterial imports material into an EXTERNAL key: unwrapped on
// the token (keystore.Store.ImportMaterial), then recorded.
//
// Crash safety: material held wrapped exists nowhere but in the record,
// written in one transaction. Material held as token objects is recorded
// first as pending import (the key unusable with it), then made on the
// token, then recorded as imported: a crash leaves a pending version whose
// objects, if any, Reconcile destroys; the client imports again.
func (s *Service) ImportKeyMaterial(ctx context.Context, r *Request, in *ImportKeyMaterialInput) (*ImportKeyMaterialOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	model := in.ExpirationModel
	if model == "" {
		model = expires
	}
	now := s.now().UTC()
	var validTo time.Time
	switch {
	case model == expires && in.ValidTo == nil:
		return nil, wire.Errorf(wire.Validation, "A ValidTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES.")
	case model == doesNotExpire && in.ValidTo != nil:
		return nil, wire.Errorf(wire.Validation, "A ValidTo date must not be set if the ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE.")
	case model == expires:
		validTo = time.Time(*in.ValidTo).UTC()
		if !validTo.After(now) {
			return nil, wire.Errorf(wire.Validation, "ValidTo must be a date and time in the future.")
		}
		if validTo.After(now.Add(maxMaterialValidTo)) {
			return nil, wire.Errorf(wire.Validation, "ValidTo must be no more than 365 days from now.")
		}
	}
	if in.KeyMaterialDescription != nil && (len(*in.KeyMaterialDescription) > 256 || !materialDescription.MatchString(*in.KeyMaterialDescription)) {
		return nil, wire.Errorf(wire.Validation, "KeyMaterialDescription is not valid.")
	}
	if in.KeyMaterialId != "" && in.ImportType == importNew {
		return nil, wire.Errorf(wire.Validation, "You cannot specify a KeyMaterialId with ImportType NEW_KEY_MATERIAL.")
	}
	if k.KeySpec != specSymmetric && (in.ImportType != "" || in.KeyMaterialId != "" || in.KeyMaterialDescription != nil) {
		return nil, wire.Errorf(wire.Validation, "ImportType, KeyMaterialId and KeyMaterialDescription are valid only for symmetric encryption KMS keys.")
	}
	sealed, err := parseImportToken(in.ImportToken)
	if err != nil {
		return nil, invalidImportToken()
	}
	plain, err := s.keystores.Open(ctx, importTokenPurpose, sealed)
	if errors.Is(err, keystore.ErrInvalidCiphertext) || errors.Is(err, keystore.ErrMaterialNotFound) {
		return nil, invalidImportToken()
	} else if err != nil {
		return nil, tokenError(err, tokenCall{})
	}
	claims, err := parseImportClaims(plain)
	if err != nil || claims.Account != k.Account || claims.Region != k.Region || claims.KeyID != k.ID {
		return nil, invalidImportToken()
	}
	if !now.Before(claims.ValidTo) {
		return nil, expiredImportToken()
	}
	alg, ok := wrappingAlgorithms[claims.Algorithm]
	if !ok {
		return nil, invalidImportToken()
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	defer s.imports.begin(k.ID)()
	ks := s.keystores.Default()
	uuid, _ := parseUUID(k.ID)
	ksp := keySpecs[k.KeySpec]
	mat, err := ks.ImportMaterial(ctx, uuid, ksp.material, keyUsage(k.KeyUsage), arnOf(k), claims.ImportKey, alg, in.EncryptedKeyMaterial)
	if err != nil {
		return nil, s.importError(err, k, claims)
	}
	if k.MultiRegion && mat.OnToken() {
		// Nothing is made yet for token objects. A set's keys hold
		// their material once, wrapped (sharedMaterials).
		return nil, wire.Errorf(wire.UnsupportedOperation, "The default key store holds %s key material as token objects, not wrapped: multi-Region keys cannot import it.", k.KeySpec)
	}
	keystore.Step(keystore.StepImportUnwrapped)
	id := hexID(mat.ID())
	rec := store.Material{ID: id, TokenID: mat.Ref(), CreationDate: now, Wrapped: mat.Wrapped(), DomainKey: mat.DomainKey(),
		Import: &store.Import{ValidTo: validTo}}
	if in.KeyMaterialDescription != nil {
		rec.Import.Description = *in.KeyMaterialDescription
	}
	// made says whether the version's token objects are to be made now:
	// set by place when the version is not imported at present.
	var made bool
	place := func(k *store.Key, pending bool) error {
		if err := s.checkState(k, r.op.states); err != nil {
			return err
		}
		i := -1
		for j, m := range k.Materials {
			if m.ID == id {
				i = j
			}
		}
		importType := in.ImportType
		if importType == "" {
			importType = importNew
			if len(k.Materials) > 0 {
				importType = importExisting
			}
		}
		if k.IsReplica() {
			// A replica's versions are its primary's (sharedMaterials).
			primary := keyARN(k.PrimaryRegion, k.Account, k.ID)
			switch {
			case in.ImportType == importNew:
				return wire.Errorf(wire.UnsupportedOperation, "%s is a multi-Region replica key: new key material is imported into its primary key %s, and then into each replica key with ImportType EXISTING_KEY_MATERIAL.", arnOf(k), primary)
			case i < 0:
				return wire.Errorf(wire.IncorrectKeyMaterial, "The key material is not key material of the primary key %s. A multi-Region replica key takes only the key material imported into its primary key.", primary)
			}
		}
		switch {
		case k.KeySpec != specSymmetric && len(k.Materials) > 0 && i < 0:
			return incorrectMaterial()
		case importType == importExisting && (i < 0 || (in.KeyMaterialId != "" && in.KeyMaterialId != id)):
			return incorrectMaterial()
		case importType == importNew && len(k.Materials) > 0:
			if i >= 0 {
				return incorrectMaterial()
			}
			for _, m := range k.Materials {
				if m.Import != nil && m.Import.PendingRotation {
					return wire.Errorf(wire.KMSInvalidState, "%s already has key material pending rotation. Rotate the key or delete that key material first.", arnOf(k))
				}
			}
		}
		nr := rec
		nr.Import = &store.Import{ValidTo: rec.Import.ValidTo, Description: rec.Import.Description, PendingImport: pending}
		if i < 0 {
			nr.Import.PendingRotation = len(k.Materials) > 0
			k.Materials = append(k.Materials, nr)
			made = true
		} else {
			old := k.Materials[i]
			nr.CreationDate, nr.RotationType = old.CreationDate, old.RotationType
			if old.Import != nil {
				nr.Import.PendingRotation = old.Import.PendingRotation
				if in.KeyMaterialDescription == nil {
					nr.Import.Description = old.Import.Description
				}
				made = old.Import.PendingImport
			}
			if !made && mat.OnToken() && !pending {
				// Imported as token objects already: they stay.
				nr.Wrapped, nr.DomainKey = old.Wrapped, old.DomainKey
			}
			k.Materials[i] = nr
		}
		if k.State == string(StatePendingImport) && allImported(k) {
			k.State = string(StateEnabled)
		}
		return nil
	}
	if !mat.OnToken() {
		// A multi-Region key's versions are its set's: a new one is
		// written to every key of it, pending import in the others.
		k, err = s.writeKey(ctx, k, func(k *store.Key, _ []*store.Key) error { return place(k, false) })
		if err != nil {
			return nil, s.updateError(err, k)
		}
		return &ImportKeyMaterialOutput{KeyId: arnOf(k), KeyMaterialId: id}, nil
	}
	// Token objects: record pending, make, record imported.
	if _, err := s.store.UpdateKey(ctx, k.Account, k.Region, k.ID, func(k *store.Key) error {
		if err := place(k, true); err != nil {
			return err
		}
		if !made {
			return errNothingToMake
		}
		return nil
	}); err != nil && !errors.Is(err, errNothingToMake) {
		return nil, s.updateError(err, k)
	}
	if made {
		keystore.Step(keystore.StepImportPending)
		if err := ks.MakeImported(ctx, mat, claims.ImportKey, alg, in.EncryptedKeyMaterial); err != nil {
			return nil, s.importError(err, k, claims)
		}
		keystore.Step(keystore.StepImportMade)
	}
	k, err = s.store.UpdateKey(ctx, k.Account, k.Region, k.ID, func(k *store.Key) error {
		if !made {
			return place(k, false)
		}
		// Finish the version recorded pending above.
		if err := s.checkState(k, r.op.states); err != nil {
			return err
		}
		for i, m := range k.Materials {
			if m.ID == id && m.Import != nil && m.Import.PendingImport {
				imp := *m.Import
				imp.PendingImport = false
				k.Materials[i].Import = &imp
				if k.State == string(StatePendingImport) && allImported(k) {
					k.State = string(StateEnabled)
				}
				return nil
			}
		}
		return incorrectMaterial() // deleted or finished meanwhile
	})
	if err != nil {
		return nil, s.updateError(err, k)
	}
	return &ImportKeyMaterialOutput{KeyId: arnOf(k), KeyMaterialId: id}, nil
}

var errNothingToMake = errors.New("kms: the material's token objects exist")

func (s *Service) updateError(err error, k *store.Key) error {
	if isNotFound(err) {
		return keyNotFound(k.Region, k.Account, k.ID)
	}
	return err
}

// importError is what a failed import on the token means to the client.
func (s *Service) importError(err error, k *store.Key, c importClaims) error {
	switch {
	case errors.Is(err, keystore.ErrInvalidCiphertext):
		return wire.Errorf(wire.InvalidCiphertext, "The wrapped key material could not be decrypted with the wrapping key and algorithm of the import token.")
	case errors.Is(err, keystore.ErrIncorrectMaterial):
		return incorrectMaterial()
	case errors.Is(err, keystore.ErrMaterialNotFound):
		// The import key is gone: destroyed once its parameters expired.
		if !s.now().Before(c.ValidTo) {
			return expiredImportToken()
		}
		return invalidImportToken()
	}
	return tokenError(err, tokenCall{key: k, what: "WrappingAlgorithm " + c.Algorithm})
}

// allImported reports whether every version of k that is not pending
// rotation is imported: what an EXTERNAL key needs to be usable.
func allImported(k *store.Key) bool {
	n := 0
	for _, m := range k.Materials {
		if m.Import != nil && m.Import.PendingRotation {
			continue
		}
		if m.Import != nil && m.Import.PendingImport {
			return false
		}
		n++
	}
	return n > 0
}

type DeleteImportedKeyMaterialInput struct {
	KeyId         string
	KeyMaterialId string
}

type DeleteImportedKeyMaterialOutput struct {
	KeyId         string
	KeyMaterialId string
}

// DeleteImportedKeyMaterial deletes a version's material (the current one
// unless KeyMaterialId names another): recorded first, then destroyed on
// the token, so a crash between leaves objects no imported version names,
// which Reconcile destroys. A version pending rotation is forgotten; any
// other stays recorded, pending import, and the key is PendingImport
// (PendingDeletion stays so) until it is imported again.
func (s *Service) DeleteImportedKeyMaterial(ctx context.Context, r *Request, in *DeleteImportedKeyMaterialInput) (*DeleteImportedKeyMaterialOutput, error) {
	k, err := s.key(ctx, r, in.KeyId, access{})
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	var gone store.Material
	var released bool
	out, err := s.writeKey(ctx, k, func(k *store.Key, set []*store.Key) error {
		if err := s.checkState(k, r.op.states); err != nil {
			return err
		}
		i, err := deletable(k, in.KeyMaterialId)
		if err != nil {
			return err
		}
		gone = k.Materials[i]
		released = expireMaterial(k, set, i)
		return nil
	})
	if isNotFound(err) {
		return nil, keyNotFound(k.Region, k.Account, k.ID)
	}
	if err != nil {
		return nil, err
	}
	keystore.Step(keystore.StepImportDeleted)
	if released {
		s.destroyImported(ctx, out, gone)
	}
	return &DeleteImportedKeyMaterialOutput{KeyId: arnOf(out), KeyMaterialId: gone.ID}, nil
}

// deletable finds the version id names (the current one for ""), which
// must be imported now.
func deletable(k *store.Key, id string) (int, error) {
	i := -1
	if id == "" {
		i = currentIndex(k)
	} else {
		for j, m := range k.Materials {
			if m.ID == id {
				i = j
			}
		}
		if i < 0 {
			return 0, wire.Errorf(wire.NotFound, "Key material %s is not associated with %s.", id, arnOf(k))
		}
	}
	if i < 0 || k.Materials[i].Import == nil || k.Materials[i].Import.PendingImport {
		return 0, invalidState(arnOf(k), StatePendingImport)
	}
	return i, nil
}

// expireMaterial records version i of k, a key of set (its multi-Region
// set, or nil), as deleted, and reports whether its material is now held
// by no key, to be destroyed. Material pending rotation is nobody's for
// good: deleted from a primary (or a single-Region key) it is forgotten,
// by every key of the set, as AWS has it; deleted from a replica, only
// that replica lacks it. Other material leaves the key PendingImport
// (PendingDeletion stays so). Another key of the set that has imported
// the version keeps its material held.
func expireMaterial(k *store.Key, set []*store.Key, i int) (released bool) {
	m := k.Materials[i]
	if m.Import.PendingRotation && !k.IsReplica() {
		k.Materials = append(k.Materials[:i:i], k.Materials[i+1:]...)
		return true
	}
	held := k.MultiRegion && importedElsewhere(k, set, m.ID)
	imp := *m.Import
	imp.PendingImport = true
	m.Import = &imp
	if !held {
		m.Wrapped, m.DomainKey = nil, ""
	}
	k.Materials[i] = m
	if !imp.PendingRotation && k.State != string(StatePendingDeletion) {
		k.State = string(StatePendingImport)
	}
	return !held
}

// destroyImported destroys a deleted version's objects (or its unwrapped
// copy); a failure is left to Reconcile.
func (s *Service) destroyImported(ctx context.Context, k *store.Key, m store.Material) {
	tok, err := s.token(k)
	if err == nil {
		err = tok.Destroy(ctx, material(k, m))
	}
	if err != nil {
		s.log.Warn("could not destroy deleted imported key material; the next start destroys it", "key", arnOf(k), "material", m.ID, "error", err)
	}
}

// currentIndex is the index of k's current version: its last one not
// pending rotation; -1 if it has none.
func currentIndex(k *store.Key) int {
	for i := len(k.Materials) - 1; i >= 0; i-- {
		if m := k.Materials[i]; m.Import == nil || !m.Import.PendingRotation {
			return i
		}
	}
	return -1
}

// ExpireImported deletes every imported material whose ValidTo has
// passed, as DeleteImportedKeyMaterial would, and destroys expired import
// keys; it returns how many materials it expired.
func (s *Service) ExpireImported(ctx context.Context) (int, error) {
	now := s.now().UTC()
	var errs []error
	// One node at a time walks the (shared) token's import keys.
	if release, err := s.claim(ctx, "import-keys", ""); err == nil {
		if _, err := s.keystores.Default().CleanImportKeys(ctx, now); err != nil {
			errs = append(errs, fmt.Errorf("destroying expired import keys: %w", err))
		}
		release()
	} else if !errors.Is(err, store.ErrMarkHeld) {
		errs = append(errs, err)
	}
	keys, err := s.store.KeysOfOrigin(ctx, originExternal)
	if err != nil {
		return 0, errors.Join(append(errs, err)...)
	}
	n := 0
	for _, k := range keys {
		if !hasExpired(k, now) {
			continue
		}
		expired, err := s.expireKey(ctx, k, now)
		n += expired
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// hasExpired says whether k has an imported material version whose
// ValidTo has passed.
func hasExpired(k *store.Key, now time.Time) bool {
	for _, m := range k.Materials {
		if m.Import != nil && !m.Import.PendingImport && !m.Import.ValidTo.IsZero() && !m.Import.ValidTo.After(now) {
			return true
		}
	}
	return false
}

func expiryMark(k *store.Key) string {
	return "import-expiry/" + k.Account + "/" + k.Region + "/" + k.ID
}

// expireKey deletes k's expired imported material. Every node runs the
// job: the key is claimed (a mark) and read again first, so each expiry
// is performed, and recorded, once, by the node that performs it.
func (s *Service) expireKey(ctx context.Context, k *store.Key, now time.Time) (int, error) {
	release, err := s.claim(ctx, expiryMark(k), "")
	if errors.Is(err, store.ErrMarkHeld) {
		return 0, nil // another node is on it
	}
	if err != nil {
		return 0, err
	}
	defer release()
	k, err = s.cache.Store.GetKey(ctx, k.Account, k.Region, k.ID)
	if isNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, m := range k.Materials {
		if m.Import == nil || m.Import.PendingImport || m.Import.ValidTo.IsZero() || m.Import.ValidTo.After(now) {
			continue
		}
		var gone store.Material
		var released bool
		// AWS records the expiry as its DeleteExpiredKeyMaterial service
		// event; nothing expires that the trail cannot record.
		err := s.serviceAction(ctx, "DeleteExpiredKeyMaterial", k.Account, k.Region, keyResource(arnOf(k), k.Account),
			func() (audit.Fields, audit.Fields, error) {
				cur, err := s.writeKey(ctx, k, func(k *store.Key, set []*store.Key) error {
					for i, x := range k.Materials {
						if x.ID == m.ID && x.Import != nil && !x.Import.PendingImport && !x.Import.ValidTo.IsZero() && !x.Import.ValidTo.After(now) {
							gone = x
							released = expireMaterial(k, set, i)
							return nil
						}
					}
					return errNothingToMake
				})
				if err != nil {
					return nil, nil, err
				}
				if released {
					s.destroyImported(ctx, cur, gone)
				}
				s.log.Info("imported key material expired and was deleted", "key", arnOf(cur), "material", gone.ID, "valid_to", gone.Import.ValidTo)
				return audit.Fields{{Name: "keyMaterialId", Value: gone.ID}}, audit.Fields{{Name: "keyId", Value: arnOf(cur)}}, nil
			})
		if errors.Is(err, errNothingToMake) || isNotFound(err) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// RunImportExpiry calls ExpireImported every interval until ctx ends.
// ValidTo lives in the store: a restart loses nothing, and material that
// expired while hsmkms was down goes on the first pass.
func (s *Service) RunImportExpiry(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.ExpireImported(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("imported key material expiry", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// expiration is DescribeKey's ExpirationModel and ValidTo of an EXTERNAL
// key: the earliest ValidTo of its imported versions that are not pending
// rotation; none before anything is imported.
func expiration(k *store.Key) (string, *wire.Time) {
	var earliest time.Time
	any := false
	for _, m := range k.Materials {
		if m.Import == nil || m.Import.PendingRotation || m.Import.PendingImport {
			continue
		}
		any = true
		if !m.Import.ValidTo.IsZero() && (earliest.IsZero() || m.Import.ValidTo.Before(earliest)) {
			earliest = m.Import.ValidTo
		}
	}
	switch {
	case !any:
		return "", nil
	case earliest.IsZero():
		return doesNotExpire, nil
	}
	t := wire.Time(earliest)
	return expires, &t
}

// createExternalKey makes a key of Origin EXTERNAL: metadata only, no
// material, PendingImport until material is imported.
func (s *Service) createExternalKey(ctx context.Context, r *Request, in *CreateKeyInput, id, spec, usage, policy, primaryRegion string) (*CreateKeyOutput, error) {
	k := &store.Key{
		Account: r.Caller.Account, Region: r.Caller.Region, ID: id,
		Description: in.Description, KeyUsage: usage, KeySpec: spec, Origin: originExternal,
		State: string(StatePendingImport), CreationDate: s.now().UTC(), Policy: policy,
		MultiRegion: in.MultiRegion, PrimaryRegion: primaryRegion,
	}
	tags := make([]store.Tag, len(in.Tags))
	for i, t := range in.Tags {
		tags[i] = store.Tag{Key: t.TagKey, Value: t.TagValue}
	}
	if err := s.store.CreateKey(ctx, k, tags); err != nil {
		return nil, err
	}
	r.touched(arnOf(k))
	return &CreateKeyOutput{KeyMetadata: createdMetadata(s, k)}, nil
}

// lacking returns a key of set other than k that has not imported version
// id, or nil.
func lacking(k *store.Key, set []*store.Key, id string) *store.Key {
	for _, o := range set {
		if o.Region == k.Region {
			continue
		}
		for _, m := range o.Materials {
			if m.ID == id && !hasMaterial(m) {
				return o
			}
		}
	}
	return nil
}

// hasMaterial reports whether version m has material: it was generated,
// or imported and not deleted or expired since.
func hasMaterial(m store.Material) bool { return m.Import == nil || !m.Import.PendingImport }

// importsRunning counts the imports of each key in progress in this
// process, so that Reconcile, run while serving, never destroys token
// objects an import has made and is about to record.
type importsRunning struct {
	mu   sync.Mutex
	keys map[string]int
}

func (i *importsRunning) begin(id string) func() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.keys == nil {
		i.keys = map[string]int{}
	}
	i.keys[id]++
	return func() {
		i.mu.Lock()
		defer i.mu.Unlock()
		if i.keys[id]--; i.keys[id] == 0 {
			delete(i.keys, id)
		}
	}
}

func (i *importsRunning) running(id string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.keys[id] > 0
}

// rotateImported is RotateKeyOnDemand for an EXTERNAL key: the material
// imported for it (PENDING_ROTATION) becomes current. Nothing happens on
// the token: the material is there since its import.
func (s *Service) rotateImported(ctx context.Context, r *Request, k *store.Key, check func(*store.Key) error) (*RotateKeyOnDemandOutput, error) {
	if err := r.proceed(); err != nil {
		return nil, err
	}
	now := s.now().UTC()
	// A multi-Region key rotates with its whole set, once every key of
	// it has imported the material (PENDING_ROTATION, no longer
	// PENDING_MULTI_REGION_IMPORT_AND_ROTATION).
	out, err := s.writeKey(ctx, k, func(k *store.Key, set []*store.Key) error {
		if err := check(k); err != nil {
			return err
		}
		for i, m := range k.Materials {
			if m.Import == nil || !m.Import.PendingRotation {
				continue
			}
			if m.Import.PendingImport {
				break
			}
			if o := lacking(k, set, m.ID); o != nil {
				return wire.Errorf(wire.KMSInvalidState, "Key material %s of %s is not yet imported into its replica key %s. Import it there with ImportType EXISTING_KEY_MATERIAL before you rotate the key.", m.ID, arnOf(k), arnOf(o))
			}
			imp := *m.Import
			imp.PendingRotation = false
			m.Import, m.RotationType, m.CreationDate = &imp, rotationOnDemand, now
			k.Materials = append(append(k.Materials[:i:i], k.Materials[i+1:]...), m)
			return nil
		}
		return wire.Errorf(wire.KMSInvalidState, "%s has no imported key material pending rotation. Import new key material with ImportType NEW_KEY_MATERIAL before you rotate the key.", arnOf(k))
	})
	if err != nil {
		return nil, s.updateError(err, k)
	}
	return &RotateKeyOnDemandOutput{KeyId: arnOf(out)}, nil
}
