package kms_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"hash"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var importHashes = map[types.AlgorithmSpec]struct {
	h   func() hash.Hash
	aes bool
}{
	types.AlgorithmSpecRsaesOaepSha1:       {sha1.New, false},
	types.AlgorithmSpecRsaesOaepSha256:     {sha256.New, false},
	types.AlgorithmSpecRsaAesKeyWrapSha1:   {sha1.New, true},
	types.AlgorithmSpecRsaAesKeyWrapSha256: {sha256.New, true},
}

// importMaterial gets import parameters for keyID and imports material
// wrapped as alg says, as a client does.
func importMaterial(t *testing.T, c *awskms.Client, keyID string, alg types.AlgorithmSpec, spec types.WrappingKeySpec, material []byte, in *awskms.ImportKeyMaterialInput) (*awskms.ImportKeyMaterialOutput, error) {
	t.Helper()
	p, err := c.GetParametersForImport(bg(), &awskms.GetParametersForImportInput{KeyId: aws.String(keyID), WrappingAlgorithm: alg, WrappingKeySpec: spec})
	require.NoError(t, err)
	w := importHashes[alg]
	if in == nil {
		in = &awskms.ImportKeyMaterialInput{ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire}
	}
	in.KeyId, in.ImportToken = aws.String(keyID), p.ImportToken
	in.EncryptedKeyMaterial = hsmtest.WrapForImport(p.PublicKey, w.h, w.aes, material)
	return c.ImportKeyMaterial(bg(), in)
}

func createExternal(t *testing.T, c *awskms.Client, spec types.KeySpec, usage types.KeyUsageType) string {
	t.Helper()
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{Origin: types.OriginTypeExternal, KeySpec: spec, KeyUsage: usage})
	require.NoError(t, err)
	md := out.KeyMetadata
	assert.Equal(t, types.OriginTypeExternal, md.Origin)
	assert.Equal(t, types.KeyStatePendingImport, md.KeyState)
	assert.False(t, md.Enabled)
	return *md.KeyId
}

var random = hsmtest.Random

// TestImportEverySpecAndAlgorithm imports known material into a key of
// every spec AWS imports, by every wrapping algorithm AWS allows for it,
// and proves the key then uses that material.
func TestImportEverySpecAndAlgorithm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	oaepAndAES := []types.AlgorithmSpec{types.AlgorithmSpecRsaesOaepSha1, types.AlgorithmSpecRsaesOaepSha256,
		types.AlgorithmSpecRsaAesKeyWrapSha1, types.AlgorithmSpecRsaAesKeyWrapSha256}
	aesOnly := []types.AlgorithmSpec{types.AlgorithmSpecRsaAesKeyWrapSha1, types.AlgorithmSpecRsaAesKeyWrapSha256}
	if testKeyMaterial() == keystore.TokenObjects {
		// The unwrapping is the same in both modes (hsm's TestImportMaterial
		// runs every algorithm into both); here one SHA-256 algorithm of
		// each kind per spec keeps the second run of the suite short.
		oaepAndAES = []types.AlgorithmSpec{types.AlgorithmSpecRsaesOaepSha256, types.AlgorithmSpecRsaAesKeyWrapSha256}
		aesOnly = aesOnly[1:]
	}

	t.Run("SYMMETRIC_DEFAULT", func(t *testing.T) {
		t.Parallel()
		material := random(32)
		id := createExternal(t, c, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
		first, err := importMaterial(t, c, id, types.AlgorithmSpecRsaesOaepSha256, types.WrappingKeySpecRsa4096, material, nil)
		require.NoError(t, err)
		require.Len(t, *first.KeyMaterialId, 64)
		ct, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("imported")})
		require.NoError(t, err)
		// Every algorithm carries the same material back in: the same
		// material id, and old ciphertexts decrypt.
		for _, alg := range oaepAndAES {
			t.Run(string(alg), func(t *testing.T) {
				_, err := c.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: aws.String(id)})
				require.NoError(t, err)
				_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
				requireAPIError(t, err, "KMSInvalidStateException", "")
				again, err := importMaterial(t, c, id, alg, types.WrappingKeySpecRsa2048, material, nil)
				require.NoError(t, err)
				assert.Equal(t, *first.KeyMaterialId, *again.KeyMaterialId)
				pt, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
				require.NoError(t, err)
				assert.Equal(t, []byte("imported"), pt.Plaintext)
				_, err = importMaterial(t, c, id, alg, types.WrappingKeySpecRsa2048, random(32), nil)
				requireAPIError(t, err, "IncorrectKeyMaterialException", "")
			})
		}
	})

	for _, hm := range []struct {
		spec types.KeySpec
		alg  types.MacAlgorithmSpec
		h    func() hash.Hash
		n    int
	}{
		{types.KeySpecHmac224, types.MacAlgorithmSpecHmacSha224, sha256.New224, 28},
		{types.KeySpecHmac256, types.MacAlgorithmSpecHmacSha256, sha256.New, 32},
		{types.KeySpecHmac384, types.MacAlgorithmSpecHmacSha384, sha512.New384, 48},
		{types.KeySpecHmac512, types.MacAlgorithmSpecHmacSha512, sha512.New, 64},
	} {
		for _, alg := range oaepAndAES {
			t.Run(string(hm.spec)+"/"+string(alg), func(t *testing.T) {
				t.Parallel()
				material := random(hm.n)
				id := createExternal(t, c, hm.spec, types.KeyUsageTypeGenerateVerifyMac)
				_, err := importMaterial(t, c, id, alg, types.WrappingKeySpecRsa2048, material, nil)
				require.NoError(t, err)
				out, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: aws.String(id), MacAlgorithm: hm.alg, Message: []byte("message")})
				require.NoError(t, err)
				m := hmac.New(hm.h, material)
				m.Write([]byte("message"))
				assert.Equal(t, m.Sum(nil), out.Mac, "the MAC is Go's HMAC with the imported key")
			})
		}
	}

	rsaKeys := map[types.KeySpec]*rsa.PrivateKey{}
	for _, spec := range []types.KeySpec{types.KeySpecRsa2048, types.KeySpecRsa3072, types.KeySpecRsa4096} {
		bits := map[types.KeySpec]int{types.KeySpecRsa2048: 2048, types.KeySpecRsa3072: 3072, types.KeySpecRsa4096: 4096}[spec]
		k, err := rsa.GenerateKey(rand.Reader, bits)
		require.NoError(t, err)
		rsaKeys[spec] = k
	}
	for spec, key := range rsaKeys {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		require.NoError(t, err)
		pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
		for _, alg := range aesOnly {
			t.Run(string(spec)+"/"+string(alg), func(t *testing.T) {
				t.Parallel()
				signID := createExternal(t, c, spec, types.KeyUsageTypeSignVerify)
				_, err := importMaterial(t, c, signID, alg, types.WrappingKeySpecRsa2048, der, nil)
				require.NoError(t, err)
				gp, err := c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: aws.String(signID)})
				require.NoError(t, err)
				assert.Equal(t, pub, gp.PublicKey)
				digest := sha256.Sum256([]byte("signed"))
				sig, err := c.Sign(bg(), &awskms.SignInput{KeyId: aws.String(signID), Message: digest[:], MessageType: types.MessageTypeDigest,
					SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256})
				require.NoError(t, err)
				assert.NoError(t, rsa.VerifyPSS(&key.PublicKey, crypto.SHA256, digest[:], sig.Signature, nil))

				encID := createExternal(t, c, spec, types.KeyUsageTypeEncryptDecrypt)
				wspec := types.WrappingKeySpecRsa2048
				if spec == types.KeySpecRsa2048 && alg == types.AlgorithmSpecRsaAesKeyWrapSha256 {
					wspec = types.WrappingKeySpecRsa3072 // every wrapping key spec, once
				}
				_, err = importMaterial(t, c, encID, alg, wspec, der, nil)
				require.NoError(t, err)
				ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &key.PublicKey, []byte("secret"), nil)
				require.NoError(t, err)
				pt, err := c.Decrypt(bg(), &awskms.DecryptInput{KeyId: aws.String(encID), CiphertextBlob: ct, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
				require.NoError(t, err)
				assert.Equal(t, []byte("secret"), pt.Plaintext)
			})
		}
		t.Run(string(spec)+"/RSAES_OAEP refused", func(t *testing.T) {
			t.Parallel()
			id := createExternal(t, c, spec, types.KeyUsageTypeSignVerify)
			_, err := c.GetParametersForImport(bg(), &awskms.GetParametersForImportInput{KeyId: aws.String(id),
				WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa4096})
			requireAPIError(t, err, "ValidationException", "")
		})
	}

	for _, ec := range []struct {
		spec  types.KeySpec
		curve elliptic.Curve
	}{
		{types.KeySpecEccNistP256, elliptic.P256()},
		{types.KeySpecEccNistP384, elliptic.P384()},
		{types.KeySpecEccNistP521, elliptic.P521()},
		{types.KeySpecEccSecgP256k1, nil},
	} {
		for _, alg := range oaepAndAES {
			t.Run(string(ec.spec)+"/"+string(alg), func(t *testing.T) {
				t.Parallel()
				var der, pub []byte
				var key *ecdsa.PrivateKey
				if ec.curve != nil {
					var err error
					key, err = ecdsa.GenerateKey(ec.curve, rand.Reader)
					require.NoError(t, err)
					der, _ = x509.MarshalPKCS8PrivateKey(key)
					pub, _ = x509.MarshalPKIXPublicKey(&key.PublicKey)
				} else {
					// secp256k1: Go has no such curve; the token makes a
					// data key pair, whose halves are as known.
					out, err := c.GenerateDataKeyPairWithoutPlaintext(bg(), &awskms.GenerateDataKeyPairWithoutPlaintextInput{
						KeyId: aws.String(e.createKey(c)), KeyPairSpec: types.DataKeyPairSpecEccSecgP256k1})
					require.NoError(t, err)
					pub = out.PublicKey
					dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: out.PrivateKeyCiphertextBlob})
					require.NoError(t, err)
					der = dec.Plaintext
				}
				wspec := types.WrappingKeySpecRsa2048
				if ec.spec == types.KeySpecEccNistP521 && !importHashes[alg].aes {
					_, err := importMaterial2(t, c, createExternal(t, c, ec.spec, types.KeyUsageTypeSignVerify), alg, wspec)
					requireAPIError(t, err, "ValidationException", "")
					wspec = types.WrappingKeySpecRsa3072
				}
				id := createExternal(t, c, ec.spec, types.KeyUsageTypeSignVerify)
				_, err := importMaterial(t, c, id, alg, wspec, der, nil)
				require.NoError(t, err)
				gp, err := c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: aws.String(id)})
				require.NoError(t, err)
				assert.Equal(t, pub, gp.PublicKey, "the public key is the imported key's")
				sigAlg := gp.SigningAlgorithms[0]
				digest := random(map[types.KeySpec]int{types.KeySpecEccNistP384: 48, types.KeySpecEccNistP521: 64}[ec.spec] + 0)
				if len(digest) == 0 {
					digest = random(32)
				}
				sig, err := c.Sign(bg(), &awskms.SignInput{KeyId: aws.String(id), Message: digest, MessageType: types.MessageTypeDigest, SigningAlgorithm: sigAlg})
				require.NoError(t, err)
				if key != nil {
					assert.True(t, ecdsa.VerifyASN1(&key.PublicKey, digest, sig.Signature), "the signature verifies with the known public key")
				}
				_, err = importMaterial(t, c, id, alg, wspec, der, nil)
				require.NoError(t, err, "the same material again")
			})
		}
	}

	// Ed25519 (RFC 8410 PKCS#8, 48 bytes: RSAES_OAEP carries it with any
	// wrapping key spec). SoftHSM2 2.6.1 can neither unwrap nor wrap an
	// Ed25519 key: hsm reads the seed for microseconds, and the key is
	// held as token objects even where the store holds material wrapped.
	for _, alg := range oaepAndAES {
		t.Run("ECC_NIST_EDWARDS25519/"+string(alg), func(t *testing.T) {
			t.Parallel()
			pub, priv, err := ed25519.GenerateKey(rand.Reader)
			require.NoError(t, err)
			der, _ := x509.MarshalPKCS8PrivateKey(priv)
			spki, _ := x509.MarshalPKIXPublicKey(pub)
			id := createExternal(t, c, types.KeySpecEccNistEdwards25519, types.KeyUsageTypeSignVerify)
			first, err := importMaterial(t, c, id, alg, types.WrappingKeySpecRsa2048, der, nil)
			require.NoError(t, err)
			signs := func(t *testing.T) {
				t.Helper()
				gp, err := c.GetPublicKey(bg(), &awskms.GetPublicKeyInput{KeyId: aws.String(id)})
				require.NoError(t, err)
				assert.Equal(t, spki, gp.PublicKey, "the public key is the imported key's")
				assert.Equal(t, types.KeySpecEccNistEdwards25519, gp.KeySpec)
				sig, err := c.Sign(bg(), &awskms.SignInput{KeyId: aws.String(id), Message: []byte("signed"), MessageType: types.MessageTypeRaw,
					SigningAlgorithm: types.SigningAlgorithmSpecEd25519Sha512})
				require.NoError(t, err)
				assert.True(t, ed25519.Verify(pub, []byte("signed"), sig.Signature), "the signature verifies with the known public key")
			}
			signs(t)
			again, err := importMaterial(t, c, id, alg, types.WrappingKeySpecRsa3072, der, nil)
			require.NoError(t, err, "the same material again")
			assert.Equal(t, *first.KeyMaterialId, *again.KeyMaterialId)

			_, other, _ := ed25519.GenerateKey(rand.Reader)
			otherDER, _ := x509.MarshalPKCS8PrivateKey(other)
			_, err = importMaterial(t, c, id, alg, types.WrappingKeySpecRsa2048, otherDER, nil)
			requireAPIError(t, err, "IncorrectKeyMaterialException", "")
			ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
			_, err = importMaterial(t, c, id, alg, types.WrappingKeySpecRsa2048, ecDER, nil)
			requireAPIError(t, err, "IncorrectKeyMaterialException", "")

			_, err = c.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: aws.String(id)})
			require.NoError(t, err)
			_, err = c.Sign(bg(), &awskms.SignInput{KeyId: aws.String(id), Message: []byte("signed"), MessageType: types.MessageTypeRaw,
				SigningAlgorithm: types.SigningAlgorithmSpecEd25519Sha512})
			requireAPIError(t, err, "KMSInvalidStateException", "")
			_, err = importMaterial(t, c, id, alg, types.WrappingKeySpecRsa2048, otherDER, nil)
			requireAPIError(t, err, "IncorrectKeyMaterialException", "")
			again, err = importMaterial(t, c, id, alg, types.WrappingKeySpecRsa2048, der, nil)
			require.NoError(t, err, "deleted, the same material again")
			assert.Equal(t, *first.KeyMaterialId, *again.KeyMaterialId)
			signs(t)
		})
	}
}

// importMaterial2 asks for parameters only.
func importMaterial2(t *testing.T, c *awskms.Client, id string, alg types.AlgorithmSpec, spec types.WrappingKeySpec) (*awskms.GetParametersForImportOutput, error) {
	t.Helper()
	return c.GetParametersForImport(bg(), &awskms.GetParametersForImportInput{KeyId: aws.String(id), WrappingAlgorithm: alg, WrappingKeySpec: spec})
}

// TestImportErrors: every refusal of the import operations, with AWS's
// exceptions.
func TestImportErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := createExternal(t, c, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	other := createExternal(t, c, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	params := func(t *testing.T, key string) *awskms.GetParametersForImportOutput {
		p, err := importMaterial2(t, c, key, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa2048)
		require.NoError(t, err)
		return p
	}
	material := random(32)
	wrap := func(p *awskms.GetParametersForImportOutput, m []byte) []byte {
		return hsmtest.WrapForImport(p.PublicKey, sha1.New, false, m)
	}
	noExpiry := types.ExpirationModelTypeKeyMaterialDoesNotExpire

	t.Run("pending import key is not usable", func(t *testing.T) {
		_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("x")})
		requireAPIError(t, err, "KMSInvalidStateException", "")
	})
	t.Run("AWS_KMS key", func(t *testing.T) {
		_, err := importMaterial2(t, c, e.createKey(c), types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa2048)
		requireAPIError(t, err, "UnsupportedOperationException", "")
	})
	t.Run("RSAES_PKCS1_V1_5", func(t *testing.T) {
		_, err := importMaterial2(t, c, id, types.AlgorithmSpecRsaesPkcs1V15, types.WrappingKeySpecRsa2048)
		requireAPIError(t, err, "ValidationException", "")
	})
	t.Run("SM2", func(t *testing.T) {
		_, err := importMaterial2(t, c, id, types.AlgorithmSpecSm2pke, types.WrappingKeySpecSm2)
		requireAPIError(t, err, "UnsupportedOperationException", "")
	})
	t.Run("token of another key", func(t *testing.T) {
		p := params(t, other)
		_, err := c.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: aws.String(id), ImportToken: p.ImportToken,
			EncryptedKeyMaterial: wrap(p, material), ExpirationModel: noExpiry})
		requireAPIError(t, err, "InvalidImportTokenException", "")
	})
	t.Run("forged token", func(t *testing.T) {
		p := params(t, id)
		for i := range []int{0, 1, 2} {
			tok := append([]byte(nil), p.ImportToken...)
			switch i {
			case 0:
				tok[len(tok)-1] ^= 1
			case 1:
				tok = tok[:20]
			case 2:
				tok = random(len(tok))
			}
			_, err := c.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: aws.String(id), ImportToken: tok,
				EncryptedKeyMaterial: wrap(p, material), ExpirationModel: noExpiry})
			requireAPIError(t, err, "InvalidImportTokenException", "")
		}
	})
	t.Run("bad wrapping", func(t *testing.T) {
		p := params(t, id)
		w := wrap(p, material)
		w[5] ^= 1
		_, err := c.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: aws.String(id), ImportToken: p.ImportToken,
			EncryptedKeyMaterial: w, ExpirationModel: noExpiry})
		requireAPIError(t, err, "InvalidCiphertextException", "")
		// Wrapped under another import key.
		q := params(t, id)
		_, err = c.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: aws.String(id), ImportToken: p.ImportToken,
			EncryptedKeyMaterial: wrap(q, material), ExpirationModel: noExpiry})
		requireAPIError(t, err, "InvalidCiphertextException", "")
	})
	t.Run("material of another size", func(t *testing.T) {
		p := params(t, id)
		_, err := c.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: aws.String(id), ImportToken: p.ImportToken,
			EncryptedKeyMaterial: wrap(p, material[:16]), ExpirationModel: noExpiry})
		requireAPIError(t, err, "IncorrectKeyMaterialException", "")
	})
	t.Run("expiration parameters", func(t *testing.T) {
		p := params(t, id)
		for name, in := range map[string]*awskms.ImportKeyMaterialInput{
			"no ValidTo":           {},
			"ValidTo not expiring": {ExpirationModel: noExpiry, ValidTo: aws.Time(time.Now().Add(time.Hour))},
			"ValidTo past":         {ValidTo: aws.Time(time.Now().Add(-time.Hour))},
			"ValidTo too far":      {ValidTo: aws.Time(time.Now().Add(400 * 24 * time.Hour))},
			"KeyMaterialId new":    {ExpirationModel: noExpiry, ImportType: types.ImportTypeNewKeyMaterial, KeyMaterialId: aws.String(string(make([]byte, 0)) + "0000000000000000000000000000000000000000000000000000000000000000")},
		} {
			t.Run(name, func(t *testing.T) {
				in.KeyId, in.ImportToken, in.EncryptedKeyMaterial = aws.String(id), p.ImportToken, wrap(p, material)
				_, err := c.ImportKeyMaterial(bg(), in)
				requireAPIError(t, err, "ValidationException", "")
			})
		}
	})
	t.Run("expired parameters", func(t *testing.T) {
		p := params(t, other)
		e.clock.Advance(24*time.Hour + time.Second)
		_, err := c.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: aws.String(other), ImportToken: p.ImportToken,
			EncryptedKeyMaterial: wrap(p, material), ExpirationModel: noExpiry})
		requireAPIError(t, err, "ExpiredImportTokenException", "")
	})
}

// TestImportedMaterialLifecycle: expiry, delete and re-import, and
// on-demand rotation of an imported key, as DescribeKey and
// ListKeyRotations show them.
func TestImportedMaterialLifecycle(t *testing.T) {
	t.Parallel()
	e, trail := newAuditedEnv(t, nil)
	c := e.admin()
	id := createExternal(t, c, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	first := random(32)
	validTo := e.clock.Now().Add(2 * time.Hour).Truncate(time.Second)
	out, err := importMaterial(t, c, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, first,
		&awskms.ImportKeyMaterialInput{ValidTo: aws.Time(validTo), KeyMaterialDescription: aws.String("first material")})
	require.NoError(t, err)
	firstID := *out.KeyMaterialId
	d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
	require.NoError(t, err)
	assert.Equal(t, types.KeyStateEnabled, d.KeyMetadata.KeyState)
	assert.Equal(t, types.ExpirationModelTypeKeyMaterialExpires, d.KeyMetadata.ExpirationModel)
	assert.Equal(t, validTo.UTC(), d.KeyMetadata.ValidTo.UTC())
	assert.Equal(t, firstID, *d.KeyMetadata.CurrentKeyMaterialId)
	ct, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("before")})
	require.NoError(t, err)

	t.Run("expiry", func(t *testing.T) {
		n, err := e.svc.ExpireImported(bg())
		require.NoError(t, err)
		assert.Zero(t, n)
		e.clock.Advance(3 * time.Hour)
		n, err = e.svc.ExpireImported(bg())
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		expired := 0
		for _, r := range records(t, trail) {
			if r["eventName"] == "DeleteExpiredKeyMaterial" && r["eventType"] == "AwsServiceEvent" && r["errorCode"] == nil {
				expired++
				assert.Equal(t, keyResources(*d.KeyMetadata.Arn), r["resources"])
			}
		}
		assert.Equal(t, 1, expired, "the expiry is AWS's DeleteExpiredKeyMaterial service event in the trail")
		d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		require.NoError(t, err)
		assert.Equal(t, types.KeyStatePendingImport, d.KeyMetadata.KeyState)
		_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
		requireAPIError(t, err, "KMSInvalidStateException", "")
		_, err = importMaterial(t, c, id, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa2048, random(32), nil)
		requireAPIError(t, err, "IncorrectKeyMaterialException", "")
		_, err = importMaterial(t, c, id, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa2048, first,
			&awskms.ImportKeyMaterialInput{ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire, ImportType: types.ImportTypeExistingKeyMaterial, KeyMaterialId: aws.String(firstID)})
		require.NoError(t, err)
		pt, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
		require.NoError(t, err)
		assert.Equal(t, []byte("before"), pt.Plaintext)
		d, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		require.NoError(t, err)
		assert.Equal(t, types.ExpirationModelTypeKeyMaterialDoesNotExpire, d.KeyMetadata.ExpirationModel)
		assert.Nil(t, d.KeyMetadata.ValidTo)
	})

	t.Run("rotation", func(t *testing.T) {
		_, err := c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: aws.String(id)})
		requireAPIError(t, err, "UnsupportedOperationException", arn(id)+" origin is EXTERNAL which is not valid for this operation.")
		_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: aws.String(id)})
		requireAPIError(t, err, "KMSInvalidStateException", "")
		out, err := importMaterial(t, c, id, types.AlgorithmSpecRsaAesKeyWrapSha1, types.WrappingKeySpecRsa2048, random(32),
			&awskms.ImportKeyMaterialInput{ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire, ImportType: types.ImportTypeNewKeyMaterial, KeyMaterialDescription: aws.String("second")})
		require.NoError(t, err)
		second := *out.KeyMaterialId
		rots, err := c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: aws.String(id), IncludeKeyMaterial: types.IncludeKeyMaterialAllKeyMaterial})
		require.NoError(t, err)
		require.Len(t, rots.Rotations, 2)
		assert.Equal(t, types.KeyMaterialStateCurrent, rots.Rotations[0].KeyMaterialState)
		assert.Equal(t, types.KeyMaterialStatePendingRotation, rots.Rotations[1].KeyMaterialState)
		assert.Equal(t, types.ImportStateImported, rots.Rotations[1].ImportState)
		assert.Equal(t, "second", *rots.Rotations[1].KeyMaterialDescription)
		assert.Nil(t, rots.Rotations[1].RotationDate)
		d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		require.NoError(t, err)
		assert.Equal(t, firstID, *d.KeyMetadata.CurrentKeyMaterialId, "material pending rotation is not current")

		_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: aws.String(id)})
		require.NoError(t, err)
		d, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		require.NoError(t, err)
		assert.Equal(t, second, *d.KeyMetadata.CurrentKeyMaterialId)
		rots, err = c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: aws.String(id)})
		require.NoError(t, err)
		require.Len(t, rots.Rotations, 1)
		assert.Equal(t, types.RotationTypeOnDemand, rots.Rotations[0].RotationType)
		pt, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
		require.NoError(t, err)
		assert.Equal(t, []byte("before"), pt.Plaintext)
		// Deleting non-current material makes the key PendingImport.
		_, err = c.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: aws.String(id), KeyMaterialId: aws.String(firstID)})
		require.NoError(t, err)
		d, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		require.NoError(t, err)
		assert.Equal(t, types.KeyStatePendingImport, d.KeyMetadata.KeyState)
	})

	t.Run("asymmetric material cannot change", func(t *testing.T) {
		k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		d1, _ := x509.MarshalPKCS8PrivateKey(k1)
		d2, _ := x509.MarshalPKCS8PrivateKey(k2)
		ec := createExternal(t, c, types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
		_, err := importMaterial(t, c, ec, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, d1, nil)
		require.NoError(t, err)
		_, err = c.DeleteImportedKeyMaterial(bg(), &awskms.DeleteImportedKeyMaterialInput{KeyId: aws.String(ec)})
		require.NoError(t, err)
		_, err = importMaterial(t, c, ec, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, d2, nil)
		requireAPIError(t, err, "IncorrectKeyMaterialException", "")
		_, err = importMaterial(t, c, ec, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, d1, nil)
		require.NoError(t, err)
	})

	t.Run("restart keeps everything", func(t *testing.T) {
		e.restart()
		assert.Empty(t, e.report.OrphanObjects)
		assert.Empty(t, e.report.MissingMaterial)
	})
}

// A token that cannot make import keys refuses GetParametersForImport in
// AWS's words for what the service does not support.
func TestImportOnTokenWithoutMechanism(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) {
		e.wrapDefault = func(p hsm.PKCS11) hsm.PKCS11 {
			f := hsm.NewFaults(p)
			f.HideMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN)
			return f
		}
	})
	c := e.admin()
	id := createExternal(t, c, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	_, err := importMaterial2(t, c, id, types.AlgorithmSpecRsaesOaepSha256, types.WrappingKeySpecRsa2048)
	requireAPIError(t, err, "UnsupportedOperationException", "WrappingAlgorithm RSAES_OAEP_SHA_256 is not supported by this key store's token.")
}

// TestReconcileImportedObjects: a version whose deletion was recorded but
// whose token objects a crash left (token_objects mode) is cleaned up at
// the next start, and the key imports the same material again.
func TestReconcileImportedObjects(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = keystore.TokenObjects })
	c := e.admin()
	id := createExternal(t, c, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	material := random(32)
	out, err := importMaterial(t, c, id, types.AlgorithmSpecRsaAesKeyWrapSha1, types.WrappingKeySpecRsa2048, material, nil)
	require.NoError(t, err)
	ct, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("kept")})
	require.NoError(t, err)

	// The deletion, recorded as DeleteImportedKeyMaterial records it, with
	// the process gone before it destroyed the objects.
	e.close()
	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(t, err)
	_, err = db.UpdateKey(bg(), account, region, id, func(k *store.Key) error {
		imp := *k.Materials[0].Import
		imp.PendingImport = true
		k.Materials[0].Import, k.State = &imp, "PendingImport"
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, db.Close())
	e.start()
	assert.Equal(t, []string{arn(id) + " material " + *out.KeyMaterialId}, e.report.AbandonedRotations, "the objects no imported version names are destroyed")
	assert.Empty(t, e.report.MissingMaterial)
	assert.Empty(t, e.report.OrphanObjects)

	c = e.admin()
	_, err = importMaterial(t, c, id, types.AlgorithmSpecRsaAesKeyWrapSha256, types.WrappingKeySpecRsa2048, material, nil)
	require.NoError(t, err)
	pt, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, []byte("kept"), pt.Plaintext)
	e.restart()
	assert.Empty(t, e.report.AbandonedRotations)
	assert.Empty(t, e.report.MissingMaterial)
}

// On a token that offers CKM_RSA_AES_KEY_WRAP (emulated on SoftHSM2 by
// hsm.Faults), ImportKeyMaterial with RSA_AES_KEY_WRAP_SHA_1 unwraps the
// client's blob in one C_UnwrapKey per object made, and the key holds the
// client's material: its MAC is Go's HMAC.
func TestImportRSAAESKeyWrapOneCall(t *testing.T) {
	t.Parallel()
	var f *hsm.Faults
	e := newEnvWith(t, func(e *env) {
		e.wrapDefault = func(p hsm.PKCS11) hsm.PKCS11 {
			f = hsm.NewFaults(p)
			f.EmulateRSAAESKeyWrap()
			return f
		}
	})
	c := e.admin()
	id := createExternal(t, c, types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac)
	p, err := importMaterial2(t, c, id, types.AlgorithmSpecRsaAesKeyWrapSha1, types.WrappingKeySpecRsa3072)
	require.NoError(t, err)
	material := random(32)
	oneCall, oaep := f.CallsWith("C_UnwrapKey", pkcs11.CKM_RSA_AES_KEY_WRAP), f.CallsWith("C_UnwrapKey", pkcs11.CKM_RSA_PKCS_OAEP)
	_, err = c.ImportKeyMaterial(bg(), &awskms.ImportKeyMaterialInput{KeyId: aws.String(id), ImportToken: p.ImportToken,
		EncryptedKeyMaterial: hsmtest.WrapForImport(p.PublicKey, sha1.New, true, material), ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire})
	require.NoError(t, err)
	objects := 1 // checked and wrapped under the domain key
	if testKeyMaterial() == keystore.TokenObjects {
		// Checked before the version is recorded, then checked again
		// and made a token object (keystore.Store.MakeImported).
		objects = 3
	}
	assert.Equal(t, objects, f.CallsWith("C_UnwrapKey", pkcs11.CKM_RSA_AES_KEY_WRAP)-oneCall)
	assert.Zero(t, f.CallsWith("C_UnwrapKey", pkcs11.CKM_RSA_PKCS_OAEP)-oaep, "the two halves are not taken")
	out, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: aws.String(id), MacAlgorithm: types.MacAlgorithmSpecHmacSha256, Message: []byte("message")})
	require.NoError(t, err)
	m := hmac.New(sha256.New, material)
	m.Write([]byte("message"))
	assert.Equal(t, m.Sum(nil), out.Mac)
}
