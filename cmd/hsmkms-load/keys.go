package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
)

// prepareKeys returns the o.keys key ids the run spreads its requests
// over: --key-id, the first ones of --keys-file, and new keys for the
// rest, created by o.workers clients at once (and added to --keys-file).
// The creation rate goes to stderr: with many keys it is CreateKey's
// throughput.
func prepareKeys(ctx context.Context, c *awskms.Client, o options, op operation) ([]string, error) {
	var ids []string
	if o.keyID != "" {
		ids = append(ids, o.keyID)
	}
	if o.keysFile != "" {
		known, err := readKeysFile(o.keysFile)
		if err != nil {
			return nil, err
		}
		ids = append(ids, known[:min(len(known), o.keys)]...)
	}
	missing := o.keys - len(ids)
	if missing <= 0 {
		return ids, nil
	}
	made := make([]string, missing)
	start := time.Now()
	err := parallel(o.workers, missing, func(i int) error {
		id, err := op.createKey(ctx, c)
		made[i] = id
		return err
	})
	elapsed := time.Since(start)
	var created []string
	for _, id := range made {
		if id != "" {
			created = append(created, id)
		}
	}
	if o.keysFile != "" && len(created) > 0 {
		if werr := appendKeysFile(o.keysFile, created); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	if err != nil {
		return nil, err
	}
	if missing > 1 {
		fmt.Fprintf(os.Stderr, "created %d keys in %s with %d workers: %.0f keys/s\n", missing, elapsed.Round(time.Millisecond), o.workers, float64(missing)/elapsed.Seconds())
	}
	return append(ids, created...), nil
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first
// error; after one, the rest are skipped.
func parallel(workers, n int, fn func(i int) error) error {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	for range min(workers, n) {
		wg.Go(func() {
			for firstErr.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return *e
	}
	return nil
}

func readKeysFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--keys-file: %w", err)
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if id := strings.TrimSpace(sc.Text()); id != "" {
			ids = append(ids, id)
		}
	}
	return ids, sc.Err()
}

func appendKeysFile(path string, ids []string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("--keys-file: %w", err)
	}
	_, err = f.WriteString(strings.Join(ids, "\n") + "\n")
	return errors.Join(err, f.Close())
}
