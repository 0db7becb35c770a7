package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/keystore"
)

// xksKeys manages the external keys on the XKS proxy's tokens:
//
//	hsmkms xks-keys list    (--config F | --data-dir D) [--token ID]
//	hsmkms xks-keys create  (--config F | --data-dir D) [--token ID] --id KEY [--usage ENCRYPT,DECRYPT] [--spec AES_256]
//	hsmkms xks-keys enable  (--config F | --data-dir D) [--token ID] --id KEY
//	hsmkms xks-keys disable (--config F | --data-dir D) [--token ID] --id KEY
//
// It works on the token directly, so a running proxy (in another process)
// sees a change at its next use of the key: the status is read from the
// token on every request.
func xksKeys(args []string) error {
	if len(args) == 0 {
		return errors.New("xks-keys: list, create, enable or disable")
	}
	sub := args[0]
	fs := flag.NewFlagSet("xks-keys "+sub, flag.ContinueOnError)
	tokenID := fs.String("token", "", "id of the proxy token (xks_proxy.tokens[].id); needed when there are several")
	id := fs.String("id", "", "external key id: 1-128 of A-Z a-z 0-9 . - _")
	usage := fs.String("usage", "ENCRYPT,DECRYPT", "create: ENCRYPT, DECRYPT, both (comma-separated) or NONE")
	spec := fs.String("spec", "AES_256", "create: AES_256 (what AWS KMS accepts), AES_192 or AES_128")
	cfg, err := adminConfig(fs, args[1:])
	if err != nil {
		return err
	}
	if cfg.XKSProxy == nil {
		return errors.New("xks-keys: the configuration has no xks_proxy section")
	}
	var tok *config.XKSTokenConfig
	for i := range cfg.XKSProxy.Tokens {
		t := &cfg.XKSProxy.Tokens[i]
		if *tokenID == t.ID || (*tokenID == "" && len(cfg.XKSProxy.Tokens) == 1) {
			tok = t
		}
	}
	if tok == nil {
		return fmt.Errorf("xks-keys: name the token with --token (one of the ids under xks_proxy.tokens)")
	}
	if sub != "list" && *id == "" {
		return fmt.Errorf("xks-keys %s: --id is required", sub)
	}
	pin, err := tok.PIN()
	if err != nil {
		return fmt.Errorf("xks_proxy.tokens %s: %w", tok.ID, err)
	}
	// SoftHSM2 rewrites token.object at every login: copy it first, as
	// serve does.
	var guard *keystore.Safeguards
	if keystore.IsSoftHSM(tok.Module) {
		backups, err := keystore.NewTokenBackups(cfg.Database.TokenBackupDir())
		if err != nil {
			return err
		}
		guard = &keystore.Safeguards{Backups: backups}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys, err := keystore.OpenExternalKeys(ctx, xksTokenConfig(*tok, nil), pin, guard)
	if err != nil {
		return err
	}
	defer keys.Close(context.Background())
	switch sub {
	case "list":
		list, err := keys.ListExternalKeys(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "EXTERNAL KEY ID\tSPEC\tUSAGE\tSTATUS")
		for _, k := range list {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", k.ID, specName(k.Spec), usageName(k), statusName(k))
		}
		return w.Flush()
	case "create":
		var enc, dec bool
		for _, u := range strings.Split(strings.ToUpper(*usage), ",") {
			switch strings.TrimSpace(u) {
			case "ENCRYPT":
				enc = true
			case "DECRYPT":
				dec = true
			case "NONE", "":
			default:
				return fmt.Errorf("xks-keys create: --usage %q: ENCRYPT, DECRYPT, both or NONE", *usage)
			}
		}
		k, err := keys.CreateExternalKey(ctx, *id, keystore.ExternalKeySpec(*spec), enc, dec)
		if err != nil {
			return err
		}
		fmt.Printf("created %s (%s, %s, %s) on token %s\n", k.ID, specName(k.Spec), usageName(k), statusName(k), tok.ID)
		return nil
	case "enable", "disable":
		if err := keys.SetExternalKeyEnabled(ctx, *id, sub == "enable"); err != nil {
			return err
		}
		fmt.Printf("%s is %sD\n", *id, strings.ToUpper(sub))
		return nil
	}
	return fmt.Errorf("xks-keys: unknown subcommand %q (list, create, enable, disable)", sub)
}

func specName(s keystore.ExternalKeySpec) string {
	if s == "" {
		return "OTHER"
	}
	return string(s)
}

func usageName(k keystore.ExternalKey) string {
	var u []string
	if k.Encrypt {
		u = append(u, "ENCRYPT")
	}
	if k.Decrypt {
		u = append(u, "DECRYPT")
	}
	if len(u) == 0 {
		return "NONE"
	}
	return strings.Join(u, ",")
}

func statusName(k keystore.ExternalKey) string {
	if k.Enabled {
		return "ENABLED"
	}
	return "DISABLED"
}
