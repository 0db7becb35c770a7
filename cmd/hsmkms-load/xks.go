package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hsmkms/hsmkms/xks"
)

// The XKS proxy's operations, as AWS KMS calls them: what hsmkms-load
// measures against a proxy to compare with AWS's requirements (an answer
// well within 250 ms; 1,800 requests per second per external key store is
// AWS's default quota).
var xksOperations = map[string]func(ctx context.Context, c *xks.Client, keyID string, msg []byte) (func(context.Context) error, error){
	"XksEncrypt": func(_ context.Context, c *xks.Client, id string, msg []byte) (func(context.Context) error, error) {
		aad := make([]byte, 64)
		rand.Read(aad)
		return func(ctx context.Context) error {
			_, err := c.Encrypt(ctx, id, xksLoadMetadata("Encrypt"), msg, aad)
			return err
		}, nil
	},
	"XksDecrypt": func(ctx context.Context, c *xks.Client, id string, msg []byte) (func(context.Context) error, error) {
		aad := make([]byte, 64)
		rand.Read(aad)
		s, err := c.Encrypt(ctx, id, xksLoadMetadata("Encrypt"), msg, aad)
		if err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
		return func(ctx context.Context) error {
			_, err := c.Decrypt(ctx, id, xksLoadMetadata("Decrypt"), s, aad)
			return err
		}, nil
	},
	"XksGetHealthStatus": func(_ context.Context, c *xks.Client, _ string, _ []byte) (func(context.Context) error, error) {
		return func(ctx context.Context) error {
			_, err := c.Health(ctx, xks.RequestMetadata{KmsOperation: "KmsHealthCheck", KmsRequestID: "hsmkms-load"})
			return err
		}, nil
	},
}

func xksOpNames() string {
	var names []string
	for n := range xksOperations {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func xksLoadMetadata(op string) xks.RequestMetadata {
	return xks.RequestMetadata{AwsPrincipalArn: "arn:aws:iam::111122223333:user/hsmkms-load", KmsKeyArn: "arn:aws:kms:us-east-1:111122223333:key/hsmkms-load",
		KmsOperation: op, KmsRequestID: "hsmkms-load"}
}

// readXKSEnv reads KEY=value lines.
func readXKSEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "="); ok && !strings.HasPrefix(k, "#") {
			out[strings.TrimPrefix(k, "export ")] = v
		}
	}
	return out, sc.Err()
}

// loadXKS loads the proxy xks.env names, the key KEY_ID (or --key-id).
func loadXKS(ctx context.Context, o options) (*result, error) {
	env, err := readXKSEnv(o.xksEnv)
	if err != nil {
		return nil, fmt.Errorf("--xks-env: %w", err)
	}
	var roots *x509.CertPool
	if ca := os.Getenv("AWS_CA_BUNDLE"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("AWS_CA_BUNDLE: %w", err)
		}
		roots = x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
	}
	host := env["XKS_PROXY_HOST"]
	name := host
	if i := strings.LastIndex(host, ":"); i > 0 {
		name = host[:i]
	}
	c, err := xks.NewClient(xks.ClientConfig{Endpoint: "https://" + name, Path: "/" + strings.Trim(env["URI_PREFIX"], "/") + "/kms/xks/v1",
		AccessKeyID: env["SIGV4_ACCESS_KEY_ID"], Secret: env["SIGV4_SECRET_ACCESS_KEY"], Region: env["REGION"], RootCAs: roots,
		ConnectTo: map[string]string{name: host}, Timeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	id := o.keyID
	if id == "" {
		id = env["KEY_ID"]
	}
	msg := make([]byte, o.size)
	rand.Read(msg)
	call, err := xksOperations[o.op](ctx, c, id, msg)
	if err != nil {
		return nil, err
	}
	if err := call(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", o.op, err)
	}
	var noRetries atomic.Int64
	return measure(ctx, o, []func(context.Context) error{call}, 1, &noRetries)
}
