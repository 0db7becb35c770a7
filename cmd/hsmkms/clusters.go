package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/internal/config"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
)

// adminConfig loads the configuration an admin subcommand names, either
// directly or as the one `serve --data-dir` wrote, and applies the
// module environment, as serve does, before any module is loaded.
func adminConfig(fs *flag.FlagSet, args []string) (*config.Config, error) {
	configPath := fs.String("config", "", "configuration file")
	dataDir := fs.String("data-dir", "", "data directory of `serve --data-dir`")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case *configPath == "" && *dataDir == "":
		return nil, errors.New("--config FILE or --data-dir DIR is required")
	case *configPath == "":
		*configPath = filepath.Join(*dataDir, "hsmkms.yaml")
	}
	cfg, err := config.LoadConfig(*configPath)
	if err != nil {
		return nil, err
	}
	for k, v := range cfg.DefaultKeyStore.ModuleEnv {
		os.Setenv(k, v)
	}
	return cfg, nil
}

// openMetadata opens the metadata store the configuration names: the
// SQLite file or the PostgreSQL database.
func openMetadata(ctx context.Context, cfg *config.Config) (store.Store, error) {
	url, err := cfg.Database.URL()
	if err != nil {
		return nil, err
	}
	if url != "" {
		return store.OpenPostgreSQL(ctx, url)
	}
	return store.OpenSQLite(cfg.Database.Path)
}

// clusters lists the declared clusters: whether their token is present,
// its serial, and the custom key store using each.
func clusters(args []string) error {
	fs := flag.NewFlagSet("clusters", flag.ContinueOnError)
	cfg, err := adminConfig(fs, args)
	if err != nil {
		return err
	}
	usedBy := map[string]string{}
	if db, err := openMetadata(context.Background(), cfg); err == nil {
		stores, err := db.AllKeyStores(context.Background())
		db.Close()
		if err != nil {
			return err
		}
		for _, ks := range stores {
			usedBy[ks.ClusterID] = fmt.Sprintf("%s (%s, %s %s)", ks.ID, ks.Name, ks.Account, ks.Region)
		}
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CLUSTER ID\tTOKEN\tPRESENT\tSERIAL\tKEY STORE")
	for _, c := range clusterConfigs(cfg, nil) {
		token := "label " + c.Token.Label
		if c.Token.Serial != "" {
			token = "serial " + c.Token.Serial
		}
		present, serial := "yes", ""
		info, err := keystore.Probe(c)
		switch {
		case err == nil:
			serial = info.Serial
		default:
			var pe *keystore.ProbeError
			if errors.As(err, &pe) && pe.WrongDevice {
				present, serial = "wrong device", info.Serial
			} else {
				present = "no"
			}
		}
		ks := usedBy[c.ID]
		if ks == "" {
			ks = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.ID, token, present, serial, ks)
	}
	return w.Flush()
}

// resetKmsuser is the recovery path for a lost or locked kmsuser password:
// the token's security officer sets a new user PIN (C_InitPIN). The store
// must be disconnected; afterwards UpdateCustomKeyStore with the new
// password and connect again.
func resetKmsuser(args []string) error {
	fs := flag.NewFlagSet("reset-kmsuser", flag.ContinueOnError)
	clusterID := fs.String("cluster", "", "cluster id")
	soPINFile := fs.String("so-pin-file", "", "file holding the token's SO PIN (mode 0600)")
	newFile := fs.String("new-password-file", "", "file holding the new kmsuser password, 7-32 characters (mode 0600)")
	cfg, err := adminConfig(fs, args)
	if err != nil {
		return err
	}
	if *clusterID == "" || *soPINFile == "" || *newFile == "" {
		return errors.New("reset-kmsuser: --cluster, --so-pin-file and --new-password-file are required")
	}
	soPIN, err := config.ReadSecret("so_pin", *soPINFile, "")
	if err != nil {
		return err
	}
	password, err := config.ReadSecret("new_password", *newFile, "")
	if err != nil {
		return err
	}
	if len(password) < 7 || len(password) > 32 {
		return errors.New("reset-kmsuser: the new password must be 7 to 32 characters, as KeyStorePassword")
	}
	for _, c := range clusterConfigs(cfg, nil) {
		if c.ID != *clusterID {
			continue
		}
		tok, err := hsm.OpenToken(c.Token)
		if err != nil {
			return err
		}
		defer tok.Close()
		// SoftHSM2 rewrites token.object for the SO's login and C_InitPIN:
		// copy it first, as serve does before its own logins.
		if keystore.IsSoftHSM(c.Token.Module) {
			backups, err := keystore.NewTokenBackups(cfg.Database.TokenBackupDir())
			if err != nil {
				return err
			}
			info, err := tok.Info()
			if err != nil {
				return err
			}
			if err := backups.Save(info); err != nil {
				return fmt.Errorf("reset-kmsuser: %w", err)
			}
		}
		if err := tok.InitPIN(context.Background(), soPIN, password); err != nil {
			return fmt.Errorf("reset-kmsuser: %w", err)
		}
		fmt.Printf("kmsuser password of %s reset. Now:\n  aws kms update-custom-key-store --custom-key-store-id <id> --key-store-password <the new password>\n  aws kms connect-custom-key-store --custom-key-store-id <id>\n", c.ID)
		return nil
	}
	return fmt.Errorf("reset-kmsuser: no cluster %s in the configuration", *clusterID)
}
