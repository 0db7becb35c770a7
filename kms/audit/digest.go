package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Digest is a digest file: which trail files it seals, with their hashes
// and chain ends, and the previous digest's hash and signature, so the
// digests form a chain of their own. Its names follow CloudTrail's digest
// files where the concept is the same. The file's bytes are signed: its
// signature, DER, is in the file of the same name with ".sig" appended.
type Digest struct {
	TrailID                     string    `json:"trailId"`
	DigestSequence              uint64    `json:"digestSequence"`
	DigestStartTime             string    `json:"digestStartTime"`
	DigestEndTime               string    `json:"digestEndTime"`
	DigestFile                  string    `json:"digestFile"`
	DigestPublicKeyFingerprint  string    `json:"digestPublicKeyFingerprint"`
	DigestSignatureAlgorithm    string    `json:"digestSignatureAlgorithm"`
	Reason                      string    `json:"reason"`
	OldestEventTime             string    `json:"oldestEventTime,omitempty"`
	NewestEventTime             string    `json:"newestEventTime,omitempty"`
	PreviousDigestFile          string    `json:"previousDigestFile,omitempty"`
	PreviousDigestHashValue     string    `json:"previousDigestHashValue,omitempty"`
	PreviousDigestHashAlgorithm string    `json:"previousDigestHashAlgorithm,omitempty"`
	PreviousDigestSignature     string    `json:"previousDigestSignature,omitempty"`
	LogFiles                    []LogFile `json:"logFiles"`
}

// LogFile is one sealed trail file in a digest.
type LogFile struct {
	File          string `json:"file"`
	HashValue     string `json:"hashValue"`
	HashAlgorithm string `json:"hashAlgorithm"`
	Size          int64  `json:"size"`
	Records       uint64 `json:"records"`
	FirstSequence uint64 `json:"firstSequence"`
	LastSequence  uint64 `json:"lastSequence"`
	// PreviousRecordHash is the previousHash of the file's first record:
	// the link to the record before it, in an earlier file.
	PreviousRecordHash string `json:"previousRecordHash"`
	LastRecordHash     string `json:"lastRecordHash"`
	OldestEventTime    string `json:"oldestEventTime,omitempty"`
	NewestEventTime    string `json:"newestEventTime,omitempty"`
	// TornBytes are bytes after the last record: the start of a write a
	// crash cut short, which was never acknowledged. Only the start after
	// a crash seals a file with them.
	TornBytes int64 `json:"tornBytes,omitempty"`
}

// Why a digest was written.
const (
	SealRotation = "rotation" // a file reached its size or age
	SealInterval = "interval" // an hour passed with no file to close
	SealStop     = "stop"     // a clean stop
	SealRecovery = "recovery" // the start after a run that did not stop cleanly
)

const (
	signatureAlgorithm = "SHA256withECDSA"
	hashAlgorithm      = "SHA-256"
)

// Signer signs digests: the audit signing key on the default token.
type Signer interface {
	// Sign signs a SHA-256 digest: an ASN.1 DER ECDSA signature.
	Sign(ctx context.Context, sha256Digest []byte) ([]byte, error)
	// PublicKey is the public key, DER SubjectPublicKeyInfo.
	PublicKey() []byte
}

// Fingerprint is how digests name a public key: the hex SHA-256 of its
// DER SubjectPublicKeyInfo (`openssl pkey -pubin -in KEY.pem -outform DER
// | openssl dgst -sha256`).
func Fingerprint(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// parseDigest reads a digest file's bytes. They are untrusted.
func parseDigest(b []byte) (*Digest, error) {
	var d Digest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("not a digest: %v", err)
	}
	if dec.More() {
		return nil, errors.New("not a digest: data after the object")
	}
	if d.DigestSequence == 0 || d.TrailID == "" {
		return nil, errors.New("not a digest: no trail id or sequence")
	}
	for _, f := range d.LogFiles {
		if _, ok := parseTrailName(f.File); !ok {
			return nil, fmt.Errorf("not a digest: %q is not a trail file name", truncate(f.File, 80))
		}
	}
	return &d, nil
}

// encodeDigest is what is written, and signed.
func encodeDigest(d *Digest) ([]byte, error) {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// PublicKeyFromPEM parses a PEM public key (what the trail exports) as an
// ECDSA key, with its fingerprint.
func PublicKeyFromPEM(b []byte) (*ecdsa.PublicKey, string, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, "", errors.New("not a PEM public key")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, "", err
	}
	ec, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, "", errors.New("not an ECDSA public key")
	}
	return ec, Fingerprint(blk.Bytes), nil
}

// exportPublicKey writes the signing key's PEM beside the digests. A
// different key already there (the token was replaced) is kept under a
// name with its fingerprint, so older digests still verify.
func exportPublicKey(dir string, spki []byte) error {
	p := filepath.Join(dir, PublicKeyPEM)
	data := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})
	old, err := os.ReadFile(p)
	switch {
	case err == nil && bytes.Equal(old, data):
		return nil
	case err == nil:
		if _, fp, perr := PublicKeyFromPEM(old); perr == nil {
			if err := os.Rename(p, filepath.Join(dir, "audit-public-key-"+fp[:16]+".pem")); err != nil {
				return err
			}
		} else {
			return fmt.Errorf("audit: %s is not a public key: %v; not replacing it", p, perr)
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	return writeFileSync(dir, PublicKeyPEM, data, 0o644)
}

// publicKeys reads every exported public key in dir, by fingerprint.
func publicKeys(dir string) (map[string]*ecdsa.PublicKey, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]*ecdsa.PublicKey{}
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "audit-public-key") || !strings.HasSuffix(n, ".pem") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		k, fp, err := PublicKeyFromPEM(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", n, err)
		}
		out[fp] = k
	}
	return out, nil
}

// writeFileSync writes a file completely or not at all (a temporary file,
// fsynced, renamed, and the directory fsynced).
func writeFileSync(dir, name string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(dir, ".tmp-"+name+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
