package kms

import "context"

// PauseTransitions holds back (true) or lets go (false) the finishing of
// multi-Region transitions (a replica Creating, a primary moving), so tests
// can watch the transient states and stop the service in the middle. For
// tests in package kms_test only.
func (s *Service) PauseTransitions(paused bool) {
	s.transitions.mu.Lock()
	s.transitions.paused = paused
	s.transitions.mu.Unlock()
	if !paused {
		select {
		case s.transitions.nudge <- struct{}{}:
		default:
		}
	}
}

// FinishStrayTransitions runs the deletion job's pass over the transitions
// recorded in the store. For tests in package kms_test only.
func (s *Service) FinishStrayTransitions(ctx context.Context) error {
	return s.finishStrayTransitions(ctx)
}
