package kms_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/store/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Several nodes in one test process, on one PostgreSQL database and one
// token, each with its own Service, cache, background work and HTTP
// server: what the nodes agree on goes through the database only. (They
// share the process's PKCS#11 module, so what is per process on a token,
// logins, is shared here; the tests in cmd/hsmkms run nodes as processes.)

// grantee is a principal with no identity policy: only grants let it in.
var grantee = kms.Principal{AccessKeyID: "AKIAGRANTEE000000001", Secret: "grantee-secret-00000000000000000000000", Account: account,
	ARN: "arn:aws:iam::" + account + ":user/grantee"}

// newNodes starts n nodes sharing a fresh database, a token and a clock;
// setup, if set, adjusts each node's env before it starts.
func newNodes(t *testing.T, n int, setup func(i int, e *env)) []*env {
	t.Helper()
	dbURL := pgtest.NewSchema(t)
	tok := hsmtest.NewToken(t)
	clk := &clock{now: time.Now()}
	var nodes []*env
	for i := range n {
		e := &env{t: t, tok: tok, clock: clk, dbURL: dbURL, node: fmt.Sprintf("node-%d", i+1), sync: 100 * time.Millisecond,
			clusterToken: map[string]hsmtest.Token{}, principals: []kms.Principal{grantee}}
		if setup != nil {
			setup(i, e)
		}
		e.start()
		t.Cleanup(func() { e.close() })
		nodes = append(nodes, e)
	}
	// The tests assume each node hears the others' changes from the
	// start: wait until every change feed listens.
	for _, e := range nodes {
		within(t, 10*time.Second, e.node+"'s change feed listening", func() error {
			if !e.svc.KeyCacheLive() {
				return errors.New("not live")
			}
			return nil
		})
	}
	return nodes
}

// within polls check until it returns nil, and fails t unless that
// happens within d.
func within(t *testing.T, d time.Duration, what string, check func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := check()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

func TestNodesShareKeys(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0].admin(), nodes[1].admin()
	id := nodes[0].createKey(a)
	enc, err := a.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("made on one")})
	require.NoError(t, err)
	dec, err := b.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err, "a key made on one node is used on another at once")
	require.Equal(t, "made on one", string(dec.Plaintext))
	enc, err = b.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("and back")})
	require.NoError(t, err)
	dec, err = a.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	require.Equal(t, "and back", string(dec.Plaintext))

	// An asymmetric key: a key pair made on one node signs on the other.
	k, err := a.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	sig, err := b.Sign(bg(), &awskms.SignInput{KeyId: k.KeyMetadata.KeyId, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	v, err := a.Verify(bg(), &awskms.VerifyInput{KeyId: k.KeyMetadata.KeyId, Message: []byte("m"), Signature: sig.Signature,
		SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	require.True(t, v.SignatureValid)
	require.Equal(t, "node-1", nodes[0].svc.NodeID())
}

// TestChangesSeenOnOtherNodesWithinASecond: each change made on node 1 to
// a key that node 2 has in its cache holds on node 2 within a second.
func TestChangesSeenOnOtherNodesWithinASecond(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0].admin(), nodes[1].admin()
	bGrantee := nodes[1].client(grantee, region)
	encryptOn := func(c *awskms.Client, id string) error {
		_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
		return err
	}
	refused := func(c *awskms.Client, id, code string) func() error {
		return func() error {
			if got := apiCode(encryptOn(c, id)); got != code {
				return fmt.Errorf("answered %q", got)
			}
			return nil
		}
	}
	cases := []struct {
		name   string
		change func(t *testing.T, id string)
		check  func(id string) func() error
	}{
		{"DisableKey", func(t *testing.T, id string) {
			_, err := a.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
			require.NoError(t, err)
		}, func(id string) func() error { return refused(b, id, "DisabledException") }},
		{"ScheduleKeyDeletion", func(t *testing.T, id string) {
			_, err := a.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
			require.NoError(t, err)
		}, func(id string) func() error { return refused(b, id, "KMSInvalidStateException") }},
		{"PutKeyPolicy", func(t *testing.T, id string) {
			policy := `{"Version":"2012-10-17","Statement":[
				{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"kms:*","Resource":"*"},
				{"Effect":"Deny","Principal":{"AWS":"` + principals[0].ARN + `"},"Action":"kms:Encrypt","Resource":"*"}]}`
			_, err := a.PutKeyPolicy(bg(), &awskms.PutKeyPolicyInput{KeyId: &id, Policy: &policy})
			require.NoError(t, err)
		}, func(id string) func() error { return refused(b, id, "AccessDeniedException") }},
		{"RevokeGrant", func(t *testing.T, id string) {
			g, err := a.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &id, GranteePrincipal: aws.String(grantee.ARN),
				Operations: []types.GrantOperation{types.GrantOperationEncrypt}})
			require.NoError(t, err)
			require.NoError(t, encryptOn(bGrantee, id), "the grant works on the other node")
			_, err = a.RevokeGrant(bg(), &awskms.RevokeGrantInput{KeyId: &id, GrantId: g.GrantId})
			require.NoError(t, err)
		}, func(id string) func() error { return refused(bGrantee, id, "AccessDeniedException") }},
		{"UpdateAlias", func(t *testing.T, id string) {
			_, err := a.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/moving"), TargetKeyId: &id})
			require.NoError(t, err)
			require.NoError(t, encryptOn(b, "alias/moving"))
			other := nodes[0].createKey(a)
			require.NoError(t, encryptOn(b, other), "node 2 has the new target in its cache too")
			_, err = a.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &other})
			require.NoError(t, err)
			_, err = a.UpdateAlias(bg(), &awskms.UpdateAliasInput{AliasName: aws.String("alias/moving"), TargetKeyId: &other})
			require.NoError(t, err)
		}, func(string) func() error { return refused(b, "alias/moving", "DisabledException") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := nodes[0].createKey(a)
			require.NoError(t, encryptOn(b, id), "node 2 has the key in its cache")
			c.change(t, id)
			took := within(t, time.Second, c.name+" on node 1, refused on node 2", c.check(id))
			t.Logf("%s held on the other node after %s", c.name, took.Round(time.Millisecond))
		})
	}
}

func TestConcurrentCreateAliasOnTwoNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, nil)
	a := nodes[0].admin()
	id := nodes[0].createKey(a)
	for round := range 10 {
		name := fmt.Sprintf("alias/race-%d", round)
		var wins, taken atomic.Int32
		var wg sync.WaitGroup
		for _, n := range nodes {
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := n.admin().CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: &name, TargetKeyId: &id})
					switch apiCode(err) {
					case "":
						wins.Add(1)
					case "AlreadyExistsException":
						taken.Add(1)
					default:
						t.Errorf("CreateAlias: %v", err)
					}
				}()
			}
		}
		wg.Wait()
		require.EqualValues(t, 1, wins.Load(), "round %d: exactly one wins", round)
		require.EqualValues(t, 3, taken.Load())
	}
}

func TestAliasLimitAcrossNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, nil)
	a := nodes[0].admin()
	id := nodes[0].createKey(a)
	var ok, limited atomic.Int32
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := nodes[i%2].admin().CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String(fmt.Sprintf("alias/many-%02d", i)), TargetKeyId: &id})
			switch apiCode(err) {
			case "":
				ok.Add(1)
			case "LimitExceededException":
				limited.Add(1)
			default:
				t.Errorf("CreateAlias: %v", err)
			}
		}()
	}
	wg.Wait()
	require.EqualValues(t, 50, ok.Load(), "AWS's 50 aliases per key hold across nodes")
	require.EqualValues(t, 10, limited.Load())
	out, err := nodes[1].admin().ListAliases(bg(), &awskms.ListAliasesInput{KeyId: &id})
	require.NoError(t, err)
	require.Len(t, out.Aliases, 50)
}

// TestJobsRunOnceAcrossThreeNodes: three nodes run the rotation scheduler
// and the deletion reaper at the same moment, twice; each due key is
// rotated once and deleted once, and each of those internal actions is
// one intent and one AwsServiceEvent, in the trail of the node that
// performed it.
func TestJobsRunOnceAcrossThreeNodes(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	dirs := []string{}
	nodes := newNodes(t, 3, func(i int, e *env) {
		dirs = append(dirs, filepath.Join(base, fmt.Sprintf("audit-%d", i)))
		e.audit = &kms.AuditConfig{Dir: dirs[i]}
	})
	c := nodes[0].admin()
	const n = 4
	var rotating, deleting []string
	for range n {
		id := nodes[0].createKey(c)
		_, err := c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
		require.NoError(t, err)
		rotating = append(rotating, id)
		id = nodes[0].createKey(c)
		_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
		require.NoError(t, err)
		deleting = append(deleting, id)
	}
	nodes[0].clock.Advance(91 * 24 * time.Hour)
	for pass := range 2 {
		var rotated, reaped atomic.Int32
		var wg sync.WaitGroup
		for _, e := range nodes {
			wg.Add(2)
			go func() {
				defer wg.Done()
				k, err := e.svc.RotateDue(bg())
				assert.NoError(t, err)
				rotated.Add(int32(k))
			}()
			go func() {
				defer wg.Done()
				k, err := e.svc.Reap(bg())
				assert.NoError(t, err)
				reaped.Add(int32(k))
			}()
		}
		wg.Wait()
		want := int32(n)
		if pass == 1 {
			want = 0
		}
		require.Equal(t, want, rotated.Load(), "pass %d: rotations across the nodes", pass)
		require.Equal(t, want, reaped.Load(), "pass %d: deletions across the nodes", pass)
	}
	for _, id := range rotating {
		require.Len(t, nodes[2].rotations(nodes[2].admin(), id, false), 1, "rotated once")
	}
	for _, id := range deleting {
		for _, e := range nodes {
			_, err := e.admin().DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
			requireAPIError(t, err, "NotFoundException", "")
		}
	}
	events := map[string]int{}
	for _, e := range nodes {
		e.close()
	}
	for _, dir := range dirs {
		for _, r := range records(t, dir) {
			if name := r["eventName"]; name == "DeleteKey" || name == "RotateKey" {
				if r["eventType"] == "AwsServiceEvent" || r["eventType"] == "HsmkmsApiCallIntent" {
					res := r["resources"].([]any)[0].(map[string]any)["ARN"].(string)
					events[fmt.Sprintf("%s %s %s", name, r["eventType"], res[strings.LastIndex(res, "/")+1:])]++
					assert.Nil(t, r["errorCode"], "%v", r)
				}
			}
		}
	}
	want := map[string]int{}
	for _, id := range rotating {
		want["RotateKey AwsServiceEvent "+id], want["RotateKey HsmkmsApiCallIntent "+id] = 1, 1
	}
	for _, id := range deleting {
		want["DeleteKey AwsServiceEvent "+id], want["DeleteKey HsmkmsApiCallIntent "+id] = 1, 1
	}
	assert.Equal(t, want, events, "one intent and one record per action, across the nodes' trails")
}

// TestJobsTakenOverFromDeadNode: work a node claimed and died with is done
// by another at its next pass; work a live node holds is left to it.
func TestJobsTakenOverFromDeadNode(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, nil)
	c := nodes[0].admin()
	live, dead := nodes[0].createKey(c), nodes[0].createKey(c)
	for _, id := range []string{live, dead} {
		_, err := c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
		require.NoError(t, err)
	}
	nodes[0].clock.Advance(91 * 24 * time.Hour)
	db, err := store.OpenPostgreSQL(bg(), nodes[0].dbURL)
	require.NoError(t, err)
	defer db.Close()
	now := time.Now()
	mark := func(id, node string) store.Mark {
		return store.Mark{Name: "rotate/" + account + "/" + region + "/" + id, Node: node, Detail: "AUTOMATIC@" + now.UTC().Format(time.RFC3339Nano),
			Started: now, Expires: now.Add(time.Hour)}
	}
	require.NoError(t, db.TakeMark(bg(), mark(live, "node-1")), "node 1 is rotating it")
	require.NoError(t, db.Heartbeat(bg(), "node-9", now.Add(-time.Hour), now.Add(-time.Minute)))
	require.NoError(t, db.TakeMark(bg(), mark(dead, "node-9")), "a node that stopped beating a minute ago")
	n, err := nodes[1].svc.RotateDue(bg())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Len(t, nodes[1].rotations(nodes[1].admin(), dead, false), 1, "taken over")
	require.Empty(t, nodes[1].rotations(nodes[1].admin(), live, false), "left to its live holder")
	st, err := nodes[1].admin().GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &live})
	require.NoError(t, err)
	require.Nil(t, st.OnDemandRotationStartDate, "an automatic rotation shows no on-demand start")
}

// TestOnDemandRotationMarkAcrossNodes: a rotation in progress on one node
// conflicts with one asked of another, which shows its start date.
func TestOnDemandRotationMarkAcrossNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, nil)
	c := nodes[0].admin()
	id := nodes[0].createKey(c)
	entered, release := make(chan struct{}), make(chan struct{})
	nodes[0].svc.SetRotationHook(func(keyARN string) error {
		close(entered)
		<-release
		return nil
	})
	done := make(chan error, 1)
	go func() {
		_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
		done <- err
	}()
	<-entered
	b := nodes[1].admin()
	st, err := b.GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &id})
	require.NoError(t, err)
	require.NotNil(t, st.OnDemandRotationStartDate, "the other node sees the rotation")
	_, err = b.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	requireAPIError(t, err, "ConflictException", "")
	close(release)
	require.NoError(t, <-done)
	st, err = b.GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &id})
	require.NoError(t, err)
	require.Nil(t, st.OnDemandRotationStartDate)
	// The rotation reaches node 1's cache through the change feed, which
	// the issue allows a second: a read just after the answer may precede it.
	require.Eventually(t, func() bool { return len(nodes[1].rotations(b, id, false)) == 1 }, 2*time.Second, 10*time.Millisecond,
		"node 1 lists the rotation made on node 0 within a second")
}

// tcpProxy forwards TCP connections to a server until cut, which closes
// every connection and refuses new ones, as a network partition would
// (with resets rather than silence, which the watcher's probe covers).
type tcpProxy struct {
	t      *testing.T
	target string
	mu     sync.Mutex
	ln     net.Listener
	addr   string
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *tcpProxy {
	p := &tcpProxy{t: t, target: target}
	p.listen("127.0.0.1:0")
	t.Cleanup(p.cut)
	return p
}

func (p *tcpProxy) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	require.NoError(p.t, err)
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
}

func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *tcpProxy) restore() { p.listen(p.addr) }

// TestNodeLosesDatabase: a node cut off from PostgreSQL answers with
// AWS's exceptions for a dependency it cannot reach, cached keys included
// (it cannot know what changed), says so to its readiness check, while
// the other node serves on; reconnected, it recovers by itself.
func TestNodeLosesDatabase(t *testing.T) {
	t.Parallel()
	var px *tcpProxy
	nodes := newNodes(t, 2, func(i int, e *env) {
		if i == 1 {
			u, err := url.Parse(e.dbURL)
			require.NoError(t, err)
			px = newProxy(t, u.Host)
			u.Host = px.addr
			q := u.Query()
			q.Set("connect_timeout", "2")
			u.RawQuery = q.Encode()
			e.dbURL = u.String()
		}
	})
	a, b := nodes[0].admin(), nodes[1].admin()
	id := nodes[0].createKey(a)
	encrypt := func(c *awskms.Client) error {
		_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
		return err
	}
	require.NoError(t, encrypt(b), "node 2 has the key in its cache")
	within(t, 5*time.Second, "node 2's cache serves", func() error {
		if !nodes[1].svc.KeyCacheLive() {
			return errors.New("not live yet")
		}
		return nil
	})

	px.cut()
	within(t, 2*time.Second, "node 2 stops serving from its cache", func() error {
		switch code := apiCode(encrypt(b)); code {
		case "KMSInternalException", "DependencyTimeoutException":
			return nil
		default:
			return fmt.Errorf("answered %q", code)
		}
	})
	require.False(t, nodes[1].svc.KeyCacheLive())
	ctx, cancel := context.WithTimeout(bg(), 3*time.Second)
	require.Error(t, nodes[1].svc.DatabaseReady(ctx), "its readiness says so")
	cancel()
	_, err := b.CreateKey(bg(), &awskms.CreateKeyInput{})
	require.Contains(t, []string{"KMSInternalException", "DependencyTimeoutException"}, apiCode(err))
	require.NoError(t, encrypt(a), "the other node serves on")
	_, err = a.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	require.NoError(t, err)

	px.restore()
	within(t, 20*time.Second, "node 2 recovers by itself, and knows of the change made meanwhile", func() error {
		if code := apiCode(encrypt(b)); code != "DisabledException" {
			return fmt.Errorf("answered %q", code)
		}
		return nil
	})
	require.NoError(t, nodes[1].svc.DatabaseReady(bg()))
	within(t, 10*time.Second, "its cache serves again", func() error {
		if !nodes[1].svc.KeyCacheLive() {
			return errors.New("not live yet")
		}
		return nil
	})
}

// TestImportExpiryOnceAcrossNodes: two nodes run the import expiry job at
// the same moment; each expired material is deleted once, by one node,
// whose trail holds its one intent and one DeleteExpiredKeyMaterial
// record, and the other node writes nothing for it.
func TestImportExpiryOnceAcrossNodes(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	var dirs []string
	nodes := newNodes(t, 2, func(i int, e *env) {
		dirs = append(dirs, filepath.Join(base, fmt.Sprintf("audit-%d", i)))
		e.audit = &kms.AuditConfig{Dir: dirs[i]}
	})
	c := nodes[0].admin()
	const n = 3
	var ids []string
	for range n {
		id := createExternal(t, c, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
		_, err := importMaterial(t, c, id, types.AlgorithmSpecRsaesOaepSha256, types.WrappingKeySpecRsa2048, random(32),
			&awskms.ImportKeyMaterialInput{ValidTo: aws.Time(nodes[0].clock.Now().Add(time.Hour))})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	nodes[0].clock.Advance(2 * time.Hour)
	var expired atomic.Int32
	var wg sync.WaitGroup
	for _, e := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := e.svc.ExpireImported(bg())
			assert.NoError(t, err)
			expired.Add(int32(k))
		}()
	}
	wg.Wait()
	require.EqualValues(t, n, expired.Load(), "each expired once across the nodes")
	for _, id := range ids {
		d, err := nodes[1].admin().DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		require.NoError(t, err)
		assert.Equal(t, types.KeyStatePendingImport, d.KeyMetadata.KeyState)
	}
	for _, e := range nodes {
		e.close()
	}
	events := map[string]int{}
	for _, dir := range dirs {
		for _, r := range records(t, dir) {
			if r["eventName"] == "DeleteExpiredKeyMaterial" {
				assert.Nil(t, r["errorCode"], "%v", r)
				res := r["resources"].([]any)[0].(map[string]any)["ARN"].(string)
				events[r["eventType"].(string)+" "+res[strings.LastIndex(res, "/")+1:]]++
			}
		}
	}
	want := map[string]int{}
	for _, id := range ids {
		want["AwsServiceEvent "+id], want["HsmkmsApiCallIntent "+id] = 1, 1
	}
	assert.Equal(t, want, events)
}

// TestKeyLastUsageAcrossNodes: each node writes the uses it saw, and each
// answers GetKeyLastUsage with the newest use on any node, not the older
// one it holds in memory.
func TestKeyLastUsageAcrossNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, func(_ int, e *env) { e.usageFlush = 20 * time.Millisecond })
	c1, c2 := nodes[0].admin(), nodes[1].admin()
	id := nodes[0].createKey(c1)
	_, err := c1.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("x")})
	require.NoError(t, err)
	nodes[0].clock.Advance(time.Minute)
	_, err = c2.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &id, NumberOfBytes: aws.Int32(32)})
	require.NoError(t, err)
	for i, c := range []*awskms.Client{c1, c2} {
		within(t, 5*time.Second, fmt.Sprintf("node %d answers with the newest use", i+1), func() error {
			out, err := c.GetKeyLastUsage(bg(), &awskms.GetKeyLastUsageInput{KeyId: &id})
			if err != nil {
				return err
			}
			if out.KeyLastUsage == nil || string(out.KeyLastUsage.Operation) != "GenerateDataKey" {
				return fmt.Errorf("last use %+v", out.KeyLastUsage)
			}
			return nil
		})
	}
}

// TestMultiRegionTransitionsOnTwoNodes: a replica left Creating and a
// primary left moving by one node (its own finishing held back) are
// finished by that node and by both nodes' jobs at once, which is safe
// without a claim: finishing is one transaction over the set's rows,
// locked, and finishing what is finished changes nothing.
func TestMultiRegionTransitionsOnTwoNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 2, nil)
	a := nodes[0].admin()
	id := nodes[0].createMRK(a, "", "")
	nodes[0].replicate(a, id, region2)
	nodes[0].waitKeyState(nodes[0].client(principals[0], region2), id, types.KeyStateEnabled)
	const region3 = "ap-south-1"
	nodes[0].svc.PauseTransitions(true)
	nodes[1].svc.PauseTransitions(true)
	nodes[0].replicate(a, id, region3)
	_, err := a.UpdatePrimaryRegion(bg(), &awskms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(region2)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStateCreating, describe(t, nodes[1].client(principals[0], region3), id).KeyState)

	// Let go: node 1's own finishing starts (nudged), and both nodes'
	// passes over the store run beside it.
	nodes[1].svc.PauseTransitions(false)
	nodes[0].svc.PauseTransitions(false)
	for round := range 3 {
		var wg sync.WaitGroup
		errs := make([]error, len(nodes))
		for i, n := range nodes {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = n.svc.FinishStrayTransitions(bg()) }()
		}
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "round %d, node %d", round, i+1)
		}
	}
	for i, n := range nodes {
		for _, region := range []string{region, region2, region3} {
			md := describe(t, n.client(principals[0], region), id)
			assert.Equal(t, types.KeyStateEnabled, md.KeyState, "node %d, %s", i+1, region)
			assert.Equal(t, region2, *md.MultiRegionConfiguration.PrimaryKey.Region, "node %d, %s", i+1, region)
			assert.Len(t, md.MultiRegionConfiguration.ReplicaKeys, 2)
		}
	}
}
