package kms_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// specUsages is AWS's table of which KeyUsage each KeySpec allows.
var specUsages = map[types.KeySpec][]types.KeyUsageType{
	types.KeySpecSymmetricDefault:    {types.KeyUsageTypeEncryptDecrypt},
	types.KeySpecRsa2048:             {types.KeyUsageTypeEncryptDecrypt, types.KeyUsageTypeSignVerify},
	types.KeySpecRsa3072:             {types.KeyUsageTypeEncryptDecrypt, types.KeyUsageTypeSignVerify},
	types.KeySpecRsa4096:             {types.KeyUsageTypeEncryptDecrypt, types.KeyUsageTypeSignVerify},
	types.KeySpecEccNistP256:         {types.KeyUsageTypeSignVerify, types.KeyUsageTypeKeyAgreement},
	types.KeySpecEccNistP384:         {types.KeyUsageTypeSignVerify, types.KeyUsageTypeKeyAgreement},
	types.KeySpecEccNistP521:         {types.KeyUsageTypeSignVerify, types.KeyUsageTypeKeyAgreement},
	types.KeySpecEccSecgP256k1:       {types.KeyUsageTypeSignVerify},
	types.KeySpecEccNistEdwards25519: {types.KeyUsageTypeSignVerify},
	types.KeySpecHmac224:             {types.KeyUsageTypeGenerateVerifyMac},
	types.KeySpecHmac256:             {types.KeyUsageTypeGenerateVerifyMac},
	types.KeySpecHmac384:             {types.KeyUsageTypeGenerateVerifyMac},
	types.KeySpecHmac512:             {types.KeyUsageTypeGenerateVerifyMac},
}

// signingAlgs is AWS's table of signing algorithms per KeySpec.
var signingAlgs = map[types.KeySpec][]types.SigningAlgorithmSpec{
	types.KeySpecRsa2048: rsaSigning, types.KeySpecRsa3072: rsaSigning, types.KeySpecRsa4096: rsaSigning,
	types.KeySpecEccNistP256:         {types.SigningAlgorithmSpecEcdsaSha256},
	types.KeySpecEccNistP384:         {types.SigningAlgorithmSpecEcdsaSha384},
	types.KeySpecEccNistP521:         {types.SigningAlgorithmSpecEcdsaSha512},
	types.KeySpecEccSecgP256k1:       {types.SigningAlgorithmSpecEcdsaSha256},
	types.KeySpecEccNistEdwards25519: {types.SigningAlgorithmSpecEd25519Sha512, types.SigningAlgorithmSpecEd25519PhSha512},
}

var rsaSigning = []types.SigningAlgorithmSpec{
	types.SigningAlgorithmSpecRsassaPssSha256, types.SigningAlgorithmSpecRsassaPssSha384, types.SigningAlgorithmSpecRsassaPssSha512,
	types.SigningAlgorithmSpecRsassaPkcs1V15Sha256, types.SigningAlgorithmSpecRsassaPkcs1V15Sha384, types.SigningAlgorithmSpecRsassaPkcs1V15Sha512,
}

// keys is a cache of keys by spec and usage within one env: RSA-4096
// generation is slow, and one key serves every algorithm.
type keys struct {
	e *env
	m map[string]string
}

func (k *keys) get(spec types.KeySpec, usage types.KeyUsageType) string {
	name := string(spec) + "/" + string(usage)
	if id, ok := k.m[name]; ok {
		return id
	}
	out, err := k.e.admin().CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
	require.NoError(k.e.t, err, name)
	k.m[name] = *out.KeyMetadata.KeyId
	return *out.KeyMetadata.KeyId
}

func TestKeySpecUsageMatrix(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	ks := &keys{e: e, m: map[string]string{}}
	// The model's enums (the SDK may know newer values the model refuses).
	specs := []types.KeySpec{types.KeySpecSm2, types.KeySpecMlDsa44, types.KeySpecMlDsa65, types.KeySpecMlDsa87}
	for spec := range specUsages {
		specs = append(specs, spec)
	}
	for _, spec := range specs {
		for _, usage := range []types.KeyUsageType{types.KeyUsageTypeEncryptDecrypt, types.KeyUsageTypeSignVerify,
			types.KeyUsageTypeGenerateVerifyMac, types.KeyUsageTypeKeyAgreement} {
			name := string(spec) + "/" + string(usage)
			allowed, known := specUsages[spec]
			if !known { // SM2, ML-DSA: no PKCS#11 2.40 mechanism
				_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
				require.Error(t, err, name)
				continue
			}
			if !slices.Contains(allowed, usage) {
				_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
				requireAPIError(t, err, "ValidationException", "KeyUsage "+string(usage)+" is not compatible with KeySpec "+string(spec))
				continue
			}
			d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(ks.get(spec, usage))})
			require.NoError(t, err, name)
			m := d.KeyMetadata
			assert.Equal(t, spec, m.KeySpec, name)
			assert.Equal(t, usage, m.KeyUsage, name)
			assert.Equal(t, types.KeyStateEnabled, m.KeyState, name)
			switch usage {
			case types.KeyUsageTypeSignVerify:
				assert.Equal(t, signingAlgs[spec], m.SigningAlgorithms, name)
				assert.Empty(t, m.EncryptionAlgorithms, name)
			case types.KeyUsageTypeEncryptDecrypt:
				assert.Empty(t, m.SigningAlgorithms, name)
				if spec == types.KeySpecSymmetricDefault {
					assert.Equal(t, []types.EncryptionAlgorithmSpec{"SYMMETRIC_DEFAULT"}, m.EncryptionAlgorithms, name)
				} else {
					assert.Equal(t, []types.EncryptionAlgorithmSpec{"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"}, m.EncryptionAlgorithms, name)
				}
			case types.KeyUsageTypeGenerateVerifyMac:
				assert.Equal(t, []types.MacAlgorithmSpec{types.MacAlgorithmSpec("HMAC_SHA_" + string(spec)[5:])}, m.MacAlgorithms, name)
			case types.KeyUsageTypeKeyAgreement:
				assert.Equal(t, []types.KeyAgreementAlgorithmSpec{types.KeyAgreementAlgorithmSpecEcdh}, m.KeyAgreementAlgorithms, name)
			}
			if spec == types.KeySpecSymmetricDefault {
				assert.Len(t, aws.ToString(m.CurrentKeyMaterialId), 64, name)
			} else {
				assert.Nil(t, m.CurrentKeyMaterialId, name)
			}
		}
	}
	// The deprecated parameter is accepted as AWS accepts it.
	testDeprecatedSpec(t, c)
}

//lint:file-ignore SA1019 testDeprecatedSpec exercises the deprecated CustomerMasterKeySpec on purpose.

func testDeprecatedSpec(t *testing.T, c *awskms.Client) {
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{CustomerMasterKeySpec: types.CustomerMasterKeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	assert.Equal(t, types.KeySpecEccNistP256, out.KeyMetadata.KeySpec)
	assert.Equal(t, types.CustomerMasterKeySpecEccNistP256, out.KeyMetadata.CustomerMasterKeySpec)
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{CustomerMasterKeySpec: types.CustomerMasterKeySpecEccNistP256, KeySpec: types.KeySpecEccNistP384, KeyUsage: types.KeyUsageTypeSignVerify})
	requireAPIError(t, err, "ValidationException", "")
}

func digest(h crypto.Hash, msg []byte) []byte {
	d := h.New()
	d.Write(msg)
	return d.Sum(nil)
}

var algHash = map[types.SigningAlgorithmSpec]crypto.Hash{
	types.SigningAlgorithmSpecRsassaPssSha256: crypto.SHA256, types.SigningAlgorithmSpecRsassaPssSha384: crypto.SHA384,
	types.SigningAlgorithmSpecRsassaPssSha512: crypto.SHA512, types.SigningAlgorithmSpecRsassaPkcs1V15Sha256: crypto.SHA256,
	types.SigningAlgorithmSpecRsassaPkcs1V15Sha384: crypto.SHA384, types.SigningAlgorithmSpecRsassaPkcs1V15Sha512: crypto.SHA512,
	types.SigningAlgorithmSpecEcdsaSha256: crypto.SHA256, types.SigningAlgorithmSpecEcdsaSha384: crypto.SHA384,
	types.SigningAlgorithmSpecEcdsaSha512: crypto.SHA512, types.SigningAlgorithmSpecEd25519Sha512: crypto.SHA512,
	types.SigningAlgorithmSpecEd25519PhSha512: crypto.SHA512,
}

// goVerify checks sig with Go's crypto and the exported public key.
func goVerify(t *testing.T, der []byte, alg types.SigningAlgorithmSpec, msg, sig []byte) bool {
	pub, err := x509.ParsePKIXPublicKey(der)
	require.NoError(t, err)
	h := algHash[alg]
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if bytes.HasPrefix([]byte(alg), []byte("RSASSA_PSS")) {
			return rsa.VerifyPSS(p, h, digest(h, msg), sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
		}
		return rsa.VerifyPKCS1v15(p, h, digest(h, msg), sig) == nil
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(p, digest(h, msg), sig)
	case ed25519.PublicKey:
		if alg == types.SigningAlgorithmSpecEd25519PhSha512 {
			return ed25519.VerifyWithOptions(p, digest(crypto.SHA512, msg), sig, &ed25519.Options{Hash: crypto.SHA512}) == nil
		}
		return ed25519.Verify(p, msg, sig)
	}
	t.Fatalf("unexpected public key %T", pub)
	return false
}

// opensslVerify checks an ECDSA signature (DER) over msg with openssl and
// the exported public key: the one tool that knows secp256k1.
func opensslVerify(t *testing.T, der []byte, msg, sig []byte) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{"pub.der": der, "msg": msg, "sig": sig} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o600))
	}
	out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", filepath.Join(dir, "pub.der"), "-keyform", "DER",
		"-signature", filepath.Join(dir, "sig"), filepath.Join(dir, "msg")).CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "Verified OK")
}

func TestSignVerifyMatrix(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	ks := &keys{e: e, m: map[string]string{}}
	msg := []byte("the message to sign")
	var allAlgs []types.SigningAlgorithmSpec
	for alg := range algHash {
		allAlgs = append(allAlgs, alg)
	}
	for spec, algs := range signingAlgs {
		id := ks.get(spec, types.KeyUsageTypeSignVerify)
		pk, err := c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &id})
		require.NoError(t, err)
		assert.Equal(t, spec, pk.KeySpec)
		assert.Equal(t, types.KeyUsageTypeSignVerify, pk.KeyUsage)
		assert.Equal(t, algs, pk.SigningAlgorithms)
		for _, alg := range allAlgs {
			name := string(spec) + "/" + string(alg)
			if !slices.Contains(algs, alg) {
				_, err := c.Sign(bg(), &awskms.SignInput{KeyId: &id, Message: msg, SigningAlgorithm: alg})
				requireAPIError(t, err, "InvalidKeyUsageException", "Algorithm "+string(alg)+" is incompatible with key spec "+string(spec)+".")
				continue
			}
			s, err := c.Sign(bg(), &awskms.SignInput{KeyId: &id, Message: msg, SigningAlgorithm: alg})
			if alg == types.SigningAlgorithmSpecEd25519PhSha512 && err != nil {
				// SoftHSM2 2.6.1 has no Ed25519ph (CKM_EDDSA with phFlag):
				// the token's answer, not a fake signature.
				requireAPIError(t, err, "UnsupportedOperationException", "ED25519_PH_SHA_512 is not supported by this key store's token.")
				continue
			}
			require.NoError(t, err, name)
			assert.Equal(t, arn(id), *s.KeyId)
			if spec == types.KeySpecEccSecgP256k1 {
				opensslVerify(t, pk.PublicKey, msg, s.Signature)
			} else {
				assert.True(t, goVerify(t, pk.PublicKey, alg, msg, s.Signature), name)
			}
			v, err := c.Verify(bg(), &awskms.VerifyInput{KeyId: &id, Message: msg, Signature: s.Signature, SigningAlgorithm: alg})
			require.NoError(t, err, name)
			assert.True(t, v.SignatureValid, name)

			bad := bytes.Clone(s.Signature)
			bad[len(bad)/2] ^= 1
			_, err = c.Verify(bg(), &awskms.VerifyInput{KeyId: &id, Message: msg, Signature: bad, SigningAlgorithm: alg})
			requireAPIError(t, err, "KMSInvalidSignatureException", "")
			_, err = c.Verify(bg(), &awskms.VerifyInput{KeyId: &id, Message: []byte("another message"), Signature: s.Signature, SigningAlgorithm: alg})
			requireAPIError(t, err, "KMSInvalidSignatureException", "")

			if alg == types.SigningAlgorithmSpecEd25519Sha512 {
				_, err = c.Sign(bg(), &awskms.SignInput{KeyId: &id, Message: digest(crypto.SHA512, msg), MessageType: types.MessageTypeDigest, SigningAlgorithm: alg})
				requireAPIError(t, err, "ValidationException", "")
				continue
			}
			// DIGEST: the same message hashed by the caller signs alike
			// and verifies either way.
			d := digest(algHash[alg], msg)
			sd, err := c.Sign(bg(), &awskms.SignInput{KeyId: &id, Message: d, MessageType: types.MessageTypeDigest, SigningAlgorithm: alg})
			require.NoError(t, err, name)
			if spec != types.KeySpecEccSecgP256k1 {
				assert.True(t, goVerify(t, pk.PublicKey, alg, msg, sd.Signature), name)
			}
			_, err = c.Verify(bg(), &awskms.VerifyInput{KeyId: &id, Message: msg, Signature: sd.Signature, SigningAlgorithm: alg})
			require.NoError(t, err, name)
			_, err = c.Verify(bg(), &awskms.VerifyInput{KeyId: &id, Message: d, MessageType: types.MessageTypeDigest, Signature: s.Signature, SigningAlgorithm: alg})
			require.NoError(t, err, name)
			_, err = c.Sign(bg(), &awskms.SignInput{KeyId: &id, Message: d[1:], MessageType: types.MessageTypeDigest, SigningAlgorithm: alg})
			requireAPIError(t, err, "ValidationException", "Digest is invalid length for algorithm "+string(alg)+".")
		}
	}
}

func TestWrongKeyUsage(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	ks := &keys{e: e, m: map[string]string{}}
	sym := ks.get(types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	ecc := ks.get(types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
	hmac := ks.get(types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac)

	_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &ecc, Plaintext: []byte("x")})
	requireAPIError(t, err, "InvalidKeyUsageException", arn(ecc)+" key usage is SIGN_VERIFY which is not valid for Encrypt.")
	_, err = c.Sign(bg(), &awskms.SignInput{KeyId: &sym, Message: []byte("x"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	requireAPIError(t, err, "InvalidKeyUsageException", arn(sym)+" key usage is ENCRYPT_DECRYPT which is not valid for Sign.")
	_, err = c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &ecc, Message: []byte("x"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	requireAPIError(t, err, "InvalidKeyUsageException", arn(ecc)+" key usage is SIGN_VERIFY which is not valid for GenerateMac.")
	_, err = c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &hmac, KeySpec: types.DataKeySpecAes256})
	requireAPIError(t, err, "InvalidKeyUsageException", arn(hmac)+" key usage is GENERATE_VERIFY_MAC which is not valid for GenerateDataKey.")
	_, err = c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &ecc, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: []byte{1}})
	requireAPIError(t, err, "InvalidKeyUsageException", arn(ecc)+" key usage is SIGN_VERIFY which is not valid for DeriveSharedSecret.")
	for _, id := range []string{sym, hmac} {
		_, err = c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &id})
		requireAPIError(t, err, "UnsupportedOperationException", "")
	}
	_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &sym, Plaintext: []byte("x"), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
	requireAPIError(t, err, "InvalidKeyUsageException", "Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SYMMETRIC_DEFAULT.")

	// A disabled asymmetric key signs nothing.
	_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &ecc})
	require.NoError(t, err)
	_, err = c.Sign(bg(), &awskms.SignInput{KeyId: &ecc, Message: []byte("x"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	requireAPIError(t, err, "DisabledException", arn(ecc)+" is disabled.")
	_, err = c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &ecc})
	requireAPIError(t, err, "DisabledException", arn(ecc)+" is disabled.")
}

func TestRSAEncryption(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	ks := &keys{e: e, m: map[string]string{}}
	sym := ks.get(types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	limits := map[types.KeySpec]map[types.EncryptionAlgorithmSpec]int{
		types.KeySpecRsa2048: {"RSAES_OAEP_SHA_1": 214, "RSAES_OAEP_SHA_256": 190},
		types.KeySpecRsa3072: {"RSAES_OAEP_SHA_1": 342, "RSAES_OAEP_SHA_256": 318},
		types.KeySpecRsa4096: {"RSAES_OAEP_SHA_1": 470, "RSAES_OAEP_SHA_256": 446},
	}
	hashes := map[types.EncryptionAlgorithmSpec]crypto.Hash{"RSAES_OAEP_SHA_1": crypto.SHA1, "RSAES_OAEP_SHA_256": crypto.SHA256}
	for spec, algs := range limits {
		id := ks.get(spec, types.KeyUsageTypeEncryptDecrypt)
		pk, err := c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &id})
		require.NoError(t, err)
		assert.Equal(t, []types.EncryptionAlgorithmSpec{"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"}, pk.EncryptionAlgorithms)
		pub, err := x509.ParsePKIXPublicKey(pk.PublicKey)
		require.NoError(t, err)
		for alg, max := range algs {
			name := string(spec) + "/" + string(alg)
			plain := make([]byte, max)
			rand.Read(plain)
			enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: plain, EncryptionAlgorithm: alg})
			require.NoError(t, err, name)
			assert.Equal(t, alg, enc.EncryptionAlgorithm)
			dec, err := c.Decrypt(bg(), &awskms.DecryptInput{KeyId: &id, CiphertextBlob: enc.CiphertextBlob, EncryptionAlgorithm: alg})
			require.NoError(t, err, name)
			assert.Equal(t, plain, dec.Plaintext, name)
			assert.Equal(t, alg, dec.EncryptionAlgorithm)
			assert.Nil(t, dec.KeyMaterialId)

			// Anyone with the public key can encrypt; only the token decrypts.
			h := hashes[alg]
			own, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub.(*rsa.PublicKey), []byte("from Go"), nil)
			require.NoError(t, err)
			dec, err = c.Decrypt(bg(), &awskms.DecryptInput{KeyId: &id, CiphertextBlob: own, EncryptionAlgorithm: alg})
			require.NoError(t, err, name)
			assert.Equal(t, []byte("from Go"), dec.Plaintext)

			_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: append(plain, 0), EncryptionAlgorithm: alg})
			requireAPIError(t, err, "ValidationException", fmt.Sprintf("Algorithm %s and key spec %s cannot encrypt data larger than %d bytes.", alg, spec, max))
			bad := bytes.Clone(enc.CiphertextBlob)
			bad[10] ^= 1
			_, err = c.Decrypt(bg(), &awskms.DecryptInput{KeyId: &id, CiphertextBlob: bad, EncryptionAlgorithm: alg})
			requireAPIError(t, err, "InvalidCiphertextException", "")
			_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionAlgorithm: alg})
			requireAPIError(t, err, "InvalidCiphertextException", "")
			_, err = c.Decrypt(bg(), &awskms.DecryptInput{KeyId: &id, CiphertextBlob: enc.CiphertextBlob})
			requireAPIError(t, err, "InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec "+string(spec)+".")
		}
		_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
		requireAPIError(t, err, "InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec "+string(spec)+".")
		_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x"), EncryptionAlgorithm: "RSAES_OAEP_SHA_1",
			EncryptionContext: map[string]string{"a": "b"}})
		requireAPIError(t, err, "ValidationException", "")

		// An RSA key does not rotate (UnsupportedOperationException, no
		// message), and its state is checked first.
		_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
		requireAPIErrorNoMessage(t, err, "UnsupportedOperationException")
		_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
		require.NoError(t, err)
		_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
		requireAPIError(t, err, "DisabledException", arn(id)+" is disabled.")
		_, err = c.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &id})
		require.NoError(t, err)
	}

	// ReEncrypt moves between symmetric and RSA keys both ways.
	rsaID := ks.get(types.KeySpecRsa2048, types.KeyUsageTypeEncryptDecrypt)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &sym, Plaintext: []byte("moving"), EncryptionContext: map[string]string{"k": "v"}})
	require.NoError(t, err)
	re, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: map[string]string{"k": "v"},
		DestinationKeyId: &rsaID, DestinationEncryptionAlgorithm: "RSAES_OAEP_SHA_256"})
	require.NoError(t, err)
	assert.Equal(t, types.EncryptionAlgorithmSpecSymmetricDefault, re.SourceEncryptionAlgorithm)
	assert.NotNil(t, re.SourceKeyMaterialId)
	assert.Nil(t, re.DestinationKeyMaterialId)
	back, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: re.CiphertextBlob, SourceKeyId: &rsaID, SourceEncryptionAlgorithm: "RSAES_OAEP_SHA_256",
		DestinationKeyId: &sym})
	require.NoError(t, err)
	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: back.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, []byte("moving"), dec.Plaintext)
	assert.Equal(t, aws.ToString(back.DestinationKeyMaterialId), aws.ToString(dec.KeyMaterialId))
}

func TestMAC(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	ks := &keys{e: e, m: map[string]string{}}
	msg := []byte("authenticate me")
	sizes := map[types.KeySpec]int{types.KeySpecHmac224: 28, types.KeySpecHmac256: 32, types.KeySpecHmac384: 48, types.KeySpecHmac512: 64}
	for spec, size := range sizes {
		id := ks.get(spec, types.KeyUsageTypeGenerateVerifyMac)
		alg := types.MacAlgorithmSpec("HMAC_SHA_" + string(spec)[5:])
		for _, other := range types.MacAlgorithmSpec("").Values() {
			if other != alg {
				_, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &id, Message: msg, MacAlgorithm: other})
				requireAPIError(t, err, "InvalidKeyUsageException", "Algorithm "+string(other)+" is incompatible with key spec "+string(spec)+".")
			}
		}
		out, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &id, Message: msg, MacAlgorithm: alg})
		require.NoError(t, err, spec)
		assert.Len(t, out.Mac, size)
		assert.Equal(t, alg, out.MacAlgorithm)
		again, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &id, Message: msg, MacAlgorithm: alg})
		require.NoError(t, err)
		assert.Equal(t, out.Mac, again.Mac, "HMAC is deterministic")
		v, err := c.VerifyMac(bg(), &awskms.VerifyMacInput{KeyId: &id, Message: msg, Mac: out.Mac, MacAlgorithm: alg})
		require.NoError(t, err)
		assert.True(t, v.MacValid)
		bad := bytes.Clone(out.Mac)
		bad[0] ^= 0x80
		_, err = c.VerifyMac(bg(), &awskms.VerifyMacInput{KeyId: &id, Message: msg, Mac: bad, MacAlgorithm: alg})
		requireAPIError(t, err, "KMSInvalidMacException", "")
		_, err = c.VerifyMac(bg(), &awskms.VerifyMacInput{KeyId: &id, Message: msg, Mac: out.Mac[:size-1], MacAlgorithm: alg})
		requireAPIError(t, err, "KMSInvalidMacException", "")
	}
	// Two keys of one spec give different MACs: the secret is the key's own.
	a := ks.get(types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac)
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
	require.NoError(t, err)
	m1, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: &a, Message: msg, MacAlgorithm: "HMAC_SHA_256"})
	require.NoError(t, err)
	m2, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: out.KeyMetadata.KeyId, Message: msg, MacAlgorithm: "HMAC_SHA_256"})
	require.NoError(t, err)
	assert.NotEqual(t, m1.Mac, m2.Mac)
}

func TestDeriveSharedSecret(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	ks := &keys{e: e, m: map[string]string{}}
	curves := map[types.KeySpec]ecdh.Curve{types.KeySpecEccNistP256: ecdh.P256(), types.KeySpecEccNistP384: ecdh.P384(), types.KeySpecEccNistP521: ecdh.P521()}
	for spec, curve := range curves {
		id := ks.get(spec, types.KeyUsageTypeKeyAgreement)
		pk, err := c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: &id})
		require.NoError(t, err)
		assert.Equal(t, []types.KeyAgreementAlgorithmSpec{types.KeyAgreementAlgorithmSpecEcdh}, pk.KeyAgreementAlgorithms)
		peer, err := curve.GenerateKey(rand.Reader)
		require.NoError(t, err)
		peerDER, err := x509.MarshalPKIXPublicKey(peer.PublicKey())
		require.NoError(t, err)
		out, err := c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &id, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: peerDER})
		require.NoError(t, err, spec)
		assert.Equal(t, types.OriginTypeAwsKms, out.KeyOrigin)

		kmsPub, err := x509.ParsePKIXPublicKey(pk.PublicKey)
		require.NoError(t, err)
		kmsECDH, err := kmsPub.(*ecdsa.PublicKey).ECDH()
		require.NoError(t, err)
		want, err := peer.ECDH(kmsECDH)
		require.NoError(t, err)
		assert.Equal(t, want, out.SharedSecret, spec)

		for _, bad := range [][]byte{{0x30, 0x00}, []byte("not a key"), pk.PublicKey[:len(pk.PublicKey)-1]} {
			_, err = c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &id, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: bad})
			requireAPIErrorNoMessage(t, err, "ValidationException")
		}
	}
	// A peer on another curve is refused before the token sees it.
	p256 := ks.get(types.KeySpecEccNistP256, types.KeyUsageTypeKeyAgreement)
	other, err := ecdh.P384().GenerateKey(rand.Reader)
	require.NoError(t, err)
	otherDER, err := x509.MarshalPKIXPublicKey(other.PublicKey())
	require.NoError(t, err)
	_, err = c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &p256, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: otherDER})
	requireAPIErrorNoMessage(t, err, "ValidationException")
	_, err = c.DeriveSharedSecret(bg(), &awskms.DeriveSharedSecretInput{KeyId: &p256, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: otherDER,
		Recipient: &types.RecipientInfo{AttestationDocument: []byte("doc"), KeyEncryptionAlgorithm: types.KeyEncryptionMechanismRsaesOaepSha256}})
	requireAPIError(t, err, "UnsupportedOperationException", "")
}

func TestGenerateDataKeyPair(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	ec := map[string]string{"purpose": "pairs"}
	for _, spec := range []types.DataKeyPairSpec{types.DataKeyPairSpecRsa2048, types.DataKeyPairSpecRsa3072, types.DataKeyPairSpecRsa4096,
		types.DataKeyPairSpecEccNistP256, types.DataKeyPairSpecEccNistP384, types.DataKeyPairSpecEccNistP521,
		types.DataKeyPairSpecEccSecgP256k1, types.DataKeyPairSpecEccNistEdwards25519, types.DataKeyPairSpecSm2} {
		if spec == types.DataKeyPairSpecSm2 {
			_, err := c.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: &id, KeyPairSpec: spec})
			requireAPIError(t, err, "UnsupportedOperationException", "")
			continue
		}
		out, err := c.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: &id, KeyPairSpec: spec, EncryptionContext: ec})
		require.NoError(t, err, spec)
		assert.Equal(t, spec, out.KeyPairSpec)
		assert.Equal(t, arn(id), *out.KeyId)
		assert.Len(t, aws.ToString(out.KeyMaterialId), 64)
		if spec == types.DataKeyPairSpecEccSecgP256k1 {
			// Go has no secp256k1: openssl checks the pair instead.
			msg := []byte("pair check")
			sig := opensslSign(t, out.PrivateKeyPlaintext, msg)
			opensslVerify(t, out.PublicKey, msg, sig)
		} else {
			priv, err := x509.ParsePKCS8PrivateKey(out.PrivateKeyPlaintext)
			require.NoError(t, err, spec)
			pub, err := x509.MarshalPKIXPublicKey(priv.(crypto.Signer).Public())
			require.NoError(t, err)
			assert.Equal(t, pub, out.PublicKey, spec)
		}
		dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: out.PrivateKeyCiphertextBlob, EncryptionContext: ec})
		require.NoError(t, err)
		assert.Equal(t, out.PrivateKeyPlaintext, dec.Plaintext)
		_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: out.PrivateKeyCiphertextBlob})
		requireAPIError(t, err, "InvalidCiphertextException", "")
	}
	wo, err := c.GenerateDataKeyPairWithoutPlaintext(bg(), &awskms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: &id, KeyPairSpec: types.DataKeyPairSpecEccNistP256})
	require.NoError(t, err)
	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: wo.PrivateKeyCiphertextBlob})
	require.NoError(t, err)
	priv, err := x509.ParsePKCS8PrivateKey(dec.Plaintext)
	require.NoError(t, err)
	pub, err := x509.MarshalPKIXPublicKey(priv.(*ecdsa.PrivateKey).Public())
	require.NoError(t, err)
	assert.Equal(t, pub, wo.PublicKey)

	// Two pairs are never the same.
	a, err := c.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: &id, KeyPairSpec: types.DataKeyPairSpecEccNistEdwards25519})
	require.NoError(t, err)
	b, err := c.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: &id, KeyPairSpec: types.DataKeyPairSpecEccNistEdwards25519})
	require.NoError(t, err)
	assert.NotEqual(t, a.PublicKey, b.PublicKey)

	sign, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	_, err = c.GenerateDataKeyPair(bg(), &awskms.GenerateDataKeyPairInput{KeyId: sign.KeyMetadata.KeyId, KeyPairSpec: types.DataKeyPairSpecEccNistP256})
	requireAPIError(t, err, "InvalidKeyUsageException", "")
}

// opensslSign signs msg (ECDSA with SHA-256) with a PKCS#8 DER private key.
func opensslSign(t *testing.T, pkcs8, msg []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "key.der"), pkcs8, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "msg"), msg, 0o600))
	out, err := exec.Command("openssl", "dgst", "-sha256", "-sign", filepath.Join(dir, "key.der"), "-keyform", "DER",
		"-out", filepath.Join(dir, "sig"), filepath.Join(dir, "msg")).CombinedOutput()
	require.NoError(t, err, string(out))
	sig, err := os.ReadFile(filepath.Join(dir, "sig"))
	require.NoError(t, err)
	return sig
}

func TestAsymmetricKeyDeletionDestroysBothHalves(t *testing.T) {
	e := newEnv(t)
	c := e.admin()
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	id := *out.KeyMetadata.KeyId
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	e.clock.Advance(8 * 24 * time.Hour)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	e.restart()
	assert.Empty(t, e.report.OrphanObjects, "no half of the key pair may stay on the token")
}

// A token without a spec's mechanisms refuses the spec before anything is
// made, in AWS's words for what the service does not support.
func TestCreateKeyOnTokenWithoutMechanism(t *testing.T) {
	e := newEnvWith(t, func(e *env) {
		e.wrapDefault = func(p hsm.PKCS11) hsm.PKCS11 {
			f := hsm.NewFaults(p)
			f.HideMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN)
			f.HideMechanism(pkcs11.CKM_SHA512_HMAC)
			return f
		}
	})
	c := e.admin()
	_, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	requireAPIError(t, err, "UnsupportedOperationException", "KeySpec ECC_NIST_P256 is not supported by this key store's token.")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecHmac512, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
	requireAPIError(t, err, "UnsupportedOperationException", "KeySpec HMAC_512 is not supported by this key store's token.")
	keys, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
	require.NoError(t, err)
	assert.Empty(t, keys.Keys, "nothing half-made is left")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP384, KeyUsage: types.KeyUsageTypeSignVerify})
	requireAPIError(t, err, "UnsupportedOperationException", "")
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
	require.NoError(t, err)
}
