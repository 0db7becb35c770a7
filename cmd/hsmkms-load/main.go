// Command hsmkms-load drives a running hsmkms (or any AWS KMS endpoint)
// through aws-sdk-go-v2, the way an application would: SigV4, TLS, JSON
// and connection reuse all included. It takes its endpoint, credentials
// and region from the same AWS_* environment the aws CLI uses (the block
// `hsmkms serve --data-dir` prints) and reports requests per second, p50
// and p99 latency and, given the server's pid, the server's CPU time per
// request.
//
// It is a command of its own so that the server binary carries no AWS SDK
// (scripts/check-server-deps.sh, run by `make lint`, keeps it so).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	err := run(context.Background(), os.Args[1:])
	switch {
	case errors.Is(err, flag.ErrHelp): // -h: the usage is already printed
	case err != nil:
		fmt.Fprintln(os.Stderr, "hsmkms-load:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("hsmkms-load", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: hsmkms-load [flags]

Loads the KMS endpoint named by the AWS_* environment (AWS_ENDPOINT_URL_KMS,
AWS_CA_BUNDLE, AWS_SHARED_CREDENTIALS_FILE, AWS_REGION) with one operation
and prints one line: requests, errors, req/s, p50, p99 and, with --pid, the
server's CPU time (user+system, from /proc/PID/stat) per request.

operations: %s
with --xks-env (an XKS proxy, signed with SigV4 as AWS KMS signs): %s

flags:
`, opNames(), xksOpNames())
		fs.PrintDefaults()
	}
	var o options
	fs.StringVar(&o.op, "op", "Encrypt", "operation to run")
	fs.IntVar(&o.workers, "workers", 16, "concurrent clients, each with its own connection")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long to measure, after one warm-up call per key")
	fs.IntVar(&o.size, "size", 1024, "plaintext or message bytes (Encrypt, Decrypt, Sign, Verify, GenerateMac, VerifyMac), random bytes (GenerateRandom)")
	fs.IntVar(&o.keys, "keys", 1, "create this many keys and spread requests over them at random")
	fs.StringVar(&o.keyID, "key-id", "", "use this existing key instead of creating one (needs --keys 1)")
	fs.StringVar(&o.keysFile, "keys-file", "", "reuse the key ids in this file (one a line) and add the keys created to it, so that runs over many keys create them once")
	fs.IntVar(&o.pid, "pid", 0, "the server's process id: report its CPU time per request (same machine only)")
	fs.StringVar(&o.xksEnv, "xks-env", "", "an XKS proxy's xks.env (as `serve --data-dir` writes it): load the proxy itself with XksEncrypt, XksDecrypt or XksGetHealthStatus; AWS_CA_BUNDLE names the CA")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := o.check(); err != nil {
		return err
	}
	var retries atomic.Int64
	if o.xksEnv != "" {
		res, err := loadXKS(ctx, o)
		if err != nil {
			return err
		}
		fmt.Println(res)
		if res.errors > 0 {
			return fmt.Errorf("%d requests failed, first: %v", res.errors, res.firstErr)
		}
		return nil
	}
	client, err := newClient(ctx, o.workers, &retries)
	if err != nil {
		return err
	}
	res, err := load(ctx, client, o, &retries)
	if err != nil {
		return err
	}
	fmt.Println(res)
	if res.errors > 0 {
		return fmt.Errorf("%d requests failed, first: %v", res.errors, res.firstErr)
	}
	return nil
}
