package hsm

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
)

// Importing key material (AWS's "bring your own key"): the client wraps
// its material under the public half of an RSA key pair made here for the
// import, and the token unwraps it into the key's form. The material
// itself is never in this process whenever the token can do the unwrap in
// any way.
//
//	import key      RSA key pair; the private half a token object,
//	                CKA_PRIVATE, CKA_SENSITIVE, never extractable, with
//	                CKA_UNWRAP only; the public half a session object,
//	                read once (its SubjectPublicKeyInfo goes to the client)
//	                and destroyed. Only on a token that refuses
//	                CKM_RSA_PKCS_OAEP with the algorithm's hash does the
//	                private half also get CKA_DECRYPT, for the fallback
//	                below.
//
// How a wrapped blob reaches the token's hands (ImportMaterial):
//
//	RSA_AES_KEY_WRAP  on a token that offers CKM_RSA_AES_KEY_WRAP (PKCS#11
//	                  v2.40) for unwrapping and takes its parameters with
//	                  the algorithm's hash: the whole blob, in one
//	                  C_UnwrapKey with the import key, straight into what
//	                  is wanted; the ephemeral AES key is never an object.
//	                  Otherwise (SoftHSM2 2.6.1 has no such mechanism; a
//	                  refusal of the parameters is remembered per token and
//	                  hash) in two halves: the first modulus-length bytes
//	                  are an ephemeral AES key under RSAES-OAEP, unwrapped
//	                  with CKM_RSA_PKCS_OAEP into a session AES key that
//	                  can only unwrap (E); the rest is the material under E
//	                  with CKM_AES_KEY_WRAP_PAD (RFC 5649), unwrapped with E.
//	RSAES_OAEP        the material under RSAES-OAEP: unwrapped with
//	                  CKM_RSA_PKCS_OAEP into a session generic secret
//	                  (sensitive), wrapped on the token under a fresh
//	                  session AES key E with CKM_AES_KEY_WRAP_PAD and
//	                  destroyed; from then on as the two halves' second.
//	                  PKCS#11 unwraps a private key only from a format that
//	                  carries its type, and RFC 5649 is the one every token
//	                  has.
//
// The material is then unwrapped as often as needed (the whole blob with
// the import key, or the second half with E), each time straight into the
// template of what is wanted (a session object to check and to wrap under
// a domain key, or token objects), and E is destroyed.
//
// The fallback, for a token that refuses CKM_RSA_PKCS_OAEP with the hash
// (SoftHSM2 2.6.1 with SHA-256): the token does the raw RSA operation
// (CKM_RSA_X_509) and the OAEP decoding happens here, in constant time;
// what it decodes is made an object on the token at once (C_CreateObject)
// and cleared from memory. For RSA_AES_KEY_WRAP that is the ephemeral AES
// key only, never the material; for RSAES_OAEP it is the material itself,
// for the few microseconds between C_Decrypt and C_CreateObject.
//
// Ed25519 material goes the same ways to a token that can unwrap an
// Ed25519 key; import_ed25519.go says what passes through this process on
// one that cannot (SoftHSM2 2.6.1).
type ImportAlgorithm struct {
	Hash       crypto.Hash // SHA-1 or SHA-256, for OAEP and MGF1
	AESKeyWrap bool        // RSA_AES_KEY_WRAP_*: an ephemeral AES key, then RFC 5649
}

var (
	// ErrIncorrectMaterial: the blob unwrapped, but what it holds is not
	// material of the spec asked for (another key type, size or curve).
	ErrIncorrectMaterial = errors.New("hsm: the imported material is not of the key's kind")
)

// ImportKeyInfo is what GenerateImportKey made.
type ImportKeyInfo struct {
	// PublicKey is the DER SubjectPublicKeyInfo of the import key.
	PublicKey []byte
	// RawDecrypt says the private half has CKA_DECRYPT for the fallback.
	RawDecrypt bool
}

// GenerateImportKey makes an import key pair (see above) of bits bits with
// CKA_ID id and CKA_LABEL label, for material wrapped with alg. Nothing is
// left on the token but its private half.
func (t *Token) GenerateImportKey(ctx context.Context, id []byte, label string, bits int, alg ImportAlgorithm) (ImportKeyInfo, error) {
	if len(id) == 0 {
		return ImportKeyInfo{}, fmt.Errorf("hsm: a key needs a CKA_ID")
	}
	if alg.Hash != crypto.SHA1 && alg.Hash != crypto.SHA256 {
		return ImportKeyInfo{}, fmt.Errorf("hsm: RSAES-OAEP with SHA-1 or SHA-256 only, not %v", alg.Hash)
	}
	for _, m := range []struct {
		mech, flags uint
		what        string
	}{
		{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR, "RSA key generation"},
		{pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE, "AES key generation"},
		{ckmAESKeyWrapPad, pkcs11.CKF_WRAP | pkcs11.CKF_UNWRAP, "AES key wrap with padding (CKM_AES_KEY_WRAP_PAD)"},
	} {
		if err := t.requireMechanism(ctx, m.mech, m.flags, m.what); err != nil {
			return ImportKeyInfo{}, err
		}
	}
	st, err := t.state()
	if err != nil {
		return ImportKeyInfo{}, err
	}
	raw := false
	if v, ok := st.mechs.oaepUnwrap.Load(alg.Hash); ok {
		raw = !v.(bool)
	}
	info, err := t.generateImportKey(ctx, id, label, bits, raw)
	if err != nil || raw {
		return info, err
	}
	// The first import key for this hash (or one made while another was
	// being tried): try the token's OAEP unwrap once with a throwaway key,
	// and remake the pair for the fallback if the token refuses the
	// parameters.
	var accepts bool
	if v, known := st.mechs.oaepUnwrap.Load(alg.Hash); known {
		accepts = v.(bool)
	} else {
		accepts, err = t.probeOAEPUnwrap(ctx, PrivateKeyByID(id), info.PublicKey, alg.Hash)
		if err != nil {
			_ = t.DestroyObject(ctx, PrivateKeyByID(id))
			return ImportKeyInfo{}, err
		}
		st.mechs.oaepUnwrap.Store(alg.Hash, accepts)
	}
	if accepts {
		return info, nil
	}
	t.log.Debug("token refuses CKM_RSA_PKCS_OAEP unwrap parameters; imports decode OAEP in the process", "token", t.describe(), "hash", alg.Hash.String())
	if err := t.DestroyObject(ctx, PrivateKeyByID(id)); err != nil {
		return ImportKeyInfo{}, err
	}
	return t.generateImportKey(ctx, id, label, bits, true)
}

func (t *Token) generateImportKey(ctx context.Context, id []byte, label string, bits int, raw bool) (ImportKeyInfo, error) {
	_, pub, priv, err := pairTemplates(map[int]KeyPairSpec{2048: RSA2048, 3072: RSA3072, 4096: RSA4096}[bits])
	if err != nil {
		return ImportKeyInfo{}, err
	}
	pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true))
	priv = append(priv,
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false))
	u := UsageUnwrap
	if raw {
		u |= UsageDecrypt
	}
	for _, a := range privateUsages {
		priv = append(priv, pkcs11.NewAttribute(a.attr, a.u != 0 && u&a.u != 0))
	}
	for _, a := range publicUsages {
		pub = append(pub, pkcs11.NewAttribute(a.attr, false))
	}
	var out ImportKeyInfo
	out.RawDecrypt = raw
	err = t.do(ctx, makeTokenObject, func(s pkcs11.SessionHandle) error {
		hpub, hpriv, err := t.p11.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)}, pub, priv)
		if err != nil {
			return wrap("C_GenerateKeyPair", err)
		}
		out.PublicKey, err = t.publicKeyDER(s, hpub)
		if err != nil {
			_ = t.p11.DestroyObject(s, hpriv)
		}
		return t.destroyOn(s, err, hpub)
	})
	if err != nil {
		return ImportKeyInfo{}, err
	}
	return out, nil
}

// probeOAEPUnwrap reports whether the token unwraps with CKM_RSA_PKCS_OAEP
// and hash, by unwrapping a random AES key wrapped here under spki.
func (t *Token) probeOAEPUnwrap(ctx context.Context, key ObjectRef, spki []byte, hash crypto.Hash) (bool, error) {
	pk, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return false, err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return false, err
	}
	ct, err := rsa.EncryptOAEP(hash.New(), rand.Reader, pk.(*rsa.PublicKey), secret, nil)
	clear(secret)
	if err != nil {
		return false, err
	}
	accepts := false
	err = t.withObject(ctx, key, func(s pkcs11.SessionHandle, hk pkcs11.ObjectHandle) error {
		h, err := t.p11.UnwrapKey(s, oaepMech(hash), hk, ct, ephemeralAESTemplate())
		if refusesParams(err) {
			return nil
		}
		if err != nil {
			return wrap("C_UnwrapKey", err)
		}
		accepts = true
		return t.destroyOn(s, nil, h)
	})
	return accepts, err
}

func refusesParams(err error) bool {
	code, ok := Code(err)
	return ok && (code == pkcs11.CKR_MECHANISM_PARAM_INVALID || code == pkcs11.CKR_ARGUMENTS_BAD || code == pkcs11.CKR_MECHANISM_INVALID)
}

func oaepMech(hash crypto.Hash) []*pkcs11.Mechanism {
	m := hashMechs[hash]
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP,
		pkcs11.NewOAEPParams(m.digest, m.mgf, pkcs11.CKZ_DATA_SPECIFIED, nil))}
}

// sessionSecret is a session secret key of keyType, private to the user.
func sessionSecret(keyType uint, sensitive, extractable bool) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, sensitive),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
	}
}

// ephemeralAESTemplate is the ephemeral key E: a session AES key that can
// only unwrap.
func ephemeralAESTemplate() []*pkcs11.Attribute {
	return append(sessionSecret(pkcs11.CKK_AES, true, false), UsageUnwrap.attributes()...)
}

// materialSecretTemplate is material as a session generic secret: to be
// wrapped on the token (sensitive), or read once (not).
func materialSecretTemplate(sensitive bool) []*pkcs11.Attribute {
	return sessionSecret(pkcs11.CKK_GENERIC_SECRET, sensitive, true)
}

// ephemeralKWPTemplate is a fresh ephemeral key E to generate: a session
// AES-256 key that wraps and unwraps, for material made on the token.
func ephemeralKWPTemplate() []*pkcs11.Attribute {
	return append(append(sessionSecret(pkcs11.CKK_AES, true, false), (UsageWrap|UsageUnwrap).attributes()...),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32))
}

// ImportTarget is what ImportMaterial makes of the material.
type ImportTarget struct {
	Spec  MaterialSpec
	Usage Usage
	// Wrapping, if set, is a wrapping key (GenerateWrappingKey; Trusted
	// its CKA_TRUSTED): the material is returned wrapped under it, as
	// GenerateWrapped returns new material, and nothing is left on the
	// token. Otherwise the material is made token objects with CKA_ID
	// IDPrefix ‖ Check and CKA_LABEL Label, as GenerateKeyPair,
	// GenerateHMACKey and GenerateAESKey make them.
	Wrapping ObjectRef
	Trusted  bool
	IDPrefix []byte
	Label    string
	// CheckData is what the material's check value is computed over.
	CheckData []byte
}

// Imported is what ImportMaterial returns.
type Imported struct {
	// Wrapped is the material under Target.Wrapping (empty for token
	// objects) and, for a key pair, its public key.
	Wrapped
	// Check identifies the material without revealing it: SHA-256 over
	// what the token computed with it from CheckData (AES-ECB encryption,
	// HMAC), or over the public key of a pair. The same material and
	// CheckData give the same Check.
	Check []byte
}

// ImportMaterial unwraps blob, material wrapped under the public half of
// the import key importKey with alg, into target on the token. A blob that
// does not unwrap is ErrInvalidCiphertext; material that is not of
// target's spec (an AES key not 256 bits, an HMAC key of a size AWS does
// not take for the spec, a key pair of another type, size or curve) is
// ErrIncorrectMaterial.
func (t *Token) ImportMaterial(ctx context.Context, importKey ObjectRef, alg ImportAlgorithm, blob []byte, target ImportTarget) (Imported, error) {
	if err := target.Spec.check(); err != nil {
		return Imported{}, err
	}
	if alg.Hash != crypto.SHA1 && alg.Hash != crypto.SHA256 {
		return Imported{}, fmt.Errorf("hsm: RSAES-OAEP with SHA-1 or SHA-256 only, not %v", alg.Hash)
	}
	if len(blob) == 0 {
		return Imported{}, ErrInvalidCiphertext
	}
	oneCall := false
	if alg.AESKeyWrap {
		var err error
		if oneCall, err = t.rsaAESKeyWrap(ctx, alg.Hash); err != nil {
			return Imported{}, err
		}
	}
	var out Imported
	err := t.withObject(ctx, importKey, func(s pkcs11.SessionHandle, hk pkcs11.ObjectHandle) error {
		k, err := t.modulusSize(s, hk, importKey)
		if err != nil {
			return err
		}
		if alg.AESKeyWrap && len(blob) <= k {
			return ErrInvalidCiphertext
		}
		if oneCall {
			out, err = t.importWith(s, t.rsaAESUnwrap(s, hk, alg.Hash, blob), len(blob)-k, target)
			if !errors.Is(err, errRSAAESRefused) {
				return err
			}
			// Refused before anything was made: the two halves.
		}
		var e pkcs11.ObjectHandle
		var w []byte
		if alg.AESKeyWrap {
			e, err = t.rsaUnwrap(s, hk, alg.Hash, k, blob[:k], ephemeralAESTemplate())
			if err != nil {
				return err
			}
			w = blob[k:]
		} else {
			e, w, err = t.oaepToKWP(s, hk, alg.Hash, k, blob)
			if err != nil {
				return err
			}
		}
		defer t.destroyOn(s, nil, e)
		out, err = t.importWith(s, t.kwpUnwrap(s, e, w, alg.AESKeyWrap), len(w), target)
		return err
	})
	if err != nil {
		return Imported{}, err
	}
	return out, nil
}

// rsaUnwrap unwraps ct (k bytes) with the import key hk into an object of
// tmpl: on the token, or by the fallback.
func (t *Token) rsaUnwrap(s pkcs11.SessionHandle, hk pkcs11.ObjectHandle, hash crypto.Hash, k int, ct []byte, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if len(ct) != k {
		return 0, ErrInvalidCiphertext
	}
	st := t.st.Load()
	if v, ok := st.mechs.oaepUnwrap.Load(hash); !ok || v.(bool) {
		h, err := t.p11.UnwrapKey(s, oaepMech(hash), hk, ct, tmpl)
		if err == nil {
			return h, nil
		}
		if !refusesParams(err) {
			return 0, unwrapFailure(err)
		}
		st.mechs.oaepUnwrap.Store(hash, false)
	}
	// The fallback: the raw RSA operation on the token, OAEP decoding
	// here, the result an object on the token at once.
	if err := t.p11.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil)}, hk); err != nil {
		if code, _ := Code(err); code == pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED || code == pkcs11.CKR_KEY_TYPE_INCONSISTENT {
			return 0, fmt.Errorf("%w: the token refuses RSAES-OAEP with %v and the import key was made for it", ErrMechanismNotSupported, hash)
		}
		return 0, wrap("C_DecryptInit", err)
	}
	dec, err := t.p11.Decrypt(s, ct)
	if err != nil {
		return 0, decryptError(err)
	}
	if len(dec) > k {
		clear(dec)
		return 0, ErrInvalidCiphertext
	}
	em := make([]byte, k)
	copy(em[k-len(dec):], dec)
	clear(dec)
	value, err := decodeOAEP(hash.New(), em)
	clear(em)
	if err != nil {
		return 0, err
	}
	defer clear(value)
	h, err := t.p11.CreateObject(s, append(append([]*pkcs11.Attribute(nil), tmpl...), pkcs11.NewAttribute(pkcs11.CKA_VALUE, value)))
	if err != nil {
		if code, _ := Code(err); code == pkcs11.CKR_ATTRIBUTE_VALUE_INVALID || code == pkcs11.CKR_TEMPLATE_INCONSISTENT {
			return 0, ErrInvalidCiphertext
		}
		return 0, wrap("C_CreateObject", err)
	}
	return h, nil
}

// unwrapFailure is what a failed C_UnwrapKey of the client's blob means.
func unwrapFailure(err error) error {
	code, ok := Code(err)
	if !ok {
		return err
	}
	switch code {
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_WRAPPED_KEY_INVALID,
		pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_TEMPLATE_INCONSISTENT, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_KEY_SIZE_RANGE:
		return ErrInvalidCiphertext
	}
	return wrapError("C_UnwrapKey", err)
}

// oaepToKWP turns RSAES_OAEP's blob into RSA_AES_KEY_WRAP's second half:
// the material unwrapped into a session generic secret, wrapped under a
// fresh ephemeral key E, destroyed. It returns E and the wrapped material.
func (t *Token) oaepToKWP(s pkcs11.SessionHandle, hk pkcs11.ObjectHandle, hash crypto.Hash, k int, blob []byte) (pkcs11.ObjectHandle, []byte, error) {
	g, err := t.rsaUnwrap(s, hk, hash, k, blob, materialSecretTemplate(true))
	if err != nil {
		return 0, nil, err
	}
	e, err := t.p11.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, ephemeralKWPTemplate())
	if err != nil {
		return 0, nil, t.destroyOn(s, wrap("C_GenerateKey", err), g)
	}
	w, err := t.p11.WrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}, e, g)
	if err != nil {
		return 0, nil, t.destroyOn(s, wrapError("C_WrapKey", err), g, e)
	}
	if err := t.destroyOn(s, nil, g); err != nil {
		return 0, nil, t.destroyOn(s, err, e)
	}
	return e, w, nil
}

// errRSAAESRefused: the token refused CKM_RSA_AES_KEY_WRAP's parameters;
// nothing was made, and the import takes the two halves.
var errRSAAESRefused = errors.New("hsm: the token refuses CKM_RSA_AES_KEY_WRAP with these parameters")

// rsaAESKeyWrap reports whether imports wrapped with RSA_AES_KEY_WRAP and
// hash go to the token in one C_UnwrapKey: it offers CKM_RSA_AES_KEY_WRAP
// for unwrapping, and has not refused its parameters with hash.
func (t *Token) rsaAESKeyWrap(ctx context.Context, hash crypto.Hash) (bool, error) {
	ok, err := t.SupportsMechanism(ctx, pkcs11.CKM_RSA_AES_KEY_WRAP, pkcs11.CKF_UNWRAP)
	if err != nil || !ok {
		return false, err
	}
	_, refused := t.st.Load().mechs.rsaAESRefused.Load(hash)
	return !refused, nil
}

func rsaAESMech(hash crypto.Hash) []*pkcs11.Mechanism {
	m := hashMechs[hash]
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_AES_KEY_WRAP, &pkcs11.RSAAESKeyWrapParams{
		AESKeyBits: 256, // AWS's clients wrap with an AES-256 key
		OAEPParams: pkcs11.OAEPParams{HashAlg: m.digest, MGF: m.mgf, SourceType: pkcs11.CKZ_DATA_SPECIFIED},
	})}
}

// rsaAESUnwrap unwraps the whole blob with the import key hk and
// CKM_RSA_AES_KEY_WRAP: the token does both halves in one call, and the
// ephemeral AES key never is an object. A refusal of the parameters
// (which no blob causes) is remembered for the token and hash and is
// errRSAAESRefused.
func (t *Token) rsaAESUnwrap(s pkcs11.SessionHandle, hk pkcs11.ObjectHandle, hash crypto.Hash, blob []byte) unwrapFunc {
	return func(tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
		h, err := t.p11.UnwrapKey(s, rsaAESMech(hash), hk, blob, tmpl)
		if err == nil {
			return h, nil
		}
		if refusesParams(err) {
			if _, known := t.st.Load().mechs.rsaAESRefused.LoadOrStore(hash, struct{}{}); !known {
				t.log.Debug("token refuses CKM_RSA_AES_KEY_WRAP parameters; imports unwrap in two halves", "token", t.describe(), "hash", hash.String(), "error", wrap("C_UnwrapKey", err))
			}
			return 0, errRSAAESRefused
		}
		return 0, unwrapFailure(err)
	}
}

// unwrapFunc unwraps the material the client sent into an object of
// tmpl, each call anew; ImportMaterial picks how (rsaAESUnwrap,
// kwpUnwrap), importWith what into. Its errors are the import's: ErrInvalidCiphertext for a blob
// that does not unwrap, ErrIncorrectMaterial for material that is not
// what the template asks for.
type unwrapFunc func(tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)

// kwpUnwrap unwraps w (the material under E with RFC 5649). fromClient
// says w is the client's (a failure is then a bad ciphertext) rather than
// made on the token from the client's material (a failure is then the
// material's).
func (t *Token) kwpUnwrap(s pkcs11.SessionHandle, e pkcs11.ObjectHandle, w []byte, fromClient bool) unwrapFunc {
	kwp := []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}
	return func(tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
		h, err := t.p11.UnwrapKey(s, kwp, e, w, tmpl)
		if err == nil {
			return h, nil
		}
		err = unwrapFailure(err)
		if errors.Is(err, ErrInvalidCiphertext) && !fromClient {
			return 0, ErrIncorrectMaterial
		}
		return 0, err
	}
}

// importWith makes target of the material unwrap unwraps, which is
// wrappedLen bytes wrapped with RFC 5649 (what the size checks of secret
// keys read).
func (t *Token) importWith(s pkcs11.SessionHandle, unwrap unwrapFunc, wrappedLen int, target ImportTarget) (Imported, error) {
	spec := target.Spec
	if spec.Pair == Ed25519 {
		onToken, err := t.edUnwrapsOnToken(s)
		if err != nil {
			return Imported{}, err
		}
		if !onToken {
			return t.importEd25519Seed(s, unwrap, target)
		}
	}
	wrapped := target.Wrapping.Class != 0
	// A private key the token cannot parse from a blob that unwraps is
	// the material's fault, but tokens do not say which: both are the
	// blob's (ErrInvalidCiphertext), as AWS answers.
	c, err := unwrap(checkTemplate(target))
	if err != nil {
		return Imported{}, err
	}
	var out Imported
	err = func() error {
		check, pub, err := t.checkImported(s, c, spec, wrappedLen, target.CheckData)
		if err != nil {
			return err
		}
		out.Check, out.PublicKey = checkValue(check), pub
		if wrapped {
			out.Key, err = t.wrapImported(s, target.Wrapping, c)
		}
		return err
	}()
	if err := t.destroyOn(s, err, c); err != nil {
		return Imported{}, err
	}
	if wrapped || target.IDPrefix == nil {
		return out, nil
	}
	// Token objects, each made straight from the blob with its final
	// template.
	if err := t.makeImported(s, unwrap, target, out); err != nil {
		return Imported{}, err
	}
	return out, nil
}

// checkTemplate is the template of the check object of target's
// material: a session object with what the checks need, and extractable
// if it is to be wrapped under a domain key.
func checkTemplate(target ImportTarget) []*pkcs11.Attribute {
	spec := target.Spec
	checkUsage := UsageEncrypt
	switch {
	case spec.HMACBits != 0:
		checkUsage = UsageSign
	case spec.Pair == Ed25519:
		checkUsage = UsageSign
	case spec.Pair != 0 && spec.Pair.curve() != nil:
		checkUsage = UsageSign | UsageDerive
	case spec.Pair != 0:
		checkUsage = 0
	}
	wrapped := target.Wrapping.Class != 0
	tmpl := unwrapTemplateFor(spec, checkUsage, wrapped, target.Trusted)
	if spec.HMACBits != 0 { // unwrapTemplateFor gives HMAC keys sign and verify
		tmpl = unwrapTemplateFor(spec, 0, wrapped, target.Trusted)
	}
	return withUsages(tmpl, spec, checkUsage)
}

// checkValue is Imported.Check of what the token computed with the
// material (see checkImported).
func checkValue(check []byte) []byte {
	sum := sha256.Sum256(append([]byte("hsmkms imported material check v1\x00"), check...))
	return sum[:]
}

// wrapImported wraps c, the check object, under the domain key wrapping.
func (t *Token) wrapImported(s pkcs11.SessionHandle, wrapping ObjectRef, c pkcs11.ObjectHandle) ([]byte, error) {
	hw, err := t.handle(s, wrapping)
	if err != nil {
		return nil, err
	}
	w, err := t.p11.WrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}, hw, c)
	return w, wrapError("C_WrapKey", err)
}

// makeImported makes target's token objects: the key (a pair's private
// key) by create with its final template, and a pair's public key from
// imported.PublicKey. Nothing is left if it fails.
func (t *Token) makeImported(s pkcs11.SessionHandle, create unwrapFunc, target ImportTarget, imported Imported) error {
	spec := target.Spec
	ftmpl := unwrapTemplateFor(spec, target.Usage, false, false)
	ftmpl = setAttr(ftmpl, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true))
	id := append(append([]byte(nil), target.IDPrefix...), imported.Check...)
	ftmpl = append(ftmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, target.Label))
	h, err := create(ftmpl)
	if err != nil || spec.Pair == 0 {
		return err
	}
	ptmpl, err := publicKeyTemplate(imported.PublicKey)
	if err != nil {
		_ = t.p11.DestroyObject(s, h)
		return err
	}
	ptmpl = append(ptmpl, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, target.Label))
	for _, a := range publicUsages {
		ptmpl = append(ptmpl, pkcs11.NewAttribute(a.attr, a.u != 0 && target.Usage&a.u != 0))
	}
	if _, err := t.p11.CreateObject(s, ptmpl); err != nil {
		_ = t.p11.DestroyObject(s, h)
		return wrap("C_CreateObject", err)
	}
	return nil
}

// setAttr replaces (or adds) a's type in tmpl.
func setAttr(tmpl []*pkcs11.Attribute, a *pkcs11.Attribute) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, 0, len(tmpl)+1)
	for _, x := range tmpl {
		if x.Type != a.Type {
			out = append(out, x)
		}
	}
	return append(out, a)
}

// withUsages sets the usage attributes of a key of spec in tmpl to u.
func withUsages(tmpl []*pkcs11.Attribute, spec MaterialSpec, u Usage) []*pkcs11.Attribute {
	if spec.Pair != 0 {
		for _, a := range privateUsages {
			tmpl = setAttr(tmpl, pkcs11.NewAttribute(a.attr, a.u != 0 && u&a.u != 0))
		}
		return tmpl
	}
	for _, a := range usageAttrs {
		tmpl = setAttr(tmpl, pkcs11.NewAttribute(a.attr, u&a.u != 0))
	}
	return tmpl
}

// hmacKeyBytes are the sizes of HMAC key material AWS imports for each
// HMAC key spec: at least the digest size, at most the block size.
var hmacKeyBytes = map[int][2]int{224: {28, 64}, 256: {32, 64}, 384: {48, 128}, 512: {64, 128}}

// checkImported checks that c, a session object of the imported material,
// is spec's kind, and returns what its check value is computed from and,
// for a pair, its public key.
func (t *Token) checkImported(s pkcs11.SessionHandle, c pkcs11.ObjectHandle, spec MaterialSpec, wrappedLen int, data []byte) (check, pub []byte, err error) {
	switch {
	case spec.Pair == 0:
		// Tokens do not set CKA_VALUE_LEN on an unwrapped key (SoftHSM2
		// 2.6.1 says 0, and refuses it in the template), so the size is
		// read off the RFC 5649 blob: 8 bytes more than the key rounded
		// up to 8 bytes, exact for AES keys (16, 24, 32 bytes), to within
		// 8 bytes for HMAC keys.
		n := wrappedLen - 8
		if spec.HMACBits == 0 {
			if n != 32 {
				return nil, nil, fmt.Errorf("%w: not a 256-bit AES key", ErrIncorrectMaterial)
			}
			if err := t.p11.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, c); err != nil {
				return nil, nil, fmt.Errorf("%w: %w", ErrIncorrectMaterial, wrap("C_EncryptInit", err))
			}
			out, err := t.p11.Encrypt(s, data)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %w", ErrIncorrectMaterial, wrap("C_Encrypt", err))
			}
			return out, nil, nil
		}
		if r := hmacKeyBytes[spec.HMACBits]; n < r[0] || n > r[1] {
			return nil, nil, fmt.Errorf("%w: an HMAC key of about %d bytes", ErrIncorrectMaterial, n)
		}
		if err := t.p11.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(hmacByBits[spec.HMACBits], nil)}, c); err != nil {
			return nil, nil, wrap("C_SignInit", err)
		}
		out, err := t.p11.Sign(s, data)
		return out, nil, wrap("C_Sign", err)
	case spec.Pair.rsaBits() != 0:
		a, err := t.p11.GetAttributeValue(s, c, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		})
		if err != nil {
			return nil, nil, wrap("C_GetAttributeValue", err)
		}
		if ulong(a[0].Value) != pkcs11.CKK_RSA || new(big.Int).SetBytes(a[1].Value).BitLen() != spec.Pair.rsaBits() {
			return nil, nil, fmt.Errorf("%w: not an RSA key of %d bits", ErrIncorrectMaterial, spec.Pair.rsaBits())
		}
		pub, err := rsaSPKI(a[1].Value, a[2].Value)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrIncorrectMaterial, err)
		}
		return append(append([]byte(nil), data...), pub...), pub, nil
	}
	if spec.Pair == Ed25519 {
		pub, err := t.edPublicOfPrivate(s, c)
		if err != nil {
			return nil, nil, err
		}
		return append(append([]byte(nil), data...), pub...), pub, nil
	}
	cv := spec.Pair.curve()
	if cv == nil {
		return nil, nil, fmt.Errorf("%w: importing %v keys", ErrMechanismNotSupported, spec.Pair)
	}
	got, err := t.ecCurve(s, c)
	if err != nil || got != cv {
		return nil, nil, fmt.Errorf("%w: not a key on %s", ErrIncorrectMaterial, cv.name)
	}
	point, err := t.ecPublicOfPrivate(s, c, cv)
	if err != nil {
		return nil, nil, err
	}
	pub, err = cv.spki(point)
	if err != nil {
		return nil, nil, err
	}
	return append(append([]byte(nil), data...), pub...), pub, nil
}

// curveEquation is y² = x³ + a·x + b over GF(p), and G, for each curve.
func (c *curve) equation() (p, a, b, gx, gy *big.Int) {
	switch c {
	case &secp256k1:
		p, _ = new(big.Int).SetString("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F", 16)
		gx, _ = new(big.Int).SetString("79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798", 16)
		gy, _ = new(big.Int).SetString("483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8", 16)
		return p, big.NewInt(0), big.NewInt(7), gx, gy
	}
	var params *elliptic.CurveParams
	switch c {
	case &p256:
		params = elliptic.P256().Params()
	case &p384:
		params = elliptic.P384().Params()
	default:
		params = elliptic.P521().Params()
	}
	return params.P, new(big.Int).Sub(params.P, big.NewInt(3)), params.B, params.Gx, params.Gy
}

// ecPublicOfPrivate computes the public point of the EC private key c (a
// session object with CKA_DERIVE and CKA_SIGN) without reading it: ECDH
// with the generator gives x of d·G, the curve equation its two possible
// y, and a signature made with c verified on the token tells which.
func (t *Token) ecPublicOfPrivate(s pkcs11.SessionHandle, c pkcs11.ObjectHandle, cv *curve) ([]byte, error) {
	p, a, b, gx, gy := cv.equation()
	g := pointBytes(cv.size, gx, gy)
	dh, err := t.p11.DeriveKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE,
		pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, g))}, c, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, cv.size),
	})
	if err != nil {
		return nil, wrap("C_DeriveKey", err)
	}
	v, err := t.p11.GetAttributeValue(s, dh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err := t.destroyOn(s, wrap("C_GetAttributeValue", err), dh); err != nil {
		return nil, err
	}
	x := new(big.Int).SetBytes(v[0].Value)
	rhs := new(big.Int).Exp(x, big.NewInt(3), p)
	rhs.Add(rhs, new(big.Int).Mul(a, x))
	rhs.Add(rhs, b)
	rhs.Mod(rhs, p)
	y := new(big.Int).ModSqrt(rhs, p)
	if y == nil {
		return nil, fmt.Errorf("hsm: the token derived no point of %s", cv.name)
	}
	digest := make([]byte, 32)
	if _, err := rand.Read(digest); err != nil {
		return nil, err
	}
	if err := t.p11.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, c); err != nil {
		return nil, wrap("C_SignInit", err)
	}
	sig, err := t.p11.Sign(s, digest)
	if err != nil {
		return nil, wrap("C_Sign", err)
	}
	for _, cand := range []*big.Int{y, new(big.Int).Sub(p, y)} {
		point := pointBytes(cv.size, x, cand)
		spki, err := cv.spki(point)
		if err != nil {
			return nil, err
		}
		tmpl, err := publicKeyTemplate(spki)
		if err != nil {
			return nil, err
		}
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true))
		h, err := t.p11.CreateObject(s, tmpl)
		if err != nil {
			return nil, wrap("C_CreateObject", err)
		}
		err = t.p11.VerifyInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, h)
		if err == nil {
			err = t.p11.Verify(s, digest, sig)
		}
		if derr := t.destroyOn(s, nil, h); derr != nil {
			return nil, derr
		}
		if err == nil {
			return point, nil
		}
		if code, _ := Code(err); code != pkcs11.CKR_SIGNATURE_INVALID {
			return nil, wrap("C_Verify", err)
		}
	}
	return nil, fmt.Errorf("hsm: no public point of %s verifies the imported key's signature", cv.name)
}

func pointBytes(size int, x, y *big.Int) []byte {
	out := make([]byte, 1+2*size)
	out[0] = 4
	x.FillBytes(out[1 : 1+size])
	y.FillBytes(out[1+size:])
	return out
}
