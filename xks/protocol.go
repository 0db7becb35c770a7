// Package xks is AWS's External Key Store (XKS) proxy API, version 1
// (aws/aws-kms-xksproxy-api-spec, xks_proxy_api_spec.md): the four
// operations' request and response shapes, their limits, the error names
// and the HTTP status of each, the additional authenticated data a proxy
// gives its key manager, the ciphertext data integrity value (CDIV), the
// URI paths, and a client that signs requests with SigV4 as AWS KMS does.
//
// It exists so both sides of hsmkms speak the protocol from one
// definition: the proxy (xks/proxy), which serves external keys on a
// token to AWS KMS, and kms's EXTERNAL_KEY_STORE custom key stores, which
// call any XKS proxy (hsmkms's own included) through Client.
//
// Everything that parses bytes from the other side (Parse*Request on the
// proxy, the response decoding in Client) refuses what the specification
// does not allow, with the error name the specification gives, and never
// panics; each has a fuzz target. No error or log built here carries a
// plaintext, a secret or a key.
package xks

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Version 1 of the API lives under this path, after an optional prefix.
const APIPath = "/kms/xks/v1"

// The specification's limits. Each is what a proxy MUST accept; hsmkms's
// proxy accepts exactly that much and answers UnsupportedOperationException
// beyond it, as the specification says a proxy does for a value larger
// than its implementation supports.
const (
	MaxPlaintext          = 4300
	MaxCiphertext         = 4300
	MaxAAD                = 8192
	MaxCiphertextMetadata = 20
	MaxKeyIDLength        = 128
	MaxURIPathLength      = 128  // XksProxyUriPath: prefix and /kms/xks/v1
	MaxARNLength          = 2048 // ARNs in requestMetadata a proxy must take
	MaxKeyUsages          = 10
	MaxFleetDetails       = 10
	MaxErrorMessage       = 511 // "less than 512 characters"
	// MaxBody bounds a request or response body: the largest valid request
	// (4300 bytes of ciphertext and 8192 of AAD in Base64, and the ARNs of
	// requestMetadata) is about 25 KiB.
	MaxBody = 64 << 10
	// EncryptionAlgorithm is the only algorithm of version 1.
	EncryptionAlgorithm = "AES_GCM"
	// CDIVAlgorithm is the only ciphertext data integrity algorithm of
	// version 1.
	CDIVAlgorithm = "SHA_256"
	// KeySpecAES256 is the only key spec AWS KMS accepts.
	KeySpecAES256 = "AES_256"
	GCMTagSize    = 16
)

// The error names of the specification ("Error codes"). Status gives the
// HTTP status of each.
const (
	ValidationException           = "ValidationException"
	InvalidStateException         = "InvalidStateException"
	InvalidCiphertextException    = "InvalidCiphertextException"
	InvalidKeyUsageException      = "InvalidKeyUsageException"
	AuthenticationFailedException = "AuthenticationFailedException"
	AccessDeniedException         = "AccessDeniedException"
	KeyNotFoundException          = "KeyNotFoundException"
	InvalidUriPathException       = "InvalidUriPathException"
	ThrottlingException           = "ThrottlingException"
	UnsupportedOperationException = "UnsupportedOperationException"
	DependencyTimeoutException    = "DependencyTimeoutException"
	InternalException             = "InternalException"
)

var statuses = map[string]int{
	ValidationException:           http.StatusBadRequest,
	InvalidStateException:         http.StatusBadRequest,
	InvalidCiphertextException:    http.StatusBadRequest,
	InvalidKeyUsageException:      http.StatusBadRequest,
	AuthenticationFailedException: http.StatusUnauthorized,
	AccessDeniedException:         http.StatusForbidden,
	KeyNotFoundException:          http.StatusNotFound,
	InvalidUriPathException:       http.StatusNotFound,
	ThrottlingException:           http.StatusTooManyRequests,
	UnsupportedOperationException: http.StatusNotImplemented,
	DependencyTimeoutException:    http.StatusServiceUnavailable,
	InternalException:             http.StatusInternalServerError,
}

// Status is the HTTP status the specification gives errorName, 0 for a
// name it does not define.
func Status(errorName string) int { return statuses[errorName] }

// Error is an error as a proxy answers it: {"errorName", "errorMessage"}.
type Error struct {
	Name    string `json:"errorName"`
	Message string `json:"errorMessage,omitempty"`
}

func (e *Error) Error() string { return "xks: " + e.Name + ": " + e.Message }

// Errorf builds an *Error. The message is trimmed to what the
// specification allows: printable ASCII, under 512 characters.
func Errorf(name, format string, args ...any) *Error {
	return &Error{Name: name, Message: printable(fmt.Sprintf(format, args...))}
}

func printable(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	if len(b) > MaxErrorMessage {
		b = b[:MaxErrorMessage]
	}
	return string(b)
}

// Operation is one of the four operations.
type Operation string

const (
	GetKeyMetadata  Operation = "GetKeyMetadata"
	Encrypt         Operation = "Encrypt"
	Decrypt         Operation = "Decrypt"
	GetHealthStatus Operation = "GetHealthStatus"
)

// Path is a parsed request path: the prefix before /kms/xks/v1 ("" when
// none), the operation and, for the key operations, the external key id.
type Path struct {
	Prefix    string
	Operation Operation
	KeyID     string
}

// ParsePath splits a request path. It fails (InvalidUriPathException) for
// anything that is not one of the four operations' URIs; an external key
// id of the wrong form is a ValidationException, the path being otherwise
// one of the API's.
func ParsePath(p string) (Path, error) {
	i := strings.LastIndex(p, APIPath+"/")
	if i < 0 || len(p) > MaxURIPathLength+MaxKeyIDLength+len("/keys//metadata") {
		return Path{}, Errorf(InvalidUriPathException, "The URI path is not an XKS proxy API path.")
	}
	prefix, rest := p[:i], p[i+len(APIPath):]
	if len(prefix)+len(APIPath) > MaxURIPathLength || !validPrefix(prefix) {
		return Path{}, Errorf(InvalidUriPathException, "The URI path prefix is not valid.")
	}
	if rest == "/health" {
		return Path{Prefix: prefix, Operation: GetHealthStatus}, nil
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[0] != "" || parts[1] != "keys" {
		return Path{}, Errorf(InvalidUriPathException, "The URI path is not an XKS proxy API path.")
	}
	var op Operation
	switch parts[3] {
	case "metadata":
		op = GetKeyMetadata
	case "encrypt":
		op = Encrypt
	case "decrypt":
		op = Decrypt
	default:
		return Path{}, Errorf(InvalidUriPathException, "The URI path names no XKS proxy operation.")
	}
	if !ValidKeyID(parts[2]) {
		return Path{Prefix: prefix, Operation: op}, Errorf(ValidationException, "The external key id must be 1 to 128 letters, digits, periods, hyphens and underscores.")
	}
	return Path{Prefix: prefix, Operation: op, KeyID: parts[2]}, nil
}

// ValidPrefix reports whether p (without /kms/xks/v1) is a path prefix AWS
// accepts in XksProxyUriPath: "" or "/" followed by letters, digits, '/',
// '-' and '_', not ending in '/'.
func ValidPrefix(p string) bool { return validPrefix(p) }

func validPrefix(p string) bool {
	if p == "" {
		return true
	}
	if p[0] != '/' || p[len(p)-1] == '/' || strings.Contains(p, "//") {
		return false
	}
	for _, c := range []byte(p) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '/' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// ValidKeyID reports whether id is an external key id of the
// specification's form: 1-128 of A-Z a-z 0-9 . - _.
func ValidKeyID(id string) bool {
	if len(id) == 0 || len(id) > MaxKeyIDLength {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// RequestMetadata is what AWS KMS says about the call behind a request.
// A proxy must not reject a kmsOperation it does not know, nor validate
// kmsRequestId; fields KMS may add later are ignored.
type RequestMetadata struct {
	AwsPrincipalArn string `json:"awsPrincipalArn,omitempty"`
	AwsSourceVpc    string `json:"awsSourceVpc,omitempty"`
	AwsSourceVpce   string `json:"awsSourceVpce,omitempty"`
	KmsKeyArn       string `json:"kmsKeyArn,omitempty"`
	KmsOperation    string `json:"kmsOperation"`
	KmsRequestID    string `json:"kmsRequestId"`
	KmsViaService   string `json:"kmsViaService,omitempty"`
}

// MetadataRequest is GetKeyMetadata's body.
type MetadataRequest struct {
	RequestMetadata RequestMetadata `json:"requestMetadata"`
}

// MetadataResponse is GetKeyMetadata's answer.
type MetadataResponse struct {
	KeySpec   string   `json:"keySpec"`
	KeyUsage  []string `json:"keyUsage"`
	KeyStatus string   `json:"keyStatus"`
}

// EncryptRequest is Encrypt's body. Byte fields are Base64 on the wire.
type EncryptRequest struct {
	RequestMetadata                       RequestMetadata `json:"requestMetadata"`
	Plaintext                             []byte          `json:"plaintext"`
	EncryptionAlgorithm                   string          `json:"encryptionAlgorithm"`
	AdditionalAuthenticatedData           []byte          `json:"additionalAuthenticatedData,omitempty"`
	CiphertextDataIntegrityValueAlgorithm string          `json:"ciphertextDataIntegrityValueAlgorithm,omitempty"`
}

// EncryptResponse is Encrypt's answer.
type EncryptResponse struct {
	Ciphertext                   []byte `json:"ciphertext"`
	CiphertextMetadata           []byte `json:"ciphertextMetadata,omitempty"`
	InitializationVector         []byte `json:"initializationVector"`
	AuthenticationTag            []byte `json:"authenticationTag"`
	CiphertextDataIntegrityValue []byte `json:"ciphertextDataIntegrityValue,omitempty"`
}

// DecryptRequest is Decrypt's body.
type DecryptRequest struct {
	RequestMetadata             RequestMetadata `json:"requestMetadata"`
	Ciphertext                  []byte          `json:"ciphertext"`
	CiphertextMetadata          []byte          `json:"ciphertextMetadata,omitempty"`
	EncryptionAlgorithm         string          `json:"encryptionAlgorithm"`
	AdditionalAuthenticatedData []byte          `json:"additionalAuthenticatedData,omitempty"`
	InitializationVector        []byte          `json:"initializationVector"`
	AuthenticationTag           []byte          `json:"authenticationTag"`
}

// DecryptResponse is Decrypt's answer.
type DecryptResponse struct {
	Plaintext []byte `json:"plaintext"`
}

// HealthRequest is GetHealthStatus's body.
type HealthRequest struct {
	RequestMetadata RequestMetadata `json:"requestMetadata"`
}

// HealthResponse is GetHealthStatus's answer.
type HealthResponse struct {
	XksProxyFleetSize int              `json:"xksProxyFleetSize"`
	XksProxyVendor    string           `json:"xksProxyVendor"`
	XksProxyModel     string           `json:"xksProxyModel"`
	EkmVendor         string           `json:"ekmVendor"`
	EkmFleetDetails   []EkmFleetDetail `json:"ekmFleetDetails"`
}

// EkmFleetDetail is one external key manager in a health answer.
type EkmFleetDetail struct {
	ID           string `json:"id"`
	Model        string `json:"model"`
	HealthStatus string `json:"healthStatus"`
}

// The health statuses of an external key manager.
const (
	HealthActive      = "ACTIVE"
	HealthDegraded    = "DEGRADED"
	HealthUnavailable = "UNAVAILABLE"
)

// TokenAAD is the additional authenticated data a proxy gives its key
// manager's AES-GCM, per the specification's Encrypt section: the 2-byte
// big-endian length of additionalAuthenticatedData, it, the 1-byte length
// of ciphertextMetadata, it. The lengths keep an AAD that ends like a
// metadata from opening a ciphertext made with that metadata. aad is at
// most MaxAAD and meta at most MaxCiphertextMetadata bytes (the callers
// check).
func TokenAAD(aad, meta []byte) []byte {
	out := make([]byte, 0, 2+len(aad)+1+len(meta))
	out = binary.BigEndian.AppendUint16(out, uint16(len(aad)))
	out = append(out, aad...)
	out = append(out, byte(len(meta)))
	return append(out, meta...)
}

// CDIV is the ciphertext data integrity value (Appendix C): the SHA-256 of
// aad ‖ ciphertextMetadata ‖ initializationVector ‖ ciphertext ‖
// authenticationTag, an absent field counting as empty.
func CDIV(aad, meta, iv, ciphertext, tag []byte) []byte {
	h := sha256.New()
	for _, b := range [][]byte{aad, meta, iv, ciphertext, tag} {
		h.Write(b)
	}
	return h.Sum(nil)
}

// decodeObject decodes body, a single JSON object, into v. Fields it does
// not know are ignored (KMS may add requestMetadata fields); anything
// else wrong is a ValidationException that names no value from the body.
func decodeObject(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return Errorf(ValidationException, "The request body is not a valid JSON object of this operation: %s", jsonProblem(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(ValidationException, "The request body has data after its JSON object.")
	}
	return nil
}

// jsonProblem says what was wrong without quoting the body (which may
// hold a plaintext).
func jsonProblem(err error) string {
	switch e := err.(type) {
	case *json.UnmarshalTypeError:
		return "field " + e.Field + " has the wrong type"
	case *json.SyntaxError:
		return fmt.Sprintf("syntax error at offset %d", e.Offset)
	case base64.CorruptInputError:
		return "a field is not valid Base64"
	}
	if strings.Contains(err.Error(), "base64") {
		return "a field is not valid Base64"
	}
	return "malformed"
}

// rawFields reports which top-level fields body has (after decodeObject
// succeeded): []byte fields cannot tell absent from empty otherwise.
func rawFields(body []byte) map[string]bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = string(v) != "null"
	}
	return out
}

func checkMetadata(md RequestMetadata, needKeyARN bool) error {
	switch {
	case md.KmsRequestID == "":
		return Errorf(ValidationException, "requestMetadata.kmsRequestId is required.")
	case md.KmsOperation == "":
		return Errorf(ValidationException, "requestMetadata.kmsOperation is required.")
	case md.AwsPrincipalArn == "":
		return Errorf(ValidationException, "requestMetadata.awsPrincipalArn is required.")
	case needKeyARN && md.KmsKeyArn == "":
		return Errorf(ValidationException, "requestMetadata.kmsKeyArn is required.")
	}
	for _, f := range []struct{ name, v string }{
		{"awsPrincipalArn", md.AwsPrincipalArn}, {"kmsKeyArn", md.KmsKeyArn}, {"awsSourceVpc", md.AwsSourceVpc},
		{"awsSourceVpce", md.AwsSourceVpce}, {"kmsOperation", md.KmsOperation}, {"kmsRequestId", md.KmsRequestID},
		{"kmsViaService", md.KmsViaService},
	} {
		if len(f.v) > MaxARNLength {
			return Errorf(UnsupportedOperationException, "requestMetadata.%s is longer than %d characters.", f.name, MaxARNLength)
		}
	}
	return nil
}

// ParseMetadataRequest parses and checks a GetKeyMetadata body.
func ParseMetadataRequest(body []byte) (*MetadataRequest, error) {
	var r MetadataRequest
	if err := decodeObject(body, &r); err != nil {
		return nil, err
	}
	if !rawFields(body)["requestMetadata"] {
		return nil, Errorf(ValidationException, "requestMetadata is required.")
	}
	return &r, checkMetadata(r.RequestMetadata, false)
}

// ParseEncryptRequest parses and checks an Encrypt body.
func ParseEncryptRequest(body []byte) (*EncryptRequest, error) {
	var r EncryptRequest
	if err := decodeObject(body, &r); err != nil {
		return nil, err
	}
	has := rawFields(body)
	switch {
	case !has["requestMetadata"]:
		return nil, Errorf(ValidationException, "requestMetadata is required.")
	case !has["plaintext"]:
		return nil, Errorf(ValidationException, "plaintext is required.")
	case r.EncryptionAlgorithm == "":
		return nil, Errorf(ValidationException, "encryptionAlgorithm is required.")
	case r.EncryptionAlgorithm != EncryptionAlgorithm:
		return nil, Errorf(ValidationException, "encryptionAlgorithm must be AES_GCM.")
	case has["ciphertextDataIntegrityValueAlgorithm"] && r.CiphertextDataIntegrityValueAlgorithm != CDIVAlgorithm:
		return nil, Errorf(ValidationException, "ciphertextDataIntegrityValueAlgorithm must be SHA_256.")
	case len(r.Plaintext) > MaxPlaintext:
		return nil, Errorf(UnsupportedOperationException, "The plaintext is larger than the %d bytes this proxy supports.", MaxPlaintext)
	case len(r.AdditionalAuthenticatedData) > MaxAAD:
		return nil, Errorf(UnsupportedOperationException, "The additional authenticated data is larger than the %d bytes this proxy supports.", MaxAAD)
	}
	return &r, checkMetadata(r.RequestMetadata, true)
}

// ParseDecryptRequest parses and checks a Decrypt body.
func ParseDecryptRequest(body []byte) (*DecryptRequest, error) {
	var r DecryptRequest
	if err := decodeObject(body, &r); err != nil {
		return nil, err
	}
	has := rawFields(body)
	switch {
	case !has["requestMetadata"]:
		return nil, Errorf(ValidationException, "requestMetadata is required.")
	case !has["ciphertext"]:
		return nil, Errorf(ValidationException, "ciphertext is required.")
	case r.EncryptionAlgorithm == "":
		return nil, Errorf(ValidationException, "encryptionAlgorithm is required.")
	case r.EncryptionAlgorithm != EncryptionAlgorithm:
		return nil, Errorf(ValidationException, "encryptionAlgorithm must be AES_GCM.")
	case !has["initializationVector"]:
		return nil, Errorf(ValidationException, "initializationVector is required.")
	case len(r.InitializationVector) != 12 && len(r.InitializationVector) != 16:
		return nil, Errorf(ValidationException, "initializationVector must be 12 or 16 bytes.")
	case !has["authenticationTag"]:
		return nil, Errorf(ValidationException, "authenticationTag is required.")
	case len(r.AuthenticationTag) != GCMTagSize:
		return nil, Errorf(ValidationException, "authenticationTag must be 16 bytes.")
	case len(r.CiphertextMetadata) > MaxCiphertextMetadata:
		return nil, Errorf(ValidationException, "ciphertextMetadata must not exceed %d bytes.", MaxCiphertextMetadata)
	case len(r.Ciphertext) > MaxCiphertext:
		return nil, Errorf(UnsupportedOperationException, "The ciphertext is larger than the %d bytes this proxy supports.", MaxCiphertext)
	case len(r.AdditionalAuthenticatedData) > MaxAAD:
		return nil, Errorf(UnsupportedOperationException, "The additional authenticated data is larger than the %d bytes this proxy supports.", MaxAAD)
	}
	return &r, checkMetadata(r.RequestMetadata, true)
}

// ParseHealthRequest reads what it can of a GetHealthStatus body, for the
// log. The specification gives GetHealthStatus no ValidationException: a
// signed request is answered with the fleet's health whatever its body.
func ParseHealthRequest(body []byte) RequestMetadata {
	var r HealthRequest
	if json.Unmarshal(body, &r) != nil {
		return RequestMetadata{}
	}
	return r.RequestMetadata
}
