// Package sigv4 verifies AWS Signature Version 4 on incoming requests, so
// that the stock AWS SDKs and CLI authenticate to hsmkms exactly as they do
// to AWS, with access keys the operator configures: in the Authorization
// header, or in the query string of a presigned URL. A credential scope
// must name one of the Regions served. It answers each failure with the
// exception AWS sends for it, checking in AWS's order. Secrets, derived
// keys and computed signatures never appear in its errors.
package sigv4

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/kms/wire"
)

const (
	algorithm  = "AWS4-HMAC-SHA256"
	terminator = "aws4_request"
	amzDate    = "20060102T150405Z"
)

// Verifier checks signatures against a set of access keys, in the
// Authorization header or in the query string (a presigned URL).
type Verifier struct {
	Service string // the credential scope's service must be this
	// Regions are the Regions served: a credential scope naming any other
	// is refused, as AWS refuses a request signed for another Region's
	// endpoint. Empty serves none.
	Regions map[string]bool
	Lookup  func(accessKeyID string) (secret string, ok bool)
	Now     func() time.Time
	MaxSkew time.Duration // 0 means 5 minutes, as AWS

	keys sync.Map // scope string → signing key; bounded by keyCount
	n    int64
	mu   sync.Mutex
}

// Result is what a valid signature establishes.
type Result struct {
	AccessKeyID string
	Region      string
	Service     string
	Time        time.Time
	// Presigned says the signature came in the query string.
	Presigned bool
}

// Authorization is a parsed Authorization header.
type Authorization struct {
	AccessKeyID, Date, Region, Service, Terminator string
	SignedHeaders                                  []string
	Signature                                      string
}

func incomplete(format string, args ...any) *wire.Error {
	return wire.Errorf(wire.IncompleteSignature, format, args...)
}

func invalid(format string, args ...any) *wire.Error {
	return wire.Errorf(wire.InvalidSignature, format, args...)
}

// ParseAuthorization parses an AWS4-HMAC-SHA256 Authorization header.
func ParseAuthorization(h string) (*Authorization, error) {
	alg, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	if alg != algorithm {
		return nil, incomplete("Unsupported AWS 'algorithm': '%s'", truncate(alg, 64))
	}
	params := map[string]string{}
	for _, part := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		params[k] = v
	}
	var missing []string
	for _, p := range []string{"Credential", "Signature", "SignedHeaders"} {
		if params[p] == "" {
			missing = append(missing, fmt.Sprintf("Authorization header requires '%s' parameter.", p))
		}
	}
	if len(missing) > 0 {
		return nil, incomplete("%s", strings.Join(missing, " "))
	}
	a, err := parseCredential(params["Credential"])
	if err != nil {
		return nil, err
	}
	a.SignedHeaders = strings.Split(params["SignedHeaders"], ";")
	a.Signature = params["Signature"]
	if err := a.checkSignedHeadersAndSignature("Authorization header SignedHeaders"); err != nil {
		return nil, err
	}
	return a, nil
}

// parseCredential parses a credential, KEY/YYYYMMDD/REGION/SERVICE/aws4_request,
// in the Authorization header or X-Amz-Credential.
func parseCredential(c string) (*Authorization, error) {
	cred := strings.Split(c, "/")
	if len(cred) != 5 || cred[0] == "" {
		return nil, incomplete("Credential should be scoped to a valid region. ")
	}
	a := &Authorization{AccessKeyID: cred[0], Date: cred[1], Region: cred[2], Service: cred[3], Terminator: cred[4]}
	switch {
	case len(a.Date) != 8 || !digits(a.Date):
		return nil, incomplete("Credential should be scoped to a valid date. ")
	case a.Region == "":
		return nil, incomplete("Credential should be scoped to a valid region. ")
	case a.Service == "":
		return nil, incomplete("Credential should be scoped to correct service. ")
	case a.Terminator != terminator:
		return nil, incomplete("Credential should be scoped with a valid terminator: 'aws4_request', not '%s'. ", truncate(a.Terminator, 64))
	}
	return a, nil
}

// checkSignedHeadersAndSignature checks the shape of what was signed and
// of the signature; where names the field in messages.
func (a *Authorization) checkSignedHeadersAndSignature(where string) error {
	for _, h := range a.SignedHeaders {
		if h == "" || h != strings.ToLower(h) {
			return incomplete("%s must be lower-case header names separated by ';'.", where)
		}
	}
	if len(a.Signature) != 64 {
		return incomplete("Signature must be 64 hexadecimal characters.")
	}
	return nil
}

func badDate(v string) error {
	return incomplete("Date must be in ISO-8601 'basic format'. Got '%s'. See http://en.wikipedia.org/wiki/ISO_8601", truncate(v, 64))
}

func digits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// signed is a request's signature, from the Authorization header or the
// query string.
type signed struct {
	*Authorization
	dateValue     string        // the request time as sent
	t             time.Time     // what it says
	expires       time.Duration // X-Amz-Expires of a presigned URL
	securityToken string
	presigned     bool
}

// Verify checks r's signature over body, which the caller has read in full.
// The checks run in the order AWS runs them, so a request with several
// faults gets AWS's answer: how the signature was sent, its time, the
// signed Host, the credential scope, the access key, the signature.
func (v *Verifier) Verify(r *http.Request, body []byte) (Result, error) {
	s, err := v.parse(r)
	if err != nil {
		return Result{}, err
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	skew := v.MaxSkew
	if skew == 0 {
		skew = 5 * time.Minute
	}
	n := now().UTC()
	// A presigned URL lives for the skew window, as in AWS, and never
	// beyond its own X-Amz-Expires.
	past := skew
	if s.presigned && s.expires < past {
		past = s.expires
	}
	if s.t.Before(n.Add(-past)) {
		return Result{}, invalid("Signature expired: %s is now earlier than %s (%s - %s.)", s.t.UTC().Format(amzDate), n.Add(-past).Format(amzDate), n.Format(amzDate), skewText(past))
	}
	if s.t.After(n.Add(skew)) {
		return Result{}, invalid("Signature not yet current: %s is still later than %s (%s + %s.)", s.t.UTC().Format(amzDate), n.Add(skew).Format(amzDate), n.Format(amzDate), skewText(skew))
	}
	if !contains(s.SignedHeaders, "host") {
		return Result{}, invalid("'Host' must be a 'SignedHeader' in the AWS Authorization.")
	}
	// AWS names every fault of the credential scope in one message.
	var scope strings.Builder
	if !v.Regions[s.Region] {
		fmt.Fprintf(&scope, "Credential should be scoped to a valid region, not '%s'. ", truncate(s.Region, 64))
	}
	if s.Service != v.Service {
		fmt.Fprintf(&scope, "Credential should be scoped to correct service: '%s'. ", v.Service)
	}
	if reqDate := s.t.UTC().Format("20060102"); reqDate != s.Date {
		fmt.Fprintf(&scope, "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s', from '%s'.", s.Date, reqDate, truncate(s.dateValue, 64))
	}
	if scope.Len() > 0 {
		return Result{}, invalid("%s", scope.String())
	}
	if s.securityToken != "" {
		// hsmkms issues no temporary credentials, so no session token is ours.
		return Result{}, wire.Errorf(wire.UnrecognizedClient, "The security token included in the request is invalid.")
	}
	secret, ok := v.Lookup(s.AccessKeyID)
	if !ok {
		return Result{}, wire.Errorf(wire.UnrecognizedClient, "The security token included in the request is invalid.")
	}

	payload := sha256.Sum256(body)
	payloadHex := hex.EncodeToString(payload[:])
	if declared := r.Header.Get("X-Amz-Content-Sha256"); declared != "" && declared != payloadHex {
		return Result{}, mismatch()
	}
	scopeText := s.Date + "/" + s.Region + "/" + s.Service + "/" + terminator
	creq := canonicalRequest(r, s.SignedHeaders, payloadHex, s.presigned)
	sum := sha256.Sum256([]byte(creq))
	sts := algorithm + "\n" + s.dateValue + "\n" + scopeText + "\n" + hex.EncodeToString(sum[:])
	want := hmacSHA256(v.signingKey(s.AccessKeyID, secret, s.Date, s.Region, s.Service), []byte(sts))
	got, err := hex.DecodeString(s.Signature)
	if err != nil || !hmac.Equal(want, got) {
		return Result{}, mismatch()
	}
	return Result{AccessKeyID: s.AccessKeyID, Region: s.Region, Service: s.Service, Time: s.t, Presigned: s.presigned}, nil
}

// parse finds the request's signature: in the Authorization header, or in
// the query string, never both.
func (v *Verifier) parse(r *http.Request) (*signed, error) {
	q, err := ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, err
	}
	h := r.Header.Get("Authorization")
	switch {
	case q != nil && h != "":
		return nil, invalid("Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.")
	case q != nil:
		a := q.Authorization
		return &signed{Authorization: &a, dateValue: q.AmzDate, t: q.Time, expires: q.Expires, securityToken: q.SecurityToken, presigned: true}, nil
	case h == "":
		return nil, wire.Errorf(wire.MissingAuthenticationToken, "Missing Authentication Token")
	}
	a, err := ParseAuthorization(h)
	if err != nil {
		return nil, err
	}
	dateValue := r.Header.Get("X-Amz-Date")
	if dateValue == "" {
		dateValue = r.Header.Get("Date")
	}
	if dateValue == "" {
		return nil, incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=%s", redact(h))
	}
	t, err := time.Parse(amzDate, dateValue)
	if err != nil {
		if t, err = http.ParseTime(dateValue); err != nil {
			return nil, badDate(dateValue)
		}
	}
	return &signed{Authorization: a, dateValue: dateValue, t: t, securityToken: r.Header.Get("X-Amz-Security-Token")}, nil
}

func mismatch() error {
	return invalid("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
}

func skewText(d time.Duration) string {
	if d%time.Minute == 0 {
		return strconv.Itoa(int(d/time.Minute)) + " min"
	}
	return strconv.Itoa(int(d/time.Second)) + " sec"
}

// redact drops the signature from an Authorization header echoed in an error.
func redact(h string) string {
	if i := strings.Index(h, "Signature="); i >= 0 {
		return h[:i] + "Signature=..."
	}
	return truncate(h, 256)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// canonicalRequest is the request as the client signed it. A presigned
// URL's signature cannot sign itself, so X-Amz-Signature is left out.
func canonicalRequest(r *http.Request, signed []string, payloadHex string, presigned bool) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	b.WriteString(canonicalURI(r.URL.EscapedPath()))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.RawQuery, presigned))
	b.WriteByte('\n')
	for _, h := range signed {
		b.WriteString(h)
		b.WriteByte(':')
		b.WriteString(headerValue(r, h))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signed, ";"))
	b.WriteByte('\n')
	b.WriteString(payloadHex)
	return b.String()
}

// headerValue is a header as the client signed it. net/http moves Host,
// Content-Length and Transfer-Encoding out of r.Header; put them back.
func headerValue(r *http.Request, name string) string {
	switch name {
	case "host":
		return r.Host
	case "content-length":
		if r.ContentLength >= 0 {
			return strconv.FormatInt(r.ContentLength, 10)
		}
	case "transfer-encoding":
		return strings.Join(r.TransferEncoding, ",")
	}
	vals := r.Header.Values(name)
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(out, ",")
}

func canonicalURI(p string) string {
	if p == "" {
		return "/"
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		u, err := url.PathUnescape(s)
		if err != nil {
			u = s
		}
		segs[i] = escape(u)
	}
	return strings.Join(segs, "/")
}

// canonicalQuery is the query sorted and encoded as SigV4 signs it;
// Verify has checked that it decodes.
func canonicalQuery(raw string, presigned bool) string {
	if raw == "" {
		return ""
	}
	params, _ := parseQueryString(raw)
	type kv struct{ k, v string }
	var pairs []kv
	for _, p := range params {
		if presigned && p.key == paramSignature {
			continue
		}
		pairs = append(pairs, kv{escape(p.key), escape(p.value)})
	}
	sort.Slice(pairs, func(i, j int) bool {
		if pairs[i].k != pairs[j].k {
			return pairs[i].k < pairs[j].k
		}
		return pairs[i].v < pairs[j].v
	})
	parts := make([]string, len(pairs))
	for i, p := range pairs {
		parts[i] = p.k + "=" + p.v
	}
	return strings.Join(parts, "&")
}

// escape is RFC 3986 percent-encoding with AWS's unreserved set.
func escape(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

func hmacSHA256(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

// keyCount bounds the signing-key cache: one entry per access key, day,
// region and service in use, so it stays tiny unless someone sprays
// regions; then it is simply dropped and rebuilt.
const keyCount = 1024

func (v *Verifier) signingKey(id, secret, date, region, service string) []byte {
	// The secret is part of the cache key so a rotated secret never
	// verifies against a stale derived key.
	secretSum := sha256.Sum256([]byte(secret))
	ck := id + "/" + hex.EncodeToString(secretSum[:8]) + "/" + date + "/" + region + "/" + service
	if k, ok := v.keys.Load(ck); ok {
		return k.([]byte)
	}
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	k = hmacSHA256(k, []byte(terminator))
	v.mu.Lock()
	if v.n >= keyCount {
		v.keys.Clear()
		v.n = 0
	}
	v.n++
	v.mu.Unlock()
	v.keys.Store(ck, k)
	return k
}
