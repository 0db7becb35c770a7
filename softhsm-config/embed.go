// Package softhsmconfig carries the SoftHSM2 configuration template so the
// hsmkms binary writes the same file the shell script does: `make run`, the
// tests and softhsm-env.sh all set up SoftHSM2 from this one template.
package softhsmconfig

import (
	_ "embed"
	"strings"
)

//go:embed softhsm2.conf.in
var template string

// Render returns the configuration for an isolated token store whose token
// directory is tokenDir (absolute).
func Render(tokenDir string) []byte {
	return []byte(strings.ReplaceAll(template, "@TOKENDIR@", tokenDir))
}
