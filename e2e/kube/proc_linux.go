package kube

import "syscall"

// sysProcAttr puts each control-plane process in a process group of its
// own, so Close can kill it with anything it started, and has the kernel
// kill it if the test binary dies without calling Close.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func killGroup(pid int) {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}
