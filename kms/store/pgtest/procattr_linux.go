package pgtest

import "syscall"

// serverProcAttr makes the server die with the test process: the script
// execs into the server (setpriv keeps the signal across the change of
// user), so a test binary killed by a timeout leaves no server running.
func serverProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGQUIT}
}
