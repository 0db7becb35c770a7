package hsm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// Key material held wrapped: a wrapping key (AES-256, on the token, never
// extractable, usable only to wrap and unwrap) and key material generated
// on the token as session objects, wrapped under it with
// CKM_AES_KEY_WRAP_PAD (RFC 5649), and unwrapped again into session
// objects to be used. What leaves the token is the wrapped bytes and, for
// a key pair, its public key; the material itself never does, in any form
// but wrapped.
//
// How each object is made:
//
//	wrapping key      token object, CKA_PRIVATE, CKA_SENSITIVE, not
//	                  CKA_EXTRACTABLE; CKA_WRAP and CKA_UNWRAP only; and
//	                  CKA_UNWRAP_TEMPLATE {CKA_SENSITIVE: true}, which the
//	                  token applies to every unwrap with it, by anyone: no
//	                  wrapped blob can be unwrapped into a key whose value is
//	                  readable. (A token refuses to change the template
//	                  afterwards, or to copy the key with another.)
//	generated         session objects on a pooled session, CKA_SENSITIVE,
//	                  CKA_EXTRACTABLE (so that they can be wrapped) with
//	                  CKA_WRAP_WITH_TRUSTED when the wrapping key is
//	                  CKA_TRUSTED; wrapped, then destroyed in the same call.
//	                  If they cannot be destroyed the session is closed,
//	                  which destroys them.
//	unwrapped to use  session objects on a keeper session (keeperSet),
//	                  CKA_SENSITIVE, not CKA_EXTRACTABLE, with only the
//	                  usages asked for.
//	unwrapped to      as generated: a session object made, wrapped under
//	rewrap            the new wrapping key and destroyed in one call.
//
// Session objects are visible to the sessions of this process only, and
// are destroyed with the session that made them (PKCS#11 v2.40 §4.4; so
// SoftHSM2 2.6.1 does, and gives handles that are never reused).

var errNoWrappedKey = errors.New("hsm: no wrapped key to unwrap")

// ckmAESKeyWrapPad is RFC 5649 AES key wrap with padding.
const ckmAESKeyWrapPad = pkcs11.CKM_AES_KEY_WRAP_PAD

// MaterialSpec is a kind of key material hsm can generate wrapped, unwrap
// and rewrap: an AES-256 key, an HMAC key (a generic secret of HMACBits),
// or a key pair (Pair).
type MaterialSpec struct {
	Pair     KeyPairSpec
	HMACBits int
}

func (m MaterialSpec) String() string {
	switch {
	case m.Pair != 0:
		return m.Pair.String()
	case m.HMACBits != 0:
		return fmt.Sprintf("HMAC%d", m.HMACBits)
	}
	return "AES256"
}

func (m MaterialSpec) check() error {
	switch {
	case m.Pair != 0 && m.HMACBits != 0:
		return errors.New("hsm: a material spec is a key pair or a secret key, not both")
	case m.Pair != 0:
		if _, _, _, err := pairTemplates(m.Pair); err != nil {
			return err
		}
	case m.HMACBits != 0:
		if _, ok := hmacByBits[m.HMACBits]; !ok {
			return fmt.Errorf("hsm: HMAC keys are 224, 256, 384 or 512 bits, not %d", m.HMACBits)
		}
	}
	return nil
}

// secretKeyType is the CKA_KEY_TYPE and CKA_VALUE_LEN of a secret spec.
func (m MaterialSpec) secretKeyType() (keyType uint, bytes int) {
	if m.HMACBits != 0 {
		return pkcs11.CKK_GENERIC_SECRET, m.HMACBits / 8
	}
	return pkcs11.CKK_AES, 32
}

// privateKeyType is the CKA_KEY_TYPE of a pair spec's private key.
func (m MaterialSpec) privateKeyType() uint {
	switch {
	case m.Pair.rsaBits() != 0:
		return pkcs11.CKK_RSA
	case m.Pair == Ed25519:
		return ckkECEdwards
	}
	return pkcs11.CKK_EC
}

// Wrapped is key material as it leaves the token: the key (a pair's
// private key) wrapped under a wrapping key, and a pair's public key as DER
// SubjectPublicKeyInfo.
type Wrapped struct {
	Key       []byte
	PublicKey []byte
}

// RequireWrapping fails with ErrMechanismNotSupported unless the token can
// make wrapping keys and wrap and unwrap with CKM_AES_KEY_WRAP_PAD.
func (t *Token) RequireWrapping(ctx context.Context) error {
	if err := t.requireMechanism(ctx, pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE, "AES key generation"); err != nil {
		return err
	}
	return t.requireMechanism(ctx, ckmAESKeyWrapPad, pkcs11.CKF_WRAP|pkcs11.CKF_UNWRAP, "AES key wrap with padding (CKM_AES_KEY_WRAP_PAD)")
}

// attrTemplate is an attribute whose value is a template (CKA_WRAP_TEMPLATE,
// CKA_UNWRAP_TEMPLATE): an array of CK_ATTRIBUTE whose values the token
// reads through pointers. miekg/pkcs11 copies an attribute's bytes as they
// are, so the inner values are pinned Go memory the array points to; the
// caller unpins them once the call that uses the attribute has returned.
func attrTemplate(typ uint, inner []*pkcs11.Attribute) (*pkcs11.Attribute, func()) {
	type ckAttribute struct { // CK_ATTRIBUTE on LP64 platforms
		typ   uint
		value unsafe.Pointer
		len   uint
	}
	var pin runtime.Pinner
	size := int(unsafe.Sizeof(ckAttribute{}))
	buf := make([]byte, 0, size*len(inner))
	for _, a := range inner {
		v := append([]byte(nil), a.Value...)
		c := ckAttribute{typ: a.Type, len: uint(len(v))}
		if len(v) > 0 {
			pin.Pin(&v[0])
			c.value = unsafe.Pointer(&v[0])
		}
		buf = append(buf, unsafe.Slice((*byte)(unsafe.Pointer(&c)), size)...)
	}
	return pkcs11.NewAttribute(typ, buf), pin.Unpin
}

// unwrapTemplate is what every unwrap with a wrapping key must ask for.
func unwrapTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true)}
}

// GenerateWrappingKey makes a wrapping key on the token with CKA_ID id and
// CKA_LABEL label (see the table above). A token without the mechanisms
// fails with ErrMechanismNotSupported before anything is made.
func (t *Token) GenerateWrappingKey(ctx context.Context, id []byte, label string) error {
	if len(id) == 0 {
		return fmt.Errorf("hsm: a key needs a CKA_ID")
	}
	if err := t.RequireWrapping(ctx); err != nil {
		return err
	}
	tmplAttr, unpin := attrTemplate(pkcs11.CKA_UNWRAP_TEMPLATE, unwrapTemplate())
	defer unpin()
	tmpl := append(secretTemplate(id, label),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		tmplAttr,
	)
	tmpl = append(tmpl, (UsageWrap | UsageUnwrap).attributes()...)
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}
	var h pkcs11.ObjectHandle
	err := t.do(ctx, makeTokenObject, func(s pkcs11.SessionHandle) error {
		var err error
		h, err = t.p11.GenerateKey(s, mech, tmpl)
		return wrap("C_GenerateKey", err)
	})
	if err != nil {
		return err
	}
	t.handles.Store(SecretKeyByID(id).cacheKey(), h)
	return nil
}

// WrappingKeyInfo is what CheckWrappingKey found.
type WrappingKeyInfo struct {
	// Trusted is CKA_TRUSTED: material wrapped under the key may then be
	// CKA_WRAP_WITH_TRUSTED. Only a token's security officer can set it.
	Trusted bool
}

// CheckWrappingKey reads the wrapping key ref and refuses one that is not
// what GenerateWrappingKey makes: readable, extractable, or usable for
// anything but wrapping.
func (t *Token) CheckWrappingKey(ctx context.Context, ref ObjectRef) (WrappingKeyInfo, error) {
	attrs, err := t.Attributes(ctx, ref, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
		pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_TRUSTED)
	if err != nil {
		return WrappingKeyInfo{}, err
	}
	b := func(i int) bool { return len(attrs[i].Value) == 1 && attrs[i].Value[0] != 0 }
	switch {
	case ulong(attrs[0].Value) != pkcs11.CKK_AES:
		return WrappingKeyInfo{}, fmt.Errorf("hsm: wrapping key %s is not an AES key", ref)
	case !b(1) || b(2):
		return WrappingKeyInfo{}, fmt.Errorf("hsm: wrapping key %s is readable or extractable", ref)
	case !b(3) || !b(4) || b(5) || b(6):
		return WrappingKeyInfo{}, fmt.Errorf("hsm: wrapping key %s has other usages than wrap and unwrap", ref)
	}
	return WrappingKeyInfo{Trusted: b(7)}, nil
}

// GenerateWrapped generates key material of spec on the token with the
// usages usage and returns it wrapped under wrapping, which must be a
// wrapping key (trusted: its CKA_TRUSTED, from CheckWrappingKey). Nothing
// is left on the token. ErrNotWrappable if the token cannot wrap such a
// key; ErrMechanismNotSupported if it cannot make one.
func (t *Token) GenerateWrapped(ctx context.Context, wrapping ObjectRef, spec MaterialSpec, usage Usage, trusted bool) (Wrapped, error) {
	if err := spec.check(); err != nil {
		return Wrapped{}, err
	}
	if err := t.requireSpec(ctx, spec); err != nil {
		return Wrapped{}, err
	}
	wmech := []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}
	var out Wrapped
	err := t.withObject(ctx, wrapping, func(s pkcs11.SessionHandle, hw pkcs11.ObjectHandle) error {
		made, err := t.generateExtractable(s, spec, usage, trusted)
		if err != nil {
			return err
		}
		err = func() error {
			key, err := t.p11.WrapKey(s, wmech, hw, made.key)
			if err != nil {
				return wrapError("C_WrapKey", err)
			}
			out.Key = key
			if spec.Pair != 0 {
				out.PublicKey, err = t.publicKeyDER(s, made.pub)
			}
			return err
		}()
		return t.destroyOn(s, err, made.key, made.pub)
	})
	if err != nil {
		return Wrapped{}, err
	}
	return out, nil
}

// requireSpec checks the mechanisms generating spec needs.
func (t *Token) requireSpec(ctx context.Context, spec MaterialSpec) error {
	switch {
	case spec.Pair != 0:
		mech, _, _, _ := pairTemplates(spec.Pair)
		return t.requireMechanism(ctx, mech, pkcs11.CKF_GENERATE_KEY_PAIR, spec.Pair.String()+" key generation")
	case spec.HMACBits != 0:
		if err := t.requireMechanism(ctx, pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKF_GENERATE, "HMAC key generation"); err != nil {
			return err
		}
		return t.requireMechanism(ctx, hmacByBits[spec.HMACBits], pkcs11.CKF_SIGN, fmt.Sprintf("HMAC with a %d-bit key", spec.HMACBits))
	}
	return t.requireMechanism(ctx, pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE, "AES key generation")
}

// made is what generateExtractable made on a session: the key to wrap and,
// for a pair, its public key (0 otherwise).
type made struct{ key, pub pkcs11.ObjectHandle }

// generateExtractable makes spec's material as session objects on s that
// can be wrapped: sensitive, extractable, and CKA_WRAP_WITH_TRUSTED if
// trusted.
func (t *Token) generateExtractable(s pkcs11.SessionHandle, spec MaterialSpec, usage Usage, trusted bool) (made, error) {
	session := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
	}
	secret := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, trusted),
	}
	if spec.Pair == 0 {
		keyType, n := spec.secretKeyType()
		mech := uint(pkcs11.CKM_AES_KEY_GEN)
		if spec.HMACBits != 0 {
			mech, usage = pkcs11.CKM_GENERIC_SECRET_KEY_GEN, UsageSign|UsageVerify
		}
		tmpl := append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, n),
		}, append(append(session, secret...), usage.attributes()...)...)
		h, err := t.p11.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, tmpl)
		return made{key: h}, wrap("C_GenerateKey", err)
	}
	mech, pub, priv, err := pairTemplates(spec.Pair)
	if err != nil {
		return made{}, err
	}
	pub = append(pub, session...)
	priv = append(append(priv, session...), secret...)
	for _, a := range privateUsages {
		priv = append(priv, pkcs11.NewAttribute(a.attr, a.u != 0 && usage&a.u != 0))
	}
	for _, a := range publicUsages {
		pub = append(pub, pkcs11.NewAttribute(a.attr, a.u != 0 && usage&a.u != 0))
	}
	hpub, hpriv, err := t.p11.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
	return made{key: hpriv, pub: hpub}, wrap("C_GenerateKeyPair", err)
}

// destroyOn destroys objects (0s skipped) made on the pooled session s and
// returns err. An object that cannot be destroyed taints s, so that the
// pool closes it, which destroys the object.
func (t *Token) destroyOn(s pkcs11.SessionHandle, err error, objects ...pkcs11.ObjectHandle) error {
	var failed error
	for _, h := range objects {
		if h == 0 {
			continue
		}
		if derr := t.p11.DestroyObject(s, h); derr != nil {
			failed = derr
		}
	}
	if failed != nil {
		t.log.Warn("could not destroy a session object; closing its session", "error", wrap("C_DestroyObject", failed))
		return &taintedSession{err: err}
	}
	return err
}

// wrapError is wrap for C_WrapKey and C_UnwrapKey, which also say
// CKR_KEY_NOT_WRAPPABLE and CKR_KEY_UNEXTRACTABLE for keys that cannot be.
func wrapError(op string, err error) error {
	if code, ok := Code(err); ok && (code == pkcs11.CKR_KEY_NOT_WRAPPABLE || code == pkcs11.CKR_KEY_UNEXTRACTABLE) {
		return &Error{Op: op, Code: pkcs11.Error(code), class: ErrNotWrappable}
	}
	return wrap(op, err)
}

// unwrapTemplateFor is the template of material of spec unwrapped with
// usage: the unwrap template's attributes, a session object, and
// extractable (with CKA_WRAP_WITH_TRUSTED set to trusted) only to be
// wrapped again at once.
func unwrapTemplateFor(spec MaterialSpec, usage Usage, extractable, trusted bool) []*pkcs11.Attribute {
	tmpl := append(unwrapTemplate(),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
	)
	if extractable {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, trusted))
	}
	if spec.Pair == 0 {
		keyType, _ := spec.secretKeyType()
		if spec.HMACBits != 0 {
			usage = UsageSign | UsageVerify
		}
		tmpl = append(tmpl,
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType))
		return append(tmpl, usage.attributes()...)
	}
	tmpl = append(tmpl,
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, spec.privateKeyType()))
	for _, a := range privateUsages {
		tmpl = append(tmpl, pkcs11.NewAttribute(a.attr, a.u != 0 && usage&a.u != 0))
	}
	return tmpl
}

// Unwrap unwraps key (from GenerateWrapped, spec and usage as then) under
// wrapping into a session object to use: sensitive, not extractable, with
// only usage. The object lives on a keeper session until DestroyObject, or
// until the token loses it (ErrSessionObjectLost on use). Whatever is wrong
// with key (another wrapping key's, altered, not spec's) fails the unwrap.
func (t *Token) Unwrap(ctx context.Context, wrapping ObjectRef, key []byte, spec MaterialSpec, usage Usage) (ObjectRef, error) {
	if err := spec.check(); err != nil {
		return ObjectRef{}, err
	}
	if len(key) == 0 {
		return ObjectRef{}, errNoWrappedKey // miekg/pkcs11 would index it
	}
	class := uint(pkcs11.CKO_SECRET_KEY)
	if spec.Pair != 0 {
		class = pkcs11.CKO_PRIVATE_KEY
	}
	tmpl := unwrapTemplateFor(spec, usage, false, false)
	wmech := []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}
	return t.onKeeper(ctx, class, wrapping, func(s pkcs11.SessionHandle, hw pkcs11.ObjectHandle) (pkcs11.ObjectHandle, error) {
		h, err := t.p11.UnwrapKey(s, wmech, hw, key, tmpl)
		return h, wrapError("C_UnwrapKey", err)
	})
}

// SessionCopy copies the token object ref into a session object, which
// operations use as they would the token object: tokens that pay for every
// use of a persistent object (SoftHSM2 locks and re-reads its file) do not
// pay for the copy's. It lives as Unwrap's objects do; sensitivity,
// non-extractability and templates are the original's.
func (t *Token) SessionCopy(ctx context.Context, ref ObjectRef) (ObjectRef, error) {
	if ref.handle != 0 {
		return ObjectRef{}, fmt.Errorf("hsm: %s is a session object already", ref)
	}
	return t.onKeeper(ctx, ref.Class, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) (pkcs11.ObjectHandle, error) {
		c, err := t.p11.CopyObject(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)})
		return c, wrap("C_CopyObject", err)
	})
}

// Rewrap unwraps key (spec and usage as GenerateWrapped had them) under
// from and returns it wrapped under to (trusted: to's CKA_TRUSTED),
// without anything left on the token: the unwrapped key is a session
// object on a pooled session, destroyed in the same call.
func (t *Token) Rewrap(ctx context.Context, from, to ObjectRef, key []byte, spec MaterialSpec, usage Usage, trusted bool) ([]byte, error) {
	if err := spec.check(); err != nil {
		return nil, err
	}
	if len(key) == 0 {
		return nil, errNoWrappedKey
	}
	tmpl := unwrapTemplateFor(spec, usage, true, trusted)
	wmech := []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}
	var out []byte
	err := t.withObject(ctx, from, func(s pkcs11.SessionHandle, hf pkcs11.ObjectHandle) error {
		ht, err := t.handle(s, to)
		if err != nil {
			return err
		}
		h, err := t.p11.UnwrapKey(s, wmech, hf, key, tmpl)
		if err != nil {
			return wrapError("C_UnwrapKey", err)
		}
		w, err := t.p11.WrapKey(s, wmech, ht, h)
		if code, ok := Code(err); ok && code == pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID {
			t.handles.Delete(to.cacheKey())
		}
		out = w
		return t.destroyOn(s, wrapError("C_WrapKey", err), h)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CreatePublicKey makes a session object of the public key spki (DER
// SubjectPublicKeyInfo: RSA, EC on a curve hsm knows, or Ed25519) with the
// usages usage asks of a public key (encrypt, verify), for operations the
// token does with a public key. It lives as Unwrap's objects do.
func (t *Token) CreatePublicKey(ctx context.Context, spki []byte, usage Usage) (ObjectRef, error) {
	tmpl, err := publicKeyTemplate(spki)
	if err != nil {
		return ObjectRef{}, err
	}
	tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true))
	for _, a := range publicUsages {
		tmpl = append(tmpl, pkcs11.NewAttribute(a.attr, a.u != 0 && usage&a.u != 0))
	}
	return t.onKeeper(ctx, pkcs11.CKO_PUBLIC_KEY, ObjectRef{}, func(s pkcs11.SessionHandle, _ pkcs11.ObjectHandle) (pkcs11.ObjectHandle, error) {
		h, err := t.p11.CreateObject(s, tmpl)
		return h, wrap("C_CreateObject", err)
	})
}

// onKeeper runs fn, which makes one session object, on a keeper session
// and returns a reference to the object; fn gets the handle of the object
// with (which may be a session object too), or 0 if with is the zero
// ObjectRef. The generation the reference carries is the keeper set's
// that fn ran on, read with it; if that set was replaced meanwhile the
// object is gone or going, and the result is ErrSessionObjectLost, never a
// reference to it. A keeper the token calls broken takes every session
// object with it: the set is replaced.
func (t *Token) onKeeper(ctx context.Context, class uint, with ObjectRef, fn func(s pkcs11.SessionHandle, with pkcs11.ObjectHandle) (pkcs11.ObjectHandle, error)) (ObjectRef, error) {
	st, err := t.state()
	if err != nil {
		return ObjectRef{}, err
	}
	for attempt := 0; ; attempt++ {
		set := st.keepers.Load()
		s, err := set.pool.get(ctx)
		if err != nil {
			if IsDeviceFailure(err) {
				t.markUnhealthy(err)
			}
			return ObjectRef{}, err
		}
		var h pkcs11.ObjectHandle
		var hw pkcs11.ObjectHandle
		if with.Class != 0 {
			hw, err = t.handle(s, with)
		}
		if err == nil {
			h, err = fn(s, hw)
		}
		set.pool.put(s, false)
		code, fromToken := Code(err)
		switch {
		case err == nil && set.pool.closed.Load():
			return ObjectRef{}, fmt.Errorf("%w: its keeper session was closed", ErrSessionObjectLost)
		case err == nil:
			return ObjectRef{Class: class, handle: h, gen: set.gen}, nil
		case IsDeviceFailure(err):
			t.markUnhealthy(err)
		case fromToken && isSessionError(code):
			t.loginMu.Lock()
			if st.keepers.Load() == set {
				t.log.Warn("a keeper session broke; dropping every session object", "token", t.describe(), "error", err)
				old := st.keepers.Swap(t.newKeeperSet(st.slot, st.size))
				old.pool.close()
			}
			t.loginMu.Unlock()
			if attempt == 0 {
				continue
			}
		case fromToken && isHandleError(code) && with.handle != 0:
			return ObjectRef{}, fmt.Errorf("%w: %s: %w", ErrSessionObjectLost, with, err)
		case fromToken && isHandleError(code) && attempt == 0:
			t.handles.Delete(with.cacheKey()) // a token object's cached handle went stale
			continue
		}
		return ObjectRef{}, err
	}
}

// sessionHandle is the handle of the session object ref names, if it is
// still of the current keeper set.
func (t *Token) sessionHandle(ref ObjectRef) (pkcs11.ObjectHandle, error) {
	if st := t.st.Load(); st.keepers.Load().gen != ref.gen {
		return 0, fmt.Errorf("%w: %s", ErrSessionObjectLost, ref)
	}
	return ref.handle, nil
}

// destroySessionObject destroys a session object from Unwrap or
// CreatePublicKey, on any session (session objects are the process's), and
// forgets what was cached about it.
func (t *Token) destroySessionObject(ctx context.Context, ref ObjectRef) error {
	defer func() {
		t.curves.Delete(ref.cacheKey())
		t.moduli.Delete(ref.cacheKey())
	}()
	err := t.do(ctx, hotPath, func(s pkcs11.SessionHandle) error {
		h, err := t.sessionHandle(ref)
		if err != nil {
			return err
		}
		return wrap("C_DestroyObject", t.p11.DestroyObject(s, h))
	})
	if code, ok := Code(err); errors.Is(err, ErrSessionObjectLost) || (ok && isHandleError(code)) {
		return nil // gone already
	}
	return err
}

// WrapExisting wraps the token object key (a secret key, or a pair's
// private key, whose public key is public) under wrapping, for moving
// material made as token objects into the hierarchy. Only an extractable
// object can be wrapped: the token refuses any other (ErrNotWrappable,
// CKR_KEY_UNEXTRACTABLE), and CKA_EXTRACTABLE can never be set true again
// once false.
func (t *Token) WrapExisting(ctx context.Context, wrapping, key, public ObjectRef) (Wrapped, error) {
	wmech := []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}
	var out Wrapped
	err := t.withObject(ctx, wrapping, func(s pkcs11.SessionHandle, hw pkcs11.ObjectHandle) error {
		hk, err := t.handle(s, key)
		if err != nil {
			return err
		}
		w, err := t.p11.WrapKey(s, wmech, hw, hk)
		if err != nil {
			return wrapError("C_WrapKey", err)
		}
		out.Key = w
		if public.Class != 0 {
			hp, err := t.handle(s, public)
			if err != nil {
				return err
			}
			out.PublicKey, err = t.publicKeyDER(s, hp)
			return err
		}
		return nil
	})
	return out, err
}
