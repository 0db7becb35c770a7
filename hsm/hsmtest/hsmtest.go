// Package hsmtest gives tests throwaway SoftHSM2 tokens. The first call in a
// test process creates one isolated SoftHSM2 environment (via
// softhsm-config/softhsm-env.sh, installing SoftHSM2 through scripts/setup.sh
// if needed) and points SOFTHSM2_CONF at it; every NewToken initialises a
// fresh token there with a unique label and random PINs, through
// hsm.Module.InitToken: a SoftHSM2 process never rescans its token directory,
// so tokens made by the script after the module is loaded stay invisible.
// The system-wide SoftHSM2 tokens are never touched.
package hsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
)

var env struct {
	once   sync.Once
	dir    string
	module string
	mod    *hsm.Module
	root   string
	err    error
	n      atomic.Int64
}

// Root is the repository root (the directory holding go.mod).
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("hsmtest: no go.mod above the working directory")
		}
		dir = parent
	}
}

func setup() {
	env.root, env.err = Root()
	if env.err != nil {
		return
	}
	if out, err := exec.Command(filepath.Join(env.root, "scripts", "setup.sh")).CombinedOutput(); err != nil {
		env.err = fmt.Errorf("hsmtest: scripts/setup.sh: %v\n%s", err, out)
		return
	}
	out, err := exec.Command(filepath.Join(env.root, "scripts", "softhsm-module.sh")).Output()
	if err != nil {
		env.err = fmt.Errorf("hsmtest: no SoftHSM2 module found: %v", err)
		return
	}
	env.module = strings.TrimSpace(string(out))
	env.dir, env.err = os.MkdirTemp("", "hsmkms-softhsm-")
	if env.err != nil {
		return
	}
	if _, err := run(); err != nil {
		env.err = err
		return
	}
	if env.err = os.Setenv("SOFTHSM2_CONF", filepath.Join(env.dir, "softhsm2.conf")); env.err != nil {
		return
	}
	// Hold the module for the life of the process: finalising SoftHSM2
	// between tests would only make every test reload it.
	env.mod, env.err = hsm.OpenModule(env.module)
}

func run(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(env.root, "softhsm-config", "softhsm-env.sh"), append([]string{env.dir}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("hsmtest: softhsm-env.sh: %v\n%s", err, out)
	}
	return string(out), nil
}

// Module returns the absolute path of the SoftHSM2 module, setting up the
// process's SoftHSM2 environment on first use.
func Module(t testing.TB) string {
	t.Helper()
	env.once.Do(setup)
	if env.err != nil {
		t.Fatal(env.err)
	}
	return env.module
}

// Cleanup removes the process's SoftHSM2 environment; call it from TestMain
// after m.Run.
func Cleanup() {
	if env.mod != nil {
		env.mod.Close()
	}
	if env.dir != "" {
		os.RemoveAll(env.dir)
	}
}

// Token is a freshly initialised SoftHSM2 token.
type Token struct {
	Module  string
	Label   string
	SOPIN   string
	UserPIN string
}

// NewToken initialises a new token with a unique label and random PINs.
func NewToken(t testing.TB) Token {
	t.Helper()
	mod := Module(t)
	tok := Token{
		Module:  mod,
		Label:   fmt.Sprintf("t%d-%s", env.n.Add(1), RandomPIN(3)),
		SOPIN:   RandomPIN(8),
		UserPIN: RandomPIN(8),
	}
	if _, err := env.mod.InitToken(tok.Label, tok.SOPIN, tok.UserPIN); err != nil {
		t.Fatal(err)
	}
	return tok
}

// NewTokenWithoutUser initialises a token whose user PIN the SO has not set
// (no CKF_USER_PIN_INITIALIZED).
func NewTokenWithoutUser(t testing.TB) Token {
	t.Helper()
	mod := Module(t)
	tok := Token{Module: mod, Label: fmt.Sprintf("t%d-%s", env.n.Add(1), RandomPIN(3)), SOPIN: RandomPIN(8)}
	if _, err := env.mod.InitToken(tok.Label, tok.SOPIN, ""); err != nil {
		t.Fatal(err)
	}
	return tok
}

// RandomPIN returns 2n hex characters of randomness.
func RandomPIN(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
