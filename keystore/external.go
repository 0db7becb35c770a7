package keystore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
)

// External keys are the keys hsmkms serves as an external key store proxy
// (AWS's XKS): AES keys on a token of their own, each named by the external
// key id AWS KMS sends, used for AES-GCM on the token and nowhere else.
// This file is the one place that knows how such a key sits on a token:
//
//	CKA_ID        "hsmkms-xks:" ‖ the external key id (found by exact match)
//	CKA_LABEL     the external key id while the key is ENABLED, the id
//	              followed by " DISABLED" while it is DISABLED; any other
//	              label counts as DISABLED (PKCS#11 has no enabled flag,
//	              and SoftHSM2 2.6.1 fails to read back a CKA_END_DATE it
//	              was given, so the status goes where every PKCS#11 tool
//	              shows it to an operator)
//	CKA_ENCRYPT,  the key's usage, enforced by the token itself: a key made
//	CKA_DECRYPT   encrypt-only cannot decrypt whatever hsmkms asks
//
// plus one key made for the deep health check (never an external key).
// Everything else on the token is ignored. The token is the registry: the
// proxy, `hsmkms xks-keys` and other processes see one truth. A key's
// usage and status, read on use, are kept for StatusTTL (a second by
// default): reading a token object's attributes is a file lock and read on
// SoftHSM2 (190 µs, more than the AES-GCM itself) and a round trip on a
// network HSM. A change made through this ExternalKeys is seen at once; one
// made by another process (`hsmkms xks-keys disable`) within StatusTTL.

const externalIDPrefix = "hsmkms-xks:"

var healthCheckKeyID = []byte("hsmkms-xks:health-check")

const healthCheckKeyLabel = "hsmkms XKS proxy health check"

// ExternalKeyIDPattern is what AWS accepts as an external key id (the
// XksKeyId of CreateKey): 1-128 letters, digits, '.', '-' and '_'.
var ExternalKeyIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

var (
	// ErrExternalKeyNotFound: no external key has the id.
	ErrExternalKeyNotFound = errors.New("keystore: no such external key")
	// ErrExternalKeyExists: Create was given an id already in use.
	ErrExternalKeyExists = errors.New("keystore: an external key with this id exists")
	// ErrExternalKeyUsage: the key may not do what was asked (its usage
	// lacks it, or it is not an AES-256 key).
	ErrExternalKeyUsage = errors.New("keystore: the external key does not support the operation")
	// ErrExternalKeyDisabled: the key is DISABLED.
	ErrExternalKeyDisabled = errors.New("keystore: the external key is disabled")
)

// ExternalKeySpec names the kinds of external key: AES_256 is the only one
// AWS KMS accepts; the others exist so an operator can see what a key is.
type ExternalKeySpec string

const (
	ExternalAES256 ExternalKeySpec = "AES_256"
	ExternalAES192 ExternalKeySpec = "AES_192"
	ExternalAES128 ExternalKeySpec = "AES_128"
)

// ExternalKey is what the token says of an external key.
type ExternalKey struct {
	ID      string
	Spec    ExternalKeySpec // "" when the object is not an AES key
	Encrypt bool
	Decrypt bool
	Enabled bool
}

// disabledSuffix marks a DISABLED key's label.
const disabledSuffix = " DISABLED"

// ExternalKeys is a token holding external keys, logged in as its user.
// Safe for concurrent use.
type ExternalKeys struct {
	tok  *hsm.Token
	info hsm.TokenInfo
	// ttl is how long a key read from the token answers uses of it
	// (StatusTTL); seen holds them by id (*seenKey).
	ttl  atomic.Int64
	seen sync.Map
}

// DefaultStatusTTL is how long a key's usage and status, read from the
// token, answer its uses.
const DefaultStatusTTL = time.Second

// seenKey is a key as last read from the token, and when.
type seenKey struct {
	k   ExternalKey
	err error // ErrExternalKeyNotFound, remembered as long
	at  time.Time
}

// SetStatusTTL sets how long a key read from the token answers its uses;
// 0 reads the token at every use.
func (x *ExternalKeys) SetStatusTTL(d time.Duration) { x.ttl.Store(int64(d)) }

// OpenExternalKeys opens the token cfg names and logs in with pin, taking
// guard's copy of a SoftHSM2 token's token.object first (a login rewrites
// it). It makes the health check key if the token has none.
func OpenExternalKeys(ctx context.Context, cfg TokenConfig, pin string, guard *Safeguards) (_ *ExternalKeys, err error) {
	tok, err := hsm.OpenToken(cfg)
	if err != nil {
		return nil, fmt.Errorf("keystore: external keys: %w", err)
	}
	defer func() {
		if err != nil {
			tok.Close()
		}
	}()
	info, err := tok.Info()
	if err != nil {
		return nil, fmt.Errorf("keystore: external keys: %w", err)
	}
	if err := guard.BeforeRewrite(info); err != nil {
		return nil, err
	}
	if err := tok.Login(ctx, pin); err != nil {
		return nil, fmt.Errorf("keystore: external keys: %w", err)
	}
	x := &ExternalKeys{tok: tok, info: info}
	x.ttl.Store(int64(DefaultStatusTTL))
	if _, err := tok.FindObject(ctx, hsm.SecretKeyByID(healthCheckKeyID)); errors.Is(err, hsm.ErrObjectNotFound) {
		_, err = tok.GenerateAESKey(ctx, healthCheckKeyID, healthCheckKeyLabel, hsm.UsageEncrypt|hsm.UsageDecrypt)
		if err != nil {
			tok.Logout(ctx)
			return nil, fmt.Errorf("keystore: external keys: making the health check key: %w", classify(err))
		}
	} else if err != nil {
		tok.Logout(ctx)
		return nil, fmt.Errorf("keystore: external keys: %w", classify(err))
	}
	return x, nil
}

// Close logs out and closes the token.
func (x *ExternalKeys) Close(ctx context.Context) error {
	return errors.Join(x.tok.Logout(ctx), x.tok.Close())
}

// TokenInfo is what the token said of itself when it was opened: its
// manufacturer, model, serial and label, for the proxy's health report.
func (x *ExternalKeys) TokenInfo() (manufacturer, model, serial, label string) {
	return x.info.Manufacturer, x.info.Model, x.info.Serial, x.info.Label
}

func externalRef(id string) hsm.ObjectRef {
	return hsm.SecretKeyByID([]byte(externalIDPrefix + id))
}

// CreateExternalKey makes an external key of spec on the token, usable for
// what encrypt and decrypt say (both false makes a key that can do
// neither, which AWS's proxy tests use), ENABLED. ErrExternalKeyExists if
// the id is taken.
func (x *ExternalKeys) CreateExternalKey(ctx context.Context, id string, spec ExternalKeySpec, encrypt, decrypt bool) (ExternalKey, error) {
	if !ExternalKeyIDPattern.MatchString(id) {
		return ExternalKey{}, fmt.Errorf("keystore: %q is not an external key id (1-128 of A-Z a-z 0-9 . - _)", id)
	}
	size := map[ExternalKeySpec]int{ExternalAES256: 32, ExternalAES192: 24, ExternalAES128: 16}[spec]
	if size == 0 {
		return ExternalKey{}, fmt.Errorf("keystore: external keys are AES_256, AES_192 or AES_128, not %q", spec)
	}
	ref := externalRef(id)
	if _, err := x.tok.FindObject(ctx, ref); err == nil {
		return ExternalKey{}, fmt.Errorf("%w: %s", ErrExternalKeyExists, id)
	} else if !errors.Is(err, hsm.ErrObjectNotFound) {
		return ExternalKey{}, classify(err)
	}
	var usage hsm.Usage
	if encrypt {
		usage |= hsm.UsageEncrypt
	}
	if decrypt {
		usage |= hsm.UsageDecrypt
	}
	if _, err := x.tok.GenerateAESKeyOfSize(ctx, ref.ID, id, size, usage); err != nil {
		return ExternalKey{}, classify(err)
	}
	x.seen.Delete(id)
	return x.ExternalKey(ctx, id)
}

// externalAttrs are read from an external key on every use.
var externalAttrs = []uint{pkcs11.CKA_KEY_TYPE, pkcs11.CKA_VALUE_LEN, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_LABEL}

// ExternalKey reads the key id from the token, now: ErrExternalKeyNotFound
// if there is none.
func (x *ExternalKeys) ExternalKey(ctx context.Context, id string) (ExternalKey, error) {
	if !ExternalKeyIDPattern.MatchString(id) {
		return ExternalKey{}, fmt.Errorf("%w: %q", ErrExternalKeyNotFound, id)
	}
	attrs, err := x.tok.Attributes(ctx, externalRef(id), externalAttrs...)
	if errors.Is(err, hsm.ErrObjectNotFound) {
		err = fmt.Errorf("%w: %s", ErrExternalKeyNotFound, id)
		x.seen.Store(id, &seenKey{err: err, at: time.Now()})
		return ExternalKey{}, err
	}
	if err != nil {
		return ExternalKey{}, classify(err)
	}
	k := externalKeyOf(id, attrs)
	x.seen.Store(id, &seenKey{k: k, at: time.Now()})
	return k, nil
}

// externalKey is the key id as read within StatusTTL, or read now.
func (x *ExternalKeys) externalKey(ctx context.Context, id string) (ExternalKey, error) {
	if v, ok := x.seen.Load(id); ok {
		if s := v.(*seenKey); time.Since(s.at) < time.Duration(x.ttl.Load()) {
			return s.k, s.err
		}
	}
	return x.ExternalKey(ctx, id)
}

func externalKeyOf(id string, attrs []*pkcs11.Attribute) ExternalKey {
	k := ExternalKey{ID: id}
	var keyType, size uint
	for _, a := range attrs {
		switch a.Type {
		case pkcs11.CKA_KEY_TYPE:
			keyType = ulong(a.Value)
		case pkcs11.CKA_VALUE_LEN:
			size = ulong(a.Value)
		case pkcs11.CKA_ENCRYPT:
			k.Encrypt = len(a.Value) == 1 && a.Value[0] != 0
		case pkcs11.CKA_DECRYPT:
			k.Decrypt = len(a.Value) == 1 && a.Value[0] != 0
		case pkcs11.CKA_LABEL:
			k.Enabled = string(a.Value) == id
		}
	}
	if keyType == pkcs11.CKK_AES {
		k.Spec = map[uint]ExternalKeySpec{32: ExternalAES256, 24: ExternalAES192, 16: ExternalAES128}[size]
	}
	return k
}

// ulong decodes a CK_ULONG attribute value (native byte order and width).
func ulong(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}

// ListExternalKeys lists the token's external keys by id. It walks the
// token: for the admin command, never for a request.
func (x *ExternalKeys) ListExternalKeys(ctx context.Context) ([]ExternalKey, error) {
	objs, err := x.tok.ListObjects(ctx, pkcs11.CKO_SECRET_KEY)
	if err != nil {
		return nil, classify(err)
	}
	var out []ExternalKey
	for _, o := range objs {
		if !bytes.HasPrefix(o.ID, []byte(externalIDPrefix)) || bytes.Equal(o.ID, healthCheckKeyID) {
			continue
		}
		id := string(o.ID[len(externalIDPrefix):])
		k, err := x.ExternalKey(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b ExternalKey) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// SetExternalKeyEnabled enables or disables the key id (ENABLED or
// DISABLED); the change is on the token, so every process sees it at its
// next use of the key.
func (x *ExternalKeys) SetExternalKeyEnabled(ctx context.Context, id string, enabled bool) error {
	k, err := x.ExternalKey(ctx, id)
	if err != nil {
		return err
	}
	if k.Enabled == enabled {
		return nil
	}
	label := id
	if !enabled {
		label += disabledSuffix
	}
	if err := x.tok.SetAttributes(ctx, externalRef(id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)); err != nil {
		x.seen.Delete(id)
		return classify(err)
	}
	k.Enabled = enabled
	x.seen.Store(id, &seenKey{k: k, at: time.Now()})
	return nil
}

// usable reads the key id and checks that it is enabled, AES-256 and has
// the usage.
func (x *ExternalKeys) usable(ctx context.Context, id string, encrypt bool) error {
	k, err := x.externalKey(ctx, id)
	if err != nil {
		return err
	}
	switch {
	case !k.Enabled:
		return fmt.Errorf("%w: %s", ErrExternalKeyDisabled, id)
	case k.Spec != ExternalAES256, encrypt && !k.Encrypt, !encrypt && !k.Decrypt:
		return fmt.Errorf("%w: %s", ErrExternalKeyUsage, id)
	}
	return nil
}

// ExternalEncrypt encrypts plaintext with AES-256-GCM under the key id on
// the token, authenticating aad, with a fresh random 12-byte IV and a
// 16-byte tag. The key must be enabled and allowed to encrypt.
func (x *ExternalKeys) ExternalEncrypt(ctx context.Context, id string, plaintext, aad []byte) (iv, ciphertext, tag []byte, err error) {
	if err := x.usable(ctx, id, true); err != nil {
		return nil, nil, nil, err
	}
	iv, sealed, err := x.tok.EncryptGCM(ctx, externalRef(id), plaintext, aad)
	if err != nil {
		return nil, nil, nil, externalClassify(err)
	}
	n := len(sealed) - GCMTagSize
	return iv, sealed[:n:n], sealed[n:], nil
}

// ExternalDecrypt reverses ExternalEncrypt. The key must be enabled and
// allowed to decrypt; whatever else is wrong (the IV, the tag, the
// ciphertext, the additional data) is ErrInvalidCiphertext.
func (x *ExternalKeys) ExternalDecrypt(ctx context.Context, id string, iv, ciphertext, tag, aad []byte) ([]byte, error) {
	if err := x.usable(ctx, id, false); err != nil {
		return nil, err
	}
	if len(tag) != GCMTagSize {
		return nil, fmt.Errorf("%w: the tag must be %d bytes", ErrInvalidCiphertext, GCMTagSize)
	}
	sealed := make([]byte, 0, len(ciphertext)+len(tag))
	sealed = append(append(sealed, ciphertext...), tag...)
	plain, err := x.tok.DecryptGCM(ctx, externalRef(id), iv, sealed, aad)
	if err != nil {
		return nil, externalClassify(err)
	}
	return plain, nil
}

// externalClassify is classify, plus the token's own refusal of a usage
// the key lacks (a race with a change of the key, or a token enforcing
// what hsmkms also checks).
func externalClassify(err error) error {
	if code, ok := hsm.Code(err); ok && (code == pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED || code == pkcs11.CKR_KEY_TYPE_INCONSISTENT) {
		return fmt.Errorf("%w: %w", ErrExternalKeyUsage, err)
	}
	return classify(err)
}

// Check is the deep health check: it encrypts a random block with the
// health check key on the token, decrypts it and compares. nil means the
// token can do what the proxy needs of it now.
//
// It always calls the token, even one hsm marked unhealthy: the call is
// what rebuilds the token once its backoff has passed.
func (x *ExternalKeys) Check(ctx context.Context) error {
	probe := make([]byte, 32)
	if _, err := rand.Read(probe); err != nil {
		return err
	}
	aad := []byte("hsmkms XKS proxy health check")
	ref := hsm.SecretKeyByID(healthCheckKeyID)
	iv, sealed, err := x.tok.EncryptGCM(ctx, ref, probe, aad)
	if err != nil {
		return classify(err)
	}
	back, err := x.tok.DecryptGCM(ctx, ref, iv, sealed, aad)
	if err != nil {
		return classify(err)
	}
	if subtle.ConstantTimeCompare(back, probe) != 1 {
		return errors.New("keystore: the health check key decrypted to something else")
	}
	return nil
}
