package kms

// CachedKeyCount is how many keys' metadata the service holds in memory.
// For tests in package kms_test only.
func (s *Service) CachedKeyCount() int { return s.cache.Len() }
