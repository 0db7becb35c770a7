package kms

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/hsmkms/hsmkms/internal/uuid"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// newKeyID returns a random (version 4) UUID, the form of AWS key ids.
func newKeyID() (string, [16]byte) { return uuid.New() }

// newMultiRegionKeyID returns a multi-Region key's id: "mrk-" and 32
// random hex digits, the form AWS gives them; the bytes are what the
// ciphertext format and the token object's id carry.
func newMultiRegionKeyID() (string, [16]byte) {
	var b [16]byte
	rand.Read(b[:])
	return mrkPrefix + hex.EncodeToString(b[:]), b
}

const mrkPrefix = "mrk-"

// keyIDBytes is the 16 bytes a key id stands for: a UUID's, or a
// multi-Region id's 32 hex digits; multiRegion says which.
func keyIDBytes(id string) (b [16]byte, multiRegion, ok bool) {
	if h, is := strings.CutPrefix(id, mrkPrefix); is {
		if len(h) != 32 {
			return b, true, false
		}
		_, err := hex.Decode(b[:], []byte(h))
		return b, true, err == nil
	}
	b, ok = parseUUID(id)
	return b, false, ok
}

// formatKeyID is keyIDBytes's inverse.
func formatKeyID(b [16]byte, multiRegion bool) string {
	if multiRegion {
		return mrkPrefix + hex.EncodeToString(b[:])
	}
	return formatUUID(b)
}

func formatUUID(b [16]byte) string { return uuid.Format(b) }

// parseUUID accepts the canonical 36-character form, any case.
func parseUUID(s string) ([16]byte, bool) {
	var b [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return b, false
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(b[:], []byte(h)); err != nil {
		return b, false
	}
	return b, true
}

func keyARN(region, account, id string) string {
	return "arn:aws:kms:" + region + ":" + account + ":key/" + id
}

func aliasARN(region, account, name string) string {
	return "arn:aws:kms:" + region + ":" + account + ":" + name
}

// arn is a parsed KMS ARN: arn:<partition>:kms:<region>:<account>:<resource>.
type arn struct {
	Region, Account, Resource string
}

func parseARN(s string) (arn, bool) {
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "kms" || parts[1] == "" || parts[3] == "" || parts[4] == "" {
		return arn{}, false
	}
	return arn{Region: parts[3], Account: parts[4], Resource: parts[5]}, true
}

// keyRef is what a KeyId parameter names before lookup.
type keyRef struct {
	Account, Region string
	ID              string // key id, when the parameter named a key
	Alias           string // alias name ("alias/…"), when it named an alias
}

// parseKeyID reads a KeyId parameter: key id, key ARN, alias name or alias
// ARN. allowAlias is false for parameters AWS documents as key id or ARN
// only (CreateAlias TargetKeyId, tagging, policies).
//
// What AWS refuses by form alone it refuses here, before anything is looked
// up: an ARN of another Region ("Invalid arn <region>": keys are regional,
// and the endpoint serves one Region), and a key id of neither AWS shape
// ("Invalid keyId"). A well-formed id is never invalid: a UUID or a
// multi-Region key's "mrk-" id, in any case, names a key or none.
func parseKeyID(r *Request, s string, allowAlias bool) (keyRef, error) {
	ref := keyRef{Account: r.Caller.Account, Region: r.Caller.Region}
	resource := s
	if strings.HasPrefix(s, "arn:") {
		a, ok := parseARN(s)
		if !ok {
			return ref, invalidKeyID(s)
		}
		ref.Account, ref.Region, resource = a.Account, a.Region, a.Resource
		if rest, ok := strings.CutPrefix(resource, "key/"); ok {
			resource = rest
		} else if !strings.HasPrefix(resource, "alias/") {
			return ref, invalidKeyID(s)
		}
		if ref.Region != r.Caller.Region {
			return ref, wire.Errorf(wire.NotFound, "Invalid arn %s", ref.Region)
		}
	}
	if strings.HasPrefix(resource, "alias/") {
		if !allowAlias {
			return ref, invalidKeyID(s)
		}
		ref.Alias = resource
		return ref, nil
	}
	if !validKeyID(resource) {
		return ref, invalidKeyID(s)
	}
	ref.ID = strings.ToLower(resource)
	return ref, nil
}

// validKeyID reports whether s has the shape of an AWS key id: a UUID, or
// a multi-Region key's "mrk-" and 32 hex digits.
func validKeyID(s string) bool {
	if _, ok := parseUUID(s); ok {
		return true
	}
	hexPart, ok := strings.CutPrefix(strings.ToLower(s), "mrk-")
	if !ok || len(hexPart) != 32 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil
}

func invalidKeyID(s string) error {
	return wire.Errorf(wire.NotFound, "Invalid keyId '%s'", s)
}

func keyNotFound(region, account, id string) error {
	return wire.Errorf(wire.NotFound, "Key '%s' does not exist", keyARN(region, account, id))
}

func aliasNotFound(r *Request, name string) error {
	return wire.Errorf(wire.NotFound, "Alias %s is not found.", aliasARN(r.Caller.Region, r.Caller.Account, name))
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

func arnOf(k *store.Key) string { return keyARN(k.Region, k.Account, k.ID) }

func internalf(format string, args ...any) error { return fmt.Errorf("kms: "+format, args...) }
