package kms

import (
	"context"
	"crypto"
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

// encryptionKey resolves and authorizes keyID for an operation that
// encrypts under it with alg ("" meaning SYMMETRIC_DEFAULT, as AWS
// defaults it) and returns the algorithm to use.
func (s *Service) encryptionKey(ctx context.Context, r *Request, keyID, alg string, a access) (*store.Key, string, error) {
	k, err := s.usableKey(ctx, r, keyID, usageEncrypt, a)
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
func (s *Service) encrypt(ctx context.Context, r *Request, k *store.Key, alg string, plaintext []byte, ec map[string]string) ([]byte, string, error) {
	if alg == algSymmetric {
		return s.seal(ctx, r, k, plaintext, ec)
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
		return nil, "", wire.Errorf(wire.Validation, "Algorithm %s and key spec %s cannot encrypt data larger than %d bytes.", alg, k.KeySpec, max)
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
// blob and the material's id. A key of an external key store encrypts
// twice (sealXKS).
func (s *Service) seal(ctx context.Context, r *Request, k *store.Key, plaintext []byte, ec map[string]string) ([]byte, string, error) {
	if k.Origin == originXKS {
		return s.sealXKS(ctx, r, k, plaintext, ec)
	}
	tok, err := s.token(k)
	if err != nil {
		return nil, "", err
	}
	m := k.Materials[currentIndex(k)]
	idBytes, mrk, ok := keyIDBytes(k.ID)
	matID, err := hex.DecodeString(m.ID)
	if !ok || err != nil || len(matID) != materialIDSize {
		return nil, "", internalf("key %s has a malformed id or material id", arnOf(k))
	}
	header := appendBlobHeader(nil, k.Account, k.Region, idBytes, mrk, matID)
	iv, sealed, err := tok.EncryptGCM(ctx, material(k, m), plaintext, additionalData(header, ec))
	if err != nil {
		return nil, "", tokenError(err, tokenCall{key: k})
	}
	return marshalBlob(header, iv, sealed), m.ID, nil
}

// sealed is a ciphertext whose key has been resolved and authorized:
// what decrypt needs, once the request may proceed.
type sealed struct {
	key *store.Key
	alg string
	// Symmetric: the parsed blob and the material it names.
	blob     *blob
	material *store.Material
	// RSA: the ciphertext and its OAEP hash.
	ciphertext []byte
	hash       crypto.Hash
	ec         map[string]string
}

// opened is a decrypted ciphertext and what it was made with.
type opened struct {
	key        *store.Key
	plaintext  []byte
	alg        string
	materialID string // symmetric keys only
}

// ciphertextKey resolves and authorizes the key of a ciphertext, without
// decrypting it. keyID, if given, must name the key it was made under; for
// RSA keys it and alg are required, as AWS requires them. A named key that
// cannot have made the ciphertext (another key, or one whose usage is not
// encryption) is IncorrectKeyException, as AWS answers on the decrypting
// side, where the encrypting side says InvalidKeyUsageException. Every
// failure to authenticate looks the same to the client:
// InvalidCiphertextException, with no hint of which part was wrong.
func (s *Service) ciphertextKey(ctx context.Context, r *Request, ciphertext []byte, keyID, alg string, ec map[string]string, a access) (*sealed, error) {
	var named *store.Key
	if keyID != "" {
		k, err := s.usableKey(ctx, r, keyID, "", a)
		if err != nil {
			return nil, err
		}
		if k.KeyUsage != usageEncrypt {
			return nil, incorrectKey()
		}
		if keySpecs[k.KeySpec].asymmetric() {
			return rsaCiphertext(k, ciphertext, alg, ec)
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
	var b *blob
	var err error
	if len(ciphertext) > 0 && ciphertext[0] == xksBlobVersion {
		b, err = parseXKSBlob(ciphertext)
	} else {
		b, err = parseBlob(ciphertext)
	}
	if err != nil {
		return nil, invalidCiphertext()
	}
	blobKey := formatKeyID(b.KeyID, b.multiRegion)
	// A multi-Region key's ciphertext is decrypted by the key of its set
	// in the caller's Region; any other names its key's Region.
	keyRegion := b.Region
	if b.multiRegion {
		keyRegion = r.Caller.Region
	}
	k := named
	if k != nil {
		if k.ID != blobKey || k.Account != b.Account || k.Region != keyRegion {
			return nil, incorrectKey()
		}
	} else {
		if keyRegion != r.Caller.Region {
			return nil, invalidCiphertext()
		}
		// The blob names its key's account: another account's key is
		// looked up (and authorized) as if named by its ARN.
		k, err = s.usableKey(ctx, r, keyARN(keyRegion, b.Account, blobKey), "", a)
		if err != nil {
			var we *wire.Error
			if errors.As(err, &we) && we.Type == wire.NotFound {
				return nil, invalidCiphertext()
			}
			return nil, err
		}
		if k.KeyUsage != usageEncrypt || keySpecs[k.KeySpec].asymmetric() {
			return nil, invalidCiphertext() // no key of hsmkms's made this blob
		}
	}
	if (b.xks != nil) != (k.Origin == originXKS) {
		// A key of an external key store makes only double-encrypted
		// blobs, and no other key makes one.
		return nil, invalidCiphertext()
	}
	want := hexID(b.MaterialID)
	for i := range k.Materials {
		if k.Materials[i].ID == want {
			if !hasMaterial(k.Materials[i]) {
				// Deleted or expired from this key (which is then
				// PendingImport); another key of its multi-Region set
				// may hold it still.
				return nil, invalidState(arnOf(k), StatePendingImport)
			}
			return &sealed{key: k, alg: algSymmetric, blob: b, material: &k.Materials[i], ec: ec}, nil
		}
	}
	return nil, invalidCiphertext()
}

// rsaCiphertext checks an RSAES-OAEP ciphertext request against k.
func rsaCiphertext(k *store.Key, ciphertext []byte, alg string, ec map[string]string) (*sealed, error) {
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
	return &sealed{key: k, alg: alg, ciphertext: ciphertext, hash: h}, nil
}

// decrypt decrypts on the token what ciphertextKey resolved.
func (s *Service) decrypt(ctx context.Context, r *Request, in *sealed) (*opened, error) {
	k := in.key
	tok, err := s.token(k)
	if err != nil {
		return nil, err
	}
	var plain []byte
	if in.blob != nil && in.blob.xks != nil {
		plain, err = s.openXKS(ctx, r, tok, k, *in.material, in.blob, in.ec)
		if err != nil {
			return nil, err
		}
	} else if in.blob != nil {
		plain, err = tok.DecryptGCM(ctx, material(k, *in.material), in.blob.IV, in.blob.Sealed, additionalData(in.blob.header, in.ec))
	} else {
		plain, err = tok.DecryptOAEP(ctx, currentMaterial(k), in.hash, in.ciphertext)
	}
	if err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	o := &opened{key: k, plaintext: plain, alg: in.alg}
	if in.material != nil {
		o.materialID = in.material.ID
	}
	return o, nil
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

func invalidCiphertext() error { return &wire.Error{Type: wire.InvalidCiphertext, Message: ""} }

func incorrectKey() error {
	return wire.Errorf(wire.IncorrectKey, "The key ID in the request does not identify a CMK that can perform this operation.")
}

type EncryptInput struct {
	KeyId               string
	Plaintext           []byte
	EncryptionContext   map[string]string
	EncryptionAlgorithm string
	GrantTokensField
	DryRunField
}

type EncryptOutput struct {
	CiphertextBlob      []byte
	EncryptionAlgorithm string
	KeyId               string
}

func (s *Service) Encrypt(ctx context.Context, r *Request, in *EncryptInput) (*EncryptOutput, error) {
	a := cryptoAccess("", in.EncryptionContext, in.EncryptionAlgorithm)
	k, alg, err := s.encryptionKey(ctx, r, in.KeyId, in.EncryptionAlgorithm, a)
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	blob, material, err := s.encrypt(ctx, r, k, alg, in.Plaintext, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	r.usedMaterial(material)
	return &EncryptOutput{CiphertextBlob: blob, EncryptionAlgorithm: alg, KeyId: arnOf(k)}, nil
}

type DecryptInput struct {
	CiphertextBlob      []byte
	EncryptionContext   map[string]string
	EncryptionAlgorithm string
	KeyId               string
	Recipient           *struct{}
	GrantTokensField
	DryRunField
}

type DecryptOutput struct {
	EncryptionAlgorithm string
	KeyId               string
	KeyMaterialId       string `json:"KeyMaterialId,omitempty"`
	Plaintext           []byte
}

func (s *Service) Decrypt(ctx context.Context, r *Request, in *DecryptInput) (*DecryptOutput, error) {
	if in.Recipient != nil {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Recipient (Nitro Enclaves attestation) is not supported by hsmkms.")
	}
	a := cryptoAccess("", in.EncryptionContext, in.EncryptionAlgorithm)
	sl, err := s.ciphertextKey(ctx, r, in.CiphertextBlob, in.KeyId, in.EncryptionAlgorithm, in.EncryptionContext, a)
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	o, err := s.decrypt(ctx, r, sl)
	if err != nil {
		return nil, err
	}
	r.usedMaterial(o.materialID)
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
	GrantTokensField
	DryRunField
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

// ReEncrypt authorizes each side as its own action with its own context,
// both before anything is decrypted.
func (s *Service) ReEncrypt(ctx context.Context, r *Request, in *ReEncryptInput) (*ReEncryptOutput, error) {
	from := cryptoAccess("kms:ReEncryptFrom", in.SourceEncryptionContext, in.SourceEncryptionAlgorithm)
	sl, err := s.ciphertextKey(ctx, r, in.CiphertextBlob, in.SourceKeyId, in.SourceEncryptionAlgorithm, in.SourceEncryptionContext, from)
	if err != nil {
		return nil, err
	}
	to := cryptoAccess("kms:ReEncryptTo", in.DestinationEncryptionContext, in.DestinationEncryptionAlgorithm)
	dst, alg, err := s.encryptionKey(ctx, r, in.DestinationKeyId, in.DestinationEncryptionAlgorithm, to)
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	src, err := s.decrypt(ctx, r, sl)
	if err != nil {
		return nil, err
	}
	defer clear(src.plaintext)
	blob, material, err := s.encrypt(ctx, r, dst, alg, src.plaintext, in.DestinationEncryptionContext)
	if err != nil {
		return nil, err
	}
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
	Recipient         *struct{}
	GrantTokensField
	DryRunField
}

type GenerateDataKeyOutput struct {
	CiphertextBlob []byte
	KeyId          string
	KeyMaterialId  string
	Plaintext      []byte `json:"Plaintext,omitempty"`
}

func (s *Service) GenerateDataKey(ctx context.Context, r *Request, in *GenerateDataKeyInput) (*GenerateDataKeyOutput, error) {
	return s.generateDataKey(ctx, r, in, true)
}

func (s *Service) GenerateDataKeyWithoutPlaintext(ctx context.Context, r *Request, in *GenerateDataKeyInput) (*GenerateDataKeyOutput, error) {
	return s.generateDataKey(ctx, r, in, false)
}

func (s *Service) generateDataKey(ctx context.Context, r *Request, in *GenerateDataKeyInput, withPlaintext bool) (*GenerateDataKeyOutput, error) {
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
	a := cryptoAccess("", in.EncryptionContext, algSymmetric)
	k, _, err := s.encryptionKey(ctx, r, in.KeyId, algSymmetric, a)
	if err != nil {
		return nil, err
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	tok, err := s.token(k)
	if err != nil {
		return nil, err
	}
	plain, err := tok.GenerateRandom(ctx, n)
	if err != nil {
		return nil, tokenError(err, tokenCall{key: k})
	}
	blob, material, err := s.seal(ctx, r, k, plain, in.EncryptionContext)
	if err != nil {
		clear(plain)
		return nil, err
	}
	r.usedMaterial(material)
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

func (s *Service) GenerateRandom(ctx context.Context, r *Request, in *GenerateRandomInput) (*GenerateRandomOutput, error) {
	if in.Recipient != nil {
		return nil, wire.Errorf(wire.UnsupportedOperation, "Recipient (Nitro Enclaves attestation) is not supported by hsmkms.")
	}
	// Optional in the model, required by the operation: a fault of the
	// request alone, refused before the key store is looked up. (0 is
	// below the model's minimum, so wire has refused an explicit 0.)
	if in.NumberOfBytes == 0 {
		return nil, wire.Errorf(wire.Validation, "NumberOfBytes is required.")
	}
	ks := s.keystores.Default()
	if in.CustomKeyStoreId != "" {
		_, live, err := s.keyStore(ctx, r, in.CustomKeyStoreId)
		if err != nil {
			return nil, err
		}
		if live == nil {
			// AWS: "External key store IDs are not valid for this
			// parameter" (GenerateRandom, CustomKeyStoreId).
			return nil, wire.Errorf(wire.UnsupportedOperation, "GenerateRandom does not take the ID of an external key store: %s.", in.CustomKeyStoreId)
		}
		if st, _ := live.State(); st != keystore.Connected {
			return nil, keyStoreInvalidState(in.CustomKeyStoreId, st, "CONNECTED")
		}
		ks = live
	}
	if err := r.proceed(); err != nil {
		return nil, err
	}
	b, err := ks.GenerateRandom(ctx, in.NumberOfBytes)
	if err != nil {
		return nil, tokenError(err, tokenCall{storeID: in.CustomKeyStoreId})
	}
	return &GenerateRandomOutput{Plaintext: b}, nil
}
