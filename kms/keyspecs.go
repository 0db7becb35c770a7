package kms

import (
	"context"
	"crypto"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
)

const (
	usageSign         = "SIGN_VERIFY"
	usageMAC          = "GENERATE_VERIFY_MAC"
	usageKeyAgreement = "KEY_AGREEMENT"
	algECDH           = "ECDH"
)

// keySpec is what hsmkms knows of one AWS KeySpec: the usages AWS allows
// for it, how its material is made on the token, and, per usage, the
// algorithms DescribeKey and GetPublicKey list.
type keySpec struct {
	usages   []string
	material keystore.Spec // the material a key of this spec has
	// encrypt, sign, mac and agree are the algorithms for the usage that
	// names them (AWS lists only those of the key's own usage).
	encrypt, sign, mac, agree []string
	// unsupported, if set, is why hsmkms cannot hold this spec.
	unsupported string
}

var rsaSign = []string{"RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
	"RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512"}
var rsaEncrypt = []string{algOAEPSHA1, algOAEPSHA256}

const (
	algOAEPSHA1   = "RSAES_OAEP_SHA_1"
	algOAEPSHA256 = "RSAES_OAEP_SHA_256"
)

// keySpecs is every KeySpec of the AWS model.
var keySpecs = map[string]keySpec{
	specSymmetric: {usages: []string{usageEncrypt}, material: keystore.AES256, encrypt: []string{algSymmetric}},
	"RSA_2048":    {usages: []string{usageEncrypt, usageSign}, material: keystore.RSA2048, encrypt: rsaEncrypt, sign: rsaSign},
	"RSA_3072":    {usages: []string{usageEncrypt, usageSign}, material: keystore.RSA3072, encrypt: rsaEncrypt, sign: rsaSign},
	"RSA_4096":    {usages: []string{usageEncrypt, usageSign}, material: keystore.RSA4096, encrypt: rsaEncrypt, sign: rsaSign},
	"ECC_NIST_P256": {usages: []string{usageSign, usageKeyAgreement}, material: keystore.ECP256,
		sign: []string{"ECDSA_SHA_256"}, agree: []string{algECDH}},
	"ECC_NIST_P384": {usages: []string{usageSign, usageKeyAgreement}, material: keystore.ECP384,
		sign: []string{"ECDSA_SHA_384"}, agree: []string{algECDH}},
	"ECC_NIST_P521": {usages: []string{usageSign, usageKeyAgreement}, material: keystore.ECP521,
		sign: []string{"ECDSA_SHA_512"}, agree: []string{algECDH}},
	"ECC_SECG_P256K1":       {usages: []string{usageSign}, material: keystore.ECSecp256k1, sign: []string{"ECDSA_SHA_256"}},
	"ECC_NIST_EDWARDS25519": {usages: []string{usageSign}, material: keystore.Ed25519, sign: []string{"ED25519_SHA_512", "ED25519_PH_SHA_512"}},
	"HMAC_224":              {usages: []string{usageMAC}, material: keystore.HMAC224, mac: []string{"HMAC_SHA_224"}},
	"HMAC_256":              {usages: []string{usageMAC}, material: keystore.HMAC256, mac: []string{"HMAC_SHA_256"}},
	"HMAC_384":              {usages: []string{usageMAC}, material: keystore.HMAC384, mac: []string{"HMAC_SHA_384"}},
	"HMAC_512":              {usages: []string{usageMAC}, material: keystore.HMAC512, mac: []string{"HMAC_SHA_512"}},
	"SM2": {usages: []string{usageEncrypt, usageSign, usageKeyAgreement},
		unsupported: "SM2 keys are not supported by hsmkms: PKCS#11 2.40 defines no SM2 mechanism."},
	"ML_DSA_44": {usages: []string{usageSign}, unsupported: mlDSAUnsupported},
	"ML_DSA_65": {usages: []string{usageSign}, unsupported: mlDSAUnsupported},
	"ML_DSA_87": {usages: []string{usageSign}, unsupported: mlDSAUnsupported},
}

const mlDSAUnsupported = "ML-DSA keys are not supported by hsmkms: PKCS#11 2.40 defines no ML-DSA mechanism."

// asymmetric reports whether keys of this spec are key pairs.
func (ks keySpec) asymmetric() bool { return ks.material.Asymmetric() }

// algorithms returns the algorithm lists AWS reports for a key of this
// spec with usage, each nil unless the usage calls for it.
func (ks keySpec) algorithms(usage string) (encrypt, sign, mac, agree []string) {
	switch usage {
	case usageEncrypt:
		return ks.encrypt, nil, nil, nil
	case usageSign:
		return nil, ks.sign, nil, nil
	case usageMAC:
		return nil, nil, ks.mac, nil
	case usageKeyAgreement:
		return nil, nil, nil, ks.agree
	}
	return nil, nil, nil, nil
}

// keyUsage is the usage a key with KeyUsage usage gives its material: only
// what its operations use, so the token itself refuses anything else.
func keyUsage(usage string) keystore.Usage {
	switch usage {
	case usageEncrypt:
		return keystore.UsageEncrypt
	case usageSign:
		return keystore.UsageSign
	case usageMAC:
		return keystore.UsageMAC
	case usageKeyAgreement:
		return keystore.UsageKeyAgreement
	}
	return 0
}

// material is the material version m of k, as its key store addresses it.
func material(k *store.Key, m store.Material) keystore.Material {
	return keystore.MaterialOf(keySpecs[k.KeySpec].material, keyUsage(k.KeyUsage), m.TokenID, m.Wrapped, m.DomainKey)
}

// currentMaterial is k's current material version (not one imported
// for a rotation yet to come).
func currentMaterial(k *store.Key) keystore.Material {
	return material(k, k.Materials[currentIndex(k)])
}

// usableKey resolves and authorizes keyID for a cryptographic operation
// (Service.key applies the operation's state rule) and checks that the
// key has usage ("" for any).
func (s *Service) usableKey(ctx context.Context, r *Request, keyID, usage string, a access) (*store.Key, error) {
	k, err := s.key(ctx, r, keyID, a)
	if err != nil {
		return nil, err
	}
	if usage != "" && k.KeyUsage != usage {
		return nil, wrongUsage(r, k)
	}
	return k, nil
}

func wrongUsage(r *Request, k *store.Key) error {
	return wire.Errorf(wire.InvalidKeyUsage, "%s key usage is %s which is not valid for %s.", arnOf(k), k.KeyUsage, r.op.name)
}

// wrongOrigin is AWS's answer to an operation on a key of an origin it does
// not take (GetParametersForImport on an AWS_KMS key, rotation of an
// AWS_CLOUDHSM key).
func wrongOrigin(k *store.Key) error {
	return wire.Errorf(wire.UnsupportedOperation, "%s origin is %s which is not valid for this operation.", arnOf(k), k.Origin)
}

// incompatible is AWS's answer to an algorithm the key's spec does not do.
func incompatible(alg string, k *store.Key) error {
	return wire.Errorf(wire.InvalidKeyUsage, "Algorithm %s is incompatible with key spec %s.", alg, k.KeySpec)
}

// signing is how one SigningAlgorithm is done on the token.
type signing struct {
	alg  keystore.SignAlgorithm
	hash crypto.Hash
}

var signings = map[string]signing{
	"RSASSA_PSS_SHA_256":        {keystore.RSAPSS, crypto.SHA256},
	"RSASSA_PSS_SHA_384":        {keystore.RSAPSS, crypto.SHA384},
	"RSASSA_PSS_SHA_512":        {keystore.RSAPSS, crypto.SHA512},
	"RSASSA_PKCS1_V1_5_SHA_256": {keystore.RSAPKCS1v15, crypto.SHA256},
	"RSASSA_PKCS1_V1_5_SHA_384": {keystore.RSAPKCS1v15, crypto.SHA384},
	"RSASSA_PKCS1_V1_5_SHA_512": {keystore.RSAPKCS1v15, crypto.SHA512},
	"ECDSA_SHA_256":             {keystore.ECDSA, crypto.SHA256},
	"ECDSA_SHA_384":             {keystore.ECDSA, crypto.SHA384},
	"ECDSA_SHA_512":             {keystore.ECDSA, crypto.SHA512},
	"ED25519_SHA_512":           {keystore.EdDSA, crypto.SHA512},
	"ED25519_PH_SHA_512":        {keystore.EdDSAPh, crypto.SHA512},
}

var macHashes = map[string]crypto.Hash{
	"HMAC_SHA_224": crypto.SHA224, "HMAC_SHA_256": crypto.SHA256,
	"HMAC_SHA_384": crypto.SHA384, "HMAC_SHA_512": crypto.SHA512,
}

var oaepHashes = map[string]crypto.Hash{algOAEPSHA1: crypto.SHA1, algOAEPSHA256: crypto.SHA256}
