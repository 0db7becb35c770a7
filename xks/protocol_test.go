package xks

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func b64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	require.NoError(t, err)
	return b
}

// The Encrypt example of the specification (Encrypt, "Response Payload
// Example", and Appendix C).
const (
	specAAD      = "project=nile,department=marketing"
	specMetadata = "a2V5X3ZlcnNpb249MQ=="
	specIV       = "HMrlRw85cAJUd5Ax"
	specCT       = "ghxkK1txeDNn3q8Y"
	specTag      = "vBxN2ncH1oEkR8WVXpmyYQ=="
	specCDIV     = "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
)

// TestCDIVSpecExample: Appendix C's 86 bytes hash to the value the
// specification gives, and its hex listing is what CDIV concatenates.
func TestCDIVSpecExample(t *testing.T) {
	aad := []byte(specAAD)
	meta, iv, ct, tag := b64(t, specMetadata), b64(t, specIV), b64(t, specCT), b64(t, specTag)
	require.Len(t, aad, 33)
	require.Equal(t, "key_version=1", string(meta))
	require.Len(t, iv, 12)
	require.Len(t, ct, 12)
	require.Len(t, tag, 16)
	listing := "70726f6a6563743d6e696c652c6465706172746d656e743d6d61726b6574696e67" +
		"6b65795f76657273696f6e3d31" + "1ccae5470f397002547790 31" + "821c642b5b71783367deaf18" + "bc1c4dda7707d6812447c5955e99b261"
	want, err := hex.DecodeString(strings.ReplaceAll(listing, " ", ""))
	require.NoError(t, err)
	require.Len(t, want, 86)
	assert.Equal(t, want, append(append(append(append(append([]byte{}, aad...), meta...), iv...), ct...), tag...))
	assert.Equal(t, specCDIV, base64.StdEncoding.EncodeToString(CDIV(aad, meta, iv, ct, tag)))
	assert.Equal(t, "a8703f2260bd8791ec2d15ea0b23e65a0631eedcf2a13a65cc82db3f47cf5ec7", hex.EncodeToString(CDIV(aad, meta, iv, ct, tag)))
	// An absent field is the empty string: without metadata, the hash is
	// over the other four.
	assert.Equal(t, CDIV(aad, nil, iv, ct, tag), CDIV(aad, []byte{}, iv, ct, tag))
}

// TestTokenAAD: the Encrypt section's construction on the example's
// values, and the case its note warns of (metadata passed back as AAD).
func TestTokenAAD(t *testing.T) {
	aad, meta := []byte(specAAD), b64(t, specMetadata)
	got := TokenAAD(aad, meta)
	want := append(append(append([]byte{0x00, 33}, aad...), 13), meta...)
	assert.Equal(t, want, got)
	assert.Equal(t, []byte{0, 0, 0}, TokenAAD(nil, nil))
	assert.NotEqual(t, TokenAAD(nil, meta), TokenAAD(meta, nil), "the lengths must tell AAD and metadata apart")
	big := make([]byte, MaxAAD)
	assert.Equal(t, []byte{0x20, 0x00}, TokenAAD(big, nil)[:2], "8192 in two big-endian bytes")
}

// TestSpecExamples: the specification's request and response examples
// parse as the types say (where the example is valid JSON: the
// GetKeyMetadata and Decrypt request examples lack a comma each).
func TestSpecExamples(t *testing.T) {
	encReq := `{
    "requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": "Encrypt",
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
        "kmsViaService": "ebs"
    }, 
    "additionalAuthenticatedData": "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n",
    "plaintext": "SGVsbG8gV29ybGQh",
    "encryptionAlgorithm": "AES_GCM",
    "ciphertextDataIntegrityValueAlgorithm": "SHA_256"
}`
	r, err := ParseEncryptRequest([]byte(encReq))
	require.NoError(t, err)
	assert.Equal(t, "Hello World!", string(r.Plaintext))
	assert.Equal(t, specAAD, string(r.AdditionalAuthenticatedData))
	assert.Equal(t, "ebs", r.RequestMetadata.KmsViaService)

	encResp := `{
    "authenticationTag": "vBxN2ncH1oEkR8WVXpmyYQ==",
    "ciphertext": "ghxkK1txeDNn3q8Y",
    "ciphertextDataIntegrityValue": "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=",
    "ciphertextMetadata": "a2V5X3ZlcnNpb249MQ==",
    "initializationVector": "HMrlRw85cAJUd5Ax"
}`
	var out EncryptResponse
	require.NoError(t, DecodeResponse(200, []byte(encResp), &out))
	assert.Equal(t, out.CiphertextDataIntegrityValue, CDIV(r.AdditionalAuthenticatedData, out.CiphertextMetadata, out.InitializationVector, out.Ciphertext, out.AuthenticationTag))

	health := `{
    "xksProxyFleetSize": 2,
    "xksProxyVendor": "Acme Corp",
    "xksProxyModel": "Acme XKS Proxy 1.0",
    "ekmVendor": "Thales Group",
    "ekmFleetDetails": [
        {"id": "hsm-id-1", "model": "Luna 5.0", "healthStatus": "DEGRADED"},
        {"id": "hsm-id-2", "model": "Luna 5.1", "healthStatus": "ACTIVE"}
    ]
}`
	var h HealthResponse
	require.NoError(t, DecodeResponse(200, []byte(health), &h))
	require.NoError(t, h.check())
	assert.False(t, h.AllUnavailable())

	var e error = DecodeResponse(400, []byte(`{
    "errorName": "InvalidCiphertextException",
    "errorMessage": "The request was rejected because the specified ciphertext, or additional authenticated data is corrupted, missing, or otherwise invalid."
}`), &out)
	var ce *CallError
	require.True(t, errors.As(e, &ce))
	assert.Equal(t, FailProxy, ce.Failure)
	assert.Equal(t, InvalidCiphertextException, ce.ErrorName)

	md, err := ParseMetadataRequest([]byte(`{"requestMetadata": {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
		"kmsOperation": "CreateKey", "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae"}}`))
	require.NoError(t, err)
	assert.Equal(t, "CreateKey", md.RequestMetadata.KmsOperation)
}

func TestStatuses(t *testing.T) {
	for name, status := range map[string]int{
		ValidationException: 400, InvalidStateException: 400, InvalidCiphertextException: 400, InvalidKeyUsageException: 400,
		AuthenticationFailedException: 401, AccessDeniedException: 403, KeyNotFoundException: 404, InvalidUriPathException: 404,
		ThrottlingException: 429, UnsupportedOperationException: 501, DependencyTimeoutException: 503, InternalException: 500,
	} {
		assert.Equal(t, status, Status(name), name)
	}
	assert.Equal(t, 0, Status("NoSuchException"))
	e := Errorf(ValidationException, "bad \x00 byte %s", strings.Repeat("x", 600))
	assert.Len(t, e.Message, MaxErrorMessage)
	assert.NotContains(t, e.Message, "\x00")
}

func TestParsePath(t *testing.T) {
	long := strings.Repeat("k", 128)
	cases := []struct {
		path string
		want Path
		err  string
	}{
		{"/kms/xks/v1/health", Path{Operation: GetHealthStatus}, ""},
		{"/a/b-c_d/kms/xks/v1/health", Path{Prefix: "/a/b-c_d", Operation: GetHealthStatus}, ""},
		{"/p/kms/xks/v1/keys/key.1_x-Y/metadata", Path{Prefix: "/p", Operation: GetKeyMetadata, KeyID: "key.1_x-Y"}, ""},
		{"/p/kms/xks/v1/keys/" + long + "/encrypt", Path{Prefix: "/p", Operation: Encrypt, KeyID: long}, ""},
		{"/kms/xks/v1/keys/k/decrypt", Path{Operation: Decrypt, KeyID: "k"}, ""},
		{"/p/kms/xks/v1/keys/" + long + "k/encrypt", Path{}, ValidationException},
		{"/p/kms/xks/v1/keys/a b/encrypt", Path{}, ValidationException},
		{"/p/kms/xks/v1/keys/k/sign", Path{}, InvalidUriPathException},
		{"/p/kms/xks/v1/keys//encrypt", Path{}, ValidationException},
		{"/p/kms/xks/v2/health", Path{}, InvalidUriPathException},
		{"/p/kms/xks/v1/healthz", Path{}, InvalidUriPathException},
		{"/p./kms/xks/v1/health", Path{}, InvalidUriPathException},
		{"/" + strings.Repeat("p", 120) + "/kms/xks/v1/health", Path{}, InvalidUriPathException},
		{"/", Path{}, InvalidUriPathException},
	}
	for _, c := range cases {
		t.Run(c.path[:min(len(c.path), 40)], func(t *testing.T) {
			got, err := ParsePath(c.path)
			if c.err == "" {
				require.NoError(t, err)
				assert.Equal(t, c.want, got)
				return
			}
			var xe *Error
			require.ErrorAs(t, err, &xe)
			assert.Equal(t, c.err, xe.Name)
		})
	}
}

// TestParseRequests: what each operation refuses, with the error name.
func TestParseRequests(t *testing.T) {
	md := `"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::111122223333:user/a","kmsKeyArn":"arn:aws:kms:us-east-1:111122223333:key/k","kmsOperation":"SomeFutureOperation","kmsRequestId":"not-a-uuid"}`
	b := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	enc := func(rest string) error { _, err := ParseEncryptRequest([]byte("{" + md + rest + "}")); return err }
	dec := func(rest string) error { _, err := ParseDecryptRequest([]byte("{" + md + rest + "}")); return err }
	iv, tag := `,"initializationVector":"`+b(12)+`"`, `,"authenticationTag":"`+b(16)+`"`
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"encrypt ok, unknown kmsOperation and extra fields", enc(`,"plaintext":"` + b(4300) + `","encryptionAlgorithm":"AES_GCM","future":1`), ""},
		{"encrypt empty plaintext", enc(`,"plaintext":"","encryptionAlgorithm":"AES_GCM"`), ""},
		{"encrypt no plaintext", enc(`,"encryptionAlgorithm":"AES_GCM"`), ValidationException},
		{"encrypt bad base64", enc(`,"plaintext":"!!","encryptionAlgorithm":"AES_GCM"`), ValidationException},
		{"encrypt other algorithm", enc(`,"plaintext":"","encryptionAlgorithm":"AES_CBC"`), ValidationException},
		{"encrypt other cdiv", enc(`,"plaintext":"","encryptionAlgorithm":"AES_GCM","ciphertextDataIntegrityValueAlgorithm":"MD5"`), ValidationException},
		{"encrypt plaintext too large", enc(`,"plaintext":"` + b(4301) + `","encryptionAlgorithm":"AES_GCM"`), UnsupportedOperationException},
		{"encrypt aad too large", enc(`,"plaintext":"","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":"` + b(8193) + `"`), UnsupportedOperationException},
		{"encrypt aad at the limit", enc(`,"plaintext":"","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":"` + b(8192) + `"`), ""},
		{"encrypt wrong type", enc(`,"plaintext":5,"encryptionAlgorithm":"AES_GCM"`), ValidationException},
		{"trailing data", func() error {
			_, err := ParseEncryptRequest([]byte(`{` + md + `,"plaintext":"","encryptionAlgorithm":"AES_GCM"} {}`))
			return err
		}(), ValidationException},
		{"no metadata", func() error {
			_, err := ParseEncryptRequest([]byte(`{"plaintext":"","encryptionAlgorithm":"AES_GCM"}`))
			return err
		}(), ValidationException},
		{"no request id", func() error {
			_, err := ParseMetadataRequest([]byte(`{"requestMetadata":{"awsPrincipalArn":"a","kmsOperation":"CreateKey"}}`))
			return err
		}(), ValidationException},
		{"metadata without key ARN", func() error {
			_, err := ParseMetadataRequest([]byte(`{"requestMetadata":{"awsPrincipalArn":"a","kmsOperation":"CreateKey","kmsRequestId":"r"}}`))
			return err
		}(), ""},
		{"encrypt without key ARN", func() error {
			_, err := ParseEncryptRequest([]byte(`{"requestMetadata":{"awsPrincipalArn":"a","kmsOperation":"Encrypt","kmsRequestId":"r"},"plaintext":"","encryptionAlgorithm":"AES_GCM"}`))
			return err
		}(), ValidationException},
		{"ARN of 2048", func() error {
			_, err := ParseMetadataRequest([]byte(`{"requestMetadata":{"awsPrincipalArn":"` + strings.Repeat("a", 2048) + `","kmsOperation":"CreateKey","kmsRequestId":"r"}}`))
			return err
		}(), ""},
		{"decrypt ok", dec(`,"ciphertext":"` + b(4300) + `","encryptionAlgorithm":"AES_GCM"` + iv + tag), ""},
		{"decrypt 16-byte IV", dec(`,"ciphertext":"","encryptionAlgorithm":"AES_GCM","initializationVector":"` + b(16) + `"` + tag), ""},
		{"decrypt 13-byte IV", dec(`,"ciphertext":"","encryptionAlgorithm":"AES_GCM","initializationVector":"` + b(13) + `"` + tag), ValidationException},
		{"decrypt no IV", dec(`,"ciphertext":"","encryptionAlgorithm":"AES_GCM"` + tag), ValidationException},
		{"decrypt 15-byte tag", dec(`,"ciphertext":"","encryptionAlgorithm":"AES_GCM"` + iv + `,"authenticationTag":"` + b(15) + `"`), ValidationException},
		{"decrypt no tag", dec(`,"ciphertext":"","encryptionAlgorithm":"AES_GCM"` + iv), ValidationException},
		{"decrypt no ciphertext", dec(`,"encryptionAlgorithm":"AES_GCM"` + iv + tag), ValidationException},
		{"decrypt metadata of 21", dec(`,"ciphertext":"","encryptionAlgorithm":"AES_GCM","ciphertextMetadata":"` + b(21) + `"` + iv + tag), ValidationException},
		{"decrypt ciphertext too large", dec(`,"ciphertext":"` + b(4301) + `","encryptionAlgorithm":"AES_GCM"` + iv + tag), UnsupportedOperationException},
		{"not an object", func() error { _, err := ParseDecryptRequest([]byte(`[]`)); return err }(), ValidationException},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.want == "" {
				require.NoError(t, c.err)
				return
			}
			var xe *Error
			require.ErrorAs(t, c.err, &xe)
			assert.Equal(t, c.want, xe.Name, xe.Message)
			assert.Equal(t, c.want != UnsupportedOperationException, Status(xe.Name) == http.StatusBadRequest)
		})
	}
}

// TestDecodeResponseRefuses: what a client refuses from a proxy.
func TestDecodeResponseRefuses(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
	}{
		{500, `not json`},
		{404, `{"errorName":"NoSuchException"}`},
		{200, `{"plaintext":"!!"}`},
		{200, `{"plaintext":""} trailing`},
		{200, `[1]`},
	} {
		var out DecryptResponse
		err := DecodeResponse(c.status, []byte(c.body), &out)
		var ce *CallError
		require.ErrorAs(t, err, &ce, c.body)
		assert.Equal(t, FailInvalidResponse, ce.Failure, c.body)
	}
	var h HealthResponse
	require.NoError(t, DecodeResponse(200, []byte(`{"xksProxyFleetSize":1,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e","ekmFleetDetails":[{"id":"i","model":"m","healthStatus":"SICK"}]}`), &h))
	require.Error(t, h.check())
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/kms/xks/v1/health", "/a/kms/xks/v1/keys/k/encrypt", "/kms/xks/v1/kms/xks/v1/keys/x/metadata", "", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := ParsePath(p)
		if err != nil {
			var xe *Error
			if !errors.As(err, &xe) || Status(xe.Name) == 0 {
				t.Fatalf("error without a specification name: %v", err)
			}
			return
		}
		if !ValidPrefix(got.Prefix) || (got.Operation != GetHealthStatus && !ValidKeyID(got.KeyID)) {
			t.Fatalf("accepted %q as %+v", p, got)
		}
	})
}

// FuzzParseRequests: the proxy's parsers of request bodies never panic and
// answer every refusal with a name of the specification.
func FuzzParseRequests(f *testing.F) {
	for _, s := range []string{
		`{"requestMetadata":{"awsPrincipalArn":"a","kmsKeyArn":"k","kmsOperation":"Encrypt","kmsRequestId":"r"},"plaintext":"AAAA","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":"AA==","ciphertextDataIntegrityValueAlgorithm":"SHA_256"}`,
		`{"requestMetadata":{"awsPrincipalArn":"a","kmsKeyArn":"k","kmsOperation":"Decrypt","kmsRequestId":"r"},"ciphertext":"AAAA","encryptionAlgorithm":"AES_GCM","initializationVector":"AAAAAAAAAAAAAAAA","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA==","ciphertextMetadata":"AQ=="}`,
		`{"requestMetadata":null}`, `{}`, `null`, `"x"`, `{"plaintext":{"a":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, parse := range []func([]byte) error{
			func(b []byte) error { _, err := ParseMetadataRequest(b); return err },
			func(b []byte) error {
				r, err := ParseEncryptRequest(b)
				if err == nil && (len(r.Plaintext) > MaxPlaintext || r.EncryptionAlgorithm != EncryptionAlgorithm) {
					t.Fatal("accepted an encrypt request beyond the limits")
				}
				return err
			},
			func(b []byte) error {
				r, err := ParseDecryptRequest(b)
				if err == nil && (len(r.AuthenticationTag) != GCMTagSize || len(r.CiphertextMetadata) > MaxCiphertextMetadata) {
					t.Fatal("accepted a decrypt request beyond the limits")
				}
				return err
			},
		} {
			if err := parse(body); err != nil {
				var xe *Error
				if !errors.As(err, &xe) || Status(xe.Name) == 0 {
					t.Fatalf("error without a specification name: %v", err)
				}
			}
		}
		ParseHealthRequest(body)
	})
}

// FuzzDecodeResponse: the client's decoding of a proxy's answers never
// panics and refuses with a CallError.
func FuzzDecodeResponse(f *testing.F) {
	f.Add(200, []byte(`{"plaintext":"AAAA"}`))
	f.Add(400, []byte(`{"errorName":"ValidationException","errorMessage":"m"}`))
	f.Add(200, []byte(`{"xksProxyFleetSize":1,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e","ekmFleetDetails":[{"id":"i","model":"m","healthStatus":"ACTIVE"}]}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		outs := []any{&HealthResponse{}, &MetadataResponse{}, &EncryptResponse{}, &DecryptResponse{}}
		for _, out := range outs {
			if err := DecodeResponse(status, body, out); err != nil {
				var ce *CallError
				if !errors.As(err, &ce) {
					t.Fatalf("not a CallError: %v", err)
				}
			}
		}
		if h := outs[0].(*HealthResponse); h.check() == nil && len(h.EkmFleetDetails) == 0 {
			t.Fatal("accepted a health answer without a fleet")
		}
	})
}
