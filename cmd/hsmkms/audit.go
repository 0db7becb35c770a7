package main

import (
	"crypto/ecdsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hsmkms/hsmkms/kms/audit"
)

// auditCmd is `hsmkms audit verify`.
func auditCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		return errors.New("usage: hsmkms audit verify (--data-dir DIR | --config FILE | --dir AUDIT_DIR) [--public-key PEM]... [--from TIME] [--to TIME]")
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	dir := fs.String("dir", "", "the audit trail's directory (instead of --config or --data-dir)")
	var keys multiFlag
	fs.Var(&keys, "public-key", "a trusted public key (PEM) the digests must be signed by; repeat for several (default: the keys exported in the directory, unpinned)")
	from := fs.String("from", "", "check only files with records at or after this time (RFC 3339)")
	to := fs.String("to", "", "check only files with records at or before this time (RFC 3339)")
	rest := args[1:]
	var trail string
	if hasFlag(rest, "dir") {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		trail = *dir
	} else {
		cfg, err := adminConfig(fs, rest)
		if err != nil {
			return err
		}
		trail = cfg.AuditDir()
	}
	opt := audit.VerifyOptions{}
	for _, p := range keys {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		k, fp, err := audit.PublicKeyFromPEM(b)
		if err != nil {
			return fmt.Errorf("--public-key %s: %w", p, err)
		}
		if opt.PublicKeys == nil {
			opt.PublicKeys = map[string]*ecdsa.PublicKey{}
		}
		opt.PublicKeys[fp] = k
	}
	var err error
	for _, t := range []struct {
		arg string
		at  *time.Time
	}{{*from, &opt.From}, {*to, &opt.To}} {
		if t.arg != "" {
			if *t.at, err = time.Parse(time.RFC3339, t.arg); err != nil {
				return fmt.Errorf("--from/--to: %q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", t.arg)
			}
		}
	}
	sum, err := audit.Verify(trail, opt)
	if err != nil {
		var p *audit.Problem
		if errors.As(err, &p) {
			return fmt.Errorf("audit trail in %s does not verify: %w", trail, err)
		}
		return err
	}
	fmt.Fprintf(stdout, "audit trail %s in %s verifies\n", sum.TrailID, trail)
	fmt.Fprintf(stdout, "  %d digests, signatures good; %d files, hashes good; %d records, chain unbroken", sum.Digests, sum.Files, sum.Records)
	if sum.Records > 0 {
		fmt.Fprintf(stdout, " (records %d to %d, %s to %s)", sum.FirstSequence, sum.LastSequence, sum.OldestEventTime, sum.NewestEventTime)
	}
	fmt.Fprintln(stdout)
	if sum.Unsealed > 0 {
		fmt.Fprintf(stdout, "  %d records not sealed by a digest yet: a running hsmkms's, or a crashed one's until its next start\n", sum.Unsealed)
	}
	if len(sum.Expired) > 0 {
		fmt.Fprintf(stdout, "  %d digests deleted by retention, as the trail announced\n", len(sum.Expired))
	}
	pin := "pinned with --public-key"
	if !sum.Pinned {
		pin = "read from the directory, not pinned: compare with the fingerprint hsmkms logged at start (public_key_sha256)"
	}
	fmt.Fprintf(stdout, "  signed by %s (%s)\n", strings.Join(sum.Keys, ", "), pin)
	return nil
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == "-"+name || a == "--"+name || strings.HasPrefix(a, "-"+name+"=") || strings.HasPrefix(a, "--"+name+"=") {
			return true
		}
	}
	return false
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
