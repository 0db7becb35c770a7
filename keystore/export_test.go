package keystore

import "github.com/hsmkms/hsmkms/hsm"

// Token exposes the store's token to tests, which check what is on it
// directly; kms has no such access.
func (s *Store) Token() (*hsm.Token, error) { return s.token() }
