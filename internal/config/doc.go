// Package config is the deployment configuration of `hsmkms serve
// --config FILE`: typed structs, strict YAML loading (unknown keys, wrong
// types and missing values are errors naming their YAML path and line) and
// validation of every section. It exists apart from cmd/hsmkms so the
// rules a configuration must follow are tested on their own and shared by
// every command that reads one (serve, clusters, reset-kmsuser) and by the
// data-dir bootstrap that writes one.
//
// Secrets are never inline: PINs and secret keys come from files that no
// one but the owner can read, or from environment variables (ReadSecret).
package config
