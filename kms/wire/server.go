package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"reflect"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	jsonv1 "github.com/go-json-experiment/json/v1"
	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/internal/uuid"
)

// Time is a timestamp as AWS JSON sends it: epoch seconds, with the
// fraction to the millisecond.
type Time time.Time

func (t Time) MarshalJSON() ([]byte, error) {
	ms := time.Time(t).UnixMilli()
	return strconv.AppendFloat(nil, float64(ms)/1000, 'f', -1, 64), nil
}

func (t *Time) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return fmt.Errorf("wire: timestamp %q is not epoch seconds", b)
	}
	*t = Time(time.UnixMilli(int64(math.Round(f * 1000))).UTC())
	return nil
}

// Call is one request as the protocol sees it. The caller's identity is
// whatever Authenticate returned: wire carries it to the route without
// knowing what it is.
type Call struct {
	Op        string
	RequestID string
	SourceIP  string
	Secure    bool // arrived over TLS
	UserAgent string
	// TLS is the connection's TLS state (nil over plain HTTP) and Host the
	// Host header: what audit records say of how the call arrived.
	TLS  *tls.ConnectionState
	Host string
	// Identity is what Authenticate returned for this request.
	Identity any
	// logAttrs are key/value pairs the route adds to the request's log line.
	logAttrs []any
}

// Log adds key/value pairs to the request's log line. Never pass
// plaintext, key bytes, PINs or secrets.
func (c *Call) Log(kv ...any) { c.logAttrs = append(c.logAttrs, kv...) }

// Route handles one operation. body has passed Validate.
type Route struct {
	Handle func(ctx context.Context, c *Call, body []byte) (any, error)
}

// decodeOptions are encoding/json's semantics, less its habit of scanning
// the whole body for syntax before decoding it: Validate has read the
// body already, and a body refused for any reason is decoded again by
// encoding/json itself.
var decodeOptions = jsonv2.JoinOptions(jsonv1.DefaultOptionsV1(), jsonv1.ReportErrorsWithLegacySemantics(false))

// Decode unmarshals a request body into v (a pointer to a struct),
// answering malformed JSON with AWS's SerializationException. An empty
// body leaves v as it is.
//
// It decodes with encoding/json's semantics (case-insensitive names,
// duplicate names, invalid UTF-8 and all) on the v2 engine of
// go-json-experiment/json, which takes a third of encoding/json's time
// and allocations. A body it refuses is read again by encoding/json, so
// that the exception's words are encoding/json's, as they always were: a
// body that passed Validate is refused only for a number that is not an
// integer's (1e3 for an int), which no SDK sends.
func Decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := jsonv2.Unmarshal(body, v, decodeOptions); err != nil {
		reflect.ValueOf(v).Elem().SetZero()
		if err := json.Unmarshal(body, v); err != nil {
			return serialization("Malformed request body: " + describeJSONError(err))
		}
	}
	return nil
}

// describeJSONError says what was wrong without Go type names.
func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "unexpected " + te.Value + " at '" + te.Field + "'."
	}
	return "not valid JSON."
}

// Server is the AWS JSON 1.1 endpoint: POST /, X-Amz-Target names the
// operation, bodies and errors are JSON. The route table is explicit; a
// target not in it is UnknownOperationException.
type Server struct {
	Routes map[string]Route
	// Authenticate verifies the request's signature over body and returns
	// the caller's identity, which routes find in Call.Identity. Its
	// *Error is sent as is.
	Authenticate func(r *http.Request, body []byte) (any, error)
	MaxBody      int64
	Timeout      time.Duration
	Logger       hclog.Logger
	Now          func() time.Time
	// Rejected, if set, is told of every request answered without reaching
	// its route once its body was read (authentication failures, unknown
	// operations, invalid input), with the error about to be sent: the
	// audit trail records them. If it fails, KMSInternalException is sent
	// instead.
	Rejected func(ctx context.Context, c *Call, r *http.Request, err error) error
	// Observe, if set, is told of every request answered, where its log
	// line is written: the request metrics.
	Observe func(c *Call, status int, outcome string, latency time.Duration)
}

const contentType = "application/x-amz-json-1.1"

// Every response's headers, by their canonical names (net/http sends
// x-amzn-RequestId as X-Amzn-Requestid, as it always has): set directly,
// Header.Set would canonicalize the name again on every request.
const (
	requestIDHeader   = "X-Amzn-Requestid"
	contentTypeHeader = "Content-Type"
)

// contentTypeValue is shared by every response: net/http copies a
// handler's headers before it writes them and never changes a value.
var contentTypeValue = []string{contentType}

func setHeaders(h http.Header, requestID string) {
	h[requestIDHeader] = []string{requestID}
	h[contentTypeHeader] = contentTypeValue
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	start := now()
	c := &Call{RequestID: newRequestID(), Secure: r.TLS != nil, UserAgent: r.UserAgent(), TLS: r.TLS, Host: r.Host}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		c.SourceIP = host
	}
	setHeaders(w.Header(), c.RequestID)

	status, outcome := s.serve(w, r, c)
	if s.Observe != nil {
		s.Observe(c, status, outcome, time.Since(start))
	}
	if s.Logger != nil {
		attrs := make([]any, 0, 12+len(c.logAttrs))
		attrs = append(attrs, "request_id", c.RequestID, "operation", c.Op, "outcome", outcome, "status", status,
			"latency", time.Since(start), "source_ip", c.SourceIP)
		s.Logger.Info("request", append(attrs, c.logAttrs...)...)
	}
}

// serve handles the request and returns the status and outcome to log.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, c *Call) (int, string) {
	c.Op = strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
	if r.Method != http.MethodPost {
		return writeError(w, &Error{Type: UnknownOperation, Message: "", HTTPStatus: http.StatusMethodNotAllowed})
	}
	max := s.MaxBody
	if max <= 0 {
		max = 1 << 20
	}
	body, err := readBody(r, max)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return writeError(w, &Error{Type: SerializationException, Message: "Request entity too large.", HTTPStatus: http.StatusRequestEntityTooLarge})
		}
		return writeError(w, serialization("Could not read the request body."))
	}
	id, err := s.Authenticate(r, body)
	if err != nil {
		return s.reject(w, r, c, err)
	}
	c.Identity = id
	route, ok := s.Routes[r.Header.Get("X-Amz-Target")]
	if !ok {
		return s.reject(w, r, c, &Error{Type: UnknownOperation})
	}
	if verr := Validate(c.Op, body); verr != nil {
		return s.reject(w, r, c, verr)
	}
	ctx := r.Context()
	if s.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.Timeout)
		defer cancel()
	}
	out, err := s.call(ctx, route, c, body)
	if err != nil {
		return s.writeErr(w, c, err)
	}
	resp, err := encodeResponse(out)
	if err != nil {
		return s.writeErr(w, c, fmt.Errorf("wire: encoding %s response: %w", c.Op, err))
	}
	defer resp.release()
	w.Header().Set("Content-Length", strconv.Itoa(len(resp.body)))
	w.WriteHeader(http.StatusOK)
	w.Write(resp.body)
	return http.StatusOK, "ok"
}

// response is a response body encoded into a pooled buffer: net/http
// copies what a handler writes, so the buffer serves the next response,
// and a response costs no allocation of its size and no copy of it.
type response struct {
	buf  *bytes.Buffer
	body []byte
}

var responseBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledResponse keeps a rare large response (a long ListKeys page)
// from pinning its buffer in the pool.
const maxPooledResponse = 64 << 10

// encodeResponse is json.Marshal(out), byte for byte: json.Encoder
// encodes as Marshal does (HTML-safe escaping included) and ends with a
// newline, which is left out.
func encodeResponse(out any) (response, error) {
	buf := responseBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	if err := json.NewEncoder(buf).Encode(out); err != nil {
		responseBuffers.Put(buf)
		return response{}, err
	}
	return response{buf: buf, body: bytes.TrimSuffix(buf.Bytes(), []byte{'\n'})}, nil
}

func (r response) release() {
	if r.buf.Cap() <= maxPooledResponse {
		responseBuffers.Put(r.buf)
	}
}

func (s *Server) call(ctx context.Context, route Route, c *Call, body []byte) (out any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("wire: panic in %s: %v\n%s", c.Op, p, debug.Stack())
		}
	}()
	return route.Handle(ctx, c, body)
}

// reject answers a request refused before its route, once Rejected has
// recorded it.
func (s *Server) reject(w http.ResponseWriter, r *http.Request, c *Call, err error) (int, string) {
	if s.Rejected != nil {
		if rerr := s.Rejected(r.Context(), c, r, err); rerr != nil {
			return s.writeErr(w, c, rerr)
		}
	}
	return s.writeErr(w, c, err)
}

// readBody reads the body, at most max bytes. A declared length is read
// into one buffer of exactly that size: bytes.Buffer, full at the end,
// doubled itself to look for EOF, 3 MiB for a 1 MiB body.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, &http.MaxBytesError{Limit: max}
	}
	body := http.MaxBytesReader(nil, r.Body, max)
	if r.ContentLength < 0 {
		return io.ReadAll(body)
	}
	// net/http ends the body at the declared length.
	buf := make([]byte, r.ContentLength)
	_, err := io.ReadFull(body, buf)
	return buf, err
}

// writeErr sends err: an *Error anywhere in its chain as is, anything else
// as KMSInternalException, with the detail logged and never sent.
func (s *Server) writeErr(w http.ResponseWriter, c *Call, err error) (int, string) {
	var we *Error
	if !errors.As(err, &we) {
		if s.Logger != nil {
			s.Logger.Error("internal error", "request_id", c.RequestID, "operation", c.Op, "error", err)
		}
		we = Internal()
	}
	return writeError(w, we)
}

func writeError(w http.ResponseWriter, e *Error) (int, string) {
	// An empty message is left out, as AWS leaves it out
	// ({"__type":"InvalidCiphertextException"}).
	body, _ := json.Marshal(struct {
		Type    string `json:"__type"`
		Message string `json:"message,omitempty"`
	}{e.Type, e.Message})
	status := e.Status()
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
	return status, e.Type
}

// newRequestID is a random (version 4) UUID, as AWS request ids are.
func newRequestID() string { return uuid.String() }
