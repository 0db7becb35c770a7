package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
)

// tokens lists what a module offers, so an operator can find the label or
// serial to put in the configuration, and, for SoftHSM2, the token
// directories the module cannot load (a damaged token.object), which it
// does not list at all.
func tokens(args []string) error {
	fs := flag.NewFlagSet("tokens", flag.ContinueOnError)
	module := fs.String("module", "", "absolute path of the PKCS#11 module")
	dataDir := fs.String("data-dir", "", "data directory of `serve --data-dir`: its module and SoftHSM2 store")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataDir != "" {
		cfg, err := LoadConfig(filepath.Join(*dataDir, "hsmkms.yaml"))
		if err != nil {
			return err
		}
		for k, v := range cfg.DefaultKeyStore.ModuleEnv {
			os.Setenv(k, v)
		}
		if *module == "" {
			*module = cfg.DefaultKeyStore.Module
		}
	}
	if *module == "" {
		return fmt.Errorf("tokens: --module or --data-dir is required")
	}
	m, err := hsm.OpenModule(*module)
	if err != nil {
		return err
	}
	defer m.Close()
	list, err := m.Tokens()
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "LABEL\tSERIAL\tMANUFACTURER\tMODEL\tUSER PIN\tSTATUS")
	for _, t := range list {
		pin := "set"
		switch {
		case t.UserPINLocked():
			pin = "locked"
		case !t.UserPINInitialized():
			pin = "not initialised"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\tok\n", t.Label, t.Serial, t.Manufacturer, t.Model, pin)
	}
	if !keystore.IsSoftHSM(*module) {
		if err := w.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "note: only SoftHSM2 token directories are checked for damage; a token this module cannot read is not listed")
		return nil
	}
	st, ok, err := keystore.FindSoftHSMStore()
	var dirs []keystore.SoftHSMToken
	if err == nil && ok {
		dirs, err = st.Tokens()
	}
	if err != nil {
		// The module's own list above is still worth printing.
		defer fmt.Fprintf(os.Stderr, "note: cannot check SoftHSM2's token directories for damage: %v\n", err)
	}
	damaged := 0
	for _, d := range dirs {
		if d.Damage == nil {
			continue
		}
		damaged++
		label := d.Label
		if label == "" {
			label = "(unreadable)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t-\tdamaged: %s\n", label, d.Serial, keystore.SoftHSMManufacturer, "SoftHSM v2", d.Describe())
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if damaged > 0 {
		fmt.Fprintln(os.Stderr, "\nSoftHSM2 cannot load the damaged tokens above. `hsmkms serve` restores one from its copy of token.object\n"+
			"(token-backups/ beside its database) at start; otherwise see \"Recovering a damaged token\" in the README.")
	}
	return nil
}
