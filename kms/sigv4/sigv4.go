// Package sigv4 verifies AWS Signature Version 4 on incoming requests, so
// that the stock AWS SDKs and CLI authenticate to hsmkms exactly as they do
// to AWS, with access keys the operator configures. It answers each failure
// with the exception AWS sends for it. Secrets, derived keys and computed
// signatures never appear in its errors.
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

// Verifier checks signatures against a set of access keys.
type Verifier struct {
	Service string // the credential scope's service must be this
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
	cred := strings.Split(params["Credential"], "/")
	if len(cred) != 5 || cred[0] == "" {
		return nil, incomplete("Credential should be scoped to a valid region. ")
	}
	a := &Authorization{AccessKeyID: cred[0], Date: cred[1], Region: cred[2], Service: cred[3], Terminator: cred[4],
		SignedHeaders: strings.Split(params["SignedHeaders"], ";"), Signature: params["Signature"]}
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
	for _, h := range a.SignedHeaders {
		if h == "" || h != strings.ToLower(h) {
			return nil, incomplete("Authorization header SignedHeaders must be lower-case header names separated by ';'.")
		}
	}
	if len(a.Signature) != 64 {
		return nil, incomplete("Signature must be 64 hexadecimal characters.")
	}
	return a, nil
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

// Verify checks r's signature over body, which the caller has read in full.
func (v *Verifier) Verify(r *http.Request, body []byte) (Result, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Result{}, wire.Errorf(wire.MissingAuthenticationToken, "Missing Authentication Token")
	}
	a, err := ParseAuthorization(h)
	if err != nil {
		return Result{}, err
	}
	dateHeader, dateValue := "x-amz-date", r.Header.Get("X-Amz-Date")
	if dateValue == "" {
		dateHeader, dateValue = "date", r.Header.Get("Date")
	}
	if dateValue == "" {
		return Result{}, incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=%s", redact(h))
	}
	t, err := time.Parse(amzDate, dateValue)
	if err != nil {
		if t, err = http.ParseTime(dateValue); err != nil {
			return Result{}, incomplete("Date must be in ISO-8601 'basic format'. Got '%s'. See http://en.wikipedia.org/wiki/ISO_8601", truncate(dateValue, 64))
		}
	}
	if reqDate := t.UTC().Format("20060102"); reqDate != a.Date {
		return Result{}, invalid("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s', from '%s'.", a.Date, reqDate, dateHeader)
	}
	if a.Service != v.Service {
		return Result{}, invalid("Credential should be scoped to correct service: '%s'. ", v.Service)
	}
	if !contains(a.SignedHeaders, "host") {
		return Result{}, invalid("'Host' must be a 'SignedHeader' in the AWS Authorization.")
	}
	if r.Header.Get("X-Amz-Security-Token") != "" {
		// hsmkms issues no temporary credentials, so no session token is ours.
		return Result{}, wire.Errorf(wire.UnrecognizedClient, "The security token included in the request is invalid.")
	}
	secret, ok := v.Lookup(a.AccessKeyID)
	if !ok {
		return Result{}, wire.Errorf(wire.UnrecognizedClient, "The security token included in the request is invalid.")
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
	if t.Before(n.Add(-skew)) {
		return Result{}, invalid("Signature expired: %s is now earlier than %s (%s - %s.)", t.UTC().Format(amzDate), n.Add(-skew).Format(amzDate), n.Format(amzDate), skewText(skew))
	}
	if t.After(n.Add(skew)) {
		return Result{}, invalid("Signature not yet current: %s is still later than %s (%s + %s.)", t.UTC().Format(amzDate), n.Add(skew).Format(amzDate), n.Format(amzDate), skewText(skew))
	}

	payload := sha256.Sum256(body)
	payloadHex := hex.EncodeToString(payload[:])
	if declared := r.Header.Get("X-Amz-Content-Sha256"); declared != "" && declared != payloadHex {
		return Result{}, mismatch()
	}
	scope := a.Date + "/" + a.Region + "/" + a.Service + "/" + terminator
	creq := canonicalRequest(r, a.SignedHeaders, payloadHex)
	sum := sha256.Sum256([]byte(creq))
	sts := algorithm + "\n" + dateValue + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	want := hmacSHA256(v.signingKey(a.AccessKeyID, secret, a.Date, a.Region, a.Service), []byte(sts))
	got, err := hex.DecodeString(a.Signature)
	if err != nil || !hmac.Equal(want, got) {
		return Result{}, mismatch()
	}
	return Result{AccessKeyID: a.AccessKeyID, Region: a.Region, Service: a.Service, Time: t}, nil
}

func mismatch() error {
	return invalid("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
}

func skewText(d time.Duration) string {
	if d%time.Minute == 0 {
		return strconv.Itoa(int(d/time.Minute)) + " min"
	}
	return d.String()
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

func canonicalRequest(r *http.Request, signed []string, payloadHex string) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	b.WriteString(canonicalURI(r.URL.EscapedPath()))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.RawQuery))
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

func canonicalQuery(raw string) string {
	if raw == "" {
		return ""
	}
	type kv struct{ k, v string }
	var pairs []kv
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		uk, err1 := url.QueryUnescape(k)
		uv, err2 := url.QueryUnescape(v)
		if err1 == nil {
			k = uk
		}
		if err2 == nil {
			v = uv
		}
		pairs = append(pairs, kv{escape(k), escape(v)})
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
