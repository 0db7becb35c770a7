package kms

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// The operational endpoints, beside the API on its listener and before its
// in-flight limit (a probe must be answered when clients are throttled),
// unauthenticated: they say whether hsmkms runs and can serve, and how it
// does, never anything about keys or callers.

// readyTimeout bounds /readyz's checks: a probe that hangs is a failure.
const readyTimeout = 2 * time.Second

func (s *Service) endpoints(api http.Handler, e Endpoints) http.Handler {
	var metrics http.Handler
	if e.Metrics && s.metrics != nil {
		metrics = s.metrics.Handler()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			switch {
			case r.URL.Path == "/healthz" && e.Healthz:
				text(w, http.StatusOK, "ok\n")
				return
			case r.URL.Path == "/readyz" && e.Readyz:
				if err := s.Ready(r.Context()); err != nil {
					text(w, http.StatusServiceUnavailable, "not ready: "+err.Error()+"\n")
					return
				}
				body := "ready\n"
				if err := s.CustomKeyStoresReady(r.Context()); err != nil {
					// Still ready: the node serves every other key, and
					// answers KMSInvalidStateException for those stores'.
					body += "degraded: " + err.Error() + "\n"
				}
				text(w, http.StatusOK, body)
				return
			case r.URL.Path == "/metrics" && metrics != nil:
				metrics.ServeHTTP(w, r)
				return
			}
		}
		api.ServeHTTP(w, r)
	})
}

func text(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprint(w, body)
}

// Ready is nil when the service can serve now: the database and the
// default token answer, and the audit trail (if any) can be written.
// Otherwise it says which does not, and why. A connected custom key store
// this node is not logged in to does not make it unready (/readyz says
// so in its answer): every node may fail to reach one store's cluster at
// once, and the rest of the service must stay up.
func (s *Service) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := s.DatabaseReady(ctx); err != nil {
		return fmt.Errorf("database: %v", err)
	}
	if err := s.keystores.Default().Check(ctx); err != nil {
		return fmt.Errorf("default token: %v", err)
	}
	if s.trail != nil {
		if err := s.trail.Err(); err != nil {
			return fmt.Errorf("audit trail: %v", err)
		}
	}
	return nil
}
