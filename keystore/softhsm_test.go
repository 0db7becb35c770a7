package keystore_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tokenDir finds tok's directory in the test process's SoftHSM2 store.
func tokenDir(t *testing.T, tok hsmtest.Token) string {
	t.Helper()
	st, ok, err := keystore.FindSoftHSMStore()
	require.NoError(t, err)
	require.True(t, ok, "hsmtest's SoftHSM2 store is a file store")
	dirs, err := st.Tokens()
	require.NoError(t, err)
	for _, d := range dirs {
		if d.Label == tok.Label {
			return d.Dir
		}
	}
	t.Fatalf("no directory for token %s", tok.Label)
	return ""
}

func TestFindSoftHSMStore(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	t.Run("file backend", func(t *testing.T) {
		require.NoError(t, os.WriteFile(conf, []byte("# comment\ndirectories.tokendir = "+dir+"/tokens \nobjectstore.backend = file\n"), 0o600))
		t.Setenv("SOFTHSM2_CONF", conf)
		st, ok, err := keystore.FindSoftHSMStore()
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, dir+"/tokens", st.TokenDir)
		assert.Equal(t, conf, st.Conf)
	})
	t.Run("database backend: nothing to protect", func(t *testing.T) {
		require.NoError(t, os.WriteFile(conf, []byte("directories.tokendir = "+dir+"\nobjectstore.backend = db\n"), 0o600))
		t.Setenv("SOFTHSM2_CONF", conf)
		_, ok, err := keystore.FindSoftHSMStore()
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("no configuration", func(t *testing.T) {
		t.Setenv("SOFTHSM2_CONF", filepath.Join(dir, "absent.conf"))
		_, ok, err := keystore.FindSoftHSMStore()
		require.NoError(t, err)
		require.False(t, ok)
	})
}

// TestTokenObjectPrefixes: no prefix of a whole token.object (what a write
// cut short can leave) passes for a whole one. A prefix cut between
// attributes may lack only the user PIN, the last attribute, which Repair
// catches by comparing with its copy.
func TestTokenObjectPrefixes(t *testing.T) {
	tok := hsmtest.NewToken(t)
	dir := tokenDir(t, tok)
	whole, err := os.ReadFile(filepath.Join(dir, "token.object"))
	require.NoError(t, err)
	b, err := keystore.NewTokenBackups(t.TempDir())
	require.NoError(t, err)
	parsedWithoutUserPIN := 0
	for n := 0; n < len(whole); n++ {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "token.object"), whole[:n], 0o600))
		var found keystore.SoftHSMToken
		dirs, err := b.Store().Tokens()
		require.NoError(t, err)
		for _, d := range dirs {
			if d.Dir == dir {
				found = d
			}
		}
		if found.Damage == nil {
			parsedWithoutUserPIN++
			// Only a cut right before the user PIN parses; Repair, which
			// has the copy, must still call it damaged.
			require.NoError(t, os.WriteFile(filepath.Join(b.Dir(), filepath.Base(dir)+".token.object"), whole, 0o600))
			rep, err := b.Repair(nil)
			require.NoError(t, err)
			require.Len(t, rep.Restored, 1, "a %d-byte prefix of %d bytes was taken for whole", n, len(whole))
			os.Remove(filepath.Join(b.Dir(), filepath.Base(dir)+".token.object"))
			continue
		}
		require.ErrorIs(t, found.Damage, keystore.ErrTokenDamaged, "prefix of %d bytes", n)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "token.object"), whole, 0o600))
	require.Equal(t, 1, parsedWithoutUserPIN, "exactly one prefix (everything but the user PIN) parses")
}

// TestRestoreDamagedToken empties or truncates a token's token.object the
// way a process killed inside C_SetPIN or C_Login does, and checks that
// Repair brings the token back with its objects and a password that logs
// in. SoftHSM2 reads its token directories once per process, so a fresh
// child process looks at the token each time.
func TestRestoreDamagedToken(t *testing.T) {
	damage := map[string]func(path string) error{
		"emptied": func(path string) error { return os.Truncate(path, 0) },
		"truncated": func(path string) error {
			fi, err := os.Stat(path)
			require.NoError(t, err)
			return os.Truncate(path, fi.Size()/2)
		},
	}
	for _, how := range []string{"emptied", "truncated"} {
		t.Run(how+" during C_SetPIN", func(t *testing.T) {
			tok, keyID, sealed := tokenWithKey(t)
			b, err := keystore.NewTokenBackups(t.TempDir())
			require.NoError(t, err)
			f := newGuardedFixture(t, tok, &keystore.Safeguards{Backups: b})
			// The token takes the new password; the process dies before
			// recording it: the record says current=old, pending=new.
			f.pw.failCommit = errors.New("killed")
			require.Equal(t, keystore.InternalError, f.connect(t))
			require.NoError(t, f.store.Disconnect(context.Background()))
			current, pending := f.pw.get()
			require.Equal(t, tok.UserPIN, current)
			require.NotEmpty(t, pending)

			dir := tokenDir(t, tok)
			require.NoError(t, damage[how](filepath.Join(dir, "token.object")))
			out, err := restoreChild(t, tok, keyID, sealed, pending, current)
			require.NoError(t, err, "%s", out)
			require.Contains(t, out, "token not found", "the damage hides the token from SoftHSM2")

			rep, err := b.Repair(nil)
			require.NoError(t, err)
			require.Len(t, rep.Restored, 1)
			assert.Equal(t, dir, rep.Restored[0].Dir)
			assert.Equal(t, tok.Label, rep.Restored[0].Label)
			assert.ErrorIs(t, rep.Restored[0].Damage, keystore.ErrTokenDamaged)
			out, err = restoreChild(t, tok, keyID, sealed, pending, current)
			require.NoError(t, err, "%s", out)
			require.Contains(t, out, "logged in with the current password; key decrypts", "the copy predates C_SetPIN: the recorded current password holds")
		})
		t.Run(how+" during a later login", func(t *testing.T) {
			tok, keyID, sealed := tokenWithKey(t)
			b, err := keystore.NewTokenBackups(t.TempDir())
			require.NoError(t, err)
			f := newGuardedFixture(t, tok, &keystore.Safeguards{Backups: b})
			require.Empty(t, f.connect(t))
			require.NoError(t, f.store.Disconnect(context.Background()))
			rotated, _ := f.pw.get()
			// The next connect copies token.object before its login.
			_, err = f.store.BeginConnect()
			require.NoError(t, err)
			require.Empty(t, f.store.Reconnect(context.Background(), f.pw, nil))
			require.NoError(t, f.store.Disconnect(context.Background()))

			require.NoError(t, damage[how](filepath.Join(tokenDir(t, tok), "token.object")))
			rep, err := b.Repair(nil)
			require.NoError(t, err)
			require.Len(t, rep.Restored, 1)
			out, err := restoreChild(t, tok, keyID, sealed, "", rotated)
			require.NoError(t, err, "%s", out)
			require.Contains(t, out, "logged in with the current password; key decrypts")
		})
	}
	t.Run("no copy: reported, not restored", func(t *testing.T) {
		tok := hsmtest.NewToken(t)
		b, err := keystore.NewTokenBackups(t.TempDir())
		require.NoError(t, err)
		dir := tokenDir(t, tok)
		whole, err := os.ReadFile(filepath.Join(dir, "token.object"))
		require.NoError(t, err)
		defer os.WriteFile(filepath.Join(dir, "token.object"), whole, 0o600) // leave the shared store whole
		require.NoError(t, os.Truncate(filepath.Join(dir, "token.object"), 0))
		rep, err := b.Repair(nil)
		require.NoError(t, err)
		require.Empty(t, rep.Restored)
		var dirs []string
		for _, u := range rep.Unrepaired {
			dirs = append(dirs, u.Dir)
		}
		require.Contains(t, dirs, dir)
		fi, err := os.Stat(filepath.Join(dir, "token.object"))
		require.NoError(t, err)
		require.Zero(t, fi.Size(), "nothing is made up")
	})
	t.Run("a whole token is left alone and its copy refreshed", func(t *testing.T) {
		tok := hsmtest.NewToken(t)
		copies := t.TempDir()
		b, err := keystore.NewTokenBackups(copies)
		require.NoError(t, err)
		dir := tokenDir(t, tok)
		before, err := os.ReadFile(filepath.Join(dir, "token.object"))
		require.NoError(t, err)
		rep, err := b.Repair([]hsm.TokenConfig{{Module: tok.Module, Label: tok.Label}})
		require.NoError(t, err)
		require.Empty(t, rep.Restored)
		after, err := os.ReadFile(filepath.Join(dir, "token.object"))
		require.NoError(t, err)
		require.Equal(t, before, after)
		saved, err := os.ReadFile(filepath.Join(copies, filepath.Base(dir)+".token.object"))
		require.NoError(t, err)
		require.Equal(t, before, saved)
		fi, err := os.Stat(filepath.Join(copies, filepath.Base(dir)+".token.object"))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	})
}

// tokenWithKey makes a token holding an AES key and a ciphertext under it.
func tokenWithKey(t *testing.T) (hsmtest.Token, []byte, string) {
	tok := hsmtest.NewToken(t)
	h, err := hsm.OpenToken(hsm.TokenConfig{Module: tok.Module, Label: tok.Label, PoolSize: 1})
	require.NoError(t, err)
	defer h.Close()
	ctx := context.Background()
	require.NoError(t, h.Login(ctx, tok.UserPIN))
	defer h.Logout(ctx)
	id := []byte("restore-test-key")
	ref, err := h.GenerateAESKey(ctx, id, "restore test", hsm.UsageEncrypt|hsm.UsageDecrypt)
	require.NoError(t, err)
	iv, ct, err := h.EncryptGCM(ctx, ref, []byte("kept"), nil)
	require.NoError(t, err)
	return tok, id, hex.EncodeToString(append(iv, ct...))
}

// newGuardedFixture is newFixture with safeguards.
func newGuardedFixture(t *testing.T, tok hsmtest.Token, g *keystore.Safeguards) *fixture {
	f := &fixture{tok: tok, pw: &memPasswords{current: tok.UserPIN}}
	f.cluster = keystore.Cluster{ID: "cluster-234567abcdefg", Token: hsm.TokenConfig{
		Module: tok.Module, Label: tok.Label, PoolSize: 2,
		Wrap: func(p hsm.PKCS11) hsm.PKCS11 { f.faults = hsm.NewFaults(p); return f.faults },
	}}
	m := keystore.NewManager(nil)
	m.SetSafeguards(g)
	f.store = m.AddCustom("cks-1234567890abcdef0", f.cluster)
	t.Cleanup(func() { f.store.Disconnect(context.Background()) })
	return f
}

// restoreChild looks at the token from a fresh process: it logs in with
// pending, then current (the connect protocol), and decrypts sealed.
func restoreChild(t *testing.T, tok hsmtest.Token, keyID []byte, sealed, pending, current string) (string, error) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pending"), []byte(pending), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "current"), []byte(current), 0o600))
	cmd := exec.Command(os.Args[0], "-test.run", "^TestRestoreChild$", "-test.v")
	cmd.Env = append(os.Environ(), "HSMKMS_RESTORE_CHILD="+dir, "HSMKMS_CHILD_MODULE="+tok.Module, "HSMKMS_CHILD_LABEL="+tok.Label,
		"HSMKMS_CHILD_KEY="+hex.EncodeToString(keyID), "HSMKMS_CHILD_SEALED="+sealed)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestRestoreChild is the child process of TestRestoreDamagedToken.
func TestRestoreChild(t *testing.T) {
	dir := os.Getenv("HSMKMS_RESTORE_CHILD")
	if dir == "" {
		t.Skip("run by TestRestoreDamagedToken")
	}
	ctx := context.Background()
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: os.Getenv("HSMKMS_CHILD_MODULE"), Label: os.Getenv("HSMKMS_CHILD_LABEL"), PoolSize: 1})
	if errors.Is(err, hsm.ErrTokenNotFound) {
		fmt.Println("token not found")
		return
	}
	require.NoError(t, err)
	defer tok.Close()
	read := func(name string) string { b, _ := os.ReadFile(filepath.Join(dir, name)); return string(b) }
	which := ""
	if p := read("pending"); p != "" {
		if err := tok.Login(ctx, p); err == nil {
			which = "pending"
		} else {
			require.ErrorIs(t, err, hsm.ErrPINIncorrect)
		}
	}
	if which == "" {
		require.NoError(t, tok.Login(ctx, read("current")), "neither recorded password logs in")
		which = "current"
	}
	defer tok.Logout(ctx)
	id, _ := hex.DecodeString(os.Getenv("HSMKMS_CHILD_KEY"))
	sealed, _ := hex.DecodeString(os.Getenv("HSMKMS_CHILD_SEALED"))
	plain, err := tok.DecryptGCM(ctx, hsm.SecretKeyByID(id), sealed[:hsm.GCMIVSize], sealed[hsm.GCMIVSize:], nil)
	require.NoError(t, err, "the key is back")
	require.Equal(t, "kept", string(plain))
	fmt.Printf("logged in with the %s password; key decrypts\n", strings.TrimSpace(which))
}
