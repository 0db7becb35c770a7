package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/hsmkms/hsmkms/internal/datadir"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/kms/store/pgtest"
	"github.com/stretchr/testify/require"
)

// The tests here run the real binary, `hsmkms serve --data-dir`, and talk
// to it with aws-sdk-go-v2 (SigV4, TLS against the data directory's CA), as
// a user would: what they check is what survives a SIGKILL.

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	pgtest.Cleanup()
	os.Exit(code)
}

// binary builds cmd/hsmkms once per test process.
func binary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "hsmkms-bin-"); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "hsmkms")
		out, err := exec.Command("go", "build", "-o", built.path, ".").CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, built.err)
	return built.path
}

// server is one `hsmkms serve --data-dir` process.
type server struct {
	t        *testing.T
	dir      string // the data directory
	listen   string
	xks      string // the XKS proxy's HOST:PORT
	cmd      *exec.Cmd
	stdout   string // files holding what the process printed
	stderr   string
	exited   chan struct{}
	exitErr  error
	clusters map[string]string // cluster id → initial kmsuser password, from the paste block
}

// handedOut holds every address freePort returned: the kernel may give a
// just-closed port again, and one server's two listeners (or two parallel
// tests' servers) on one port fail at start-up.
var handedOut sync.Map

// freePort is a loopback HOST:PORT nothing listens on now and no other
// call has returned.
func freePort(t *testing.T) string {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		l.Close()
		if _, taken := handedOut.LoadOrStore(addr, true); !taken {
			return addr
		}
	}
}

// startServer runs serve on dir and waits until it prints the paste block,
// or exits. n numbers the run, to keep each run's output apart.
func startServer(t *testing.T, dir, listen string, n int, args ...string) *server {
	t.Helper()
	return startServerEnv(t, dir, listen, n, nil, args...)
}

// startServerEnv is startServer with env added to the process's
// environment, and args to its command line.
func startServerEnv(t *testing.T, dir, listen string, n int, env []string, args ...string) *server {
	t.Helper()
	s := &server{t: t, dir: dir, listen: listen, xks: freePort(t), exited: make(chan struct{}),
		stdout: filepath.Join(filepath.Dir(dir), fmt.Sprintf("stdout-%d", n)),
		stderr: filepath.Join(filepath.Dir(dir), fmt.Sprintf("stderr-%d", n))}
	out, err := os.Create(s.stdout)
	require.NoError(t, err)
	errf, err := os.Create(s.stderr)
	require.NoError(t, err)
	// The proxy gets a free port of its own: --listen's port + 1, the
	// default, may be taken on a machine running other tests.
	s.cmd = exec.Command(binary(t), append([]string{"serve", "--data-dir", dir, "--listen", listen, "--xks-listen", s.xks}, args...)...)
	if env != nil {
		s.cmd.Env = append(os.Environ(), env...)
	}
	s.cmd.Stdout, s.cmd.Stderr = out, errf
	require.NoError(t, s.cmd.Start())
	go func() {
		s.exitErr = s.cmd.Wait()
		out.Close()
		errf.Close()
		close(s.exited)
	}()
	t.Cleanup(s.kill)
	return s
}

// ready waits for the paste block; false if the process exited first.
func (s *server) ready() bool {
	deadline := time.After(2 * time.Minute)
	for {
		b, _ := os.ReadFile(s.stdout)
		if strings.Contains(string(b), "export AWS_REGION=") {
			s.clusters = map[string]string{}
			for _, m := range regexp.MustCompile(`(?m)^\s+(cluster-\S+)\s+initial kmsuser password: (\S+)$`).FindAllStringSubmatch(string(b), -1) {
				s.clusters[m[1]] = m[2]
			}
			return true
		}
		select {
		case <-s.exited:
			return false
		case <-deadline:
			s.t.Fatalf("serve printed nothing in 2 minutes:\n%s", s.log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *server) mustStart() *server {
	s.t.Helper()
	require.True(s.t, s.ready(), "serve exited: %v\n%s", s.exitErr, s.log())
	return s
}

// log is what the process wrote to stderr.
func (s *server) log() string {
	b, _ := os.ReadFile(s.stderr)
	return string(b)
}

// kill sends SIGKILL and waits for the process to be gone.
func (s *server) kill() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-s.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop() {
	s.t.Helper()
	require.NoError(s.t, s.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-s.exited:
		require.NoError(s.t, s.exitErr, "%s", s.log())
	case <-time.After(time.Minute):
		s.t.Fatal("serve did not stop on SIGTERM")
	}
}

// wait waits for the process to exit by itself and returns how it ended.
func (s *server) wait() error {
	select {
	case <-s.exited:
		return s.exitErr
	case <-time.After(2 * time.Minute):
		s.t.Fatal("serve did not exit")
		return nil
	}
}

// client is an SDK client for the admin principal, with a fresh
// connection pool (a killed server leaves the old one broken) and no
// retries: every answer the test sees is the server's first.
func (s *server) client() *awskms.Client {
	t := s.t
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM([]byte(read("tls/ca.pem"))))
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	})
	return awskms.New(awskms.Options{
		Region:       datadir.DefaultRegion,
		Credentials:  credentials.NewStaticCredentialsProvider(read("secrets/admin-access-key-id"), read("secrets/admin-secret"), ""),
		BaseEndpoint: aws.String("https://" + s.listen),
		HTTPClient:   httpClient,
		Retryer:      aws.NopRetryer{},
	})
}

// storeState polls DescribeCustomKeyStores until the store is no longer
// CONNECTING.
func storeState(t *testing.T, c *awskms.Client, id string) types.CustomKeyStoresListEntry {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := c.DescribeCustomKeyStores(context.Background(), &awskms.DescribeCustomKeyStoresInput{CustomKeyStoreId: &id})
		require.NoError(t, err)
		require.Len(t, out.CustomKeyStores, 1)
		e := out.CustomKeyStores[0]
		if e.ConnectionState != types.ConnectionStateTypeConnecting || time.Now().After(deadline) {
			return e
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countLines counts the lines of s containing substr.
func countLines(s, substr string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			n++
		}
	}
	return n
}

// exitedWithError reports whether err is a non-zero exit (not a signal).
func exitedWithError(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() > 0
}
