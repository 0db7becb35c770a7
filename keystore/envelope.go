package keystore

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The envelope: how a wrapped material version is written for the
// metadata store (Material.Wrapped), and the only place that defines it.
//
//	offset  size  field
//	0       1     format, envelopeV1
//	1       1     the Spec the material is
//	2       2     length W of the wrapped key, big-endian
//	4       W     the key (a pair's private key) wrapped under the domain
//	              key with CKM_AES_KEY_WRAP_PAD (RFC 5649)
//	4+W     2     length P of the public key, big-endian (0 unless a pair)
//	6+W     P     the public key, DER SubjectPublicKeyInfo, in clear
//
// Nothing else: the domain key is recorded beside the envelope
// (Material.DomainKey), the usage by the key's metadata. It comes back
// from the database, so it is parsed as untrusted bytes (FuzzEnvelope):
// exact lengths, no trailing bytes, a spec that exists.

const envelopeV1 = 1

// maxEnvelopePart bounds each variable part: a wrapped RSA-4096 private
// key is about 2.4 KB, its public key 550 bytes.
const maxEnvelopePart = 8 << 10

var errEnvelope = errors.New("keystore: malformed wrapped material")

type envelope struct {
	spec      Spec
	key       []byte
	publicKey []byte
}

func (e envelope) marshal() ([]byte, error) {
	if len(e.key) == 0 || len(e.key) > maxEnvelopePart || len(e.publicKey) > maxEnvelopePart {
		return nil, fmt.Errorf("keystore: wrapped material of %d and %d bytes does not fit an envelope", len(e.key), len(e.publicKey))
	}
	out := make([]byte, 0, 6+len(e.key)+len(e.publicKey))
	out = append(out, envelopeV1, byte(e.spec))
	out = binary.BigEndian.AppendUint16(out, uint16(len(e.key)))
	out = append(out, e.key...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(e.publicKey)))
	return append(out, e.publicKey...), nil
}

// parseEnvelope reads an envelope of material of spec want.
func parseEnvelope(b []byte, want Spec) (envelope, error) {
	if len(b) < 4 || b[0] != envelopeV1 {
		return envelope{}, errEnvelope
	}
	e := envelope{spec: Spec(b[1])}
	if _, ok := specNames[e.spec]; !ok || e.spec != want {
		return envelope{}, fmt.Errorf("%w: it is not %v material", errEnvelope, want)
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	rest := b[4:]
	if n == 0 || n > maxEnvelopePart || len(rest) < n+2 {
		return envelope{}, errEnvelope
	}
	e.key, rest = rest[:n:n], rest[n:]
	p := int(binary.BigEndian.Uint16(rest[:2]))
	rest = rest[2:]
	if p > maxEnvelopePart || len(rest) != p || (p == 0) == e.spec.Asymmetric() {
		return envelope{}, errEnvelope
	}
	if p > 0 {
		e.publicKey = rest[:p:p]
	}
	return e, nil
}
