package hsm_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"hash"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestImportMaterial imports material wrapped as clients wrap it, by each
// algorithm, into the wrapped and the token-object form, and checks the
// token holds that material: the check value is the same for the same
// material, and a key pair's public key is the known one.
func TestImportMaterial(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 4)
	wrapping, _ := wrappingKey(t, tok, "import-test-domain-key")
	aesKey := make([]byte, 32)
	rand.Read(aesKey)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecPub, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	rsaPub, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	check := make([]byte, 32)
	algs := map[string]struct {
		alg  hsm.ImportAlgorithm
		hash func() hash.Hash
	}{
		"RSAES_OAEP_SHA_1":         {hsm.ImportAlgorithm{Hash: crypto.SHA1}, sha1.New},
		"RSAES_OAEP_SHA_256":       {hsm.ImportAlgorithm{Hash: crypto.SHA256}, sha256.New},
		"RSA_AES_KEY_WRAP_SHA_1":   {hsm.ImportAlgorithm{Hash: crypto.SHA1, AESKeyWrap: true}, sha1.New},
		"RSA_AES_KEY_WRAP_SHA_256": {hsm.ImportAlgorithm{Hash: crypto.SHA256, AESKeyWrap: true}, sha256.New},
	}
	var aesCheck []byte
	for name, a := range algs {
		for _, mode := range []string{"wrapped", "token"} {
			t.Run(name+"/"+mode, func(t *testing.T) {
				id := []byte("import-key-" + name + mode)
				info, err := tok.GenerateImportKey(ctx(t), id, "import", 2048, a.alg)
				require.NoError(t, err)
				ik := hsm.PrivateKeyByID(id)
				// SoftHSM2 2.6.1 unwraps with OAEP and SHA-1 only: the
				// SHA-256 import keys can do the raw RSA operation too.
				assert.Equal(t, a.alg.Hash == crypto.SHA256, info.RawDecrypt)
				attrs, err := tok.Attributes(ctx(t), ik, pkcs11.CKA_UNWRAP, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_SIGN)
				require.NoError(t, err)
				assert.Equal(t, []byte{1}, attrs[0].Value)
				assert.Equal(t, []byte{0}, attrs[1].Value)
				assert.Equal(t, []byte{1}, attrs[2].Value)
				assert.Equal(t, []byte{0}, attrs[3].Value)
				target := func(spec hsm.MaterialSpec, usage hsm.Usage, tid string) hsm.ImportTarget {
					tg := hsm.ImportTarget{Spec: spec, Usage: usage, CheckData: check}
					if mode == "wrapped" {
						tg.Wrapping = wrapping
					} else {
						tg.IDPrefix, tg.Label = []byte(tid+name), "imported"
					}
					return tg
				}
				got, err := tok.ImportMaterial(ctx(t), ik, a.alg, hsmtest.WrapForImport(info.PublicKey, a.hash, a.alg.AESKeyWrap, aesKey),
					target(hsm.MaterialSpec{}, hsm.UsageEncrypt|hsm.UsageDecrypt, "aes"))
				require.NoError(t, err)
				require.Len(t, got.Check, 32)
				if aesCheck == nil {
					aesCheck = got.Check
				}
				assert.Equal(t, aesCheck, got.Check, "the same material has the same check value")
				if mode == "wrapped" {
					assert.NotEmpty(t, got.Key)
				}
				other := make([]byte, 32)
				rand.Read(other)
				got2, err := tok.ImportMaterial(ctx(t), ik, a.alg, hsmtest.WrapForImport(info.PublicKey, a.hash, a.alg.AESKeyWrap, other),
					target(hsm.MaterialSpec{}, hsm.UsageEncrypt|hsm.UsageDecrypt, "aes2"))
				require.NoError(t, err)
				assert.NotEqual(t, aesCheck, got2.Check)

				_, err = tok.ImportMaterial(ctx(t), ik, a.alg, hsmtest.WrapForImport(info.PublicKey, a.hash, a.alg.AESKeyWrap, aesKey[:16]),
					target(hsm.MaterialSpec{}, hsm.UsageEncrypt|hsm.UsageDecrypt, "aes3"))
				assert.ErrorIs(t, err, hsm.ErrIncorrectMaterial)

				bad := hsmtest.WrapForImport(info.PublicKey, a.hash, a.alg.AESKeyWrap, aesKey)
				bad[3] ^= 1
				_, err = tok.ImportMaterial(ctx(t), ik, a.alg, bad, target(hsm.MaterialSpec{}, hsm.UsageEncrypt|hsm.UsageDecrypt, "aes4"))
				assert.ErrorIs(t, err, hsm.ErrInvalidCiphertext)

				got, err = tok.ImportMaterial(ctx(t), ik, a.alg, hsmtest.WrapForImport(info.PublicKey, a.hash, a.alg.AESKeyWrap, ecDER),
					target(hsm.MaterialSpec{Pair: hsm.ECP256}, hsm.UsageSign, "ec"))
				require.NoError(t, err)
				assert.Equal(t, ecPub, got.PublicKey)
				_, err = tok.ImportMaterial(ctx(t), ik, a.alg, hsmtest.WrapForImport(info.PublicKey, a.hash, a.alg.AESKeyWrap, ecDER),
					target(hsm.MaterialSpec{Pair: hsm.ECP384}, hsm.UsageSign, "ec2"))
				assert.ErrorIs(t, err, hsm.ErrIncorrectMaterial)
				if a.alg.AESKeyWrap {
					got, err = tok.ImportMaterial(ctx(t), ik, a.alg, hsmtest.WrapForImport(info.PublicKey, a.hash, true, rsaDER),
						target(hsm.MaterialSpec{Pair: hsm.RSA2048}, hsm.UsageSign, "rsa"))
					require.NoError(t, err)
					assert.Equal(t, rsaPub, got.PublicKey)
				}
			})
		}
	}
}
