package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestStockAWSCLI builds hsmkms and runs scripts/cli-test.sh: the stock aws
// CLI against `hsmkms serve --data-dir`, configured only by what it prints.
func TestStockAWSCLI(t *testing.T) {
	if _, err := exec.LookPath("aws"); err != nil {
		t.Skip("the aws CLI is not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "hsmkms")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "cli-test.sh"), bin)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cli-test.sh: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
