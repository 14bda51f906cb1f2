package l7

import (
	"errors"
	"net"
	"syscall"
)

// alive reports whether an idle connection is still open: the upstream
// has neither closed it nor sent anything unasked. It peeks at the socket
// without blocking; a connection it cannot peek at is taken as alive, and
// a stale one is then caught by the retry of RoundTrip.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	ok = true
	var buf [1]byte
	rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Nothing to read: alive. End of stream, unasked bytes or an error: not.
		ok = errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR)
		return true
	})
	return ok
}
