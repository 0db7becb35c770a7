package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go/logging"
)

// newClient is a KMS client from the AWS_* environment, sized for workers
// concurrent callers, retrying nothing but the SDK's closed-connection race
// (see closedConnRetryer), which it counts in retries.
func newClient(ctx context.Context, workers int, retries *atomic.Int64) (*awskms.Client, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, err
	}
	var roots *x509.CertPool
	if ca := os.Getenv("AWS_CA_BUNDLE"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("AWS_CA_BUNDLE: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("AWS_CA_BUNDLE: %s holds no PEM certificate", ca)
		}
	}
	// One idle connection per worker, or the client would handshake TLS
	// again for most requests and measure that instead.
	cfg.HTTPClient = awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConns = workers * 2
		t.MaxIdleConnsPerHost = workers * 2
		if roots != nil {
			t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		}
	})
	cfg.Retryer = func() aws.Retryer { return closedConnRetryer(retries) }
	// The SDK warns on stderr about each closed connection it meets; the
	// report counts them (retries), and the lines would interleave with it.
	cfg.Logger = logging.Nop{}
	return awskms.NewFromConfig(cfg), nil
}

// closedConnRetryer retries, once and at once, only a request whose
// connection the client itself closed under the response (aws-sdk-go-v2
// issues 1825 and 2737; the SDK's default retryer retries it too). Any
// answer of the server, error or not, is final: a retry would hide it.
// Each retry is counted in n, so the report shows how many requests paid
// for two attempts.
func closedConnRetryer(n *atomic.Int64) aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = 2
		o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
		o.RateLimiter = ratelimit.None
		o.Retryables = []retry.IsErrorRetryable{retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
			if errors.Is(err, net.ErrClosed) {
				n.Add(1)
				return aws.TrueTernary
			}
			return aws.FalseTernary
		})}
	})
}
