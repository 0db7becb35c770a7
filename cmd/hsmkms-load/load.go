package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
)

type options struct {
	op       string
	workers  int
	duration time.Duration
	size     int
	keys     int
	keyID    string
	keysFile string
	pid      int
	// xksEnv is the xks.env of an XKS proxy, for the Xks operations.
	xksEnv string
}

func (o options) check() error {
	if _, ok := operations[o.op]; !ok && xksOperations[o.op] == nil {
		return fmt.Errorf("--op: unknown operation %q (one of %s; with --xks-env, %s)", o.op, opNames(), xksOpNames())
	}
	if (xksOperations[o.op] != nil) != (o.xksEnv != "") {
		return errors.New("--xks-env goes with the XKS proxy's operations (XksEncrypt, XksDecrypt, XksGetHealthStatus), and they need it")
	}
	switch {
	case o.workers < 1:
		return errors.New("--workers must be at least 1")
	case o.duration <= 0:
		return errors.New("--duration must be positive")
	case o.size < 1:
		return errors.New("--size must be at least 1")
	case o.keys < 1:
		return errors.New("--keys must be at least 1")
	case o.keyID != "" && o.keys != 1:
		return errors.New("--key-id names one key: it cannot go with --keys")
	case o.keyID != "" && o.keysFile != "":
		return errors.New("--key-id names one key: it cannot go with --keys-file")
	case o.pid < 0:
		return errors.New("--pid must be a process id")
	}
	return nil
}

// result is one run's measurements.
type result struct {
	o         options
	keys      int             // how many keys the requests were spread over
	latencies []time.Duration // of the successful requests, sorted
	errors    int64
	retries   int64 // requests sent twice because the client lost the connection
	firstErr  error
	elapsed   time.Duration
	// serverCPU is the server's user+system time over the run; valid
	// only when o.pid is set.
	serverCPU time.Duration
}

func (r *result) requests() int64 { return int64(len(r.latencies)) + r.errors }

// percentile is the latency below which a fraction p of the successful
// requests fall.
func (r *result) percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(float64(len(r.latencies))*p))]
}

// String is the one line the command prints: key=value fields that
// scripts can pick apart, in a fixed order.
func (r *result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-19s workers=%-3d size=%-5d keys=%-5d requests=%-7d errors=%-4d retries=%-4d %8.0f req/s  p50=%-8s p99=%-8s",
		r.o.op, r.o.workers, r.o.size, r.keys, r.requests(), r.errors, r.retries, float64(len(r.latencies))/r.elapsed.Seconds(),
		r.percentile(0.50).Round(10*time.Microsecond), r.percentile(0.99).Round(10*time.Microsecond))
	if r.o.pid != 0 {
		perReq := time.Duration(0)
		if n := r.requests(); n > 0 {
			perReq = r.serverCPU / time.Duration(n)
		}
		fmt.Fprintf(&b, " server-cpu/req=%s", perReq.Round(time.Microsecond))
	}
	return strings.TrimRight(b.String(), " ")
}

// load prepares the keys, checks each call once (which also opens the
// connections), then runs o.workers callers for o.duration, each picking
// one of the keys at random for every request. retries is the counter c's
// retryer increments.
func load(ctx context.Context, c *awskms.Client, o options, retries *atomic.Int64) (*result, error) {
	op := operations[o.op]
	msg := make([]byte, o.size)
	rand.Read(msg)

	ids := []string{""} // GenerateRandom, CreateKey: no key
	keys := 0
	if op.needsKey {
		var err error
		if ids, err = prepareKeys(ctx, c, o, op); err != nil {
			return nil, err
		}
		keys = len(ids)
	}
	calls := make([]func(context.Context) error, len(ids))
	err := parallel(o.workers, len(ids), func(i int) error {
		call, err := op.prepare(ctx, c, ids[i], msg)
		if err != nil {
			return err
		}
		if err := call(ctx); err != nil {
			return fmt.Errorf("%s: %w", o.op, err)
		}
		calls[i] = call
		return nil
	})
	if err != nil {
		return nil, err
	}

	return measure(ctx, o, calls, keys, retries)
}

// measure runs o.workers callers of calls, each picking one at random for
// every request, for o.duration.
func measure(ctx context.Context, o options, calls []func(context.Context) error, keys int, retries *atomic.Int64) (*result, error) {
	var (
		wg       sync.WaitGroup
		failures atomic.Int64
		firstErr atomic.Pointer[error]
		lat      = make([][]time.Duration, o.workers)
	)
	var cpu0 time.Duration
	if o.pid != 0 {
		var err error
		if cpu0, err = processCPU(o.pid); err != nil {
			return nil, err
		}
	}
	retried0 := retries.Load()
	start := time.Now()
	deadline := start.Add(o.duration)
	for w := range o.workers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				call := calls[mrand.IntN(len(calls))]
				t0 := time.Now()
				if err := call(ctx); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	r := &result{o: o, keys: keys, elapsed: time.Since(start), errors: failures.Load(), retries: retries.Load() - retried0,
		latencies: slices.Concat(lat...)}
	if o.pid != 0 {
		cpu1, err := processCPU(o.pid)
		if err != nil {
			return nil, err
		}
		r.serverCPU = cpu1 - cpu0
	}
	if e := firstErr.Load(); e != nil {
		r.firstErr = *e
	}
	slices.Sort(r.latencies)
	if len(r.latencies) == 0 {
		return nil, fmt.Errorf("no request succeeded: %v", r.firstErr)
	}
	return r, nil
}
