package registry

import "syscall"

// sysProcAttr has the kernel kill the registry when the test process dies
// (a killed go test leaves no registry behind).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
