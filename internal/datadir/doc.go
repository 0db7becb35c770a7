// Package datadir makes and reuses the self-contained directory behind
// `hsmkms serve --data-dir DIR`: a private SoftHSM2 token store with a
// default token and two cluster tokens, random PINs and an admin access key
// (files 0600), a local CA and server certificate, an AWS shared-credentials
// file, and the configuration tying them together, which it writes last so
// an interrupted first run is completed by the next. Later runs reuse all
// of it and never re-create a token whose PINs are missing.
//
// It is the only place that generates secrets or certificates, which is
// why it is a package of its own rather than part of cmd/hsmkms.
package datadir
