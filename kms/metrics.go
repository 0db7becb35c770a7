package kms

import (
	"net/http"
	"time"

	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are what GET /metrics shows, in Prometheus's text format, all
// named hsmkms_…: requests by operation and outcome and their latency,
// requests in flight and throttled, each token's session pool (size, open,
// in use, waits) and PKCS#11 calls (latency, errors by CKR code), custom
// key stores' connection states, and the audit trail's queue and writes.
// Values read at scrape time (pool use, connection states, queue depth)
// are read then from what they describe. Safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	requests       *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	pkcs11Latency  *prometheus.HistogramVec
	pkcs11Errors   *prometheus.CounterVec
	sessionWait    *prometheus.HistogramVec
	auditWrite     prometheus.Histogram
	auditRecords   prometheus.Counter
	auditFailures  prometheus.Counter
	auditBatchSize prometheus.Histogram
}

// NewMetrics makes the metrics, with Go's runtime and process metrics.
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hsmkms_requests_total",
		Help: "API requests answered, by operation and outcome (ok or the exception sent)."}, []string{"operation", "outcome"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hsmkms_request_duration_seconds",
		Help: "Time from a request's arrival to its answer, by operation.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)},
		[]string{"operation"})
	m.pkcs11Latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hsmkms_pkcs11_call_duration_seconds",
		Help: "PKCS#11 calls, by token (default or the cluster id) and Cryptoki function.", Buckets: prometheus.ExponentialBuckets(0.00002, 2.5, 12)},
		[]string{"token", "call"})
	m.pkcs11Errors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hsmkms_pkcs11_errors_total",
		Help: "PKCS#11 calls that failed, by token, Cryptoki function and CKR code."}, []string{"token", "call", "ckr"})
	m.sessionWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hsmkms_token_session_wait_seconds",
		Help: "Waits for a session of a token's pool when every session was busy, by token.", Buckets: prometheus.ExponentialBuckets(0.0001, 3, 10)},
		[]string{"token"})
	m.auditWrite = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hsmkms_audit_write_duration_seconds",
		Help: "Audit trail writes (one write and one fsync per batch of records).", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14)})
	m.auditRecords = prometheus.NewCounter(prometheus.CounterOpts{Name: "hsmkms_audit_records_total", Help: "Audit records written."})
	m.auditFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "hsmkms_audit_write_failures_total",
		Help: "Audit trail writes that failed (the trail then refuses every call until restarted)."})
	m.auditBatchSize = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hsmkms_audit_batch_records",
		Help: "Records per audit write: the group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 9)})
	m.reg.MustRegister(m.requests, m.latency, m.pkcs11Latency, m.pkcs11Errors, m.sessionWait,
		m.auditWrite, m.auditRecords, m.auditFailures, m.auditBatchSize,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// request counts one answered request. op is unchecked client input until
// the service names it.
func (m *Metrics) request(op, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(op, outcome).Inc()
	m.latency.WithLabelValues(op).Observe(d.Seconds())
}

func (m *Metrics) auditBatch(records int, d time.Duration, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.auditFailures.Inc()
		return
	}
	m.auditRecords.Add(float64(records))
	m.auditWrite.Observe(d.Seconds())
	m.auditBatchSize.Observe(float64(records))
}

// tokenObserver reports one token's PKCS#11 calls (hsm's Observer).
type tokenObserver struct {
	m     *Metrics
	token string
}

func (m *Metrics) token(name string) *tokenObserver { return &tokenObserver{m: m, token: name} }

func (o *tokenObserver) PKCS11Call(call string, d time.Duration, ckr string) {
	o.m.pkcs11Latency.WithLabelValues(o.token, call).Observe(d.Seconds())
	if ckr != "" {
		o.m.pkcs11Errors.WithLabelValues(o.token, call, ckr).Inc()
	}
}

func (o *tokenObserver) SessionWait(d time.Duration) {
	o.m.sessionWait.WithLabelValues(o.token).Observe(d.Seconds())
}

// attach registers what is read at scrape time from s and the HTTP edge.
func (m *Metrics) attach(s *Service, lim *wire.Limiter) {
	if m == nil {
		return
	}
	m.reg.MustRegister(&stateCollector{s: s, lim: lim})
}

var (
	inFlightDesc  = prometheus.NewDesc("hsmkms_requests_in_flight", "Requests being served now.", nil, nil)
	throttledDesc = prometheus.NewDesc("hsmkms_requests_throttled_total", "Requests answered ThrottlingException by the in-flight limit.", nil, nil)
	poolDesc      = prometheus.NewDesc("hsmkms_token_sessions", "A key store token's session pool: its size, sessions open, sessions in use.",
		[]string{"key_store", "state"}, nil)
	connDesc = prometheus.NewDesc("hsmkms_custom_key_store_connection_state",
		"1 for each custom key store's current connection state.", []string{"custom_key_store_id", "state"}, nil)
	queueDesc = prometheus.NewDesc("hsmkms_audit_queue_depth", "Audit records waiting to be written.", nil, nil)
)

// stateCollector reads, at scrape time, what is state rather than events.
type stateCollector struct {
	s   *Service
	lim *wire.Limiter
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{inFlightDesc, throttledDesc, poolDesc, connDesc, queueDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.lim != nil {
		ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(c.lim.InFlight()))
		ch <- prometheus.MustNewConstMetric(throttledDesc, prometheus.CounterValue, float64(c.lim.ThrottledTotal()))
	}
	for _, ks := range c.s.keystores.All() {
		id := ks.ID()
		name := id
		if id == keystore.DefaultID {
			name = "default"
		} else {
			st, _ := ks.State()
			for _, s := range []keystore.ConnectionState{keystore.Disconnected, keystore.Connecting, keystore.Connected, keystore.Failed, keystore.Disconnecting} {
				v := 0.0
				if s == st {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(connDesc, prometheus.GaugeValue, v, id, string(s))
			}
		}
		if p, ok := ks.Pool(); ok {
			ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.Size), name, "size")
			ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.Open), name, "open")
			ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.InUse), name, "in_use")
		}
	}
	c.s.xksStores.Range(func(k, v any) bool {
		st, _ := v.(*xksLive).state()
		for _, s := range []keystore.ConnectionState{keystore.Disconnected, keystore.Connecting, keystore.Connected, keystore.Failed, keystore.Disconnecting} {
			val := 0.0
			if s == st {
				val = 1
			}
			ch <- prometheus.MustNewConstMetric(connDesc, prometheus.GaugeValue, val, k.(string), string(s))
		}
		return true
	})
	if c.s.trail != nil {
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(c.s.trail.QueueDepth()))
	}
}
