package observe

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// dialError's cases, with the system errors a real dial wraps. Internal,
// because root (these tests' usual user) is never refused a socket.
func TestClientDialErrors(t *testing.T) {
	const path = "/run/sluice/agent.sock"
	wrap := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", errno)}
	}
	tests := []struct {
		err  error
		is   error
		want string
	}{
		{wrap(syscall.ENOENT), ErrNotRunning, "not running, or the socket path is wrong"},
		{wrap(syscall.ECONNREFUSED), ErrNotRunning, "not running, or the socket path is wrong"},
		{wrap(syscall.EACCES), ErrPermission, "permission denied: the agent's socket is root-only: run this as root"},
		{wrap(syscall.EPERM), ErrPermission, "run this as root"},
		{wrap(syscall.ETIMEDOUT), nil, "timed out"},
	}
	for _, tt := range tests {
		err := dialError(path, tt.err)
		if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("dialError(%v) = %v, want it to wrap %v", tt.err, err, tt.is)
		}
		if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("dialError(%v) = %q, want it to name %s and say %q", tt.err, err, path, tt.want)
		}
	}
}
