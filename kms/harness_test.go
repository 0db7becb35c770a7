package kms_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/store/pgtest"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	pgtest.Cleanup()
	os.Exit(code)
}

const (
	account      = "111122223333"
	otherAccount = "444455556666"
	region       = "us-west-2"
)

// principals are the admins of two accounts: each may do anything its
// account's key policies delegate to the account.
var principals = []kms.Principal{
	{AccessKeyID: "AKIAADMIN00000000001", Secret: "admin-secret-0000000000000000000000000", Account: account, ARN: "arn:aws:iam::" + account + ":user/admin", Policy: kms.AdminPolicy},
	{AccessKeyID: "AKIAOTHER00000000001", Secret: "other-secret-0000000000000000000000000", Account: otherAccount, ARN: "arn:aws:iam::" + otherAccount + ":user/other", Policy: kms.AdminPolicy},
}

// clock is an injectable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is one hsmkms instance on a throwaway token and database, served over
// HTTP to real SDK clients.
type env struct {
	t      *testing.T
	tok    hsmtest.Token
	dbPath string
	clock  *clock
	svc    *kms.Service
	report *kms.Report // what the start-up check found
	srv    *httptest.Server
	close  func()
	// clusters back custom key stores: tokens with their initial user PIN.
	clusters     []keystore.Cluster
	clusterToken map[string]hsmtest.Token
	// principals are callers beyond the two admins, set by a setup hook.
	principals []kms.Principal
	// wrapDefault, if set by a setup hook, wraps the default token's
	// PKCS#11 (to hide a mechanism, say).
	wrapDefault func(hsm.PKCS11) hsm.PKCS11
	// log holds the request log lines, one JSON object each.
	log syncBuffer
	// edge, if set by a setup hook, sizes the HTTP edge: Regions,
	// MaxInFlight, QueueWait and Endpoints are taken from it.
	edge kms.HandlerConfig
	// dbURL, if set, is the PostgreSQL database the node uses instead of
	// dbPath; node, sync and jobs are its NodeID, SyncInterval and
	// JobInterval (see newNodes).
	dbURL      string
	node       string
	sync, jobs time.Duration
	// audit, if set by a setup hook, turns the audit trail on; metrics
	// counts what the service does.
	audit   *kms.AuditConfig
	metrics *kms.Metrics
	// usageFlush is how often keys' last use is written (0: the default).
	usageFlush time.Duration
	// closeMayFail lets the next close report an error (a failed audit
	// trail) without failing the test.
	closeMayFail bool
	// xks, if set by a setup hook, is how external key stores reach
	// their proxies.
	xks kms.XKSConfig
	// cachedKeys bounds the key metadata cache (0: the default).
	cachedKeys int
	// material is how the default key store holds key material:
	// testKeyMaterial unless a setup hook pins it.
	material keystore.MaterialConfig
}

// testKeyMaterial is how the suite's default key stores hold material:
// wrapped (the default for new deployments) unless
// HSMKMS_TEST_KEY_MATERIAL says token_objects; `make test` runs the suite
// both ways.
func testKeyMaterial() keystore.KeyMaterial {
	if v := os.Getenv("HSMKMS_TEST_KEY_MATERIAL"); v != "" {
		return keystore.KeyMaterial(v)
	}
	return keystore.Wrapped
}

// syncBuffer is a bytes.Buffer safe for the server's concurrent writes.
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

func newEnv(t *testing.T) *env { return newEnvWith(t, nil) }

// newEnvWith is newEnv with setup run before the service starts (to declare
// clusters, say).
func newEnvWith(t *testing.T, setup func(e *env)) *env {
	e := &env{t: t, tok: hsmtest.NewToken(t), dbPath: filepath.Join(t.TempDir(), "hsmkms.db"), clock: &clock{now: time.Now()},
		clusterToken: map[string]hsmtest.Token{}, material: keystore.MaterialConfig{Mode: testKeyMaterial()}}
	if setup != nil {
		setup(e)
	}
	e.start()
	t.Cleanup(func() {
		e.close()
		if t.Failed() {
			// A 500's cause is logged, never sent: show it with the failure.
			for _, line := range strings.Split(e.log.String(), "\n") {
				if strings.Contains(line, `"@level":"error"`) || strings.Contains(line, `"@level":"warn"`) {
					t.Log(line)
				}
			}
		}
	})
	return e
}

// start brings the service up on the env's token and database, as a server
// restart would.
func (e *env) start() {
	t := e.t
	ctx := context.Background()
	var err error
	cfg := kms.OpenConfig{
		DefaultToken: keystore.TokenConfig{Module: e.tok.Module, Label: e.tok.Label, PoolSize: 4, Wrap: e.wrapDefault},
		PIN:          e.tok.UserPIN,
		Database:     e.dbPath,
		Clusters:     e.clusters,
		Now:          e.clock.Now,
		NodeID:       e.node,
		SyncInterval: e.sync,
		JobInterval:  e.jobs,
		XKS:          e.xks,
		KeyMaterial:  e.material,
		Audit:        e.audit,
		Metrics:      e.metrics,

		UsageFlushInterval: e.usageFlush,
		CachedKeys:         e.cachedKeys,
		Logger:             hclog.New(&hclog.LoggerOptions{Output: &e.log, JSONFormat: true, Level: hclog.Warn}),
	}
	if e.dbURL != "" {
		cfg.Database, cfg.DatabaseURL = "", e.dbURL
	}
	e.svc, err = kms.Open(ctx, cfg)
	require.NoError(t, err)
	e.report = e.svc.StartupReport()
	e.svc.Start()
	// Tests that race many calls are about what the service does with
	// them, not about throttling: unless a test sizes the edge itself, it
	// admits more than any test sends at once.
	maxInFlight := e.edge.MaxInFlight
	if maxInFlight == 0 {
		maxInFlight = 256
	}
	handler, err := e.svc.Handler(kms.HandlerConfig{Principals: append(slices.Clone(principals), e.principals...),
		Logger:  hclog.New(&hclog.LoggerOptions{Output: &e.log, JSONFormat: true}),
		Regions: e.edge.Regions, MaxInFlight: maxInFlight, QueueWait: e.edge.QueueWait, Endpoints: e.edge.Endpoints,
		// RSA-4096 generation on SoftHSM2 under the race detector, with
		// every test in parallel, can pass the 30 s production deadline.
		Timeout: 2 * time.Minute})
	require.NoError(t, err)
	e.srv = httptest.NewServer(handler)
	closed := false
	e.close = func() {
		if closed {
			return
		}
		closed = true
		e.srv.Close()
		err := e.svc.Close(ctx)
		if e.closeMayFail {
			e.closeMayFail = false
			return
		}
		require.NoError(t, err)
	}
}

// newEnvWithClusters is newEnv plus n tokens declared as clusters.
func newEnvWithClusters(t *testing.T, n int) *env {
	return newEnvWith(t, func(e *env) {
		for i := range n {
			e.addCluster("cluster-"+strings.Repeat("abcdefghijk"[i:i+1], 11), hsmtest.NewToken(t), nil)
		}
	})
}

// addCluster declares tok as cluster id; wrap, if set, wraps its PKCS#11.
func (e *env) addCluster(id string, tok hsmtest.Token, wrap func(hsm.PKCS11) hsm.PKCS11) {
	e.clusters = append(e.clusters, keystore.Cluster{ID: id, Token: hsm.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 2, Wrap: wrap}})
	e.clusterToken[id] = tok
}

func (e *env) restart() {
	e.close()
	e.start()
}

// client returns an SDK client signing as principal p in region r.
func (e *env) client(p kms.Principal, r string) *awskms.Client {
	return awskms.New(awskms.Options{
		Region:       r,
		Credentials:  credentials.NewStaticCredentialsProvider(p.AccessKeyID, p.Secret, ""),
		BaseEndpoint: aws.String(e.srv.URL),
		Retryer:      closedConnRetryer(),
	})
}

// closedConnRetryer retries only a known client-side race of the SDK
// (aws-sdk-go-v2 issues 1825 and 2737: a pooled connection closed under a
// response being read), never an answer of the server, so every test
// still sees exactly the server's first response.
func closedConnRetryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = 3
		o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
		o.Retryables = []retry.IsErrorRetryable{retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
			if errors.Is(err, net.ErrClosed) {
				return aws.TrueTernary
			}
			return aws.FalseTernary
		})}
		o.RateLimiter = ratelimit.None
	})
}

func (e *env) admin() *awskms.Client { return e.client(principals[0], region) }

func bg() context.Context { return context.Background() }

// requireAPIError asserts err is the AWS exception code with message msg
// ("" skips the message check).
func requireAPIError(t *testing.T, err error, code, msg string) {
	t.Helper()
	require.Error(t, err)
	var ae smithy.APIError
	require.True(t, errors.As(err, &ae), "not an API error: %v", err)
	require.Equal(t, code, ae.ErrorCode(), "message: %s", ae.ErrorMessage())
	if msg != "" {
		require.Equal(t, msg, ae.ErrorMessage())
	}
}

// requireAPIErrorNoMessage asserts err is the AWS exception code sent
// without a message, as AWS sends some. aws-sdk-go-v2 reports such an
// exception of the KMS model with an empty message, and one outside it
// (ValidationException, NotAuthorizedException) with "UnknownError": what
// it shows for AWS's own answer too. rawNoMessage checks the body itself.
func requireAPIErrorNoMessage(t *testing.T, err error, code string) {
	t.Helper()
	requireAPIError(t, err, code, "")
	var ae smithy.APIError
	require.True(t, errors.As(err, &ae))
	require.Contains(t, []string{"", "UnknownError"}, ae.ErrorMessage())
}

func (e *env) createKey(c *awskms.Client) string {
	out, err := c.CreateKey(bg(), &awskms.CreateKeyInput{})
	require.NoError(e.t, err)
	return *out.KeyMetadata.KeyId
}

// raw sends body as operation op, signed by the admin, bypassing the SDK's
// client-side checks: the way to test what the server itself refuses.
func (e *env) raw(op, body string) (status int, errType, msg string) {
	status, fields := e.rawFields(e.t, op, body)
	errType, _ = fields["__type"].(string)
	msg, _ = fields["message"].(string)
	return status, errType, msg
}

// rawNoMessage sends body as raw does and asserts the answer is the
// exception code with no message member at all, as AWS sends some.
func (e *env) rawNoMessage(t *testing.T, op, body, code string) {
	t.Helper()
	status, fields := e.rawFields(t, op, body)
	require.Equal(t, 400, status)
	require.Equal(t, map[string]any{"__type": code}, fields)
}

// rawFields sends body as raw does, failing t, and returns the status and
// the response body's members.
func (e *env) rawFields(t *testing.T, op, body string) (int, map[string]any) {
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+op)
	sum := sha256.Sum256([]byte(body))
	p := principals[0]
	err = v4.NewSigner().SignHTTP(bg(), aws.Credentials{AccessKeyID: p.AccessKeyID, SecretAccessKey: p.Secret},
		req, hex.EncodeToString(sum[:]), "kms", region, time.Now())
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	require.NotEmpty(t, resp.Header.Get("x-amzn-RequestId"))
	return resp.StatusCode, out
}
