package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gate is a handler that holds each request until released, so a test
// decides exactly how many are in flight.
type gate struct {
	entered chan struct{}
	release chan struct{}
	served  atomic.Int64
}

func newGate() *gate {
	return &gate{entered: make(chan struct{}, 100), release: make(chan struct{})}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.entered <- struct{}{}
	<-g.release
	io.Copy(io.Discard, r.Body)
	g.served.Add(1)
	w.Write([]byte(`{}`))
}

// watchedBody records whether anyone read it.
type watchedBody struct {
	io.Reader
	read atomic.Bool
}

func (b *watchedBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.Reader.Read(p)
}

func request(body *watchedBody) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/", body)
	r.Header.Set("X-Amz-Target", "TrentService.Encrypt")
	return r
}

// serve runs one request through h in the background.
func serve(h http.Handler, r *http.Request) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		done <- w
	}()
	return done
}

func requireThrottled(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	require.Equal(t, http.StatusBadRequest, w.Code)
	require.Equal(t, contentType, w.Header().Get("Content-Type"))
	require.NotEmpty(t, w.Header().Get("x-amzn-RequestId"))
	var body struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body))
	assert.Equal(t, "ThrottlingException", body.Type)
	assert.Equal(t, "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls.", body.Message)
}

func TestLimiter(t *testing.T) {
	t.Run("serves up to the bound and throttles the next without reading its body", func(t *testing.T) {
		g := newGate()
		var log bytes.Buffer
		l := NewLimiter(g, LimiterConfig{MaxInFlight: 3, Logger: hclogTo(&log)})
		var running []<-chan *httptest.ResponseRecorder
		for range 3 {
			running = append(running, serve(l, request(&watchedBody{Reader: strings.NewReader("{}")})))
			<-g.entered
		}
		require.Equal(t, 3, l.InFlight())

		body := &watchedBody{Reader: strings.NewReader(strings.Repeat("x", 1<<20))}
		w := <-serve(l, request(body))
		requireThrottled(t, w)
		assert.False(t, body.read.Load(), "a throttled request's body is never read")
		assert.Equal(t, int64(1), l.ThrottledTotal())
		assert.Contains(t, log.String(), "outcome=ThrottlingException")
		assert.Contains(t, log.String(), "operation=Encrypt")

		close(g.release)
		for _, done := range running {
			assert.Equal(t, http.StatusOK, (<-done).Code)
		}
		assert.Equal(t, 0, l.InFlight(), "every slot is given back")
	})

	t.Run("a request waits for a slot freed within the wait", func(t *testing.T) {
		g := newGate()
		l := NewLimiter(g, LimiterConfig{MaxInFlight: 1, Wait: time.Minute})
		first := serve(l, request(&watchedBody{Reader: strings.NewReader("{}")}))
		<-g.entered
		second := serve(l, request(&watchedBody{Reader: strings.NewReader("{}")}))
		require.Eventually(t, func() bool { return len(l.waiting) == 1 }, 10*time.Second, time.Millisecond)
		g.release <- struct{}{} // the first finishes, the second takes its slot
		assert.Equal(t, http.StatusOK, (<-first).Code)
		<-g.entered
		g.release <- struct{}{}
		assert.Equal(t, http.StatusOK, (<-second).Code)
		assert.Equal(t, int64(0), l.ThrottledTotal())
	})

	t.Run("the wait is bounded", func(t *testing.T) {
		g := newGate()
		l := NewLimiter(g, LimiterConfig{MaxInFlight: 1, Wait: 20 * time.Millisecond})
		first := serve(l, request(&watchedBody{Reader: strings.NewReader("{}")}))
		<-g.entered
		requireThrottled(t, <-serve(l, request(&watchedBody{Reader: strings.NewReader("{}")})))
		close(g.release)
		assert.Equal(t, http.StatusOK, (<-first).Code)
	})

	t.Run("no more wait than MaxWaiting", func(t *testing.T) {
		g := newGate()
		l := NewLimiter(g, LimiterConfig{MaxInFlight: 1, Wait: time.Hour, MaxWaiting: 1})
		first := serve(l, request(&watchedBody{Reader: strings.NewReader("{}")}))
		<-g.entered
		second := serve(l, request(&watchedBody{Reader: strings.NewReader("{}")}))
		require.Eventually(t, func() bool { return len(l.waiting) == 1 }, 10*time.Second, time.Millisecond)
		// The queue is full: the third is refused at once, while the first
		// still runs and the second still waits.
		requireThrottled(t, <-serve(l, request(&watchedBody{Reader: strings.NewReader("{}")})))
		close(g.release)
		assert.Equal(t, http.StatusOK, (<-first).Code)
		assert.Equal(t, http.StatusOK, (<-second).Code)
	})

	t.Run("a client that leaves stops waiting", func(t *testing.T) {
		g := newGate()
		l := NewLimiter(g, LimiterConfig{MaxInFlight: 1, Wait: time.Hour})
		first := serve(l, request(&watchedBody{Reader: strings.NewReader("{}")}))
		<-g.entered
		ctx, cancel := context.WithCancel(context.Background())
		second := serve(l, request(&watchedBody{Reader: strings.NewReader("{}")}).WithContext(ctx))
		require.Eventually(t, func() bool { return len(l.waiting) == 1 }, 10*time.Second, time.Millisecond)
		cancel()
		requireThrottled(t, <-second)
		assert.Empty(t, l.waiting)
		close(g.release)
		assert.Equal(t, http.StatusOK, (<-first).Code)
		assert.Equal(t, 0, l.InFlight())
	})

	t.Run("a panicking handler gives its slot back", func(t *testing.T) {
		l := NewLimiter(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }), LimiterConfig{MaxInFlight: 1})
		func() {
			defer func() { recover() }()
			l.ServeHTTP(httptest.NewRecorder(), request(&watchedBody{Reader: strings.NewReader("{}")}))
		}()
		assert.Equal(t, 0, l.InFlight())
	})

	t.Run("a bound is required", func(t *testing.T) {
		assert.Panics(t, func() { NewLimiter(newGate(), LimiterConfig{}) })
	})

	t.Run("four times as many may wait as run by default", func(t *testing.T) {
		l := NewLimiter(newGate(), LimiterConfig{MaxInFlight: 3, Wait: time.Second})
		assert.Equal(t, 12, cap(l.waiting))
	})

	t.Run("many clients never exceed the bound", func(t *testing.T) {
		var now, peak atomic.Int64
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := now.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			now.Add(-1)
		})
		l := NewLimiter(h, LimiterConfig{MaxInFlight: 4, Wait: time.Millisecond})
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				for range 10 {
					l.ServeHTTP(httptest.NewRecorder(), request(&watchedBody{Reader: strings.NewReader("{}")}))
				}
			})
		}
		wg.Wait()
		assert.LessOrEqual(t, peak.Load(), int64(4))
		assert.Equal(t, 0, l.InFlight())
	})
}

// TestLimiterSDK is what an SDK client sees: AWS's ThrottlingException,
// which the SDK classes as a throttle and so retries with backoff.
func TestLimiterSDK(t *testing.T) {
	g := newGate()
	srv := httptest.NewServer(NewLimiter(g, LimiterConfig{MaxInFlight: 1}))
	defer srv.Close()
	defer close(g.release)
	client := awskms.New(awskms.Options{Region: "us-east-1", BaseEndpoint: aws.String(srv.URL), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKIAIOSFODNN7EXAMPLE", "secret", "")})

	first := make(chan error, 1)
	go func() {
		_, err := client.ListKeys(context.Background(), &awskms.ListKeysInput{})
		first <- err
	}()
	<-g.entered
	_, err := client.Encrypt(context.Background(), &awskms.EncryptInput{KeyId: aws.String("alias/x"), Plaintext: bytes.Repeat([]byte("x"), 4096)})
	var ae smithy.APIError
	require.True(t, errors.As(err, &ae), "%v", err)
	assert.Equal(t, "ThrottlingException", ae.ErrorCode())
	assert.Equal(t, ThrottledMessage, ae.ErrorMessage())
	assert.Equal(t, aws.TrueTernary, retry.IsErrorThrottles(retry.DefaultThrottles).IsErrorThrottle(err), "the SDK retries it as a throttle")
	g.release <- struct{}{}
	require.NoError(t, <-first)
}
