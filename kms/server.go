package kms

import (
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/kms/sigv4"
	"github.com/hsmkms/hsmkms/kms/wire"
)

// Principal is an identity that may call the API: an access key, its
// secret, and the account and IAM ARN it acts as.
type Principal struct {
	AccessKeyID string
	Secret      string
	Account     string
	ARN         string
	// Policy is the principal's IAM identity policy (JSON); empty means
	// none, so the principal has only what key policies and grants give it.
	Policy string
}

// HandlerConfig configures the HTTP edge.
type HandlerConfig struct {
	Principals []Principal
	Logger     hclog.Logger
	// MaxBody bounds request bodies; 0 means 1 MiB (the largest valid KMS
	// request, a 32 KiB policy or 6 KiB ciphertext, is far smaller).
	MaxBody int64
	// Timeout is the per-request deadline; 0 means 30 s.
	Timeout time.Duration
	// Now is the clock for SigV4 skew checks; tests inject one.
	Now func() time.Time
	// MaxInFlight bounds the requests served at once, before their bodies
	// are read; more wait up to QueueWait, then get ThrottlingException
	// (wire.Limiter). 0 means DefaultMaxInFlight.
	MaxInFlight int
	// QueueWait is how long a request beyond MaxInFlight may wait for a
	// place; 0 means DefaultQueueWait, negative means none.
	QueueWait time.Duration
	// Regions are the Regions served: a request signed for another is
	// refused as AWS refuses one signed for another Region's endpoint. nil
	// means CommercialRegions.
	Regions []string
	// Endpoints turns on the unauthenticated GET endpoints beside the API.
	Endpoints Endpoints
}

// Endpoints are the operational endpoints, each off unless set.
type Endpoints struct {
	// Healthz: GET /healthz answers 200 while the process serves.
	Healthz bool
	// Readyz: GET /readyz answers 200 only while the database, the
	// default token (and the audit trail, if any) answer; 503 with the
	// reason otherwise.
	Readyz bool
	// Metrics: GET /metrics, the service's Metrics in Prometheus's text
	// format (if the service has any).
	Metrics bool
}

// Handler returns the service's HTTP handler: SigV4 against the configured
// principals, then the wire protocol, then authorization and the operation.
// It fails if a principal's identity policy is malformed. The caller's
// account comes from its principal, the region from the request's
// credential scope.
func (s *Service) Handler(cfg HandlerConfig) (http.Handler, error) {
	if cfg.MaxBody == 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	ids, err := parseIdentities(cfg.Principals)
	if err != nil {
		return nil, err
	}
	regions, err := servedRegions(cfg.Regions)
	if err != nil {
		return nil, err
	}
	s.identities.Store(&ids)
	s.regions.Store(&regions)
	byKey := make(map[string]Principal, len(cfg.Principals))
	for _, p := range cfg.Principals {
		byKey[p.AccessKeyID] = p
	}
	v := &sigv4.Verifier{
		Service: "kms",
		Regions: regions,
		Now:     cfg.Now,
		Lookup: func(id string) (string, bool) {
			p, ok := byKey[id]
			return p.Secret, ok
		},
	}
	srv := &wire.Server{
		Routes:  s.Routes(),
		MaxBody: cfg.MaxBody,
		Timeout: cfg.Timeout,
		Logger:  cfg.Logger,
		Now:     cfg.Now,
		Authenticate: func(r *http.Request, body []byte) (any, error) {
			res, err := v.Verify(r, body)
			if err != nil {
				return nil, err
			}
			p := byKey[res.AccessKeyID]
			return Caller{AccessKeyID: p.AccessKeyID, Account: p.Account, PrincipalARN: p.ARN, Region: res.Region}, nil
		},
		Rejected: s.rejected(byKey),
		Observe: func(c *wire.Call, _ int, outcome string, latency time.Duration) {
			op := c.Op
			if s.op(op) == nil {
				op = "unknown" // unchecked client input: never a label
			}
			s.metrics.request(op, outcome, latency)
		},
	}
	lim := edge(srv, cfg)
	s.edge.Store(lim)
	s.metrics.attach(s, lim)
	return s.endpoints(lim, cfg.Endpoints), nil
}
