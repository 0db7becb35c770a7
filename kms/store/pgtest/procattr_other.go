//go:build !linux

package pgtest

import "syscall"

// serverProcAttr: without Linux's parent-death signal, a test binary
// killed before Cleanup leaves its server running.
func serverProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
