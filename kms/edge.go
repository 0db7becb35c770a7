package kms

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hsmkms/hsmkms/kms/wire"
)

// The HTTP edge in front of the wire protocol: how many requests are
// served at once, which Regions are served, and what a presigned URL may
// carry in its query.

// DefaultMaxInFlight is how many requests the handler serves at once
// unless told otherwise. The token serves them: the default session pool
// has 8 sessions, and on the reference 2-core machine 16 concurrent
// clients already take Encrypt, Decrypt and GenerateDataKey to their peak
// rate (README, "Performance"); a request beyond that only waits for a
// session, holding its body. 16 is that peak, twice the sessions, and
// bounds what bodies can hold to 16 times the 1 MiB body limit. Faster
// tokens with more sessions want it raised with pool_size.
const DefaultMaxInFlight = 16

// DefaultQueueWait is how long a request beyond MaxInFlight waits for a
// place by default (at most four times MaxInFlight wait): long enough to
// ride out a burst of ordinary requests (a few milliseconds each), short
// enough that a client told to back off hears it at once.
const DefaultQueueWait = 50 * time.Millisecond

// DefaultMaxBody bounds request bodies unless told otherwise. The largest
// valid KMS request (a 32 KiB policy, escaped, or a 6 KiB ciphertext) is
// far smaller.
const DefaultMaxBody = 1 << 20

// edge puts the in-flight bound in front of h, and lets a presigned URL
// name its operation in the query.
func edge(h http.Handler, cfg HandlerConfig) *wire.Limiter {
	n := cfg.MaxInFlight
	if n <= 0 {
		n = DefaultMaxInFlight
	}
	wait := cfg.QueueWait
	switch {
	case wait == 0:
		wait = DefaultQueueWait
	case wait < 0:
		wait = 0
	}
	return wire.NewLimiter(presignedTarget(h), wire.LimiterConfig{MaxInFlight: n, Wait: wait, Logger: cfg.Logger, Now: cfg.Now})
}

// presignedTarget takes a presigned URL's operation from its query. The
// SDKs' presigners (aws-sdk-go-v2's PresignHTTP among them) move X-Amz-*
// headers into the signed query string, X-Amz-Target with them. Only a
// request authenticated in the query (X-Amz-Algorithm) without the header
// is read this way; SigV4 then checks the query, this parameter included,
// so the operation is as authenticated as the header would be.
func presignedTarget(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Target") == "" && strings.Contains(r.URL.RawQuery, "X-Amz-Target") {
			if q, err := url.ParseQuery(r.URL.RawQuery); err == nil && q.Has("X-Amz-Algorithm") && q.Get("X-Amz-Target") != "" {
				r2 := *r
				r2.Header = r.Header.Clone()
				r2.Header.Set("X-Amz-Target", q.Get("X-Amz-Target"))
				r = &r2
			}
		}
		next.ServeHTTP(w, r)
	})
}

// servedRegions is the set of Regions a handler serves: the commercial
// Regions unless configured.
func servedRegions(names []string) (map[string]bool, error) {
	if names == nil {
		names = commercialRegions
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("kms: no Regions to serve")
	}
	set := make(map[string]bool, len(names))
	for _, n := range names {
		if !ValidRegion(n) {
			return nil, fmt.Errorf("kms: %q is not a Region name", n)
		}
		set[n] = true
	}
	return set, nil
}
