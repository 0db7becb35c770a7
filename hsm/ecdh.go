package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"
)

// DeriveECDH computes the ECDH shared secret of the private key key (which
// needs UsageDerive) and the peer's uncompressed point 0x04||X||Y on
// the same curve: CKM_ECDH1_DERIVE with CKD_NULL and no shared data. It
// returns the X coordinate of the shared point, field-size bytes, as
// crypto/ecdh does. The secret is derived into a short-lived extractable
// session object, read once and destroyed; the private key stays where it
// is.
func (t *Token) DeriveECDH(ctx context.Context, key ObjectRef, peerPoint []byte) ([]byte, error) {
	var secret []byte
	err := t.withKey(ctx, key, func(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		c, err := t.ecCurve(s, h)
		if err != nil {
			return err
		}
		if len(peerPoint) != 1+2*c.size || peerPoint[0] != 4 {
			return fmt.Errorf("hsm: peer public key is not an uncompressed %s point", c.name)
		}
		if c.ecdh != nil { // the token checks too, but not every token does
			if _, err := c.ecdh.NewPublicKey(peerPoint); err != nil {
				return fmt.Errorf("hsm: peer public key is not on %s", c.name)
			}
		}
		params := pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peerPoint)
		dh, err := t.p11.DeriveKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, params)}, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, c.size),
		})
		if err != nil {
			return wrap("C_DeriveKey", err)
		}
		defer t.p11.DestroyObject(s, dh)
		a, err := t.p11.GetAttributeValue(s, dh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return wrap("C_GetAttributeValue", err)
		}
		if len(a[0].Value) != c.size {
			clear(a[0].Value)
			return fmt.Errorf("hsm: token derived %d bytes of %s shared secret, not %d", len(a[0].Value), c.name, c.size)
		}
		secret = a[0].Value
		return nil
	})
	return secret, err
}
