package wire

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/require"
)

func TestModel(t *testing.T) {
	ops := Operations()
	require.Len(t, ops, 54)
	require.Contains(t, ops, "Encrypt")
	require.Contains(t, ops, "ConnectCustomKeyStore")
}

func TestValidate(t *testing.T) {
	one := "1 validation error detected: "
	cases := []struct{ op, body, typ, msg string }{
		{"Encrypt", `{"KeyId":"k","Plaintext":"aGk="}`, "", ""},
		{"Encrypt", `{"KeyId":"k","Plaintext":"` + base64.StdEncoding.EncodeToString(make([]byte, 4097)) + `"}`, Validation,
			one + "Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096"},
		{"Encrypt", `{"Plaintext":"aGk="}`, Validation, one + "Value null at 'keyId' failed to satisfy constraint: Member must not be null"},
		{"Encrypt", `{"KeyId":null,"Plaintext":"aGk="}`, Validation, one + "Value null at 'keyId' failed to satisfy constraint: Member must not be null"},
		{"GenerateRandom", `{"NumberOfBytes":0}`, Validation, one + "Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1"},
		{"GenerateRandom", `{"NumberOfBytes":1025}`, Validation, one + "Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024"},
		{"GenerateRandom", `{}`, "", ""},
		{"GenerateRandom", ``, "", ""},
		{"CreateKey", `{"KeyUsage":"FOO"}`, Validation, one + "Value 'FOO' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: [SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT]"},
		{"ScheduleKeyDeletion", `{"KeyId":"k","PendingWindowInDays":400}`, Validation, one + "Value '400' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value less than or equal to 365"},
		{"CreateKey", `{"Tags":[{"TagKey":"` + strings.Repeat("k", 129) + `","TagValue":"v"}]}`, Validation,
			one + "Value '" + strings.Repeat("k", 129) + "' at 'tags.1.member.tagKey' failed to satisfy constraint: Member must have length less than or equal to 128"},
		{"CreateKey", `{"Tags":[{"TagValue":"v"}]}`, Validation, one + "Value null at 'tags.1.member.tagKey' failed to satisfy constraint: Member must not be null"},
		{"CreateAlias", `{"AliasName":"alias/a b","TargetKeyId":"k"}`, Validation,
			one + "Value 'alias/a b' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"},
		{"CreateKey", `{"KeyUsage":"X","Origin":"Y"}`, Validation,
			"2 validation errors detected: Value 'X' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: [SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT]; " +
				"Value 'Y' at 'origin' failed to satisfy constraint: Member must satisfy enum value set: [AWS_KMS, EXTERNAL, AWS_CLOUDHSM, EXTERNAL_KEY_STORE]"},
		{"ListKeys", `{"Marker":"é"}`, "", ""},
		{"Encrypt", `{"KeyId":1}`, SerializationException, ""},
		{"Encrypt", `{"KeyId":"k","Plaintext":"***"}`, SerializationException, ""},
		{"GenerateRandom", `{"NumberOfBytes":1.5}`, SerializationException, ""},
		{"GenerateRandom", `[]`, SerializationException, ""},
		{"GenerateRandom", `{"NumberOfBytes":1}{}`, SerializationException, ""},
		{"GenerateRandom", `{`, SerializationException, ""},
		{"Encrypt", `{"KeyId":"k","Plaintext":"aGk=","Unknown":{"x":1}}`, "", ""},
		// The model's lists and maps are dense: a null inside one is
		// malformed for the shape (the AWS protocol tests' rule), never
		// dropped or read as "".
		{"CreateKey", `{"Tags":[null]}`, SerializationException, "Unexpected null at 'tags.1.member'."},
		{"TagResource", `{"KeyId":"k","Tags":[{"TagKey":"a","TagValue":"b"},null]}`, SerializationException, "Unexpected null at 'tags.2.member'."},
		{"Encrypt", `{"KeyId":"k","Plaintext":"aGk=","GrantTokens":[null]}`, SerializationException, ""},
		{"Encrypt", `{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"a":null}}`, SerializationException, "Unexpected null at 'encryptionContext.a'."},
		{"CreateKey", `{"Tags":null}`, "", ""},
		// AWS's recorded order of an enum's values, not the model's.
		{"GenerateMac", `{"KeyId":"k","Message":"aGk=","MacAlgorithm":"X"}`, Validation,
			one + "Value 'X' at 'macAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [HMAC_SHA_384, HMAC_SHA_256, HMAC_SHA_224, HMAC_SHA_512]"},
	}
	for _, tc := range cases {
		err := Validate(tc.op, []byte(tc.body))
		if tc.typ == "" {
			require.Nil(t, err, "%s %s", tc.op, tc.body)
			continue
		}
		require.NotNil(t, err, "%s %s", tc.op, tc.body)
		require.Equal(t, tc.typ, err.Type, "%s %s: %s", tc.op, tc.body, err.Message)
		if tc.msg != "" {
			require.Equal(t, tc.msg, err.Message)
		}
	}
}

// TestAWSEnumOrder: every recorded order is still a permutation of the
// model's values; one that is not would silently fall back to the model's
// order after a model update.
func TestAWSEnumOrder(t *testing.T) {
	for name, order := range awsEnumOrder {
		t.Run(name, func(t *testing.T) {
			require.ElementsMatch(t, EnumValues(name), order)
		})
	}
}

func TestTime(t *testing.T) {
	b, err := json.Marshal(Time(time.UnixMilli(1732406400123)))
	require.NoError(t, err)
	require.Equal(t, "1732406400.123", string(b))
	var tm Time
	require.NoError(t, json.Unmarshal(b, &tm))
	require.Equal(t, int64(1732406400123), time.Time(tm).UnixMilli())
}

// typed adapts a function on Go types to a Route, as kms's runner does.
func typed[In, Out any](fn func(context.Context, *Call, *In) (*Out, error)) Route {
	return Route{Handle: func(ctx context.Context, c *Call, body []byte) (any, error) {
		in := new(In)
		if err := Decode(body, in); err != nil {
			return nil, err
		}
		return fn(ctx, c, in)
	}}
}

type randomIn struct{ NumberOfBytes int }
type randomOut struct{ Plaintext []byte }
type describeOut struct {
	KeyMetadata struct {
		KeyId        string
		CreationDate Time
	}
}

func testServer(t *testing.T, logs io.Writer) *httptest.Server {
	routes := map[string]Route{
		"TrentService.GenerateRandom": typed(func(_ context.Context, c *Call, in *randomIn) (*randomOut, error) {
			return &randomOut{Plaintext: make([]byte, in.NumberOfBytes)}, nil
		}),
		"TrentService.DescribeKey": typed(func(_ context.Context, c *Call, in *struct{ KeyId string }) (*describeOut, error) {
			switch in.KeyId {
			case "missing":
				return nil, fmt.Errorf("wrapped: %w", Errorf(NotFound, "Key '%s' does not exist", in.KeyId))
			case "internal":
				return nil, errors.New("token exploded")
			case "panic":
				panic("boom")
			}
			out := &describeOut{}
			out.KeyMetadata.KeyId = in.KeyId
			out.KeyMetadata.CreationDate = Time(time.Unix(1732406400, 0))
			return out, nil
		}),
	}
	s := &Server{
		Routes:  routes,
		MaxBody: 64 << 10,
		Timeout: time.Second,
		Authenticate: func(r *http.Request, body []byte) (any, error) {
			if r.Header.Get("Authorization") == "" {
				return nil, Errorf(MissingAuthenticationToken, "Missing Authentication Token")
			}
			return "arn:aws:iam::111122223333:user/u", nil
		},
	}
	if logs != nil {
		s.Logger = hclogTo(logs)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv
}

func post(t *testing.T, url, target, body string, auth bool) (int, map[string]string, http.Header) {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("X-Amz-Target", target)
	if auth {
		req.Header.Set("Authorization", "x")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out := map[string]string{}
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &out)
	return resp.StatusCode, out, resp.Header
}

func TestServer(t *testing.T) {
	var logs strings.Builder
	srv := testServer(t, &logs)
	cases := []struct {
		target, body string
		auth         bool
		status       int
		typ, msg     string
	}{
		{"TrentService.GenerateRandom", `{"NumberOfBytes":4}`, false, 400, MissingAuthenticationToken, "Missing Authentication Token"},
		{"TrentService.Nope", `{}`, true, 400, UnknownOperation, ""},
		{"TrentService.GenerateRandom", `{"NumberOfBytes":0}`, true, 400, Validation, ""},
		{"TrentService.DescribeKey", `{"KeyId":"missing"}`, true, 400, NotFound, "Key 'missing' does not exist"},
		{"TrentService.DescribeKey", `{"KeyId":"internal"}`, true, 500, KMSInternal, Internal().Message},
		{"TrentService.DescribeKey", `{"KeyId":"panic"}`, true, 500, KMSInternal, Internal().Message},
		{"TrentService.GenerateRandom", `{"NumberOfBytes":4,"Pad":"` + strings.Repeat("x", 70<<10) + `"}`, true, 413, SerializationException, ""},
	}
	for _, tc := range cases {
		status, body, h := post(t, srv.URL, tc.target, tc.body, tc.auth)
		require.Equal(t, tc.status, status, tc.body)
		require.Equal(t, tc.typ, body["__type"])
		if tc.msg != "" {
			require.Equal(t, tc.msg, body["message"])
		}
		require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, h.Get("x-amzn-RequestId"))
	}
	// An exception without a message has no message member, as AWS sends it.
	_, body, _ := post(t, srv.URL, "TrentService.Nope", `{}`, true)
	require.Equal(t, map[string]string{"__type": UnknownOperation}, body)
	require.Contains(t, logs.String(), "token exploded", "the detail of an internal error goes to the log, not to the client")
	require.Contains(t, logs.String(), "operation=DescribeKey")
	require.Contains(t, logs.String(), "outcome=NotFoundException")
}

// TestSDK: the real client decodes our bodies, blobs, timestamps and errors.
func TestSDK(t *testing.T) {
	srv := testServer(t, nil)
	c := awskms.New(awskms.Options{Region: "us-west-2", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		BaseEndpoint: aws.String(srv.URL), RetryMaxAttempts: 1})
	out, err := c.GenerateRandom(context.Background(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(7)})
	require.NoError(t, err)
	require.Len(t, out.Plaintext, 7)
	d, err := c.DescribeKey(context.Background(), &awskms.DescribeKeyInput{KeyId: aws.String("k")})
	require.NoError(t, err)
	require.Equal(t, int64(1732406400), d.KeyMetadata.CreationDate.Unix())
	_, err = c.DescribeKey(context.Background(), &awskms.DescribeKeyInput{KeyId: aws.String("missing")})
	var ae smithy.APIError
	require.True(t, errors.As(err, &ae))
	require.Equal(t, NotFound, ae.ErrorCode())
	require.Equal(t, "Key 'missing' does not exist", ae.ErrorMessage())
	_, err = c.GenerateRandom(context.Background(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(2000)})
	require.True(t, errors.As(err, &ae))
	require.Equal(t, Validation, ae.ErrorCode())
}

func FuzzValidate(f *testing.F) {
	ops := Operations()
	f.Add(byte(0), []byte(`{"KeyId":"k"}`))
	f.Add(byte(20), []byte(`{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"a":"b"}}`))
	f.Add(byte(5), []byte(`{"Tags":[{"TagKey":"a","TagValue":"b"},null]}`))
	f.Fuzz(func(t *testing.T, op byte, body []byte) {
		if err := Validate(ops[int(op)%len(ops)], body); err != nil && err.Type != Validation && err.Type != SerializationException {
			t.Fatalf("unexpected %s", err.Type)
		}
	})
}

func FuzzServe(f *testing.F) {
	s := &Server{
		Routes: map[string]Route{"TrentService.GenerateRandom": typed(func(_ context.Context, c *Call, in *randomIn) (*randomOut, error) {
			return &randomOut{Plaintext: make([]byte, in.NumberOfBytes)}, nil
		})},
		Authenticate: func(*http.Request, []byte) (any, error) { return nil, nil },
	}
	f.Add("TrentService.GenerateRandom", []byte(`{"NumberOfBytes":3}`))
	f.Add("TrentService.Encrypt", []byte(`{}`))
	f.Fuzz(func(t *testing.T, target string, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(string(body)))
		r.Header.Set("X-Amz-Target", target)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		var out map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatalf("status %d, body not JSON: %q", w.Code, w.Body.String())
		}
		if w.Code != 200 && out["__type"] == nil {
			t.Fatalf("error without __type: %q", w.Body.String())
		}
	})
}

func BenchmarkValidateEncrypt(b *testing.B) {
	body := []byte(`{"KeyId":"arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"` +
		base64.StdEncoding.EncodeToString(make([]byte, 1024)) + `","EncryptionContext":{"purpose":"bench","tenant":"t1"}}`)
	for b.Loop() {
		if err := Validate("Encrypt", body); err != nil {
			b.Fatal(err)
		}
	}
}

// TestHeaderNames: the response headers are set by the names net/http
// would canonicalize them to, so the bytes on the wire are unchanged.
func TestHeaderNames(t *testing.T) {
	require.Equal(t, http.CanonicalHeaderKey("x-amzn-RequestId"), requestIDHeader)
	require.Equal(t, http.CanonicalHeaderKey("Content-Type"), contentTypeHeader)
	h := http.Header{}
	setHeaders(h, "id")
	require.Equal(t, "id", h.Get("x-amzn-RequestId"))
	require.Equal(t, contentType, h.Get("Content-Type"))
}
