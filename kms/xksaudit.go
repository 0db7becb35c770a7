package kms

import (
	"context"

	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/hsmkms/hsmkms/xks/proxy"
)

// Calls to the XKS proxy API that hsmkms serves (xks/proxy) are not KMS
// API calls: AWS KMS (or another KMS) makes them, with its own SigV4
// credential for the proxy, on behalf of the KMS request named in the
// request metadata. CloudTrail records the KMS request in the caller's
// account; the XKS specification leaves the proxy's own logging to the
// proxy, and sends the request metadata (principal, KMS key, KMS
// operation and request id) so that the key manager's owner can audit
// every use of an external key. hsmkms records each one in the same trail,
// durable before the answer, so an external key's use is as provable as a
// KMS key's: eventSource XKSSource, eventType XKSEvent (a SIEM counting
// KMS calls counts AwsApiCall records of kms.amazonaws.com and is not
// misled), the metadata in requestParameters, never a plaintext,
// ciphertext, AAD, IV or tag.

// XKS proxy records.
const (
	// XKSSource is the eventSource of calls to hsmkms's XKS proxy.
	XKSSource = "hsmkms.xks-proxy"
	// XKSEvent is their eventType.
	XKSEvent = "XksProxyApiCall"
)

// AuditXKSProxyCall records a call to the XKS proxy (proxy.Auditor). With
// no trail it records nothing.
func (s *Service) AuditXKSProxyCall(ctx context.Context, c *proxy.Call) error {
	if s.trail == nil {
		return nil
	}
	ev := &audit.Event{
		EventVersion: audit.EventVersion,
		UserIdentity: audit.UserIdentity{Type: "XksProxyCredential", AccessKeyID: bounded(c.AccessKeyID)},
		EventTime:    audit.FormatTime(c.Time), Time: c.Time,
		EventSource: XKSSource, EventName: sanitizeName(c.Operation), AWSRegion: bounded(c.Region),
		SourceIPAddress: c.SourceIP, UserAgent: bounded(c.UserAgent),
		ErrorCode: c.ErrorName, ErrorMessage: c.ErrorMessage,
		RequestParameters: xksRequestParameters(c),
		RequestID:         c.RequestID, EventID: audit.NewID(), ReadOnly: true,
		EventType: XKSEvent, ManagementEvent: false, EventCategory: "Data",
		TLSDetails: tlsDetails(c.TLS, bounded(c.Host)),
	}
	if c.Operation == "" {
		ev.EventName = "UnknownOperation"
	}
	if c.KeyMetadata != nil {
		ev.ResponseElements = audit.Fields{{Name: "keySpec", Value: c.KeyMetadata.KeySpec},
			{Name: "keyUsage", Value: c.KeyMetadata.KeyUsage}, {Name: "keyStatus", Value: c.KeyMetadata.KeyStatus}}
	}
	if c.Authorization != "" {
		ev.AdditionalEventData = audit.Fields{{Name: "secondaryAuthorization", Value: c.Authorization}}
	}
	_, err := s.trail.Append(ctx, ev)
	return err
}

// xksRequestParameters are an XKS proxy call's parameters: the prefix,
// the external key, the algorithm and the request metadata as sent.
func xksRequestParameters(c *proxy.Call) audit.Fields {
	f := audit.Fields{{Name: "uriPathPrefix", Value: bounded(c.Prefix)}}
	if c.KeyID != "" {
		f.Add("keyId", bounded(c.KeyID))
	}
	if c.EncryptionAlgorithm != "" {
		f.Add("encryptionAlgorithm", bounded(c.EncryptionAlgorithm))
	}
	md := audit.Fields{}
	for _, m := range []struct{ name, v string }{
		{"awsPrincipalArn", c.Metadata.AwsPrincipalArn}, {"awsSourceVpc", c.Metadata.AwsSourceVpc},
		{"awsSourceVpce", c.Metadata.AwsSourceVpce}, {"kmsKeyArn", c.Metadata.KmsKeyArn},
		{"kmsOperation", c.Metadata.KmsOperation}, {"kmsRequestId", c.Metadata.KmsRequestID},
		{"kmsViaService", c.Metadata.KmsViaService},
	} {
		if m.v != "" {
			md.Add(m.name, bounded(m.v))
		}
	}
	if len(md) > 0 {
		f.Add("requestMetadata", md)
	}
	return f
}
