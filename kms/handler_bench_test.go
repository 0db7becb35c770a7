package kms_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
)

// BenchmarkHandler is the server's own work for one request, as
// hsmkms-load sends it (an SDK-signed request with a 1 KiB message and an
// encryption context): SigV4, validation, decoding, authorization, the
// token's operation, the response and the request's log line, without
// TCP and TLS. ns/op is close to the CPU the request costs, the token's
// share included (SoftHSM2 works in the calling thread).
func BenchmarkHandler(b *testing.B) {
	tok := hsmtest.NewToken(b)
	ctx := context.Background()
	svc, err := kms.Open(ctx, kms.OpenConfig{
		DefaultToken: keystore.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 4},
		PIN:          tok.UserPIN,
		Database:     filepath.Join(b.TempDir(), "hsmkms.db"),
	})
	if err != nil {
		b.Fatal(err)
	}
	svc.Start()
	b.Cleanup(func() { svc.Close(ctx) })
	// The production log format, written nowhere.
	h, err := svc.Handler(kms.HandlerConfig{Principals: principals[:1], Logger: hclog.New(&hclog.LoggerOptions{Name: "hsmkms.api", Output: io.Discard})})
	if err != nil {
		b.Fatal(err)
	}
	call := func(b *testing.B, op string, body []byte) []byte {
		status, out := serveSigned(b, h, op, body)
		if status != http.StatusOK {
			b.Fatalf("%s: %d %s", op, status, out)
		}
		return out
	}
	field := func(b *testing.B, resp []byte, path ...string) string {
		var v any
		if err := json.Unmarshal(resp, &v); err != nil {
			b.Fatal(err)
		}
		for _, p := range path {
			v = v.(map[string]any)[p]
		}
		return v.(string)
	}
	symmetric := field(b, call(b, "CreateKey", []byte(`{}`)), "KeyMetadata", "KeyId")
	signing := field(b, call(b, "CreateKey", []byte(`{"KeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY"}`)), "KeyMetadata", "KeyId")
	msg := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5a}, 1024))
	const ec = `"EncryptionContext":{"purpose":"hsmkms-load"}`
	encrypt := []byte(`{"KeyId":"` + symmetric + `","Plaintext":"` + msg + `",` + ec + `}`)
	blob := field(b, call(b, "Encrypt", encrypt), "CiphertextBlob")
	for _, c := range []struct{ op, body string }{
		{"Encrypt", string(encrypt)},
		{"Decrypt", `{"CiphertextBlob":"` + blob + `",` + ec + `}`},
		{"GenerateDataKey", `{"KeyId":"` + symmetric + `","KeySpec":"AES_256",` + ec + `}`},
		{"Sign", `{"KeyId":"` + signing + `","Message":"` + msg + `","SigningAlgorithm":"ECDSA_SHA_256"}`},
	} {
		b.Run(c.op, func(b *testing.B) {
			r := signedRequest(b, c.op, []byte(c.body))
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				r.Body = io.NopCloser(bytes.NewReader([]byte(c.body)))
				clear(w.h)
				w.status = 0
				h.ServeHTTP(w, r)
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
			// The process's CPU time, every thread's (the collector's
			// included): on a shared machine it moves far less than the
			// wall time ns/op reports.
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// signedRequest is a request for op signed by the first admin now, as a
// server receives it.
func signedRequest(b *testing.B, op string, body []byte) *http.Request {
	r, err := http.NewRequest(http.MethodPost, "https://127.0.0.1:4599/", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService."+op)
	sum := sha256.Sum256(body)
	p := principals[0]
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: p.AccessKeyID, SecretAccessKey: p.Secret},
		r, hex.EncodeToString(sum[:]), "kms", region, time.Now()); err != nil {
		b.Fatal(err)
	}
	r.RemoteAddr = "127.0.0.1:50000"
	r.RequestURI = "/"
	return r
}

// serveSigned sends body as op through h and returns the status and body.
func serveSigned(b *testing.B, h http.Handler, op string, body []byte) (int, []byte) {
	w := &discardWriter{h: http.Header{}}
	h.ServeHTTP(w, signedRequest(b, op, body))
	return w.status, w.body.Bytes()
}

// discardWriter is a ResponseWriter that keeps the status and body.
type discardWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(s int)   { w.status = s }
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.body.Reset()
	return w.body.Write(p)
}
