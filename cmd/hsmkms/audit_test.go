package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmw "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// acked is what the clients were answered: request ids, by the key the
// request used (every answer carries its request id, errors too).
type acked struct {
	mu  sync.Mutex
	ids map[string]string // request id → operation
}

func (a *acked) add(op, id string) {
	if id == "" {
		return // no answer: the kill came first
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ids[id] = op
}

// load calls the server from workers until it stops answering, and
// records each answer's request id: reads (Encrypt, GenerateDataKey,
// Decrypt, a denied-by-validation GenerateDataKey) and changes (aliases
// created and deleted, descriptions).
func load(t *testing.T, s *server, keys []string, got *acked) {
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.client()
			ctx := context.Background()
			key := keys[w%len(keys)]
			for i := 0; ; i++ {
				var id string
				var err error
				op := ""
				switch i % 5 {
				case 0:
					op = "Encrypt"
					var out *awskms.EncryptOutput
					out, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("p")})
					if err == nil {
						id, _ = awsmw.GetRequestIDMetadata(out.ResultMetadata)
					}
				case 1:
					op = "GenerateDataKey"
					var out *awskms.GenerateDataKeyOutput
					out, err = c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: &key, KeySpec: types.DataKeySpecAes256})
					if err == nil {
						id, _ = awsmw.GetRequestIDMetadata(out.ResultMetadata)
					}
				case 2:
					op = "CreateAlias"
					var out *awskms.CreateAliasOutput
					out, err = c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/w" + strconv.Itoa(w) + "-" + strconv.Itoa(i)), TargetKeyId: &key})
					if err == nil {
						id, _ = awsmw.GetRequestIDMetadata(out.ResultMetadata)
					}
				case 3:
					op = "UpdateKeyDescription"
					var out *awskms.UpdateKeyDescriptionOutput
					out, err = c.UpdateKeyDescription(ctx, &awskms.UpdateKeyDescriptionInput{KeyId: &key, Description: aws.String(strconv.Itoa(i))})
					if err == nil {
						id, _ = awsmw.GetRequestIDMetadata(out.ResultMetadata)
					}
				case 4:
					op = "GenerateDataKey"
					_, err = c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: &key}) // ValidationException
				}
				if err != nil {
					var re interface{ ServiceRequestID() string }
					if !errors.As(err, &re) || re.ServiceRequestID() == "" {
						return // the server is gone
					}
					id = re.ServiceRequestID()
				}
				got.add(op, id)
			}
		}()
	}
	wg.Wait()
}

// trailRecords reads every record of the data directory's trail.
func trailRecords(t *testing.T, dir string) []map[string]any {
	t.Helper()
	var out []map[string]any
	require.NoError(t, audit.Records(filepath.Join(dir, "audit"), 0, func(_ uint64, line []byte) error {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			return err
		}
		out = append(out, m)
		return nil
	}))
	return out
}

// TestSIGKILLDuringLoadLosesNoAcknowledgedEvent kills the real server
// (SIGKILL) at a random moment under load from eight clients, several
// times: after each restart the trail holds a record of every call that
// was answered, the next start sealed what the killed run left, keys'
// last use is what the trail last recorded, and `hsmkms audit verify`
// passes. HSMKMS_AUDIT_KILLS sets the number of kills (default 3).
func TestSIGKILLDuringLoadLosesNoAcknowledgedEvent(t *testing.T) {
	kills := 3
	if v := os.Getenv("HSMKMS_AUDIT_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "HSMKMS_AUDIT_KILLS")
		kills = n
	}
	dir := filepath.Join(t.TempDir(), "data")
	listen := freePort(t)
	srv := startServer(t, dir, listen, 0).mustStart()
	c := srv.client()
	var keys []string
	for range 2 {
		k, err := c.CreateKey(context.Background(), &awskms.CreateKeyInput{})
		require.NoError(t, err)
		keys = append(keys, *k.KeyMetadata.KeyId)
	}
	got := &acked{ids: map[string]string{}}
	for i := range kills {
		done := make(chan struct{})
		go func() { defer close(done); load(t, srv, keys, got) }()
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		srv.kill()
		<-done
		srv = startServer(t, dir, listen, i+1)
		require.True(t, srv.ready(), "restart %d: %v\n%s", i, srv.exitErr, srv.log())
	}
	c = srv.client()
	usage := map[string]*awskms.GetKeyLastUsageOutput{}
	for _, k := range keys {
		out, err := c.GetKeyLastUsage(context.Background(), &awskms.GetKeyLastUsageInput{KeyId: &k})
		require.NoError(t, err)
		usage[k] = out
	}
	srv.stop()

	recs := trailRecords(t, dir)
	inTrail := map[string]bool{}
	lastUse := map[string]map[string]any{} // key id → its last tracked success, in trail order
	crashed := 0
	for _, r := range recs {
		if r["eventType"] == "AwsApiCall" {
			inTrail[r["requestID"].(string)] = true
			if _, failed := r["errorCode"]; !failed && (r["eventName"] == "Encrypt" || r["eventName"] == "GenerateDataKey") {
				for _, res := range r["resources"].([]any) {
					arn := res.(map[string]any)["ARN"].(string)
					lastUse[arn[strings.LastIndexByte(arn, '/')+1:]] = r
				}
			}
		}
		if r["eventName"] == "StartAuditTrail" && r["serviceEventDetails"].(map[string]any)["previousRun"] == "crashed" {
			crashed++
		}
	}
	require.NotEmpty(t, got.ids)
	missing := 0
	for id, op := range got.ids {
		if !inTrail[id] {
			missing++
			t.Errorf("%s %s was answered, and is not in the trail", op, id)
		}
	}
	t.Logf("%d answered calls over %d kills, all %d in the trail", len(got.ids), kills, len(got.ids)-missing)
	assert.Equal(t, kills, crashed, "each start after a kill says the last run crashed")
	for _, k := range keys {
		want := lastUse[k]
		require.NotNil(t, want)
		require.NotNil(t, usage[k].KeyLastUsage, k)
		assert.Equal(t, want["requestID"], aws.ToString(usage[k].KeyLastUsage.KmsRequestId),
			"key %s: the last use the trail recorded, though the kill came before the store was written", k)
		assert.Equal(t, want["eventID"], aws.ToString(usage[k].KeyLastUsage.CloudTrailEventId))
	}

	out, err := exec.Command(binary(t), "audit", "verify", "--data-dir", dir,
		"--public-key", filepath.Join(dir, "audit", audit.PublicKeyPEM)).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "verifies")
	assert.Contains(t, string(out), "pinned with --public-key")
}

// TestAuditVerifyCommand runs `hsmkms audit verify` on a trail the real
// server wrote and stopped, then on copies tampered each way: each exits
// non-zero naming the file and, where it is a record, the record.
func TestAuditVerifyCommand(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	srv := startServer(t, dir, freePort(t), 0).mustStart()
	c := srv.client()
	k, err := c.CreateKey(context.Background(), &awskms.CreateKeyInput{})
	require.NoError(t, err)
	for range 20 {
		_, err := c.Encrypt(context.Background(), &awskms.EncryptInput{KeyId: k.KeyMetadata.KeyId, Plaintext: []byte("x")})
		require.NoError(t, err)
	}
	srv.stop()
	trail := filepath.Join(dir, "audit")
	verify := func(d string) (string, error) {
		out, err := exec.Command(binary(t), "audit", "verify", "--dir", d).CombinedOutput()
		return string(out), err
	}
	out, err := verify(trail)
	require.NoError(t, err, out)
	assert.Contains(t, out, "verifies")
	assert.Contains(t, out, "not pinned")
	b, err := exec.Command(binary(t), "audit", "verify", "--data-dir", dir).CombinedOutput()
	require.NoError(t, err, "%s", b)

	files := func(d, glob string) []string {
		m, err := filepath.Glob(filepath.Join(d, glob))
		require.NoError(t, err)
		require.NotEmpty(t, m)
		return m
	}
	for name, tamper := range map[string]func(d string) string{
		"a byte of a record changed": func(d string) string {
			f := files(d, "trail-*.jsonl")[0]
			b, _ := os.ReadFile(f)
			i := bytes.Index(b, []byte(`"eventName":"Encrypt"`))
			b[i+len(`"eventName":"E`)] = 'X'
			os.WriteFile(f, b, 0o600)
			return filepath.Base(f) + ": line"
		},
		"a record removed": func(d string) string {
			f := files(d, "trail-*.jsonl")[0]
			b, _ := os.ReadFile(f)
			ls := bytes.SplitAfter(b, []byte("\n"))
			os.WriteFile(f, bytes.Join(append(ls[:5:5], ls[6:]...), nil), 0o600)
			return filepath.Base(f) + ": line 6 (record"
		},
		"a file removed": func(d string) string {
			f := files(d, "trail-*.jsonl")[0]
			os.Remove(f)
			return filepath.Base(f) + ": missing"
		},
		"the last file truncated": func(d string) string {
			fs := files(d, "trail-*.jsonl")
			f := fs[len(fs)-1]
			st, _ := os.Stat(f)
			os.Truncate(f, st.Size()-40)
			return filepath.Base(f) + ": "
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "audit")
			require.NoError(t, os.CopyFS(d, os.DirFS(trail)))
			want := tamper(d)
			out, err := verify(d)
			var ee *exec.ExitError
			require.True(t, errors.As(err, &ee), "exits non-zero: %s", out)
			assert.Equal(t, 1, ee.ExitCode())
			assert.Contains(t, out, "does not verify")
			assert.Contains(t, out, want)
		})
	}
}
