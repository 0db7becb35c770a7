package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// bench drives a running server through aws-sdk-go-v2, the way an
// application would: SigV4, TLS, JSON and all. It takes its endpoint,
// credentials and region from the same AWS_* environment the CLI uses.
func bench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	op := fs.String("op", "Encrypt", "operation: Encrypt, Decrypt, GenerateDataKey, GenerateDataKeyPair, Sign, Verify, GenerateMac or GenerateRandom")
	workers := fs.Int("workers", 16, "concurrent clients")
	duration := fs.Duration("duration", 10*time.Second, "how long to run")
	size := fs.Int("size", 1024, "message bytes (Encrypt, Decrypt, Sign, Verify, GenerateMac) or random bytes (GenerateRandom)")
	keyID := fs.String("key-id", "", "key to use (default: create one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *workers < 1 || *duration <= 0 {
		return errors.New("bench: --workers and --duration must be positive")
	}
	ctx := context.Background()
	client, err := benchClient(ctx, *workers)
	if err != nil {
		return err
	}
	if *keyID == "" && *op != "GenerateRandom" {
		in := &awskms.CreateKeyInput{Description: aws.String("hsmkms bench")}
		switch *op {
		case "Sign", "Verify":
			in.KeySpec, in.KeyUsage = types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify
		case "GenerateMac", "VerifyMac":
			in.KeySpec, in.KeyUsage = types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac
		}
		out, err := client.CreateKey(ctx, in)
		if err != nil {
			return fmt.Errorf("bench: create key: %w", err)
		}
		*keyID = *out.KeyMetadata.KeyId
	}
	plaintext := make([]byte, *size)
	rand.Read(plaintext)
	ec := map[string]string{"purpose": "bench"}
	var call func() error
	switch *op {
	case "Encrypt":
		call = func() error {
			_, err := client.Encrypt(ctx, &awskms.EncryptInput{KeyId: keyID, Plaintext: plaintext, EncryptionContext: ec})
			return err
		}
	case "Decrypt":
		out, err := client.Encrypt(ctx, &awskms.EncryptInput{KeyId: keyID, Plaintext: plaintext, EncryptionContext: ec})
		if err != nil {
			return fmt.Errorf("bench: encrypt: %w", err)
		}
		call = func() error {
			_, err := client.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: out.CiphertextBlob, EncryptionContext: ec})
			return err
		}
	case "GenerateDataKey":
		call = func() error {
			_, err := client.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: keyID, KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
			return err
		}
	case "GenerateDataKeyPair":
		call = func() error {
			_, err := client.GenerateDataKeyPair(ctx, &awskms.GenerateDataKeyPairInput{KeyId: keyID, KeyPairSpec: types.DataKeyPairSpecEccNistP256, EncryptionContext: ec})
			return err
		}
	case "Sign":
		call = func() error {
			_, err := client.Sign(ctx, &awskms.SignInput{KeyId: keyID, Message: plaintext, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}
	case "Verify":
		out, err := client.Sign(ctx, &awskms.SignInput{KeyId: keyID, Message: plaintext, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
		if err != nil {
			return fmt.Errorf("bench: sign: %w", err)
		}
		call = func() error {
			_, err := client.Verify(ctx, &awskms.VerifyInput{KeyId: keyID, Message: plaintext, Signature: out.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}
	case "GenerateMac":
		call = func() error {
			_, err := client.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: keyID, Message: plaintext, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			return err
		}
	case "GenerateRandom":
		n := int32(*size)
		call = func() error {
			_, err := client.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: &n})
			return err
		}
	default:
		return fmt.Errorf("bench: unknown --op %q", *op)
	}
	if err := call(); err != nil { // warm up connections and check the setup once
		return fmt.Errorf("bench: %s: %w", *op, err)
	}

	var (
		wg       sync.WaitGroup
		failures atomic.Int64
		firstErr atomic.Value
		lat      = make([][]time.Duration, *workers)
		deadline = time.Now().Add(*duration)
	)
	start := time.Now()
	for w := range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := call(); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return fmt.Errorf("bench: no request succeeded: %v", firstErr.Load())
	}
	pct := func(p float64) time.Duration { return all[min(len(all)-1, int(float64(len(all))*p))] }
	fmt.Printf("%-16s workers=%-3d size=%-5d requests=%-7d errors=%-4d %8.0f req/s  p50=%-8s p99=%s\n",
		*op, *workers, *size, len(all), failures.Load(), float64(len(all))/elapsed.Seconds(),
		pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond))
	if n := failures.Load(); n > 0 {
		return fmt.Errorf("bench: %d requests failed, first: %v", n, firstErr.Load())
	}
	return nil
}

func benchClient(ctx context.Context, workers int) (*awskms.Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, err
	}
	// One idle connection per worker, or the client would handshake TLS
	// again for most requests and measure that instead.
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConns = workers * 2
		t.MaxIdleConnsPerHost = workers * 2
		if ca := os.Getenv("AWS_CA_BUNDLE"); ca != "" {
			pem, err := os.ReadFile(ca)
			if err == nil {
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(pem)
				t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
			}
		}
	})
	cfg.HTTPClient = httpClient
	cfg.RetryMaxAttempts = 1
	return awskms.NewFromConfig(cfg), nil
}
