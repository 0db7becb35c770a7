package wire

import (
	"fmt"
	"net/http"
)

// AWS exception names (the "__type" of an error response). Only the ones
// hsmkms raises are listed; the botocore model has the full set.
const (
	AccessDenied                 = "AccessDeniedException"
	AlreadyExists                = "AlreadyExistsException"
	Conflict                     = "ConflictException"
	CustomKeyStoreHasCMKs        = "CustomKeyStoreHasCMKsException"
	CustomKeyStoreInvalidState   = "CustomKeyStoreInvalidStateException"
	CustomKeyStoreNameInUse      = "CustomKeyStoreNameInUseException"
	CustomKeyStoreNotFound       = "CustomKeyStoreNotFoundException"
	CloudHsmClusterInUse         = "CloudHsmClusterInUseException"
	CloudHsmClusterInvalidConfig = "CloudHsmClusterInvalidConfigurationException"
	CloudHsmClusterNotActive     = "CloudHsmClusterNotActiveException"
	CloudHsmClusterNotFound      = "CloudHsmClusterNotFoundException"
	CloudHsmClusterNotRelated    = "CloudHsmClusterNotRelatedException"
	DependencyTimeout            = "DependencyTimeoutException"
	Disabled                     = "DisabledException"
	DryRunOperation              = "DryRunOperationException"
	IncorrectKey                 = "IncorrectKeyException"
	IncorrectKeyMaterial         = "IncorrectKeyMaterialException"
	ExpiredImportToken           = "ExpiredImportTokenException"
	InvalidImportToken           = "InvalidImportTokenException"
	IncorrectTrustAnchor         = "IncorrectTrustAnchorException"
	IncompleteSignature          = "IncompleteSignatureException"
	InvalidArn                   = "InvalidArnException"
	InvalidCiphertext            = "InvalidCiphertextException"
	InvalidGrantID               = "InvalidGrantIdException"
	InvalidGrantToken            = "InvalidGrantTokenException"
	InvalidKeyUsage              = "InvalidKeyUsageException"
	InvalidMarker                = "InvalidMarkerException"
	InvalidSignature             = "InvalidSignatureException"
	KMSInternal                  = "KMSInternalException"
	KMSInvalidMac                = "KMSInvalidMacException"
	KMSInvalidSignature          = "KMSInvalidSignatureException"
	KMSInvalidState              = "KMSInvalidStateException"
	LimitExceeded                = "LimitExceededException"
	MalformedPolicyDocument      = "MalformedPolicyDocumentException"
	MalformedQueryString         = "MalformedQueryStringException"
	MissingAuthenticationToken   = "MissingAuthenticationTokenException"
	NotAuthorized                = "NotAuthorizedException" // not in the KMS model: reserved alias/aws/ names
	NotFound                     = "NotFoundException"
	RequestExpired               = "RequestExpired"
	SerializationException       = "SerializationException"
	TagException                 = "TagException"
	Throttling                   = "ThrottlingException"
	UnknownOperation             = "UnknownOperationException"
	UnrecognizedClient           = "UnrecognizedClientException"
	UnsupportedOperation         = "UnsupportedOperationException"
	Validation                   = "ValidationException"

	// External key stores (EXTERNAL_KEY_STORE custom key stores).
	XksKeyAlreadyInUse                 = "XksKeyAlreadyInUseException"
	XksKeyInvalidConfiguration         = "XksKeyInvalidConfigurationException"
	XksKeyNotFound                     = "XksKeyNotFoundException"
	XksProxyIncorrectAuthentication    = "XksProxyIncorrectAuthenticationCredentialException"
	XksProxyInvalidConfiguration       = "XksProxyInvalidConfigurationException"
	XksProxyInvalidResponse            = "XksProxyInvalidResponseException"
	XksProxyURIInUse                   = "XksProxyUriInUseException"
	XksProxyURIUnreachable             = "XksProxyUriUnreachableException"
	XksProxyVpcEndpointServiceNotFound = "XksProxyVpcEndpointServiceNotFoundException"
)

// Error is an error as AWS KMS reports it: an exception name and a message
// meant for the client. It is built where the condition is known and written
// once, at the API edge. Its message must never carry plaintext, key bytes,
// PINs or secrets, nor internals the client has no business seeing.
type Error struct {
	Type    string
	Message string
	// HTTPStatus overrides the status Status derives from Type, for the
	// few exceptions AWS sends with an unusual one.
	HTTPStatus int
}

// Errorf builds an *Error of the given exception type.
func Errorf(typ, format string, args ...any) *Error {
	return &Error{Type: typ, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string { return e.Type + ": " + e.Message }

// Status is the HTTP status AWS sends with the exception: 500 for faults on
// the service's side (which SDKs retry), 400 for everything the client did.
func (e *Error) Status() int {
	if e.HTTPStatus != 0 {
		return e.HTTPStatus
	}
	switch e.Type {
	case KMSInternal:
		return http.StatusInternalServerError
	case DependencyTimeout:
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}

// Internal is the error for anything that went wrong inside hsmkms. The
// detail goes to the log, never to the client.
func Internal() *Error {
	return &Error{Type: KMSInternal, Message: "The request was rejected because an internal exception occurred. The request can be retried."}
}
