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
	"hash"
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

	mu   sync.RWMutex
	keys map[scope]*signer // bounded by keyCount
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
	// A parameter given twice counts with its last value.
	var credential, signature, signedHeaders string
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "Credential":
			credential = v
		case "Signature":
			signature = v
		case "SignedHeaders":
			signedHeaders = v
		}
	}
	if credential == "" || signature == "" || signedHeaders == "" {
		var missing []string
		for _, p := range [...]struct{ name, value string }{{"Credential", credential}, {"Signature", signature}, {"SignedHeaders", signedHeaders}} {
			if p.value == "" {
				missing = append(missing, fmt.Sprintf("Authorization header requires '%s' parameter.", p.name))
			}
		}
		return nil, incomplete("%s", strings.Join(missing, " "))
	}
	a, err := parseCredential(credential)
	if err != nil {
		return nil, err
	}
	a.SignedHeaders = strings.Split(signedHeaders, ";")
	a.Signature = signature
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
	var day [8]byte
	if reqDate := s.t.UTC().AppendFormat(day[:0], "20060102"); string(reqDate) != s.Date {
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

	var payloadHex [sha256.Size * 2]byte
	payload := sha256.Sum256(body)
	hex.Encode(payloadHex[:], payload[:])
	if declared := r.Header.Get("X-Amz-Content-Sha256"); declared != "" && declared != string(payloadHex[:]) {
		return Result{}, mismatch()
	}
	buf := buffers.Get().(*[]byte)
	defer buffers.Put(buf)
	creq := appendCanonicalRequest((*buf)[:0], r, s.SignedHeaders, payloadHex[:], s.presigned)
	sum := sha256.Sum256(creq)
	sts := append(creq[:0], algorithm+"\n"...)
	sts = append(sts, s.dateValue...)
	sts = append(sts, '\n')
	sts = append(sts, s.Date...)
	sts = append(sts, '/')
	sts = append(sts, s.Region...)
	sts = append(sts, '/')
	sts = append(sts, s.Service...)
	sts = append(sts, "/"+terminator+"\n"...)
	sts = hex.AppendEncode(sts, sum[:])
	var want, got [sha256.Size]byte
	v.signer(s.AccessKeyID, secret, s.Date, s.Region, s.Service).sign(want[:0], sts)
	*buf = sts[:0]
	if _, err := hex.Decode(got[:], []byte(s.Signature)); err != nil || !hmac.Equal(want[:], got[:]) {
		return Result{}, mismatch()
	}
	return Result{AccessKeyID: s.AccessKeyID, Region: s.Region, Service: s.Service, Time: s.t, Presigned: s.presigned}, nil
}

// buffers hold a canonical request and then the string to sign, so
// verifying allocates neither.
var buffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

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

// appendCanonicalRequest appends the request as the client signed it to
// dst. A presigned URL's signature cannot sign itself, so X-Amz-Signature
// is left out.
func appendCanonicalRequest(dst []byte, r *http.Request, signed []string, payloadHex []byte, presigned bool) []byte {
	dst = append(dst, r.Method...)
	dst = append(dst, '\n')
	dst = append(dst, canonicalURI(r.URL.EscapedPath())...)
	dst = append(dst, '\n')
	dst = append(dst, canonicalQuery(r.URL.RawQuery, presigned)...)
	dst = append(dst, '\n')
	for _, h := range signed {
		dst = append(dst, h...)
		dst = append(dst, ':')
		dst = appendHeaderValue(dst, r, h)
		dst = append(dst, '\n')
	}
	dst = append(dst, '\n')
	for i, h := range signed {
		if i > 0 {
			dst = append(dst, ';')
		}
		dst = append(dst, h...)
	}
	dst = append(dst, '\n')
	return append(dst, payloadHex...)
}

// appendHeaderValue appends a header as the client signed it: its values
// joined by commas, each with its runs of space made one. net/http moves
// Host, Content-Length and Transfer-Encoding out of r.Header; put them
// back.
func appendHeaderValue(dst []byte, r *http.Request, name string) []byte {
	switch name {
	case "host":
		return append(dst, r.Host...)
	case "content-length":
		if r.ContentLength >= 0 {
			return strconv.AppendInt(dst, r.ContentLength, 10)
		}
	case "transfer-encoding":
		for i, v := range r.TransferEncoding {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, v...)
		}
		return dst
	}
	for i, v := range headerValues(r.Header, name) {
		if i > 0 {
			dst = append(dst, ',')
		}
		first := true
		for f := range strings.FieldsSeq(v) {
			if !first {
				dst = append(dst, ' ')
			}
			dst = append(dst, f...)
			first = false
		}
	}
	return dst
}

// headerValues is h.Values(name) for a lower-case name, without the
// allocation of canonicalizing it: the canonical key is built on the
// stack when name is of the characters SDKs use in header names.
func headerValues(h http.Header, name string) []string {
	var key [64]byte
	if len(name) > len(key) {
		return h.Values(name)
	}
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z':
			if upper {
				c -= 'a' - 'A'
			}
		case '0' <= c && c <= '9' || c == '-':
		default:
			return h.Values(name)
		}
		key[i] = c
		upper = c == '-'
	}
	return h[string(key[:len(name)])]
}

func canonicalURI(p string) string {
	if p == "" {
		return "/"
	}
	if unreservedPath(p) {
		return p // each segment escapes to itself
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

// unreservedPath reports whether p is only AWS's unreserved characters
// and slashes.
func unreservedPath(p string) bool {
	for i := 0; i < len(p); i++ {
		if c := p[i]; !unreserved(c) && c != '/' {
			return false
		}
	}
	return true
}

func unreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~'
}

// escape is RFC 3986 percent-encoding with AWS's unreserved set.
func escape(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
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

// scope names a signing key: it is derived from the secret for one day,
// Region and service.
type scope struct{ id, date, region, service string }

// signer signs with one derived key. Its HMACs are pooled: each keeps the
// key's padded blocks hashed, so a signature costs no key setup.
type signer struct {
	secret string // the secret the key was derived from
	hmacs  sync.Pool
}

func (g *signer) sign(dst, data []byte) []byte {
	m := g.hmacs.Get().(hash.Hash)
	m.Reset()
	m.Write(data)
	dst = m.Sum(dst)
	g.hmacs.Put(m)
	return dst
}

// signer returns the signer for a scope, deriving its key once per
// secret: a rotated secret never verifies against a stale derived key.
func (v *Verifier) signer(id, secret, date, region, service string) *signer {
	k := scope{id, date, region, service}
	v.mu.RLock()
	g := v.keys[k]
	v.mu.RUnlock()
	if g != nil && g.secret == secret {
		return g
	}
	key := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	key = hmacSHA256(key, []byte(region))
	key = hmacSHA256(key, []byte(service))
	key = hmacSHA256(key, []byte(terminator))
	g = &signer{secret: secret}
	g.hmacs.New = func() any { return hmac.New(sha256.New, key) }
	v.mu.Lock()
	if v.keys == nil || len(v.keys) >= keyCount {
		v.keys = make(map[scope]*signer)
	}
	v.keys[k] = g
	v.mu.Unlock()
	return g
}
