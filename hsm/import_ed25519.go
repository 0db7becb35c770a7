package hsm

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"

	"github.com/miekg/pkcs11"
)

// Importing Ed25519 material (RFC 8410 PKCS#8). PKCS#11 unwraps a private
// key from PKCS#8 into a template of its type, and hsm needs the imported
// key's public key (the check value, GetPublicKey) without reading the
// private key. Two ways, picked once per token (edUnwrapsOnToken):
//
//	on the token   where the token unwraps the PKCS#8 into a CKK_EC_EDWARDS
//	               private key and tells its public key (CKA_PUBLIC_KEY_INFO,
//	               which PKCS#11 v2.40 lets a token compute): as every other
//	               spec, nothing but wrapped bytes in this process. A
//	               signature made with the key on the token and verified
//	               here against that public key checks the token's word.
//	in the process where it cannot (SoftHSM2 2.6.1: C_UnwrapKey into
//	               CKK_EC_EDWARDS fails with CKR_FUNCTION_FAILED, and
//	               CKA_PUBLIC_KEY_INFO is never computed): the PKCS#8 is
//	               unwrapped on the token into a session generic secret
//	               that is readable, read once and destroyed; the 32-byte
//	               seed is taken from it, the public key computed from the
//	               seed, the one object wanted made of the seed with
//	               C_CreateObject (a session object, sensitive, never
//	               extractable unless it is to be wrapped at once, CKA_SIGN
//	               only), and every copy cleared at once; a token object is
//	               that session object copied with C_CopyObject afterwards
//	               (importEd25519Seed). The seed and what Go derives from it
//	               exist in this process for that window: one
//	               C_GetAttributeValue, one C_CreateObject of a session
//	               object and the parsing and the public key between them
//	               (30-300 µs measured on SoftHSM2 2.6.1). No other way
//	               exposes less on such a token: its C_UnwrapKey cannot make
//	               the key at all, and no mechanism of PKCS#11 2.40 turns a
//	               secret's bytes into an EdDSA key on the token.

const (
	edUnwrapOnToken   = 1
	edUnwrapInProcess = 2
)

var errNotEd25519 = fmt.Errorf("%w: not an Ed25519 private key (RFC 8410 PKCS#8)", ErrIncorrectMaterial)

// edUnwrapsOnToken reports whether the token unwraps Ed25519 private keys
// and tells their public keys; the first import of Ed25519 material on a
// token asks it with a throwaway key (probeEdUnwrap), on s.
func (t *Token) edUnwrapsOnToken(s pkcs11.SessionHandle) (bool, error) {
	c := t.st.Load().mechs
	c.edUnwrapMu.Lock()
	defer c.edUnwrapMu.Unlock()
	if c.edUnwrap != 0 {
		return c.edUnwrap == edUnwrapOnToken, nil
	}
	why, err := t.probeEdUnwrap(s)
	if err != nil {
		return false, err
	}
	if why != "" {
		c.edUnwrap = edUnwrapInProcess
		t.log.Info("the token cannot unwrap Ed25519 private keys and tell their public keys; imported Ed25519 seeds pass through the process", "token", t.describe(), "why", why)
		return false, nil
	}
	c.edUnwrap = edUnwrapOnToken
	return true, nil
}

// probeEdUnwrap unwraps a throwaway Ed25519 key, made here and wrapped on
// the token, into a CKK_EC_EDWARDS session object, and reads the public
// key the token tells of it. It returns why the token cannot do the
// import on its own ("" if it can); an error only for what no answer of
// the token about Ed25519 explains (a device failure, a lost session).
func (t *Token) probeEdUnwrap(s pkcs11.SessionHandle) (why string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", err
	}
	spki, err := ed25519SPKI(pub)
	if err != nil {
		return "", err
	}
	g, err := t.p11.CreateObject(s, append(materialSecretTemplate(true), pkcs11.NewAttribute(pkcs11.CKA_VALUE, der)))
	if err != nil {
		return "", wrap("C_CreateObject", err)
	}
	e, err := t.p11.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, ephemeralKWPTemplate())
	if err != nil {
		return "", t.destroyOn(s, wrap("C_GenerateKey", err), g)
	}
	kwp := []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}
	w, err := t.p11.WrapKey(s, kwp, e, g)
	if err := t.destroyOn(s, wrap("C_WrapKey", err), g); err != nil {
		return "", t.destroyOn(s, err, e)
	}
	tmpl := withUsages(unwrapTemplateFor(MaterialSpec{Pair: Ed25519}, UsageSign, false, false), MaterialSpec{Pair: Ed25519}, UsageSign)
	h, err := t.p11.UnwrapKey(s, kwp, e, w, tmpl)
	if err := t.destroyOn(s, nil, e); err != nil {
		return "", t.destroyOn(s, err, h)
	}
	if err != nil {
		if code, _ := Code(err); refusesEdKey(err) {
			return "C_UnwrapKey into an Ed25519 key: " + ckrName(code), nil
		}
		return "", wrap("C_UnwrapKey", err)
	}
	a, err := t.p11.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_KEY_INFO, nil)})
	if err := t.destroyOn(s, nil, h); err != nil {
		return "", err
	}
	switch code, _ := Code(err); {
	case code == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID:
		return "no CKA_PUBLIC_KEY_INFO", nil
	case err != nil:
		return "", wrap("C_GetAttributeValue", err)
	case len(a[0].Value) == 0:
		return "CKA_PUBLIC_KEY_INFO of an unwrapped key left empty", nil
	case !bytes.Equal(a[0].Value, spki):
		return "CKA_PUBLIC_KEY_INFO of an unwrapped key is not its public key", nil
	}
	return "", nil
}

// refusesEdKey says whether err is a token's answer to a C_UnwrapKey into
// an Ed25519 key that it cannot make such a key.
func refusesEdKey(err error) bool {
	var code pkcs11.Error
	if !errors.As(err, &code) {
		return false
	}
	switch code {
	case pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_FUNCTION_NOT_SUPPORTED,
		pkcs11.CKR_TEMPLATE_INCONSISTENT, pkcs11.CKR_TEMPLATE_INCOMPLETE, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID,
		pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_WRAPPED_KEY_INVALID,
		pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_DOMAIN_PARAMS_INVALID,
		pkcs11.CKR_CURVE_NOT_SUPPORTED:
		return true
	}
	return false
}

// edPublicOfPrivate is the public key (DER SubjectPublicKeyInfo) of c, an
// Ed25519 private key the token unwrapped, as the token tells it; a
// signature made with c on the token must verify under it.
func (t *Token) edPublicOfPrivate(s pkcs11.SessionHandle, c pkcs11.ObjectHandle) ([]byte, error) {
	a, err := t.p11.GetAttributeValue(s, c, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_KEY_INFO, nil),
	})
	if err != nil {
		return nil, wrap("C_GetAttributeValue", err)
	}
	if ulong(a[0].Value) != ckkECEdwards {
		return nil, errNotEd25519
	}
	k, err := x509.ParsePKIXPublicKey(a[1].Value)
	pub, ok := k.(ed25519.PublicKey)
	if err != nil || !ok {
		return nil, fmt.Errorf("hsm: the token tells no Ed25519 public key of an imported key")
	}
	msg := make([]byte, 32)
	if _, err := rand.Read(msg); err != nil {
		return nil, err
	}
	if err := t.p11.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}, c); err != nil {
		return nil, wrap("C_SignInit", err)
	}
	sig, err := t.p11.Sign(s, msg)
	if err != nil {
		return nil, wrap("C_Sign", err)
	}
	if !ed25519.Verify(pub, msg, sig) {
		return nil, fmt.Errorf("hsm: the public key the token tells of an imported Ed25519 key does not verify its signature")
	}
	return ed25519SPKI(pub)
}

// errTokenCopy: the token would not copy a session object into a token
// object.
var errTokenCopy = errors.New("hsm: the token refuses to copy a session object into a token object")

// importEd25519Seed imports Ed25519 material in the process (see above).
// A token object is made as a session object and copied (C_CopyObject),
// so that the seed is cleared before the token stores anything, which
// takes SoftHSM2 milliseconds; only on a token that refuses the copy is it
// made directly, unwrapping the blob once more.
func (t *Token) importEd25519Seed(s pkcs11.SessionHandle, unwrap unwrapFunc, target ImportTarget) (Imported, error) {
	out, err := t.importEd25519SeedOnce(s, unwrap, target, true)
	if errors.Is(err, errTokenCopy) {
		t.log.Debug("token refuses C_CopyObject into a token object; the imported Ed25519 key is made directly", "token", t.describe(), "error", err)
		return t.importEd25519SeedOnce(s, unwrap, target, false)
	}
	return out, err
}

func (t *Token) importEd25519SeedOnce(s pkcs11.SessionHandle, unwrap unwrapFunc, target ImportTarget, viaCopy bool) (Imported, error) {
	g, err := unwrap(materialSecretTemplate(false))
	if err != nil {
		return Imported{}, err
	}
	// From here every copy of the material is cleared on every return;
	// create clears them as soon as the one object is made.
	var der, priv []byte
	forget := func() {
		clear(der)
		clear(priv)
	}
	defer forget()
	a, err := t.p11.GetAttributeValue(s, g, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err == nil {
		der = a[0].Value
	}
	if err := t.destroyOn(s, wrap("C_GetAttributeValue", err), g); err != nil {
		return Imported{}, err
	}
	seed, err := ed25519Seed(der)
	if err != nil {
		return Imported{}, err
	}
	priv = ed25519.NewKeyFromSeed(seed)
	pub, err := ed25519SPKI(priv[ed25519.SeedSize:])
	if err != nil {
		return Imported{}, err
	}
	out := Imported{Wrapped: Wrapped{PublicKey: pub}, Check: checkValue(append(append([]byte(nil), target.CheckData...), pub...))}
	oid, _ := asn1.Marshal(oidEd25519)
	tokenObject := false
	used := false
	create := func(tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
		if used {
			return 0, errors.New("hsm: an imported Ed25519 seed makes one object")
		}
		used = true
		var copyAttrs []*pkcs11.Attribute
		if tokenObject && viaCopy {
			for _, a := range tmpl {
				switch a.Type {
				case pkcs11.CKA_TOKEN, pkcs11.CKA_ID, pkcs11.CKA_LABEL:
					copyAttrs = append(copyAttrs, a) // a session object of the id would make it ambiguous
				}
			}
			tmpl = setAttr(removeAttrs(tmpl, pkcs11.CKA_ID, pkcs11.CKA_LABEL), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false))
		}
		h, err := t.p11.CreateObject(s, append(slices.Clone(tmpl),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oid), pkcs11.NewAttribute(pkcs11.CKA_VALUE, seed)))
		forget()
		if err != nil || copyAttrs == nil {
			return h, wrap("C_CreateObject", err)
		}
		c, err := t.p11.CopyObject(s, h, copyAttrs)
		if derr := t.destroyOn(s, nil, h); derr != nil {
			return 0, t.destroyOn(s, derr, c)
		}
		if err != nil {
			return 0, fmt.Errorf("%w: %w", errTokenCopy, wrap("C_CopyObject", err))
		}
		return c, nil
	}
	switch {
	case target.Wrapping.Class != 0:
		c, err := create(checkTemplate(target))
		if err != nil {
			return Imported{}, err
		}
		out.Key, err = t.wrapImported(s, target.Wrapping, c)
		if err := t.destroyOn(s, err, c); err != nil {
			return Imported{}, err
		}
	case target.IDPrefix != nil:
		tokenObject = true
		if err := t.makeImported(s, create, target, out); err != nil {
			return Imported{}, err
		}
	}
	return out, nil
}

// removeAttrs is tmpl without the attributes of types.
func removeAttrs(tmpl []*pkcs11.Attribute, types ...uint) []*pkcs11.Attribute {
	return slices.DeleteFunc(slices.Clone(tmpl), func(a *pkcs11.Attribute) bool { return slices.Contains(types, a.Type) })
}
