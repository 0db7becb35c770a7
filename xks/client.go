package xks

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hsmkms/hsmkms/kms/sigv4"
)

// Service is the SigV4 service name of the XKS proxy API.
const Service = "kms-xks-proxy"

// DefaultTimeout is how long AWS KMS waits for a proxy's answer.
const DefaultTimeout = 250 * time.Millisecond

// ClientConfig says how to reach one proxy.
type ClientConfig struct {
	// Endpoint is XksProxyUriEndpoint: https:// and a host name, no port
	// (AWS KMS always connects to port 443).
	Endpoint string
	// Path is XksProxyUriPath: the prefix and /kms/xks/v1.
	Path string
	// AccessKeyID and Secret are XksProxyAuthenticationCredential.
	AccessKeyID, Secret string
	// Region goes into the signature's credential scope.
	Region string
	// RootCAs are the only CAs the proxy's certificate may chain to; nil
	// trusts none, so every call fails TLS.
	RootCAs *x509.CertPool
	// ConnectTo maps an endpoint host to the HOST:PORT to dial instead of
	// HOST:443, as curl's --connect-to does; the TLS server name and the
	// signed Host stay the endpoint's.
	ConnectTo map[string]string
	// Timeout bounds each call, connection included; 0 is DefaultTimeout.
	Timeout time.Duration
	// Now is the signing clock; nil is time.Now.
	Now func() time.Time
}

// Client calls one proxy. Safe for concurrent use; it keeps connections
// alive between calls.
type Client struct {
	cfg  ClientConfig
	base string // endpoint + path
	host string
	http *http.Client
}

// NewClient checks cfg's endpoint and path and returns a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Port() != "" || u.Path != "" || u.RawQuery != "" {
		return nil, fmt.Errorf("xks: endpoint %q is not https://HOST", cfg.Endpoint)
	}
	prefix, ok := strings.CutSuffix(cfg.Path, APIPath)
	if !ok || !validPrefix(prefix) || len(cfg.Path) > MaxURIPathLength {
		return nil, fmt.Errorf("xks: path %q is not PREFIX/kms/xks/v1", cfg.Path)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	host := u.Hostname()
	dialer := &net.Dialer{Timeout: cfg.Timeout}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: cfg.RootCAs, ServerName: host, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: cfg.Timeout,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			h, _, _ := net.SplitHostPort(addr)
			if to, ok := cfg.ConnectTo[h]; ok {
				addr = to
			}
			return dialer.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2: false,
	}
	if cfg.RootCAs == nil {
		tr.TLSClientConfig.RootCAs = x509.NewCertPool()
	}
	return &Client{cfg: cfg, base: "https://" + u.Host + cfg.Path, host: u.Host, http: &http.Client{Transport: tr}}, nil
}

// Close drops the client's idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Failure is how a call to a proxy failed, in the terms of the
// specification's table of KMS exceptions.
type Failure int

const (
	// FailProxy: the proxy answered with one of the specification's
	// errors, in CallError.ErrorName.
	FailProxy Failure = iota + 1
	// FailUnreachable: no TCP connection could be made.
	FailUnreachable
	// FailTLS: the TLS connection could not be made (the certificate does
	// not chain to a trusted CA or name the host, the versions or suites
	// do not meet).
	FailTLS
	// FailTimeout: the proxy did not answer in time.
	FailTimeout
	// FailInvalidResponse: the proxy answered something the specification
	// does not allow (not JSON, a missing field, an unknown error name, a
	// CDIV that does not match).
	FailInvalidResponse
)

func (f Failure) String() string {
	return map[Failure]string{FailProxy: "proxy error", FailUnreachable: "unreachable", FailTLS: "TLS",
		FailTimeout: "timeout", FailInvalidResponse: "invalid response"}[f]
}

// CallError is a failed call. Its text is for logs: it names the proxy's
// error and message, never a plaintext or a secret.
type CallError struct {
	Failure   Failure
	ErrorName string // FailProxy: the proxy's errorName
	Message   string // FailProxy: the proxy's errorMessage, if any
	Err       error
}

func (e *CallError) Error() string {
	if e.Failure == FailProxy {
		return fmt.Sprintf("xks: proxy answered %s: %s", e.ErrorName, e.Message)
	}
	return fmt.Sprintf("xks: %s: %v", e.Failure, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

// Health calls GetHealthStatus.
func (c *Client) Health(ctx context.Context, md RequestMetadata) (*HealthResponse, error) {
	var out HealthResponse
	if err := c.call(ctx, "/health", HealthRequest{RequestMetadata: md}, &out); err != nil {
		return nil, err
	}
	if err := out.check(); err != nil {
		return nil, invalidResponse(err)
	}
	return &out, nil
}

// GetKeyMetadata calls GetKeyMetadata for the external key id.
func (c *Client) GetKeyMetadata(ctx context.Context, id string, md RequestMetadata) (*MetadataResponse, error) {
	var out MetadataResponse
	if err := c.call(ctx, "/keys/"+id+"/metadata", MetadataRequest{RequestMetadata: md}, &out); err != nil {
		return nil, err
	}
	if out.KeySpec == "" || out.KeyStatus == "" || out.KeyUsage == nil || len(out.KeyUsage) > MaxKeyUsages {
		return nil, invalidResponse(errors.New("GetKeyMetadata answer lacks keySpec, keyUsage or keyStatus, or has more than 10 usages"))
	}
	return &out, nil
}

// Sealed is what Encrypt returns and Decrypt takes: the proxy's
// ciphertext and what it needs to open it.
type Sealed struct {
	Ciphertext, Metadata, IV, Tag []byte
}

// Encrypt calls Encrypt for the external key id, asking for the CDIV and
// checking it before anything is returned, as AWS KMS does: a ciphertext
// corrupted on its way back is refused here, not found unreadable later.
func (c *Client) Encrypt(ctx context.Context, id string, md RequestMetadata, plaintext, aad []byte) (*Sealed, error) {
	var out EncryptResponse
	in := EncryptRequest{RequestMetadata: md, Plaintext: plaintext, EncryptionAlgorithm: EncryptionAlgorithm,
		AdditionalAuthenticatedData: aad, CiphertextDataIntegrityValueAlgorithm: CDIVAlgorithm}
	if err := c.call(ctx, "/keys/"+id+"/encrypt", in, &out); err != nil {
		return nil, err
	}
	switch {
	case len(out.Ciphertext) != len(plaintext):
		return nil, invalidResponse(fmt.Errorf("Encrypt answered %d bytes of ciphertext for %d of plaintext", len(out.Ciphertext), len(plaintext)))
	case len(out.InitializationVector) != 12 && len(out.InitializationVector) != 16:
		return nil, invalidResponse(fmt.Errorf("Encrypt answered a %d-byte IV", len(out.InitializationVector)))
	case len(out.AuthenticationTag) != GCMTagSize:
		return nil, invalidResponse(fmt.Errorf("Encrypt answered a %d-byte tag", len(out.AuthenticationTag)))
	case len(out.CiphertextMetadata) > MaxCiphertextMetadata:
		return nil, invalidResponse(fmt.Errorf("Encrypt answered %d bytes of ciphertext metadata", len(out.CiphertextMetadata)))
	}
	want := CDIV(aad, out.CiphertextMetadata, out.InitializationVector, out.Ciphertext, out.AuthenticationTag)
	if subtle.ConstantTimeCompare(want, out.CiphertextDataIntegrityValue) != 1 {
		return nil, invalidResponse(errors.New("Encrypt answered a ciphertext data integrity value that does not match"))
	}
	return &Sealed{Ciphertext: out.Ciphertext, Metadata: out.CiphertextMetadata, IV: out.InitializationVector, Tag: out.AuthenticationTag}, nil
}

// Decrypt calls Decrypt for the external key id.
func (c *Client) Decrypt(ctx context.Context, id string, md RequestMetadata, s *Sealed, aad []byte) ([]byte, error) {
	var out DecryptResponse
	in := DecryptRequest{RequestMetadata: md, Ciphertext: s.Ciphertext, CiphertextMetadata: s.Metadata, EncryptionAlgorithm: EncryptionAlgorithm,
		AdditionalAuthenticatedData: aad, InitializationVector: s.IV, AuthenticationTag: s.Tag}
	if err := c.call(ctx, "/keys/"+id+"/decrypt", in, &out); err != nil {
		return nil, err
	}
	if len(out.Plaintext) != len(s.Ciphertext) {
		return nil, invalidResponse(fmt.Errorf("Decrypt answered %d bytes of plaintext for %d of ciphertext", len(out.Plaintext), len(s.Ciphertext)))
	}
	return out.Plaintext, nil
}

func invalidResponse(err error) error {
	return &CallError{Failure: FailInvalidResponse, Err: err}
}

// call POSTs in as JSON to the operation's path, signed, and decodes a 200
// answer into out.
func (c *Client) call(ctx context.Context, op string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+op, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	sigv4.Sign(req, body, c.cfg.AccessKeyID, c.cfg.Secret, c.cfg.Region, Service, c.cfg.Now())
	resp, err := c.http.Do(req)
	if err != nil {
		return classifyTransport(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return classifyTransport(err)
	}
	if len(data) > MaxBody {
		return invalidResponse(errors.New("the answer is larger than any the specification allows"))
	}
	return DecodeResponse(resp.StatusCode, data, out)
}

// DecodeResponse decodes a proxy's answer: a 200 answer into out (which
// must be one of the response types), anything else into a CallError.
func DecodeResponse(status int, data []byte, out any) error {
	if status != http.StatusOK {
		var e Error
		if json.Unmarshal(data, &e) != nil || Status(e.Name) == 0 {
			return invalidResponse(fmt.Errorf("HTTP %d without one of the specification's errors", status))
		}
		return &CallError{Failure: FailProxy, ErrorName: e.Name, Message: printable(e.Message)}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(out); err != nil {
		return invalidResponse(fmt.Errorf("the answer is not the operation's JSON: %s", jsonProblem(err)))
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalidResponse(errors.New("the answer has data after its JSON object"))
	}
	return nil
}

func (h *HealthResponse) check() error {
	if h.XksProxyFleetSize < 1 || h.XksProxyVendor == "" || h.XksProxyModel == "" || h.EkmVendor == "" ||
		len(h.EkmFleetDetails) < 1 || len(h.EkmFleetDetails) > MaxFleetDetails {
		return errors.New("GetHealthStatus answer lacks a field the specification requires")
	}
	for _, d := range h.EkmFleetDetails {
		if d.ID == "" || d.Model == "" {
			return errors.New("GetHealthStatus answer has a fleet entry without id or model")
		}
		switch d.HealthStatus {
		case HealthActive, HealthDegraded, HealthUnavailable:
		default:
			return errors.New("GetHealthStatus answer has an unknown healthStatus")
		}
	}
	return nil
}

// AllUnavailable reports whether every external key manager in h is
// UNAVAILABLE: AWS KMS treats that proxy as unreachable.
func (h *HealthResponse) AllUnavailable() bool {
	for _, d := range h.EkmFleetDetails {
		if d.HealthStatus != HealthUnavailable {
			return false
		}
	}
	return true
}

// classifyTransport tells a connection that could not be made, a TLS
// failure and a timeout apart.
func classifyTransport(err error) error {
	var opErr *net.OpError
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var recHdr tls.RecordHeaderError
	var alert tls.AlertError
	switch {
	case errors.As(err, &certErr), errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &invalid),
		errors.As(err, &recHdr), errors.As(err, &alert), strings.Contains(err.Error(), "tls: "):
		return &CallError{Failure: FailTLS, Err: err}
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return &CallError{Failure: FailUnreachable, Err: err}
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return &CallError{Failure: FailTimeout, Err: err}
	}
	return &CallError{Failure: FailUnreachable, Err: err}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
