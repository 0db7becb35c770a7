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
// it: kms records Ref in its metadata and rebuilds the Material with
// MaterialOf. A Material is a value, safe to copy and share.
type Material struct {
	spec Spec
	ref  []byte
	// usage and label are what Generate gives the version; only a
	// Material from NewMaterial has them.
	usage Usage
	label string
}

// MaterialOf is the material version of a key of spec that kms recorded
// as ref (an earlier Material's Ref). It does not touch the token.
func MaterialOf(spec Spec, ref []byte) Material { return Material{spec: spec, ref: ref} }

// Spec is the kind of key the version is.
func (m Material) Spec() Spec { return m.spec }

// Ref is what kms records to address this version later (MaterialOf).
// Today it is the CKA_ID of the version's token objects (see the layout
// above). kms treats it as opaque bytes.
func (m Material) Ref() []byte { return m.ref }

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

// NewMaterial names a new material version of the key keyID: a fresh
// material id drawn from the store's token RNG. Nothing is made yet, so
// that kms can record the version (Ref) before anything exists to be lost
// by a crash; Generate then makes it, with usage and label (the key's ARN).
func (s *Store) NewMaterial(ctx context.Context, keyID [KeyIDSize]byte, spec Spec, usage Usage, label string) (Material, error) {
	if _, ok := specNames[spec]; !ok {
		return Material{}, fmt.Errorf("keystore: unknown key spec %v", spec)
	}
	id, err := s.GenerateRandom(ctx, MaterialIDSize)
	if err != nil {
		return Material{}, err
	}
	ref := make([]byte, 0, KeyIDSize+MaterialIDSize)
	ref = append(append(ref, keyID[:]...), id...)
	return Material{spec: spec, ref: ref, usage: usage, label: label}, nil
}

// Generate makes the material version m (from NewMaterial) on the store's
// token: never extractable, sensitive, with only the usages m's Usage
// needs. A token that lacks the spec's mechanisms fails with
// ErrUnsupported before anything is made.
func (s *Store) Generate(ctx context.Context, m Material) error {
	switch {
	case m.label == "" || m.ID() == nil:
		return errors.New("keystore: Generate needs a Material from NewMaterial")
	case m.spec == AES256 && m.usage != UsageEncrypt,
		m.spec.hmacBits() != 0 && m.usage != UsageMAC,
		m.spec.Asymmetric() && (m.usage == UsageMAC || m.usage.hsm() == 0):
		return fmt.Errorf("keystore: %v material cannot have usage %d", m.spec, m.usage)
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

// Find checks that every object of m is in the store: nil, or
// ErrMaterialNotFound when any is missing.
func (s *Store) Find(ctx context.Context, m Material) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	for _, ref := range m.objects() {
		if _, err := tok.FindObject(ctx, ref); err != nil {
			return classify(err)
		}
	}
	return nil
}

// Destroy destroys every object of m. Objects already gone are not an
// error, so a Destroy cut short can simply be repeated.
func (s *Store) Destroy(ctx context.Context, m Material) error {
	tok, err := s.token()
	if err != nil {
		return err
	}
	s.publicKeys.Delete(string(m.ref))
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
// leaving out keystore's own (the password vault's key, the audit signing
// key), so that kms can
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
		if string(o.ID) == string(vaultKeyID) || isAuditKey(o.ID) || IsIdentityObject(o) {
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
// password, checks that every one of ms is there, logs out and closes it.
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
		for _, ref := range m.objects() {
			if _, err := tok.FindObject(ctx, ref); err != nil {
				return fmt.Errorf("%w: cluster %s: %w", ErrNotRelated, c.ID, err)
			}
		}
	}
	return nil
}
