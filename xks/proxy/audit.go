package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"time"

	"github.com/hsmkms/hsmkms/kms/sigv4"
	"github.com/hsmkms/hsmkms/xks"
)

// Call is one request to the proxy as an audit trail records it: who
// signed it, what AWS KMS said it was for (the request metadata), which
// external key, and the outcome. It never holds the plaintext,
// ciphertext, additional authenticated data, IV or tag.
type Call struct {
	// RequestID is the proxy's own id of the request (the
	// x-hsmkms-request-id header); the KMS request id is in Metadata.
	RequestID string
	Time      time.Time
	// Prefix is the URI path prefix the request named ("-" for one this
	// proxy does not serve), Operation the XKS operation ("" for none)
	// and KeyID the external key (GetKeyMetadata, Encrypt, Decrypt).
	Prefix, Operation, KeyID string
	// Metadata is the request's requestMetadata, as the caller sent it.
	Metadata xks.RequestMetadata
	// AccessKeyID and Region are what the request's signature claims
	// (checked unless ErrorName is AuthenticationFailedException).
	AccessKeyID, Region string
	SourceIP, UserAgent string
	TLS                 *tls.ConnectionState
	Host                string
	// EncryptionAlgorithm is Encrypt's or Decrypt's.
	EncryptionAlgorithm string
	// Authorization is the secondary authorization's decision, if the
	// prefix has a policy.
	Authorization string
	// KeyMetadata is GetKeyMetadata's answer.
	KeyMetadata *xks.MetadataResponse
	// ErrorName and ErrorMessage are the error answered; "" on success.
	ErrorName, ErrorMessage string
}

// Auditor records a call before it is answered. If it returns an error
// the proxy answers InternalException instead: an Encrypt's or Decrypt's
// result never leaves the proxy unrecorded.
type Auditor func(ctx context.Context, c *Call) error

// record builds c's Call and has the auditor record it.
func (p *Proxy) record(r *http.Request, c *call, prefix, ip string, err error) error {
	rec := &Call{
		RequestID: c.id, Time: c.start, Prefix: prefix, Operation: string(c.path.Operation), KeyID: c.path.KeyID,
		Metadata: c.md, SourceIP: ip, UserAgent: r.UserAgent(), TLS: r.TLS, Host: r.Host,
		EncryptionAlgorithm: c.alg, Authorization: c.authz, KeyMetadata: c.keyMetadata,
	}
	if a, aerr := sigv4.ParseAuthorization(r.Header.Get("Authorization")); aerr == nil {
		rec.AccessKeyID, rec.Region = a.AccessKeyID, a.Region
	}
	if err != nil {
		var xe *xks.Error
		switch {
		case errors.Is(err, errMethod):
			rec.ErrorName, rec.ErrorMessage = "MethodNotAllowed", "The XKS proxy API takes POST requests only."
		case errors.As(err, &xe):
			rec.ErrorName, rec.ErrorMessage = xe.Name, xe.Message
		default:
			rec.ErrorName, rec.ErrorMessage = xks.InternalException, "The proxy failed to serve the request."
		}
	}
	return p.audit(r.Context(), rec)
}
