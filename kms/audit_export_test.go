package kms

// FailAuditTrail makes the service's audit trail fail as a failed write
// would.
func (s *Service) FailAuditTrail(err error) { s.trail.Fail(err) }

// FlushUsage writes keys' last use now.
func (s *Service) FlushUsage() error { return s.usage.flush(s.life) }

// HeldUsage is how many keys' last use the service holds in memory.
func (s *Service) HeldUsage() int { return s.usage.held() }
