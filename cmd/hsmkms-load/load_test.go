package main

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

func TestParseStatCPU(t *testing.T) {
	t.Parallel()
	// Fields 14 and 15 (utime, stime) are 250 and 50 ticks; the command
	// name holds spaces and a ')'.
	const stat = "4242 (hsm kms) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 100 1000000 500 18446744073709551615\n"
	got, err := parseStatCPU(stat)
	require.NoError(t, err)
	assert.Equal(t, 3*time.Second, got)

	for name, bad := range map[string]string{
		"no command name": "4242 hsmkms S 1",
		"too short":       "4242 (hsmkms) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250",
		"not a number":    "4242 (hsmkms) S 1 4242 4242 0 -1 4194560 1234 0 0 0 x 50 0",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseStatCPU(bad)
			assert.Error(t, err)
		})
	}
}

func TestProcessCPUOfThisProcess(t *testing.T) {
	t.Parallel()
	a, err := processCPU(os.Getpid())
	require.NoError(t, err)
	b, err := processCPU(os.Getpid())
	require.NoError(t, err)
	assert.GreaterOrEqual(t, b, a, "CPU time only grows")
	_, err = processCPU(1 << 30) // above pid_max
	assert.ErrorContains(t, err, "--pid")
}

func TestFlagsAreChecked(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"unknown operation":  {[]string{"--op", "Nope"}, `unknown operation "Nope"`},
		"no workers":         {[]string{"--workers", "0"}, "--workers"},
		"no time":            {[]string{"--duration", "0s"}, "--duration"},
		"empty message":      {[]string{"--size", "0"}, "--size"},
		"no keys":            {[]string{"--keys", "0"}, "--keys"},
		"key id and keys":    {[]string{"--key-id", "k", "--keys", "2"}, "--key-id"},
		"stray argument":     {[]string{"Encrypt"}, "unexpected argument"},
		"negative pid":       {[]string{"--pid", "-1"}, "--pid"},
		"flag it never knew": {[]string{"--threads", "4"}, "flag provided but not defined"},
	} {
		t.Run(name, func(t *testing.T) {
			err := run(context.Background(), c.args)
			require.ErrorContains(t, err, c.want)
		})
	}
}

// TestLoadEveryOperation runs each operation briefly against an in-process
// hsmkms on a throwaway token, through the same SDK client code as the
// command, spread over three keys.
func TestLoadEveryOperation(t *testing.T) {
	t.Parallel()
	tok := hsmtest.NewToken(t)
	ctx := context.Background()
	svc, err := kms.Open(ctx, kms.OpenConfig{
		DefaultToken: keystore.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 4},
		PIN:          tok.UserPIN,
		Database:     filepath.Join(t.TempDir(), "hsmkms.db"),
	})
	require.NoError(t, err)
	svc.Start()
	t.Cleanup(func() { require.NoError(t, svc.Close(ctx)) })
	admin := kms.Principal{AccessKeyID: "AKIALOADTEST00000001", Secret: "load-test-secret-00000000000000000000",
		Account: "111122223333", ARN: "arn:aws:iam::111122223333:user/load", Policy: kms.AdminPolicy}
	handler, err := svc.Handler(kms.HandlerConfig{Principals: []kms.Principal{admin}})
	require.NoError(t, err)
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	var retries atomic.Int64
	client := awskms.New(awskms.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider(admin.AccessKeyID, admin.Secret, ""),
		BaseEndpoint: aws.String(srv.URL),
		Retryer:      closedConnRetryer(&retries),
	})

	line := regexp.MustCompile(`^\S+ +workers=2 +size=64 +keys=[03] +requests=\d+ +errors=0 +retries=\d+ +\d+ req/s +p50=\S+ +p99=\S+ +server-cpu/req=\S+$`)
	keysBefore := 0
	for _, name := range strings.Split(opNames(), ", ") {
		t.Run(name, func(t *testing.T) {
			o := options{op: name, workers: 2, duration: 50 * time.Millisecond, size: 64, keys: 3, pid: os.Getpid()}
			r, err := load(ctx, client, o, &retries)
			require.NoError(t, err)
			assert.Positive(t, r.requests())
			assert.Zero(t, r.errors)
			assert.LessOrEqual(t, r.percentile(0.5), r.percentile(0.99))
			assert.Regexp(t, line, r.String())

			keys, err := client.ListKeys(ctx, &awskms.ListKeysInput{Limit: aws.Int32(1000)})
			require.NoError(t, err)
			switch {
			case operations[name].needsKey:
				assert.Len(t, keys.Keys, keysBefore+3, "one key per --keys")
			case name == "CreateKey":
				assert.Len(t, keys.Keys, keysBefore+int(r.requests())+1, "one key per request, and the checked call's")
			default:
				assert.Len(t, keys.Keys, keysBefore, "GenerateRandom needs no key")
			}
			keysBefore = len(keys.Keys)
		})
	}

	t.Run("keys file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "keys")
		o := options{op: "Encrypt", workers: 2, duration: 10 * time.Millisecond, size: 16, keys: 3, keysFile: file}
		_, err := load(ctx, client, o, &retries)
		require.NoError(t, err)
		first, err := readKeysFile(file)
		require.NoError(t, err)
		require.Len(t, first, 3, "the keys created are added")
		o.keys = 5
		_, err = load(ctx, client, o, &retries)
		require.NoError(t, err)
		all, err := readKeysFile(file)
		require.NoError(t, err)
		require.Len(t, all, 5, "only the missing ones are created")
		require.Equal(t, first, all[:3])
	})

	// An existing key is used as it is, and a failing call stops the run
	// before it is measured.
	created, err := client.CreateKey(ctx, &awskms.CreateKeyInput{})
	require.NoError(t, err)
	r, err := load(ctx, client, options{op: "Encrypt", workers: 1, duration: 10 * time.Millisecond, size: 16, keys: 1, keyID: *created.KeyMetadata.KeyId}, &retries)
	require.NoError(t, err)
	assert.Positive(t, r.requests())
	assert.NotContains(t, r.String(), "server-cpu", "no --pid, no CPU figure")
	_, err = load(ctx, client, options{op: "Sign", workers: 1, duration: 10 * time.Millisecond, size: 16, keys: 1, keyID: *created.KeyMetadata.KeyId}, &retries)
	require.ErrorContains(t, err, "InvalidKeyUsageException")
}
