package kms_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/miekg/pkcs11"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func get(t *testing.T, e *env, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(e.srv.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// TestReadyzFollowsTheDefaultToken: /readyz answers 503 with the reason
// while the default token fails (a device error, which only the fault
// wrapper can make SoftHSM2 give), and 200 again once it recovers.
func TestReadyzFollowsTheDefaultToken(t *testing.T) {
	t.Parallel()
	var faults *hsm.Faults
	e := newEnvWith(t, func(e *env) {
		e.wrapDefault = func(p hsm.PKCS11) hsm.PKCS11 { faults = hsm.NewFaults(p); return faults }
		e.edge.Endpoints = kms.Endpoints{Healthz: true, Readyz: true}
	})
	status, body := get(t, e, "/readyz")
	require.Equal(t, 200, status, body)
	assert.Equal(t, "ready\n", body)

	faults.Fail("C_GenerateRandom", pkcs11.CKR_DEVICE_ERROR, 1)
	status, body = get(t, e, "/readyz")
	assert.Equal(t, 503, status)
	assert.Contains(t, body, "not ready: default token:")
	assert.Contains(t, body, "CKR_DEVICE_ERROR")
	status, _ = get(t, e, "/healthz")
	assert.Equal(t, 200, status, "alive, though not ready")

	// hsm rebuilds the token after its backoff; /readyz sees it back.
	require.Eventually(t, func() bool {
		status, _ := get(t, e, "/readyz")
		return status == 200
	}, 30*time.Second, 20*time.Millisecond)
	_, err := e.admin().GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(8)})
	require.NoError(t, err)
}

func TestEndpointsAreOffUnlessConfigured(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		status, body := get(t, e, p)
		assert.Equal(t, 405, status, "%s: the API's answer to a GET", p)
		assert.Contains(t, body, "UnknownOperationException")
	}
}

// TestMetricsParse: /metrics is Prometheus's text format, and has the
// metrics the README names, with what the calls made.
func TestMetricsParse(t *testing.T) {
	t.Parallel()
	var faults *hsm.Faults
	e, _ := newAuditedEnv(t, func(e *env) {
		e.metrics = kms.NewMetrics()
		e.edge.Endpoints = kms.Endpoints{Metrics: true}
		e.wrapDefault = func(p hsm.PKCS11) hsm.PKCS11 { faults = hsm.NewFaults(p); return faults }
		e.addClusterFor(t, "cluster-metricsaaaaa")
	})
	c := e.admin()
	key := e.createKey(c)
	encryptUnder(t, c, key)
	_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String("alias/none"), Plaintext: []byte("x")})
	requireAPIError(t, err, "NotFoundException", "")
	faults.Fail("C_GenerateRandom", pkcs11.CKR_FUNCTION_FAILED, 1)
	_, err = c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(8)})
	require.Error(t, err)
	e.createStore(c, "metered", "cluster-metricsaaaaa", e.clusterToken["cluster-metricsaaaaa"].UserPIN)

	status, body := get(t, e, "/metrics")
	require.Equal(t, 200, status)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err, "Prometheus's text parser reads it")

	value := func(name string, labels map[string]string) (float64, bool) {
		f, ok := fams[name]
		if !ok {
			return 0, false
		}
	metrics:
		for _, m := range f.Metric {
			for k, v := range labels {
				found := false
				for _, l := range m.Label {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				return m.Counter.GetValue(), true
			case dto.MetricType_GAUGE:
				return m.Gauge.GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
		return 0, false
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"hsmkms_requests_total", map[string]string{"operation": "Encrypt", "outcome": "ok"}, 1},
		{"hsmkms_requests_total", map[string]string{"operation": "Encrypt", "outcome": "NotFoundException"}, 1},
		{"hsmkms_request_duration_seconds", map[string]string{"operation": "Encrypt"}, 2},
		{"hsmkms_requests_in_flight", nil, 0},
		{"hsmkms_requests_throttled_total", nil, 0},
		{"hsmkms_token_sessions", map[string]string{"key_store": "default", "state": "size"}, 1},
		{"hsmkms_token_sessions", map[string]string{"key_store": "default", "state": "open"}, 1},
		{"hsmkms_token_sessions", map[string]string{"key_store": "default", "state": "in_use"}, 0},
		{"hsmkms_pkcs11_call_duration_seconds", map[string]string{"token": "default", "call": "C_Encrypt"}, 1},
		{"hsmkms_pkcs11_errors_total", map[string]string{"token": "default", "call": "C_GenerateRandom", "ckr": "CKR_FUNCTION_FAILED"}, 1},
		{"hsmkms_custom_key_store_connection_state", map[string]string{"state": "DISCONNECTED"}, 1},
		{"hsmkms_audit_queue_depth", nil, 0},
		{"hsmkms_audit_write_duration_seconds", nil, 1},
		{"hsmkms_audit_records_total", nil, 3},
		{"hsmkms_audit_batch_records", nil, 1},
	} {
		v, ok := value(c.name, c.labels)
		if assert.True(t, ok, "%s %v", c.name, c.labels) {
			assert.GreaterOrEqual(t, v, c.min, "%s %v", c.name, c.labels)
		}
	}
	for name := range fams {
		if !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			assert.True(t, strings.HasPrefix(name, "hsmkms_"), name)
		}
	}
}
