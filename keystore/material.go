package keystore

import (
	"context"
	"errors"
	"fmt"

	"github.com/hsmkms/hsmkms/hsm"
)

// How a material version sits on a token. This is the only place that
// defines it.
//
// A material version is one secret key (an AES-256 key, or a generic
// secret of an HMAC key's size) or one key pair (a private and a public
// key). Every object of a version carries
//
//	CKA_ID     key id ‖ material id: the key's UUID (16 bytes) followed by
//	           the version's material id (MaterialIDSize random bytes drawn
//	           from the token's RNG), 48 bytes in all
//	CKA_LABEL  the label kms gives (the key's ARN), for operators only;
//	           nothing is ever looked up by label
//
// so every version of every key is a distinct object, both halves of a pair
// share one CKA_ID, and the key owning an object can be read off the token
// without the metadata (Inventory relies on that to find the object of a
// rotation a crash left unrecorded). The CKA_ID is also what kms records
// for the version (Material.Ref) and hands back to address it.
const (
	// KeyIDSize is the size of a key id (a UUID) in a material reference.
	KeyIDSize = 16
	// MaterialIDSize is the size of a material id.
	MaterialIDSize = 32
)

// Spec is the kind of key material a KMS key has. Safe to copy and compare.
type Spec int

const (
	AES256 Spec = iota + 1 // SYMMETRIC_DEFAULT: AES-256-GCM
	RSA2048
	RSA3072
	RSA4096
	ECP256      // NIST P-256
	ECP384      // NIST P-384
	ECP521      // NIST P-521
	ECSecp256k1 // SECG secp256k1
	Ed25519
	HMAC224 // a generic secret of 224 bits, for HMAC-SHA-224
	HMAC256
	HMAC384
	HMAC512
)

var specNames = map[Spec]string{
	AES256: "AES256", RSA2048: "RSA2048", RSA3072: "RSA3072", RSA4096: "RSA4096",
	ECP256: "ECP256", ECP384: "ECP384", ECP521: "ECP521", ECSecp256k1: "ECSecp256k1", Ed25519: "Ed25519",
	HMAC224: "HMAC224", HMAC256: "HMAC256", HMAC384: "HMAC384", HMAC512: "HMAC512",
}

func (s Spec) String() string {
	if n, ok := specNames[s]; ok {
		return n
	}
	return fmt.Sprintf("Spec(%d)", int(s))
}

// Asymmetric reports whether material of this spec is a key pair.
func (s Spec) Asymmetric() bool { return s.pair() != 0 }

func (s Spec) pair() hsm.KeyPairSpec {
	switch s {
	case RSA2048:
		return hsm.RSA2048
	case RSA3072:
		return hsm.RSA3072
	case RSA4096:
		return hsm.RSA4096
	case ECP256:
		return hsm.ECP256
	case ECP384:
		return hsm.ECP384
	case ECP521:
		return hsm.ECP521
	case ECSecp256k1:
		return hsm.ECSecp256k1
	case Ed25519:
		return hsm.Ed25519
	}
	return 0
}

func (s Spec) hmacBits() int {
	switch s {
	case HMAC224:
		return 224
	case HMAC256:
		return 256
	case HMAC384:
		return 384
	case HMAC512:
		return 512
	}
	return 0
}

// Usage is what a material version may be used for. The token is told
// only what the usage needs and refuses everything else itself.
type Usage int

const (
	UsageEncrypt      Usage = iota + 1 // ENCRYPT_DECRYPT
	UsageSign                          // SIGN_VERIFY
	UsageMAC                           // GENERATE_VERIFY_MAC
	UsageKeyAgreement                  // KEY_AGREEMENT
)

func (u Usage) hsm() hsm.Usage {
	switch u {
	case UsageEncrypt:
		return hsm.UsageEncrypt | hsm.UsageDecrypt
	case UsageSign, UsageMAC:
		return hsm.UsageSign | hsm.UsageVerify
	case UsageKeyAgreement:
		return hsm.UsageDerive
	}
	return 0
}

// Material addresses one material version of a KMS key in a key store. It
// is how kms names key material to a Store, and all it needs to know of
// it: kms records Ref (and, for wrapped material, Wrapped and DomainKey) in
// its metadata and rebuilds the Material with MaterialOf. A Material is a
// value, safe to copy and share.
type Material struct {
	spec  Spec
	usage Usage
	ref   []byte
	// wrapped and domainKey are set for material held wrapped (see
	// hierarchy.go): the envelope and the domain key it is wrapped under.
	wrapped   []byte
	domainKey string
	// label is what Generate gives the version's token objects; only a
	// Material from NewMaterial has it.
	label string
}

// MaterialOf is the material version of a key of spec and usage that kms
// recorded as ref, wrapped and domainKey (an earlier Material's Ref,
// Wrapped and DomainKey; the last two empty for token objects). It does
// not touch the token.
func MaterialOf(spec Spec, usage Usage, ref, wrapped []byte, domainKey string) Material {
	return Material{spec: spec, usage: usage, ref: ref, wrapped: wrapped, domainKey: domainKey}
}

// Spec is the kind of key the version is.
func (m Material) Spec() Spec { return m.spec }

// Ref is what kms records to address this version later (MaterialOf): the
// key id and material id (the layout above), which for token objects is
// also their CKA_ID. kms treats it as opaque bytes.
func (m Material) Ref() []byte { return m.ref }

// Wrapped is the version's material wrapped under a domain key of its
// store, for kms to record (opaque to it); nil for token objects.
func (m Material) Wrapped() []byte { return m.wrapped }

// DomainKey names the domain key Wrapped is wrapped under, for kms to
// record; "" for token objects.
func (m Material) DomainKey() string { return m.domainKey }

// OnToken reports whether the version is (or, from NewMaterial, is to be)
// token objects. Such a version must be recorded before Generate makes it,
// so that a crash cannot leave objects nothing names; a wrapped version
// exists nowhere but in its record, and needs no Generate.
func (m Material) OnToken() bool { return m.wrapped == nil }

// ID is the version's material id, which ciphertexts name; nil when Ref
// does not have the layout of a material version.
func (m Material) ID() []byte {
	if len(m.ref) != KeyIDSize+MaterialIDSize {
		return nil
	}
	return m.ref[KeyIDSize:]
}

// objects are the token objects holding m.
func (m Material) objects() []hsm.ObjectRef {
	if m.spec.Asymmetric() {
		return []hsm.ObjectRef{hsm.PrivateKeyByID(m.ref), hsm.PublicKeyByID(m.ref)}
	}
	return []hsm.ObjectRef{hsm.SecretKeyByID(m.ref)}
}

// checkUsage refuses a usage material of spec cannot have.
func checkUsage(spec Spec, usage Usage) error {
	switch {
	case spec == AES256 && usage != UsageEncrypt,
		spec.hmacBits() != 0 && usage != UsageMAC,
		spec.Asymmetric() && (usage == UsageMAC || usage.hsm() == 0):
		return fmt.Errorf("keystore: %v material cannot have usage %d", spec, usage)
	}
	return nil
}

// NewMaterial makes a new material version of the key keyID, with a fresh
// material id drawn from the store's token RNG.
//
// In a store that holds material wrapped, the material is generated on the
// token and wrapped under the store's active domain key right away:
// nothing of it is left on the token, so nothing is lost if the caller
// never records it. Otherwise (a token_objects store, or a spec the token
// cannot wrap: Ed25519 on SoftHSM2 2.6.1) nothing is made yet, so that kms
// can record the version (Ref) before anything exists to be lost by a
// crash; Generate then makes it, with usage and label (the key's ARN). A
// token that lacks the spec's mechanisms fails with ErrUnsupported.
func (s *Store) NewMaterial(ctx context.Context, keyID [KeyIDSize]byte, spec Spec, usage Usage, label string) (Material, error) {
	if _, ok := specNames[spec]; !ok {
		return Material{}, fmt.Errorf("keystore: unknown key spec %v", spec)
	}
	if err := checkUsage(spec, usage); err != nil {
		return Material{}, err
	}
	id, err := s.GenerateRandom(ctx, MaterialIDSize)
	if err != nil {
		return Material{}, err
	}
	ref := make([]byte, 0, KeyIDSize+MaterialIDSize)
	ref = append(append(ref, keyID[:]...), id...)
	m := Material{spec: spec, usage: usage, ref: ref, label: label}
	h := s.hier.Load()
	if h == nil || !h.wrapNew {
		return m, nil
	}
	if _, refused := h.notWrappable.Load(spec); refused {
		return m, nil
	}
	m.wrapped, m.domainKey, err = h.wrapNewMaterial(ctx, spec, usage)
	if errors.Is(err, hsm.ErrNotWrappable) {
		h.refuseWrapping(s.id, spec)
		m.wrapped, m.domainKey = nil, ""
		return m, nil
	}
	if err != nil {
		return Material{}, classify(err)
	}
	return m, nil
}

// Generate makes the material version m (from NewMaterial) on the store's
// token, if it is made as token objects: never extractable, sensitive,
// with only the usages m's Usage needs. Wrapped material exists already,
// and Generate does nothing. A token that lacks the spec's mechanisms
// fails with ErrUnsupported before anything is made.
func (s *Store) Generate(ctx context.Context, m Material) error {
	if !m.OnToken() {
		return nil
	}
	switch {
	case m.label == "" || m.ID() == nil:
		return errors.New("keystore: Generate needs a Material from NewMaterial")
	}
	if err := checkUsage(m.spec, m.usage); err != nil {
		return err
	}
	tok, err := s.token()
	if err != nil {
		return err
	}
	switch {
	case m.spec.Asymmetric():
		err = tok.GenerateKeyPair(ctx, m.ref, m.label, m.spec.pair(), m.usage.hsm())
	case m.spec.hmacBits() != 0:
		err = tok.GenerateHMACKey(ctx, m.ref, m.label, m.spec.hmacBits())
	default:
		_, err = tok.GenerateAESKey(ctx, m.ref, m.label, m.usage.hsm())
	}
	return classify(err)
}

// Find checks that m can be used: every token object of m is in the
// store, or m's domain key is. nil, or ErrMaterialNotFound.
func (s *Store) Find(ctx context.Context, m Material) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	if !m.OnToken() {
		h := s.hier.Load()
		if h == nil {
			return fmt.Errorf("%w: %s holds no wrapped material", ErrMaterialNotFound, StoreDescription(s.id))
		}
		_, err := h.keyFor(ctx, m.domainKey)
		return err
	}
	for _, ref := range m.objects() {
		if _, err := tok.FindObject(ctx, ref); err != nil {
			return classify(err)
		}
	}
	return nil
}

// Destroy destroys every object of m: its token objects, or the unwrapped
// copies of wrapped material (which has nothing else on the token: it is
// gone once its record is). Objects already gone are not an error, so a
// Destroy cut short can simply be repeated.
func (s *Store) Destroy(ctx context.Context, m Material) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	s.publicKeys.Delete(string(m.ref))
	if h := s.hier.Load(); h != nil {
		h.forgetMaterial(m)
	}
	if !m.OnToken() {
		return nil
	}
	for _, ref := range m.objects() {
		if err := tok.DestroyObject(ctx, ref); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
			return classify(err)
		}
	}
	return nil
}

// TokenObject is one object Inventory found on a store's token.
type TokenObject struct {
	// Ref is the object's CKA_ID: for an object of a material version, the
	// version's Material.Ref (a pair's two objects have the same).
	Ref   []byte
	Label string
	// IsMaterial says Ref has the layout of a material version; KeyID and
	// MaterialID are then its two parts. Whether some key owns it is for
	// the metadata to say.
	IsMaterial bool
	KeyID      [KeyIDSize]byte
	MaterialID []byte
}

// Inventory lists the objects on the store's token, one entry per object,
// leaving out keystore's own (the password vault's key, the identity
// object, the domain keys, the audit signing key), so that kms can
// compare them with its metadata at start-up. It walks the whole token:
// never call it on a request's path.
func (s *Store) Inventory(ctx context.Context) ([]TokenObject, error) {
	tok, err := s.token()
	if err != nil {
		return nil, err
	}
	objs, err := tok.ListObjects(ctx, 0)
	if err != nil {
		return nil, classify(err)
	}
	out := make([]TokenObject, 0, len(objs))
	for _, o := range objs {
		if string(o.ID) == string(vaultKeyID) || isAuditKey(o.ID) || IsIdentityObject(o) || isDomainKey(o) || isImportKey(o) {
			continue
		}
		to := TokenObject{Ref: o.ID, Label: o.Label}
		if len(o.ID) == KeyIDSize+MaterialIDSize {
			to.IsMaterial = true
			copy(to.KeyID[:], o.ID)
			to.MaterialID = o.ID[KeyIDSize:]
		}
		out = append(out, to)
	}
	return out, nil
}

// CheckRelated is AWS's test that a replacement cluster holds the same key
// store: it opens the cluster's token afresh, logs in as the user with
// password, checks that every one of ms is there (the token objects of
// ms, or the domain keys wrapped material is under), logs out and closes
// it.
// ErrNotRelated when the token refuses the password or lacks any of ms; a
// *ProbeError when the token cannot be opened. With no material there is
// nothing to check, and the token is not opened. The login is guarded as
// every login that may rewrite a SoftHSM2 token.object (Safeguards).
func (m *Manager) CheckRelated(ctx context.Context, c Cluster, password string, ms []Material) error {
	if len(ms) == 0 {
		return nil
	}
	tok, err := hsm.OpenToken(c.Token)
	if err != nil {
		return &ProbeError{NotActive: true, Err: err}
	}
	defer tok.Close()
	if info, err := tok.Info(); err != nil {
		return &ProbeError{NotActive: true, Err: err}
	} else if err := m.Safeguards().BeforeRewrite(info); err != nil {
		return err
	}
	if err := tok.Login(ctx, password); err != nil {
		return fmt.Errorf("%w: cluster %s: log in: %w", ErrNotRelated, c.ID, err)
	}
	defer tok.Logout(ctx)
	for _, m := range ms {
		refs := m.objects()
		if !m.OnToken() {
			// Wrapped material is on the cluster if its domain key is.
			refs = []hsm.ObjectRef{domainKeyRef(m.domainKey)}
		}
		for _, ref := range refs {
			if _, err := tok.FindObject(ctx, ref); err != nil {
				return fmt.Errorf("%w: cluster %s: %w", ErrNotRelated, c.ID, err)
			}
		}
	}
	return nil
}
