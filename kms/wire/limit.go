package wire

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ThrottledMessage is what AWS KMS says with a ThrottlingException: the
// KMS Developer Guide's "Throttling AWS KMS requests" page quotes it, and
// KMS's response bodies carry it verbatim.
const ThrottledMessage = "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."

// Throttled is the error for a request beyond the server's capacity. SDKs
// retry it with backoff.
func Throttled() *Error {
	return &Error{Type: Throttling, Message: ThrottledMessage}
}

// Limiter bounds how many requests next serves at once. A request beyond
// the bound waits at most Wait for a place, and at most MaxWaiting wait;
// any other is answered ThrottlingException at once. The bound is
// taken before next runs, so before the request's body is read: memory
// spent on bodies, and on everything a request allocates, is bounded by
// MaxInFlight times what one request may allocate, however many clients
// send at once. Nothing queues without bound; a throttled request's body is
// never read. It is safe for concurrent use.
type Limiter struct {
	next    http.Handler
	slots   chan struct{} // a token per request being served
	waiting chan struct{} // a token per request waiting for a slot
	wait    time.Duration
	logger  hclog.Logger
	now     func() time.Time

	throttled atomic.Int64
}

// LimiterConfig sizes a Limiter.
type LimiterConfig struct {
	// MaxInFlight is how many requests are served at once; it must be
	// positive.
	MaxInFlight int
	// Wait is how long a request beyond MaxInFlight may wait for a place
	// before it is throttled; 0 throttles at once.
	Wait time.Duration
	// MaxWaiting is how many requests may wait at once; 0 means four times
	// MaxInFlight. A waiting request has read nothing but its headers, so
	// waiters cost no body memory; the bound keeps the queue, and so its
	// latency, short.
	MaxWaiting int
	// Logger gets the log line of each throttled request; nil logs nothing.
	Logger hclog.Logger
	// Now is the clock for the log line's latency; nil means time.Now.
	Now func() time.Time
}

// NewLimiter wraps next. It panics if cfg.MaxInFlight is not positive: an
// unbounded server is a configuration the caller must not be able to build
// by leaving a field out.
func NewLimiter(next http.Handler, cfg LimiterConfig) *Limiter {
	if cfg.MaxInFlight <= 0 {
		panic("wire: NewLimiter needs a positive MaxInFlight")
	}
	if cfg.Wait < 0 {
		cfg.Wait = 0
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	if cfg.MaxWaiting <= 0 {
		cfg.MaxWaiting = 4 * cfg.MaxInFlight
	}
	return &Limiter{
		next:    next,
		slots:   make(chan struct{}, cfg.MaxInFlight),
		waiting: make(chan struct{}, cfg.MaxWaiting),
		wait:    cfg.Wait,
		logger:  cfg.Logger,
		now:     now,
	}
}

// InFlight is how many requests are being served now.
func (l *Limiter) InFlight() int { return len(l.slots) }

// ThrottledTotal is how many requests have been throttled since the start.
func (l *Limiter) ThrottledTotal() int64 { return l.throttled.Load() }

func (l *Limiter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := l.now()
	if !l.acquire(r) {
		l.throttle(w, r, start)
		return
	}
	defer func() { <-l.slots }()
	l.next.ServeHTTP(w, r)
}

// acquire takes a slot, waiting for one at most l.wait, and only while
// fewer than MaxWaiting requests wait.
func (l *Limiter) acquire(r *http.Request) bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	if l.wait == 0 {
		return false
	}
	select {
	case l.waiting <- struct{}{}:
	default:
		return false
	}
	defer func() { <-l.waiting }()
	timer := time.NewTimer(l.wait)
	defer timer.Stop()
	select {
	case l.slots <- struct{}{}:
		return true
	case <-timer.C:
		return false
	case <-r.Context().Done():
		return false
	}
}

// throttle answers ThrottlingException without reading the body. After
// the answer net/http discards what is left of a small body (256 KiB, any
// valid KMS request) to keep the connection, and closes the connection on
// a larger one; a client still sending such a body may then see the
// connection reset instead of the answer, which the SDKs retry alike.
func (l *Limiter) throttle(w http.ResponseWriter, r *http.Request, start time.Time) {
	l.throttled.Add(1)
	id := newRequestID()
	setHeaders(w.Header(), id)
	status, outcome := writeError(w, Throttled())
	if l.logger == nil {
		return
	}
	ip := ""
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		ip = host
	}
	// The operation is unchecked client input: bound what a flood of
	// throttled requests can put in the log.
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
	if len(op) > 64 {
		op = op[:64]
	}
	l.logger.Info("request", "request_id", id, "principal", "-", "operation", op,
		"key", "", "outcome", outcome, "status", status, "latency", l.now().Sub(start), "source_ip", ip, "authz", "")
}
