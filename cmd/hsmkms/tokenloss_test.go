package main

import (
	"context"
	"crypto/rand"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/internal/datadir"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/stretchr/testify/require"
)

// tokenDirs maps the labels of a data directory's SoftHSM2 tokens to their
// directories, read from the files (a damaged token keeps its directory,
// label unknown: it is listed under "").
func tokenDirs(t *testing.T, dataDir string) map[string]string {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", filepath.Join(dataDir, "softhsm", "softhsm2.conf"))
	st, ok, err := keystore.FindSoftHSMStore()
	require.NoError(t, err)
	require.True(t, ok)
	dirs, err := st.Tokens()
	require.NoError(t, err)
	out := map[string]string{}
	for _, d := range dirs {
		out[d.Label] = d.Dir
	}
	return out
}

// damage empties a token's token.object, as a process killed inside a
// C_Login or C_SetPIN leaves it; withCopy false also deletes hsmkms's copy.
func damage(t *testing.T, dataDir, tokenDir string, withCopy bool) {
	t.Helper()
	require.NoError(t, os.Truncate(filepath.Join(tokenDir, "token.object"), 0))
	if !withCopy {
		require.NoError(t, os.Remove(filepath.Join(dataDir, "token-backups", filepath.Base(tokenDir)+".token.object")))
	}
}

// moduleLabels is what a freshly loaded module offers.
func moduleLabels(t *testing.T, dataDir string) []string {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", filepath.Join(dataDir, "softhsm", "softhsm2.conf"))
	module, err := datadir.FindSoftHSM()
	require.NoError(t, err)
	m, err := hsm.OpenModule(module)
	require.NoError(t, err)
	defer m.Close()
	list, err := m.Tokens()
	require.NoError(t, err)
	var labels []string
	for _, tok := range list {
		labels = append(labels, tok.Label)
	}
	return labels
}

// TestBootstrapNeverReinitialises: a data directory whose token vanished
// is never given a blank token under the same label.
func TestBootstrapNeverReinitialises(t *testing.T) {
	if _, err := datadir.FindSoftHSM(); err != nil {
		t.Fatal(err, "(make test runs scripts/setup.sh first)")
	}
	fresh := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "data")
		_, _, err := datadir.Bootstrap(dir, "127.0.0.1:4599", nil)
		require.NoError(t, err)
		return dir
	}
	t.Run("default token damaged, no copy: refused", func(t *testing.T) {
		dir := fresh(t)
		before := tokenDirs(t, dir)
		damage(t, dir, before[datadir.DefaultTokenLabel], false)
		_, _, err := datadir.Bootstrap(dir, "127.0.0.1:4599", nil)
		var refused *keystore.TokenProblem
		require.ErrorAs(t, err, &refused)
		require.ErrorIs(t, err, hsm.ErrTokenNotFound)
		require.ErrorContains(t, err, `label "hsmkms-default"`)
		require.ErrorContains(t, err, before[datadir.DefaultTokenLabel])
		require.ErrorContains(t, err, "token.object is empty")
		require.ErrorContains(t, err, `"Recovering a damaged token"`)
		require.NotContains(t, moduleLabels(t, dir), datadir.DefaultTokenLabel, "no token was made in its place")
		require.Len(t, tokenDirs(t, dir), 4, "no directory was added (default, two clusters, the XKS proxy's)")
	})
	t.Run("default token damaged, copy kept: restored", func(t *testing.T) {
		dir := fresh(t)
		before := tokenDirs(t, dir)
		damage(t, dir, before[datadir.DefaultTokenLabel], true)
		_, _, err := datadir.Bootstrap(dir, "127.0.0.1:4599", nil)
		require.NoError(t, err)
		require.Equal(t, before, tokenDirs(t, dir), "the same directories, the default token readable again")
		require.Contains(t, moduleLabels(t, dir), datadir.DefaultTokenLabel)
	})
	t.Run("cluster token damaged, no copy: left gone, still declared", func(t *testing.T) {
		dir := fresh(t)
		before := tokenDirs(t, dir)
		damage(t, dir, before["hsmkms-cluster-1"], false)
		path, info, err := datadir.Bootstrap(dir, "127.0.0.1:4599", nil)
		require.NoError(t, err, "serve starts; a store on that cluster fails to connect")
		require.Len(t, info.Clusters, 2)
		cfg, err := config.LoadConfig(path)
		require.NoError(t, err)
		require.Len(t, cfg.Clusters, 2)
		labels := moduleLabels(t, dir)
		require.NotContains(t, labels, "hsmkms-cluster-1", "not re-initialised")
		require.Contains(t, labels, "hsmkms-cluster-2")
		require.Len(t, tokenDirs(t, dir), 4)
	})
	t.Run("an interrupted first run completes", func(t *testing.T) {
		// The PIN files were written, then the process died before the
		// token was made: no database, no copy, no token directory.
		dir := filepath.Join(t.TempDir(), "data")
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "secrets"), 0o700))
		for _, f := range []string{"so-pin", "user-pin"} {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "secrets", f), []byte(rand.Text()+"\n"), 0o600))
		}
		_, _, err := datadir.Bootstrap(dir, "127.0.0.1:4599", nil)
		require.NoError(t, err)
		require.Contains(t, moduleLabels(t, dir), datadir.DefaultTokenLabel)
	})
}

// TestServeRefusesDamagedDefaultToken runs the binary: a damaged default
// token is restored from hsmkms's copy, and without one serve refuses to
// start, saying which token, where, and what to do.
func TestServeRefusesDamagedDefaultToken(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	listen := freePort(t)
	srv := startServer(t, dir, listen, 0).mustStart()
	c := srv.client()
	ctx := context.Background()
	key, err := c.CreateKey(ctx, &awskms.CreateKeyInput{})
	require.NoError(t, err)
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("before the crash")})
	require.NoError(t, err)
	srv.stop()
	tokDir := tokenDirs(t, dir)[datadir.DefaultTokenLabel]
	require.NotEmpty(t, tokDir)

	t.Run("copy kept: restored at start", func(t *testing.T) {
		damage(t, dir, tokDir, true)
		srv := startServer(t, dir, listen, 1).mustStart()
		require.Equal(t, 1, countLines(srv.log(), "restored a damaged SoftHSM2 token"), "%s", srv.log())
		dec, err := srv.client().Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		require.NoError(t, err)
		require.Equal(t, "before the crash", string(dec.Plaintext))
		srv.stop()
	})
	t.Run("no copy: refused", func(t *testing.T) {
		damage(t, dir, tokDir, false)
		srv := startServer(t, dir, listen, 2)
		require.False(t, srv.ready(), "serve must not start on a blank token")
		require.True(t, exitedWithError(srv.wait()))
		log := srv.log()
		for _, want := range []string{
			"refusing the token of the default key store", `label "hsmkms-default"`, tokDir, "token.object is empty",
			"Nothing was initialised", `"Recovering a damaged token"`,
		} {
			require.Contains(t, log, want)
		}
		require.NotContains(t, moduleLabels(t, dir), datadir.DefaultTokenLabel, "no token was made in its place")

		out, err := exec.Command(binary(t), "tokens", "--data-dir", dir).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Regexp(t, `\(unreadable\)\s+\w+\s+SoftHSM project\s+SoftHSM v2\s+-\s+damaged: directory `+regexp.QuoteMeta(tokDir)+` \(token.object is empty\)`, string(out))
		require.Contains(t, string(out), "hsmkms-cluster-1")
	})
}

// TestVanishedClusterToken: a store whose cluster token is gone goes
// FAILED with CLUSTER_NOT_FOUND; nothing re-creates the token.
func TestVanishedClusterToken(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	listen := freePort(t)
	srv := startServer(t, dir, listen, 0).mustStart()
	st := newStoreWithKey(t, srv)
	srv.stop()
	damage(t, dir, tokenDirs(t, dir)[st.label], false)
	srv = startServer(t, dir, listen, 1).mustStart()
	c := srv.client()
	e := storeState(t, c, st.id)
	require.Equal(t, types.ConnectionStateTypeFailed, e.ConnectionState)
	require.Equal(t, types.ConnectionErrorCodeTypeClusterNotFound, e.ConnectionErrorCode)
	require.Contains(t, srv.log(), "SoftHSM2 cannot load it")
	require.NotContains(t, moduleLabels(t, dir), st.label)
	_, err := c.Decrypt(context.Background(), &awskms.DecryptInput{CiphertextBlob: st.blob})
	require.ErrorContains(t, err, "KMSInvalidStateException")
	srv.stop()
}

// storeWithKey is a custom key store on one of the data directory's
// cluster tokens, connected, with a key in it and a ciphertext under it.
type storeWithKey struct {
	id, cluster, label string
	blob               []byte
}

func newStoreWithKey(t *testing.T, srv *server) storeWithKey {
	t.Helper()
	ctx := context.Background()
	c := srv.client()
	ids := make([]string, 0, len(srv.clusters))
	for id := range srv.clusters {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	require.NotEmpty(t, ids, "serve printed no cluster")
	cluster := ids[0]
	ca, err := os.ReadFile(filepath.Join(srv.dir, "tls", "ca.pem"))
	require.NoError(t, err)
	out, err := c.CreateCustomKeyStore(ctx, &awskms.CreateCustomKeyStoreInput{
		CustomKeyStoreName: aws.String("crash-test"), CloudHsmClusterId: aws.String(cluster),
		KeyStorePassword: aws.String(srv.clusters[cluster]), TrustAnchorCertificate: aws.String(string(ca)),
	})
	require.NoError(t, err)
	id := *out.CustomKeyStoreId
	_, err = c.ConnectCustomKeyStore(ctx, &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	require.NoError(t, err)
	require.Equal(t, types.ConnectionStateTypeConnected, storeState(t, c, id).ConnectionState, "%s", srv.log())
	key, err := c.CreateKey(ctx, &awskms.CreateKeyInput{CustomKeyStoreId: &id, Origin: types.OriginTypeAwsCloudhsm})
	require.NoError(t, err)
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("in the store")})
	require.NoError(t, err)
	cfg, err := config.LoadConfig(filepath.Join(srv.dir, "hsmkms.yaml"))
	require.NoError(t, err)
	label := ""
	for _, cl := range cfg.Clusters {
		if cl.ID == cluster {
			label = cl.TokenLabel
		}
	}
	return storeWithKey{id: id, cluster: cluster, label: label, blob: enc.CiphertextBlob}
}
