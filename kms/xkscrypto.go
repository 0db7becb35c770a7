package kms

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/hsmkms/hsmkms/xks"
)

// Double encryption, as AWS KMS does it for keys in external key stores:
// the plaintext is encrypted first under key material of hsmkms's own
// (AES-256-GCM on the default token, with the blob header and the
// encryption context as additional data, exactly as any symmetric key),
// and that ciphertext is encrypted again by the external key through the
// proxy. Neither layer alone yields the plaintext: the proxy's key
// manager never sees it, and hsmkms's material cannot open the outer
// layer. Disabling or deleting the external key makes every ciphertext
// unreadable.
//
// The ciphertext blob, format 2 (format 1 is ciphertext.go's):
//
//	offset  size  field
//	0       1     format version, 0x02
//	1       ...   account, region, key id, material id, as in format 1
//	h       1     length M of the proxy's ciphertext metadata (0-20)
//	h+1     M     the proxy's ciphertext metadata
//	h+1+M   1     length V of the proxy's IV (12 or 16)
//	h+2+M   V     the proxy's IV
//	...     16    the proxy's authentication tag
//	...     n     the proxy's ciphertext of the inner layer: hsmkms's
//	              12-byte IV, then its GCM ciphertext and 16-byte tag
//
// Everything before the metadata length (the header) is the inner
// layer's additional data with the encryption context, as in format 1.
// The outer layer's additional data, sent to the proxy, is the header
// followed by the SHA-256 of the inner one: the proxy learns no context,
// and a context or header changed makes the proxy refuse, which AWS
// answers KMSInvalidStateException ("…ciphertext or encryption context is
// corrupted…").

const xksBlobVersion = 2

// xksSealed is what the proxy made, as a format-2 blob holds it.
type xksSealed struct {
	meta, iv, tag, ct []byte
}

// parseXKSBlob splits a format-2 blob without copying; structure only.
func parseXKSBlob(b []byte) (*blob, error) {
	if len(b) == 0 || b[0] != xksBlobVersion {
		return nil, errBadBlob
	}
	bl, p, err := parseHeader(b, 1+1+12+xks.GCMTagSize+keystore.GCMIVSize+keystore.GCMTagSize)
	if err != nil {
		return nil, err
	}
	m := int(b[p])
	p++
	if m > xks.MaxCiphertextMetadata || len(b)-p < m+1 {
		return nil, errBadBlob
	}
	x := &xksSealed{meta: b[p : p+m]}
	p += m
	v := int(b[p])
	p++
	if (v != 12 && v != 16) || len(b)-p < v+xks.GCMTagSize+keystore.GCMIVSize+keystore.GCMTagSize {
		return nil, errBadBlob
	}
	x.iv = b[p : p+v]
	p += v
	x.tag = b[p : p+xks.GCMTagSize]
	p += xks.GCMTagSize
	x.ct = b[p:]
	bl.xks = x
	return bl, nil
}

func marshalXKSBlob(header []byte, x *xksSealed) []byte {
	out := make([]byte, 0, len(header)+2+len(x.meta)+len(x.iv)+len(x.tag)+len(x.ct))
	out = append(out, header...)
	out = append(out, byte(len(x.meta)))
	out = append(out, x.meta...)
	out = append(out, byte(len(x.iv)))
	out = append(out, x.iv...)
	out = append(out, x.tag...)
	return append(out, x.ct...)
}

// outerAAD is what the proxy authenticates: the header and the SHA-256 of
// the inner layer's additional data (which holds the context).
func outerAAD(header, innerAAD []byte) []byte {
	sum := sha256.Sum256(innerAAD)
	return append(append(make([]byte, 0, len(header)+len(sum)), header...), sum[:]...)
}

// xksMetadata is what the proxy is told of the call behind its request.
func xksMetadata(r *Request, k *store.Key) xks.RequestMetadata {
	md := xks.RequestMetadata{AwsPrincipalArn: r.Caller.PrincipalARN, KmsOperation: r.op.name, KmsRequestID: r.ID}
	if k != nil {
		md.KmsKeyArn = arnOf(k)
	}
	return md
}

// xksClientFor returns the client of k's store's proxy, or AWS's answer
// for a key whose store is not connected.
func (s *Service) xksClientFor(k *store.Key) (*xks.Client, error) {
	c := s.xksConnected(k.CustomKeyStoreID)
	if c == nil {
		return nil, wire.Errorf(wire.KMSInvalidState, "%s", msgXksNotConnected)
	}
	return c, nil
}

// sealXKS is seal for a key of an external key store: hsmkms's layer,
// then the proxy's.
func (s *Service) sealXKS(ctx context.Context, r *Request, k *store.Key, plaintext []byte, ec map[string]string) ([]byte, string, error) {
	c, err := s.xksClientFor(k)
	if err != nil {
		return nil, "", err
	}
	tok, err := s.token(k)
	if err != nil {
		return nil, "", err
	}
	m := k.Materials[len(k.Materials)-1]
	uuid, _ := parseUUID(k.ID)
	matID, err := hex.DecodeString(m.ID)
	if err != nil || len(matID) != materialIDSize {
		return nil, "", internalf("key %s has a malformed material id", arnOf(k))
	}
	header := appendHeader(nil, xksBlobVersion, k.Account, k.Region, uuid, matID)
	inner := additionalData(header, ec)
	iv, sealed, err := tok.EncryptGCM(ctx, material(k, m), plaintext, inner)
	if err != nil {
		return nil, "", tokenError(err, tokenCall{key: k})
	}
	layer := append(iv, sealed...)
	out, err := c.Encrypt(ctx, k.XksKeyID, xksMetadata(r, k), layer, outerAAD(header, inner))
	if err != nil {
		return nil, "", s.xksCallError(r, k, err)
	}
	return marshalXKSBlob(header, &xksSealed{meta: out.Metadata, iv: out.IV, tag: out.Tag, ct: out.Ciphertext}), m.ID, nil
}

// openXKS reverses sealXKS: the proxy removes its layer, the token
// hsmkms's.
func (s *Service) openXKS(ctx context.Context, r *Request, tok *keystore.Store, k *store.Key, m store.Material, b *blob, ec map[string]string) ([]byte, error) {
	c, err := s.xksClientFor(k)
	if err != nil {
		return nil, err
	}
	inner := additionalData(b.header, ec)
	x := b.xks
	layer, err := c.Decrypt(ctx, k.XksKeyID, xksMetadata(r, k), &xks.Sealed{Ciphertext: x.ct, Metadata: x.meta, IV: x.iv, Tag: x.tag}, outerAAD(b.header, inner))
	if err != nil {
		return nil, s.xksCallError(r, k, err)
	}
	defer clear(layer)
	if len(layer) < keystore.GCMIVSize+keystore.GCMTagSize {
		return nil, wire.Errorf(wire.KMSInvalidState, "%s", msgXksBadPlaintext)
	}
	plain, err := tok.DecryptGCM(ctx, material(k, m), layer[:keystore.GCMIVSize], layer[keystore.GCMIVSize:], inner)
	if errors.Is(err, keystore.ErrInvalidCiphertext) {
		// The proxy opened its layer, but what it gave back is not ours:
		// AWS's answer for a proxy returning an invalid ciphertext.
		return nil, wire.Errorf(wire.KMSInvalidState, "%s", msgXksBadPlaintext)
	}
	if err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	return plain, nil
}

// xksCallError answers a failed call to k's proxy during a cryptographic
// operation, and logs the detail for the operator.
func (s *Service) xksCallError(r *Request, k *store.Key, err error) error {
	f := failureOf(err)
	s.log.Warn("external key store proxy call failed", "request_id", r.ID, "key", arnOf(k), "store", k.CustomKeyStoreID, "error", err)
	return f.keyError(false)
}

// checkExternalKey is CreateKey's check of the external key id through
// the proxy of the CONNECTED store ks: it must exist and be an AES_256
// key that can encrypt and decrypt, and be ENABLED.
func (s *Service) checkExternalKey(ctx context.Context, r *Request, ks *store.KeyStore, id string) error {
	c := s.xksConnected(ks.ID)
	if c == nil {
		st, _ := s.xksStore(ks.ID).state()
		return keyStoreInvalidState(ks.ID, st, "CONNECTED")
	}
	m, err := c.GetKeyMetadata(ctx, id, xksMetadata(r, nil))
	if err != nil {
		s.log.Warn("external key store proxy call failed", "request_id", r.ID, "store", ks.ID, "external_key", id, "error", err)
		return failureOf(err).keyError(true)
	}
	switch {
	case m.KeySpec != xks.KeySpecAES256:
		return wire.Errorf(wire.XksKeyInvalidConfiguration, "The external key %s is not a 256-bit AES key: its key spec is %.32q.", id, m.KeySpec)
	case !slices.Contains(m.KeyUsage, "ENCRYPT") || !slices.Contains(m.KeyUsage, "DECRYPT"):
		return wire.Errorf(wire.XksKeyInvalidConfiguration, "%s", msgXksKeyUsage)
	case m.KeyStatus != "ENABLED":
		return wire.Errorf(wire.XksKeyInvalidConfiguration, "%s", msgXksKeyNotEnabled)
	}
	return nil
}
