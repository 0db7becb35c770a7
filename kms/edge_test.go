package kms_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// presign presigns a KMS call with aws-sdk-go-v2's signer, as a client
// handing out a URL would, and returns the request to send.
func (e *env) presign(op, body string, at time.Time, expires string, opts ...func(*v4.SignerOptions)) *http.Request {
	t := e.t
	u := e.srv.URL + "/"
	if expires != "" {
		u += "?X-Amz-Expires=" + expires
	}
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+op)
	sum := sha256.Sum256([]byte(body))
	p := principals[0]
	signedURL, headers, err := v4.NewSigner().PresignHTTP(bg(), aws.Credentials{AccessKeyID: p.AccessKeyID, SecretAccessKey: p.Secret},
		req, hex.EncodeToString(sum[:]), "kms", region, at, opts...)
	require.NoError(t, err)
	send, err := http.NewRequest(http.MethodPost, signedURL, strings.NewReader(body))
	require.NoError(t, err)
	for k, v := range headers {
		send.Header[k] = v
	}
	return send
}

// do sends r and returns the status and the decoded JSON body.
func do(t *testing.T, r *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(r)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out
}

// TestPresignedURL: a URL presigned by aws-sdk-go-v2's PresignHTTP calls
// the operation, and the failures get AWS's exceptions.
func TestPresignedURL(t *testing.T) {
	e := newEnv(t)
	key := e.createKey(e.admin())
	body := `{"KeyId":"` + key + `","Plaintext":"aGVsbG8="}`

	t.Run("the SDK's default presign, operation hoisted into the query", func(t *testing.T) {
		r := e.presign("Encrypt", body, time.Now(), "60")
		require.Empty(t, r.Header.Get("X-Amz-Target"))
		status, out := do(t, r)
		require.Equal(t, http.StatusOK, status, "%v", out)
		blob, err := decodeBlob(out["CiphertextBlob"])
		require.NoError(t, err)
		dec, err := e.admin().Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: blob})
		require.NoError(t, err)
		assert.Equal(t, "hello", string(dec.Plaintext))
	})
	t.Run("presigned with the headers kept as headers", func(t *testing.T) {
		r := e.presign("Encrypt", body, time.Now(), "", func(o *v4.SignerOptions) { o.DisableHeaderHoisting = true })
		require.Equal(t, "TrentService.Encrypt", r.Header.Get("X-Amz-Target"))
		status, out := do(t, r)
		require.Equal(t, http.StatusOK, status, "%v", out)
	})
	t.Run("expired", func(t *testing.T) {
		at := time.Now().Add(-2 * time.Minute)
		status, out := do(t, e.presign("Encrypt", body, at, "60"))
		assert.Equal(t, http.StatusBadRequest, status)
		assert.Equal(t, "InvalidSignatureException", out["__type"])
		assert.Contains(t, out["message"], "Signature expired: "+at.UTC().Format("20060102T150405Z")+" is now earlier than ")
		assert.Contains(t, out["message"], " - 1 min.)")
	})
	t.Run("bad signature", func(t *testing.T) {
		r := e.presign("Encrypt", body, time.Now(), "60")
		q := r.URL.Query()
		q.Set("X-Amz-Signature", strings.Repeat("0", 64))
		r.URL.RawQuery = q.Encode()
		status, out := do(t, r)
		assert.Equal(t, http.StatusBadRequest, status)
		assert.Equal(t, "InvalidSignatureException", out["__type"])
		assert.Equal(t, "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.", out["message"])
	})
	t.Run("another operation than the one signed", func(t *testing.T) {
		r := e.presign("Encrypt", body, time.Now(), "60")
		q := r.URL.Query()
		q.Set("X-Amz-Target", "TrentService.ScheduleKeyDeletion")
		r.URL.RawQuery = q.Encode()
		status, out := do(t, r)
		assert.Equal(t, http.StatusBadRequest, status)
		assert.Equal(t, "InvalidSignatureException", out["__type"])
		desc, err := e.admin().DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &key})
		require.NoError(t, err)
		assert.Equal(t, "Enabled", string(desc.KeyMetadata.KeyState), "nothing happened")
	})
	t.Run("a parameter missing", func(t *testing.T) {
		r := e.presign("Encrypt", body, time.Now(), "60")
		q := r.URL.Query()
		q.Del("X-Amz-Credential")
		r.URL.RawQuery = q.Encode()
		status, out := do(t, r)
		assert.Equal(t, http.StatusBadRequest, status)
		assert.Equal(t, "IncompleteSignatureException", out["__type"])
		assert.Equal(t, "AWS query-string parameters must include 'X-Amz-Credential'. Re-examine the query-string parameters.", out["message"])
	})
	t.Run("also signed in the header", func(t *testing.T) {
		r := e.presign("Encrypt", body, time.Now(), "60")
		r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=x")
		status, out := do(t, r)
		assert.Equal(t, http.StatusBadRequest, status)
		assert.Equal(t, "InvalidSignatureException", out["__type"])
		assert.Equal(t, "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.", out["message"])
	})
}

// TestOperationOnlyFromAPresignedQuery: the query names the operation
// only of a request authenticated in the query.
func TestOperationOnlyFromAPresignedQuery(t *testing.T) {
	e := newEnv(t)
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/?X-Amz-Target=TrentService.ListKeys", strings.NewReader("{}"))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	sum := sha256.Sum256([]byte("{}"))
	p := principals[0]
	require.NoError(t, v4.NewSigner().SignHTTP(bg(), aws.Credentials{AccessKeyID: p.AccessKeyID, SecretAccessKey: p.Secret},
		req, hex.EncodeToString(sum[:]), "kms", region, time.Now()))
	status, out := do(t, req)
	assert.Equal(t, http.StatusBadRequest, status)
	assert.Equal(t, "UnknownOperationException", out["__type"])
}

func decodeBlob(v any) ([]byte, error) {
	var b []byte
	raw, _ := json.Marshal(v)
	err := json.Unmarshal(raw, &b)
	return b, err
}

// TestRegionsServed: a request signed for a Region hsmkms does not serve
// gets AWS's answer for one signed for another Region's endpoint.
func TestRegionsServed(t *testing.T) {
	t.Run("the commercial Regions by default", func(t *testing.T) {
		e := newEnv(t)
		for _, r := range []string{"us-east-1", "eu-west-1", "ap-southeast-2"} {
			_, err := e.client(principals[0], r).ListKeys(bg(), &awskms.ListKeysInput{})
			require.NoError(t, err, r)
		}
		_, err := e.client(principals[0], "us-gov-west-1").ListKeys(bg(), &awskms.ListKeysInput{})
		requireAPIError(t, err, "InvalidSignatureException", "Credential should be scoped to a valid region, not 'us-gov-west-1'. ")
		_, err = e.client(principals[0], "xx-nowhere-1").ListKeys(bg(), &awskms.ListKeysInput{})
		requireAPIError(t, err, "InvalidSignatureException", "Credential should be scoped to a valid region, not 'xx-nowhere-1'. ")
	})
	t.Run("configured", func(t *testing.T) {
		e := newEnvWith(t, func(e *env) { e.edge.Regions = []string{"eu-west-1", "eu-onprem-1"} })
		for _, r := range []string{"eu-west-1", "eu-onprem-1"} {
			_, err := e.client(principals[0], r).ListKeys(bg(), &awskms.ListKeysInput{})
			require.NoError(t, err, r)
		}
		_, err := e.client(principals[0], region).ListKeys(bg(), &awskms.ListKeysInput{})
		requireAPIError(t, err, "InvalidSignatureException", "Credential should be scoped to a valid region, not '"+region+"'. ")
	})
	t.Run("every default Region is a valid Region name", func(t *testing.T) {
		rs := kms.CommercialRegions()
		require.Contains(t, rs, "us-east-1")
		for _, r := range rs {
			assert.True(t, kms.ValidRegion(r), r)
		}
		assert.False(t, kms.ValidRegion("aws-global"))
		assert.False(t, kms.ValidRegion("US-EAST-1"))
	})
	t.Run("a handler refuses a bad Region list", func(t *testing.T) {
		svc := kms.New(kms.Config{})
		_, err := svc.Handler(kms.HandlerConfig{Regions: []string{"us-east-1", "not a region"}})
		require.ErrorContains(t, err, `"not a region" is not a Region name`)
		_, err = svc.Handler(kms.HandlerConfig{Regions: []string{}})
		require.ErrorContains(t, err, "no Regions")
	})
}

// TestThrottled: a request beyond the in-flight bound gets AWS's
// ThrottlingException through the real handler, even while the request
// holding the bound has not finished sending its body.
func TestThrottled(t *testing.T) {
	e := newEnvWith(t, func(e *env) {
		e.edge.MaxInFlight = 1
		e.edge.QueueWait = -1
	})
	// A client that sends its body slowly holds the one place.
	pr, pw := io.Pipe()
	slow, err := http.NewRequest(http.MethodPost, e.srv.URL+"/", pr)
	require.NoError(t, err)
	slow.ContentLength = 100
	slow.Header.Set("X-Amz-Target", "TrentService.ListKeys")
	held := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(slow)
		if err == nil {
			resp.Body.Close()
		}
		held <- err
	}()
	pw.Write([]byte("{"))
	c := e.admin()
	require.Eventually(t, func() bool {
		_, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
		return err != nil && strings.Contains(err.Error(), "ThrottlingException")
	}, 10*time.Second, 10*time.Millisecond)
	_, err = c.ListKeys(bg(), &awskms.ListKeysInput{})
	requireAPIError(t, err, "ThrottlingException", "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls.")
	assert.Contains(t, e.log.String(), `"outcome":"ThrottlingException"`)

	pw.CloseWithError(io.ErrUnexpectedEOF)
	<-held
	require.Eventually(t, func() bool {
		_, err := c.ListKeys(context.Background(), &awskms.ListKeysInput{})
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "the place is given back")
}
