package sigv4

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/require"
)

const (
	akid   = "AKIAIOSFODNN7EXAMPLE"
	secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	region = "us-west-2"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// served are the Regions the tests' verifiers serve.
var served = map[string]bool{region: true, "eu-central-1": true}

func verifier(now time.Time) *Verifier {
	return &Verifier{Service: "kms", Regions: served, Now: func() time.Time { return now }, Lookup: func(id string) (string, bool) {
		return secret, id == akid
	}}
}

// serverView signs a request with the SDK's signer and returns it as a Go
// server receives it, with its body.
func serverView(t testing.TB, body string, at time.Time, mutate func(*http.Request)) (*http.Request, []byte) {
	t.Helper()
	var got *http.Request
	var gotBody []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		gotBody, _ = io.ReadAll(r.Body)
	}))
	defer srv.Close()
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService.ListKeys")
	sum := sha256.Sum256([]byte(body))
	require.NoError(t, v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret},
		req, hex.EncodeToString(sum[:]), "kms", region, at))
	if mutate != nil {
		mutate(req)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return got, gotBody
}

func requireErr(t *testing.T, err error, typ, msg string) {
	t.Helper()
	var we *wire.Error
	require.True(t, errors.As(err, &we), "%v", err)
	require.Equal(t, typ, we.Type, we.Message)
	if msg != "" {
		require.Equal(t, msg, we.Message)
	}
}

func TestVerifyValid(t *testing.T) {
	r, body := serverView(t, `{"Limit":10}`, t0, nil)
	res, err := verifier(t0.Add(4*time.Minute)).Verify(r, body)
	require.NoError(t, err)
	require.Equal(t, Result{AccessKeyID: akid, Region: region, Service: "kms", Time: t0}, res)
}

func TestVerifyFailures(t *testing.T) {
	const mismatchMsg = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
	body := `{"Limit":10}`
	cases := []struct {
		name   string
		mutate func(*http.Request)
		body   string
		now    time.Time
		typ    string
		msg    string
	}{
		{"no auth", func(r *http.Request) { r.Header.Del("Authorization") }, body, t0, wire.MissingAuthenticationToken, "Missing Authentication Token"},
		{"other algorithm", func(r *http.Request) { r.Header.Set("Authorization", "AWS3 foo") }, body, t0, wire.IncompleteSignature, "Unsupported AWS 'algorithm': 'AWS3'"},
		{"no credential", func(r *http.Request) {
			r.Header.Set("Authorization", "AWS4-HMAC-SHA256 SignedHeaders=host, Signature="+strings.Repeat("a", 64))
		}, body, t0, wire.IncompleteSignature, "Authorization header requires 'Credential' parameter."},
		{"bad terminator", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "aws4_request", "aws5_request", 1))
		}, body, t0, wire.IncompleteSignature, "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'. "},
		{"no date", func(r *http.Request) { r.Header.Del("X-Amz-Date") }, body, t0, wire.IncompleteSignature, ""},
		{"scope date", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/20261124/", "/20261123/", 1))
		}, body, t0, wire.InvalidSignature,
			"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20261123' != '20261124', from '20261124T120000Z'."},
		{"date a day off", func(r *http.Request) { r.Header.Set("X-Amz-Date", "20261125T120000Z") }, body, t0, wire.InvalidSignature,
			"Signature not yet current: 20261125T120000Z is still later than 20261124T120500Z (20261124T120000Z + 5 min.)"},
		{"region not served", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/us-west-2/", "/xx-nowhere-1/", 1))
		}, body, t0, wire.InvalidSignature, "Credential should be scoped to a valid region, not 'xx-nowhere-1'. "},
		{"every fault of the scope at once", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/20261124/us-west-2/kms/", "/20261123/xx-nowhere-1/s3/", 1))
		}, body, t0, wire.InvalidSignature, "Credential should be scoped to a valid region, not 'xx-nowhere-1'. " +
			"Credential should be scoped to correct service: 'kms'. " +
			"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20261123' != '20261124', from '20261124T120000Z'."},
		{"wrong service", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/kms/", "/s3/", 1))
		}, body, t0, wire.InvalidSignature, "Credential should be scoped to correct service: 'kms'. "},
		{"unknown key", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), akid, "AKIAUNKNOWN", 1))
		}, body, t0, wire.UnrecognizedClient, "The security token included in the request is invalid."},
		{"session token", func(r *http.Request) { r.Header.Set("X-Amz-Security-Token", "tok") }, body, t0, wire.UnrecognizedClient, ""},
		{"expired", nil, body, t0.Add(6 * time.Minute), wire.InvalidSignature,
			"Signature expired: 20261124T120000Z is now earlier than 20261124T120100Z (20261124T120600Z - 5 min.)"},
		{"future", nil, body, t0.Add(-6 * time.Minute), wire.InvalidSignature,
			"Signature not yet current: 20261124T120000Z is still later than 20261124T115900Z (20261124T115400Z + 5 min.)"},
		{"tampered signed header", func(r *http.Request) { r.Header.Set("X-Amz-Target", "TrentService.Encrypt") }, body, t0, wire.InvalidSignature, mismatchMsg},
		{"tampered signature", func(r *http.Request) {
			h := r.Header.Get("Authorization")
			r.Header.Set("Authorization", h[:len(h)-1]+map[bool]string{true: "1", false: "0"}[h[len(h)-1] == '0'])
		}, body, t0, wire.InvalidSignature, mismatchMsg},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, b := serverView(t, tc.body, t0, tc.mutate)
			_, err := verifier(tc.now).Verify(r, b)
			requireErr(t, err, tc.typ, tc.msg)
			require.NotContains(t, err.Error(), secret)
		})
	}

	t.Run("tampered body", func(t *testing.T) {
		r, _ := serverView(t, body, t0, nil)
		_, err := verifier(t0).Verify(r, []byte(`{"Limit":11}`))
		requireErr(t, err, wire.InvalidSignature, mismatchMsg)
	})
	t.Run("wrong secret", func(t *testing.T) {
		r, b := serverView(t, body, t0, nil)
		v := verifier(t0)
		v.Lookup = func(string) (string, bool) { return "other", true }
		_, err := v.Verify(r, b)
		requireErr(t, err, wire.InvalidSignature, mismatchMsg)
	})
	t.Run("unsigned headers do not matter", func(t *testing.T) {
		r, b := serverView(t, body, t0, func(r *http.Request) { r.Header.Set("X-Extra", "x") })
		_, err := verifier(t0).Verify(r, b)
		require.NoError(t, err)
	})
}

// TestSDKClient is the real path: the KMS client signs, a server verifies.
func TestSDKClient(t *testing.T) {
	v := &Verifier{Service: "kms", Regions: served, Lookup: func(id string) (string, bool) { return secret, id == akid }}
	var mu sync.Mutex
	var results []Result
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		res, err := v.Verify(r, body)
		if err != nil {
			w.WriteHeader(400)
			io.WriteString(w, `{"__type":"`+err.(*wire.Error).Type+`","message":""}`)
			return
		}
		mu.Lock()
		results = append(results, res)
		mu.Unlock()
		io.WriteString(w, `{"Keys":[],"Truncated":false}`)
	}))
	defer srv.Close()
	for _, reg := range []string{"us-west-2", "eu-central-1"} {
		c := awskms.New(awskms.Options{Region: reg, Credentials: credentials.NewStaticCredentialsProvider(akid, secret, ""),
			BaseEndpoint: aws.String(srv.URL), RetryMaxAttempts: 1})
		_, err := c.ListKeys(context.Background(), &awskms.ListKeysInput{})
		require.NoError(t, err)
	}
	require.Len(t, results, 2)
	require.Equal(t, "eu-central-1", results[1].Region)
}

func FuzzParseAuthorization(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=AKID/20261124/us-west-2/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + strings.Repeat("0", 64))
	f.Add("AWS4-HMAC-SHA256 Credential=/////, SignedHeaders=;, Signature=")
	f.Add("")
	f.Fuzz(func(t *testing.T, h string) {
		a, err := ParseAuthorization(h)
		if err != nil {
			var we *wire.Error
			if !errors.As(err, &we) {
				t.Fatalf("not a wire error: %v", err)
			}
			return
		}
		if a.AccessKeyID == "" || a.Region == "" || a.Service == "" || len(a.SignedHeaders) == 0 || len(a.Signature) != 64 {
			t.Fatalf("accepted incomplete header %q: %+v", h, a)
		}
	})
}

func FuzzVerify(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential="+akid+"/20261124/us-west-2/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature="+strings.Repeat("0", 64), "20261124T120000Z", "", []byte("{}"))
	f.Add("", "", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="+akid+"%2F20261124%2Fus-west-2%2Fkms%2Faws4_request&X-Amz-Date=20261124T120000Z&X-Amz-SignedHeaders=host&X-Amz-Signature="+strings.Repeat("0", 64), []byte("{}"))
	f.Fuzz(func(t *testing.T, auth, date, query string, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.URL.RawQuery = query
		r.Header.Set("Authorization", auth)
		r.Header.Set("X-Amz-Date", date)
		if _, err := verifier(t0).Verify(r, body); err == nil {
			t.Fatal("a forged signature verified")
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	r, body := serverView(b, strings.Repeat("x", 1400), t0, nil)
	v := verifier(t0)
	b.ResetTimer()
	for b.Loop() {
		if _, err := v.Verify(r, body); err != nil {
			b.Fatal(err)
		}
	}
}
