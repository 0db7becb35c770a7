// Command hsmkms is the hsmkms key service and its admin tools. It only
// wires packages together: the PKCS#11 work is in hsm/, key stores in
// keystore/, the KMS operations and wire protocol in kms/, the
// configuration in internal/config and the `serve --data-dir` directory in
// internal/datadir. The load generator is cmd/hsmkms-load, so this binary
// carries no AWS SDK.
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	killAt()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "tokens":
		err = tokens(os.Args[2:])
	case "clusters":
		err = clusters(os.Args[2:])
	case "reset-kmsuser":
		err = resetKmsuser(os.Args[2:])
	case "audit":
		err = auditCmd(os.Args[2:], os.Stdout)
	case "xks-keys":
		err = xksKeys(os.Args[2:])
	case "domain-keys":
		err = domainKeys(os.Args[2:])
	case "migrate-keys":
		err = migrateKeys(os.Args[2:])
	case "version", "--version", "-v":
		fmt.Println("hsmkms", version)
	case "help", "-h", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "hsmkms: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hsmkms:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: hsmkms <command> [flags]

commands:
  serve          run the key service (--data-dir DIR --listen HOST:PORT [--database-url-file F --node-id ID], or --config FILE)
  tokens         list the tokens a PKCS#11 module offers, and damaged SoftHSM2 tokens (--module PATH or --data-dir DIR)
  clusters       list the tokens declared as CloudHSM clusters and the key stores using them
  reset-kmsuser  set a new kmsuser password with the token's SO PIN (--cluster ID --so-pin-file F --new-password-file F)
  xks-keys       list, create, enable or disable the XKS proxy's external keys (list|create|enable|disable --id KEY [--usage ENCRYPT,DECRYPT])
  domain-keys    list the key stores' domain keys; --rotate makes a new active one (serve stopped)
  migrate-keys   move the default key store's token-object keys to wrapped, where the token allows (serve stopped)
  audit verify   check the audit trail: digest signatures, file hashes, the record chain (--data-dir DIR, --config FILE or
                 --dir AUDIT_DIR; --public-key PEM to pin the signing key; --from/--to RFC 3339 times)
  version        print the version
`)
}
