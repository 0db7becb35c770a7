package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms"
)

// domainKeys lists the domain keys of the key stores holding material
// wrapped, with how many material versions each wraps, and with --rotate
// first makes a new one the default key store's active domain key. Run it
// while serve is stopped: serve rewraps the material under the old key in
// the background, and destroys it when nothing names it.
func domainKeys(args []string) error {
	fs := flag.NewFlagSet("domain-keys", flag.ContinueOnError)
	rotate := fs.Bool("rotate", false, "make a new domain key the default key store's active one")
	cfg, err := adminConfig(fs, args)
	if err != nil {
		return err
	}
	ctx := context.Background()
	svc, err := openForAdmin(ctx, cfg)
	if err != nil {
		return err
	}
	defer svc.Close(ctx)
	if *rotate {
		id, err := svc.RotateDomainKey(ctx, keystore.DefaultID)
		if err != nil {
			return err
		}
		fmt.Printf("domain key %s is now the default key store's active domain key; serve rewraps the material under the old one in the background\n", id)
	}
	dks, err := svc.DomainKeys(ctx)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY STORE\tDOMAIN KEY\tSTATE\tCREATED\tMATERIALS")
	for _, dk := range dks {
		store := dk.KeyStoreID
		if store == keystore.DefaultID {
			store = "default"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", store, dk.ID, dk.State, dk.Created.UTC().Format(time.RFC3339), dk.Materials)
	}
	return w.Flush()
}

// migrateKeys moves the default key store's keys held as token objects
// into its key hierarchy where the token allows it (see
// kms.Service.MigrateToWrapped). Run it while serve is stopped.
func migrateKeys(args []string) error {
	fs := flag.NewFlagSet("migrate-keys", flag.ContinueOnError)
	cfg, err := adminConfig(fs, args)
	if err != nil {
		return err
	}
	ctx := context.Background()
	svc, err := openForAdmin(ctx, cfg)
	if err != nil {
		return err
	}
	defer svc.Close(ctx)
	rep, err := svc.MigrateToWrapped(ctx, keystore.DefaultID)
	if rep == nil {
		return err
	}
	for _, m := range rep.Migrated {
		fmt.Println("migrated:", m)
	}
	for _, m := range rep.Refused {
		fmt.Println("stays a token object:", m)
	}
	fmt.Printf("%d material versions now held wrapped, %d stay token objects (they keep working)\n", len(rep.Migrated), len(rep.Refused))
	return err
}

// openForAdmin opens the service as serve does, without serving, for an
// admin command: the same start-up checks, logged to stderr.
func openForAdmin(ctx context.Context, cfg *config.Config) (*kms.Service, error) {
	pin, err := cfg.DefaultKeyStore.PIN()
	if err != nil {
		return nil, fmt.Errorf("default_key_store: %w", err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "hsmkms", Level: hclog.Warn, Output: os.Stderr})
	oc, err := openConfig(cfg, pin, log)
	if err != nil {
		return nil, err
	}
	oc.JobInterval = 0
	return kms.Open(ctx, oc)
}

// killAt installs the crash tests' seam: with HSMKMS_KILL_AT=step (or
// step#n, the nth time), the process kills itself with SIGKILL as soon as
// that step of a domain key rotation has completed (keystore.Step*).
// Nothing else reads it; never set it outside a test.
func killAt() {
	v := os.Getenv("HSMKMS_KILL_AT")
	if v == "" {
		return
	}
	step, nth := v, 1
	if s, n, ok := strings.Cut(v, "#"); ok {
		step = s
		if i, err := strconv.Atoi(n); err == nil && i > 0 {
			nth = i
		}
	}
	seen := 0
	keystore.SetStepHook(func(s string) {
		if s == step {
			if seen++; seen == nth {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	})
}
