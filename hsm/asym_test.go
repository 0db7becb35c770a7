package hsm_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var digestHashes = []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512}

func digest(h crypto.Hash, msg []byte) []byte {
	w := h.New()
	w.Write(msg)
	return w.Sum(nil)
}

func flipped(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

// boolAttrs reads boolean attributes of ref into a map.
func boolAttrs(t *testing.T, tok *hsm.Token, ref hsm.ObjectRef, types ...uint) map[uint]bool {
	t.Helper()
	attrs, err := tok.Attributes(ctx(t), ref, types...)
	require.NoError(t, err)
	out := map[uint]bool{}
	for _, a := range attrs {
		require.Len(t, a.Value, 1, "attribute 0x%x", a.Type)
		out[a.Type] = a.Value[0] == 1
	}
	return out
}

// openssl runs openssl with args, skipping the test if it is not installed.
func openssl(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	return exec.Command(path, args...).CombinedOutput()
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, data, 0o600))
	return p
}

// opensslVerifyECDSA checks a DER ECDSA signature of a digest with openssl,
// for the curves Go cannot (secp256k1).
func opensslVerifyECDSA(t *testing.T, spki, dgst, sig []byte) bool {
	t.Helper()
	out, err := openssl(t, "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", writeTemp(t, "pub.der", spki),
		"-in", writeTemp(t, "dgst", dgst), "-sigfile", writeTemp(t, "sig", sig))
	return err == nil && strings.Contains(string(out), "Signature Verified Successfully")
}

func TestGenerateKeyPairEverySpec(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 4)
	specs := []struct {
		spec  hsm.KeyPairSpec
		usage hsm.Usage
	}{
		{hsm.RSA2048, hsm.UsageSign | hsm.UsageVerify},
		{hsm.RSA3072, hsm.UsageEncrypt | hsm.UsageDecrypt},
		{hsm.RSA4096, hsm.UsageSign | hsm.UsageVerify}, // the only RSA-4096 generation in the tests: it is slow
		{hsm.ECP256, hsm.UsageSign | hsm.UsageVerify},
		{hsm.ECP384, hsm.UsageDerive},
		{hsm.ECP521, hsm.UsageSign | hsm.UsageVerify},
		{hsm.ECSecp256k1, hsm.UsageSign | hsm.UsageVerify},
		{hsm.Ed25519, hsm.UsageSign | hsm.UsageVerify},
	}
	for _, c := range specs {
		t.Run(c.spec.String(), func(t *testing.T) {
			id := []byte("pair-" + c.spec.String())
			start := time.Now()
			require.NoError(t, tok.GenerateKeyPair(ctx(t), id, "label-"+c.spec.String(), c.spec, c.usage))
			t.Logf("generated in %v", time.Since(start))

			priv, pub := hsm.PrivateKeyByID(id), hsm.PublicKeyByID(id)
			pa := boolAttrs(t, tok, priv, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
				pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE,
				pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_SIGN_RECOVER)
			assert.Equal(t, map[uint]bool{
				pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false,
				pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_NEVER_EXTRACTABLE: true,
				pkcs11.CKA_SIGN: c.usage&hsm.UsageSign != 0, pkcs11.CKA_DECRYPT: c.usage&hsm.UsageDecrypt != 0,
				pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: c.usage&hsm.UsageDerive != 0, pkcs11.CKA_SIGN_RECOVER: false,
			}, pa, "private key")
			ua := boolAttrs(t, tok, pub, pkcs11.CKA_TOKEN, pkcs11.CKA_VERIFY, pkcs11.CKA_ENCRYPT, pkcs11.CKA_WRAP,
				pkcs11.CKA_DERIVE, pkcs11.CKA_VERIFY_RECOVER)
			assert.Equal(t, map[uint]bool{
				pkcs11.CKA_TOKEN: true, pkcs11.CKA_VERIFY: c.usage&hsm.UsageVerify != 0,
				pkcs11.CKA_ENCRYPT: c.usage&hsm.UsageEncrypt != 0, pkcs11.CKA_WRAP: false,
				pkcs11.CKA_DERIVE: false, pkcs11.CKA_VERIFY_RECOVER: false,
			}, ua, "public key")

			secret := uint(pkcs11.CKA_VALUE)
			if c.spec <= hsm.RSA4096 {
				secret = pkcs11.CKA_PRIVATE_EXPONENT
			}
			_, err := tok.Attributes(ctx(t), priv, secret)
			code, _ := hsm.Code(err)
			assert.Equal(t, uint(pkcs11.CKR_ATTRIBUTE_SENSITIVE), code, "private value must not be readable")
			for _, ref := range []hsm.ObjectRef{priv, pub} {
				info, err := tok.FindObject(ctx(t), ref)
				require.NoError(t, err)
				assert.Equal(t, "label-"+c.spec.String(), info.Label)
			}

			der, err := tok.PublicKeyDER(ctx(t), hsm.PublicKeyByID(id))
			require.NoError(t, err)
			if c.spec == hsm.ECSecp256k1 {
				out, err := openssl(t, "pkey", "-pubin", "-inform", "DER", "-in", writeTemp(t, "k1.der", der), "-text", "-noout")
				require.NoError(t, err, "%s", out)
				assert.Contains(t, string(out), "secp256k1")
			} else {
				_, err := x509.ParsePKIXPublicKey(der)
				require.NoError(t, err)
			}
			if c.usage&hsm.UsageSign != 0 {
				checkSignatures(t, tok, id, c.spec, der)
			}
		})
	}
}

// checkSignatures signs with every algorithm and hash that fits the key,
// verifies with Go (or openssl for secp256k1) and with Verify on the token,
// and checks that altered signatures and data do not verify.
func checkSignatures(t *testing.T, tok *hsm.Token, id []byte, spec hsm.KeyPairSpec, der []byte) {
	msg := []byte("the message signed by the token")
	type combo struct {
		alg  hsm.SignAlgorithm
		hash crypto.Hash
	}
	var combos []combo
	switch {
	case spec <= hsm.RSA4096:
		for _, h := range digestHashes {
			combos = append(combos, combo{hsm.RSAPKCS1v15, h}, combo{hsm.RSAPSS, h})
		}
	case spec == hsm.Ed25519:
		combos = []combo{{hsm.EdDSA, crypto.SHA512}}
	default:
		for _, h := range digestHashes {
			combos = append(combos, combo{hsm.ECDSA, h})
		}
	}
	for _, c := range combos {
		data := msg
		if c.alg != hsm.EdDSA {
			data = digest(c.hash, msg)
		}
		sig, err := tok.Sign(ctx(t), hsm.PrivateKeyByID(id), c.alg, c.hash, data)
		require.NoError(t, err, "%v %v", c.alg, c.hash)

		var goOK bool
		switch c.alg {
		case hsm.RSAPKCS1v15, hsm.RSAPSS:
			pub := mustParse(t, der).(*rsa.PublicKey)
			if c.alg == hsm.RSAPSS {
				goOK = rsa.VerifyPSS(pub, c.hash, data, sig, &rsa.PSSOptions{SaltLength: c.hash.Size()}) == nil
			} else {
				goOK = rsa.VerifyPKCS1v15(pub, c.hash, data, sig) == nil
			}
		case hsm.ECDSA:
			if spec == hsm.ECSecp256k1 {
				goOK = opensslVerifyECDSA(t, der, data, sig)
			} else {
				goOK = ecdsa.VerifyASN1(mustParse(t, der).(*ecdsa.PublicKey), data, sig)
			}
		case hsm.EdDSA:
			goOK = ed25519.Verify(mustParse(t, der).(ed25519.PublicKey), data, sig)
		}
		assert.True(t, goOK, "%v %v signature verifies outside the token", c.alg, c.hash)

		ok, err := tok.Verify(ctx(t), hsm.PublicKeyByID(id), c.alg, c.hash, data, sig)
		require.NoError(t, err)
		assert.True(t, ok, "%v %v: Verify", c.alg, c.hash)
		ok, err = tok.Verify(ctx(t), hsm.PublicKeyByID(id), c.alg, c.hash, flipped(data, 0), sig)
		require.NoError(t, err)
		assert.False(t, ok, "%v %v: other data", c.alg, c.hash)
		ok, err = tok.Verify(ctx(t), hsm.PublicKeyByID(id), c.alg, c.hash, data, flipped(sig, len(sig)-1))
		require.NoError(t, err)
		assert.False(t, ok, "%v %v: altered signature", c.alg, c.hash)
		ok, err = tok.Verify(ctx(t), hsm.PublicKeyByID(id), c.alg, c.hash, data, sig[:len(sig)-1])
		require.NoError(t, err)
		assert.False(t, ok, "%v %v: truncated signature", c.alg, c.hash)
	}
}

func mustParse(t *testing.T, der []byte) crypto.PublicKey {
	t.Helper()
	k, err := x509.ParsePKIXPublicKey(der)
	require.NoError(t, err)
	return k
}

func TestECDSAVerifyMalformedSignatures(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 2)
	id := []byte("ec")
	require.NoError(t, tok.GenerateKeyPair(ctx(t), id, "ec", hsm.ECP256, hsm.UsageSign|hsm.UsageVerify))
	d := digest(crypto.SHA256, []byte("m"))
	sig, err := tok.Sign(ctx(t), hsm.PrivateKeyByID(id), hsm.ECDSA, crypto.SHA256, d)
	require.NoError(t, err)
	var rs struct{ R, S *big.Int }
	_, err = asn1.Unmarshal(sig, &rs)
	require.NoError(t, err)
	der := func(r, s *big.Int) []byte { b, _ := asn1.Marshal(struct{ R, S *big.Int }{r, s}); return b }
	huge := new(big.Int).Lsh(big.NewInt(1), 300)
	cases := map[string][]byte{
		"empty":          nil,
		"raw r||s":       append(rs.R.FillBytes(make([]byte, 32)), rs.S.FillBytes(make([]byte, 32))...),
		"trailing bytes": append(bytes.Clone(sig), 0),
		"junk inside":    append([]byte{0x30, sig[1] + 1}, append(bytes.Clone(sig[2:]), 0)...),
		"r too large":    der(huge, rs.S),
		"s negative":     der(rs.R, new(big.Int).Neg(rs.S)),
		"r zero":         der(big.NewInt(0), rs.S),
		"swapped":        der(rs.S, rs.R),
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			ok, err := tok.Verify(ctx(t), hsm.PublicKeyByID(id), hsm.ECDSA, crypto.SHA256, d, bad)
			require.NoError(t, err, name)
			assert.False(t, ok, name)
		})
	}
	ok, err := tok.Verify(ctx(t), hsm.PublicKeyByID(id), hsm.ECDSA, crypto.SHA256, d, sig)
	require.NoError(t, err)
	assert.True(t, ok)
}

func TestSignChecksInputBeforeTheToken(t *testing.T) {
	t.Parallel()
	tok, f, _ := withFaults(t, 2)
	require.NoError(t, tok.GenerateKeyPair(ctx(t), []byte("r"), "r", hsm.RSA2048, hsm.UsageSign|hsm.UsageVerify))
	require.NoError(t, tok.GenerateKeyPair(ctx(t), []byte("e"), "e", hsm.Ed25519, hsm.UsageSign|hsm.UsageVerify))
	before := f.Calls("C_SignInit") + f.Calls("C_VerifyInit")
	cases := []struct {
		id   string
		alg  hsm.SignAlgorithm
		hash crypto.Hash
		data []byte
	}{
		{"r", hsm.RSAPKCS1v15, crypto.SHA256, make([]byte, 31)},
		{"r", hsm.RSAPSS, crypto.SHA384, make([]byte, 32)},
		{"r", hsm.RSAPKCS1v15, crypto.SHA1, make([]byte, 20)},
		{"r", hsm.ECDSA, crypto.SHA512, make([]byte, 65)},
		{"e", hsm.EdDSA, crypto.SHA256, []byte("m")},
		{"e", hsm.EdDSAPh, crypto.SHA512, make([]byte, 32)},
		{"r", hsm.SignAlgorithm(99), crypto.SHA256, make([]byte, 32)},
	}
	for _, c := range cases {
		_, err := tok.Sign(ctx(t), hsm.PrivateKeyByID([]byte(c.id)), c.alg, c.hash, c.data)
		assert.Error(t, err, "%v %v %d", c.alg, c.hash, len(c.data))
		_, err = tok.Verify(ctx(t), hsm.PublicKeyByID([]byte(c.id)), c.alg, c.hash, c.data, []byte("sig"))
		assert.Error(t, err, "%v %v %d", c.alg, c.hash, len(c.data))
	}
	assert.Equal(t, before, f.Calls("C_SignInit")+f.Calls("C_VerifyInit"))

	_, err := tok.Sign(ctx(t), hsm.PrivateKeyByID([]byte("nope")), hsm.ECDSA, crypto.SHA256, make([]byte, 32))
	require.ErrorIs(t, err, hsm.ErrObjectNotFound)
	// A key used for the wrong algorithm is an error, not a signature that
	// does not verify.
	_, err = tok.Sign(ctx(t), hsm.PrivateKeyByID([]byte("r")), hsm.ECDSA, crypto.SHA256, make([]byte, 32))
	_, fromToken := hsm.Code(err)
	assert.True(t, fromToken, "the token refuses (SoftHSM2: CKR_GENERAL_ERROR): %v", err)
	ok, err := tok.Verify(ctx(t), hsm.PublicKeyByID([]byte("r")), hsm.ECDSA, crypto.SHA256, make([]byte, 32), []byte{0x30, 0})
	require.ErrorContains(t, err, "not an EC key")
	assert.False(t, ok)
}

// SoftHSM2 2.6.1 accepts CK_EDDSA_PARAMS{phFlag: true} and ignores it, so
// Ed25519ph must be refused rather than answered as pure Ed25519.
func TestEd25519phIsRefusedWhenTheTokenIgnoresPhFlag(t *testing.T) {
	t.Parallel()
	tok, f, _ := withFaults(t, 2)
	id := []byte("ed")
	require.NoError(t, tok.GenerateKeyPair(ctx(t), id, "ed", hsm.Ed25519, hsm.UsageSign|hsm.UsageVerify))
	d := sha512.Sum512([]byte("m"))
	_, err := tok.Sign(ctx(t), hsm.PrivateKeyByID(id), hsm.EdDSAPh, crypto.SHA512, d[:])
	require.ErrorIs(t, err, hsm.ErrMechanismNotSupported)
	_, err = tok.Verify(ctx(t), hsm.PublicKeyByID(id), hsm.EdDSAPh, crypto.SHA512, d[:], make([]byte, 64))
	require.ErrorIs(t, err, hsm.ErrMechanismNotSupported)
	assert.Equal(t, 1, f.Calls("C_GenerateKeyPair")-1, "one probe per token, then the verdict is remembered")
	objs, err := tok.ListObjects(ctx(t), 0)
	require.NoError(t, err)
	assert.Len(t, objs, 2, "the probe leaves nothing on the token")
}

func TestSupportsMechanism(t *testing.T) {
	t.Parallel()
	tok, f, _ := withFaults(t, 2)
	f.HideMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN)
	f.HideMechanism(pkcs11.CKM_SHA384_HMAC)
	ok, err := tok.SupportsMechanism(ctx(t), pkcs11.CKM_ECDSA, pkcs11.CKF_SIGN|pkcs11.CKF_VERIFY)
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = tok.SupportsMechanism(ctx(t), pkcs11.CKM_AES_GCM, pkcs11.CKF_SIGN)
	require.NoError(t, err)
	assert.False(t, ok, "GCM does not sign")
	ok, err = tok.SupportsMechanism(ctx(t), pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR)
	require.NoError(t, err)
	assert.False(t, ok)
	lists, infos := f.Calls("C_GetMechanismList"), f.Calls("C_GetMechanismInfo")
	for range 3 {
		ok, err = tok.SupportsMechanism(ctx(t), pkcs11.CKM_ECDSA, pkcs11.CKF_SIGN)
		require.NoError(t, err)
		assert.True(t, ok)
	}
	assert.Equal(t, lists, f.Calls("C_GetMechanismList"), "cached")
	assert.Equal(t, infos, f.Calls("C_GetMechanismInfo"), "cached")

	err = tok.GenerateKeyPair(ctx(t), []byte("ec"), "ec", hsm.ECP256, hsm.UsageSign)
	require.ErrorIs(t, err, hsm.ErrMechanismNotSupported)
	_, _, err = tok.GenerateDataKeyPair(ctx(t), hsm.ECP256)
	require.ErrorIs(t, err, hsm.ErrMechanismNotSupported)
	assert.Zero(t, f.Calls("C_GenerateKeyPair"), "refused before reaching the token")
	require.NoError(t, tok.GenerateKeyPair(ctx(t), []byte("ed"), "ed", hsm.Ed25519, hsm.UsageSign))
	keys := f.Calls("C_GenerateKey")
	require.ErrorIs(t, tok.GenerateHMACKey(ctx(t), []byte("h384"), "h384", 384), hsm.ErrMechanismNotSupported,
		"an HMAC key the token could not use is not made")
	assert.Equal(t, keys, f.Calls("C_GenerateKey"))
	require.NoError(t, tok.GenerateHMACKey(ctx(t), []byte("h256"), "h256", 256))

	// A rebuilt token state asks the token again.
	ref := newKey(t, tok, "dev")
	f.Clear()
	f.Fail("C_Encrypt", pkcs11.CKR_DEVICE_ERROR, 1)
	_, _, err = tok.EncryptGCM(ctx(t), ref, []byte("x"), nil)
	require.True(t, hsm.IsDeviceFailure(err))
	require.Eventually(t, func() bool {
		_, _, err := tok.EncryptGCM(ctx(t), ref, []byte("x"), nil)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
	ok, err = tok.SupportsMechanism(ctx(t), pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR)
	require.NoError(t, err)
	assert.True(t, ok, "no longer hidden, and the cache went with the old state")
	assert.Equal(t, lists+1, f.Calls("C_GetMechanismList"))
}

func TestDestroyKeyPair(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 2)
	id := []byte("doomed-pair")
	require.NoError(t, tok.GenerateKeyPair(ctx(t), id, "d", hsm.ECP256, hsm.UsageSign|hsm.UsageVerify))
	d := digest(crypto.SHA256, []byte("m"))
	sig, err := tok.Sign(ctx(t), hsm.PrivateKeyByID(id), hsm.ECDSA, crypto.SHA256, d)
	require.NoError(t, err)
	_, err = tok.Verify(ctx(t), hsm.PublicKeyByID(id), hsm.ECDSA, crypto.SHA256, d, sig)
	require.NoError(t, err)
	require.NoError(t, tok.DestroyObject(ctx(t), hsm.PrivateKeyByID(id)))
	require.NoError(t, tok.DestroyObject(ctx(t), hsm.PublicKeyByID(id)))
	_, err = tok.Sign(ctx(t), hsm.PrivateKeyByID(id), hsm.ECDSA, crypto.SHA256, d)
	require.ErrorIs(t, err, hsm.ErrObjectNotFound)
	_, err = tok.Verify(ctx(t), hsm.PublicKeyByID(id), hsm.ECDSA, crypto.SHA256, d, sig)
	require.ErrorIs(t, err, hsm.ErrObjectNotFound)
	_, err = tok.PublicKeyDER(ctx(t), hsm.PublicKeyByID(id))
	require.ErrorIs(t, err, hsm.ErrObjectNotFound)
}

// importSecret puts a generic secret with a known value on the token,
// through raw Cryptoki (hsm/ never imports keys), so the token's HMAC can be
// compared with crypto/hmac.
func importSecret(t *testing.T, tok *hsm.Token, id, value []byte) {
	t.Helper()
	info, err := tok.Info()
	require.NoError(t, err)
	p := pkcs11.New(hsmMod(t))
	if err := p.Initialize(); err != nil {
		code, _ := hsm.Code(err)
		require.Equal(t, uint(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED), code)
	}
	slots, err := p.GetSlotList(true)
	require.NoError(t, err)
	for _, slot := range slots {
		if ti, _ := p.GetTokenInfo(slot); ti.SerialNumber != info.Serial {
			continue
		}
		s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		require.NoError(t, err)
		defer p.CloseSession(s)
		_, err = p.CreateObject(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		})
		require.NoError(t, err)
		return
	}
	t.Fatal("token not found through raw Cryptoki")
}

func TestMACEqualsCryptoHMAC(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 2)
	key := bytes.Repeat([]byte{0x4b}, 64)
	importSecret(t, tok, []byte("known"), key)
	msg := []byte("message to authenticate")
	for _, h := range []crypto.Hash{crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		t.Run(h.String(), func(t *testing.T) {
			mac, err := tok.MAC(ctx(t), hsm.SecretKeyByID([]byte("known")), h, msg)
			require.NoError(t, err)
			want := hmac.New(h.New, key)
			want.Write(msg)
			assert.Equal(t, want.Sum(nil), mac, "%v", h)
		})
	}
	_, err := tok.MAC(ctx(t), hsm.SecretKeyByID([]byte("known")), crypto.SHA1, msg)
	require.Error(t, err)
}

func TestGenerateHMACKey(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 2)
	msg := []byte("message")
	for _, c := range []struct {
		bits int
		hash crypto.Hash
	}{{224, crypto.SHA224}, {256, crypto.SHA256}, {384, crypto.SHA384}, {512, crypto.SHA512}} {
		t.Run(c.hash.String(), func(t *testing.T) {
			id := []byte{'h', byte(c.bits / 8)}
			require.NoError(t, tok.GenerateHMACKey(ctx(t), id, "hmac", c.bits))
			ref := hsm.SecretKeyByID(id)
			assert.Equal(t, map[uint]bool{
				pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false,
				pkcs11.CKA_SIGN: true, pkcs11.CKA_VERIFY: true, pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_DECRYPT: false,
				pkcs11.CKA_WRAP: false, pkcs11.CKA_DERIVE: false,
			}, boolAttrs(t, tok, ref, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
				pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_DERIVE))
			attrs, err := tok.Attributes(ctx(t), ref, pkcs11.CKA_VALUE_LEN, pkcs11.CKA_KEY_TYPE)
			require.NoError(t, err)
			assert.Equal(t, byte(c.bits/8), attrs[0].Value[0])
			assert.Equal(t, byte(pkcs11.CKK_GENERIC_SECRET), attrs[1].Value[0])

			mac, err := tok.MAC(ctx(t), hsm.SecretKeyByID(id), c.hash, msg)
			require.NoError(t, err)
			require.Len(t, mac, c.hash.Size())
			again, err := tok.MAC(ctx(t), hsm.SecretKeyByID(id), c.hash, msg)
			require.NoError(t, err)
			assert.Equal(t, mac, again)
			ok, err := tok.VerifyMAC(ctx(t), hsm.SecretKeyByID(id), c.hash, msg, mac)
			require.NoError(t, err)
			assert.True(t, ok)
			for _, bad := range [][]byte{flipped(mac, len(mac)-1), mac[:len(mac)-1], nil} {
				ok, err = tok.VerifyMAC(ctx(t), hsm.SecretKeyByID(id), c.hash, msg, bad)
				require.NoError(t, err)
				assert.False(t, ok)
			}
			ok, err = tok.VerifyMAC(ctx(t), hsm.SecretKeyByID(id), c.hash, flipped(msg, 0), mac)
			require.NoError(t, err)
			assert.False(t, ok)
		})
	}
	require.Error(t, tok.GenerateHMACKey(ctx(t), []byte("x"), "x", 128))
	require.Error(t, tok.GenerateHMACKey(ctx(t), nil, "x", 256))
}

func TestDecryptOAEP(t *testing.T) {
	t.Parallel()
	tok, f, _ := withFaults(t, 2)
	id := []byte("oaep")
	require.NoError(t, tok.GenerateKeyPair(ctx(t), id, "oaep", hsm.RSA2048, hsm.UsageEncrypt|hsm.UsageDecrypt))
	der, err := tok.PublicKeyDER(ctx(t), hsm.PublicKeyByID(id))
	require.NoError(t, err)
	pub := mustParse(t, der).(*rsa.PublicKey)

	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		maxLen := pub.Size() - 2*h.Size() - 2
		for _, msg := range [][]byte{{}, []byte("a data key"), bytes.Repeat([]byte{0}, maxLen), bytes.Repeat([]byte{0xff}, maxLen)} {
			ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, msg, nil)
			require.NoError(t, err)
			got, err := tok.DecryptOAEP(ctx(t), hsm.PrivateKeyByID(id), h, ct)
			require.NoError(t, err, "%v %d bytes", h, len(msg))
			assert.Equal(t, msg, append([]byte{}, got...), "%v", h)
		}
		ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, []byte("secret"), nil)
		require.NoError(t, err)
		withLabel, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, []byte("secret"), []byte("label"))
		require.NoError(t, err)
		other := crypto.SHA256
		if h == crypto.SHA256 {
			other = crypto.SHA1
		}
		otherHash, err := rsa.EncryptOAEP(other.New(), rand.Reader, pub, []byte("secret"), nil)
		require.NoError(t, err)
		pkcs1 := rawRSA(pub, pkcs1v15Block(pub.Size(), []byte("secret")))
		tooBig := bytes.Repeat([]byte{0xff}, len(ct))
		for name, bad := range map[string][]byte{
			"tampered": flipped(ct, 10), "label": withLabel, "other hash": otherHash, "PKCS#1 v1.5": pkcs1,
			"short": ct[1:], "long": append(bytes.Clone(ct), 0), "not below n": tooBig, "empty": nil,
		} {
			t.Run(h.String()+"/"+name, func(t *testing.T) {
				got, err := tok.DecryptOAEP(ctx(t), hsm.PrivateKeyByID(id), h, bad)
				assert.Same(t, hsm.ErrInvalidCiphertext, err, "%v %s: %v", h, name, err)
				assert.Nil(t, got)
			})
		}
	}

	// SHA-256 fell back to raw RSA after the token refused it once; SHA-1
	// stays on the token's own OAEP.
	ct256, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, []byte("x"), nil)
	ct1, _ := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, []byte("x"), nil)
	before := f.Calls("C_DecryptInit")
	_, err = tok.DecryptOAEP(ctx(t), hsm.PrivateKeyByID(id), crypto.SHA256, ct256)
	require.NoError(t, err)
	_, err = tok.DecryptOAEP(ctx(t), hsm.PrivateKeyByID(id), crypto.SHA1, ct1)
	require.NoError(t, err)
	assert.Equal(t, before+2, f.Calls("C_DecryptInit"), "no second try of refused parameters")

	_, err = tok.DecryptOAEP(ctx(t), hsm.PrivateKeyByID(id), crypto.SHA512, ct256)
	require.Error(t, err)
	assert.NotErrorIs(t, err, hsm.ErrInvalidCiphertext)
}

// pkcs1v15Block is an RSAES-PKCS1-v1_5 encoded message (00 02 PS 00 M):
// a well-formed ciphertext of the wrong scheme.
func pkcs1v15Block(k int, msg []byte) []byte {
	em := make([]byte, k)
	em[1] = 2
	for i := 2; i < k-len(msg)-1; i++ {
		em[i] = 0x55
	}
	copy(em[k-len(msg):], msg)
	return em
}

// rawRSA is the RSA public-key operation em^e mod n, k bytes out.
func rawRSA(pub *rsa.PublicKey, em []byte) []byte {
	c := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N)
	return c.FillBytes(make([]byte, pub.Size()))
}

func TestDeriveECDHEqualsCryptoECDH(t *testing.T) {
	t.Parallel()
	tok, _ := open(t, nil, 2)
	for _, c := range []struct {
		spec  hsm.KeyPairSpec
		curve ecdh.Curve
	}{{hsm.ECP256, ecdh.P256()}, {hsm.ECP384, ecdh.P384()}, {hsm.ECP521, ecdh.P521()}} {
		t.Run(c.spec.String(), func(t *testing.T) {
			id := []byte("dh-" + c.spec.String())
			require.NoError(t, tok.GenerateKeyPair(ctx(t), id, "dh", c.spec, hsm.UsageDerive))
			der, err := tok.PublicKeyDER(ctx(t), hsm.PublicKeyByID(id))
			require.NoError(t, err)
			tokPub, err := mustParse(t, der).(*ecdsa.PublicKey).ECDH()
			require.NoError(t, err)
			peer, err := c.curve.GenerateKey(rand.Reader)
			require.NoError(t, err)

			got, err := tok.DeriveECDH(ctx(t), hsm.PrivateKeyByID(id), peer.PublicKey().Bytes())
			require.NoError(t, err)
			want, err := peer.ECDH(tokPub)
			require.NoError(t, err)
			assert.Equal(t, want, got, "%v", c.spec)

			point := peer.PublicKey().Bytes()
			for name, bad := range map[string][]byte{
				"compressed": append([]byte{2 + point[len(point)-1]&1}, point[1:1+len(point)/2]...),
				"off curve":  flipped(point, len(point)-1),
				"short":      point[:len(point)-1],
			} {
				_, err := tok.DeriveECDH(ctx(t), hsm.PrivateKeyByID(id), bad)
				assert.Error(t, err, "%v %s", c.spec, name)
			}
		})
	}
	// A key without CKA_DERIVE cannot.
	require.NoError(t, tok.GenerateKeyPair(ctx(t), []byte("nodh"), "nodh", hsm.ECP256, hsm.UsageSign))
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	_, err := tok.DeriveECDH(ctx(t), hsm.PrivateKeyByID([]byte("nodh")), peer.PublicKey().Bytes())
	code, _ := hsm.Code(err)
	assert.Equal(t, uint(pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED), code)
}

func TestGenerateDataKeyPair(t *testing.T) {
	t.Parallel()
	tok, f, _ := withFaults(t, 2)
	for _, spec := range []hsm.KeyPairSpec{hsm.RSA2048, hsm.RSA3072, hsm.ECP256, hsm.ECP384, hsm.ECP521, hsm.ECSecp256k1} {
		t.Run(spec.String(), func(t *testing.T) {
			destroyed := f.Calls("C_DestroyObject")
			priv, pub, err := tok.GenerateDataKeyPair(ctx(t), spec)
			require.NoError(t, err)
			assert.Equal(t, destroyed+2, f.Calls("C_DestroyObject"), "both session objects destroyed")
			if spec == hsm.ECSecp256k1 {
				// openssl derives the public key from the private one: it
				// must be the SPKI returned.
				out, err := openssl(t, "pkey", "-inform", "DER", "-in", writeTemp(t, "k1.p8", priv), "-pubout", "-outform", "DER")
				require.NoError(t, err, "%s", out)
				assert.Equal(t, pub, out)
				out, err = openssl(t, "pkey", "-inform", "DER", "-in", writeTemp(t, "k1.p8", priv), "-check", "-noout")
				require.NoError(t, err, "%s", out)
				text, err := openssl(t, "pkey", "-inform", "DER", "-in", writeTemp(t, "k1.p8", priv), "-text", "-noout")
				require.NoError(t, err)
				assert.Contains(t, string(text), "secp256k1")
				return
			}
			key, err := x509.ParsePKCS8PrivateKey(priv)
			require.NoError(t, err)
			pk := mustParse(t, pub)
			assert.True(t, key.(interface{ Public() crypto.PublicKey }).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(pk))
			switch k := key.(type) {
			case *rsa.PrivateKey:
				assert.Equal(t, spec, map[int]hsm.KeyPairSpec{2048: hsm.RSA2048, 3072: hsm.RSA3072}[k.N.BitLen()])
				require.NoError(t, k.Validate())
				assert.NotNil(t, k.Precomputed.Dp)
				msg := digest(crypto.SHA256, []byte("m"))
				sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, msg)
				require.NoError(t, err)
				require.NoError(t, rsa.VerifyPKCS1v15(pk.(*rsa.PublicKey), crypto.SHA256, msg, sig))
			case *ecdsa.PrivateKey:
				raw, err := k.Bytes()
				require.NoError(t, err)
				assert.Len(t, raw, (k.Curve.Params().N.BitLen()+7)/8, "scalar padded to the order size")
			default:
				t.Fatalf("unexpected key type %T", key)
			}
		})
	}
	_, _, err := tok.GenerateDataKeyPair(ctx(t), hsm.Ed25519)
	require.Error(t, err)
	objs, err := tok.ListObjects(ctx(t), 0)
	require.NoError(t, err)
	assert.Empty(t, objs, "nothing stays on the token")
}
