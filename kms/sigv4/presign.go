package sigv4

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hsmkms/hsmkms/kms/wire"
)

// Query-string authentication (a presigned URL) carries in the query what
// the Authorization and X-Amz-Date headers carry otherwise.
const (
	paramAlgorithm     = "X-Amz-Algorithm"
	paramCredential    = "X-Amz-Credential"
	paramSignature     = "X-Amz-Signature"
	paramSignedHeaders = "X-Amz-SignedHeaders"
	paramDate          = "X-Amz-Date"
	paramExpires       = "X-Amz-Expires"
	paramSecurityToken = "X-Amz-Security-Token"

	// maxExpires is a week: the longest any AWS service lets a presigned
	// URL live, since the signing key is derived for a date.
	maxExpires = 7 * 24 * time.Hour
)

// Query is a parsed query-string authentication.
type Query struct {
	Authorization
	// AmzDate is X-Amz-Date as sent; Time is what it says.
	AmzDate string
	Time    time.Time
	// Expires is X-Amz-Expires; a week, the most SigV4 allows, if absent.
	Expires       time.Duration
	SecurityToken string
}

// ParseQuery parses a raw query string. It returns nil and no error when
// the query carries no authentication (no X-Amz-Algorithm parameter),
// and an error when the query string itself is malformed, authentication
// or not: AWS rejects a query it cannot decode before it looks at any
// signature. A parameter given twice counts with its first value, as in
// AWS.
func ParseQuery(raw string) (*Query, error) {
	if raw == "" {
		return nil, nil // the SDKs' requests: no query at all
	}
	params, err := parseQueryString(raw)
	if err != nil {
		return nil, err
	}
	first := func(k string) (string, bool) {
		for _, p := range params {
			if p.key == k {
				return p.value, true
			}
		}
		return "", false
	}
	alg, ok := first(paramAlgorithm)
	if !ok {
		return nil, nil
	}
	var missing strings.Builder
	values := map[string]string{}
	for _, k := range []string{paramAlgorithm, paramCredential, paramSignature, paramSignedHeaders, paramDate} {
		v, _ := first(k)
		if v == "" {
			fmt.Fprintf(&missing, "AWS query-string parameters must include '%s'. ", k)
		}
		values[k] = v
	}
	if missing.Len() > 0 {
		return nil, incomplete("%sRe-examine the query-string parameters.", missing.String())
	}
	if alg != algorithm {
		return nil, incomplete("Unsupported AWS 'algorithm': '%s'", truncate(alg, 64))
	}
	a, err := parseCredential(values[paramCredential])
	if err != nil {
		return nil, err
	}
	a.SignedHeaders = strings.Split(values[paramSignedHeaders], ";")
	a.Signature = values[paramSignature]
	if err := a.checkSignedHeadersAndSignature("X-Amz-SignedHeaders"); err != nil {
		return nil, err
	}
	q := &Query{Authorization: *a, AmzDate: values[paramDate], Expires: maxExpires}
	if q.Time, err = time.Parse(amzDate, q.AmzDate); err != nil {
		return nil, badDate(q.AmzDate)
	}
	if v, ok := first(paramExpires); ok {
		// AWS's services other than S3 do not read X-Amz-Expires (their
		// signatures live for the clock-skew window); hsmkms holds a URL to
		// it as well, so one is never accepted after it says it expires. A
		// value S3 would refuse is refused, with S3's words.
		secs, err := strconv.ParseInt(v, 10, 64)
		switch {
		case err != nil:
			return nil, incomplete("X-Amz-Expires should be a number")
		case secs < 0:
			return nil, incomplete("X-Amz-Expires must be non-negative")
		case time.Duration(secs)*time.Second > maxExpires:
			return nil, incomplete("X-Amz-Expires must be less than a week (in seconds) that is 604800")
		}
		q.Expires = time.Duration(secs) * time.Second
	}
	q.SecurityToken, _ = first(paramSecurityToken)
	return q, nil
}

type queryParam struct{ key, value string }

// parseQueryString splits a raw query into decoded parameters in order. A
// malformed percent-escape anywhere is AWS's MalformedQueryString, in the
// words of the URL decoder AWS's front end uses.
func parseQueryString(raw string) ([]queryParam, error) {
	var out []queryParam
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		dk, err := unescapeQuery(k)
		if err != nil {
			return nil, err
		}
		dv, err := unescapeQuery(v)
		if err != nil {
			return nil, err
		}
		out = append(out, queryParam{dk, dv})
	}
	return out, nil
}

// unescapeQuery decodes %XX escapes and '+' (a space, as form encoding
// and AWS's canonicalisation both read it).
func unescapeQuery(s string) (string, error) {
	if !strings.ContainsAny(s, "%+") {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '+':
			b.WriteByte(' ')
		case '%':
			if i+2 >= len(s) {
				return "", malformedQuery("Incomplete trailing escape % sequence")
			}
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if !ok1 || !ok2 {
				return "", malformedQuery("Illegal hex character in escape % pattern: %" + printable(s[i+1:i+3]))
			}
			b.WriteByte(hi<<4 | lo)
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// printable keeps client bytes echoed in a message to printable ASCII.
func printable(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

func malformedQuery(msg string) *wire.Error {
	return &wire.Error{Type: wire.MalformedQueryString, Message: msg}
}
