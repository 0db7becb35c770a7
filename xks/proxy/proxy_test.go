package proxy_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/authz"
	"github.com/hsmkms/hsmkms/kms/sigv4"
	"github.com/hsmkms/hsmkms/xks"
	"github.com/hsmkms/hsmkms/xks/proxy"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

const region = "us-east-1"

// Two credential pairs for the prefix: rotation needs both to work at once.
var (
	credA = proxy.Credential{AccessKeyID: "AKIAXKSAAAAAAAAAAAAA2345", Secret: "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"}
	credB = proxy.Credential{AccessKeyID: "AKIAXKSBBBBBBBBBBBBB2345", Secret: "VU6W2byoiBrhDqNGbx703oL0syCAmhlQgwNUT123456"}
	// credOther signs for another prefix.
	credOther = proxy.Credential{AccessKeyID: "AKIAXKSOTHEROTHEROTHER23", Secret: "c2VjcmV0LWZvci10aGUtb3RoZXItcHJlZml4LTAwMDAwMDA="}
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// env is a proxy on one or more throwaway tokens, served over TLS.
type env struct {
	t      *testing.T
	tokens []*proxy.Token
	faults []*hsm.Faults
	proxy  *proxy.Proxy
	srv    *httptest.Server
	pool   *x509.CertPool
	log    syncBuffer
	cfg    proxy.Config
}

type option func(*env)

func withTokens(n int) option {
	return func(e *env) {
		e.tokens, e.faults = nil, nil
		for range n {
			e.addToken()
		}
	}
}

func withConfig(fn func(*proxy.Config)) option { return func(e *env) { fn(&e.cfg) } }

func (e *env) addToken() {
	t := e.t
	tok := hsmtest.NewToken(t)
	i := len(e.faults)
	e.faults = append(e.faults, nil)
	keys, err := keystore.OpenExternalKeys(context.Background(), keystore.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 4,
		Wrap: func(p hsm.PKCS11) hsm.PKCS11 { e.faults[i] = hsm.NewFaults(p); return e.faults[i] }}, tok.UserPIN, nil)
	require.NoError(t, err)
	t.Cleanup(func() { keys.Close(context.Background()) })
	e.tokens = append(e.tokens, &proxy.Token{ID: "hsm-" + string(rune('1'+i)), Keys: keys})
}

// The keys of AWS's proxy test client, and one of the wrong spec.
var testKeys = []struct {
	id               string
	spec             keystore.ExternalKeySpec
	encrypt, decrypt bool
}{
	{"foo", keystore.ExternalAES256, true, true},
	{"encrypt_only_key", keystore.ExternalAES256, true, false},
	{"decrypt_only_key", keystore.ExternalAES256, false, true},
	{"impotent_key", keystore.ExternalAES256, false, false},
	{"aes128", keystore.ExternalAES128, true, true},
	{"app-one", keystore.ExternalAES256, true, true},
}

func newEnv(t *testing.T, opts ...option) *env {
	t.Helper()
	e := &env{t: t}
	e.addToken()
	e.cfg = proxy.Config{Regions: []string{region, "eu-west-1"}, Timeout: 20 * time.Second, MaxInFlight: 64, Version: "test"}
	for _, o := range opts {
		o(e)
	}
	for _, k := range testKeys {
		_, err := e.tokens[0].Keys.CreateExternalKey(context.Background(), k.id, k.spec, k.encrypt, k.decrypt)
		require.NoError(t, err)
	}
	if e.cfg.Prefixes == nil {
		e.cfg.Prefixes = []proxy.Prefix{
			{Path: "/example/prefix", Credentials: []proxy.Credential{credA, credB}, Tokens: e.tokens},
			{Path: "", Credentials: []proxy.Credential{credOther}, Tokens: e.tokens},
		}
	}
	e.cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: &e.log, JSONFormat: true})
	var err error
	e.proxy, err = proxy.New(e.cfg)
	require.NoError(t, err)
	e.srv = httptest.NewTLSServer(e.proxy)
	t.Cleanup(e.srv.Close)
	e.pool = x509.NewCertPool()
	e.pool.AddCert(e.srv.Certificate())
	return e
}

// client is a SigV4 client for prefix, signing with cred.
func (e *env) client(prefix string, cred proxy.Credential) *xks.Client {
	c, err := xks.NewClient(xks.ClientConfig{Endpoint: "https://example.com", Path: prefix + xks.APIPath,
		AccessKeyID: cred.AccessKeyID, Secret: cred.Secret, Region: region, RootCAs: e.pool,
		ConnectTo: map[string]string{"example.com": e.srv.Listener.Addr().String()}, Timeout: 30 * time.Second})
	require.NoError(e.t, err)
	e.t.Cleanup(c.Close)
	return c
}

func (e *env) main() *xks.Client { return e.client("/example/prefix", credA) }

// raw sends body to path with method, signed by cred unless cred is nil;
// mutate may change the request after signing.
func (e *env) raw(method, path, body string, cred *proxy.Credential, at time.Time, mutate func(*http.Request)) (int, xks.Error, http.Header) {
	t := e.t
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Host = "example.com"
	if cred != nil {
		sigv4.Sign(req, []byte(body), cred.AccessKeyID, cred.Secret, region, xks.Service, at)
	}
	if mutate != nil {
		mutate(req)
	}
	resp, err := e.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var xe xks.Error
	if resp.StatusCode != 200 {
		require.NoError(t, json.Unmarshal(data, &xe), "%s", data)
	}
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	return resp.StatusCode, xe, resp.Header
}

func md(op string) xks.RequestMetadata {
	return xks.RequestMetadata{AwsPrincipalArn: "arn:aws:iam::111122223333:user/Alice", KmsKeyArn: "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
		KmsOperation: op, KmsRequestID: "4112f4d6-db54-4af4-ae30-c55a22a8dfae", KmsViaService: "ebs"}
}

func requireProxyError(t *testing.T, err error, name string) {
	t.Helper()
	var ce *xks.CallError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, xks.FailProxy, ce.Failure, "%v", err)
	require.Equal(t, name, ce.ErrorName, ce.Message)
}

// TestProxyOperations: the four operations through a SigV4 client of our
// own, as AWS KMS calls them; the client checks every answer's shape and
// the CDIV.
func TestProxyOperations(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.main()
	ctx := context.Background()

	t.Run("GetHealthStatus", func(t *testing.T) {
		h, err := c.Health(ctx, xks.RequestMetadata{KmsOperation: "KmsHealthCheck", KmsRequestID: "r"})
		require.NoError(t, err)
		assert.Equal(t, 1, h.XksProxyFleetSize)
		assert.Equal(t, "hsmkms", h.XksProxyVendor)
		assert.Equal(t, "hsmkms XKS proxy test", h.XksProxyModel)
		assert.Equal(t, "SoftHSM project", h.EkmVendor)
		require.Len(t, h.EkmFleetDetails, 1)
		assert.Equal(t, xks.EkmFleetDetail{ID: "hsm-1", Model: "SoftHSM project SoftHSM v2", HealthStatus: xks.HealthActive}, h.EkmFleetDetails[0])
	})

	t.Run("GetKeyMetadata", func(t *testing.T) {
		for _, k := range testKeys {
			m, err := c.GetKeyMetadata(ctx, k.id, md("CreateKey"))
			require.NoError(t, err)
			var usage []string
			if k.encrypt {
				usage = append(usage, "ENCRYPT")
			}
			if k.decrypt {
				usage = append(usage, "DECRYPT")
			}
			if usage == nil {
				usage = []string{}
			}
			assert.Equal(t, &xks.MetadataResponse{KeySpec: string(k.spec), KeyUsage: usage, KeyStatus: "ENABLED"}, m, k.id)
		}
	})

	t.Run("Encrypt and Decrypt with AAD", func(t *testing.T) {
		plain := bytes.Repeat([]byte("p"), xks.MaxPlaintext)
		aad := bytes.Repeat([]byte("a"), xks.MaxAAD)
		s, err := c.Encrypt(ctx, "foo", md("GenerateDataKey"), plain, aad)
		require.NoError(t, err)
		assert.Len(t, s.IV, 12)
		assert.Len(t, s.Tag, 16)
		assert.Equal(t, []byte{1}, s.Metadata)
		assert.NotEqual(t, plain, s.Ciphertext)
		back, err := c.Decrypt(ctx, "foo", md("Decrypt"), s, aad)
		require.NoError(t, err)
		assert.Equal(t, plain, back)
		// No AAD at all, and an unknown kmsOperation: both accepted.
		s, err = c.Encrypt(ctx, "foo", md("BulkEncrypt"), []byte("Hello World!"), nil)
		require.NoError(t, err)
		back, err = c.Decrypt(ctx, "foo", md("BulkDecrypt"), s, nil)
		require.NoError(t, err)
		assert.Equal(t, "Hello World!", string(back))
		// An encrypt-only key encrypts; a decrypt-only key needs a
		// ciphertext of its own, which nothing can make: refused.
		_, err = c.Encrypt(ctx, "encrypt_only_key", md("Encrypt"), []byte("x"), nil)
		require.NoError(t, err)
	})

	t.Run("plaintext never logged", func(t *testing.T) {
		secret := "do-not-log-this-plaintext"
		_, err := c.Encrypt(ctx, "foo", md("Encrypt"), []byte(secret), []byte("aad"))
		require.NoError(t, err)
		log := e.log.String()
		assert.NotContains(t, log, secret)
		assert.NotContains(t, log, base64.StdEncoding.EncodeToString([]byte(secret)))
		assert.NotContains(t, log, credA.Secret)
		assert.Contains(t, log, `"kms_request_id":"4112f4d6-db54-4af4-ae30-c55a22a8dfae"`)
		assert.Contains(t, log, `"external_key":"foo"`)
	})
}

// TestProxyErrors: every error of the specification, with its HTTP
// status, and 405 for GET.
func TestProxyErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.main()
	ctx := context.Background()
	now := time.Now()
	keyPath := func(id, op string) string { return "/example/prefix/kms/xks/v1/keys/" + id + "/" + op }
	mdJSON, _ := json.Marshal(md("Encrypt"))
	encBody := `{"requestMetadata":` + string(mdJSON) + `,"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM"}`
	good, err := c.Encrypt(ctx, "foo", md("Encrypt"), []byte("secret"), []byte("aad"))
	require.NoError(t, err)

	t.Run("ValidationException", func(t *testing.T) {
		status, xe, _ := e.raw("POST", keyPath("foo", "encrypt"), `{"requestMetadata":`+string(mdJSON)+`,"plaintext":"!!","encryptionAlgorithm":"AES_GCM"}`, &credA, now, nil)
		assert.Equal(t, 400, status)
		assert.Equal(t, xks.ValidationException, xe.Name)
		status, xe, _ = e.raw("POST", keyPath("has~tilde", "encrypt"), encBody, &credA, now, nil)
		assert.Equal(t, 400, status)
		assert.Equal(t, xks.ValidationException, xe.Name)
	})
	t.Run("InvalidCiphertextException", func(t *testing.T) {
		for name, s := range map[string]*xks.Sealed{
			"tag":      {Ciphertext: good.Ciphertext, Metadata: good.Metadata, IV: good.IV, Tag: append([]byte{good.Tag[0] ^ 1}, good.Tag[1:]...)},
			"iv":       {Ciphertext: good.Ciphertext, Metadata: good.Metadata, IV: append([]byte{good.IV[0] ^ 1}, good.IV[1:]...), Tag: good.Tag},
			"16B iv":   {Ciphertext: good.Ciphertext, Metadata: good.Metadata, IV: make([]byte, 16), Tag: good.Tag},
			"body":     {Ciphertext: append([]byte{good.Ciphertext[0] ^ 1}, good.Ciphertext[1:]...), Metadata: good.Metadata, IV: good.IV, Tag: good.Tag},
			"metadata": {Ciphertext: good.Ciphertext, Metadata: []byte{2}, IV: good.IV, Tag: good.Tag},
			"none":     {Ciphertext: good.Ciphertext, IV: good.IV, Tag: good.Tag},
		} {
			_, err := c.Decrypt(ctx, "foo", md("Decrypt"), s, []byte("aad"))
			requireProxyError(t, err, xks.InvalidCiphertextException)
			_ = name
		}
		_, err := c.Decrypt(ctx, "foo", md("Decrypt"), good, []byte("other aad"))
		requireProxyError(t, err, xks.InvalidCiphertextException)
		// The metadata passed back as AAD does not open it (the lengths).
		_, err = c.Decrypt(ctx, "foo", md("Decrypt"), &xks.Sealed{Ciphertext: good.Ciphertext, IV: good.IV, Tag: good.Tag, Metadata: good.Metadata}, append([]byte("aad"), good.Metadata...))
		requireProxyError(t, err, xks.InvalidCiphertextException)
	})
	t.Run("InvalidKeyUsageException", func(t *testing.T) {
		_, err := c.Encrypt(ctx, "decrypt_only_key", md("Encrypt"), []byte("x"), nil)
		requireProxyError(t, err, xks.InvalidKeyUsageException)
		_, err = c.Encrypt(ctx, "impotent_key", md("Encrypt"), []byte("x"), nil)
		requireProxyError(t, err, xks.InvalidKeyUsageException)
		_, err = c.Encrypt(ctx, "aes128", md("Encrypt"), []byte("x"), nil)
		requireProxyError(t, err, xks.InvalidKeyUsageException)
		s, err := c.Encrypt(ctx, "encrypt_only_key", md("Encrypt"), []byte("x"), nil)
		require.NoError(t, err)
		_, err = c.Decrypt(ctx, "encrypt_only_key", md("Decrypt"), s, nil)
		requireProxyError(t, err, xks.InvalidKeyUsageException)
		_, err = c.Decrypt(ctx, "impotent_key", md("Decrypt"), good, []byte("aad"))
		requireProxyError(t, err, xks.InvalidKeyUsageException)
	})
	t.Run("KeyNotFoundException", func(t *testing.T) {
		_, err := c.GetKeyMetadata(ctx, "no-such-key", md("CreateKey"))
		requireProxyError(t, err, xks.KeyNotFoundException)
		_, err = c.Encrypt(ctx, "no-such-key", md("Encrypt"), []byte("x"), nil)
		requireProxyError(t, err, xks.KeyNotFoundException)
		status, _, _ := e.raw("POST", keyPath("no-such-key", "metadata"), `{"requestMetadata":`+string(mdJSON)+`}`, &credA, now, nil)
		assert.Equal(t, 404, status)
	})
	t.Run("InvalidUriPathException", func(t *testing.T) {
		for _, p := range []string{"/other/kms/xks/v1/health", "/example/prefix/kms/xks/v1/keys/foo/sign", "/example/prefix/kms/xks/v2/health", "/"} {
			status, xe, _ := e.raw("POST", p, `{}`, &credA, now, nil)
			assert.Equal(t, 404, status, p)
			assert.Equal(t, xks.InvalidUriPathException, xe.Name, p)
		}
		wrong := e.client("/wrong", credA)
		_, err := wrong.Health(ctx, md("ConnectCustomKeyStore"))
		requireProxyError(t, err, xks.InvalidUriPathException)
	})
	t.Run("AuthenticationFailedException", func(t *testing.T) {
		bad := credA
		bad.Secret = strings.Repeat("x", 43)
		unknown := proxy.Credential{AccessKeyID: "AKIAUNKNOWNUNKNOWN2345", Secret: credA.Secret}
		cases := map[string]func() (int, xks.Error){
			"wrong secret": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, &bad, now, nil)
				return s, x
			},
			"unknown key": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, &unknown, now, nil)
				return s, x
			},
			"another prefix's credential": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, &credOther, now, nil)
				return s, x
			},
			"unsigned": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, nil, now, nil)
				return s, x
			},
			"six minutes old": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, &credA, now.Add(-6*time.Minute), nil)
				return s, x
			},
			"six minutes ahead": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, &credA, now.Add(6*time.Minute), nil)
				return s, x
			},
			"body changed after signing": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, &credA, now, func(r *http.Request) {
					b := strings.Replace(encBody, "SGVsbG8=", "SGVsbG9=", 1)
					r.Body = io.NopCloser(strings.NewReader(b))
					r.ContentLength = int64(len(b))
				})
				return s, x
			},
			"path changed after signing": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, &credA, now, func(r *http.Request) { r.URL.Path = keyPath("app-one", "encrypt") })
				return s, x
			},
			"kms service name": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, nil, now, func(r *http.Request) {
					sigv4.Sign(r, []byte(encBody), credA.AccessKeyID, credA.Secret, region, "kms", now)
				})
				return s, x
			},
			"x-amz-date not signed": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt"), encBody, &credA, now, func(r *http.Request) {
					r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "SignedHeaders=host;x-amz-date", "SignedHeaders=host", 1))
				})
				return s, x
			},
			"query-string signature": func() (int, xks.Error) {
				s, x, _ := e.raw("POST", keyPath("foo", "encrypt")+"?X-Amz-Algorithm=AWS4-HMAC-SHA256", encBody, &credA, now, nil)
				return s, x
			},
		}
		for name, fn := range cases {
			status, xe := fn()
			assert.Equal(t, 401, status, name)
			assert.Equal(t, xks.AuthenticationFailedException, xe.Name, name)
			assert.NotContains(t, xe.Message, credA.Secret, name)
		}
		_, err := e.client("/example/prefix", bad).Health(ctx, md("ConnectCustomKeyStore"))
		requireProxyError(t, err, xks.AuthenticationFailedException)
	})
	t.Run("UnsupportedOperationException", func(t *testing.T) {
		_, err := c.Encrypt(ctx, "foo", md("Encrypt"), make([]byte, xks.MaxPlaintext+1), nil)
		requireProxyError(t, err, xks.UnsupportedOperationException)
		status, xe, _ := e.raw("POST", keyPath("foo", "encrypt"), strings.Repeat(" ", xks.MaxBody+1), &credA, now, nil)
		assert.Equal(t, 501, status)
		assert.Equal(t, xks.UnsupportedOperationException, xe.Name)
	})
	t.Run("405 for GET", func(t *testing.T) {
		for _, p := range []string{"/example/prefix/kms/xks/v1/health", keyPath("foo", "metadata"), keyPath("foo", "encrypt"), keyPath("foo", "decrypt")} {
			status, _, h := e.raw("GET", p, "", &credA, now, nil)
			assert.Equal(t, 405, status, p)
			assert.Equal(t, "POST", h.Get("Allow"))
		}
	})
	t.Run("InvalidStateException", func(t *testing.T) {
		require.NoError(t, e.tokens[0].Keys.SetExternalKeyEnabled(ctx, "app-one", false))
		defer e.tokens[0].Keys.SetExternalKeyEnabled(ctx, "app-one", true)
		m, err := c.GetKeyMetadata(ctx, "app-one", md("DescribeKey"))
		require.NoError(t, err)
		assert.Equal(t, "DISABLED", m.KeyStatus)
		_, err = c.Encrypt(ctx, "app-one", md("Encrypt"), []byte("x"), nil)
		requireProxyError(t, err, xks.InvalidStateException)
		status, _, _ := e.raw("POST", keyPath("app-one", "encrypt"), encBody, &credA, now, nil)
		assert.Equal(t, 400, status)
	})
}

// TestProxyTokenFailures: the errors that need the token to misbehave.
func TestProxyTokenFailures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("InternalException", func(t *testing.T) {
		e := newEnv(t)
		e.faults[0].Fail("C_EncryptInit", pkcs11.CKR_DEVICE_ERROR, 1)
		_, err := e.main().Encrypt(ctx, "foo", md("Encrypt"), []byte("x"), nil)
		requireProxyError(t, err, xks.InternalException)
		assert.NotContains(t, err.Error(), "CKR_", "the token's code stays in the log")
	})
	t.Run("DependencyTimeoutException", func(t *testing.T) {
		e := newEnv(t, withConfig(func(c *proxy.Config) { c.Timeout = 300 * time.Millisecond }))
		// The token stops answering: the request waiting for the
		// session a stalled call holds runs out of time. Pool of 4: four
		// stalled calls hold every session.
		release := e.faults[0].Stall("C_Encrypt")
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.main().Encrypt(ctx, "foo", md("Encrypt"), []byte("x"), nil)
			}()
		}
		require.Eventually(t, func() bool { return e.faults[0].Calls("C_EncryptInit") >= 4 }, 30*time.Second, 5*time.Millisecond)
		_, err := e.main().Encrypt(ctx, "foo", md("Encrypt"), []byte("x"), nil)
		requireProxyError(t, err, xks.DependencyTimeoutException)
		release()
		wg.Wait()
	})
	t.Run("ThrottlingException", func(t *testing.T) {
		e := newEnv(t, withConfig(func(c *proxy.Config) { c.MaxInFlight = 1 }))
		release := e.faults[0].Stall("C_Encrypt")
		done := make(chan struct{})
		go func() {
			defer close(done)
			e.main().Encrypt(ctx, "foo", md("Encrypt"), []byte("x"), nil)
		}()
		require.Eventually(t, func() bool { return e.faults[0].Calls("C_EncryptInit") >= 1 }, 30*time.Second, 5*time.Millisecond)
		status, xe, _ := e.raw("POST", "/example/prefix/kms/xks/v1/health", `{}`, &credA, time.Now(), nil)
		assert.Equal(t, 429, status)
		assert.Equal(t, xks.ThrottlingException, xe.Name)
		release()
		<-done
	})
}

// TestProxyHealthFleet: one entry per token of the prefix, each checked
// deep; a failing token is UNAVAILABLE, and a fleet all UNAVAILABLE still
// answers 200 (AWS KMS decides what that means).
func TestProxyHealthFleet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withTokens(2))
	c := e.main()
	ctx := context.Background()
	statuses := func() []string {
		h, err := c.Health(ctx, md("KmsHealthCheck"))
		require.NoError(t, err)
		var out []string
		for _, d := range h.EkmFleetDetails {
			out = append(out, d.ID+"="+d.HealthStatus)
		}
		return out
	}
	assert.Equal(t, []string{"hsm-1=ACTIVE", "hsm-2=ACTIVE"}, statuses())
	e.faults[1].Fail("C_Encrypt", pkcs11.CKR_DEVICE_REMOVED, -1)
	e.faults[1].Fail("C_OpenSession", pkcs11.CKR_DEVICE_REMOVED, -1)
	require.Eventually(t, func() bool { return strings.Join(statuses(), " ") == "hsm-1=ACTIVE hsm-2=UNAVAILABLE" }, 30*time.Second, 100*time.Millisecond)
	e.faults[0].Fail("C_Encrypt", pkcs11.CKR_DEVICE_REMOVED, -1)
	e.faults[0].Fail("C_OpenSession", pkcs11.CKR_DEVICE_REMOVED, -1)
	require.Eventually(t, func() bool { return strings.Join(statuses(), " ") == "hsm-1=UNAVAILABLE hsm-2=UNAVAILABLE" }, 30*time.Second, 100*time.Millisecond)
	h, err := c.Health(ctx, md("KmsHealthCheck"))
	require.NoError(t, err)
	assert.True(t, h.AllUnavailable())
	// Keys on the second token are found through the prefix too.
	e.faults[0].Clear()
	e.faults[1].Clear()
	require.Eventually(t, func() bool { return e.tokens[1].Keys.Check(ctx) == nil }, 30*time.Second, 100*time.Millisecond)
	_, err = e.tokens[1].Keys.CreateExternalKey(ctx, "second", keystore.ExternalAES256, true, true)
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := c.GetKeyMetadata(ctx, "second", md("CreateKey")); return err == nil }, 30*time.Second, 100*time.Millisecond)
}

// TestProxyCredentialRotation: both of a prefix's credentials work at
// once; a reload that drops the old one refuses it and keeps the new one
// working, without a restart.
func TestProxyCredentialRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	a, b := e.client("/example/prefix", credA), e.client("/example/prefix", credB)
	for _, c := range []*xks.Client{a, b} {
		_, err := c.Encrypt(ctx, "foo", md("Encrypt"), []byte("x"), nil)
		require.NoError(t, err)
	}
	require.NoError(t, e.proxy.Reload([]proxy.Prefix{{Path: "/example/prefix", Credentials: []proxy.Credential{credB}, Tokens: e.tokens}}))
	_, err := a.Encrypt(ctx, "foo", md("Encrypt"), []byte("x"), nil)
	requireProxyError(t, err, xks.AuthenticationFailedException)
	_, err = b.Encrypt(ctx, "foo", md("Encrypt"), []byte("x"), nil)
	require.NoError(t, err)
	// A reload that breaks a rule is refused and changes nothing.
	err = e.proxy.Reload([]proxy.Prefix{{Path: "/example/prefix", Tokens: e.tokens}})
	require.Error(t, err)
	_, err = b.Encrypt(ctx, "foo", md("Encrypt"), []byte("x"), nil)
	require.NoError(t, err)
	err = e.proxy.Reload([]proxy.Prefix{{Path: "/a", Credentials: []proxy.Credential{credB}, Tokens: e.tokens}, {Path: "/b", Credentials: []proxy.Credential{credB}, Tokens: e.tokens}})
	require.ErrorContains(t, err, "declared for prefixes")
}

// TestProxySecondaryAuthorization: a policy in hsmkms's IAM policy
// language over the request metadata, wildcards included; health is never
// subject to it.
func TestProxySecondaryAuthorization(t *testing.T) {
	t.Parallel()
	pol, err := authz.Parse([]byte(`{"Version":"2012-10-17","Statement":[
	  {"Sid":"AliceUsesAppKeys","Effect":"Allow","Action":["xks:Encrypt","xks:Decrypt","xks:GetKeyMetadata"],"Resource":["app-*","foo"],
	   "Condition":{"ArnLike":{"xks:awsPrincipalArn":"arn:aws:iam::111122223333:user/Ali*"},
	                "StringEquals":{"xks:kmsOperation":["Encrypt","Decrypt","GenerateDataKey","CreateKey","DescribeKey"]}}},
	  {"Sid":"NotViaEBS","Effect":"Deny","Action":"xks:*","Resource":"*","Condition":{"StringEquals":{"kms:ViaService":"ebs"}}}]}`), authz.IdentityPolicy)
	require.NoError(t, err)
	e := newEnv(t, withConfig(func(c *proxy.Config) {}))
	require.NoError(t, e.proxy.Reload([]proxy.Prefix{{Path: "/example/prefix", Credentials: []proxy.Credential{credA}, Policy: pol, Tokens: e.tokens}}))
	c := e.main()
	ctx := context.Background()
	alice := func(op string) xks.RequestMetadata { m := md(op); m.KmsViaService = ""; return m }

	s, err := c.Encrypt(ctx, "foo", alice("Encrypt"), []byte("x"), nil)
	require.NoError(t, err)
	_, err = c.Decrypt(ctx, "foo", alice("Decrypt"), s, nil)
	require.NoError(t, err)
	_, err = c.Encrypt(ctx, "app-one", alice("GenerateDataKey"), []byte("x"), nil)
	require.NoError(t, err)

	for name, m := range map[string]xks.RequestMetadata{
		"another principal": func() xks.RequestMetadata {
			m := alice("Encrypt")
			m.AwsPrincipalArn = "arn:aws:iam::111122223333:user/Bob"
			return m
		}(),
		"an operation not listed": alice("ReEncrypt"),
		"via EBS (explicit deny)": md("Encrypt"),
	} {
		_, err := c.Encrypt(ctx, "foo", m, []byte("x"), nil)
		requireProxyError(t, err, xks.AccessDeniedException)
		_ = name
	}
	_, err = c.Encrypt(ctx, "encrypt_only_key", alice("Encrypt"), []byte("x"), nil)
	requireProxyError(t, err, xks.AccessDeniedException)
	_, err = c.GetKeyMetadata(ctx, "foo", alice("CreateKey"))
	require.NoError(t, err)
	_, err = c.Health(ctx, xks.RequestMetadata{KmsOperation: "KmsHealthCheck", KmsRequestID: "r"})
	require.NoError(t, err, "GetHealthStatus is excluded from secondary authorization")
	assert.Contains(t, e.log.String(), `deny by statement NotViaEBS`)
	assert.Contains(t, e.log.String(), `allow by statement AliceUsesAppKeys`)
}

// TestProxyClientErrors: a client that trusts another CA than the one
// the proxy's certificate chains to fails with FailTLS, never reaching it.
func TestProxyClientErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	otherCA, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(otherCA)
	c, err := xks.NewClient(xks.ClientConfig{Endpoint: "https://example.com", Path: "/example/prefix/kms/xks/v1", AccessKeyID: credA.AccessKeyID,
		Secret: credA.Secret, Region: region, RootCAs: pool, ConnectTo: map[string]string{"example.com": e.srv.Listener.Addr().String()}, Timeout: 10 * time.Second})
	require.NoError(t, err)
	_, err = c.Health(ctx, md("ConnectCustomKeyStore"))
	var ce *xks.CallError
	require.True(t, errors.As(err, &ce))
	assert.Equal(t, xks.FailTLS, ce.Failure, "%v", err)
}
