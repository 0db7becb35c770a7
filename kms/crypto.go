package kms

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"slices"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

func hexID(b []byte) string { return hex.EncodeToString(b) }

// encryptionKey resolves keyID for an operation that encrypts under it
// with alg ("" meaning SYMMETRIC_DEFAULT, as AWS defaults it) and returns
// the algorithm to use.
func (s *Service) encryptionKey(ctx context.Context, c *wire.Call, keyID, alg string) (*store.Key, string, error) {
	k, err := s.usableKey(ctx, c, keyID, usageEncrypt)
	if err != nil {
		return nil, "", err
	}
	if alg == "" {
		alg = algSymmetric
	}
	if !slices.Contains(keySpecs[k.KeySpec].encrypt, alg) {
		return nil, "", incompatible(alg, k)
	}
	return k, alg, nil
}

// encrypt encrypts plaintext under k with alg (already checked against the
// key's spec) and returns the ciphertext and, for symmetric keys, the
// material version used.
func (s *Service) encrypt(ctx context.Context, c *wire.Call, k *store.Key, alg string, plaintext []byte, ec map[string]string) ([]byte, string, error) {
	if alg == algSymmetric {
		return s.seal(ctx, c, k, plaintext, ec)
	}
	if len(ec) > 0 {
		return nil, "", asymmetricContext()
	}
	pub, err := s.rsaPublicKey(ctx, k)
	if err != nil {
		return nil, "", err
	}
	h := oaepHashes[alg]
	if max := pub.Size() - 2*h.Size() - 2; len(plaintext) > max {
		return nil, "", wire.Errorf(wire.Validation, "Plaintext is too long: %s with %s encrypts at most %d bytes.", k.KeySpec, alg, max)
	}
	// Encryption needs only the public key, which is public: Go does it,
	// as any holder of GetPublicKey's output could.
	out, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, plaintext, nil)
	if err != nil {
		return nil, "", internalf("RSA encryption under %s: %w", arnOf(k), err)
	}
	return out, "", nil
}

func asymmetricContext() error {
	return wire.Errorf(wire.Validation, "EncryptionContext is not supported with asymmetric KMS keys.")
}

// seal encrypts plaintext under k's current material and returns the
// blob and the material's id.
func (s *Service) seal(ctx context.Context, c *wire.Call, k *store.Key, plaintext []byte, ec map[string]string) ([]byte, string, error) {
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
	header := appendBlobHeader(nil, k.Account, k.Region, uuid, matID)
	iv, sealed, err := tok.EncryptGCM(ctx, material(k, m), plaintext, additionalData(header, ec))
	if err != nil {
		return nil, "", tokenError(err, tokenCall{key: k})
	}
	out := make([]byte, 0, len(header)+len(iv)+len(sealed))
	out = append(append(append(out, header...), iv...), sealed...)
	return out, m.ID, nil
}

// opened is a decrypted ciphertext and what it was made with.
type opened struct {
	key        *store.Key
	plaintext  []byte
	alg        string
	materialID string // symmetric keys only
}

// open decrypts ciphertext. keyID, if given, must name the key it was made
// under; for RSA keys it and alg are required, as AWS requires them. Every
// failure to authenticate looks the same to the client:
// InvalidCiphertextException, with no hint of which part was wrong.
func (s *Service) open(ctx context.Context, c *wire.Call, ciphertext []byte, keyID, alg string, ec map[string]string) (*opened, error) {
	var named *store.Key
	if keyID != "" {
		k, err := s.usableKey(ctx, c, keyID, usageEncrypt)
		if err != nil {
			return nil, err
		}
		if keySpecs[k.KeySpec].asymmetric() {
			return s.openRSA(ctx, k, ciphertext, alg, ec)
		}
		named = k
	}
	if alg != "" && alg != algSymmetric {
		if named != nil {
			return nil, incompatible(alg, named)
		}
		// No key named: an RSA ciphertext carries no key id to find it by.
		return nil, invalidCiphertext()
	}
	b, err := parseBlob(ciphertext)
	if err != nil {
		return nil, invalidCiphertext()
	}
	blobKey := formatUUID(b.KeyID)
	k := named
	if k != nil {
		if k.ID != blobKey || k.Account != b.Account || k.Region != b.Region {
			return nil, wire.Errorf(wire.IncorrectKey, "The key ID in the request does not identify a CMK that can perform this operation.")
		}
	} else {
		if b.Region != c.Caller.Region {
			return nil, invalidCiphertext()
		}
		// The blob names its key's account: another account's key is
		// looked up (and authorized) as if named by its ARN.
		k, err = s.usableKey(ctx, c, keyARN(b.Region, b.Account, blobKey), usageEncrypt)
		if err != nil {
			var we *wire.Error
			if errors.As(err, &we) && we.Type == wire.NotFound {
				return nil, invalidCiphertext()
			}
			return nil, err
		}
		if keySpecs[k.KeySpec].asymmetric() {
			return nil, invalidCiphertext()
		}
	}
	var m *store.Material
	want := hexID(b.MaterialID)
	for i := range k.Materials {
		if k.Materials[i].ID == want {
			m = &k.Materials[i]
		}
	}
	if m == nil {
		return nil, invalidCiphertext()
	}
	tok, err := s.token(k)
	if err != nil {
		return nil, err
	}
	plain, err := tok.DecryptGCM(ctx, material(k, *m), b.IV, b.Sealed, additionalData(b.header, ec))
	if err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	return &opened{key: k, plaintext: plain, alg: algSymmetric, materialID: m.ID}, nil
}

// openRSA decrypts RSAES-OAEP ciphertext with k's private key, on the token.
func (s *Service) openRSA(ctx context.Context, k *store.Key, ciphertext []byte, alg string, ec map[string]string) (*opened, error) {
	if alg == "" {
		alg = algSymmetric
	}
	h, ok := oaepHashes[alg]
	if !ok {
		return nil, incompatible(alg, k)
	}
	if len(ec) > 0 {
		return nil, asymmetricContext()
	}
	tok, err := s.token(k)
	if err != nil {
		return nil, err
	}
	plain, err := tok.DecryptOAEP(ctx, currentMaterial(k), h, ciphertext)
	if err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	return &opened{key: k, plaintext: plain, alg: alg}, nil
}

// rsaPublicKey is k's RSA public key, read from the token once.
func (s *Service) rsaPublicKey(ctx context.Context, k *store.Key) (*rsa.PublicKey, error) {
	der, err := s.publicKeyDER(ctx, k)
	if err != nil {
		return nil, err
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, internalf("public key of %s: %w", arnOf(k), err)
	}
	rpub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, internalf("public key of %s is not RSA", arnOf(k))
	}
	return rpub, nil
}

// publicKeyDER is k's public key as DER SubjectPublicKeyInfo (read from the
// token once: the key store caches public keys).
func (s *Service) publicKeyDER(ctx context.Context, k *store.Key) ([]byte, error) {
	tok, err := s.token(k)
	if err != nil {
		return nil, err
	}
	der, err := tok.PublicKey(ctx, currentMaterial(k))
	if err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	return der, nil
}

// setCryptoConditions records the condition keys of an operation that
// encrypts or decrypts: the encryption context and the algorithm (AWS's
// default when the request names none).
func setCryptoConditions(c *wire.Call, ec map[string]string, alg string) {
	if alg == "" {
		alg = algSymmetric
	}
	setEncryptionContext(c, ec)
	setCondition(c, "kms:EncryptionAlgorithm", alg)
}

func invalidCiphertext() error { return &wire.Error{Type: wire.InvalidCiphertext, Message: ""} }

type EncryptInput struct {
	KeyId               string
	Plaintext           []byte
	EncryptionContext   map[string]string
	EncryptionAlgorithm string
	GrantTokens         []string
	DryRun              bool
}

type EncryptOutput struct {
	CiphertextBlob      []byte
	EncryptionAlgorithm string
	KeyId               string
}

func (s *Service) Encrypt(ctx context.Context, c *wire.Call, in *EncryptInput) (*EncryptOutput, error) {
	c.GrantTokens = in.GrantTokens
	setCryptoConditions(c, in.EncryptionContext, in.EncryptionAlgorithm)
	k, alg, err := s.encryptionKey(ctx, c, in.KeyId, in.EncryptionAlgorithm)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, _, err := s.encrypt(ctx, c, k, alg, in.Plaintext, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	return &EncryptOutput{CiphertextBlob: blob, EncryptionAlgorithm: alg, KeyId: arnOf(k)}, nil
}

func dryRun() error {
	return wire.Errorf(wire.DryRunOperation, "The request would have succeeded, but the DryRun option is set.")
}

type DecryptInput struct {
	CiphertextBlob      []byte
	EncryptionContext   map[string]string
	EncryptionAlgorithm string
	KeyId               string
	GrantTokens         []string
	Recipient           *struct{}
	DryRun              bool
}

type DecryptOutput struct {
	EncryptionAlgorithm string
	KeyId               string
	KeyMaterialId       string `json:"KeyMaterialId,omitempty"`
	Plaintext           []byte
}

func (s *Service) Decrypt(ctx context.Context, c *wire.Call, in *DecryptInput) (*DecryptOutput, error) {
	if in.Recipient != nil {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Recipient (Nitro Enclaves attestation) is not supported by hsmkms.")
	}
	c.GrantTokens = in.GrantTokens
	setCryptoConditions(c, in.EncryptionContext, in.EncryptionAlgorithm)
	o, err := s.open(ctx, c, in.CiphertextBlob, in.KeyId, in.EncryptionAlgorithm, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		clear(o.plaintext)
		return nil, dryRun()
	}
	return &DecryptOutput{EncryptionAlgorithm: o.alg, KeyId: arnOf(o.key), KeyMaterialId: o.materialID, Plaintext: o.plaintext}, nil
}

type ReEncryptInput struct {
	CiphertextBlob                 []byte
	SourceEncryptionContext        map[string]string
	SourceKeyId                    string
	DestinationKeyId               string
	DestinationEncryptionContext   map[string]string
	SourceEncryptionAlgorithm      string
	DestinationEncryptionAlgorithm string
	GrantTokens                    []string
	DryRun                         bool
}

type ReEncryptOutput struct {
	CiphertextBlob                 []byte
	DestinationEncryptionAlgorithm string
	DestinationKeyMaterialId       string `json:"DestinationKeyMaterialId,omitempty"`
	KeyId                          string
	SourceEncryptionAlgorithm      string
	SourceKeyId                    string
	SourceKeyMaterialId            string `json:"SourceKeyMaterialId,omitempty"`
}

func (s *Service) ReEncrypt(ctx context.Context, c *wire.Call, in *ReEncryptInput) (*ReEncryptOutput, error) {
	// Each side is authorized as its own action, with its own context.
	c.Action, c.GrantTokens = "kms:ReEncryptFrom", in.GrantTokens
	setCryptoConditions(c, in.SourceEncryptionContext, in.SourceEncryptionAlgorithm)
	src, err := s.open(ctx, c, in.CiphertextBlob, in.SourceKeyId, in.SourceEncryptionAlgorithm, in.SourceEncryptionContext)
	if err != nil {
		return nil, err
	}
	defer clear(src.plaintext)
	c.Action, c.Conditions = "kms:ReEncryptTo", nil
	setCryptoConditions(c, in.DestinationEncryptionContext, in.DestinationEncryptionAlgorithm)
	dst, alg, err := s.encryptionKey(ctx, c, in.DestinationKeyId, in.DestinationEncryptionAlgorithm)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, material, err := s.encrypt(ctx, c, dst, alg, src.plaintext, in.DestinationEncryptionContext)
	if err != nil {
		return nil, err
	}
	c.KeyARN = arnOf(dst)
	return &ReEncryptOutput{
		CiphertextBlob: blob, DestinationEncryptionAlgorithm: alg, DestinationKeyMaterialId: material, KeyId: arnOf(dst),
		SourceEncryptionAlgorithm: src.alg, SourceKeyId: arnOf(src.key), SourceKeyMaterialId: src.materialID,
	}, nil
}

type GenerateDataKeyInput struct {
	KeyId             string
	EncryptionContext map[string]string
	NumberOfBytes     int
	KeySpec           string
	GrantTokens       []string
	Recipient         *struct{}
	DryRun            bool
}

type GenerateDataKeyOutput struct {
	CiphertextBlob []byte
	KeyId          string
	KeyMaterialId  string
	Plaintext      []byte `json:"Plaintext,omitempty"`
}

func (s *Service) GenerateDataKey(ctx context.Context, c *wire.Call, in *GenerateDataKeyInput) (*GenerateDataKeyOutput, error) {
	return s.generateDataKey(ctx, c, in, true)
}

func (s *Service) GenerateDataKeyWithoutPlaintext(ctx context.Context, c *wire.Call, in *GenerateDataKeyInput) (*GenerateDataKeyOutput, error) {
	return s.generateDataKey(ctx, c, in, false)
}

func (s *Service) generateDataKey(ctx context.Context, c *wire.Call, in *GenerateDataKeyInput, withPlaintext bool) (*GenerateDataKeyOutput, error) {
	if in.Recipient != nil {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Recipient (Nitro Enclaves attestation) is not supported by hsmkms.")
	}
	var n int
	switch {
	case in.KeySpec != "" && in.NumberOfBytes != 0:
		return nil, wire.Errorf(wire.Validation, "Please specify either number of bytes or key spec.")
	case in.KeySpec == "AES_256":
		n = 32
	case in.KeySpec == "AES_128":
		n = 16
	case in.NumberOfBytes != 0:
		n = in.NumberOfBytes
	default:
		return nil, wire.Errorf(wire.Validation, "Please specify either number of bytes or key spec.")
	}
	c.GrantTokens = in.GrantTokens
	setCryptoConditions(c, in.EncryptionContext, algSymmetric)
	k, _, err := s.encryptionKey(ctx, c, in.KeyId, algSymmetric)
	if err != nil {
		return nil, err
	}
	tok, err := s.tokenFor(k, in.DryRun)
	if err != nil {
		return nil, err
	}
	plain, err := tok.GenerateRandom(ctx, n)
	if err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	blob, material, err := s.seal(ctx, c, k, plain, in.EncryptionContext)
	if err != nil {
		clear(plain)
		return nil, err
	}
	out := &GenerateDataKeyOutput{CiphertextBlob: blob, KeyId: arnOf(k), KeyMaterialId: material}
	if withPlaintext {
		out.Plaintext = plain
	} else {
		clear(plain)
	}
	return out, nil
}

type GenerateRandomInput struct {
	NumberOfBytes    int
	CustomKeyStoreId string
	Recipient        *struct{}
}

type GenerateRandomOutput struct {
	Plaintext []byte
}

func (s *Service) GenerateRandom(ctx context.Context, c *wire.Call, in *GenerateRandomInput) (*GenerateRandomOutput, error) {
	if in.Recipient != nil {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Recipient (Nitro Enclaves attestation) is not supported by hsmkms.")
	}
	ks := s.keystores.Default()
	if in.CustomKeyStoreId != "" {
		_, live, err := s.keyStore(ctx, c, in.CustomKeyStoreId)
		if err != nil {
			return nil, err
		}
		if st, _ := live.State(); st != keystore.Connected {
			return nil, keyStoreInvalidState(in.CustomKeyStoreId, st, "CONNECTED")
		}
		ks = live
	}
	if in.NumberOfBytes == 0 {
		return nil, wire.Errorf(wire.Validation, "1 validation error detected: Value null at 'numberOfBytes' failed to satisfy constraint: Member must not be null")
	}
	b, err := ks.GenerateRandom(ctx, in.NumberOfBytes)
	if err != nil {
		return nil, tokenError(err, tokenCall{storeID: in.CustomKeyStoreId})
	}
	return &GenerateRandomOutput{Plaintext: b}, nil
}
