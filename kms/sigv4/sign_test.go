package sigv4

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/require"
)

// TestSignMatchesTheSDK: for a request carrying only Host, the SDK's
// signer signs host;x-amz-date, exactly what Sign signs, so the two
// Authorization headers must be equal byte for byte.
func TestSignMatchesTheSDK(t *testing.T) {
	body := []byte(`{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"r"}}`)
	for _, path := range []string{"/kms/xks/v1/health", "/a/b-c_d/kms/xks/v1/keys/key.1_x-y/encrypt"} {
		t.Run(path, func(t *testing.T) {
			mine, err := http.NewRequest(http.MethodPost, "https://xks.example.com"+path, nil)
			require.NoError(t, err)
			Sign(mine, body, akid, secret, region, "kms-xks-proxy", t0)

			sdk, err := http.NewRequest(http.MethodPost, "https://xks.example.com"+path, nil)
			require.NoError(t, err)
			sum := sha256.Sum256(body)
			require.NoError(t, v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret},
				sdk, hex.EncodeToString(sum[:]), "kms-xks-proxy", region, t0))
			require.Equal(t, sdk.Header.Get("Authorization"), mine.Header.Get("Authorization"))
			require.Contains(t, mine.Header.Get("Authorization"), "SignedHeaders=host;x-amz-date,")
			require.Equal(t, "20261124T120000Z", mine.Header.Get("X-Amz-Date"))
		})
	}
}

// TestSignThenVerify: what Sign signs, a Verifier for the service accepts
// through a real HTTP round trip; a changed body or another service's
// verifier does not.
func TestSignThenVerify(t *testing.T) {
	v := &Verifier{Service: "kms-xks-proxy", Regions: served, Now: func() time.Time { return t0 }, Lookup: func(id string) (string, bool) {
		return secret, id == akid
	}}
	var verr error
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, verr = v.Verify(r, b)
	}))
	defer srv.Close()
	send := func(signed, sent string) error {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/p/kms/xks/v1/health", strings.NewReader(sent))
		require.NoError(t, err)
		Sign(req, []byte(signed), akid, secret, region, "kms-xks-proxy", t0)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return verr
	}
	require.NoError(t, send(`{"a":1}`, `{"a":1}`))
	err := send(`{"a":1}`, `{"a":2}`)
	var we *wire.Error
	require.ErrorAs(t, err, &we)
	require.Equal(t, wire.InvalidSignature, we.Type)
}
