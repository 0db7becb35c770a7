// Package proxy is hsmkms as an AWS KMS external key store proxy: the four
// operations of the XKS proxy API (package xks) served over HTTPS for
// external keys held on PKCS#11 tokens (keystore.ExternalKeys), so that AWS
// KMS can keep keys outside AWS on the customer's own HSMs.
//
// One table of routes and one wrapper enforce, before any operation runs:
// the URI prefix (each with its own SigV4 credentials and optional
// secondary authorization policy), POST only (405 otherwise), the body
// limit, the in-flight bound (ThrottlingException), SigV4 with service
// kms-xks-proxy (host and x-amz-date signed, the payload hashed, ±5
// minutes), and a deadline for the token work (DependencyTimeoutException).
// Every request gets one log line with the request metadata, the outcome
// and the latency; plaintexts, keys and secrets never reach a log or an
// error.
//
// A Proxy is safe for concurrent use; its credentials and policies can be
// replaced while it serves (Reload), which is how credentials rotate
// without downtime.
package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/kms/sigv4"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/hsmkms/hsmkms/xks"
)

// Token is one external key manager of the fleet: a token of external keys.
type Token struct {
	// ID names it in health answers (ekmFleetDetails.id).
	ID   string
	Keys *keystore.ExternalKeys
}

// Credential is one SigV4 access key of a prefix.
type Credential struct {
	AccessKeyID, Secret string
}

// Prefix is one URI path prefix: what comes before /kms/xks/v1 ("" for
// none), the credentials that may sign for it (several, so one can be
// rotated while the other works), the secondary authorization policy (nil:
// none) and the tokens whose keys it serves, searched in order.
type Prefix struct {
	Path        string
	Credentials []Credential
	Policy      *authz.Policy
	Tokens      []*Token
}

// Config is what a Proxy serves.
type Config struct {
	Prefixes []Prefix
	// Regions are the Regions a signature may be scoped to.
	Regions []string
	Logger  hclog.Logger
	// Now is the clock of SigV4's skew check; nil is time.Now.
	Now func() time.Time
	// Timeout bounds each request's token work: past it the answer is
	// DependencyTimeoutException. 0 is DefaultTimeout.
	Timeout time.Duration
	// MaxInFlight bounds the requests served at once; more wait up to
	// QueueWait, then get ThrottlingException. 0 is DefaultMaxInFlight.
	MaxInFlight int
	QueueWait   time.Duration
	// FleetSize is how many proxies serve this endpoint
	// (xksProxyFleetSize); 0 is 1.
	FleetSize int
	// Version goes into xksProxyModel.
	Version string
	// HealthTTL is how long a deep health check's result answers
	// GetHealthStatus; 0 is DefaultHealthTTL, negative checks every time.
	HealthTTL time.Duration
	// Audit, if set, records every request served (all but /ping and
	// the ones throttled) before it is answered (audit.go).
	Audit Auditor
}

const (
	// DefaultTimeout leaves room in AWS KMS's 250 ms for the network.
	DefaultTimeout = 200 * time.Millisecond
	// DefaultMaxInFlight is hsmkms's KMS default: twice the default pool.
	DefaultMaxInFlight = 16
	// DefaultHealthTTL is how long a deep health check's result is
	// reused: the specification allows a cached result up to a minute
	// old; a second keeps AWS KMS's periodic checks and a burst of
	// connects from each touching every token, and a failure visible at
	// once.
	DefaultHealthTTL = time.Second
)

// Proxy serves the XKS proxy API. Build it with New.
type Proxy struct {
	log       hclog.Logger
	now       func() time.Time
	timeout   time.Duration
	fleetSize int
	version   string
	healthTTL time.Duration
	regions   map[string]bool
	slots     chan struct{}
	wait      time.Duration
	routes    atomic.Pointer[map[string]*route] // prefix path → its route
	audit     Auditor
}

// route is one prefix as served: its verifier, policy, tokens and health
// cache.
type route struct {
	Prefix
	verifier *sigv4.Verifier
	health   *healthCache
}

// New checks cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.FleetSize <= 0 {
		cfg.FleetSize = 1
	}
	if cfg.HealthTTL == 0 {
		cfg.HealthTTL = DefaultHealthTTL
	}
	if len(cfg.Regions) == 0 {
		return nil, errors.New("proxy: no Regions to accept signatures for")
	}
	p := &Proxy{audit: cfg.Audit, log: cfg.Logger, now: cfg.Now, timeout: cfg.Timeout, fleetSize: cfg.FleetSize, version: cfg.Version, healthTTL: cfg.HealthTTL,
		regions: map[string]bool{}, slots: make(chan struct{}, cfg.MaxInFlight), wait: cfg.QueueWait}
	for _, r := range cfg.Regions {
		p.regions[r] = true
	}
	if err := p.Reload(cfg.Prefixes); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload replaces the prefixes (their credentials, policies and tokens)
// while the proxy serves: a request already authenticated finishes with
// what it was authenticated by. It refuses a set that breaks a rule and
// keeps the old one.
func (p *Proxy) Reload(prefixes []Prefix) error {
	if len(prefixes) == 0 {
		return errors.New("proxy: no URI prefixes")
	}
	old := p.routes.Load()
	next := map[string]*route{}
	keyOwner := map[string]string{}
	for _, pre := range prefixes {
		switch {
		case !xks.ValidPrefix(pre.Path) || len(pre.Path)+len(xks.APIPath) > xks.MaxURIPathLength:
			return fmt.Errorf("proxy: %q is not a URI path prefix (letters, digits, / - _; at most %d characters with /kms/xks/v1)", pre.Path, xks.MaxURIPathLength)
		case next[pre.Path] != nil:
			return fmt.Errorf("proxy: prefix %q is declared twice", pre.Path)
		case len(pre.Credentials) == 0:
			return fmt.Errorf("proxy: prefix %q has no credentials", pre.Path)
		case len(pre.Tokens) == 0 || len(pre.Tokens) > xks.MaxFleetDetails:
			return fmt.Errorf("proxy: prefix %q needs 1 to %d tokens", pre.Path, xks.MaxFleetDetails)
		}
		secrets := map[string]string{}
		for _, c := range pre.Credentials {
			if owner, ok := keyOwner[c.AccessKeyID]; ok {
				// An access key id must name one secret: AWS KMS sends
				// only the id.
				return fmt.Errorf("proxy: access key id %s is declared for prefixes %q and %q", c.AccessKeyID, owner, pre.Path)
			}
			keyOwner[c.AccessKeyID] = pre.Path
			secrets[c.AccessKeyID] = c.Secret
		}
		rt := &route{Prefix: pre, verifier: &sigv4.Verifier{Service: xks.Service, Regions: p.regions, Now: p.now,
			Lookup: func(id string) (string, bool) { s, ok := secrets[id]; return s, ok }}}
		rt.health = &healthCache{}
		if old != nil {
			if prev := (*old)[pre.Path]; prev != nil && sameTokens(prev.Tokens, pre.Tokens) {
				rt.health = prev.health
			}
		}
		next[pre.Path] = rt
	}
	p.routes.Store(&next)
	return nil
}

func sameTokens(a, b []*Token) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// call is one request as the handlers see it.
type call struct {
	rt    *route
	path  xks.Path
	body  []byte
	md    xks.RequestMetadata
	start time.Time
	id    string
	// authz is the secondary authorization's decision, for the log.
	authz string
	// alg and keyMetadata are what the audit record shows of the
	// request and the answer.
	alg         string
	keyMetadata *xks.MetadataResponse
	throttled   bool
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &call{start: p.now(), id: newRequestID()}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("x-hsmkms-request-id", c.id)
	if r.URL.Path == "/ping" && r.Method == http.MethodGet {
		// A load balancer's health check: the process answers. AWS KMS
		// itself asks GetHealthStatus, which checks the tokens.
		w.Write([]byte(`{"status":"ok"}`))
		return
	}
	if !p.acquire(r) {
		// Refused before its body is read, as hsmkms's KMS API refuses
		// one: counted in the log, not recorded.
		c.throttled = true
		p.answer(w, r, c, nil, xks.Errorf(xks.ThrottlingException, "The proxy is serving as many requests as it can; retry later."))
		return
	}
	defer func() { <-p.slots }()
	out, err := p.serve(r, c)
	p.answer(w, r, c, out, err)
}

func (p *Proxy) acquire(r *http.Request) bool {
	select {
	case p.slots <- struct{}{}:
		return true
	default:
	}
	if p.wait <= 0 {
		return false
	}
	t := time.NewTimer(p.wait)
	defer t.Stop()
	select {
	case p.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-r.Context().Done():
	}
	return false
}

// serve runs the checks every request passes, in order, then the
// operation.
func (p *Proxy) serve(r *http.Request, c *call) (any, error) {
	path, perr := xks.ParsePath(r.URL.Path)
	var xe *xks.Error
	if perr != nil && (!errors.As(perr, &xe) || xe.Name != xks.ValidationException) {
		return nil, perr
	}
	c.path = path
	rt := (*p.routes.Load())[path.Prefix]
	if rt == nil {
		return nil, xks.Errorf(xks.InvalidUriPathException, "The URI path prefix is not served by this proxy.")
	}
	c.rt = rt
	if r.Method != http.MethodPost {
		return nil, errMethod
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, xks.MaxBody+1))
	if err != nil {
		return nil, xks.Errorf(xks.ValidationException, "The request body could not be read.")
	}
	if len(body) > xks.MaxBody {
		return nil, xks.Errorf(xks.UnsupportedOperationException, "The request body is larger than the %d bytes this proxy supports.", xks.MaxBody)
	}
	c.body = body
	if err := p.authenticate(r, rt, body); err != nil {
		return nil, err
	}
	if perr != nil {
		return nil, perr // a malformed key id, reported once the caller is known
	}
	ctx, cancel := context.WithTimeout(r.Context(), p.timeout)
	defer cancel()
	switch path.Operation {
	case xks.GetHealthStatus:
		c.md = xks.ParseHealthRequest(body)
		return p.health(ctx, rt), nil
	case xks.GetKeyMetadata:
		return p.getKeyMetadata(ctx, c)
	case xks.Encrypt:
		return p.encrypt(ctx, c)
	case xks.Decrypt:
		return p.decrypt(ctx, c)
	}
	return nil, xks.Errorf(xks.InvalidUriPathException, "The URI path names no XKS proxy operation.")
}

// errMethod is the answer to any method but POST on an API path.
var errMethod = errors.New("proxy: method not allowed")

// authenticate checks the SigV4 signature for the prefix's credentials.
// The specification has AWS KMS sign host and x-amz-date in the
// Authorization header; a presigned query is refused, as is a signature
// that leaves x-amz-date out.
func (p *Proxy) authenticate(r *http.Request, rt *route, body []byte) error {
	if strings.Contains(r.URL.RawQuery, "X-Amz-") {
		return xks.Errorf(xks.AuthenticationFailedException, "The XKS proxy API is signed in the Authorization header, not the query string.")
	}
	if a, err := sigv4.ParseAuthorization(r.Header.Get("Authorization")); err == nil && !contains(a.SignedHeaders, "x-amz-date") {
		return xks.Errorf(xks.AuthenticationFailedException, "The signature must cover the x-amz-date header.")
	}
	if _, err := rt.verifier.Verify(r, body); err != nil {
		msg := "The request signature could not be verified."
		var we *wire.Error
		if errors.As(err, &we) {
			msg = we.Message // AWS's SigV4 messages; they never hold a secret
		}
		return xks.Errorf(xks.AuthenticationFailedException, "%s", msg)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// answer writes out or err and logs the request.
func (p *Proxy) answer(w http.ResponseWriter, r *http.Request, c *call, out any, err error) {
	status, outcome := http.StatusOK, "ok"
	var body []byte
	if err == nil {
		body, err = json.Marshal(out)
	}
	if err != nil {
		var xe *xks.Error
		switch {
		case errors.Is(err, errMethod):
			w.Header().Set("Allow", http.MethodPost)
			status, outcome = http.StatusMethodNotAllowed, "MethodNotAllowed"
			body, _ = json.Marshal(xks.Error{Name: "MethodNotAllowed", Message: "The XKS proxy API takes POST requests only."})
		case errors.As(err, &xe):
			status, outcome = xks.Status(xe.Name), xe.Name
			body, _ = json.Marshal(xe)
		default:
			p.log.Error("xks proxy: internal error", "request_id", c.id, "error", err)
			status, outcome = http.StatusInternalServerError, xks.InternalException
			body, _ = json.Marshal(xks.Errorf(xks.InternalException, "The proxy failed to serve the request."))
		}
	}
	prefix := "-"
	if c.rt != nil {
		prefix = c.rt.Path
	}
	ip := ""
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		ip = host
	}
	if p.audit != nil && !c.throttled {
		if aerr := p.record(r, c, prefix, ip, err); aerr != nil {
			p.log.Error("xks proxy: audit record not written: answering InternalException", "request_id", c.id, "error", aerr)
			status, outcome = http.StatusInternalServerError, xks.InternalException
			body, _ = json.Marshal(xks.Errorf(xks.InternalException, "The proxy failed to serve the request."))
		}
	}
	w.WriteHeader(status)
	w.Write(body)
	p.log.Info("xks request", "request_id", c.id, "prefix", prefix, "operation", string(c.path.Operation),
		"external_key", c.path.KeyID, "kms_request_id", bound(c.md.KmsRequestID), "kms_operation", bound(c.md.KmsOperation),
		"principal", bound(c.md.AwsPrincipalArn), "kms_key", bound(c.md.KmsKeyArn), "via", bound(c.md.KmsViaService),
		"outcome", outcome, "status", status, "latency", p.now().Sub(c.start), "source_ip", ip, "authz", c.authz)
}

// bound keeps what the caller sent from flooding the log.
func bound(s string) string {
	if len(s) > 256 {
		return s[:256] + "..."
	}
	return s
}

func newRequestID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// authorize applies the prefix's secondary authorization policy, if it
// has one, to the request metadata: action xks:<operation>, resource the
// external key id. Unless a statement allows, the request is denied.
func (p *Proxy) authorize(c *call) error {
	pol := c.rt.Policy
	if pol == nil {
		return nil
	}
	md := c.md
	req := authz.NewRequest("xks:"+string(c.path.Operation), c.path.KeyID, authz.Principal{ARN: md.AwsPrincipalArn})
	if pa, err := authz.PrincipalFromARN(md.AwsPrincipalArn); err == nil {
		req.Context.Set("aws:PrincipalAccount", pa.Account)
	}
	for _, kv := range []struct{ keys []string }{
		{[]string{"xks:awsPrincipalArn", "aws:PrincipalArn", md.AwsPrincipalArn}},
		{[]string{"xks:awsSourceVpc", "aws:SourceVpc", md.AwsSourceVpc}},
		{[]string{"xks:awsSourceVpce", "aws:SourceVpce", md.AwsSourceVpce}},
		{[]string{"xks:kmsViaService", "kms:ViaService", md.KmsViaService}},
		{[]string{"xks:kmsKeyArn", "", md.KmsKeyArn}},
		{[]string{"xks:kmsOperation", "", md.KmsOperation}},
		{[]string{"xks:kmsRequestId", "", md.KmsRequestID}},
		{[]string{"xks:externalKeyId", "", c.path.KeyID}},
	} {
		v := kv.keys[2]
		if v == "" {
			continue
		}
		req.Context.Set(kv.keys[0], v)
		if kv.keys[1] != "" {
			req.Context.Set(kv.keys[1], v)
		}
	}
	res := pol.Evaluate(req)
	switch res.Effect {
	case authz.Allow:
		c.authz = "allow by statement " + res.Statement
		return nil
	case authz.Deny:
		c.authz = "deny by statement " + res.Statement
	default:
		c.authz = "deny: no statement allows"
	}
	return xks.Errorf(xks.AccessDeniedException, "The proxy's authorization policy does not allow %s %s for %s.", "xks:"+string(c.path.Operation), c.path.KeyID, bound(md.AwsPrincipalArn))
}

// keyError is a token's answer about an external key in the
// specification's terms.
func keyError(id string, err error) error {
	switch {
	case errors.Is(err, keystore.ErrExternalKeyNotFound):
		return xks.Errorf(xks.KeyNotFoundException, "The external key %s does not exist.", id)
	case errors.Is(err, keystore.ErrExternalKeyDisabled):
		return xks.Errorf(xks.InvalidStateException, "The external key %s is disabled.", id)
	case errors.Is(err, keystore.ErrExternalKeyUsage):
		return xks.Errorf(xks.InvalidKeyUsageException, "The external key %s does not support the requested operation.", id)
	case errors.Is(err, keystore.ErrInvalidCiphertext):
		return xks.Errorf(xks.InvalidCiphertextException, "The ciphertext, initialization vector, additional authenticated data or authentication tag is corrupted, missing, or otherwise invalid.")
	case errors.Is(err, context.DeadlineExceeded):
		return xks.Errorf(xks.DependencyTimeoutException, "The external key manager did not answer in time.")
	case errors.Is(err, keystore.ErrUnavailable):
		return fmt.Errorf("%w: %w", errKeyManager, err)
	}
	return err
}

var errKeyManager = errors.New("proxy: the external key manager failed")

// onKey runs fn on the first of the prefix's tokens that holds the key.
func onKey[T any](c *call, fn func(*Token) (T, error)) (T, error) {
	var zero T
	for _, t := range c.rt.Tokens {
		out, err := fn(t)
		if errors.Is(err, keystore.ErrExternalKeyNotFound) {
			continue
		}
		if err != nil {
			return zero, keyError(c.path.KeyID, err)
		}
		return out, nil
	}
	return zero, keyError(c.path.KeyID, keystore.ErrExternalKeyNotFound)
}

func (p *Proxy) getKeyMetadata(ctx context.Context, c *call) (any, error) {
	req, err := xks.ParseMetadataRequest(c.body)
	if req != nil {
		c.md = req.RequestMetadata
	}
	if err != nil {
		return nil, err
	}
	if err := p.authorize(c); err != nil {
		return nil, err
	}
	k, err := onKey(c, func(t *Token) (keystore.ExternalKey, error) { return t.Keys.ExternalKey(ctx, c.path.KeyID) })
	if err != nil {
		return nil, err
	}
	out := &xks.MetadataResponse{KeySpec: string(k.Spec), KeyUsage: []string{}, KeyStatus: "ENABLED"}
	if out.KeySpec == "" {
		out.KeySpec = "OTHER"
	}
	if k.Encrypt {
		out.KeyUsage = append(out.KeyUsage, "ENCRYPT")
	}
	if k.Decrypt {
		out.KeyUsage = append(out.KeyUsage, "DECRYPT")
	}
	if !k.Enabled {
		out.KeyStatus = "DISABLED"
	}
	c.keyMetadata = out
	return out, nil
}

// ciphertextMetadata is what this proxy returns with every ciphertext: a
// version byte saying the AAD given to the token was built as the
// specification's Encrypt section says (xks.TokenAAD). Decrypt refuses any
// other, so a later change of construction can tell old ciphertexts by it.
var ciphertextMetadata = []byte{1}

func (p *Proxy) encrypt(ctx context.Context, c *call) (any, error) {
	req, err := xks.ParseEncryptRequest(c.body)
	if req != nil {
		c.md, c.alg = req.RequestMetadata, req.EncryptionAlgorithm
		defer clear(req.Plaintext)
	}
	if err != nil {
		return nil, err
	}
	if err := p.authorize(c); err != nil {
		return nil, err
	}
	aad := xks.TokenAAD(req.AdditionalAuthenticatedData, ciphertextMetadata)
	type sealed struct{ iv, ct, tag []byte }
	s, err := onKey(c, func(t *Token) (sealed, error) {
		iv, ct, tag, err := t.Keys.ExternalEncrypt(ctx, c.path.KeyID, req.Plaintext, aad)
		return sealed{iv, ct, tag}, err
	})
	if err != nil {
		return nil, err
	}
	out := &xks.EncryptResponse{Ciphertext: s.ct, CiphertextMetadata: ciphertextMetadata, InitializationVector: s.iv, AuthenticationTag: s.tag}
	if req.CiphertextDataIntegrityValueAlgorithm != "" {
		// Appendix C: the value first, over what is about to be returned,
		// then a decryption of exactly that; a corruption after the
		// encryption shows up here instead of in a ciphertext that never
		// decrypts.
		out.CiphertextDataIntegrityValue = xks.CDIV(req.AdditionalAuthenticatedData, ciphertextMetadata, s.iv, s.ct, s.tag)
		back, err := onKey(c, func(t *Token) ([]byte, error) {
			return t.Keys.ExternalDecrypt(ctx, c.path.KeyID, s.iv, s.ct, s.tag, aad)
		})
		if err != nil {
			var xe *xks.Error
			if errors.As(err, &xe) && xe.Name == xks.InvalidKeyUsageException {
				// An encrypt-only key cannot check itself: the CDIV is all
				// the assurance it gives.
				return out, nil
			}
			return nil, err
		}
		ok := string(back) == string(req.Plaintext)
		clear(back)
		if !ok {
			return nil, errors.New("proxy: the ciphertext just made does not decrypt to its plaintext")
		}
	}
	return out, nil
}

func (p *Proxy) decrypt(ctx context.Context, c *call) (any, error) {
	req, err := xks.ParseDecryptRequest(c.body)
	if req != nil {
		c.md, c.alg = req.RequestMetadata, req.EncryptionAlgorithm
	}
	if err != nil {
		return nil, err
	}
	if err := p.authorize(c); err != nil {
		return nil, err
	}
	if string(req.CiphertextMetadata) != string(ciphertextMetadata) {
		// Not a ciphertext of this proxy (or its metadata was changed);
		// the key is still looked up first, so a missing, disabled or
		// encrypt-only key gets its own answer.
		_, err := onKey(c, func(t *Token) (struct{}, error) {
			k, err := t.Keys.ExternalKey(ctx, c.path.KeyID)
			switch {
			case err != nil:
				return struct{}{}, err
			case !k.Enabled:
				return struct{}{}, keystore.ErrExternalKeyDisabled
			case !k.Decrypt || k.Spec != keystore.ExternalAES256:
				return struct{}{}, keystore.ErrExternalKeyUsage
			}
			return struct{}{}, keystore.ErrInvalidCiphertext
		})
		return nil, err
	}
	aad := xks.TokenAAD(req.AdditionalAuthenticatedData, req.CiphertextMetadata)
	plain, err := onKey(c, func(t *Token) ([]byte, error) {
		return t.Keys.ExternalDecrypt(ctx, c.path.KeyID, req.InitializationVector, req.Ciphertext, req.AuthenticationTag, aad)
	})
	if err != nil {
		return nil, err
	}
	return &xks.DecryptResponse{Plaintext: plain}, nil
}

// healthCache shares one deep check among the requests of a HealthTTL.
type healthCache struct {
	mu      sync.Mutex
	at      time.Time
	details []xks.EkmFleetDetail
	running chan struct{}
}

// health answers GetHealthStatus: each of the prefix's tokens, checked
// deep (keystore.ExternalKeys.Check: a test key encrypts and decrypts on
// it) at most once per HealthTTL. A token whose check fails is UNAVAILABLE; one
// whose check passes but took more than half the request timeout is
// DEGRADED (it serves, slowly). The answer is 200 whatever the tokens say:
// AWS KMS reads an all-UNAVAILABLE fleet as a proxy it cannot use.
func (p *Proxy) health(ctx context.Context, rt *route) *xks.HealthResponse {
	detail := func(t *Token, status string) xks.EkmFleetDetail {
		man, model, _, _ := t.Keys.TokenInfo()
		return xks.EkmFleetDetail{ID: t.ID, Model: strings.TrimSpace(man + " " + model), HealthStatus: status}
	}
	details := rt.health.get(ctx, p.healthTTL, func() []xks.EkmFleetDetail {
		// The check is shared, so no one request's end cuts it short.
		ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
		defer cancel()
		out := make([]xks.EkmFleetDetail, len(rt.Tokens))
		var wg sync.WaitGroup
		for i, t := range rt.Tokens {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := detail(t, xks.HealthActive)
				start := time.Now()
				if err := t.Keys.Check(ctx); err != nil {
					p.log.Warn("xks health check failed", "token", t.ID, "error", err)
					d.HealthStatus = xks.HealthUnavailable
				} else if time.Since(start) > p.timeout/2 {
					d.HealthStatus = xks.HealthDegraded
				}
				out[i] = d
			}()
		}
		wg.Wait()
		return out
	})
	if details == nil {
		// The shared check outlived this request: what it could not see
		// in time is unavailable to this request.
		for _, t := range rt.Tokens {
			details = append(details, detail(t, xks.HealthUnavailable))
		}
	}
	vendor, _, _, _ := rt.Tokens[0].Keys.TokenInfo()
	if vendor == "" {
		vendor = "unknown"
	}
	return &xks.HealthResponse{XksProxyFleetSize: p.fleetSize, XksProxyVendor: "hsmkms",
		XksProxyModel: "hsmkms XKS proxy " + p.version, EkmVendor: vendor, EkmFleetDetails: details}
}

func (h *healthCache) get(ctx context.Context, ttl time.Duration, check func() []xks.EkmFleetDetail) []xks.EkmFleetDetail {
	for {
		h.mu.Lock()
		if h.details != nil && time.Since(h.at) < ttl {
			d := h.details
			h.mu.Unlock()
			return d
		}
		if h.running == nil {
			done := make(chan struct{})
			h.running = done
			h.mu.Unlock()
			d := check()
			h.mu.Lock()
			h.details, h.at, h.running = d, time.Now(), nil
			h.mu.Unlock()
			close(done)
			return d
		}
		wait := h.running
		h.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil
		}
	}
}
