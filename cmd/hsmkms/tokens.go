package main

import (
	"flag"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/hsmkms/hsmkms/hsm"
)

// tokens lists what a module offers, so an operator can find the label or
// serial to put in the configuration.
func tokens(args []string) error {
	fs := flag.NewFlagSet("tokens", flag.ContinueOnError)
	module := fs.String("module", "", "absolute path of the PKCS#11 module")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *module == "" {
		return fmt.Errorf("tokens: --module is required")
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
	fmt.Fprintln(w, "LABEL\tSERIAL\tMANUFACTURER\tMODEL\tUSER PIN")
	for _, t := range list {
		pin := "set"
		switch {
		case t.UserPINLocked():
			pin = "locked"
		case !t.UserPINInitialized():
			pin = "not initialised"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", t.Label, t.Serial, t.Manufacturer, t.Model, pin)
	}
	return w.Flush()
}
