package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"
)

// DataObjectByLabel refers to the data object (CKO_DATA) with CKA_LABEL
// label. Data objects have no CKA_ID: PKCS#11 names them by label and
// application.
func DataObjectByLabel(label string) ObjectRef {
	return ObjectRef{Class: pkcs11.CKO_DATA, Label: label}
}

// CreateData stores value on the token as a data object (CKO_DATA) with
// CKA_LABEL label: persistent, private (readable only after login) and not
// modifiable. It is for small records a token must carry about itself,
// never for secrets: a data object's value is not protected like a key's.
func (t *Token) CreateData(ctx context.Context, label, application string, value []byte) (ObjectRef, error) {
	if label == "" {
		return ObjectRef{}, fmt.Errorf("hsm: a data object needs a CKA_LABEL")
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, application),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	}
	ref := DataObjectByLabel(label)
	var h pkcs11.ObjectHandle
	err := t.do(ctx, makeTokenObject, func(s pkcs11.SessionHandle) error {
		var err error
		h, err = t.p11.CreateObject(s, tmpl)
		return wrap("C_CreateObject", err)
	})
	if err != nil {
		return ObjectRef{}, err
	}
	t.handles.Store(ref.cacheKey(), h)
	return ref, nil
}

// DataValue reads the CKA_VALUE of the single data object labelled label:
// ErrObjectNotFound when there is none (or it is private and nobody is
// logged in), ErrObjectAmbiguous when there are several.
func (t *Token) DataValue(ctx context.Context, label string) ([]byte, error) {
	attrs, err := t.Attributes(ctx, DataObjectByLabel(label), pkcs11.CKA_VALUE)
	if err != nil {
		return nil, err
	}
	return attrs[0].Value, nil
}
