package kms

// SetRotationHook makes every rotation call fn between making its token
// object and recording it; an error from fn fails the rotation as a failed
// metadata write would. For tests in package kms_test only.
func (s *Service) SetRotationHook(fn func(keyARN string) error) {
	s.rotations.mu.Lock()
	defer s.rotations.mu.Unlock()
	s.rotations.hook = fn
}
