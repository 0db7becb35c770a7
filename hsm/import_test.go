package hsm_test

import (
	"crypto"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// importAlgs are AWS's wrapping algorithms, with the hash clients wrap
// with.
var importAlgs = map[string]struct {
	alg  hsm.ImportAlgorithm
	hash func() hash.Hash
}{
	"RSAES_OAEP_SHA_1":         {hsm.ImportAlgorithm{Hash: crypto.SHA1}, sha1.New},
	"RSAES_OAEP_SHA_256":       {hsm.ImportAlgorithm{Hash: crypto.SHA256}, sha256.New},
	"RSA_AES_KEY_WRAP_SHA_1":   {hsm.ImportAlgorithm{Hash: crypto.SHA1, AESKeyWrap: true}, sha1.New},
	"RSA_AES_KEY_WRAP_SHA_256": {hsm.ImportAlgorithm{Hash: crypto.SHA256, AESKeyWrap: true}, sha256.New},
}

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
	algs := importAlgs
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

// importCheck is Imported.Check for material whose check is what the
// token computes with it (AES-ECB of the check data, its HMAC, or the
// check data and public key of a pair), as the test computes it apart.
func importCheck(what ...[]byte) []byte {
	h := sha256.New()
	h.Write([]byte("hsmkms imported material check v1\x00"))
	for _, w := range what {
		h.Write(w)
	}
	return h.Sum(nil)
}

// importMaterials is material of every spec RSA_AES_KEY_WRAP carries,
// with what tells that the token holds it: Check computed apart, and for
// a pair its public key. Pairs but Ed25519 are the token's data key pairs
// (SoftHSM2 makes RSA-4096 faster than Go, and Go has no secp256k1).
type importMaterialCase struct {
	name     string
	spec     hsm.MaterialSpec
	usage    hsm.Usage
	material []byte
	pub      []byte
	check    []byte
	hmac     crypto.Hash
}

func importMaterials(t *testing.T, tok *hsm.Token, checkData []byte) []importMaterialCase {
	t.Helper()
	aesKey := random(32)
	b, err := aes.NewCipher(aesKey)
	require.NoError(t, err)
	ecb := make([]byte, len(checkData))
	for i := 0; i < len(ecb); i += aes.BlockSize {
		b.Encrypt(ecb[i:], checkData[i:])
	}
	cases := []importMaterialCase{{name: "AES256", usage: hsm.UsageEncrypt | hsm.UsageDecrypt, material: aesKey, check: importCheck(ecb)}}
	for _, hm := range []struct {
		bits, n int
		hash    crypto.Hash
	}{{224, 28, crypto.SHA224}, {256, 64, crypto.SHA256}, {384, 48, crypto.SHA384}, {512, 128, crypto.SHA512}} {
		key := random(hm.n)
		m := hmac.New(hm.hash.New, key)
		m.Write(checkData)
		cases = append(cases, importMaterialCase{name: fmt.Sprintf("HMAC%d", hm.bits), spec: hsm.MaterialSpec{HMACBits: hm.bits},
			usage: hsm.UsageSign | hsm.UsageVerify, material: key, check: importCheck(m.Sum(nil)), hmac: hm.hash})
	}
	for _, p := range []hsm.KeyPairSpec{hsm.RSA2048, hsm.RSA3072, hsm.RSA4096, hsm.ECP256, hsm.ECP384, hsm.ECP521, hsm.ECSecp256k1} {
		der, pub, err := tok.GenerateDataKeyPair(ctx(t), p)
		require.NoError(t, err)
		cases = append(cases, importMaterialCase{name: p.String(), spec: hsm.MaterialSpec{Pair: p}, usage: hsm.UsageSign,
			material: der, pub: pub, check: importCheck(checkData, pub)})
	}
	return cases
}

var random = hsmtest.Random

// TestImportRSAAESKeyWrap: on a token that offers CKM_RSA_AES_KEY_WRAP
// (SoftHSM2 2.6.1 does not: Faults emulates it with the two halves on the
// real token beneath), material wrapped with RSA_AES_KEY_WRAP reaches the
// token in one C_UnwrapKey per object made, and the two halves are never
// taken; parameters the token refuses fall back to the two halves, once.
func TestImportRSAAESKeyWrap(t *testing.T) {
	t.Parallel()
	var f *hsm.Faults
	tok, _ := open(t, func(p hsm.PKCS11) hsm.PKCS11 {
		f = hsm.NewFaults(p)
		f.EmulateRSAAESKeyWrap()
		return f
	}, 4)
	wrapping, _ := wrappingKey(t, tok, "rsa-aes-domain-key")
	sha1Alg := hsm.ImportAlgorithm{Hash: crypto.SHA1, AESKeyWrap: true}
	info, err := tok.GenerateImportKey(ctx(t), []byte("rsa-aes-import-key"), "import", 2048, sha1Alg)
	require.NoError(t, err)
	ik := hsm.PrivateKeyByID([]byte("rsa-aes-import-key"))
	checkData := random(32)
	// calls: C_UnwrapKey with the one mechanism, with each half, and the
	// raw RSA fallback's C_Decrypt.
	calls := func() [4]int {
		return [4]int{f.CallsWith("C_UnwrapKey", pkcs11.CKM_RSA_AES_KEY_WRAP), f.CallsWith("C_UnwrapKey", pkcs11.CKM_RSA_PKCS_OAEP),
			f.CallsWith("C_UnwrapKey", pkcs11.CKM_AES_KEY_WRAP_PAD), f.Calls("C_Decrypt")}
	}
	since := func(before [4]int) [4]int {
		now := calls()
		for i := range now {
			now[i] -= before[i]
		}
		return now
	}
	target := func(mode, name string, c importMaterialCase) hsm.ImportTarget {
		tg := hsm.ImportTarget{Spec: c.spec, Usage: c.usage, CheckData: checkData}
		if mode == "wrapped" {
			tg.Wrapping = wrapping
		} else {
			tg.IDPrefix, tg.Label = []byte(name), "imported"
		}
		return tg
	}

	cases := importMaterials(t, tok, checkData)
	for _, c := range cases {
		for _, mode := range []string{"wrapped", "token"} {
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				before := calls()
				got, err := tok.ImportMaterial(ctx(t), ik, sha1Alg, hsmtest.WrapForImport(info.PublicKey, sha1.New, true, c.material), target(mode, c.name, c))
				require.NoError(t, err)
				objects := 1 // the object checked (and wrapped)
				if mode == "token" {
					objects = 2 // and the token object
				}
				assert.Equal(t, [4]int{objects, 0, 0, 0}, since(before), "one C_UnwrapKey with CKM_RSA_AES_KEY_WRAP per object, no half")
				assert.Equal(t, c.check, got.Check, "the token holds the material wrapped")
				assert.Equal(t, c.pub, got.PublicKey)
				if mode == "wrapped" {
					assert.NotEmpty(t, got.Key)
					return
				}
				id := append([]byte(c.name), got.Check...)
				switch {
				case c.hmac != 0:
					mac, err := tok.MAC(ctx(t), hsm.SecretKeyByID(id), c.hmac, []byte("message"))
					require.NoError(t, err)
					m := hmac.New(c.hmac.New, c.material)
					m.Write([]byte("message"))
					assert.Equal(t, m.Sum(nil), mac, "the token object's HMAC is Go's with the material")
				case c.pub != nil:
					pub, err := tok.PublicKeyDER(ctx(t), hsm.PublicKeyByID(id))
					require.NoError(t, err)
					assert.Equal(t, c.pub, pub)
				default:
					_, err := tok.FindObject(ctx(t), hsm.SecretKeyByID(id))
					assert.NoError(t, err)
				}
			})
		}
	}

	t.Run("bad blobs", func(t *testing.T) {
		good := hsmtest.WrapForImport(info.PublicKey, sha1.New, true, random(32))
		for name, blob := range map[string][]byte{
			"AES key altered":      flip(good, 3),
			"material altered":     flip(good, len(good)-3),
			"no material":          good[:256],
			"another import key's": hsmtest.WrapForImport(otherImportKey(t, tok), sha1.New, true, random(32)),
		} {
			t.Run(name, func(t *testing.T) {
				before := calls()
				_, err := tok.ImportMaterial(ctx(t), ik, sha1Alg, blob, target("wrapped", "bad", cases[0]))
				assert.ErrorIs(t, err, hsm.ErrInvalidCiphertext)
				assert.Zero(t, since(before)[1]+since(before)[2]+since(before)[3], "no half is tried for a bad blob")
			})
		}
		_, err := tok.ImportMaterial(ctx(t), ik, sha1Alg, hsmtest.WrapForImport(info.PublicKey, sha1.New, true, random(16)), target("wrapped", "bad", cases[0]))
		assert.ErrorIs(t, err, hsm.ErrIncorrectMaterial, "an AES-128 key for AES-256")
	})

	// SoftHSM2 2.6.1 unwraps OAEP with SHA-1 only: the emulation refuses
	// SHA-256 parameters as such a token would, and imports fall back to
	// the two halves (the first with OAEP decoded here, see
	// TestImportMaterial), remembered for the token and hash.
	t.Run("SHA-256 parameters refused", func(t *testing.T) {
		alg := hsm.ImportAlgorithm{Hash: crypto.SHA256, AESKeyWrap: true}
		info, err := tok.GenerateImportKey(ctx(t), []byte("rsa-aes-import-key-256"), "import", 2048, alg)
		require.NoError(t, err)
		ik := hsm.PrivateKeyByID([]byte("rsa-aes-import-key-256"))
		for i, want := range [][4]int{{1, 0, 1, 1}, {0, 0, 1, 1}} {
			before := calls()
			got, err := tok.ImportMaterial(ctx(t), ik, alg, hsmtest.WrapForImport(info.PublicKey, sha256.New, true, cases[0].material), target("wrapped", "sha256", cases[0]))
			require.NoError(t, err)
			assert.Equal(t, cases[0].check, got.Check)
			assert.Equal(t, want, since(before), "import %d: refused once, then two halves only", i)
		}
	})
}

func flip(b []byte, i int) []byte {
	out := append([]byte(nil), b...)
	out[i] ^= 1
	return out
}

// otherImportKey makes another import key on tok and returns its public key.
func otherImportKey(t *testing.T, tok *hsm.Token) []byte {
	t.Helper()
	info, err := tok.GenerateImportKey(ctx(t), random(8), "other import key", 2048, hsm.ImportAlgorithm{Hash: crypto.SHA1, AESKeyWrap: true})
	require.NoError(t, err)
	return info.PublicKey
}

// TestImportEd25519 imports Ed25519 material (RFC 8410 PKCS#8) by every
// algorithm, on SoftHSM2 2.6.1 as it is (it cannot unwrap an Ed25519 key:
// the seed passes through the process) and with Faults emulating a token
// that can (nothing is read), and checks the token holds that key: the
// public key is the known one and its signatures verify under it.
func TestImportEd25519(t *testing.T) {
	t.Parallel()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	require.NoError(t, err)
	require.Len(t, der, 48)
	spki, err := x509.MarshalPKIXPublicKey(pub)
	require.NoError(t, err)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	checkData := random(32)
	algs := importAlgs
	for _, onToken := range []bool{false, true} {
		name := "in the process"
		if onToken {
			name = "on the token"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var f *hsm.Faults
			tok, _ := open(t, func(p hsm.PKCS11) hsm.PKCS11 {
				f = hsm.NewFaults(p)
				if onToken {
					f.EmulateEdDSAUnwrap()
				}
				return f
			}, 4)
			wrapping, _ := wrappingKey(t, tok, "ed25519-domain-key")
			keys := map[string][]byte{}
			for name, a := range algs {
				info, err := tok.GenerateImportKey(ctx(t), []byte("ed-import-"+name), "import", 2048, a.alg)
				require.NoError(t, err)
				keys[name] = info.PublicKey
			}
			importAs := func(name string, material []byte, target hsm.ImportTarget) (hsm.Imported, error) {
				a := algs[name]
				target.Spec, target.Usage, target.CheckData = hsm.MaterialSpec{Pair: hsm.Ed25519}, hsm.UsageSign, checkData
				return tok.ImportMaterial(ctx(t), hsm.PrivateKeyByID([]byte("ed-import-"+name)), a.alg,
					hsmtest.WrapForImport(keys[name], a.hash, a.alg.AESKeyWrap, material), target)
			}

			// The token is asked once (with a throwaway key it wraps).
			for i := range 2 {
				wraps, objects := f.Calls("C_WrapKey"), sessionObjects(t, tok)
				got, err := importAs("RSA_AES_KEY_WRAP_SHA_1", der, hsm.ImportTarget{})
				require.NoError(t, err)
				assert.Equal(t, importCheck(checkData, spki), got.Check)
				assert.Equal(t, spki, got.PublicKey)
				assert.Equal(t, 1-i, f.Calls("C_WrapKey")-wraps, "import %d", i)
				assert.Equal(t, objects, sessionObjects(t, tok), "nothing is left on the token")
			}

			for name := range algs {
				t.Run(name, func(t *testing.T) {
					got, err := importAs(name, der, hsm.ImportTarget{})
					require.NoError(t, err)
					assert.Equal(t, importCheck(checkData, spki), got.Check, "the check value is the known public key's")
					assert.Equal(t, spki, got.PublicKey)

					prefix := []byte("ed-" + name)
					creates, copies := f.Calls("C_CreateObject"), f.Calls("C_CopyObject")
					made, err := importAs(name, der, hsm.ImportTarget{IDPrefix: prefix, Label: "imported"})
					require.NoError(t, err)
					if !onToken {
						// The private key made a session object, the seed
						// cleared, then copied into a token object.
						assert.Equal(t, 1, f.Calls("C_CopyObject")-copies)
					}
					// The public key is made from what the check found; the
					// private key too where the token cannot unwrap it; and
					// what OAEP with SHA-256 decodes here on SoftHSM2.
					want := 2
					if onToken {
						want = 1
					}
					if algs[name].alg.Hash == crypto.SHA256 {
						want++
					}
					assert.Equal(t, want, f.Calls("C_CreateObject")-creates)
					assert.Equal(t, got.Check, made.Check)
					id := append(prefix, made.Check...)
					attrs, err := tok.Attributes(ctx(t), hsm.PrivateKeyByID(id), pkcs11.CKA_TOKEN, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
						pkcs11.CKA_SIGN, pkcs11.CKA_DERIVE, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP)
					require.NoError(t, err)
					for i, want := range []byte{1, 1, 0, 1, 0, 0, 0} {
						assert.Equal(t, []byte{want}, attrs[i].Value, "attribute 0x%X", attrs[i].Type)
					}
					sig, err := tok.Sign(ctx(t), hsm.PrivateKeyByID(id), hsm.EdDSA, crypto.SHA512, []byte("message"))
					require.NoError(t, err)
					assert.True(t, ed25519.Verify(pub, []byte("message"), sig), "the token signs with the imported key")
					pubOnToken, err := tok.PublicKeyDER(ctx(t), hsm.PublicKeyByID(id))
					require.NoError(t, err)
					assert.Equal(t, spki, pubOnToken)

					// SoftHSM2 2.6.1 wraps no Ed25519 key: keystore holds
					// such keys as token objects.
					_, err = importAs(name, der, hsm.ImportTarget{Wrapping: wrapping})
					assert.ErrorIs(t, err, hsm.ErrNotWrappable)

					bad := hsmtest.WrapForImport(keys[name], algs[name].hash, algs[name].alg.AESKeyWrap, der)
					bad[5] ^= 1
					_, err = tok.ImportMaterial(ctx(t), hsm.PrivateKeyByID([]byte("ed-import-"+name)), algs[name].alg, bad,
						hsm.ImportTarget{Spec: hsm.MaterialSpec{Pair: hsm.Ed25519}, Usage: hsm.UsageSign, CheckData: checkData})
					assert.ErrorIs(t, err, hsm.ErrInvalidCiphertext)

					_, err = importAs(name, ecDER, hsm.ImportTarget{})
					if onToken {
						// The token refuses to make an Ed25519 key of it,
						// as it refuses any blob it cannot parse.
						assert.True(t, errors.Is(err, hsm.ErrInvalidCiphertext) || errors.Is(err, hsm.ErrIncorrectMaterial), "%v", err)
					} else {
						assert.ErrorIs(t, err, hsm.ErrIncorrectMaterial, "a P-256 key is not Ed25519 material")
					}
				})
			}

			// A token that will not copy a session object into a token
			// object gets the key made directly, from the blob once more.
			t.Run("copy refused", func(t *testing.T) {
				if onToken {
					t.Skip("nothing is copied where the token unwraps Ed25519 keys")
				}
				f.Fail("C_CopyObject", pkcs11.CKR_FUNCTION_NOT_SUPPORTED, 1)
				copies := f.Calls("C_CopyObject")
				made, err := importAs("RSA_AES_KEY_WRAP_SHA_1", der, hsm.ImportTarget{IDPrefix: []byte("ed-direct"), Label: "imported"})
				require.NoError(t, err)
				assert.Equal(t, 1, f.Calls("C_CopyObject")-copies, "refused once, not tried again")
				sig, err := tok.Sign(ctx(t), hsm.PrivateKeyByID(append([]byte("ed-direct"), made.Check...)), hsm.EdDSA, crypto.SHA512, []byte("message"))
				require.NoError(t, err)
				assert.True(t, ed25519.Verify(pub, []byte("message"), sig))
			})
		})
	}
}
