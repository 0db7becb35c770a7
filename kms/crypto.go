package kms

import (
	"context"
	"encoding/hex"
	"errors"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

func hexID(b []byte) string { return hex.EncodeToString(b) }

// cryptoKey resolves keyID for a cryptographic operation and checks that
// the key may do symmetric encryption now.
func (s *Service) cryptoKey(ctx context.Context, c *wire.Call, keyID, alg string) (*store.Key, error) {
	k, err := s.lookupKey(ctx, c, keyID, true)
	if err != nil {
		return nil, err
	}
	if k.CustomKeyStoreID != "" && k.State != string(StatePendingDeletion) && !s.storeConnected(k.CustomKeyStoreID) {
		return nil, invalidState(arnOf(k), StateUnavailable)
	}
	if err := checkState(k, classCrypto); err != nil {
		return nil, err
	}
	if k.KeyUsage != usageEncrypt {
		return nil, wire.Errorf(wire.InvalidKeyUsage, "%s key usage is %s which is not valid for this operation.", arnOf(k), k.KeyUsage)
	}
	if alg != "" && alg != algSymmetric {
		return nil, wire.Errorf(wire.InvalidKeyUsage, "%s is not a supported encryption algorithm for %s.", alg, arnOf(k))
	}
	return k, nil
}

// seal encrypts plaintext under k's current material.
func (s *Service) seal(ctx context.Context, c *wire.Call, k *store.Key, plaintext []byte, ec map[string]string) ([]byte, error) {
	tok, err := s.token(k)
	if err != nil {
		return nil, err
	}
	m := k.Materials[len(k.Materials)-1]
	uuid, _ := parseUUID(k.ID)
	matID, err := hex.DecodeString(m.ID)
	if err != nil || len(matID) != materialIDSize {
		return nil, internalf("key %s has a malformed material id", arnOf(k))
	}
	header := appendBlobHeader(nil, k.Account, k.Region, uuid, matID)
	iv, sealed, err := tok.EncryptGCM(ctx, hsm.SecretKeyByID(m.TokenID), plaintext, additionalData(header, ec))
	if err != nil {
		return nil, tokenError(k, err)
	}
	out := make([]byte, 0, len(header)+len(iv)+len(sealed))
	out = append(append(append(out, header...), iv...), sealed...)
	return out, nil
}

// open decrypts a ciphertext blob. keyID, if given, must name the key the
// blob was made under. Every failure to authenticate looks the same to the
// client: InvalidCiphertextException, with no hint of which part was wrong.
func (s *Service) open(ctx context.Context, c *wire.Call, ciphertext []byte, keyID, alg string, ec map[string]string) (*store.Key, []byte, error) {
	b, err := parseBlob(ciphertext)
	if err != nil {
		if keyID != "" { // a named key that does not exist is still NotFound
			if _, kerr := s.cryptoKey(ctx, c, keyID, alg); kerr != nil {
				return nil, nil, kerr
			}
		}
		return nil, nil, invalidCiphertext()
	}
	blobKey := formatUUID(b.KeyID)
	var k *store.Key
	if keyID != "" {
		k, err = s.cryptoKey(ctx, c, keyID, alg)
		if err != nil {
			return nil, nil, err
		}
		if k.ID != blobKey || k.Account != b.Account || k.Region != b.Region {
			return nil, nil, wire.Errorf(wire.IncorrectKey, "The key ID in the request does not identify a CMK that can perform this operation.")
		}
	} else {
		if b.Account != c.Caller.Account || b.Region != c.Caller.Region {
			return nil, nil, invalidCiphertext()
		}
		k, err = s.cryptoKey(ctx, c, blobKey, alg)
		if err != nil {
			var we *wire.Error
			if errors.As(err, &we) && we.Type == wire.NotFound {
				return nil, nil, invalidCiphertext()
			}
			return nil, nil, err
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
		return nil, nil, invalidCiphertext()
	}
	tok, err := s.token(k)
	if err != nil {
		return nil, nil, err
	}
	plain, err := tok.DecryptGCM(ctx, hsm.SecretKeyByID(m.TokenID), b.IV, b.Sealed, additionalData(b.header, ec))
	if errors.Is(err, hsm.ErrInvalidCiphertext) {
		return nil, nil, invalidCiphertext()
	}
	if err != nil {
		return nil, nil, tokenError(k, err)
	}
	return k, plain, nil
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
	k, err := s.cryptoKey(ctx, c, in.KeyId, in.EncryptionAlgorithm)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, err := s.seal(ctx, c, k, in.Plaintext, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	return &EncryptOutput{CiphertextBlob: blob, EncryptionAlgorithm: algSymmetric, KeyId: arnOf(k)}, nil
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
	Plaintext           []byte
}

func (s *Service) Decrypt(ctx context.Context, c *wire.Call, in *DecryptInput) (*DecryptOutput, error) {
	if in.Recipient != nil {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Recipient (Nitro Enclaves attestation) is not supported by hsmkms.")
	}
	k, plain, err := s.open(ctx, c, in.CiphertextBlob, in.KeyId, in.EncryptionAlgorithm, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	return &DecryptOutput{EncryptionAlgorithm: algSymmetric, KeyId: arnOf(k), Plaintext: plain}, nil
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
	KeyId                          string
	SourceEncryptionAlgorithm      string
	SourceKeyId                    string
}

func (s *Service) ReEncrypt(ctx context.Context, c *wire.Call, in *ReEncryptInput) (*ReEncryptOutput, error) {
	src, plain, err := s.open(ctx, c, in.CiphertextBlob, in.SourceKeyId, in.SourceEncryptionAlgorithm, in.SourceEncryptionContext)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	dst, err := s.cryptoKey(ctx, c, in.DestinationKeyId, in.DestinationEncryptionAlgorithm)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, err := s.seal(ctx, c, dst, plain, in.DestinationEncryptionContext)
	if err != nil {
		return nil, err
	}
	c.KeyARN = arnOf(dst)
	return &ReEncryptOutput{
		CiphertextBlob: blob, DestinationEncryptionAlgorithm: algSymmetric, KeyId: arnOf(dst),
		SourceEncryptionAlgorithm: algSymmetric, SourceKeyId: arnOf(src),
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
	k, err := s.cryptoKey(ctx, c, in.KeyId, "")
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	tok, err := s.token(k)
	if err != nil {
		return nil, err
	}
	plain, err := tok.GenerateRandom(ctx, n)
	if err != nil {
		return nil, tokenError(k, err)
	}
	blob, err := s.seal(ctx, c, k, plain, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	out := &GenerateDataKeyOutput{CiphertextBlob: blob, KeyId: arnOf(k)}
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
	tok, err := ks.Token()
	if err != nil && in.CustomKeyStoreId != "" {
		return nil, keyStoreInvalidState(in.CustomKeyStoreId, keystore.Disconnected, "CONNECTED")
	} else if err != nil {
		return nil, err
	}
	b, err := tok.GenerateRandom(ctx, in.NumberOfBytes)
	if err != nil {
		return nil, err
	}
	return &GenerateRandomOutput{Plaintext: b}, nil
}
