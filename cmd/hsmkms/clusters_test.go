package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/internal/datadir"
	"github.com/stretchr/testify/require"
)

// TestResetKmsuser is the documented recovery for a lost kmsuser password.
func TestResetKmsuser(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, info, err := datadir.Bootstrap(dir, "127.0.0.1:4599", nil)
	require.NoError(t, err)
	require.Len(t, info.Clusters, 2)
	fi, err := os.Stat(info.Clusters[0].PasswordFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	newPW := filepath.Join(t.TempDir(), "new")
	require.NoError(t, os.WriteFile(newPW, []byte("recovered-password\n"), 0o600))
	require.NoError(t, resetKmsuser([]string{"--data-dir", dir, "--cluster", info.Clusters[0].ID,
		"--so-pin-file", filepath.Join(dir, "secrets", "cluster-1-so-pin"), "--new-password-file", newPW}))

	cfg, err := config.LoadConfig(filepath.Join(dir, "hsmkms.yaml"))
	require.NoError(t, err)
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: cfg.Clusters[0].Module, Label: cfg.Clusters[0].TokenLabel})
	require.NoError(t, err)
	defer tok.Close()
	require.ErrorIs(t, tok.Login(context.Background(), info.Clusters[0].Password), hsm.ErrPINIncorrect)
	require.NoError(t, tok.Login(context.Background(), "recovered-password"))
	tok.Logout(context.Background())

	require.ErrorContains(t, resetKmsuser([]string{"--data-dir", dir, "--cluster", "cluster-nosuchcluster",
		"--so-pin-file", filepath.Join(dir, "secrets", "cluster-1-so-pin"), "--new-password-file", newPW}), "no cluster")
}
