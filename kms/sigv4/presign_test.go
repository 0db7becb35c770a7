package sigv4

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// presignedView presigns a KMS request with the SDK's signer (expires, if
// not empty, as X-Amz-Expires) and returns it as a Go server receives it.
// editURL changes the presigned URL before it is sent; mutate the request.
func presignedView(t testing.TB, body string, at time.Time, expires string, opts func(*v4.SignerOptions),
	editURL func(q url.Values), mutate func(*http.Request)) (*http.Request, []byte) {
	t.Helper()
	var got *http.Request
	var gotBody []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		gotBody, _ = io.ReadAll(r.Body)
	}))
	defer srv.Close()
	u := srv.URL + "/"
	if expires != "" {
		u += "?X-Amz-Expires=" + expires
	}
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService.ListKeys")
	sum := sha256.Sum256([]byte(body))
	var optFns []func(*v4.SignerOptions)
	if opts != nil {
		optFns = append(optFns, opts)
	}
	signedURL, headers, err := v4.NewSigner().PresignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret},
		req, hex.EncodeToString(sum[:]), "kms", region, at, optFns...)
	require.NoError(t, err)
	if editURL != nil {
		pu, err := url.Parse(signedURL)
		require.NoError(t, err)
		q := pu.Query()
		editURL(q)
		pu.RawQuery = q.Encode()
		signedURL = pu.String()
	}
	send, err := http.NewRequest(http.MethodPost, signedURL, strings.NewReader(body))
	require.NoError(t, err)
	for k, v := range headers {
		send.Header[k] = v
	}
	if send.Header.Get("X-Amz-Target") == "" && !strings.Contains(signedURL, "X-Amz-Target") {
		send.Header.Set("X-Amz-Target", "TrentService.ListKeys")
	}
	if mutate != nil {
		mutate(send)
	}
	resp, err := http.DefaultClient.Do(send)
	require.NoError(t, err)
	resp.Body.Close()
	return got, gotBody
}

func TestVerifyPresigned(t *testing.T) {
	body := `{"Limit":10}`
	t.Run("valid, with the SDK's header hoisting", func(t *testing.T) {
		r, b := presignedView(t, body, t0, "60", nil, nil, nil)
		require.Equal(t, "TrentService.ListKeys", r.URL.Query().Get("X-Amz-Target"), "the SDK moved X-Amz-Target into the signed query")
		res, err := verifier(t0.Add(59*time.Second)).Verify(r, b)
		require.NoError(t, err)
		assert.Equal(t, Result{AccessKeyID: akid, Region: region, Service: "kms", Time: t0, Presigned: true}, res)
	})
	t.Run("valid, headers kept as headers", func(t *testing.T) {
		r, b := presignedView(t, body, t0, "", func(o *v4.SignerOptions) { o.DisableHeaderHoisting = true }, nil, nil)
		require.Empty(t, r.URL.Query().Get("X-Amz-Target"))
		res, err := verifier(t0.Add(4*time.Minute)).Verify(r, b)
		require.NoError(t, err)
		assert.True(t, res.Presigned)
	})
}

func TestVerifyPresignedFailures(t *testing.T) {
	const mismatchMsg = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
	body := `{"Limit":10}`
	set := func(k, v string) func(url.Values) { return func(q url.Values) { q.Set(k, v) } }
	del := func(k string) func(url.Values) { return func(q url.Values) { q.Del(k) } }
	cases := []struct {
		name    string
		expires string
		editURL func(url.Values)
		mutate  func(*http.Request)
		body    string
		now     time.Time
		typ     string
		msg     string
	}{
		{name: "expired by X-Amz-Expires", expires: "60", now: t0.Add(61 * time.Second), typ: wire.InvalidSignature,
			msg: "Signature expired: 20261124T120000Z is now earlier than 20261124T120001Z (20261124T120101Z - 1 min.)"},
		{name: "expired by X-Amz-Expires of seconds", expires: "90", now: t0.Add(91 * time.Second), typ: wire.InvalidSignature,
			msg: "Signature expired: 20261124T120000Z is now earlier than 20261124T120001Z (20261124T120131Z - 90 sec.)"},
		{name: "a long X-Amz-Expires ends at the skew window, as in AWS", expires: "3600", now: t0.Add(6 * time.Minute), typ: wire.InvalidSignature,
			msg: "Signature expired: 20261124T120000Z is now earlier than 20261124T120100Z (20261124T120600Z - 5 min.)"},
		{name: "not yet current", now: t0.Add(-6 * time.Minute), typ: wire.InvalidSignature,
			msg: "Signature not yet current: 20261124T120000Z is still later than 20261124T115900Z (20261124T115400Z + 5 min.)"},
		{name: "no algorithm value", editURL: set("X-Amz-Algorithm", ""), typ: wire.IncompleteSignature,
			msg: "AWS query-string parameters must include 'X-Amz-Algorithm'. Re-examine the query-string parameters."},
		{name: "no credential", editURL: del("X-Amz-Credential"), typ: wire.IncompleteSignature,
			msg: "AWS query-string parameters must include 'X-Amz-Credential'. Re-examine the query-string parameters."},
		{name: "no signature", editURL: del("X-Amz-Signature"), typ: wire.IncompleteSignature,
			msg: "AWS query-string parameters must include 'X-Amz-Signature'. Re-examine the query-string parameters."},
		{name: "no signed headers", editURL: del("X-Amz-SignedHeaders"), typ: wire.IncompleteSignature,
			msg: "AWS query-string parameters must include 'X-Amz-SignedHeaders'. Re-examine the query-string parameters."},
		{name: "no date", editURL: del("X-Amz-Date"), typ: wire.IncompleteSignature,
			msg: "AWS query-string parameters must include 'X-Amz-Date'. Re-examine the query-string parameters."},
		{name: "only the algorithm", editURL: func(q url.Values) {
			for _, k := range []string{"X-Amz-Credential", "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Amz-Date"} {
				q.Del(k)
			}
		}, typ: wire.IncompleteSignature,
			msg: "AWS query-string parameters must include 'X-Amz-Credential'. AWS query-string parameters must include 'X-Amz-Signature'. " +
				"AWS query-string parameters must include 'X-Amz-SignedHeaders'. AWS query-string parameters must include 'X-Amz-Date'. " +
				"Re-examine the query-string parameters."},
		{name: "other algorithm", editURL: set("X-Amz-Algorithm", "AWS4-HMAC-SHA512"), typ: wire.IncompleteSignature,
			msg: "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512'"},
		{name: "credential of four parts", editURL: set("X-Amz-Credential", akid+"/20261124/us-west-2/kms"), typ: wire.IncompleteSignature,
			msg: "Credential should be scoped to a valid region. "},
		{name: "credential date garbled", editURL: set("X-Amz-Credential", akid+"/2026-11-24/us-west-2/kms/aws4_request"), typ: wire.IncompleteSignature,
			msg: "Credential should be scoped to a valid date. "},
		{name: "credential terminator", editURL: set("X-Amz-Credential", akid+"/20261124/us-west-2/kms/aws5_request"), typ: wire.IncompleteSignature,
			msg: "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'. "},
		{name: "signed headers not lower-case", editURL: set("X-Amz-SignedHeaders", "Host"), typ: wire.IncompleteSignature,
			msg: "X-Amz-SignedHeaders must be lower-case header names separated by ';'."},
		{name: "signature too short", editURL: set("X-Amz-Signature", "abc"), typ: wire.IncompleteSignature,
			msg: "Signature must be 64 hexadecimal characters."},
		{name: "date garbled", editURL: set("X-Amz-Date", "2026-11-24T12:00:00Z"), typ: wire.IncompleteSignature,
			msg: "Date must be in ISO-8601 'basic format'. Got '2026-11-24T12:00:00Z'. See http://en.wikipedia.org/wiki/ISO_8601"},
		{name: "expires not a number", expires: "soon", typ: wire.IncompleteSignature, msg: "X-Amz-Expires should be a number"},
		{name: "expires negative", expires: "-1", typ: wire.IncompleteSignature, msg: "X-Amz-Expires must be non-negative"},
		{name: "expires beyond a week", expires: "604801", typ: wire.IncompleteSignature,
			msg: "X-Amz-Expires must be less than a week (in seconds) that is 604800"},
		{name: "host not signed", editURL: set("X-Amz-SignedHeaders", "content-type"), typ: wire.InvalidSignature,
			msg: "'Host' must be a 'SignedHeader' in the AWS Authorization."},
		{name: "region not served", editURL: set("X-Amz-Credential", akid+"/20261124/xx-nowhere-1/kms/aws4_request"), typ: wire.InvalidSignature,
			msg: "Credential should be scoped to a valid region, not 'xx-nowhere-1'. "},
		{name: "scope date", editURL: set("X-Amz-Credential", akid+"/20261123/us-west-2/kms/aws4_request"), typ: wire.InvalidSignature,
			msg: "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20261123' != '20261124', from '20261124T120000Z'."},
		{name: "session token", editURL: set("X-Amz-Security-Token", "tok"), typ: wire.UnrecognizedClient,
			msg: "The security token included in the request is invalid."},
		{name: "unknown key", editURL: set("X-Amz-Credential", "AKIAUNKNOWN/20261124/us-west-2/kms/aws4_request"), typ: wire.UnrecognizedClient,
			msg: "The security token included in the request is invalid."},
		{name: "also an Authorization header", mutate: func(r *http.Request) {
			r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+akid+"/20261124/us-west-2/kms/aws4_request, SignedHeaders=host, Signature="+strings.Repeat("0", 64))
		}, typ: wire.InvalidSignature, msg: "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header."},
		{name: "tampered signature", editURL: func(q url.Values) {
			s := q.Get("X-Amz-Signature")
			q.Set("X-Amz-Signature", strings.Repeat("0", 63)+map[bool]string{true: "1", false: "0"}[s[63] == '0'])
		}, typ: wire.InvalidSignature, msg: mismatchMsg},
		{name: "parameter added", editURL: set("Extra", "x"), typ: wire.InvalidSignature, msg: mismatchMsg},
		{name: "operation changed", editURL: set("X-Amz-Target", "TrentService.ScheduleKeyDeletion"), typ: wire.InvalidSignature, msg: mismatchMsg},
		{name: "expiry extended", expires: "60", editURL: set("X-Amz-Expires", "300"), now: t0.Add(2 * time.Minute), typ: wire.InvalidSignature, msg: mismatchMsg},
		{name: "signed header changed", mutate: func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }, typ: wire.InvalidSignature, msg: mismatchMsg},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			now := tc.now
			if now.IsZero() {
				now = t0.Add(30 * time.Second)
			}
			r, b := presignedView(t, body, t0, tc.expires, nil, tc.editURL, tc.mutate)
			_, err := verifier(now).Verify(r, b)
			requireErr(t, err, tc.typ, tc.msg)
			require.NotContains(t, err.Error(), secret)
		})
	}
	t.Run("tampered body", func(t *testing.T) {
		r, _ := presignedView(t, body, t0, "", nil, nil, nil)
		_, err := verifier(t0).Verify(r, []byte(`{"Limit":11}`))
		requireErr(t, err, wire.InvalidSignature, mismatchMsg)
	})
}

func TestParseQuery(t *testing.T) {
	valid := "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + akid + "%2F20261124%2Fus-west-2%2Fkms%2Faws4_request" +
		"&X-Amz-Date=20261124T120000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=" + strings.Repeat("0", 64)
	t.Run("no authentication", func(t *testing.T) {
		q, err := ParseQuery("Action=ListKeys&a=%20b")
		require.NoError(t, err)
		assert.Nil(t, q)
	})
	t.Run("valid", func(t *testing.T) {
		q, err := ParseQuery(valid + "&X-Amz-Expires=60")
		require.NoError(t, err)
		assert.Equal(t, akid, q.AccessKeyID)
		assert.Equal(t, "us-west-2", q.Region)
		assert.Equal(t, []string{"host"}, q.SignedHeaders)
		assert.Equal(t, time.Minute, q.Expires)
		assert.Equal(t, t0, q.Time)
	})
	t.Run("a repeated parameter counts with its first value", func(t *testing.T) {
		q, err := ParseQuery(valid + "&X-Amz-Date=20300101T000000Z")
		require.NoError(t, err)
		assert.Equal(t, t0, q.Time)
	})
	for _, tc := range []struct{ name, query, msg string }{
		{"escape cut short", valid + "&a=%4", "Incomplete trailing escape % sequence"},
		{"escape not hex", valid + "&a=%zz", "Illegal hex character in escape % pattern: %zz"},
		{"escape not hex without authentication", "a=%g1", "Illegal hex character in escape % pattern: %g1"},
		{"escape of control bytes", "a=%\x01\x02", "Illegal hex character in escape % pattern: %??"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseQuery(tc.query)
			requireErr(t, err, wire.MalformedQueryString, tc.msg)
		})
	}
}

func TestVerifyServesOnlyItsRegions(t *testing.T) {
	r, body := serverView(t, `{}`, t0, nil)
	v := verifier(t0)
	v.Regions = nil
	_, err := v.Verify(r, body)
	requireErr(t, err, wire.InvalidSignature, "Credential should be scoped to a valid region, not 'us-west-2'. ")
}

// FuzzParseQuery: any query string parses to nothing, to an AWS error, or
// to a complete query-string authentication; never a panic.
func FuzzParseQuery(f *testing.F) {
	f.Add("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261124%2Fus-west-2%2Fkms%2Faws4_request&X-Amz-Date=20261124T120000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-amz-target&X-Amz-Signature=" + strings.Repeat("0", 64))
	f.Add("X-Amz-Algorithm&X-Amz-Credential=////&X-Amz-Expires=-1")
	f.Add("a=%4&b=%zz&+=+")
	f.Add("")
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := ParseQuery(raw)
		if err != nil {
			var we *wire.Error
			if !errors.As(err, &we) {
				t.Fatalf("not a wire error: %v", err)
			}
			return
		}
		if q == nil {
			return
		}
		if q.AccessKeyID == "" || q.Region == "" || q.Service == "" || len(q.SignedHeaders) == 0 || len(q.Signature) != 64 ||
			q.Time.IsZero() || q.Expires < 0 || q.Expires > maxExpires {
			t.Fatalf("accepted incomplete query %q: %+v", raw, q)
		}
	})
}
