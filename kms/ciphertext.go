package kms

import (
	"encoding/binary"
	"errors"
	"sort"

	"github.com/hsmkms/hsmkms/keystore"
)

// The ciphertext blob of a symmetric KMS key (format version 1):
//
//	offset  size  field
//	0       1     format version, 0x01
//	1       1     length A of the account id
//	2       A     account id (ASCII)
//	2+A     1     length R of the region
//	3+A     R     region (ASCII)
//	3+A+R   16    key id (the UUID's 16 bytes)
//	19+A+R  32    key material id
//	51+A+R  12    AES-GCM IV
//	63+A+R  n+16  AES-GCM ciphertext and 16-byte tag
//
// Everything before the IV (the header) names the key and material version,
// so Decrypt needs no KeyId. The header and the canonical encryption context
// are the GCM additional data: changing either breaks the tag.
const (
	blobVersion      = 1
	materialIDSize   = 32
	minBlobSize      = 1 + 1 + 1 + 16 + materialIDSize + keystore.GCMIVSize + keystore.GCMTagSize
	maxBlobNameField = 64
)

var errBadBlob = errors.New("kms: malformed ciphertext blob")

// blob is a parsed ciphertext blob. Its slices alias the input.
type blob struct {
	Account, Region string
	KeyID           [16]byte
	MaterialID      []byte
	IV              []byte
	Sealed          []byte
	header          []byte
	// xks is, for a ciphertext of a key in an external key store (format
	// 2), what the proxy made; IV and Sealed are then inside it.
	xks *xksSealed
}

// marshalBlob assembles a blob from its header (appendBlobHeader), the IV
// and the sealed bytes: the one encoder, used by Encrypt and the tests.
func marshalBlob(header, iv, sealed []byte) []byte {
	out := make([]byte, 0, len(header)+len(iv)+len(sealed))
	return append(append(append(out, header...), iv...), sealed...)
}

func appendBlobHeader(dst []byte, account, region string, keyID [16]byte, materialID []byte) []byte {
	return appendHeader(dst, blobVersion, account, region, keyID, materialID)
}

func appendHeader(dst []byte, version byte, account, region string, keyID [16]byte, materialID []byte) []byte {
	dst = append(dst, version, byte(len(account)))
	dst = append(dst, account...)
	dst = append(dst, byte(len(region)))
	dst = append(dst, region...)
	dst = append(dst, keyID[:]...)
	return append(dst, materialID...)
}

// parseBlob splits b without copying. It checks structure only; the tag
// check on the token decides whether the blob is genuine.
func parseBlob(b []byte) (*blob, error) {
	if len(b) < minBlobSize || b[0] != blobVersion {
		return nil, errBadBlob
	}
	bl, p, err := parseHeader(b, keystore.GCMIVSize+keystore.GCMTagSize)
	if err != nil {
		return nil, err
	}
	bl.IV = b[p : p+keystore.GCMIVSize]
	bl.Sealed = b[p+keystore.GCMIVSize:]
	return bl, nil
}

// parseHeader parses the header every format shares (after its version
// byte: account, region, key id, material id) and returns where the rest
// begins; the rest must be at least minRest bytes.
func parseHeader(b []byte, minRest int) (*blob, int, error) {
	p := 1
	field := func() (string, bool) {
		if p >= len(b) {
			return "", false
		}
		n := int(b[p])
		p++
		if n == 0 || n > maxBlobNameField || p+n > len(b) {
			return "", false
		}
		s := string(b[p : p+n])
		p += n
		return s, true
	}
	account, ok1 := field()
	region, ok2 := field()
	if !ok1 || !ok2 || len(b)-p < 16+materialIDSize+minRest {
		return nil, 0, errBadBlob
	}
	bl := &blob{Account: account, Region: region}
	copy(bl.KeyID[:], b[p:p+16])
	p += 16
	bl.MaterialID = b[p : p+materialIDSize]
	p += materialIDSize
	bl.header = b[:p]
	return bl, p, nil
}

// additionalData binds the blob header and the encryption context. The
// context is canonical: pairs sorted by key, each string length-prefixed, so
// the same map in any order gives the same bytes and no two maps collide.
func additionalData(header []byte, ec map[string]string) []byte {
	keys := make([]string, 0, len(ec))
	size := len(header) + binary.MaxVarintLen64
	for k, v := range ec {
		keys = append(keys, k)
		size += len(k) + len(v) + 2*binary.MaxVarintLen64
	}
	sort.Strings(keys)
	out := make([]byte, 0, size)
	out = append(out, header...)
	out = binary.AppendUvarint(out, uint64(len(keys)))
	for _, k := range keys {
		out = binary.AppendUvarint(out, uint64(len(k)))
		out = append(out, k...)
		out = binary.AppendUvarint(out, uint64(len(ec[k])))
		out = append(out, ec[k]...)
	}
	return out
}
