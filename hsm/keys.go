package hsm

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"github.com/miekg/pkcs11"
)

// ObjectRef names a token object by CKA_ID or, if ID is empty, CKA_LABEL,
// within an object class. It is how callers refer to keys: handles are the
// token's business and are cached here.
//
// An ObjectRef from Unwrap or CreatePublicKey names a session object
// instead, by its handle and the generation of the keeper sessions that
// hold it (see keeperSet). It is valid until DestroyObject, or until the
// token loses its session objects (a device failure, a new login, a
// broken keeper session), after which every use fails with
// ErrSessionObjectLost and nothing is ever done with the stale handle.
type ObjectRef struct {
	Class uint // CKO_SECRET_KEY, CKO_PRIVATE_KEY, …
	ID    []byte
	Label string

	handle pkcs11.ObjectHandle // a session object's; 0 for a token object
	gen    uint64
}

// IsSessionObject reports whether r names a session object this Token
// made (Unwrap, CreatePublicKey) rather than a token object.
func (r ObjectRef) IsSessionObject() bool { return r.handle != 0 }

// Same reports whether r and o name the same object.
func (r ObjectRef) Same(o ObjectRef) bool { return r.cacheKey() == o.cacheKey() && r.Class == o.Class }

// SecretKeyByID refers to the secret key with CKA_ID id.
func SecretKeyByID(id []byte) ObjectRef { return ObjectRef{Class: pkcs11.CKO_SECRET_KEY, ID: id} }

// PrivateKeyByID refers to the private key with CKA_ID id.
func PrivateKeyByID(id []byte) ObjectRef { return ObjectRef{Class: pkcs11.CKO_PRIVATE_KEY, ID: id} }

// PublicKeyByID refers to the public key with CKA_ID id.
func PublicKeyByID(id []byte) ObjectRef { return ObjectRef{Class: pkcs11.CKO_PUBLIC_KEY, ID: id} }

// SecretKeyByLabel refers to the secret key with CKA_LABEL label.
func SecretKeyByLabel(label string) ObjectRef {
	return ObjectRef{Class: pkcs11.CKO_SECRET_KEY, Label: label}
}

func (r ObjectRef) cacheKey() string {
	if r.handle != 0 {
		return "s/" + strconv.FormatUint(r.gen, 16) + "/" + strconv.FormatUint(uint64(r.handle), 16)
	}
	if len(r.ID) > 0 {
		return strconv.FormatUint(uint64(r.Class), 16) + "/i/" + string(r.ID)
	}
	return strconv.FormatUint(uint64(r.Class), 16) + "/l/" + r.Label
}

func (r ObjectRef) String() string {
	if r.handle != 0 {
		return fmt.Sprintf("session object %d", r.handle)
	}
	if len(r.ID) > 0 {
		return "id " + hex.EncodeToString(r.ID)
	}
	return fmt.Sprintf("label %q", r.Label)
}

// template matches token objects only: the session copies made for speed
// (see workingHandle) must never be mistaken for the key itself.
func (r ObjectRef) template() []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, r.Class), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}
	if len(r.ID) > 0 {
		return append(t, pkcs11.NewAttribute(pkcs11.CKA_ID, r.ID))
	}
	return append(t, pkcs11.NewAttribute(pkcs11.CKA_LABEL, r.Label))
}

// Usage is the set of operations a generated key may be used for. Every
// usage not asked for is set false on the token.
type Usage uint

const (
	UsageEncrypt Usage = 1 << iota
	UsageDecrypt
	UsageWrap
	UsageUnwrap
	UsageSign
	UsageVerify
	UsageDerive
)

var usageAttrs = []struct {
	u    Usage
	attr uint
}{
	{UsageEncrypt, pkcs11.CKA_ENCRYPT}, {UsageDecrypt, pkcs11.CKA_DECRYPT},
	{UsageWrap, pkcs11.CKA_WRAP}, {UsageUnwrap, pkcs11.CKA_UNWRAP},
	{UsageSign, pkcs11.CKA_SIGN}, {UsageVerify, pkcs11.CKA_VERIFY},
	{UsageDerive, pkcs11.CKA_DERIVE},
}

func (u Usage) attributes() []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, 0, len(usageAttrs))
	for _, a := range usageAttrs {
		out = append(out, pkcs11.NewAttribute(a.attr, u&a.u != 0))
	}
	return out
}

// secretTemplate is the part of every secret key template that keeps the key
// on the token: a persistent, private object whose value can never be read.
func secretTemplate(id []byte, label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// GenerateAESKey makes a 256-bit AES key on the token with CKA_ID id and
// CKA_LABEL label, usable only for usage. The caller keeps ids unique: a
// later lookup that finds two objects fails with ErrObjectAmbiguous.
func (t *Token) GenerateAESKey(ctx context.Context, id []byte, label string, usage Usage) (ObjectRef, error) {
	return t.GenerateAESKeyOfSize(ctx, id, label, 32, usage)
}

// GenerateAESKeyOfSize is GenerateAESKey for a key of size bytes (16, 24
// or 32).
func (t *Token) GenerateAESKeyOfSize(ctx context.Context, id []byte, label string, size int, usage Usage) (ObjectRef, error) {
	if len(id) == 0 {
		return ObjectRef{}, fmt.Errorf("hsm: a key needs a CKA_ID")
	}
	if size != 16 && size != 24 && size != 32 {
		return ObjectRef{}, fmt.Errorf("hsm: AES keys are 16, 24 or 32 bytes, not %d", size)
	}
	tmpl := append(secretTemplate(id, label),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, size),
	)
	tmpl = append(tmpl, usage.attributes()...)
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}
	ref := SecretKeyByID(id)
	var h pkcs11.ObjectHandle
	err := t.do(ctx, makeTokenObject, func(s pkcs11.SessionHandle) error {
		var err error
		h, err = t.p11.GenerateKey(s, mech, tmpl)
		return wrap("C_GenerateKey", err)
	})
	if err != nil {
		return ObjectRef{}, err
	}
	t.handles.Store(ref.cacheKey(), h)
	return ref, nil
}

// handle resolves ref on session s, from the cache when possible.
func (t *Token) handle(s pkcs11.SessionHandle, ref ObjectRef) (pkcs11.ObjectHandle, error) {
	if ref.handle != 0 {
		return t.sessionHandle(ref)
	}
	key := ref.cacheKey()
	if h, ok := t.handles.Load(key); ok {
		return h.(pkcs11.ObjectHandle), nil
	}
	hs, err := t.find(s, ref.template(), 2)
	if err != nil {
		return 0, err
	}
	switch len(hs) {
	case 0:
		return 0, fmt.Errorf("%w: %s", ErrObjectNotFound, ref)
	case 1:
		t.handles.Store(key, hs[0])
		return hs[0], nil
	default:
		return 0, fmt.Errorf("%w: %s", ErrObjectAmbiguous, ref)
	}
}

// find returns up to max handles matching tmpl (all if max <= 0).
func (t *Token) find(s pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) (out []pkcs11.ObjectHandle, err error) {
	if err := t.p11.FindObjectsInit(s, tmpl); err != nil {
		return nil, wrap("C_FindObjectsInit", err)
	}
	defer func() {
		if ferr := t.p11.FindObjectsFinal(s); ferr != nil && err == nil {
			err = wrap("C_FindObjectsFinal", ferr)
		}
	}()
	for max <= 0 || len(out) < max {
		batch := 64
		if max > 0 {
			batch = max - len(out)
		}
		hs, _, err := t.p11.FindObjects(s, batch)
		if err != nil {
			return nil, wrap("C_FindObjects", err)
		}
		if len(hs) == 0 {
			break
		}
		out = append(out, hs...)
	}
	return out, nil
}

// withObject runs fn with ref's handle. If the token says the handle is gone
// (the object was destroyed, or the token reloaded), the cache entry is
// dropped and the lookup done once more.
func (t *Token) withObject(ctx context.Context, ref ObjectRef, fn func(pkcs11.SessionHandle, pkcs11.ObjectHandle) error) error {
	return t.withHandle(ctx, ref, t.handle, fn)
}

// withKey is withObject for cryptographic operations: fn gets the handle
// of ref's working copy (see workingHandle).
func (t *Token) withKey(ctx context.Context, ref ObjectRef, fn func(pkcs11.SessionHandle, pkcs11.ObjectHandle) error) error {
	return t.withHandle(ctx, ref, t.workingHandle, fn)
}

func (t *Token) withHandle(ctx context.Context, ref ObjectRef, lookup func(pkcs11.SessionHandle, ObjectRef) (pkcs11.ObjectHandle, error),
	fn func(pkcs11.SessionHandle, pkcs11.ObjectHandle) error) error {
	for attempt := 0; ; attempt++ {
		err := t.do(ctx, hotPath, func(s pkcs11.SessionHandle) error {
			h, err := lookup(s, ref)
			if err != nil {
				return err
			}
			return fn(s, h)
		})
		if code, ok := Code(err); ok && isHandleError(code) && ref.handle != 0 {
			// A session object the token no longer has: never look
			// anything up in its place.
			return fmt.Errorf("%w: %s: %w", ErrSessionObjectLost, ref, err)
		}
		if code, ok := Code(err); ok && isHandleError(code) && attempt == 0 {
			t.handles.Delete(ref.cacheKey())
			t.copies.Delete(ref.cacheKey())
			continue
		}
		return err
	}
}

// workingHandle returns the handle crypto operations use for ref: a session
// object copied from the token object inside the token (C_CopyObject with
// CKA_TOKEN false; sensitivity and non-extractability are inherited and
// cannot be weakened by the copy). Some tokens pay for every use of a
// persistent object: SoftHSM2 locks and re-reads the object's file, which
// doubled the cost of each Encrypt under load. The copy lives while the
// session that made it does; when that session is replaced, uses of the
// copy fail with CKR_OBJECT_HANDLE_INVALID and withKey makes a new one. A
// token that refuses the copy is used directly.
func (t *Token) workingHandle(s pkcs11.SessionHandle, ref ObjectRef) (pkcs11.ObjectHandle, error) {
	if ref.handle != 0 {
		return t.sessionHandle(ref) // a session object already
	}
	key := ref.cacheKey()
	if h, ok := t.copies.Load(key); ok {
		return h.(pkcs11.ObjectHandle), nil
	}
	h, err := t.handle(s, ref)
	if err != nil {
		return 0, err
	}
	c, err := t.p11.CopyObject(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)})
	if err != nil {
		if !refusesCopy(err) {
			return 0, wrap("C_CopyObject", err)
		}
		t.log.Debug("token refuses session copies of keys; using the token object", "object", ref.String(), "error", err)
		c = h
	}
	if prev, loaded := t.copies.LoadOrStore(key, c); loaded {
		if c != h {
			t.p11.DestroyObject(s, c) // lost a race to another goroutine's copy
		}
		return prev.(pkcs11.ObjectHandle), nil
	}
	return c, nil
}

// ObjectInfo describes one token object without its value.
type ObjectInfo struct {
	Handle  pkcs11.ObjectHandle
	Class   uint
	KeyType uint
	ID      []byte
	Label   string
}

// FindObject returns the single object ref names: ErrObjectNotFound when
// there is none, ErrObjectAmbiguous when there are several.
func (t *Token) FindObject(ctx context.Context, ref ObjectRef) (ObjectInfo, error) {
	var info ObjectInfo
	err := t.withObject(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		var err error
		info, err = t.describeObject(s, h)
		return err
	})
	return info, err
}

// ListObjects describes every object of class (0: every class) visible to
// the current login.
func (t *Token) ListObjects(ctx context.Context, class uint) ([]ObjectInfo, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}
	if class != 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class))
	}
	var out []ObjectInfo
	err := t.do(ctx, hotPath, func(s pkcs11.SessionHandle) error {
		out = out[:0]
		hs, err := t.find(s, tmpl, 0)
		if err != nil {
			return err
		}
		for _, h := range hs {
			info, err := t.describeObject(s, h)
			var code pkcs11.Error
			if errors.As(err, &code) && uint(code) == pkcs11.CKR_OBJECT_HANDLE_INVALID {
				// Destroyed, by another process sharing the token, between
				// the search and this read: gone, so not listed.
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

// describeObject reads what every storage object has (class, label), then
// what only some classes have: asking a data object (CKO_DATA) for CKA_ID
// fails the whole call with CKR_ATTRIBUTE_TYPE_INVALID.
func (t *Token) describeObject(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) (ObjectInfo, error) {
	attrs, err := t.p11.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
	})
	if err != nil {
		return ObjectInfo{}, wrap("C_GetAttributeValue", err)
	}
	info := ObjectInfo{Handle: h, Class: ulong(attrs[0].Value), Label: string(attrs[1].Value)}
	var more []*pkcs11.Attribute
	switch info.Class {
	case pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY:
		more = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)}
	case pkcs11.CKO_CERTIFICATE:
		more = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)}
	default:
		return info, nil
	}
	got, err := t.p11.GetAttributeValue(s, h, more)
	if err != nil {
		return ObjectInfo{}, wrap("C_GetAttributeValue", err)
	}
	info.ID = got[0].Value
	if len(got) > 1 {
		info.KeyType = ulong(got[1].Value)
	}
	return info, nil
}

// Attributes reads attributes of ref. A sensitive attribute (CKA_VALUE of
// any key made here) fails with CKR_ATTRIBUTE_SENSITIVE.
func (t *Token) Attributes(ctx context.Context, ref ObjectRef, types ...uint) ([]*pkcs11.Attribute, error) {
	q := make([]*pkcs11.Attribute, len(types))
	for i, ty := range types {
		q[i] = pkcs11.NewAttribute(ty, nil)
	}
	var out []*pkcs11.Attribute
	err := t.withObject(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		var err error
		out, err = t.p11.GetAttributeValue(s, h, q)
		return wrap("C_GetAttributeValue", err)
	})
	return out, err
}

// SetAttributes changes attributes of the token object ref names (those
// the token lets be modified after creation, such as CKA_END_DATE). The
// object's session copy, if one was made, is dropped: the next use copies
// the changed object.
func (t *Token) SetAttributes(ctx context.Context, ref ObjectRef, attrs ...*pkcs11.Attribute) error {
	err := t.withObject(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if err := t.p11.SetAttributeValue(s, h, attrs); err != nil {
			return wrap("C_SetAttributeValue", err)
		}
		if c, ok := t.copies.LoadAndDelete(ref.cacheKey()); ok && c.(pkcs11.ObjectHandle) != h {
			t.p11.DestroyObject(s, c.(pkcs11.ObjectHandle))
		}
		return nil
	})
	return err
}

// DestroyObject destroys the single object ref names, and first its
// session copy, so a destroyed key cannot go on working from the copy. A
// session object the token has already lost is not an error.
func (t *Token) DestroyObject(ctx context.Context, ref ObjectRef) error {
	if ref.handle != 0 {
		return t.destroySessionObject(ctx, ref)
	}
	err := t.withObject(ctx, ref, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if c, ok := t.copies.LoadAndDelete(ref.cacheKey()); ok && c.(pkcs11.ObjectHandle) != h {
			if err := t.p11.DestroyObject(s, c.(pkcs11.ObjectHandle)); err != nil {
				if code, ok := Code(wrap("C_DestroyObject", err)); !ok || !isHandleError(code) {
					return wrap("C_DestroyObject", err)
				}
			}
		}
		return wrap("C_DestroyObject", t.p11.DestroyObject(s, h))
	})
	t.handles.Delete(ref.cacheKey())
	t.copies.Delete(ref.cacheKey())
	t.curves.Delete(ref.cacheKey())
	t.moduli.Delete(ref.cacheKey())
	return err
}

// ulong decodes a CK_ULONG attribute value (native byte order and width).
func ulong(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}

// refusesCopy tells a token's policy against C_CopyObject (which is not a
// failure: the token object is used instead) from a real error.
func refusesCopy(err error) bool {
	code, _ := Code(err)
	switch code {
	case pkcs11.CKR_ACTION_PROHIBITED, pkcs11.CKR_FUNCTION_NOT_SUPPORTED, pkcs11.CKR_TEMPLATE_INCONSISTENT,
		pkcs11.CKR_ATTRIBUTE_READ_ONLY, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID:
		return true
	}
	return false
}
